"""Fixtures for the drift-validation and sensitivity tests (import them into a test module).

* ``calib_images``: 32 demo images from the *train* split (calibration never sees held-out images).
* ``demo_int8_artifacts``: the export pipeline's FP32 + INT8 artifacts of the demo model
  (``model.int8.onnx``, ModelOpt Q/DQ, and its ONNX Runtime CPU flavour ``model.int8.cpu.onnx``).
* :func:`add_int8`: an INT8 graph added to an existing FP32 export (the benchmark uses it).
* ``planted_artifacts``: a copy whose INT8 graph has the activation scales of one encoder block
  (``PLANTED_BLOCK``) shrunk 20x, so those activations clip: a deliberately damaged artifact
  with a known culprit. Its manifest SHA-256 is updated: the damage is in what was exported.
* ``few_images``: 2 held-out images per class (16), for the tests that only need a run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

PLANTED_BLOCK = 3
PLANTED_FACTOR = 0.05

# Test modules import these fixtures by name, and pytest then keeps one session fixture per
# importing module: this cache makes each one really built once per session.
_BUILT: dict[str, Path] = {}


def _once(name: str, build) -> Path:
    if name not in _BUILT:
        _BUILT[name] = build()
    return _BUILT[name]


def refresh_sha(artifacts: Path, precision: str) -> None:
    from vitmsn.runtime.manifest import sha256_file

    path = artifacts / "manifest.json"
    data = json.loads(path.read_text())
    entry = data["precisions"][precision]
    entry["sha256"] = sha256_file(artifacts / entry["file"])
    path.write_text(json.dumps(data, indent=2))


def copy_artifacts(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def add_int8(artifacts: Path, calib_dir: Path, exclude: tuple[str, ...] = ()) -> None:
    """Quantize the directory's FP32 graph and record model.int8.onnx in its manifest."""
    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
    from vitmsn.export.precision.int8 import Int8Options, qdq_onnx_from_calibration
    from dataclasses import replace

    from vitmsn.runtime.manifest import CalibrationRecord, Manifest, PrecisionEntry, Where, sha256_file

    manifest = Manifest.load(artifacts)
    cs = calibration_set_from_directory(calib_dir, manifest.preprocess.to_json(),
                                        CalibrationOptions(samples=32, use_cache=False, progress=False))
    path = artifacts / "model.int8.onnx"
    result = qdq_onnx_from_calibration(artifacts / "model.fp32.onnx", path, cs.tensors,
                                       options=Int8Options(high_precision="fp32", exclude=exclude))
    record = CalibrationRecord.from_json(cs.to_manifest(), Where(str(manifest.path), "precisions.int8.calibration"))
    entry = PrecisionEntry(path.name, sha256_file(path), path.stat().st_size, "float32", record,
                           extra=result.to_manifest())
    replace(manifest, precisions={**manifest.precisions, "int8": entry}).save()


def perturb_block_scales(path: Path, block: int, factor: float) -> int:
    """Multiply the activation scales of encoder block ``block``'s Q/DQ pairs by ``factor``; return how many."""
    import onnx
    from onnx import numpy_helper

    from vitmsn.export.precision.sensitivity import qdq_groups

    model = onnx.load(str(path))
    fp32 = onnx.load(str(path.parent / "model.fp32.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    producer = {o: n for n in model.graph.node for o in n.output}
    changed = set()
    for name in qdq_groups(model, fp32)[f"block:{block}"]:
        q = producer.get(nodes[name].input[0])
        if q is None or q.input[0] in inits:  # weights: leave them alone
            continue
        for scale in {q.input[1], nodes[name].input[1]} - changed:
            t = inits[scale]
            t.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(t) * factor).astype(np.float32), t.name))
            changed.add(scale)
    onnx.save_model(model, str(path))
    return len(changed)


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.demo import write_dataset

    def build() -> Path:
        out = tmp_path_factory.mktemp("calib")
        write_dataset(out, per_class=4, seed=7, split="train")
        return out

    return _once("calib_images", build)


@pytest.fixture(scope="session")
def demo_int8_artifacts(calib_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``vitmsn-export --model demo --precision int8 --calib-images ...`` writes (both INT8 flavours)."""
    from vitmsn.core.errors import ValidationFailed
    from vitmsn.export.pipeline import ExportOptions, run_export

    def build() -> Path:
        out = tmp_path_factory.mktemp("int8") / "demo"
        try:
            run_export(ExportOptions(model="demo", out=out, precisions=("fp32", "int8"), calib_images=calib_images,
                                     calib_samples=32, engine="skip"))
        except ValidationFailed:  # the export's own drift stage; the artifacts are written and validated here
            pass
        return out

    return _once("demo_int8_artifacts", build)


@pytest.fixture(scope="session")
def planted_artifacts(demo_int8_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build() -> Path:
        out = copy_artifacts(demo_int8_artifacts, tmp_path_factory.mktemp("planted") / "demo")
        assert perturb_block_scales(out / "model.int8.onnx", PLANTED_BLOCK, PLANTED_FACTOR) > 0
        refresh_sha(out, "int8")
        return out

    return _once("planted_artifacts", build)


@pytest.fixture(scope="session")
def few_images(heldout_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build() -> Path:
        out = tmp_path_factory.mktemp("few")
        for folder in sorted(p for p in heldout_images.iterdir() if p.is_dir()):
            (out / folder.name).mkdir()
            for f in sorted(folder.iterdir())[:2]:
                shutil.copy(f, out / folder.name / f.name)
        return out

    return _once("few_images", build)
