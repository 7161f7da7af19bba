"""FP32 export: symbolic batch axis, staged checks, outputs against PyTorch and transformers."""

from __future__ import annotations

import collections

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vitmsn.core.errors import ValidationFailed
from vitmsn.export.fp32 import checks, onnx_export
from vitmsn.export.fp32.checkpoint import load_checkpoint
from vitmsn.export.fp32.stages import fp32_stages
from vitmsn.export.pipeline import ExportOptions, run_export
from vitmsn.export.fp32.spec import ExportSpec
from vitmsn.runtime.manifest import Manifest, sha256_file

from checkpoints import ODD_CONFIG, TINY_CONFIG, save_transformers, transformers_outputs


def _ort(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_demo_export_manifest_and_symbolic_batch(demo_artifacts: Path) -> None:
    m = Manifest.load(demo_artifacts)
    entry = m.precisions["fp32"]
    path = demo_artifacts / entry.file
    assert entry.sha256 == sha256_file(path)
    assert m.task == "image-classification" and len(m.labels) >= 2
    assert m.data["preprocess"]["source"] == "preprocessor_config.json"
    assert m.data["model"]["checkpoint_sha256"] and m.data["versions"]["torch"]
    proto = onnx.load(str(path))
    for value in list(proto.graph.input) + list(proto.graph.output):
        first = value.type.tensor_type.shape.dim[0]
        assert first.dim_param == "batch" and not first.HasField("dim_value"), value.name
    assert [i.name for i in proto.graph.input] == ["pixel_values"]
    assert [o.name for o in proto.graph.output] == ["logits", "embedding"]
    assert m.data["inputs"][0]["shape"] == ["batch", 3, 224, 224]
    report = json.loads((demo_artifacts / "report.json").read_text())
    assert report["passed"] and [s["stage"] for s in report["stages"]] == [
        "onnx_checker", "io_signature", "onnxruntime_parity", "ort_fused_fp32"]
    assert (demo_artifacts / "report.md").read_text().count("| passed |") == 4
    assert "Time: PyTorch reference " in (demo_artifacts / "report.md").read_text()  # the parity check's time, by run


def test_demo_fused_fp32_flavour_matches_and_is_what_the_cpu_runtime_loads(demo_artifacts: Path) -> None:
    from vitmsn.runtime.selection import choose

    m = Manifest.load(demo_artifacts)
    flavour = m.precisions["fp32"].flavours["onnxruntime_optimized"]
    path = demo_artifacts / flavour.file
    assert flavour.file == "model.fp32.ort.onnx" and flavour.sha256 == sha256_file(path)
    # checked against the parity check's PyTorch rows, not by running model.fp32.onnx a second time
    assert flavour.extra["compared_with"] == "PyTorch FP32" and flavour.extra["max_abs_diff_vs_fp32"] < 1e-4
    layers = m.data["model"]["config"]["num_hidden_layers"]
    ops = collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    assert ops["Attention"] == layers and ops["SkipLayerNormalization"] >= layers and ops["BiasGelu"] == layers
    x = np.random.default_rng(7).standard_normal((4, 3, 224, 224), dtype=np.float32)
    fused = _ort(path).run(["logits", "embedding"], {"pixel_values": x})
    plain = _ort(demo_artifacts / "model.fp32.onnx").run(["logits", "embedding"], {"pixel_values": x})
    for got, ref in zip(fused, plain):
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)
    choice = choose(m, "onnxruntime", "fp32")  # CPU provider only on this machine
    assert choice.file == "model.fp32.ort.onnx" and choice.sha256 == flavour.sha256


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_demo_onnx_matches_pytorch(demo_artifacts: Path, batch: int) -> None:
    """Independent of the pipeline's own check: run both here and compare."""
    model = load_checkpoint("demo").build_model()
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    logits, embedding = _ort(demo_artifacts / "model.fp32.onnx").run(["logits", "embedding"], {"pixel_values": x})
    with torch.no_grad():
        ref_logits, ref_embedding = model(torch.from_numpy(x))
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(embedding, ref_embedding.numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("classifier", [True, False], ids=["classifier", "backbone"])
@pytest.mark.parametrize("key_names", ["save_pretrained", "4x-unprefixed"])
def test_odd_shapes_match_transformers_through_onnxruntime(tmp_path: Path, classifier: bool, key_names: str) -> None:
    ck_dir = tmp_path / "ck"
    reference = save_transformers(ck_dir, classifier=classifier, **ODD_CONFIG)
    if key_names == "4x-unprefixed":
        from safetensors.torch import load_file, save_file

        state = load_file(str(ck_dir / "model.safetensors"))
        save_file({k.removeprefix("vit."): v for k, v in state.items()}, str(ck_dir / "model.safetensors"))
    result = run_export(ExportOptions(model=str(ck_dir), out=tmp_path / "out", engine="skip"))
    assert result.passed
    expected_outputs = ["logits", "embedding"] if classifier else ["last_hidden_state", "embedding"]
    assert Manifest.load(tmp_path / "out").output_names == expected_outputs
    session = _ort(tmp_path / "out" / "model.fp32.onnx")
    for batch in (1, 3):
        x = torch.randn(batch, 3, 35, 35)
        expected = transformers_outputs(reference, x)
        got = dict(zip(expected_outputs, session.run(expected_outputs, {"pixel_values": x.numpy()})))
        for name in expected_outputs:
            np.testing.assert_allclose(got[name], expected[name].numpy(), atol=1e-4, rtol=1e-3, err_msg=name)


def test_feature_extraction_shapes(tmp_path: Path) -> None:
    save_transformers(tmp_path / "ck", classifier=False)
    run_export(ExportOptions(model=str(tmp_path / "ck"), out=tmp_path / "out", engine="skip"))
    m = Manifest.load(tmp_path / "out")
    assert m.task == "feature-extraction" and m.labels == {}
    shapes = {o["name"]: o["shape"] for o in m.data["outputs"]}
    assert shapes == {"last_hidden_state": ["batch", 17, 32], "embedding": ["batch", 32]}


# ---- the staged checks can fail -------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("tiny")
    save_transformers(d / "ck", **TINY_CONFIG)
    run_export(ExportOptions(model=str(d / "ck"), out=d / "out", engine="skip"))
    ck = load_checkpoint(str(d / "ck"))
    return d, ck, ExportSpec(ck.arch, ck.task, ck.num_labels)


def test_parity_stage_fails_on_a_different_model(tiny) -> None:
    d, ck, spec = tiny
    model = ck.build_model()
    with torch.no_grad():
        model.vit.encoder.layer[1].output.dense.weight.mul_(1.05)  # a 5% weight error
    stages = fp32_stages(d / "out" / "model.fp32.onnx", spec, model)
    assert [s.passed for s in stages] == [True, True, False]
    assert "outside atol" in stages[2].detail and "logits" in stages[2].detail


def test_io_stage_fails_on_renamed_output_and_skips_parity(tiny, tmp_path: Path) -> None:
    d, ck, spec = tiny
    proto = onnx.load(str(d / "out" / "model.fp32.onnx"))
    old = proto.graph.output[0].name
    proto.graph.output[0].name = "scores"
    for node in proto.graph.node:
        node.output[:] = ["scores" if o == old else o for o in node.output]
    path = tmp_path / "renamed.onnx"
    onnx.save(proto, str(path))
    stages = fp32_stages(path, spec, ck.build_model())
    assert stages[1].stage == "io_signature" and not stages[1].passed and "scores" in stages[1].detail
    assert stages[2].detail.startswith("not run")


def test_io_stage_fails_on_static_batch(tiny) -> None:
    d, ck, spec = tiny
    proto = onnx.load(str(d / "out" / "model.fp32.onnx"))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    result = checks.check_io_signature(proto, spec)
    assert not result.passed and "not symbolic" in result.detail


def test_checker_stage_fails_on_broken_graph(tiny, tmp_path: Path) -> None:
    d, ck, spec = tiny
    proto = onnx.load(str(d / "out" / "model.fp32.onnx"))
    proto.graph.node[0].input[0] = "does_not_exist"
    path = tmp_path / "broken.onnx"
    onnx.save(proto, str(path))
    stages = fp32_stages(path, spec, ck.build_model())
    assert not stages[0].passed and all(s.detail.startswith("not run") for s in stages[1:])


def test_checker_stage_runs_strict_shape_inference(tiny, tmp_path: Path) -> None:
    """A weight whose shape no longer fits its MatMul is valid protobuf and passes the plain checker; only the full
    check's shape inference catches it."""
    d, ck, spec = tiny
    proto = onnx.load(str(d / "out" / "model.fp32.onnx"))
    weights = {n.input[1] for n in proto.graph.node if n.op_type == "MatMul"}
    init = next(i for i in proto.graph.initializer if i.name in weights)
    w = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(w[: w.shape[0] - 3], init.name))
    path = tmp_path / "misshapen.onnx"
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))  # the plain check does not see it
    result = checks.check_onnx_checker(path)
    assert not result.passed and "misshapen.onnx" in result.detail and "shape" in result.detail.lower(), result.detail
    assert checks.check_onnx_checker(d / "out" / "model.fp32.onnx").passed


def test_nan_weights_fail_the_export_after_writing_artifacts(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_transformers(tmp_path / "ck")
    state = load_file(str(tmp_path / "ck" / "model.safetensors"))
    state["vit.layernorm.weight"][0] = float("nan")
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    with pytest.raises(ValidationFailed, match="onnxruntime_parity"):
        run_export(ExportOptions(model=str(tmp_path / "ck"), out=tmp_path / "out", engine="skip"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["passed"] is False
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["passed"] is False


def test_interrupted_export_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_transformers(tmp_path / "ck")
    out = tmp_path / "out"
    run_export(ExportOptions(model=str(tmp_path / "ck"), out=out, engine="skip"))
    assert (out / "manifest.json").is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(onnx_export, "save_onnx", interrupted)  # while model.fp32.onnx is being written
    with pytest.raises(KeyboardInterrupt):
        run_export(ExportOptions(model=str(tmp_path / "ck"), out=out, engine="skip"))
    # the run wrote into a staging directory beside --out, removed with it: --out is as it was
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "out"]  # no staging dir, lock or .partial left
