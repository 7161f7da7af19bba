"""`vitmsn triton`: the model repository parses with Triton's own schema and matches the model's I/O.

A real tritonserver runs the repository in tests/test_triton_server.py; here, without a server:
* every config.pbtxt with ``tritonclient``'s ``model_config_pb2`` (strict text_format parsing);
* the configs against the copied ONNX graph's real I/O (loaded with onnx, independently of the
  writer) and, for plans, the manifest's engine entry and profile;
* the Python-backend preprocessing ``model.py`` executed against a stand-in for Triton's
  ``triton_python_backend_utils`` (same call shapes), then its output run through the copied
  ``model.onnx`` with ONNX Runtime: the ensemble's data path, end to end, without Triton.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from vitmsn.cli import group as main
from vitmsn.core.errors import InputError
from vitmsn.runtime import Predictor
from vitmsn.runtime.manifest import EngineEntry, Manifest, sha256_file, write_json_atomic
from vitmsn.runtime.images.preprocess import PreprocessConfig
from vitmsn.serving.triton import TritonOptions, write_triton_repository
from vitmsn.serving.triton_check import check_repository

from precision_fixtures import demo_precision_run
from serving_fixtures import jpeg_bytes

TYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16"}


def _config(repo: Path, name: str) -> Any:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _dtype(config: Any, value: int) -> str:
    return model_config_pb2.DataType.Name(value)


def test_default_repository_matches_onnx_graph(demo_artifacts: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = runner_ok("triton", str(demo_artifacts), "--repo", str(repo))
    assert "parsed with Triton's ModelConfig schema" in result.output
    assert sorted(p.name for p in repo.iterdir()) == ["vitmsn", "vitmsn_onnx", "vitmsn_preprocess"]
    manifest = Manifest.load(demo_artifacts)

    cfg = _config(repo, "vitmsn_onnx")
    assert cfg.platform == "onnxruntime_onnx" and cfg.name == "vitmsn_onnx"
    assert cfg.max_batch_size == manifest.batch.max == 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [manifest.batch.opt, manifest.batch.max]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    model_file = repo / "vitmsn_onnx" / "1" / "model.onnx"
    # CPU instances (the default) get the CPU-placed graph: ONNX Runtime's fused FP32 flavour.
    assert sha256_file(model_file) == manifest.precisions["fp32"].flavours["onnxruntime_optimized"].sha256
    assert "serving model.fp32.ort.onnx, the CPU-placed graph" in result.output

    graph = onnx.load(str(model_file)).graph  # the model's real I/O, read here independently of the writer
    for declared, actual in ((cfg.input, graph.input), (cfg.output, graph.output)):
        assert [t.name for t in declared] == [v.name for v in actual]
        for t, v in zip(declared, actual):
            dims = v.type.tensor_type.shape.dim
            assert dims[0].dim_param, f"{v.name}: batch axis must be symbolic for Triton batching"
            assert list(t.dims) == [d.dim_value for d in dims[1:]], v.name
            assert _dtype(cfg, t.data_type) == TYPES[v.type.tensor_type.elem_type]
    logits = next(o for o in cfg.output if o.name == "logits")
    labels = (repo / "vitmsn_onnx" / logits.label_filename).read_text().splitlines()
    assert labels == [manifest.labels[i] for i in range(len(manifest.labels))] and len(labels) == logits.dims[0]

    pre, ens = _config(repo, "vitmsn_preprocess"), _config(repo, "vitmsn")
    assert pre.backend == "python" and _dtype(pre, pre.input[0].data_type) == "TYPE_STRING"
    assert (pre.output[0].name, list(pre.output[0].dims)) == ("pixel_values", manifest.input_shape[1:])
    assert json.loads((repo / "vitmsn_preprocess" / "1" / "preprocess.json").read_text()) == manifest.preprocess.to_json()
    assert ens.platform == "ensemble" and (repo / "vitmsn" / "1").is_dir()
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["vitmsn_preprocess", "vitmsn_onnx"]
    assert [o.name for o in ens.output] == ["logits", "embedding"]
    assert check_repository(repo, demo_artifacts).passed


def runner_ok(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_options_and_refusals(demo_artifacts: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    runner_ok("triton", str(demo_artifacts), "--repo", str(repo), "--name", "shapes", "--max-batch", "16",
              "--preferred-batch", "4,16", "--queue-delay-us", "2000", "--instances", "2", "--onnx-device", "gpu",
              "--no-ensemble")
    cfg = _config(repo, "shapes_onnx")
    assert (cfg.max_batch_size, list(cfg.dynamic_batching.preferred_batch_size)) == (16, [4, 16])
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000
    assert [(g.kind, g.count) for g in cfg.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert sorted(p.name for p in repo.iterdir()) == ["shapes_onnx"]
    # GPU instances get the exported graph, not the CPU-placed flavour.
    assert sha256_file(repo / "shapes_onnx" / "1" / "model.onnx") == \
        Manifest.load(demo_artifacts).precisions["fp32"].sha256

    before = (repo / "shapes_onnx" / "config.pbtxt").read_bytes()
    for args, message in [
        ([], "already exist"),  # no --force: nothing is replaced
        (["--max-batch", "64", "--force"], "above the exported batch maximum 32"),
        (["--preferred-batch", "4,17", "--max-batch", "16", "--force"], "--preferred-batch 17"),
        (["--precision", "int8", "--force"], "no int8 model"),
        (["--format", "plan", "--force"], "no fp32 TensorRT engine"),
        (["--python-env", "a\nb", "--force"], "--python-env 'a\\nb': give a path without control characters"),
        (["--python-threads", "0", "--force"], "--python-threads 0: must be at least 1"),
    ]:
        result = CliRunner().invoke(main, ["triton", str(demo_artifacts), "--repo", str(repo), "--name", "shapes", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert (repo / "shapes_onnx" / "config.pbtxt").read_bytes() == before
    missing = CliRunner().invoke(main, ["triton", str(tmp_path / "nope"), "--repo", str(repo)])
    assert missing.exit_code == 2 and "not an artifacts directory" in missing.output


def _config_edited(text: str, change: Any) -> str:
    """A config.pbtxt with ``change`` applied to its parsed ModelConfig (independent of the text layout)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    change(config)
    return text_format.MessageToString(config)


