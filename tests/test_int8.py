"""model.int8.onnx (Q/DQ placed for TensorRT, ModelOpt PTQ) and model.int8.cpu.onnx (placed for
ONNX Runtime CPU): graph structure, exclusions, the manifest record, and drift on the demo.

Tolerances (issue acceptance, trained demo, 200 held-out images, calibrated on 32 training-split
images): top-1 agreement with FP32 >= 98%, accuracy drop <= 1 point, for both INT8 graphs.
Structure: symmetric int8 Q/DQ (zero points 0) only in front of MatMul/Gemm/Conv (and the Shape
that reads the input's batch size); LayerNorm, Softmax and GELU (Erf) never fed by a DQ.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest

from vitmsn.calibration import CalibrationMethod, tensor_sha256
from vitmsn.core.errors import InputError
from vitmsn.export.precision.int8 import Int8Options, qdq_onnx_from_calibration, resolve_exclusions
from vitmsn.export.precision.int8_cpu import cpu_int8_onnx_from_calibration
from vitmsn.runtime.manifest import Manifest

from checkpoints import TINY_CONFIG
from onnx_oracles import block_linear_nodes, linear_split
from precision_fixtures import (consumers_of_dq, demo_precision_run, drift, heldout_tensors,
                                onnx_logits, op_counts, zero_points)

HIGH_PRECISION_OPS = {"LayerNormalization", "Softmax", "Erf", "Add", "Div", "Mul"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from checkpoints import TINY_CONFIG, save_transformers
    from vitmsn.export.pipeline import ExportOptions, run_export

    d = tmp_path_factory.mktemp("int8")
    save_transformers(d / "ck", **TINY_CONFIG)
    run_export(ExportOptions(model=str(d / "ck"), out=d / "out", engine="skip"))
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    fp32 = d / "out" / "model.fp32.onnx"
    trt16 = qdq_onnx_from_calibration(fp32, d / "trt16.onnx", calib, options=Int8Options(high_precision="fp16"))
    trt32 = qdq_onnx_from_calibration(fp32, d / "trt32.onnx", calib, options=Int8Options(
        high_precision="fp32", method=CalibrationMethod.MAX, exclude=("block:0",)))
    attn = qdq_onnx_from_calibration(fp32, d / "attn.onnx", calib, options=Int8Options(
        high_precision="fp32", quantize_attention=True))
    cpu = cpu_int8_onnx_from_calibration(fp32, d / "cpu.onnx", calib)
    return {"dir": d, "fp32": fp32, "calib": calib, "trt16": trt16, "trt32": trt32, "attn": attn, "cpu": cpu}


def test_tensorrt_placement_is_symmetric_and_only_on_matmul_gemm_conv(tiny: dict) -> None:
    m = onnx.load(str(tiny["trt16"].path))
    counts = op_counts(m)
    assert counts["QuantizeLinear"] == counts["DequantizeLinear"] > 0
    fed = consumers_of_dq(m)
    assert fed <= {"MatMul", "Gemm", "Conv", "Shape"} and {"MatMul", "Conv"} <= fed
    assert not fed & HIGH_PRECISION_OPS
    zps = zero_points(m)
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    # FP16 high precision: the weights of what stays unquantized are FP16, the graph I/O float32
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert {v.type.tensor_type.elem_type for v in list(m.graph.input) + list(m.graph.output)} == {onnx.TensorProto.FLOAT}
    r = tiny["trt16"].to_manifest()
    assert r["high_precision_dtype"] == "float16" and r["method"] == "entropy" and r["symmetric"]
    assert r["quantized_nodes"] == len(tiny["trt16"].quantized_nodes) > 0


def _matmul_operands(m: onnx.ModelProto) -> dict[str, list[str]]:
    """Each MatMul's operands traced back through DequantizeLinear/Transpose/Reshape to their origin op (or 'weight')."""
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {i.name for i in m.graph.initializer}

    def origin(name: str) -> str:
        while name in producer and producer[name].op_type in ("DequantizeLinear", "QuantizeLinear", "Transpose",
                                                                "Reshape", "Cast", "Div", "Mul"):
            name = producer[name].input[0]
        return "weight" if name in inits or name not in producer or producer[name].op_type == "Constant" \
            else producer[name].op_type
    return {n.name: [origin(i) for i in n.input] for n in m.graph.node if n.op_type == "MatMul"}


def test_attention_matmuls_stay_in_high_precision_unless_asked(tiny: dict) -> None:
    """Q.K^T and softmax.V (both operands activations) get no Q/DQ by default; the linear layers do."""
    fp32 = onnx.load(str(tiny["fp32"]), load_external_data=False)
    operands = _matmul_operands(fp32)
    attention = {name for name, ops in operands.items() if "weight" not in ops}
    assert any("Softmax" in ops for ops in operands.values())  # the tracer really finds softmax.V
    assert len(attention) == 2 * TINY_CONFIG["num_hidden_layers"]  # two per encoder block
    assert set(tiny["trt16"].attention_nodes) == attention
    for result in (tiny["trt16"], tiny["trt32"]):  # trt32 excludes block:0, which holds two of them
        assert set(result.attention_nodes) | set(result.excluded_nodes) == attention | set(result.excluded_nodes)
        assert attention.isdisjoint(result.quantized_nodes) and attention <= set(result.not_quantized_nodes)
        assert result.to_manifest()["attention_matmuls"] == "high precision"
        assert set(result.quantized_nodes) & {n for n in operands if n not in attention}  # linear layers are INT8
    asked = tiny["attn"]
    # asked for: nothing is held back (ModelOpt's own size rules still skip this tiny model's 8-wide heads)
    assert asked.attention_nodes == ()
    assert asked.to_manifest()["attention_matmuls"] == "int8"


