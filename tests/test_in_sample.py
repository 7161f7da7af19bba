"""Gating images are never calibration images, matched by content rather than path.

* A byte-identical copy of a calibration image under another name, and a lossless re-encoding of one
  (a PNG saved again with other settings; a calibration JPEG's decoded pixels saved as PNG), are left
  out of the export's drift gates and of ``vitmsn validate``, and counted (``excluded_in_sample``).
  The digests here are computed by the test itself (hashlib + Pillow), not by the code under test.
* The README's own demo recipe writes calibration and validation folders that share no image: the
  test runs the README's literal ``python -c`` lines, so README and test cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

from validation_fixtures import calib_images, demo_int8_artifacts  # noqa: F401  (session fixtures)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BLOCK = PreprocessConfig.from_preprocessor_config({**DEFAULT_PREPROCESSOR_CONFIG, "size": {"height": 32, "width": 32}}).to_manifest()
LABELS = {0: "class_0", 1: "class_1", 2: "class_2"}


def _noise(path: Path, seed: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path, format=fmt)


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pixels_sha(path: Path) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(np.asarray(im.convert("RGB")).tobytes()).hexdigest()


def _lossless_copies(src_root: Path, files: list[str], dst_root: Path) -> None:
    """For each calibration image: a byte-identical copy under another name, and a PNG of its decoded pixels
    (written with other settings, so its bytes differ)."""
    for rel in files:
        src = src_root / rel
        cls = Path(rel).parts[0]
        (dst_root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst_root / cls / f"copy_of_{src.name}")
        resaved = dst_root / cls / f"resaved_{src.stem}_{src.suffix[1:]}.png"
        with Image.open(src) as im:
            im.convert("RGB").save(resaved, format="PNG", compress_level=9)
        assert _file_sha(resaved) != _file_sha(src) and _pixels_sha(resaved) == _pixels_sha(src)


def test_export_gates_leave_out_renamed_and_resaved_calibration_images(tmp_path: Path) -> None:
    from vitmsn.export.validation.comparison import comparison_inputs

    calib = tmp_path / "calib"
    for c in range(3):
        for i in range(4):
            _noise(calib / f"class_{c}" / f"{i:03d}.png", 100 * c + i)
            _noise(calib / f"class_{c}" / f"{i:03d}.bmp", 500 + 100 * c + i, "BMP")
    cs = calibration_set_from_directory(calib, BLOCK, CalibrationOptions(samples=6, use_cache=False, progress=False,
                                                                          min_images=4))
    val = tmp_path / "val"
    _lossless_copies(calib, list(cs.files), val)
    for c in range(3):
        _noise(val / f"class_{c}" / "fresh.png", 900 + c)  # one image per class the model never calibrated on
    inputs = comparison_inputs(BLOCK, LABELS, (3, 32, 32), validate_images=val, calibration=cs)
    described = inputs.describe()
    assert described["excluded_in_sample"] == 2 * len(cs.files), described
    assert described["count"] == 3 and described["in_sample"] is False
    calibrated = {row.tobytes() for row in cs.tensors}
    assert not any(row.tobytes() in calibrated for row in inputs.tensors)


def test_heldout_split_leaves_out_a_copy_of_a_calibration_image_in_the_same_folder(tmp_path: Path) -> None:
    """Without --validate-images the gates run on images held out of --calib-images; a duplicate of a calibrated
    image inside that folder (another name) is not a held-out image."""
    from vitmsn.export.validation.comparison import comparison_inputs

    calib = tmp_path / "calib"
    for c in range(3):
        for i in range(8):
            _noise(calib / f"class_{c}" / f"{i:03d}.png", 100 * c + i)
    options = CalibrationOptions(samples=12, use_cache=False, progress=False, min_images=4, hold_out=True)
    first = calibration_set_from_directory(calib, BLOCK, options)
    for rel in first.files:  # every calibrated image gets a twin; the split is then redrawn over the larger folder
        src = calib / rel
        shutil.copyfile(src, src.with_name(f"twin_{src.name}"))
    cs = calibration_set_from_directory(calib, BLOCK, options)
    calibrated = {_file_sha(calib / f) for f in cs.files}
    twins_held = sum(_file_sha(calib / f) in calibrated for f in cs.heldout)
    assert twins_held > 0  # the split did put copies of calibrated images among the held-out ones
    inputs = comparison_inputs(BLOCK, LABELS, (3, 32, 32), calibration=cs)
    assert inputs.excluded_in_sample == twins_held
    assert len(inputs.tensors) == len(cs.heldout) - twins_held


def test_validate_leaves_out_calibration_images_by_content(demo_int8_artifacts: Path, calib_images: Path,  # noqa: F811
                                                           tmp_path: Path) -> None:
    """The manifest records the calibration sample's digests; `vitmsn validate` on copies of the calibration folder
    (renamed, and re-saved losslessly) leaves the calibrated ones out, and only those."""
    from vitmsn.export.validation.validate import validate_artifacts

    manifest = json.loads((demo_int8_artifacts / "manifest.json").read_text())
    block = manifest["calibration"]
    calibrated = block["count"]
    assert len(block["images_sha256"]) == calibrated and len(block["pixels_sha256"]) == calibrated
    every = sorted(p.relative_to(calib_images).as_posix() for p in calib_images.rglob("*") if p.is_file())
    assert len(every) > calibrated  # some of the folder was held out of calibration: those must stay in
    val = tmp_path / "val"
    _lossless_copies(calib_images, every, val)
    recorded = set(block["images_sha256"])
    expected = 2 * sum(_file_sha(calib_images / f) in recorded for f in every)
    assert expected == 2 * calibrated
    result = validate_artifacts(demo_int8_artifacts, val, precisions=["fp32"], backend="onnxruntime", progress=False)
    images = result.to_dict()["images"]
    assert images["excluded_in_sample"] == expected and images["in_sample"] is False, images
    held_out = [Path(f) for f in every if _file_sha(calib_images / f) not in recorded]
    assert set(result.evaluated) == {f"{f.parent.as_posix()}/{name}" for f in held_out
                                     for name in (f"copy_of_{f.name}", f"resaved_{f.stem}_{f.suffix[1:]}.png")}


def _readme_recipe() -> tuple[list[str], str, str]:
    """The README's demo dataset lines (verbatim), and the folders its export calibrates on and validate gates on."""
    text = (ROOT / "README.md").read_text()
    writes = re.findall(r'^python -c "from vitmsn\.export\.demo import write_dataset; [^"\n]*"$', text, re.MULTILINE)
    calib = re.search(r"^vitmsn-export --model demo .*--calib-images (\S+)", text, re.MULTILINE)
    val = re.search(r"^vitmsn validate \S+ --images (\S+)", text, re.MULTILINE)
    assert len(writes) >= 2 and calib and val, "README lost its demo dataset recipe"
    return writes, calib.group(1), val.group(1)


def test_readme_demo_recipe_writes_calibration_and_validation_sets_that_share_no_image(tmp_path: Path) -> None:
    writes, calib, val = _readme_recipe()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    for line in writes:
        subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, check=True, timeout=300)
    folders = {}
    for name in (calib, val):
        files = sorted(p for p in (tmp_path / name).rglob("*") if p.is_file())
        assert files, f"the README's recipe writes no {name}/"
        folders[name] = files
    calib_bytes = {_file_sha(p) for p in folders[calib]}
    calib_pixels = {_pixels_sha(p) for p in folders[calib]}
    shared = [p.name for p in folders[val] if _file_sha(p) in calib_bytes or _pixels_sha(p) in calib_pixels]
    assert shared == [], f"{len(shared)} of {len(folders[val])} validation images are calibration images: {shared[:4]}"