@pytest.mark.parametrize("break_it, expected", [
    (lambda t: _config_edited(t, lambda c: (c.input[0].ClearField("dims"), c.input[0].dims.extend([3, 256, 256]))),
     "pixel_values: dims [3, 256, 256]"),
    (lambda t: t.replace("TYPE_FP32", "TYPE_FP16", 1), "data_type TYPE_FP16 != ONNX graph TYPE_FP32"),
    (lambda t: t.replace('name: "logits"', 'name: "scores"'), "output names"),
    (lambda t: t + "\nmax_batch: 3\n", "config.pbtxt or its model files do not read back"),
], ids=["dims", "dtype", "name", "unknown-field"])
def test_check_catches_a_broken_config(demo_artifacts: Path, tmp_path: Path, break_it: Any, expected: str) -> None:
    repo = tmp_path / "repo"
    write_triton_repository(demo_artifacts, repo)
    path = repo / "vitmsn_onnx" / "config.pbtxt"
    path.write_text(break_it(path.read_text()))
    report = check_repository(repo, demo_artifacts)
    assert not report.passed and any(expected in p for p in report.problems), report.problems


def _with_engines(artifacts: Path, out: Path) -> Path:
    """A copy of ``artifacts`` whose manifest lists engines. The plan files are stand-in bytes (no
    TensorRT runtime here); Triton config generation reads only the manifest's entry and profile."""
    shutil.copytree(artifacts, out)
    manifest = Manifest.load(out)
    chw = manifest.input_shape[1:]
    engines = []
    for target, file, io_dtype in (("tensorrt", "engine.fp16.tensorrt.plan", "float16"),
                                   ("tensorrt-rtx", "engine.fp16.tensorrt-rtx.plan", "float16")):
        (out / file).write_bytes(f"stand-in {target} engine".encode())
        engines.append(EngineEntry(file, sha256_file(out / file), precision="fp16", target=target,
                                   tensorrt_version="10.13.0", io_dtype=io_dtype, profile={"pixel_values": {
                                       "min": [1, *chw], "opt": [4, *chw], "max": [16, *chw]}}))
    fp16 = dataclasses.replace(manifest.precisions["fp32"], io_dtype="float16")
    dataclasses.replace(manifest, engines=tuple(engines), precisions={**manifest.precisions, "fp16": fp16}).save()
    return out


