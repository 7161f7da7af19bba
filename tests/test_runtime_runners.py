"""Every backend through the one Runner protocol; backend/precision selection; engine checks.

ONNX Runtime runs for real here. TensorRT engines are built for real (TensorRT-RTX, ahead of
time on the CPU) but cannot be deserialized without a GPU: the tests that run one are marked
``gpu``/``tensorrt`` and skip with the reason. The conformance test also runs the TensorRT runner
against the SIMULATED CUDA/TensorRT runtimes (tests/trt_simulation; id ``tensorrt-simulation``),
which checks what the runner asks of TensorRT, never that a GPU runs it. What runs here instead: the checks made before
deserializing (release, compute capability), on the real engine file and manifest entry, with
the GPU list passed in as data where a GPU is needed (no CUDA call is mocked), and the selection
that falls back to ONNX Runtime with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import Exported, rt_cls, rt_engine  # noqa: F401
from sim_fixtures import sim, sim_artifacts  # noqa: F401
from vitmsn.core.errors import InputError
from vitmsn.runtime import Predictor, Runner, TensorMeta
from vitmsn.runtime.backends.device import Gpu, cuda_gpus, has_cuda_gpu, module_available
from vitmsn.runtime.backends.engine_check import engine_problems, normalize_cc, version_tuple, versions_compatible
from vitmsn.runtime.manifest import Manifest
from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner, auto_providers
from vitmsn.runtime.backends.registry import onnxruntime_precision_order
from vitmsn.runtime.selection import choose

NO_GPU = "no CUDA GPU on this machine (the CI machines have none)"


def _tensorrt_runner(artifacts: Path):
    from vitmsn.runtime.backends.tensorrt import TensorRTRunner

    manifest = Manifest.load(artifacts)
    entry = manifest.engines[0]
    return TensorRTRunner(manifest.verify(entry), entry)


def _ort_runner(artifacts: Path):
    return OnnxRuntimeRunner(Manifest.load(artifacts).onnx_path("fp32"))


def _openvino_runner(artifacts: Path):
    from vitmsn.runtime.backends.openvino import OpenVINORunner

    return OpenVINORunner(Manifest.load(artifacts).onnx_path("fp32"), precision="fp32")


BACKENDS = [
    pytest.param("onnxruntime", id="onnxruntime"),
    pytest.param("simulation", id="tensorrt-simulation"),
    pytest.param("openvino", id="openvino"),
    pytest.param("tensorrt", id="tensorrt-rtx", marks=[pytest.mark.gpu, pytest.mark.tensorrt, pytest.mark.skipif(
        not has_cuda_gpu(), reason=f"running an engine needs a GPU: {NO_GPU}")]),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_runner_conformance(backend: str, rt_cls: Exported, rt_engine: Path, request: pytest.FixtureRequest,
                            tmp_path: Path) -> None:
    makers = {"onnxruntime": _ort_runner, "openvino": _openvino_runner}
    if backend == "simulation":
        request.getfixturevalue("sim")  # leaks and memory misuse fail the test at teardown
        runner = _tensorrt_runner(sim_artifacts(rt_cls.artifacts, tmp_path / "artifacts"))
    else:
        runner = makers[backend](rt_cls.artifacts) if backend in makers else _tensorrt_runner(rt_engine)
    assert isinstance(runner, Runner)
    assert not runner.is_active
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer({"pixel_values": np.zeros((1, 3, 48, 48), np.float32)})
    with runner as active:
        assert active is runner and runner.is_active
        runner.activate()  # idempotent
        meta = runner.get_input_metadata()
        assert list(meta) == ["pixel_values"]
        assert isinstance(meta["pixel_values"], TensorMeta)
        assert meta["pixel_values"].dtype == np.float32
        assert meta["pixel_values"].shape[1:] == (3, 48, 48) and isinstance(meta["pixel_values"].shape[0], str)
        x = np.random.default_rng(0).standard_normal((3, 3, 48, 48)).astype(np.float32)
        out = runner.infer({"pixel_values": x})
        assert isinstance(out, dict) and set(out) == {"logits", "embedding"}
        assert all(isinstance(v, np.ndarray) for v in out.values())
        assert out["logits"].shape == (3, 6) and out["embedding"].shape == (3, 32)
        one = runner.infer({"pixel_values": x[1:2]})
        assert np.allclose(one["logits"], out["logits"][1:2], atol=1e-4)
        with pytest.raises(InputError, match="missing input"):
            runner.infer({"wrong": x})
    assert not runner.is_active
    runner.deactivate()  # idempotent


def test_onnxruntime_providers_and_session_options(rt_cls: Exported) -> None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    auto = auto_providers(available)
    assert auto[-1] == "CPUExecutionProvider"
    # onnxruntime-gpu lists CUDA even without a GPU: it is asked for only when the driver reports one
    assert ("CUDAExecutionProvider" in auto) == (has_cuda_gpu() and "CUDAExecutionProvider" in available)
    path = Manifest.load(rt_cls.artifacts).onnx_path("fp32")
    x = np.random.default_rng(1).standard_normal((2, 3, 48, 48)).astype(np.float32)
    with OnnxRuntimeRunner(path) as reference:
        expected = reference.infer({"pixel_values": x})
        assert reference.providers == auto
    with OnnxRuntimeRunner(path, providers="cpu", intra_op_threads=1, inter_op_threads=1,
                           graph_optimization="disable", allow_spinning=False) as plain:
        got = plain.infer({"pixel_values": x})
        assert plain.providers == ["CPUExecutionProvider"]
    for name in expected:
        assert np.allclose(got[name], expected[name], atol=1e-5)
    with pytest.raises(InputError, match="graph_optimization"):
        OnnxRuntimeRunner(path, graph_optimization="max")
    with pytest.raises(InputError, match="not available here"):
        OnnxRuntimeRunner(path, providers=["MadeUpExecutionProvider"]).activate()


# ---- engine checks (before deserializing) ----------------------------------------------------------
def test_engine_checks_on_a_real_engine_entry(rt_engine: Path) -> None:
    entry = Manifest.load(rt_engine).engines[0]
    built = entry.tensorrt_version
    ampere = [Gpu(0, "NVIDIA RTX A4000", "8.6")]
    assert engine_problems(entry, runtime_version=built, gpus=ampere) == []
    no_gpu = engine_problems(entry, runtime_version=built, gpus=[])
    # no rebuild advice where none can help: no GPU here
    assert len(no_gpu) == 1 and "needs an NVIDIA GPU" in no_gpu[0] and "vitmsn-export" not in no_gpu[0]
    hopper = engine_problems(entry, runtime_version=built, gpus=[Gpu(0, "NVIDIA H100", "9.0")])
    assert "built for compute capability 8.6, but GPU 0 (NVIDIA H100) is 9.0" in hopper[0]
    assert "--engine require --target tensorrt-rtx" in hopper[0] and "--backend onnxruntime" in hopper[0]
    other = ".".join(str(v) for v in (version_tuple(built)[0] + 1, 0, 0))
    stale = engine_problems(entry, runtime_version=other, gpus=ampere)
    assert f"built with tensorrt-rtx {built}, but this machine has tensorrt-rtx {other}" in stale[0]
    missing = engine_problems(entry, runtime_version=None, gpus=ampere)
    assert "'tensorrt_rtx' module is not importable" in missing[0]


def test_version_and_compute_capability_rules() -> None:
    assert version_tuple("10.13.0.35") > version_tuple("10.9.0")  # numeric, not "10.13" < "10.9" as strings
    assert versions_compatible("10.13.0.35", "10.13.0.35", "tensorrt")
    assert versions_compatible("10.13.0.35", "10.13.0.99", "tensorrt")  # same release, other build
    assert not versions_compatible("10.13.0", "10.14.0", "tensorrt")
    assert versions_compatible("10.13.0", "10.14.0", "tensorrt", version_compatible=True)
    assert versions_compatible("10.13.0", "11.4.0", "tensorrt", version_compatible=True)
    assert not versions_compatible("11.4.0", "10.13.0", "tensorrt", version_compatible=True)
    assert not versions_compatible("1.7.1", "1.8.0", "tensorrt-rtx", version_compatible=True)
    for value in ("8.6", "86", "sm86", "SM_86", "sm_86", 8.6):
        assert normalize_cc(value) == "8.6"
    assert normalize_cc("120") == "12.0" and normalize_cc("garbage") is None


def test_auto_falls_back_to_onnxruntime_with_the_reason_and_forced_tensorrt_fails_clearly(rt_engine: Path) -> None:
    if has_cuda_gpu():
        pytest.skip("[gpu] this machine has a GPU; the fallback is for machines without one")
    manifest = Manifest.load(rt_engine)
    choice = choose(manifest, "auto")
    assert choice.backend == "openvino" and choice.precision == "fp32"  # OpenVINO is preferred on an x86 CPU
    engine_notes = [n for n in choice.notes if "engine" in n]
    assert len(engine_notes) == 1 and "no NVIDIA GPU" in engine_notes[0] and "vitmsn-export" not in engine_notes[0]
    with pytest.raises(InputError, match="no TensorRT engine can run here: .*needs an NVIDIA GPU"):
        choose(manifest, "tensorrt")
    with pytest.raises(InputError, match="no TensorRT engine can run here"):
        Predictor.from_artifacts(rt_engine, backend="tensorrt")
    with Predictor.from_artifacts(rt_engine) as p:  # auto: still predicts, on the CPU
        assert p.backend == "openvino"


def test_tensorrt_runner_checks_before_deserializing(rt_engine: Path) -> None:
    """The runner itself refuses up front, naming the cause and the rebuild command."""
    if has_cuda_gpu():
        pytest.skip("[gpu] this machine has a GPU: the refusal is for machines without one")
    runner = _tensorrt_runner(rt_engine)
    with pytest.raises(InputError, match="needs an NVIDIA GPU"):
        runner.activate()
    assert not runner.is_active


def test_selection_rules(rt_cls: Exported, tmp_path: Path) -> None:
    manifest = Manifest.load(rt_cls.artifacts)
    assert onnxruntime_precision_order(("CPUExecutionProvider",)) == ("fp32",)
    assert onnxruntime_precision_order(("CUDAExecutionProvider", "CPUExecutionProvider"))[0] == "fp16"
    assert onnxruntime_precision_order(("TensorrtExecutionProvider", "CUDAExecutionProvider"))[0] == "int8"
    if not has_cuda_gpu():
        assert choose(manifest).precision == "fp32"
    with pytest.raises(InputError, match="backend 'onnx'"):
        choose(manifest, "onnx")
    with pytest.raises(InputError, match="the manifest has no TensorRT engine; build one with vitmsn-export"):
        choose(manifest, "tensorrt")
    # a precision that exists only as an engine that cannot run here
    data = json.loads((rt_cls.artifacts / "manifest.json").read_text())
    data["engines"] = [{"file": "engine.fp16.tensorrt.plan", "sha256": "0" * 64, "precision": "fp16",
                        "target": "tensorrt", "tensorrt_version": "10.13.0", "compute_capabilities": ["8.6"]}]
    if not has_cuda_gpu():
        with pytest.raises(InputError, match="fp16 exists only as a TensorRT engine"):
            choose(Manifest.from_json(rt_cls.artifacts, data), "auto", "fp16")


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_engine_matches_onnxruntime_and_splits_large_batches(rt_cls: Exported, rt_engine: Path) -> None:
    if not cuda_gpus():
        pytest.skip(f"[gpu] needs a GPU: {NO_GPU}")
    if not module_available("tensorrt_rtx") or not module_available("cuda"):
        pytest.skip("[tensorrt] needs tensorrt_rtx and cuda-python")
    x = np.random.default_rng(2).standard_normal((19, 3, 48, 48)).astype(np.float32)  # > profile max 8
    with Predictor.from_artifacts(rt_engine, backend="tensorrt") as trt_p, Predictor.from_artifacts(rt_cls.artifacts) as ort_p:
        got, expected = trt_p.infer(x), ort_p.infer(x)
    for name in expected:
        assert got[name].shape == expected[name].shape
        assert np.allclose(got[name], expected[name], atol=1e-3, rtol=1e-3)


def test_tensorrt_execution_provider_options_follow_the_manifest_profile(tmp_path: Path) -> None:
    from vitmsn.runtime.backends.onnxruntime import tensorrt_provider_options

    options = tensorrt_provider_options("pixel_values", (3, 224, 224), {"min": 1, "opt": 8, "max": 32}, tmp_path)
    assert options["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert options["trt_profile_opt_shapes"] == "pixel_values:8x3x224x224"
    assert options["trt_profile_max_shapes"] == "pixel_values:32x3x224x224"
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path)
