"""OpenVINO: the inference precision chosen per CPU and recorded, auto's preference, the bf16 precision
(export, gate, validate, predict), all on real OpenVINO sessions.

BF16 gates are proven by planting damage (a negated classifier in the graph), never by hoping a
CPU's BF16 rounding misses a threshold. Which inference precision the CPU really runs is read
from /proc/cpuinfo here, independently of the code under test.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from runtime_fixtures import Exported, rt_cls  # noqa: F401
from cpu_flags_here import cpuinfo_flags
from vitmsn.runtime.manifest import Manifest, sha256_file
from vitmsn.runtime.backends.registry import openvino_precision
from vitmsn.runtime.backends.openvino import OpenVINORunner, cpu_flags, inference_precision_for
from vitmsn.runtime.selection import choose, describe_choice


def _cpu_has_bf16() -> bool:
    return bool({"avx512_bf16", "amx_bf16"} & cpuinfo_flags())


HERE_BF16 = "bf16" if _cpu_has_bf16() else "f32"


def test_inference_precision_follows_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni avx512_bf16\n")
    assert "avx512_bf16" in cpu_flags(cpuinfo) and "avx2" in cpu_flags(cpuinfo)
    assert cpu_flags(tmp_path / "missing") == frozenset()
    avx512_bf16, amx, avx2 = frozenset({"avx512f", "avx512_bf16"}), frozenset({"amx_bf16", "amx_tile"}), frozenset({"avx2", "fma"})
    assert inference_precision_for("bf16", avx512_bf16) == "bf16"
    assert inference_precision_for("bf16", amx) == "bf16"
    assert inference_precision_for("bf16", avx2) == "f32"
    assert inference_precision_for("int8", avx512_bf16) == "bf16" and inference_precision_for("int8", avx2) == "f32"
    assert inference_precision_for("fp32", avx512_bf16) == "f32"  # fp32 never runs BF16, whatever the CPU


def test_runner_records_what_the_compiled_model_runs(rt_cls: Exported) -> None:
    """OpenVINO defaults to BF16 on BF16 CPUs: fp32 must force f32, and the runner reads back what ran."""
    path = Manifest.load(rt_cls.artifacts).onnx_path("fp32")
    x = np.random.default_rng(3).standard_normal((2, 3, 48, 48)).astype(np.float32)
    with OpenVINORunner(path, precision="fp32") as exact:
        assert exact.inference_precision == "f32" and exact.version
        got = exact.infer({"pixel_values": x})
    with OpenVINORunner(path, precision="bf16") as bf16:
        assert bf16.inference_precision == HERE_BF16
    import onnxruntime as ort

    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})
    assert np.allclose(got["logits"], expected[0], atol=1e-4)


def test_auto_prefers_openvino_on_this_x86_cpu(rt_cls: Exported) -> None:
    manifest = Manifest.load(rt_cls.artifacts)
    choice = choose(manifest)
    assert choice.backend == "openvino" and choice.precision == "fp32" and choice.inference_precision == "f32"
    assert choice.file == "model.fp32.onnx"
    assert describe_choice(choice) == "openvino (CPU, inference precision f32) fp32 model.fp32.onnx"
    assert choose(manifest, "onnxruntime").backend == "onnxruntime"  # a forced backend is honoured


def _with_bf16_entry(manifest: Manifest, **changes: object) -> Manifest:
    data = json.loads(json.dumps(manifest.data))
    fp32 = data["precisions"]["fp32"]
    data["precisions"]["bf16"] = {"file": fp32["file"], "sha256": fp32["sha256"], "backend": "openvino",
                                  "inference_precision": "bf16",
                                  "validation": {"drift_bf16_openvino": {"passed": True, "detail": ""}}, **changes}
    return Manifest.from_json(manifest.root, data)


def test_auto_takes_bf16_only_from_a_gated_bf16_entry_on_a_bf16_cpu(rt_cls: Exported) -> None:
    manifest = Manifest.load(rt_cls.artifacts)
    bf16_cpu, avx2_cpu = frozenset({"avx512_bf16"}), frozenset({"avx2"})
    assert openvino_precision(manifest, bf16_cpu) == "fp32"  # no bf16 entry
    assert openvino_precision(_with_bf16_entry(manifest), bf16_cpu) == "bf16"
    assert openvino_precision(_with_bf16_entry(manifest), avx2_cpu) == "fp32"
    failed = {"drift_bf16_openvino": {"passed": False, "detail": "cosine_min 0.5"}}
    assert openvino_precision(_with_bf16_entry(manifest, validation=failed), bf16_cpu) == "fp32"
    # figures measured with f32 (exported on a CPU without BF16) are not BF16's: not taken by auto
    assert openvino_precision(_with_bf16_entry(manifest, inference_precision="f32"), bf16_cpu) == "fp32"
    forced = choose(_with_bf16_entry(manifest), "openvino", "bf16")
    assert forced.precision == "bf16" and forced.inference_precision == HERE_BF16
    with pytest.raises(Exception, match="bf16 runs on OpenVINO only"):
        choose(_with_bf16_entry(manifest), "onnxruntime", "bf16")


# ---- bf16 as an exported, gated precision (the trained demo) ------------------------------------
@pytest.fixture(scope="module")
def demo_bf16(heldout_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("bf16") / "demo"
    result = run_export(ExportOptions(model="demo", out=out, precisions=("bf16",), engine="skip", fp32_cpu=False,
                                      validate_images=heldout_images))
    assert all(s.passed for s in result.stages), [s for s in result.stages if not s.passed]
    return out


def _negate_classifier(src: Path, dst: Path) -> None:
    """A damaged graph: the classifier's weight negated, so every top-1 moves and cosine is about -1."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    labels = 8  # the demo's classes
    hit = [i for i in model.graph.initializer if len(i.dims) == 2 and labels in i.dims]
    assert len(hit) == 1, [i.name for i in hit]
    hit[0].CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(hit[0]), hit[0].name))
    onnx.save(model, str(dst))