def test_plan_from_engine_profile(demo_artifacts: Path, tmp_path: Path) -> None:
    artifacts = _with_engines(demo_artifacts, tmp_path / "artifacts")
    repo = tmp_path / "repo"
    result = write_triton_repository(artifacts, repo, TritonOptions(precision="fp16", formats=("plan",)))
    assert any("tensorrt-rtx" in n for n in result.notes)  # not loadable by Triton's TensorRT backend
    cfg = _config(repo, "vitmsn_tensorrt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 16  # the profile's max, not the manifest's 32
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert {_dtype(cfg, t.data_type) for t in list(cfg.input) + list(cfg.output)} == {"TYPE_FP16"}
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "vitmsn_tensorrt" / "1" / "model.plan").read_bytes() == b"stand-in tensorrt engine"
    pre, ens = _config(repo, "vitmsn_preprocess"), _config(repo, "vitmsn")
    assert _dtype(pre, pre.output[0].data_type) == "TYPE_FP16" and pre.max_batch_size == 16
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["vitmsn_preprocess", "vitmsn_tensorrt"]
    assert check_repository(repo, artifacts).passed

    with pytest.raises(Exception, match="above the engine profile maximum 16"):
        write_triton_repository(artifacts, tmp_path / "r2", TritonOptions(precision="fp16", max_batch_size=32))


# ---- the Python-backend preprocessing model, run outside Triton -----------------------------------
class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Response:
    def __init__(self, output_tensors: list[_Tensor], error: Any = None) -> None:
        self.output_tensors, self.error = output_tensors, error


def _fake_pb_utils() -> types.ModuleType:
    """Stand-in for Triton's triton_python_backend_utils: the calls model.py makes, same shapes."""
    mod = types.ModuleType("triton_python_backend_utils")
    mod.Tensor = _Tensor  # type: ignore[attr-defined]
    mod.InferenceResponse = _Response  # type: ignore[attr-defined]
    mod.TritonError = lambda message: message  # type: ignore[attr-defined]
    mod.get_input_tensor_by_name = lambda request, name: _Tensor(name, request[name])  # type: ignore[attr-defined]
    mod.triton_string_to_numpy = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16}.get  # type: ignore[attr-defined]
    return mod


