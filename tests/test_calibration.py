"""vitmsn.calibration on real image files: discovery, image modes, stratified seeded sampling,
unreadable images, the .npz cache, the data reader, and the CLI's exit code for too few images.

Tolerance: calibration tensors must equal the runtime's preprocessing of the same file exactly
(bit for bit): calibration uses the runtime's code, not a copy of it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitmsn.calibration import (CalibrationOptions, CalibrationReader, as_ort_reader, calibration_set_from_directory,
                                discover_images, even_batch_size, sample_order, strata_of)
from vitmsn.core.errors import InputError
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

BLOCK = PreprocessConfig.from_preprocessor_config({**DEFAULT_PREPROCESSOR_CONFIG, "size": {"height": 32, "width": 32}}).to_manifest()


def _rgb(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _classes(root: Path, counts: dict[str, int]) -> list[Path]:
    paths = []
    for k, (name, n) in enumerate(sorted(counts.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            p = root / name / f"{i:03d}.png"
            _rgb(1000 * k + i).save(p)
            paths.append(p)
    return paths


def _opts(tmp: Path, **kw) -> CalibrationOptions:
    return CalibrationOptions(cache_dir=tmp / "cache", progress=False, **{"min_images": 1, **kw})


def test_discovery_is_recursive_case_insensitive_and_skips_hidden(tmp_path: Path) -> None:
    for rel in ("a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.tif", "g.TIFF", "sub/deep/h.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        _rgb(1).save(tmp_path / rel, format={".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP",
                                              ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}[Path(rel).suffix.lower()])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    _rgb(2).save(tmp_path / ".hidden" / "x.png")
    _rgb(3).save(tmp_path / ".dot.png")
    found = [p.relative_to(tmp_path).as_posix() for p in discover_images(tmp_path)]
    assert found == ["a.JPG", "b.jpeg", "c.png", "d.webp", "e.bmp", "f.tif", "g.TIFF", "sub/deep/h.png"]
    assert strata_of(tmp_path, discover_images(tmp_path)) is None  # images at the top level: not class-structured


def test_every_mode_and_exif_orientation_match_the_runtime_bit_for_bit(tmp_path: Path) -> None:
    base = _rgb(7, (48, 36))
    images = {
        "l.png": base.convert("L"), "la.png": base.convert("LA"), "p.png": base.convert("P"),
        "rgba.png": base.convert("RGBA"), "cmyk.jpg": base.convert("CMYK"),
        "i16.png": Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)),
    }
    for name, im in images.items():
        im.save(tmp_path / name)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    base.save(tmp_path / "exif.jpg", exif=exif.tobytes(), quality=95)
    cs = calibration_set_from_directory(tmp_path, BLOCK, _opts(tmp_path, samples=100))
    assert len(cs) == len(images) + 1 and not cs.skipped
    pre = PreprocessConfig.from_manifest(BLOCK)
    for i, rel in enumerate(cs.files):
        np.testing.assert_array_equal(cs.tensors[i], pre(tmp_path / rel))
    assert cs.tensors.dtype == np.float32 and np.isfinite(cs.tensors).all()
    # the EXIF-rotated file is read upright: 36x48 (portrait) before the resize
    with Image.open(tmp_path / "exif.jpg") as im:
        from PIL import ImageOps
        upright = ImageOps.exif_transpose(im)
        assert upright.size == (36, 48)
        np.testing.assert_array_equal(cs.tensors[cs.files.index("exif.jpg")], pre(upright.convert("RGB")))


def test_stratified_sample_is_proportional_and_seeded(tmp_path: Path) -> None:
    _classes(tmp_path / "img", {"a": 20, "b": 10, "c": 10})
    opts = _opts(tmp_path, samples=20, seed=3)
    cs = calibration_set_from_directory(tmp_path / "img", BLOCK, opts)
    assert cs.stratified and cs.per_class() == {"a": 10, "b": 5, "c": 5}
    assert [f.split("/")[0] for f in cs.files[:3]] == ["a", "b", "c"]  # classes interleaved
    again = calibration_set_from_directory(tmp_path / "img", BLOCK, _opts(tmp_path, samples=20, seed=3, use_cache=False))
    assert again.files == cs.files and again.sha256 == cs.sha256
    other = calibration_set_from_directory(tmp_path / "img", BLOCK, _opts(tmp_path, samples=20, seed=4, use_cache=False))
    assert other.files != cs.files and other.per_class() == cs.per_class()
    order = sample_order(tmp_path / "img", discover_images(tmp_path / "img"), 35, 0)
    # largest remainder: shares 17.5 / 8.75 / 8.75 -> 17 / 9 / 9
    assert [sum(1 for p in order.primary if p.parent.name == c) for c in "abc"] == [17, 9, 9]


def test_unreadable_images_are_listed_and_replaced_from_the_same_class(tmp_path: Path) -> None:
    paths = _classes(tmp_path / "img", {"a": 6, "b": 6})
    (tmp_path / "img" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "img" / "b" / "empty.jpg").write_bytes(b"")
    cs = calibration_set_from_directory(tmp_path / "img", BLOCK, _opts(tmp_path, samples=14))
    assert len(cs) == 12 and cs.candidates == 14
    assert {f for f, _ in cs.skipped} == {"a/broken.png", "b/empty.jpg"}
    assert all(reason for _, reason in cs.skipped)
    assert cs.to_manifest()["skipped_count"] == 2
    assert len(paths) == 12


def test_too_few_usable_images_is_an_input_error_naming_the_folder(tmp_path: Path) -> None:
    _classes(tmp_path / "img", {"a": 2, "b": 1})
    (tmp_path / "img" / "a" / "bad.png").write_bytes(b"junk")
    with pytest.raises(InputError, match=r"only 3 usable images, at least 8.*bad\.png"):
        calibration_set_from_directory(tmp_path / "img", BLOCK, _opts(tmp_path, samples=10, min_images=8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        calibration_set_from_directory(tmp_path / "empty", BLOCK, _opts(tmp_path))


def test_cache_is_keyed_by_files_and_preprocess_and_loads_without_pickle(tmp_path: Path, capsys) -> None:
    paths = _classes(tmp_path / "img", {"a": 5, "b": 5})
    opts = CalibrationOptions(samples=8, cache_dir=tmp_path / "cache", min_images=1)
    first = calibration_set_from_directory(tmp_path / "img", BLOCK, opts)
    assert "calibration images: 8/8" in capsys.readouterr().err  # the progress bar
    assert not first.from_cache and Path(first.cache_file).is_file()
    with np.load(first.cache_file, allow_pickle=False) as z:  # plain arrays only
        assert {k: z[k].dtype.kind for k in z.files} == {"tensors": "f", "files": "U", "classes": "U", "skipped": "U",
                                                        "meta": "U"}
    second = calibration_set_from_directory(tmp_path / "img", BLOCK, opts)
    assert second.from_cache and second.sha256 == first.sha256 and second.files == first.files
    os.utime(paths[0], ns=(1, 1))  # a changed file list (mtime) misses the cache
    assert not calibration_set_from_directory(tmp_path / "img", BLOCK, opts).from_cache
    other_block = dict(BLOCK, image_mean=[0.4, 0.4, 0.4])  # another preprocess block misses it too
    third = calibration_set_from_directory(tmp_path / "img", other_block, opts)
    assert not third.from_cache and third.sha256 != first.sha256


def test_reader_is_a_plain_iterable_and_an_ort_reader() -> None:
    from onnxruntime.quantization import CalibrationDataReader

    x = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    r = CalibrationReader(x, batch_size=2)
    assert [b["pixel_values"].shape[0] for b in r] == [2, 2, 1] and len(r) == 3
    assert r.get_next()["pixel_values"].shape[0] == 2
    r.get_next(), r.get_next()
    assert r.get_next() is None
    r.rewind()
    assert np.array_equal(r.get_next()["pixel_values"], x[:2])
    ort_reader = as_ort_reader(r)
    assert isinstance(ort_reader, CalibrationDataReader) and ort_reader.get_next()["pixel_values"].shape[0] == 2
    assert [even_batch_size(n) for n in (32, 33, 37, 7, 1)] == [8, 3, 1, 7, 1]


def test_strided_collection_reads_every_batch_once_one_range_at_a_time() -> None:
    """ONNX Runtime's strided calibration (what the CPU INT8 flavour uses so that one batch's activations, not the
    whole set's, are held at a time) calls set_range(start, start + stride) in batches, then reads to the end of
    each range: every calibration tensor must arrive exactly once, in order."""
    x = np.arange(7 * 3 * 2 * 2, dtype=np.float32).reshape(7, 3, 2, 2)
    ort_reader = as_ort_reader(CalibrationReader(x, batch_size=2))
    seen = []
    for start in range(0, len(ort_reader), 1):  # quantize_static's loop with CalibStridedMinMax = 1
        ort_reader.set_range(start_index=start, end_index=start + 1)
        while (batch := ort_reader.get_next()) is not None:
            seen.append(batch["pixel_values"])
    assert [b.shape[0] for b in seen] == [2, 2, 2, 1] and np.array_equal(np.concatenate(seen), x)
    ort_reader.rewind()  # a rewind reads the whole set again
    assert sum(b["pixel_values"].shape[0] for b in iter(ort_reader.get_next, None)) == 7


def test_cli_int8_with_too_few_images_exits_2_before_writing(tmp_path: Path) -> None:
    from checkpoints import TINY_CONFIG, save_transformers

    save_transformers(tmp_path / "ck", **TINY_CONFIG)
    _classes(tmp_path / "img", {"a": 2, "b": 2})
    exe = Path(sys.executable).parent / "vitmsn-export"
    proc = subprocess.run([str(exe), "--model", str(tmp_path / "ck"), "--precision", "int8", "--calib-images",
                           str(tmp_path / "img"), "--calib-cache", str(tmp_path / "cache"), "--engine", "skip",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # 1 of the 4 is held out for the drift gates (never calibrates), and the message says so
    assert "only 3 usable images, at least 16" in proc.stderr and "1 more are held out" in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    proc = subprocess.run([str(exe), "--model", str(tmp_path / "ck"), "--precision", "int8", "--engine", "skip",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--precision int8 needs --calib-images" in proc.stderr
