"""Preprocessing ahead of inference (runtime.prefetch): the next chunk really decodes while the caller
works on this one, a bad image fails only its own slot, work stops when the caller stops, and the
bench's end-to-end bound is the formula its report states. Real JPEGs through the real preprocessing;
no timing thresholds (overlap is shown by an event only the next chunk's decoding can set)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from vitmsn.bench.e2e import add_bounds, per_batch
from vitmsn.bench.inputs import jpeg_images
from vitmsn.bench.timing import LatencyStats
from vitmsn.runtime.images.prefetch import preprocess_ahead
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, ImageError, PreprocessConfig

PRE = PreprocessConfig.from_preprocessor_config(DEFAULT_PREPROCESSOR_CONFIG)
SHAPE = (3, PRE.height, PRE.width)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return jpeg_images(9, seed=3, size=(320, 240))


def test_the_next_chunk_decodes_while_this_one_is_being_used(jpegs: list[bytes]) -> None:
    chunks = [jpegs[0:3], jpegs[3:6], jpegs[6:9]]
    started: dict[bytes, threading.Event] = {j: threading.Event() for j in jpegs}

    def recording(image: bytes, out: np.ndarray) -> np.ndarray:
        started[image].set()
        return PRE(image, out)

    seen = []
    with ThreadPoolExecutor(2) as pool:
        for k, (x, errors) in enumerate(preprocess_ahead(chunks, recording, pool, SHAPE)):
            if k + 1 < len(chunks):  # "inference" of chunk k waits for chunk k+1 to start decoding: only overlap sets it
                assert all(started[j].wait(10) for j in chunks[k + 1]), f"chunk {k + 1} did not decode during chunk {k}"
            assert errors == [None] * 3
            seen.append(x)
    assert np.array_equal(np.concatenate(seen), PRE.batch(jpegs))  # the same pixels, in input order


def test_a_bad_image_fails_only_its_own_slot(jpegs: list[bytes]) -> None:
    truncated = jpegs[1][: len(jpegs[1]) // 3]
    chunk = [jpegs[0], truncated, b"not an image", jpegs[2]]
    with ThreadPoolExecutor(2) as pool:
        (x, errors), = list(preprocess_ahead([chunk], PRE, pool, SHAPE))
    assert errors[0] is None and errors[3] is None
    assert isinstance(errors[1], ImageError) and "truncated" in str(errors[1])
    assert isinstance(errors[2], ImageError) and "not a readable image" in str(errors[2])
    assert np.array_equal(x[[0, 3]], PRE.batch([jpegs[0], jpegs[2]]))
    assert not x[1].any() and not x[2].any()  # failed rows are zeros, never another image's pixels


def test_stopping_early_stops_the_work(jpegs: list[bytes]) -> None:
    """The caller stops after the first chunk (an exception): at most the chunk ahead was decoded, never
    the whole input, and nothing is still running afterwards."""
    calls = []

    def counting(image: bytes, out: np.ndarray) -> np.ndarray:
        calls.append(image)
        return PRE(image, out)

    chunks = [jpegs[i:i + 1] for i in range(len(jpegs))]  # 9 chunks of one image
    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(RuntimeError, match="caller failed"):
            for _ in preprocess_ahead(chunks, counting, pool, SHAPE):
                raise RuntimeError("caller failed")
        done = len(calls)
        pool.submit(lambda: None).result()  # the pool's one worker is free again: nothing left queued before it
    assert done <= 2 and len(calls) == done


def test_closing_cancels_the_chunk_in_flight(jpegs: list[bytes]) -> None:
    """close() while the next chunk decodes: what has not started is dropped, what has started is waited for
    (it writes into that chunk's buffer), and nothing runs after close() returns."""
    release, entered = threading.Event(), threading.Event()
    calls = []

    def gated(image: bytes, out: np.ndarray) -> np.ndarray:
        if image in jpegs[3:6]:
            entered.set()
            release.wait(10)  # the next chunk's first image holds the pool's one worker
        calls.append(image)
        return PRE(image, out)

    with ThreadPoolExecutor(1) as pool:
        batches = preprocess_ahead([jpegs[0:3], jpegs[3:6], jpegs[6:9]], gated, pool, SHAPE)
        next(batches)
        assert entered.wait(10)
        threading.Timer(0.2, release.set).start()
        batches.close()
        after_close = len(calls)
        pool.submit(lambda: None).result()
    assert after_close == 4 and len(calls) == 4  # chunk 0, plus the one image of chunk 1 that had started


def test_the_cpu_time_bound_is_the_stated_formula() -> None:
    """2 threads x 80 ms per batch of 8 = 20 core-ms per image; 5 ms of preprocessing per image:
    end to end can reach at most 20 / 25 = 0.8 of model only."""
    model = {"mode": "model", "backend": "openvino", "precision": "int8", "device": "cpu", "variant": "inference bf16",
             "batch_size": 8, "sessions": 1, "throughput": 100.0, "latency_ms": {"median": 80.0}}
    e2e = {**model, "mode": "e2e", "throughput": 75.0, "preprocess_ms_per_image": 5.0}
    gpu = {**model, "device": "cuda", "mode": "e2e", "throughput": 50.0, "preprocess_ms_per_image": 5.0}
    gpu_model = {**model, "device": "cuda"}
    rows = [model, e2e, gpu_model, gpu]
    add_bounds(rows, threads=2)
    assert e2e["e2e_vs_model"] == 0.75 and e2e["cpu_time_bound"] == 0.8
    assert gpu["e2e_vs_model"] == 0.5 and "cpu_time_bound" not in gpu  # a GPU row's inference takes no CPU core
    assert per_batch(LatencyStats([400.0, 200.0]), 4).samples_ms == [100.0, 50.0]


_FIFO_CHILD = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a pytest started in the background passes SIGINT ignored
from concurrent.futures import ThreadPoolExecutor
from vitmsn.bench.inputs import jpeg_images
from vitmsn.runtime.images.prefetch import preprocess_ahead
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

pre = PreprocessConfig.from_preprocessor_config(DEFAULT_PREPROCESSOR_CONFIG)
jpegs = jpeg_images(2, seed=3, size=(64, 48))
try:
    with ThreadPoolExecutor(2) as pool:
        for _ in preprocess_ahead([[jpegs[0], sys.argv[1]], [jpegs[1]]], pre, pool, (3, pre.height, pre.width)):
            pass
except KeyboardInterrupt:
    sys.exit(130)
sys.exit(0)
"""


def test_an_interrupt_stops_a_pipe_that_never_delivers(tmp_path) -> None:
    """A FIFO whose writer never writes: SIGINT must end the wait (exit 130). Read on a worker, nothing could stop
    it and the pool's clean-up would wait for it forever. The reader runs in a child process: a signal is never
    sent to the test process itself, whose native libraries may not expect one. The writer is closed only after
    a 20 s guard, which lets a broken build finish, too late."""
    import os
    import signal
    import subprocess
    import sys
    import time

    fifo = tmp_path / "never.jpg"
    os.mkfifo(fifo)
    child = subprocess.Popen([sys.executable, "-c", _FIFO_CHILD, str(fifo)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    fd = None
    try:
        deadline = time.monotonic() + 60
        while fd is None:  # opening for writing succeeds once the child has the FIFO open for reading
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert child.poll() is None and time.monotonic() < deadline, child.communicate()
                time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        try:
            code = child.wait(20)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        if fd is not None:
            os.close(fd)  # EOF: unblocks a reader stuck on a worker
        if child.poll() is None:
            child.wait(30)
        out, err = child.communicate()
    assert code == 130, (f"SIGINT did not end the wait (exit {code}); only the writer going away did (exit "
                         f"{child.returncode}): {err[-500:]}")
