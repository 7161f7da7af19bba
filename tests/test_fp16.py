"""model.fp16.onnx: AutoCast conversion, what stays FP32 and why, I/O dtypes, and drift on the demo.

Tolerances (issue acceptance, trained demo, held-out images): top-1 agreement with FP32 = 100%,
minimum per-image cosine of the logits >= 0.999. Structure: every LayerNormalization computes in
FP32, every MatMul in FP16, inputs/outputs float32 unless --fp16-io.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from vitmsn.export.precision.fp16 import Fp16Options, fp16_onnx_from_fp32
from vitmsn.runtime.manifest import Manifest

from precision_fixtures import demo_precision_run, drift, heldout_tensors, io_elem_types, onnx_logits
from onnx_oracles import float32_compute_nodes


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from checkpoints import TINY_CONFIG, save_transformers
    from vitmsn.export.pipeline import ExportOptions, run_export

    d = tmp_path_factory.mktemp("fp16")
    save_transformers(d / "ck", **TINY_CONFIG)
    run_export(ExportOptions(model=str(d / "ck"), out=d / "out", engine="skip"))
    return d / "out" / "model.fp32.onnx"


def _x(n: int = 8, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size), dtype=np.float32)


def test_layernorm_stays_fp32_matmuls_become_fp16_io_stays_fp32(tiny_fp32: Path, tmp_path: Path) -> None:
    r = fp16_onnx_from_fp32(tiny_fp32, tmp_path / "m.onnx", reference_inputs=_x())
    m = onnx.load(str(tmp_path / "m.onnx"))
    ln = [n.name for n in m.graph.node if n.op_type == "LayerNormalization"]
    matmuls = [n.name for n in m.graph.node if n.op_type == "MatMul"]
    fp32_nodes = set(float32_compute_nodes(m))
    assert ln and set(ln) <= fp32_nodes
    assert matmuls and not set(matmuls) & fp32_nodes
    assert io_elem_types(m) == {onnx.TensorProto.FLOAT}
    kept = {k["node"]: k for k in r.kept_fp32}
    assert set(kept) == set(ln) and all("LayerNorm" in k["reason"] for k in kept.values())
    entry = r.to_manifest()
    assert entry["kept_fp32"]["by_op_type"] == {"LayerNormalization": len(ln)}
    assert entry["io_dtype"] == "float32" and entry["range_check"]["reference"] == "8 calibration images"
    half = {i.name for i in m.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert any(i in half for n in m.graph.node if n.op_type == "MatMul" for i in n.input)


def test_fp16_io_option(tiny_fp32: Path, tmp_path: Path) -> None:
    r = fp16_onnx_from_fp32(tiny_fp32, tmp_path / "m.onnx", options=Fp16Options(io_dtype="float16"))
    m = onnx.load(str(tmp_path / "m.onnx"))
    assert io_elem_types(m) == {onnx.TensorProto.FLOAT16} and r.io_dtype == "float16"
    assert r.reference.startswith("random inputs")  # no images: the report says the range check was weaker
    logits = onnx_logits(tmp_path / "m.onnx", _x(2))
    assert logits.shape == (2, 3) and np.isfinite(logits).all()


def test_out_of_range_values_keep_their_nodes_in_fp32(tiny_fp32: Path, tmp_path: Path) -> None:
    r = fp16_onnx_from_fp32(tiny_fp32, tmp_path / "m.onnx", options=Fp16Options(data_max=0.5), reference_inputs=_x())
    by_range = [k for k in r.kept_fp32 if k["reason"].startswith("values beyond FP16-safe range")]
    assert by_range, r.kept_fp32
    fp32_nodes = set(float32_compute_nodes(onnx.load(str(tmp_path / "m.onnx"))))
    float_ops = {"MatMul", "Add", "Mul", "Div", "Erf", "Softmax", "Gemm", "Conv"}
    kept_float = {k["node"] for k in by_range if k["op_type"] in float_ops}
    assert kept_float and kept_float <= fp32_nodes


@pytest.mark.slow
def test_demo_fp16_matches_fp32_on_heldout_images(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = demo_precision_run(tmp_path_factory.getbasetemp() / "demo-precisions")
    out = run["out"]
    x, labels = heldout_tensors(run["heldout"], out)
    d = drift(onnx_logits(out / "model.fp16.onnx", x), onnx_logits(out / "model.fp32.onnx", x), labels)
    assert d["top1_agreement"] == 1.0, d
    assert d["cosine_min"] >= 0.999, d
    entry = Manifest.load(run["out"]).data["precisions"]["fp16"]
    n_ln = sum(1 for n in onnx.load(str(out / "model.fp16.onnx")).graph.node if n.op_type == "LayerNormalization")
    assert entry["kept_fp32"]["by_op_type"].get("LayerNormalization") == n_ln and entry["io_dtype"] == "float32"
    assert entry["range_check"]["reference"] == "16 calibration images"


def test_kept_fp32_list_comes_from_the_graph_not_the_log(tiny_fp32: Path, tmp_path: Path, monkeypatch) -> None:
    """A ModelOpt release that rewords (or drops) its "Skipping node" lines must not empty the manifest's list."""
    import contextlib

    from vitmsn.export.precision import fp16

    @contextlib.contextmanager
    def reworded(verbose: bool = False):
        yield ["AutoCast: node left alone because of rules"]  # nothing the old parser would have matched

    monkeypatch.setattr(fp16, "captured_modelopt_logs", reworded)
    r = fp16_onnx_from_fp32(tiny_fp32, tmp_path / "m.onnx", reference_inputs=_x())
    m = onnx.load(str(tmp_path / "m.onnx"))
    ln = {n.name for n in m.graph.node if n.op_type == "LayerNormalization"}
    kept = {k["node"]: k for k in r.kept_fp32}
    assert ln and set(kept) == set(float32_compute_nodes(m)) and ln <= set(kept)
    assert all("LayerNorm" in kept[n]["reason"] for n in ln)  # the op-type rule is still named


def test_a_range_check_that_cannot_fit_is_not_run_and_the_graph_is_still_converted(tiny_fp32: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    """When AutoCast's range check would not fit in memory (ViT-L/7, B/4: every intermediate output of one image
    is tens of GB), the conversion runs without its reference run, and the manifest's range_check says why."""
    import modelopt.onnx.autocast.referencerunner as referencerunner

    def must_not_run(*args, **kwargs):
        raise AssertionError("AutoCast's reference run ran although the range check was skipped")

    monkeypatch.setattr(referencerunner.ReferenceRunner, "run", must_not_run)
    why = "AutoCast's range check not run: it holds every intermediate output, about 16.8 GB for one image"
    r = fp16_onnx_from_fp32(tiny_fp32, tmp_path / "m.onnx", reference_inputs=_x(),
                            options=Fp16Options(range_check_skipped=why))
    assert r.to_manifest()["range_check"]["reference"] == why
    assert r.converted_nodes > 0 and np.all(np.isfinite(onnx_logits(tmp_path / "m.onnx", _x())))
