"""Calibration is never trusted blindly (issue 14, item 3).

* A poisoned cache (zeros, int64, NaN, a wrong shape, 2 rows, images falsely marked unreadable,
  tensors edited behind their record, an older format) is rejected with a warning naming the
  cache file, and the set is rebuilt from the images: the same tensors as an honest build, and a
  cache that is then used again. Each poisoned file is written as an attacker would, with a
  record (SHA-256, statistics) made consistent with the poisoned tensors wherever that is possible.
* The export's drift gates never run in-sample: without ``--validate-images`` they run on a
  seeded, stratified split of ``--calib-images`` held out from calibration; with it, on those
  images less any that are in the calibration sample.
* End to end: a zero-poisoned cache no longer yields an INT8 demo graph that then fails
  ``vitmsn validate`` on held-out images.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
from vitmsn.calibration import cache as calib_cache
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

BLOCK = PreprocessConfig.from_preprocessor_config({**DEFAULT_PREPROCESSOR_CONFIG, "size": {"height": 32, "width": 32}}).to_manifest()
BIN = Path(sys.executable).parent


def _images(root: Path, per_class: int, classes: int = 3) -> Path:
    for c in range(classes):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng(100 * c + i)
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(root / f"class_{c}" / f"{i:03d}.png")
    return root


def _opts(tmp: Path, **kw) -> CalibrationOptions:
    return CalibrationOptions(samples=12, cache_dir=tmp / "cache", progress=False, min_images=4, **kw)


def _forge(path: Path, tensors: np.ndarray, *, files=None, classes=None, skipped=None, meta: bool = True) -> None:
    """Rewrite the cache as an attacker would: new arrays, and a record made consistent with them."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["tensors"] = tensors
    if files is not None:
        arrays["files"], arrays["classes"] = np.array(files, dtype=str), np.array(classes, dtype=str)
    if skipped is not None:
        arrays["skipped"] = np.array(skipped, dtype=str).reshape(-1, 2)
    if meta:
        arrays["meta"] = np.array(json.dumps({
            "format": calib_cache.CACHE_FORMAT, "sha256": calib_cache.tensor_sha256(tensors),
            "shape": list(tensors.shape), "dtype": str(tensors.dtype), "stats": calib_cache.tensor_stats(tensors)}))
    else:
        arrays.pop("meta")
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _poison(kind: str, path: Path) -> None:
    with np.load(path, allow_pickle=False) as z:
        t, files, classes = z["tensors"].copy(), [str(f) for f in z["files"]], [str(c) for c in z["classes"]]
    if kind == "zeros":
        _forge(path, np.zeros_like(t))
    elif kind == "int64":
        _forge(path, np.round(t).astype(np.int64))
    elif kind == "nan":
        t[1, 0, 2, 3] = np.nan
        _forge(path, t)
    elif kind == "wrong-shape":
        _forge(path, np.ascontiguousarray(t[:, :, :16, :16]))
    elif kind == "two-rows":
        _forge(path, t[:2].copy(), files=files[:2], classes=classes[:2])
    elif kind == "false-skips":  # good images marked unreadable, so the sample shrinks to 2
        _forge(path, t[:2].copy(), files=files[:2], classes=classes[:2],
               skipped=[[f, "cannot identify image file"] for f in files[2:]])
    elif kind == "edited":  # one value changed, the record left as it was
        t[0, 0, 0, 0] += 0.5
        with np.load(path, allow_pickle=False) as z:
            meta = str(z["meta"])
        _forge(path, t)
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["meta"] = np.array(meta)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif kind == "old-format":
        _forge(path, t, meta=False)
    else:
        raise AssertionError(kind)


POISONS = {"zeros": "differs from", "int64": "int64", "nan": "NaN", "wrong-shape": "shape", "two-rows": "2 rows",
           "false-skips": "reads fine", "edited": "SHA-256", "old-format": "older"}