@pytest.mark.slow
def test_bf16_export_is_gated_against_pytorch_and_a_damaged_graph_fails(demo_bf16: Path, heldout_images: Path,
                                                                        tmp_path: Path) -> None:
    from vitmsn.export.precision.bf16 import bf16_step
    from vitmsn.export.steps import StepContext
    from vitmsn.export.validation.comparison import ComparisonInputs
    from vitmsn.export.validation.gates import Gates

    manifest = Manifest.load(demo_bf16)
    entry = manifest.precisions["bf16"]
    assert entry.file == "model.fp32.onnx" and entry.sha256 == manifest.precisions["fp32"].sha256
    assert entry.extra["inference_precision"] == HERE_BF16 and entry.extra["backend"] == "openvino"
    stage = entry.validation["drift_bf16_openvino"]
    assert stage["passed"] and "vs PyTorch FP32 on validation images" in stage["detail"]
    report = json.loads((demo_bf16 / "report.json").read_text())
    rows = [r for r in report["results"] if r["backend"] == "openvino" and r["precision"] == "bf16"]
    assert len(rows) == 1 and rows[0]["variant"] == f"inference {HERE_BF16}" and rows[0]["passed"]
    figures = rows[0]["metrics"]
    assert figures["cosine_min"] >= 0.9999 and figures["top1_agreement"] >= 0.995 and "accuracy" in figures
    assert {g["gate"]: g["threshold"] for g in rows[0]["gates"]}["min_cosine"] == 0.9999  # the documented default

    # plant damage: the same step on a graph with a negated classifier must fail its gate
    damaged = tmp_path / "model.fp32.onnx"
    _negate_classifier(demo_bf16 / "model.fp32.onnx", damaged)
    # the held-out images (200): enough for every gate to decide (top-1 >= 0.97 needs 88 agreeing images, the
    # cosine 5th percentile 59), so the undamaged graph passes and the damaged one fails, neither inconclusive
    from precision_fixtures import heldout_tensors

    x, _ = heldout_tensors(heldout_images, demo_bf16)
    with OpenVINORunner(demo_bf16 / "model.fp32.onnx", precision="fp32") as fp32:
        reference = fp32.infer({"pixel_values": x})  # FP32 (matches PyTorch to 1e-5, checked at export)
    from types import SimpleNamespace

    spec = SimpleNamespace(input=SimpleNamespace(name=manifest.input_name))  # bf16_step reads only the input name
    ctx = StepContext(tmp_path, damaged, spec,  # type: ignore[arg-type]
                      ComparisonInputs(x, -np.ones(len(x), np.int64), "planted", True), reference, Gates(), True)
    bad_entry, stages, rows = bf16_step(ctx)
    assert not stages[0].passed and "bf16_openvino bf16: top1_agreement" in stages[0].detail
    assert {g["verdict"] for g in stages[0].metrics["gates"]} == {"failed"}, stages[0]  # failed, not inconclusive
    assert not bad_entry["validation"]["drift_bf16_openvino"]["passed"] and rows[0]["backend"] == "openvino"
    good_entry, good, _ = bf16_step(dataclasses.replace(ctx, fp32_path=demo_bf16 / "model.fp32.onnx"))
    assert good[0].passed  # same inputs and reference, undamaged graph: the gate holds
    # and a failed bf16 entry is never what auto runs
    assert openvino_precision(_with_bf16_entry(manifest, validation=bad_entry["validation"]), frozenset({"amx_bf16"})) == "fp32"


@pytest.mark.slow
def test_cli_backend_openvino_on_validate_and_predict(demo_bf16: Path, heldout_images: Path, tmp_path: Path) -> None:
    from vitmsn.cli import group

    result = CliRunner().invoke(group, ["validate", str(demo_bf16), "--images", str(heldout_images), "--backend", "openvino",
                                        "--out", str(tmp_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert {(r["backend"], r["precision"], r["variant"]) for r in report["results"]} == {
        ("openvino", "fp32", "inference f32"), ("openvino", "bf16", f"inference {HERE_BF16}")}
    bf16 = next(r for r in report["results"] if r["precision"] == "bf16")
    assert bf16["metrics"]["cosine_min"] >= 0.9999 and bf16["passed"]

    image = sorted((heldout_images / "circle").iterdir())[0]
    result = CliRunner().invoke(group, ["predict", str(demo_bf16), str(image), "--backend", "openvino"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    auto = "bf16" if HERE_BF16 == "bf16" else "fp32"  # auto runs the gated bf16 entry on a BF16 CPU only
    assert f"openvino (CPU, inference precision {HERE_BF16}) {auto} model.fp32.onnx" in result.stderr
    assert result.stdout.splitlines()[2].split()[2] == "circle"
    forced = CliRunner().invoke(group, ["predict", str(demo_bf16), str(image), "--backend", "openvino", "--precision", "fp32"],
                                catch_exceptions=False)
    assert forced.exit_code == 0 and "openvino (CPU, inference precision f32) fp32" in forced.stderr
    bad = CliRunner().invoke(group, ["predict", str(demo_bf16), str(image), "--backend", "openvino", "--precision", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output and "Traceback" not in bad.output
