"""``model.int8.cpu.onnx`` in the re-quantization loop: when the CPU flavour fails its drift gate, the encoder
blocks of the sensitivity ranking are kept in FP32 in it too, one more per try, until the gate holds.

Planted damage only the CPU flavour meets: in encoder block 1, the query projection is scaled 100x (peaked
attention: a random model's is near uniform, so its scores' precision would not matter) and the attention output
projection 30x (the branch dominates the residual stream), then the first half of
every head's query channels is scaled up 1000x (weights and bias) and the matching key channels down 1000x. Q.K^T
is unchanged by the second step, but the query and key activations now span 1000x more in some channels than in
others.
The Q/DQ graph for TensorRT keeps attention's Q.K^T in high precision and quantizes weights per channel, so it
does not see it; the CPU flavour quantizes Q.K^T's inputs per tensor (uint8), which zeroes the small channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vitmsn.cli.export_cmd import command as export_command
from vitmsn.runtime.manifest import sha256_file

from checkpoints import TINY_CONFIG, save_transformers
from onnx_oracles import block_linear_nodes, linear_split

PLANTED_BLOCK = 1


def _plant_query_outliers(model: torch.nn.Module, block: int) -> None:
    layer = model.vit.layers[block] if hasattr(model.vit, "layers") else model.vit.encoder.layer[block]
    attention = layer.attention
    q, k, o = ((attention.q_proj, attention.k_proj, attention.o_proj) if hasattr(attention, "q_proj")
               else (attention.attention.query, attention.attention.key, attention.output.dense))
    heads = TINY_CONFIG["num_attention_heads"]
    head_dim = TINY_CONFIG["hidden_size"] // heads
    rows = [h * head_dim + i for h in range(heads) for i in range(head_dim // 2)]
    with torch.no_grad():
        q.weight *= 100.0  # peaked attention (a random model's is near uniform, whatever its scores' precision)
        q.bias *= 100.0
        o.weight *= 30.0  # the attention branch dominates the block's output
        q.weight[rows] *= 1000.0
        q.bias[rows] *= 1000.0
        k.weight[rows] /= 1000.0
        k.bias[rows] /= 1000.0


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("cpu_requant")
    model = save_transformers(base / "ck", **TINY_CONFIG)
    _plant_query_outliers(model, PLANTED_BLOCK)
    model.save_pretrained(base / "ck")
    rng = np.random.default_rng(1)
    for c in range(TINY_CONFIG["num_labels"]):
        # 56 validation images per class (168): enough for every gate to decide (the cosine 5th percentile has a
        # lower bound from 59 images, top-1 >= 0.97 needs 88 and an accuracy drop <= 0.01 163 when all agree),
        # so the last try passes rather than ending inconclusive
        for split, n in (("calib", 8), ("val", 56)):
            folder = base / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return {"ck": base / "ck", "calib": base / "calib", "val": base / "val", "cache": base / "cache"}


def test_cpu_flavour_failing_its_gate_is_requantized_with_sensitive_blocks_in_fp32(planted, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, [
        "--model", str(planted["ck"]), "--out", str(out), "--engine", "skip", "--batch", "1:4:8",
        "--precision", "int8", "--calib-images", str(planted["calib"]), "--calib-samples", "24",
        "--calib-min-images", "4", "--calib-cache", str(planted["cache"]), "--validate-images", str(planted["val"]),
        "--min-cosine", "int8=0.999", "--int8-max-tries", "2"], catch_exceptions=False)
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["precisions"]["int8"]
    assert "requantization" not in int8, "the Q/DQ graph must pass as quantized: the damage is the CPU flavour's"
    cpu = int8["onnxruntime_cpu"]
    rq = cpu["requantization"]
    assert rq["passed"] is True, (rq, result.output)
    assert not rq["tries"][0]["passed"] and rq["tries"][0]["metrics"]["cosine_min"] < 0.999
    assert rq["tries"][-1]["metrics"]["cosine_min"] >= 0.999
    assert f"block:{PLANTED_BLOCK}" in rq["excluded"] and rq["tries"][-1]["file"] == "model.int8.cpu.onnx"
    # the file on disk is the passing graph: the planted block's linear layers float, found by their weights
    assert cpu["sha256"] == sha256_file(out / "model.int8.cpu.onnx")
    _, plain = linear_split(onnx.load(str(out / "model.int8.cpu.onnx")))
    blocks = block_linear_nodes(onnx.load(str(out / "model.fp32.onnx")), planted["ck"])
    assert blocks[PLANTED_BLOCK] <= plain
    report = {s["stage"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    assert report["requantize_int8_cpu"]["passed"] and report["drift_int8_cpu"]["passed"]
    assert result.exit_code == 0, result.output
    assert not [p for p in out.iterdir() if p.name.startswith(".requantize")]


def test_cpu_flavour_whose_gate_is_only_undecided_is_not_requantized(planted, tmp_path):
    """Too few held-out images to decide the CPU flavour's gate: more images would decide it, fewer INT8 blocks
    would not. As for the Q/DQ graph, nothing is re-quantized and the run ends inconclusive, not failed."""
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, [
        "--model", str(planted["ck"]), "--out", str(out), "--engine", "skip", "--batch", "1:4:8",
        "--precision", "int8", "--calib-images", str(planted["calib"]), "--calib-samples", "16",
        "--calib-min-images", "4", "--calib-cache", str(planted["cache"]), "--int8-max-tries", "2"],
        catch_exceptions=False)
    report = {s["stage"]: s for s in json.loads((out / "report.json").read_text())["stages"]}
    verdicts = {g["verdict"] for g in report["drift_int8_cpu"]["metrics"]["gates"]}
    assert "inconclusive" in verdicts and "failed" not in verdicts, report["drift_int8_cpu"]
    assert "requantize_int8_cpu" not in report, report["requantize_int8_cpu"]
    assert "requantization" not in json.loads((out / "manifest.json").read_text())["precisions"]["int8"]["onnxruntime_cpu"]
    assert result.exit_code == 1 and "INCONCLUSIVE" in result.output and "FAILED" not in result.output, result.output


def test_a_cpu_flavour_that_cannot_be_built_is_said_and_the_export_goes_on_without_it(planted, tmp_path, monkeypatch):
    from vitmsn.export import steps

    def killed(*args, **kwargs):  # what the child interpreter's failure raises (e.g. killed out of memory)
        raise RuntimeError("INT8 (ONNX Runtime CPU) quantization of model.fp32.onnx failed: (killed by signal 9)")

    monkeypatch.setattr(steps, "cpu_int8_onnx_from_calibration", killed)
    out = tmp_path / "out"
    result = CliRunner().invoke(export_command, [
        "--model", str(planted["ck"]), "--out", str(out), "--engine", "skip", "--batch", "1:4:8",
        "--precision", "int8", "--calib-images", str(planted["calib"]), "--calib-samples", "16",
        "--calib-min-images", "4", "--calib-cache", str(planted["cache"]), "--int8-max-tries", "0"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "note: no model.int8.cpu.onnx: INT8 (ONNX Runtime CPU)" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["precisions"]["int8"]
    assert "onnxruntime_cpu" not in int8 and "killed by signal 9" in int8["cpu_flavour_not_built"]
    assert any(n.startswith("no model.int8.cpu.onnx: ") for n in manifest["notes"])
    assert not (out / "model.int8.cpu.onnx").exists() and (out / "model.int8.onnx").is_file()
