"""Predictor, micro-batching and failure clean-up on the TensorRT runner, against the SIMULATED
CUDA/TensorRT runtimes (tests/trt_simulation). Not GPU evidence: it checks what the runner asks of
TensorRT and CUDA, including under injected faults (execute failure, device lost mid-batch)."""

from __future__ import annotations

import gc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import Exported, photo, rt_cls  # noqa: F401
from sim_fixtures import sim, sim_artifacts  # noqa: F401
from trt_simulation import SimState
from vitmsn.runtime import Predictor


@pytest.fixture
def art(sim: SimState, rt_cls: Exported, tmp_path: Path) -> Path:
    return sim_artifacts(rt_cls.artifacts, tmp_path / "a")


def test_predictor_and_micro_batching_match_onnxruntime(art: Path, sim: SimState) -> None:
    images = [np.asarray(photo(96, 80, seed=s)) for s in range(11)]
    with Predictor.from_artifacts(art, backend="onnxruntime") as ort_p:
        expected = ort_p.predict(images, top_k=3)
    with Predictor.from_artifacts(art, backend="tensorrt", batch_size=4) as p:
        assert p.backend == "tensorrt" and p.runner.max_batch == 8
        got = p.predict(images, top_k=3)
        with p.batcher(top_k=3, max_batch=8, max_wait_ms=20) as batcher, ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(batcher.submit, images))
            batched = [f.result(timeout=60) for f in futures]
        big = p.infer(np.random.default_rng(0).standard_normal((19, 3, 48, 48)).astype(np.float32))  # > profile max
        assert big["logits"].shape == (19, 6)
    for a, b, c in zip(got, expected, batched):
        assert [x.label for x in a] == [x.label for x in b] == [x.label for x in c]
        assert np.allclose([x.score for x in a], [x.score for x in b], atol=1e-4)
    assert sim.deserializations == 1


@pytest.mark.parametrize("fault", ["execute_fails_at", "device_lost_at_execute"])
def test_a_failed_batch_raises_and_closing_still_frees_everything(art: Path, sim: SimState, fault: str) -> None:
    x = np.random.default_rng(1).standard_normal((20, 3, 48, 48)).astype(np.float32)
    with Predictor.from_artifacts(art, backend="tensorrt") as p:
        setattr(sim.faults, fault, sim.faults.executes + 2)  # the second chunk of the batch fails
        with pytest.raises(RuntimeError, match="execute_async_v3 failed"):
            p.infer(x)
        if fault == "device_lost_at_execute":
            with pytest.raises(RuntimeError):  # sticky: every later call fails too, clearly
                p.infer(x[:2])
        else:
            assert p.infer(x[:2])["logits"].shape == (2, 6)  # a one-off failure leaves the runner usable
    gc.collect()
    assert sim.leaks() == [] and sim.violations == []  # the sim fixture checks again at teardown