def test_preprocess_model_and_ensemble_data_path(demo_artifacts: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    write_triton_repository(demo_artifacts, repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("triton_model", repo / "vitmsn_preprocess" / "1" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = _config(repo, "vitmsn_preprocess")
    model_config = {"input": [{"name": cfg.input[0].name, "data_type": "TYPE_STRING"}],
                    "output": [{"name": cfg.output[0].name, "data_type": _dtype(cfg, cfg.output[0].data_type)}]}
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(model_config), "model_repository": str(repo / "vitmsn_preprocess"),
                      "model_version": "1"})

    images = [jpeg_bytes(i, size=(40 + 7 * i, 30 + 5 * i)) for i in range(3)]
    batched = np.array([[images[0]], [images[1]]], dtype=np.object_)  # [batch, 1] as Triton passes TYPE_STRING
    requests = [{"IMAGE": batched}, {"IMAGE": np.array([[b"not an image"]], dtype=np.object_)},
                {"IMAGE": np.array([[images[2]]], dtype=np.object_)}]
    responses = model.execute(requests)
    assert len(responses) == 3
    assert responses[1].error and "not a readable image" in responses[1].error and not responses[1].output_tensors
    pixels = np.concatenate([responses[0].output_tensors[0].as_numpy(), responses[2].output_tensors[0].as_numpy()])
    expected = PreprocessConfig.from_manifest(Manifest.load(demo_artifacts).preprocess).batch(images)
    np.testing.assert_array_equal(pixels, expected)  # vitmsn's one preprocessing, bit for bit

    # The ensemble's second step: the copied model.onnx on those pixels, as Triton's ONNX Runtime backend runs it.
    session = ort.InferenceSession(str(repo / "vitmsn_onnx" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, = session.run(["logits"], {"pixel_values": pixels})
    labels = (repo / "vitmsn_onnx" / "labels.txt").read_text().splitlines()
    with Predictor.from_artifacts(demo_artifacts, backend="onnxruntime", precision="fp32") as predictor:
        expected_top = predictor.predict([images[0], images[1], images[2]], top_k=3)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for row, want in zip(probs, expected_top):  # the same answer as `vitmsn predict` on the same bytes
        order = np.argsort(-row, kind="stable")[:3]
        assert [labels[i] for i in order] == [p.label for p in want]
        np.testing.assert_allclose(row[order], [p.score for p in want], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_exports(precision: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The real FP16/INT8 graphs of the shared precision export (which also has TensorRT-RTX engines)."""
    run = demo_precision_run(tmp_path_factory.getbasetemp() / "demo-precisions")  # memoized, shared with test_fp16/int8
    artifacts, repo = run["out"], tmp_path / "repo"
    recorded = Manifest.load(artifacts).precisions[precision].validation
    failed = [stage for stage, s in recorded.items() if not s["passed"]]
    if failed:  # this export's gate failed (its report says so): refused unless explicitly allowed
        with pytest.raises(InputError, match=f"precision {precision} failed its export gate.*{failed[0]}"):
            write_triton_repository(artifacts, repo, TritonOptions(precision=precision))
    result = write_triton_repository(artifacts, repo, TritonOptions(precision=precision, allow_failed_gates=bool(failed)))
    assert [m.kind for m in result.models] == ["onnx", "preprocess", "ensemble"]  # RTX engines: not loadable by Triton
    assert any("tensorrt-rtx" in note for note in result.notes), result.notes
    cfg = _config(repo, "vitmsn_onnx")
    graph = onnx.load(str(repo / "vitmsn_onnx" / "1" / "model.onnx"), load_external_data=False).graph
    entry = Manifest.load(artifacts).precisions[precision]
    cpu_graph = entry.cpu_flavour or entry  # CPU instances
    assert sha256_file(repo / "vitmsn_onnx" / "1" / "model.onnx") == cpu_graph.sha256
    for declared, actual in ((cfg.input, graph.input), (cfg.output, graph.output)):
        assert [(t.name, _dtype(cfg, t.data_type)) for t in declared] == \
            [(v.name, TYPES[v.type.tensor_type.elem_type]) for v in actual]
    assert cfg.max_batch_size == 16  # this export's batch profile is 1:4:16
    report = check_repository(repo, artifacts)
    assert report.passed, report.problems


# ---- what may be packaged (issue 14: gates, CPU-placed graphs, label counts) ----------------------
def _edited(artifacts: Path, out: Path, edit: Any) -> Path:
    """A copy of ``artifacts`` whose manifest ``edit`` changed (planted damage)."""
    shutil.copytree(artifacts, out)
    data = json.loads((out / "manifest.json").read_text())
    edit(data)
    write_json_atomic(out / "manifest.json", data)
    return out


def test_refuses_a_precision_whose_gate_failed(demo_artifacts: Path, tmp_path: Path) -> None:
    def fail_parity(data: dict[str, Any]) -> None:
        data["precisions"]["fp32"]["validation"]["onnxruntime_parity"]["passed"] = False

    artifacts = _edited(demo_artifacts, tmp_path / "artifacts", fail_parity)
    repo = tmp_path / "repo"
    refused = CliRunner().invoke(main, ["triton", str(artifacts), "--repo", str(repo)])
    assert refused.exit_code == 2, refused.output
    assert "precision fp32: it failed its export gate(s) onnxruntime_parity" in refused.output
    assert "--allow-failed-gates" in refused.output and "Traceback" not in refused.output
    assert not repo.exists() or not any(repo.iterdir())  # nothing written

    allowed = runner_ok("triton", str(artifacts), "--repo", str(repo), "--allow-failed-gates")
    assert "packaged anyway (--allow-failed-gates)" in allowed.output
    assert (repo / "vitmsn_onnx" / "1" / "model.onnx").is_file()


def test_cpu_flavour_that_failed_its_gate_is_not_served(demo_artifacts: Path, tmp_path: Path) -> None:
    def fail_flavour(data: dict[str, Any]) -> None:
        data["precisions"]["fp32"]["onnxruntime_optimized"]["validation"] = {"drift_fp32_ort": {"passed": False}}

    artifacts = _edited(demo_artifacts, tmp_path / "artifacts", fail_flavour)
    repo = tmp_path / "repo"
    result = runner_ok("triton", str(artifacts), "--repo", str(repo), "--format", "onnx", "--format", "python")
    assert "failed drift_fp32_ort; serving the exported model.fp32.onnx" in result.output
    exported = Manifest.load(artifacts).precisions["fp32"].sha256
    for model in ("vitmsn_onnx", "vitmsn_python"):
        assert sha256_file(repo / model / "1" / "model.onnx") == exported, model


@pytest.mark.parametrize("label", ["tri\nangle", "tri\rangle", "tri\u2028angle"], ids=["LF", "CR", "U+2028"])
def test_labels_that_would_break_labels_txt_are_refused_before_writing(demo_artifacts: Path, tmp_path: Path,
                                                                       label: str) -> None:
    """A manifest written before the export refused such labels still reaches `vitmsn triton`: one line, exit 2."""
    artifacts = _edited(demo_artifacts, tmp_path / "artifacts", lambda d: d["labels"].update({"2": label}))
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", str(artifacts), "--repo", str(repo)])
    assert result.exit_code == 2, result.output
    assert "label 2" in result.output and "labels.txt" in result.output and "Traceback" not in result.output
    assert not repo.exists()  # nothing written


def _nine_classes(d: dict[str, Any]) -> None:
    d["outputs"][0].update(shape=["batch", 9])
    d["labels"]["8"] = "extra"


@pytest.mark.parametrize("edit, message", [
    # refused by the manifest loader itself (any dimension above 2**24 is a typo, never allocated)
    (lambda d: d["outputs"][0].update(shape=["batch", 10**9]), "outputs[0].shape[1]: 1000000000 is above the maximum"),
    (lambda d: d["labels"].pop("7"), "labels: 7 labels for 8 logits"),
    # a manifest consistent in itself that the graph contradicts: the writer reads the graph's real dims
    (_nine_classes, "output logits is declared with shape ['batch', 9], but model.fp32.ort.onnx produces ['batch', 8]"),
], ids=["logits-1e9", "label-missing", "declared-9-classes"])
def test_label_count_comes_from_the_graph(demo_artifacts: Path, tmp_path: Path, edit: Any, message: str) -> None:
    """A manifest that declares 10^9 classes is refused at once (it used to allocate ~17 GB)."""
    artifacts = _edited(demo_artifacts, tmp_path / "artifacts", edit)
    result = CliRunner().invoke(main, ["triton", str(artifacts), "--repo", str(tmp_path / "repo")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "manifest.json" in result.output and "Traceback" not in result.output


def test_python_env_parameters_and_numpy_warning(demo_artifacts: Path, tmp_path: Path) -> None:
    """EXECUTION_ENV_PATH in both Python-backend configs; numpy 2.x in a venv or a conda-pack archive is flagged."""
    import tarfile

    venv = tmp_path / "venv"
    site = venv / "lib" / "python3.11" / "site-packages"
    for dist in ("numpy-2.1.3.dist-info", "vitmsn-0.1.0.dist-info", "pillow-11.0.0.dist-info",
                 "onnxruntime-1.20.0.dist-info"):
        (site / dist).mkdir(parents=True)
    packed = tmp_path / "env.tar.gz"
    with tarfile.open(packed, "w:gz") as archive:
        archive.add(site, arcname="lib/python3.11/site-packages")
    for env in (venv, packed):
        repo = tmp_path / f"repo-{env.name}"
        result = runner_ok("triton", str(demo_artifacts), "--repo", str(repo), "--format", "python",
                           "--python-env", str(env))
        assert f"warning: --python-env {env} has numpy 2.1.3" in result.output, result.output
        assert "lacks" not in result.output
        for model in ("vitmsn_python", "vitmsn_preprocess"):
            cfg = _config(repo, model)
            assert cfg.parameters["EXECUTION_ENV_PATH"].string_value == str(env), model

    (site / "numpy-2.1.3.dist-info").rename(site / "numpy-1.26.4.dist-info")
    (site / "onnxruntime-1.20.0.dist-info").rmdir()
    result = runner_ok("triton", str(demo_artifacts), "--repo", str(tmp_path / "r3"), "--format", "python",
                       "--python-env", str(venv))
    assert "numpy 1.26.4" not in result.output and "lacks onnxruntime" in result.output, result.output
    elsewhere = runner_ok("triton", str(demo_artifacts), "--repo", str(tmp_path / "r4"), "--python-env", "/opt/env")
    assert "/opt/env: not on this machine, not checked" in elsewhere.output


def test_python_inference_model_outside_triton(demo_artifacts: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python-backend inference model, run against the pb_utils stand-in: one batch for several
    requests, outputs equal to ONNX Runtime on the same graph, a bad request answered alone."""
    repo = tmp_path / "repo"
    result = write_triton_repository(demo_artifacts, repo, TritonOptions(inference="python"))
    assert [m.kind for m in result.models] == ["python", "preprocess", "ensemble"]
    assert [s.model_name for s in _config(repo, "vitmsn").ensemble_scheduling.step] == ["vitmsn_preprocess", "vitmsn_python"]
    assert check_repository(repo, demo_artifacts).passed
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb_utils())
    spec = importlib.util.spec_from_file_location("triton_infer_model", repo / "vitmsn_python" / "1" / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = _config(repo, "vitmsn_python")
    model_config = {"input": [{"name": "pixel_values", "dims": list(cfg.input[0].dims)}],
                    "output": [{"name": o.name, "data_type": "TYPE_FP32"} for o in cfg.output]}
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(model_config), "model_repository": str(repo / "vitmsn_python"),
                      "model_version": "1"})
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 224, 224), dtype=np.float32), rng.standard_normal((1, 3, 224, 224), dtype=np.float32)
    bad = np.full((1, 3, 224, 224), np.nan, dtype=np.float32)
    responses = model.execute([{"pixel_values": a}, {"pixel_values": bad}, {"pixel_values": b}])
    assert responses[1].error and "NaN" in responses[1].error and not responses[1].output_tensors
    session = ort.InferenceSession(str(repo / "vitmsn_python" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for response, x in ((responses[0], a), (responses[2], b)):
        assert response.error is None
        got = {t.name(): t.as_numpy() for t in response.output_tensors}
        want = dict(zip(["logits", "embedding"], session.run(["logits", "embedding"], {"pixel_values": x})))
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-4, err_msg=name)  # batch 3 vs 2/1: rounding
    model.finalize()
