"""The SIMULATION's own tests: it rejects what TensorRT and CUDA reject. Not GPU evidence.

Each test drives the simulated modules directly, the way TensorRT's documentation says a caller
must, then breaks one rule and checks the simulation refuses it as TensorRT does (False / None /
an error code) and records the misuse."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import Exported, rt_cls  # noqa: F401
from trt_simulation import SimState, install, simulated_plan


@pytest.fixture
def raw(monkeypatch: pytest.MonkeyPatch, rt_cls: Exported, tmp_path: Path):
    state = install(monkeypatch)
    plan = tmp_path / "engine.plan"
    simulated_plan(rt_cls.artifacts / "model.fp32.onnx", plan, batch=(1, 4, 8))
    trt = sys.modules["tensorrt"]
    from cuda.bindings import runtime as cudart

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None
    return state, trt, cudart, engine


def _bind(cudart, context, n: int = 2) -> dict:
    ptrs = {}
    for name, nbytes in (("pixel_values", n * 3 * 48 * 48 * 4), ("logits", n * 6 * 4), ("embedding", n * 32 * 4)):
        err, ptrs[name] = cudart.cudaMalloc(nbytes)
        assert int(err) == 0
        assert context.set_tensor_address(name, ptrs[name])
    return ptrs


def _free(cudart, ptrs: dict) -> None:
    for p in ptrs.values():
        cudart.cudaFree(p)


def test_a_correct_caller_gets_onnx_runtime_results(raw, rt_cls: Exported) -> None:
    state, trt, cudart, engine = raw
    import onnxruntime as ort

    context = engine.create_execution_context()
    assert context.set_input_shape("pixel_values", (2, 3, 48, 48))
    ptrs = _bind(cudart, context)
    x = np.random.default_rng(0).standard_normal((2, 3, 48, 48)).astype(np.float32)
    _, stream = cudart.cudaStreamCreate()
    H2D, D2H = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    cudart.cudaMemcpyAsync(ptrs["pixel_values"], x.ctypes.data, x.nbytes, H2D, stream)
    assert context.execute_async_v3(int(stream))
    out = np.zeros((2, 6), np.float32)
    cudart.cudaMemcpyAsync(out.ctypes.data, ptrs["logits"], out.nbytes, D2H, stream)
    assert not out.any()  # asynchronous: nothing has run before the stream is synchronised
    assert int(cudart.cudaStreamSynchronize(stream)[0]) == 0
    expected = ort.InferenceSession(str(rt_cls.artifacts / "model.fp32.onnx")).run(["logits"], {"pixel_values": x})[0]
    assert np.allclose(out, expected, atol=1e-5)
    _free(cudart, ptrs)
    cudart.cudaStreamDestroy(stream)
    assert state.violations == [] and state.leaks() == []


def test_rejects_an_unset_tensor_address(raw) -> None:
    state, trt, cudart, engine = raw
    context = engine.create_execution_context()
    assert context.set_input_shape("pixel_values", (2, 3, 48, 48))
    ptrs = _bind(cudart, context)
    fresh = engine.create_execution_context()  # addresses are per context
    assert fresh.set_input_shape("pixel_values", (2, 3, 48, 48))
    fresh.set_tensor_address("pixel_values", ptrs["pixel_values"])
    fresh.set_tensor_address("logits", ptrs["logits"])
    assert not fresh.execute_async_v3(0)
    assert "neither address nor allocator is set for tensor 'embedding'" in state.log[-1]
    _free(cudart, ptrs)


def test_rejects_a_shape_outside_the_profile_and_an_unset_input_shape(raw) -> None:
    state, trt, cudart, engine = raw
    context = engine.create_execution_context()
    assert not context.set_input_shape("pixel_values", (9, 3, 48, 48))  # profile max 8
    assert not context.set_input_shape("pixel_values", (2, 3, 32, 48))  # static dims
    assert "outside the optimization profile" in state.log[-2]
    ptrs = _bind(cudart, context)
    assert not context.execute_async_v3(0)
    assert "input shape of 'pixel_values' not specified" in state.log[-1]
    _free(cudart, ptrs)


def test_rejects_freed_and_too_small_buffers(raw) -> None:
    state, trt, cudart, engine = raw
    context = engine.create_execution_context()
    assert context.set_input_shape("pixel_values", (4, 3, 48, 48))
    ptrs = _bind(cudart, context, n=2)  # sized for 2 images, shape says 4
    assert not context.execute_async_v3(0)
    assert "overruns" in state.violations[-1]
    cudart.cudaFree(ptrs["logits"])
    assert context.set_input_shape("pixel_values", (2, 3, 48, 48))
    assert not context.execute_async_v3(0)
    assert "use after free" in state.violations[-1]
    assert int(cudart.cudaFree(ptrs["logits"])[0]) != 0 and "double free" in state.violations[-1]
    host = np.zeros(8, np.float32)
    assert int(cudart.cudaMemcpy(host.ctypes.data, ptrs["logits"], 32, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)[0]) == 0
    assert "use after free" in state.violations[-1]
    _free(cudart, {k: v for k, v in ptrs.items() if k != "logits"})


def test_reports_leaks(raw) -> None:
    state, trt, cudart, engine = raw
    _, ptr = cudart.cudaMalloc(64)
    _, host = cudart.cudaMallocHost(64)
    _, stream = cudart.cudaStreamCreate()
    assert len(state.leaks()) == 3
    cudart.cudaFree(ptr), cudart.cudaFreeHost(host), cudart.cudaStreamDestroy(stream)
    assert state.leaks() == []


def test_deserialization_rules(raw, rt_cls: Exported, tmp_path: Path) -> None:
    state, trt, cudart, _ = raw
    onnx = rt_cls.artifacts / "model.fp32.onnx"
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    for kw, message in ((dict(compute_capabilities=("8.9",)), "built for compute capability"),
                        (dict(version="11.3.0"), "cannot be deserialized"),
                        (dict(version="11.3.0", version_compatible=True), "engine_host_code_allowed")):
        plan = tmp_path / "p.plan"
        simulated_plan(onnx, plan, **kw)
        assert runtime.deserialize_cuda_engine(plan.read_bytes()) is None
        assert message in state.log[-1]
    runtime.engine_host_code_allowed = True
    assert runtime.deserialize_cuda_engine(plan.read_bytes()) is not None  # older release, version-compatible
    assert runtime.deserialize_cuda_engine(b"\x00" * 64) is None  # not an engine
    assert int(cudart.cudaSetDevice(3)[0]) == int(cudart.cudaError_t.cudaErrorInvalidDevice)


def test_faults_allocation_execute_and_device_lost(raw) -> None:
    state, trt, cudart, engine = raw
    state.faults.malloc_fails_at = state.faults.mallocs + 1
    assert int(cudart.cudaMalloc(16)[0]) == int(cudart.cudaError_t.cudaErrorMemoryAllocation)
    context = engine.create_execution_context()
    assert context.set_input_shape("pixel_values", (2, 3, 48, 48))
    ptrs = _bind(cudart, context)
    state.faults.execute_fails_at = state.faults.executes + 1
    assert not context.execute_async_v3(0)
    assert context.execute_async_v3(0)  # one-off failure
    state.faults.device_lost_at_execute = state.faults.executes + 1
    assert not context.execute_async_v3(0)
    assert int(cudart.cudaMalloc(16)[0]) != 0 and not context.execute_async_v3(0)  # sticky
    _free(cudart, ptrs)
    assert state.leaks() == []  # frees after a lost device still release (with an error code)


def test_the_product_never_imports_the_simulation() -> None:
    """The simulation lives under tests/ and is installed only by tests (monkeypatch or the shim)."""
    root = Path(__file__).resolve().parent.parent
    product = [p for d in ("src", "runtime", "export", "calibration", "benchmarks") for p in (root / d).rglob("*.py")]
    assert product
    importing = re.compile(r"^\s*(from|import)\s+(tests\.)?trt_simulation\b", re.MULTILINE)
    offenders = [str(p.relative_to(root)) for p in product if importing.search(p.read_text())]
    assert offenders == []