def test_fp32_high_precision_and_block_exclusion(tiny: dict) -> None:
    m = onnx.load(str(tiny["trt32"].path))
    assert not any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    excluded = set(tiny["trt32"].excluded_nodes)
    assert excluded and excluded.isdisjoint(tiny["trt32"].quantized_nodes)
    assert excluded <= set(tiny["trt32"].not_quantized_nodes)
    fp32 = onnx.load(str(tiny["fp32"]), load_external_data=False)
    # block 0's linear layers, found by their weights (not by the product's scope metadata), are what stayed float
    blocks = block_linear_nodes(fp32, tiny["dir"] / "ck")
    quantized, plain = linear_split(onnx.load(str(tiny["trt32"].path)))
    assert blocks[0] <= excluded and blocks[0] <= plain and not blocks[0] & quantized and blocks[1] <= quantized
    assert set(resolve_exclusions(fp32, ["vit.encoder.layer.0"])) >= blocks[0]  # the scope form names the same block
    assert set(resolve_exclusions(fp32, ["block:0-1"])) >= blocks[0] | blocks[1]
    with pytest.raises(InputError, match="matches no"):
        resolve_exclusions(fp32, ["block:7"])
    with pytest.raises(InputError, match="matches no"):
        resolve_exclusions(fp32, ["no_such_node"])
    assert tiny["trt32"].to_manifest()["method"] == "max"


def test_cpu_flavour_is_uint8_and_fuses_to_integer_matmuls(tiny: dict, tmp_path: Path) -> None:
    import onnxruntime as ort

    m = onnx.load(str(tiny["cpu"].path))
    zps = zero_points(m)
    assert zps and all(z.dtype == np.uint8 for z in zps)
    assert consumers_of_dq(m) == {"MatMul"} and op_counts(m).get("QuantizeLinear", 0) > 0
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tiny["cpu"].path), so, providers=["CPUExecutionProvider"])
    fused = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    # every quantized linear layer became one integer GEMM with float output; nothing requantized
    assert fused["MatMulIntegerToFloat"] == len(tiny["cpu"].quantized_nodes) > 0
    assert fused["QLinearMatMul"] == 0
    assert tiny["cpu"].to_manifest()["activations"].startswith("uint8")
    # Q.K^T is INT8 too, softmax.V is not (traced independently of the quantizer's own selection)
    operands = _matmul_operands(onnx.load(str(tiny["fp32"]), load_external_data=False))
    scores = {n for n, ops in operands.items() if "weight" not in ops and "Softmax" not in ops}
    context = {n for n, ops in operands.items() if "Softmax" in ops}
    assert len(scores) == len(context) == TINY_CONFIG["num_hidden_layers"]
    assert scores <= set(tiny["cpu"].quantized_nodes) and context.isdisjoint(tiny["cpu"].quantized_nodes)
    # what stays FP32 between the integer GEMMs is fused (one BiasGelu per block, two SkipLayerNorms
    # per block but the first block's first, which reads the embeddings' plain LayerNorm)
    blocks = TINY_CONFIG["num_hidden_layers"]
    assert fused["BiasGelu"] == blocks and fused["SkipLayerNormalization"] == 2 * blocks
    assert tiny["cpu"].to_manifest()["ort_fusion"]["applied"]


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["model.int8.onnx", "model.int8.cpu.onnx"])
def test_demo_int8_drift_on_heldout_images(graph: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    run = demo_precision_run(tmp_path_factory.getbasetemp() / "demo-precisions")
    out = run["out"]
    x, labels = heldout_tensors(run["heldout"], out)
    d = drift(onnx_logits(out / graph, x), onnx_logits(out / "model.fp32.onnx", x), labels)
    assert d["top1_agreement"] >= 0.98, d
    assert d["accuracy_drop"] <= 0.01, d


@pytest.mark.slow
def test_demo_int8_manifest_records_the_calibration(tmp_path_factory: pytest.TempPathFactory) -> None:
    from vitmsn.runtime.manifest import sha256_file

    run = demo_precision_run(tmp_path_factory.getbasetemp() / "demo-precisions")
    entry = Manifest.load(run["out"]).data["precisions"]["int8"]
    calib = entry["calibration"]
    assert calib["method"] == entry["method"] == "entropy" and calib["count"] == 32
    assert calib["source"] == str(run["calib"]) and calib["skipped_images"] == 0 and calib["stratified"]
    with np.load(calib["cache_file"], allow_pickle=False) as z:
        assert tensor_sha256(z["tensors"]) == calib["sha256"]  # the hash is of the tensors actually used
    assert entry["high_precision_dtype"] == "float16"  # an engine was built from it
    cpu = entry["onnxruntime_cpu"]
    assert cpu["file"] == "model.int8.cpu.onnx" and cpu["sha256"] == sha256_file(run["out"] / cpu["file"])
    assert cpu["calibration_sha256"] == calib["sha256"] and cpu["high_precision_dtype"] == "float32"
