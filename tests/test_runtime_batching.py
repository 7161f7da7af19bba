"""The micro-batching front: gathering, per-request errors, back-pressure, shutdown.

No timed assertions: waits are driven by events, and ``max_wait_ms`` is only required to let a
lone request through (it completes) and to gather concurrent ones (batches larger than one).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import Exported, photo, rt_cls, write_bad_files  # noqa: F401
from vitmsn.runtime import BatcherClosed, ImageError, MicroBatcher, Predictor, QueueFull


@pytest.fixture(scope="module")
def predictor(rt_cls: Exported):
    with Predictor.from_artifacts(rt_cls.artifacts) as p:
        yield p


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    out = []
    for i in range(32):
        import io

        buf = io.BytesIO()
        photo(120 + 4 * i, 90, seed=200 + i).save(buf, format="JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def test_concurrent_requests_are_batched_and_get_their_own_results(predictor: Predictor, jpegs: list[bytes]) -> None:
    expected = predictor.predict(jpegs, top_k=3)
    with predictor.batcher(top_k=3, max_batch=8, max_wait_ms=50, max_queue=64) as batcher:
        barrier = threading.Barrier(16)

        def request(i: int):
            if i < 16:
                barrier.wait()
            return batcher.submit(jpegs[i]).result(timeout=60)

        with ThreadPoolExecutor(16) as pool:
            got = list(pool.map(request, range(len(jpegs))))
        stats = batcher.stats()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert [p.index for p in a] == [p.index for p in b]
        assert np.allclose([p.score for p in a], [p.score for p in b], atol=1e-6)
    assert stats["completed"] == len(jpegs) and stats["batches"] < len(jpegs)
    assert 1 < stats["mean_batch_size"] <= 8


def test_a_lone_request_is_not_kept_waiting_for_a_full_batch(predictor: Predictor, jpegs: list[bytes]) -> None:
    with predictor.batcher(max_batch=8, max_wait_ms=1) as batcher:
        assert batcher(jpegs[0]) == predictor.predict(jpegs[0], top_k=5)


def test_a_bad_image_fails_only_its_own_request(predictor: Predictor, jpegs: list[bytes], tmp_path: Path) -> None:
    bad = write_bad_files(tmp_path)
    with predictor.batcher(top_k=2, max_batch=4, max_wait_ms=20) as batcher:
        futures = [batcher.submit(jpegs[0]), batcher.submit(bad["truncated.jpg"]), batcher.submit(jpegs[1]),
                   batcher.submit(bad["bomb.png"].read_bytes())]
        with pytest.raises(ImageError, match="truncated"):
            futures[1].result(timeout=60)
        with pytest.raises(ImageError, match="too large"):
            futures[3].result(timeout=60)
        assert futures[0].result(timeout=60) == predictor.predict(jpegs[0], top_k=2)
        assert futures[2].result(timeout=60) == predictor.predict(jpegs[1], top_k=2)


def _blocked_batcher(max_queue: int) -> tuple[MicroBatcher, threading.Event, threading.Event]:
    started, release = threading.Event(), threading.Event()

    def run(x: np.ndarray) -> list[float]:
        started.set()
        release.wait(60)
        return [float(v) for v in x[:, 0]]

    return MicroBatcher(run, prepare=lambda v: np.array([v], np.float32), max_batch=1, max_wait_ms=0,
                        max_queue=max_queue), started, release


def test_back_pressure_raises_queue_full_then_recovers() -> None:
    batcher, started, release = _blocked_batcher(max_queue=3)
    first = batcher.submit(0)
    assert started.wait(60)  # the worker holds item 0; the queue itself is empty again
    queued = [batcher.submit(i) for i in (1, 2, 3)]
    with pytest.raises(QueueFull, match=r"queue is full \(3 requests waiting\); retry later"):
        batcher.submit(4)
    with pytest.raises(QueueFull):
        batcher.submit(5, timeout=0.01)  # waiting a little for room does not help either
    assert batcher.stats()["rejected"] == 2 and batcher.queue_depth == 3
    release.set()
    assert [f.result(timeout=60) for f in [first, *queued]] == [0.0, 1.0, 2.0, 3.0]
    assert batcher.submit(6).result(timeout=60) == 6.0  # room again
    batcher.close()


def test_close_drains_or_fails_what_is_queued() -> None:
    batcher, started, release = _blocked_batcher(max_queue=8)
    running = batcher.submit(1)
    assert started.wait(60)
    waiting = [batcher.submit(i) for i in (2, 3)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    release.set()
    closer.join(60)
    assert running.result(timeout=60) == 1.0  # what had started still finishes
    for f in waiting:
        with pytest.raises(BatcherClosed):
            f.result(timeout=60)
    with pytest.raises(BatcherClosed):
        batcher.submit(4)

    drained, _, release2 = _blocked_batcher(max_queue=8)
    release2.set()
    futures = [drained.submit(i) for i in range(5)]
    drained.close()  # drain=True: everything queued completes
    assert [f.result(timeout=60) for f in futures] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_failing_batch_fails_each_of_its_requests_with_the_cause() -> None:
    def run(x: np.ndarray) -> list[float]:
        raise RuntimeError("device lost")

    with MicroBatcher(run, prepare=lambda v: np.array([v], np.float32), max_batch=4, max_wait_ms=5) as batcher:
        futures = [batcher.submit(i) for i in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="device lost"):
                f.result(timeout=60)
    with pytest.raises(ValueError):
        MicroBatcher(run, prepare=lambda v: v, max_batch=0)
