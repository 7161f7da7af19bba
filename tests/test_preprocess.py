"""Preprocessing against transformers' ViTImageProcessor (PIL backend) on real image files.

Tolerance: max abs difference <= 1e-5 against transformers on the same RGB image (the issue's
bound); in practice the lookup-table normalisation and the same Pillow resize give 0.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from runtime_fixtures import photo, png_claiming_size, write_bad_files, write_photo_formats
from vitmsn.core.errors import InputError
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, ImageError, PreprocessConfig, to_rgb

ATOL = 1e-5
CONFIG = {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2, "do_rescale": True,
          "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
          "image_std": [0.229, 0.224, 0.225]}


def hf_processor(config: dict):
    """transformers' processor loaded from a preprocessor_config.json holding ``config``."""
    import transformers
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "preprocessor_config.json").write_text(json.dumps(dict(config, image_processor_type="ViTImageProcessor")))
        return transformers.ViTImageProcessorPil.from_pretrained(tmp)


def ours_from_json(config: dict) -> PreprocessConfig:
    """Ours from the same JSON text (what vitmsn-export reads into the manifest)."""
    return PreprocessConfig.from_manifest(PreprocessConfig.from_preprocessor_config(json.loads(json.dumps(config))).to_manifest())


def hf_pixels(processor, image) -> np.ndarray:
    return processor(image, do_convert_rgb=True, return_tensors="np")["pixel_values"][0]


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_photo_formats(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_bad_files(tmp_path_factory.mktemp("bad"))


# ---- parity with transformers -------------------------------------------------------------
@pytest.mark.parametrize("name", ["photo.jpg", "photo.png", "photo.webp", "photo.bmp", "photo.tiff", "grey.jpg",
                                  "grey.png", "rgba.png", "rgba.webp", "la.png", "palette.png",
                                  "palette_transparent.png", "palette.gif", "cmyk.jpg"])
def test_matches_transformers_on_every_format(formats: dict[str, Path], name: str) -> None:
    processor = hf_processor(CONFIG)
    # The processor's own convert_to_rgb composites transparency onto white: ours with the same option (the default,
    # alpha dropped as transformers.pipeline loads images, is tested in test_cli_alpha.py).
    ours = dataclasses.replace(ours_from_json(CONFIG), alpha_background=(255, 255, 255))
    with Image.open(formats[name]) as im:
        expected = hf_pixels(processor, im)
    got = ours(formats[name])
    assert got.dtype == np.float32 and got.shape == (3, 224, 224)
    assert np.abs(got - expected).max() <= ATOL


@pytest.mark.parametrize("resample", [0, 1, 2, 3, 4, 5])
def test_matches_transformers_with_every_resample_filter_and_a_non_square_size(formats: dict[str, Path], resample: int) -> None:
    config = dict(CONFIG, resample=resample, size={"height": 40, "width": 56}, image_mean=[0.5, 0.4, 0.3],
                  image_std=[0.2, 0.3, 0.4], rescale_factor=0.00392156862745098)
    processor = hf_processor(config)
    ours = ours_from_json(config)
    with Image.open(formats["photo.jpg"]) as im:
        expected = hf_pixels(processor, im)
    got = ours(formats["photo.jpg"])
    assert got.shape == (3, 40, 56)
    assert np.abs(got - expected).max() <= ATOL


def test_matches_transformers_without_resize_rescale_or_normalize() -> None:
    config = dict(CONFIG, do_resize=False, do_normalize=False, size={"height": 30, "width": 40})
    arr = np.asarray(photo(40, 30, seed=3))
    got = PreprocessConfig.from_preprocessor_config(config)(arr)
    assert np.abs(got - hf_pixels(hf_processor(config), arr)).max() <= ATOL
    # a wrong-sized image without do_resize is a clear per-image error, not a shape crash later
    with pytest.raises(ImageError, match="do_resize is off"):
        PreprocessConfig.from_preprocessor_config(config)(np.asarray(photo(41, 30)))


def test_uint8_arrays_match_transformers_including_rgba_blend() -> None:
    processor = hf_processor(CONFIG)
    # the processor's numpy path blends RGBA onto white: ours with that option (the default drops alpha)
    ours = dataclasses.replace(PreprocessConfig.from_preprocessor_config(CONFIG), alpha_background=(255, 255, 255))
    rgb = np.asarray(photo(200, 150, seed=4))
    rgba = np.dstack([rgb, np.asarray(photo(200, 150, seed=5).convert("L"))])
    assert np.abs(ours(rgb) - hf_pixels(processor, rgb)).max() <= ATOL
    assert np.abs(ours(rgba) - hf_pixels(processor, rgba)).max() <= ATOL


def test_lookup_table_is_bit_identical_to_transformers_arithmetic() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        mean, std = rng.uniform(0, 1, 3), rng.uniform(0.05, 1, 3)
        cfg = PreprocessConfig(8, 8, image_mean=tuple(mean), image_std=tuple(std), rescale_factor=float(rng.uniform(0, 0.01)))
        values = np.arange(256, dtype=np.uint8)
        rescaled = (values.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
        for c in range(3):
            expected = (rescaled - np.array(mean[c], np.float32)) / np.array(std[c], np.float32)
            assert np.array_equal(cfg._lut[c], expected)


# ---- conversions transformers does not do -------------------------------------------------
def test_exif_orientation_is_applied(formats: dict[str, Path]) -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    with Image.open(formats["exif_rotated.jpg"]) as im:
        assert im.size == (320, 240)
        upright = ImageOps.exif_transpose(im)
    assert upright.size == (240, 320)
    assert to_rgb(formats["exif_rotated.jpg"]).size == (240, 320)
    got = ours(formats["exif_rotated.jpg"])
    assert np.abs(got - hf_pixels(hf_processor(CONFIG), upright)).max() <= ATOL
    with Image.open(formats["exif_rotated.jpg"]) as im:
        assert np.abs(got - hf_pixels(hf_processor(CONFIG), im.convert("RGB"))).max() > 0.1


def test_sixteen_bit_grey_is_scaled_not_clipped(formats: dict[str, Path]) -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    with Image.open(formats["grey16.png"]) as im:
        assert im.mode.startswith("I")
        wide = np.asarray(im).astype(np.int64)
    eight_bit = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    assert eight_bit.std() > 20  # a clip to 255 would leave an almost white image
    assert np.array_equal(ours(formats["grey16.png"]), ours(eight_bit))


def test_every_input_kind_gives_the_same_pixels(formats: dict[str, Path]) -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    path = formats["photo.png"]
    expected = ours(path)
    data = path.read_bytes()
    with open(path, "rb") as f, Image.open(path) as im:
        kinds = [str(path), path, data, bytearray(data), memoryview(data), io.BytesIO(data), f, im,
                 np.asarray(Image.open(path))]
        for kind in kinds:
            assert np.array_equal(ours(kind), expected), type(kind)
    grey = np.asarray(Image.open(formats["grey.png"]))
    assert np.array_equal(ours(grey), ours(formats["grey.png"]))
    assert np.array_equal(ours(grey[:, :, None]), ours(formats["grey.png"]))


def test_batch_and_out_parameter() -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    images = [np.asarray(photo(100, 80, seed=s)) for s in range(3)]
    batch = ours.batch(images)
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == np.float32 and batch.flags.c_contiguous
    out = np.empty((3, 224, 224), np.float32)
    assert ours(images[1], out) is out and np.array_equal(out, batch[1])


# ---- bad inputs -----------------------------------------------------------------------------
@pytest.mark.parametrize("name, reason", [
    ("empty.jpg", "empty file"),
    ("truncated.jpg", "truncated or corrupt"),
    ("text.jpg", "not a readable image"),
    ("bomb.png", "too large to decode safely"),
    ("eps.jpg", "not a readable image"),  # EPS would run Ghostscript: never attempted
])
def test_bad_files_give_a_clear_error_naming_the_file(bad_files: dict[str, Path], name: str, reason: str) -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    with pytest.raises(ImageError, match=reason) as info:
        ours(bad_files[name])
    assert str(bad_files[name]) in str(info.value)
    assert isinstance(info.value, InputError)


def test_pixel_limit_is_checked_before_decoding() -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    with pytest.raises(ImageError, match="81 megapixels is over the limit"):  # below Pillow's own guard
        ours(png_claiming_size(9000, 9000))
    small = dataclasses.replace(ours, max_pixels=1000)
    with pytest.raises(ImageError, match="possible decompression bomb"):
        small(_png_bytes(photo(40, 30)))


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("array, reason", [
    (np.zeros((10, 10, 5), np.uint8), "got shape"),
    (np.zeros((10, 10, 3), np.float32), "got dtype float32"),
    (np.zeros(10, np.uint8), "got shape"),
    (np.zeros((0, 10, 3), np.uint8), "got shape"),
])
def test_wrong_arrays_give_a_clear_error(array: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageError, match=reason):
        PreprocessConfig.from_preprocessor_config(CONFIG)(array)


def test_missing_path_directory_and_unsupported_type(tmp_path: Path) -> None:
    ours = PreprocessConfig.from_preprocessor_config(CONFIG)
    with pytest.raises(ImageError, match="no such file"):
        ours(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        ours(tmp_path)
    with pytest.raises(ImageError, match="unsupported input type int"):
        ours(42)  # type: ignore[arg-type]


def test_batch_names_the_first_bad_image(bad_files: dict[str, Path], formats: dict[str, Path]) -> None:
    with pytest.raises(ImageError, match="text.jpg"):
        PreprocessConfig.from_preprocessor_config(CONFIG).batch([formats["photo.jpg"], bad_files["text.jpg"]])


# ---- configuration ----------------------------------------------------------------------------
def test_manifest_round_trip_and_config_parsing() -> None:
    cfg = PreprocessConfig.from_preprocessor_config(dict(CONFIG, resample="bicubic", size=64, image_mean=0.5))
    assert (cfg.height, cfg.width, cfg.resample, cfg.image_mean) == (64, 64, 3, (0.5, 0.5, 0.5))
    block = cfg.to_manifest()
    assert "draft" not in block and "max_pixels" not in block  # runtime choices, not the model's
    assert PreprocessConfig.from_manifest(block) == cfg
    assert PreprocessConfig.from_manifest(block, draft=True).draft
    with pytest.raises(InputError, match="incomplete or malformed"):
        PreprocessConfig.from_manifest({"size": {"height": 1}})
    with pytest.raises(InputError, match="do_center_crop"):
        PreprocessConfig.from_preprocessor_config(dict(CONFIG, do_center_crop=True))
    with pytest.raises(InputError, match="image_std must not contain 0"):
        PreprocessConfig(8, 8, image_std=(0.5, 0.0, 0.5))
    assert PreprocessConfig.from_preprocessor_config(DEFAULT_PREPROCESSOR_CONFIG).image_mean == (0.5, 0.5, 0.5)


def test_draft_is_opt_in_close_but_not_exact(formats: dict[str, Path], tmp_path: Path) -> None:
    """JPEG draft decoding is faster and inexact: never the default (speed is in the benchmark)."""
    exact = PreprocessConfig.from_preprocessor_config(CONFIG)
    assert not exact.draft
    fast = dataclasses.replace(exact, draft=True)
    photo(640, 480, seed=9).save(tmp_path / "vga.jpg", quality=90)  # 640x480 -> 224: decoded at 1/2 scale
    a, b = exact(tmp_path / "vga.jpg"), fast(tmp_path / "vga.jpg")
    diff = np.abs(a - b)
    assert diff.max() > ATOL  # really a different decode
    assert diff.mean() < 0.1  # but the same picture (normalised units; the image spans about 4)
    # non-JPEG images are pre-reduced only when shrinking by 3x or more; 320x240 -> 224 is not
    assert np.array_equal(exact(formats["photo.png"]), fast(formats["photo.png"]))
