"""INT8 sensitivity finds a planted bad block; re-quantization keeps it out and stops when the gate holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from validation_fixtures import (PLANTED_BLOCK, calib_images, demo_int8_artifacts, few_images,  # noqa: F401
                                 planted_artifacts)

from vitmsn.export.validation.gates import Gates
from vitmsn.export.demo import CHECKPOINT_DIR
from vitmsn.export.precision.requantize import GateCheck, bypass_builder, modelopt_builder, requantize_until
from vitmsn.runtime.images.preprocess import PreprocessConfig

from onnx_oracles import block_linear_nodes, linear_split
from vitmsn.export.precision.sensitivity import qdq_groups, run_model, sensitivity_analysis, without_qdq


@pytest.fixture(scope="module")
def calib_tensors(calib_images, demo_int8_artifacts) -> np.ndarray:
    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory

    manifest = json.loads((demo_int8_artifacts / "manifest.json").read_text())
    return calibration_set_from_directory(calib_images, manifest["preprocess"],
                                          CalibrationOptions(samples=16, use_cache=False, progress=False)).tensors


def test_every_qdq_belongs_to_a_block(demo_int8_artifacts):
    int8 = onnx.load(str(demo_int8_artifacts / "model.int8.onnx"))
    groups = qdq_groups(int8, onnx.load(str(demo_int8_artifacts / "model.fp32.onnx")))
    layers = json.loads((demo_int8_artifacts / "manifest.json").read_text())["model"]["config"]["num_hidden_layers"]
    assert {f"block:{i}" for i in range(layers)} <= set(groups)
    assert "other" not in groups
    assert sum(map(len, groups.values())) == sum(n.op_type == "DequantizeLinear" for n in int8.graph.node)


def test_bypassing_every_qdq_gives_back_fp32(demo_int8_artifacts, calib_tensors):
    int8 = onnx.load(str(demo_int8_artifacts / "model.int8.onnx"))
    groups = qdq_groups(int8, onnx.load(str(demo_int8_artifacts / "model.fp32.onnx")))
    plain = without_qdq(int8, [d for names in groups.values() for d in names])
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in plain.graph.node)
    x = calib_tensors[:4]
    got, ref = run_model(plain, x), run_model(demo_int8_artifacts / "model.fp32.onnx", x)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=1e-4, rtol=1e-4)  # FP32 weights restored exactly


@pytest.mark.parametrize("mode", ["only", "remove"])
def test_planted_bad_block_is_ranked_first(planted_artifacts, calib_tensors, mode):
    result = sensitivity_analysis(planted_artifacts / "model.int8.onnx", planted_artifacts / "model.fp32.onnx",
                                  calib_tensors, mode=mode, progress=False)
    ranking = [(g.group, g.score) for g in result.ranking]
    print(f"\n{mode}: {ranking}")
    assert ranking[0][0] == f"block:{PLANTED_BLOCK}", ranking
    assert ranking[0][1] > 1.5 * max(ranking[1][1], 0.0)  # clearly first, not by a hair
    report = result.to_dict()
    assert report["ranking"][0]["group"] == f"block:{PLANTED_BLOCK}" and report["images"] == len(calib_tensors)


def test_layer_granularity_points_inside_the_planted_block(planted_artifacts, calib_tensors):
    result = sensitivity_analysis(planted_artifacts / "model.int8.onnx", planted_artifacts / "model.fp32.onnx",
                                  calib_tensors[:4], granularity="layer", progress=False)
    assert result.ranking[0].group.startswith(f"vit.encoder.layer.{PLANTED_BLOCK}")


def test_requantize_keeps_the_culprit_out_and_stops(planted_artifacts, heldout_images, calib_tensors, tmp_path):
    manifest = json.loads((planted_artifacts / "manifest.json").read_text())
    labels = {int(k): v for k, v in manifest["labels"].items()}
    fp32, int8 = planted_artifacts / "model.fp32.onnx", planted_artifacts / "model.int8.onnx"
    files = sorted(p for p in heldout_images.rglob("*") if p.suffix in (".jpg", ".png"))
    x = PreprocessConfig.from_manifest(manifest["preprocess"]).batch(files)
    targets = np.array([{v: k for k, v in labels.items()}[f.parent.name] for f in files])
    check = GateCheck(x, run_model(fp32, x), Gates(), targets)
    assert check(int8)[0] is False  # the damaged graph fails the default int8 gates
    ranking = [g.group for g in sensitivity_analysis(int8, fp32, calib_tensors, progress=False).ranking]
    result = requantize_until(int8, ranking, check, bypass_builder(int8, fp32), tmp_path, max_tries=3, fp32_path=fp32)
    assert result.passed and result.excluded == [f"block:{PLANTED_BLOCK}"] and len(result.tries) == 2
    record = result.to_dict()
    assert record["images_per_second"] and record["images_per_second_fp32"] and record["images_per_second_all_int8"]
    assert record["tries"][1]["metrics"]["accuracy_drop"] <= Gates().for_precision("int8").max_accuracy_drop


def test_requantize_is_bounded(planted_artifacts, calib_tensors, tmp_path):
    fp32, int8 = planted_artifacts / "model.fp32.onnx", planted_artifacts / "model.int8.onnx"
    x = calib_tensors[:8]
    impossible = GateCheck(x, run_model(fp32, x), Gates.build(min_top1_agreement=1.01))
    result = requantize_until(int8, [f"block:{i}" for i in range(6)], impossible, bypass_builder(int8, fp32), tmp_path,
                              max_tries=2, measure_speed=False)
    assert not result.passed and len(result.tries) == 3 and result.excluded == ["block:0", "block:1"]


def test_modelopt_builder_requantizes_without_the_excluded_block(demo_int8_artifacts, calib_tensors, tmp_path):
    fp32 = demo_int8_artifacts / "model.fp32.onnx"
    out = modelopt_builder(fp32, calib_tensors[:8])([f"block:{PLANTED_BLOCK}"], tmp_path / "x.onnx")
    quantized, plain = linear_split(onnx.load(str(out)))
    blocks = block_linear_nodes(onnx.load(str(fp32)), CHECKPOINT_DIR)  # found by their weights
    in_block = blocks[PLANTED_BLOCK]
    assert in_block and in_block <= plain and not in_block & quantized
    assert all(nodes <= quantized for b, nodes in blocks.items() if b != PLANTED_BLOCK)  # the others still INT8


def test_validate_cli_reports_sensitivity(planted_artifacts, few_images, tmp_path):
    from vitmsn.cli.validate import command

    result = CliRunner().invoke(command, [str(planted_artifacts), "--images", str(few_images), "--out", str(tmp_path),
                                          "--precision", "int8", "--sensitivity", "--calib-samples", "8", "--quiet"])
    assert result.exit_code == 1  # the planted damage fails the gate
    report = json.loads(Path(tmp_path / "report.json").read_text())
    assert report["sensitivity"]["ranking"][0]["group"] == f"block:{PLANTED_BLOCK}"
    assert f"block:{PLANTED_BLOCK}" in result.stdout and "INT8 sensitivity" in (tmp_path / "report.md").read_text()
