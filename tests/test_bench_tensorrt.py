"""The bench's TensorRT timing path (CUDA events, CUDA graphs, several contexts) against the
SIMULATED CUDA/TensorRT runtimes (tests/trt_simulation). The simulation checks the calls against
CUDA's and TensorRT's contracts (live streams, bounds-checked buffers, every tensor address set,
graphs replaying what was captured, nothing leaked); it says nothing about real GPU timings, and
every row this path produces carries ``"verified": false``."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime_fixtures import Exported, rt_cls  # noqa: F401
from sim_fixtures import sim, sim_artifacts  # noqa: F401
from trt_simulation import SimState
from vitmsn.bench.tensorrt_timing import time_engine
from vitmsn.bench.timing import TimingPlan
from vitmsn.runtime.manifest import Manifest
from vitmsn.runtime.backends.tensorrt import TensorRTRunner


@pytest.fixture
def runner(sim: SimState, rt_cls: Exported, tmp_path: Path):
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a")
    m = Manifest.load(art)
    with TensorRTRunner(m.path_of(m.engines[0].file), m.engines[0]) as r:
        yield r


def test_graphs_events_and_contexts(runner: TensorRTRunner, sim: SimState) -> None:
    before = sim.faults.executes
    t = time_engine(runner, "pixel_values", 4, TimingPlan(warmup=2, iterations=5), streams=2)
    assert (t.streams, t.cuda_graph, t.notes) == (2, True, [])
    assert t.latency.count == 5 and t.throughput > 0
    # 2 warm-up enqueues + 1 captured enqueue per context; timing replays the captured graphs
    assert sim.faults.executes - before == 2 * 3
    assert sim.deserializations == 1 and t.info()["verified"] is False


def test_falls_back_to_enqueues_when_capture_fails(runner: TensorRTRunner, sim: SimState) -> None:
    sim.faults.capture_unsupported = True
    before = sim.faults.executes
    t = time_engine(runner, "pixel_values", 4, TimingPlan(warmup=2, iterations=5), streams=2)
    assert t.cuda_graph is False and "capture failed" in t.notes[0]
    assert sim.faults.executes - before == 2 * 2 + 5 + 5 * 2  # warm-up, event-timed, throughput rounds


def test_a_batch_outside_the_profile_is_refused(runner: TensorRTRunner) -> None:
    with pytest.raises(RuntimeError, match="rejected input shape"):
        time_engine(runner, "pixel_values", 9, TimingPlan(warmup=1, iterations=1))  # profile max 8