@pytest.mark.parametrize("kind", sorted(POISONS))
def test_poisoned_cache_is_rejected_with_a_warning_and_rebuilt(kind: str, tmp_path: Path, caplog) -> None:
    root = _images(tmp_path / "img", per_class=6)
    honest = calibration_set_from_directory(root, BLOCK, _opts(tmp_path))
    path = Path(honest.cache_file)
    assert calibration_set_from_directory(root, BLOCK, _opts(tmp_path)).from_cache  # an honest cache is used
    _poison(kind, path)
    with caplog.at_level(logging.WARNING, logger="vitmsn.calibration"):
        rebuilt = calibration_set_from_directory(root, BLOCK, _opts(tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(path) in w and POISONS[kind] in w and "rebuilding" in w for w in warnings), warnings
    assert not rebuilt.from_cache and rebuilt.sha256 == honest.sha256 and rebuilt.files == honest.files
    again = calibration_set_from_directory(root, BLOCK, _opts(tmp_path))  # the rewritten cache is good again
    assert again.from_cache and again.sha256 == honest.sha256


def test_heldout_split_is_disjoint_seeded_and_stratified(tmp_path: Path) -> None:
    root = _images(tmp_path / "img", per_class=8)
    a = calibration_set_from_directory(root, BLOCK, _opts(tmp_path, hold_out=True))
    assert a.heldout and not set(a.heldout) & set(a.files)
    assert {f.split("/")[0] for f in a.heldout} == {"class_0", "class_1", "class_2"}  # every class gates
    assert len(a.heldout) == 12 and len(a) == 12  # 24 images, 12 wanted: what the sample leaves is held out
    same = calibration_set_from_directory(root, BLOCK, _opts(tmp_path, hold_out=True, use_cache=False))
    assert same.heldout == a.heldout and same.files == a.files
    other = calibration_set_from_directory(root, BLOCK, _opts(tmp_path, hold_out=True, seed=7))
    assert other.heldout != a.heldout
    assert a.to_manifest()["heldout"]["count"] == 12 and a.to_manifest()["heldout"]["seed"] == 0


def test_export_gates_run_on_heldout_images_never_in_sample(tmp_path: Path) -> None:
    from vitmsn.export.validation.comparison import comparison_inputs

    root = _images(tmp_path / "img", per_class=8)
    labels = {0: "class_0", 1: "class_1", 2: "class_2"}
    cs = calibration_set_from_directory(root, BLOCK, _opts(tmp_path, hold_out=True))
    inputs = comparison_inputs(BLOCK, labels, (3, 32, 32), calibration=cs)
    pre = PreprocessConfig.from_manifest(BLOCK)
    expected = np.stack([pre(root / f) for f in cs.heldout])
    assert np.array_equal(inputs.tensors, expected)  # the held-out images, preprocessed as served
    calibrated = {row.tobytes() for row in cs.tensors}
    assert not any(row.tobytes() in calibrated for row in inputs.tensors)
    described = inputs.describe()
    assert described["selection"] == "heldout-from-calibration" and described["split_seed"] == 0
    assert described["count"] == 12 and "held out from calibration" in described["source"]
    assert list(inputs.labels) == [int(f.split("/")[0][-1]) for f in cs.heldout]
    # --validate-images pointing at the calibration folder: the calibrated images are left out.
    full = calibration_set_from_directory(root, BLOCK, _opts(tmp_path))
    v = comparison_inputs(BLOCK, labels, (3, 32, 32), validate_images=root, calibration=full)
    assert v.describe()["count"] == 24 - len(full) and v.describe()["excluded_in_sample"] == len(full)
    assert not any(row.tobytes() in {r.tobytes() for r in full.tensors} for row in v.tensors)


@pytest.mark.slow
def test_zero_poisoned_cache_no_longer_ships_an_int8_graph_that_fails_heldout(tmp_path: Path) -> None:
    from vitmsn.export.demo import write_dataset
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    calib, held, cache_dir = tmp_path / "calib", tmp_path / "held", tmp_path / "cache"
    write_dataset(calib, per_class=4, split="train")
    # 21 per class: 168 labelled held-out images, enough for every gate to decide (fp32's accuracy drop <= 0.01
    # needs 163 with no image changing, its top-1 >= 0.97 88; int8's drop <= 0.02 81): with fewer the export ends
    # inconclusive whatever the cache held, and the test could not tell a rebuilt cache from a poisoned one
    write_dataset(held, per_class=21, split="heldout")
    ck = load_checkpoint("demo")
    block = dict(ck.preprocess.to_manifest(), source=ck.preprocess_source)  # the block the export keys its cache by
    honest = calibration_set_from_directory(calib, block, CalibrationOptions(samples=32, cache_dir=cache_dir,
                                                                            progress=False))
    path = Path(honest.cache_file)
    _poison("zeros", path)
    out = tmp_path / "art"
    proc = subprocess.run([str(BIN / "vitmsn-export"), "--model", "demo", "--precision", "int8", "--calib-images",
                           str(calib), "--calib-samples", "32", "--calib-cache", str(cache_dir), "--validate-images",
                           str(held), "--int8-max-tries", "0", "--no-int8-cpu", "--no-fp32-cpu", "--engine", "skip",
                           "--batch", "1:8:16", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert f"calibration cache {path}" in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precisions"]["int8"]["calibration"]["sha256"] == honest.sha256  # calibrated on the images
    # On the backend the export gated on: OpenVINO's INT8 kernels differ by CPU (an AVX2 EPYC without VNNI: top-1
    # agreement 0.976, 95% bound 0.948 on these 168 images, inconclusive; 0.99 on AVX-512 VNNI): that is the CPU's
    # arithmetic, not the graph's
    validate = subprocess.run([str(BIN / "vitmsn"), "validate", str(out), "--images", str(held), "--precision", "int8",
                               "--backend", "onnxruntime"],
                              capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert validate.returncode == 0, validate.stdout + validate.stderr
