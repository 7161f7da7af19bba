"""The TensorRT timing path's control flow, against a fake TensorRT and a fake CUDA runtime.

No machine this project tests on can run TensorRT, so these tests only prove that the timing
path sequences its calls as intended (contexts, warm-up enqueue before capture, graph replays,
event timing, fall-backs, clean-up). Whether the real APIs behave as the fakes do is NOT tested.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest


class FakeCudart:
    cudaStreamNonBlocking = 1
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.live: set[str] = set()
        self.next = 0
        self.capturing: set[int] = set()

    def _new(self, kind: str) -> tuple[int, int]:
        self.next += 1
        self.live.add(f"{kind}{self.next}")
        return 0, self.next

    def _free(self, kind: str, handle: int) -> tuple[int]:
        self.live.discard(f"{kind}{handle}")
        return (0,)

    def __getattr__(self, name: str):
        def call(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == "cudaStreamBeginCapture":
                self.capturing.add(args[0])
            if name == "cudaStreamEndCapture":
                self.capturing.discard(args[0])
            kinds = {"cudaStreamCreateWithFlags": "stream", "cudaMalloc": "mem", "cudaEventCreate": "event",
                     "cudaStreamEndCapture": "graph", "cudaGraphInstantiate": "exec"}
            frees = {"cudaStreamDestroy": "stream", "cudaFree": "mem", "cudaEventDestroy": "event",
                     "cudaGraphDestroy": "graph", "cudaGraphExecDestroy": "exec"}
            if name in kinds:
                return self._new(kinds[name])
            if name in frees:
                return self._free(frees[name], args[0])
            if name == "cudaEventElapsedTime":
                return 0, 1.5
            return (0,)

        return call


class FakeContext:
    def __init__(self, engine: "FakeEngine") -> None:
        self.engine, self.shapes, self.addresses, self.enqueues = engine, {}, {}, 0

    def set_optimization_profile_async(self, index: int, stream: int) -> bool:
        return self.engine.share_profiles or not any(c is not self for c in self.engine.contexts[:-1])

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str):
        return (self.shapes["pixel_values"][0], 10)

    def set_tensor_address(self, name: str, ptr: int) -> None:
        self.addresses[name] = ptr

    def execute_async_v3(self, stream: int) -> bool:
        assert set(self.addresses) == {"pixel_values", "logits"}
        if stream in self.engine.cudart.capturing and self.engine.refuse_capture:
            return False
        self.enqueues += 1
        return True


class FakeEngine:
    num_io_tensors = 2

    def __init__(self, cudart: FakeCudart, profiles: int = 1, share_profiles: bool = True, refuse_capture: bool = False) -> None:
        self.cudart, self.num_optimization_profiles = cudart, profiles
        self.share_profiles, self.refuse_capture = share_profiles, refuse_capture
        self.contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return ["pixel_values", "logits"][i]

    def get_tensor_mode(self, name: str) -> str:
        return "in" if name == "pixel_values" else "out"

    def get_tensor_dtype(self, name: str) -> str:
        return "float"

    def get_tensor_shape(self, name: str):
        return (-1, 3, 8, 8)

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


def _install(monkeypatch: pytest.MonkeyPatch, engine: FakeEngine) -> None:
    from vitmsn.runtime import device, tensorrt_runner

    fake_trt = SimpleNamespace(
        __version__="10.99", TensorIOMode=SimpleNamespace(INPUT="in"), nptype=lambda dtype: np.float32,
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Runtime=lambda logger: SimpleNamespace(deserialize_cuda_engine=lambda plan: engine))
    monkeypatch.setattr(device, "import_tensorrt", lambda target: fake_trt)
    monkeypatch.setattr(tensorrt_runner, "import_cudart", lambda: engine.cudart)


def _time(tmp_path: Path, streams: int = 2):
    from vitmsn.bench.tensorrt_timing import time_engine
    from vitmsn.bench.timing import TimingPlan
    from vitmsn.runtime.manifest import EngineEntry, sha256_file

    plan = tmp_path / "engine.plan"
    plan.write_bytes(b"fake")
    entry = EngineEntry(plan.name, sha256_file(plan), precision="fp16", target="tensorrt", tensorrt_version="10.13.0")
    return time_engine(plan, entry, "pixel_values", 4,
                       TimingPlan(warmup=2, iterations=5), streams=streams)


def test_graphs_events_and_contexts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cudart = FakeCudart()
    engine = FakeEngine(cudart)
    _install(monkeypatch, engine)
    t = _time(tmp_path)
    assert (t.streams, t.cuda_graph, t.notes) == (2, True, [])
    assert t.latency.count == 5 and t.latency.median == 1.5 and t.throughput > 0
    assert all(c.shapes["pixel_values"] == (4, 3, 8, 8) for c in engine.contexts)
    # 2 warm-up enqueues + 1 captured enqueue per context; timing replays the graphs
    assert [c.enqueues for c in engine.contexts] == [3, 3]
    assert cudart.calls["cudaGraphLaunch"] == 5 + 5 * 2
    assert cudart.live == set(), "every stream, buffer, event and graph is released"
    assert t.info()["verified"] is False


def test_falls_back_to_enqueues_when_capture_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cudart = FakeCudart()
    engine = FakeEngine(cudart, refuse_capture=True)
    _install(monkeypatch, engine)
    t = _time(tmp_path)
    assert t.cuda_graph is False and "capture failed" in t.notes[0]
    assert "cudaGraphLaunch" not in cudart.calls
    assert engine.contexts[0].enqueues == 2 + 5 + 5  # warm-up, event-timed, throughput
    assert cudart.live == set()


def test_fewer_streams_when_contexts_cannot_share_a_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cudart = FakeCudart()
    engine = FakeEngine(cudart, profiles=2, share_profiles=False)
    _install(monkeypatch, engine)
    t = _time(tmp_path, streams=3)
    assert t.streams == 1 and "only 1 of 3 contexts" in t.notes[0]
    assert cudart.live == set()
