"""Micro-batching for servers: requests from many threads gathered into one batch per inference.

    batcher = MicroBatcher(run_batch, prepare=predictor.preprocess, max_batch=8, max_wait_ms=5, max_queue=64)
    future = batcher.submit(image_bytes)        # raises QueueFull at once when max_queue are waiting
    predictions = future.result(timeout=10)     # or: await asyncio.wrap_future(future)
    batcher.close()                             # finishes what was queued, then stops

``submit`` runs ``prepare`` (decode and preprocess) in the caller's thread, so a server's request
threads decode in parallel and a bad image fails only its own future, never the batch. One worker
thread waits for the first queued item, then gathers more until ``max_batch`` items or until
``max_wait_ms`` have passed since that first item, stacks them and calls ``run_batch`` once; each
future gets its own row of the result. The queue is bounded: when ``max_queue`` items wait,
``submit`` raises :class:`QueueFull` (after ``timeout`` seconds, if one is given), which a server
turns into HTTP 503 so that load is shed instead of piling up latency.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Generic, Sequence, TypeVar

import numpy as np

from vitmsn.core.errors import VitmsnError

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(VitmsnError):
    """The batcher's queue holds ``max_queue`` waiting items; retry later (HTTP 503)."""


class BatcherClosed(VitmsnError):
    """``submit`` after ``close()``."""


@dataclass
class _Item:
    tensor: np.ndarray
    future: Future
    queued_at: float


_STOP = object()


class MicroBatcher(Generic[T, R]):
    def __init__(self, run_batch: Callable[[np.ndarray], Sequence[R]], *, prepare: Callable[[T], np.ndarray],
                 max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64, name: str = "vitmsn-batcher") -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.run_batch, self.prepare = run_batch, prepare
        self.max_batch, self.max_wait, self.max_queue = int(max_batch), max_wait_ms / 1000.0, int(max_queue)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self.max_queue)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._stats = {"submitted": 0, "rejected": 0, "failed": 0, "completed": 0, "batches": 0, "batched_items": 0}
        self._worker = threading.Thread(target=self._loop, name=name, daemon=True)
        self._worker.start()

    # ---- the caller's side ---------------------------------------------------------------
    def submit(self, item: T, timeout: float | None = None) -> "Future[R]":
        """Queue one input; the future resolves to its result or to the exception it caused.

        Raises :class:`QueueFull` when the queue is full (immediately, or after ``timeout``
        seconds of waiting for room), :class:`BatcherClosed` after ``close()``.
        """
        if self._closed.is_set():
            raise BatcherClosed("the micro-batcher is closed")
        future: Future[R] = Future()
        try:
            tensor = self.prepare(item)
        except Exception as exc:  # this input's own problem (e.g. ImageError): only its future fails
            future.set_exception(exc)
            self._count("failed")
            return future
        try:
            self._queue.put(_Item(tensor, future, time.monotonic()), block=timeout is not None, timeout=timeout)
        except queue.Full:
            self._count("rejected")
            raise QueueFull(f"the micro-batcher's queue is full ({self.max_queue} requests waiting); retry later") from None
        self._count("submitted")
        return future

    def __call__(self, item: T, timeout: float | None = None) -> R:
        """Submit and wait for the result (re-raises the input's exception)."""
        return self.submit(item).result(timeout)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def stats(self) -> dict[str, float]:
        with self._lock:
            s: dict[str, float] = dict(self._stats)
        s["queue_depth"] = self.queue_depth
        s["mean_batch_size"] = s["batched_items"] / s["batches"] if s["batches"] else 0.0
        return s

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop accepting; with ``drain`` finish what is queued, else fail it with BatcherClosed."""
        if self._closed.is_set():
            return
        self._closed.set()
        if not drain:
            self._fail_leftovers()
        self._queue.put(_STOP)  # blocks only while the worker still drains a full queue
        self._worker.join(timeout)

    def __enter__(self) -> "MicroBatcher[T, R]":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the worker's side ---------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._stats[key] += n

    def _gather(self, first: _Item) -> tuple[list[_Item], bool]:
        batch, stop = [first], False
        deadline = first.queued_at + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._fail_leftovers()
                return
            batch, stop = self._gather(first)
            live = [it for it in batch if it.future.set_running_or_notify_cancel()]
            if live:
                self._run(live)
            if stop:
                self._fail_leftovers()
                return

    def _fail_leftovers(self) -> None:
        """Fail what is queued: items that raced past ``close()`` behind the stop marker, or all of it (no drain)."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Item) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BatcherClosed("the micro-batcher was closed before this ran"))

    def _run(self, items: list[_Item]) -> None:
        try:
            results = self.run_batch(np.stack([it.tensor for it in items]))
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} inputs")
        except BaseException as exc:  # the whole batch failed: every waiting caller hears why
            for it in items:
                it.future.set_exception(exc)
            self._count("failed", len(items))
            return
        for it, result in zip(items, results):
            it.future.set_result(result)
        with self._lock:
            self._stats["completed"] += len(items)
            self._stats["batches"] += 1
            self._stats["batched_items"] += len(items)
