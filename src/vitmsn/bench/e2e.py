"""The end-to-end rows: JPEG bytes in, through the runtime's own overlapped preprocessing.

One end-to-end call runs a stream of ``STREAM_BATCHES`` batches of distinct JPEGs the way
``Predictor.predict`` does (:func:`vitmsn.runtime.images.prefetch.preprocess_ahead`): batch k+1 is decoded,
resized and normalised on the preprocessing threads while batch k is inferred. Its latency
figures are per batch, amortised over the stream (call time / ``STREAM_BATCHES``), so an end-to-end
row reads against the model-only row of the same backend and batch size.

The same run times preprocessing alone (one thread, the same JPEGs), which gives each CPU row's
*CPU-time bound*: when inference keeps all ``threads`` cores busy, decoding can only take core time
from it, so end to end over model only is at most ``c / (c + p)`` with ``c`` = threads x the model
row's median ms per image and ``p`` = preprocessing's ms per image on one core. A row at its bound
has nothing left to overlap; raising it needs cheaper preprocessing or a core that inference leaves free.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any, Callable, Sequence

from vitmsn.runtime.images.prefetch import preprocess_ahead

from .timing import LatencyStats

STREAM_BATCHES = 4


def stream_call(infer: Callable[[Any], Any], jpegs: Sequence[bytes], batch: int, preprocess: Any, pool: Executor,
                shape: tuple[int, ...]) -> Callable[[], None]:
    """One end-to-end call: ``len(jpegs) / batch`` batches, preprocessing overlapped with ``infer``."""
    chunks = [jpegs[i:i + batch] for i in range(0, len(jpegs), batch)]

    def call() -> None:
        for x, errors in preprocess_ahead(chunks, preprocess, pool, shape):
            bad = [e for e in errors if e is not None]
            if bad:
                raise bad[0]
            infer(x)

    return call


def per_batch(stats: LatencyStats, batches: int = STREAM_BATCHES) -> LatencyStats:
    """A stream call's samples as per-batch latencies."""
    return LatencyStats([s / batches for s in stats.samples_ms])


def preprocess_call(jpegs: Sequence[bytes], preprocess: Any) -> Callable[[], None]:
    """Preprocessing alone, in the calling thread: the one-core cost the bound needs."""
    return lambda: preprocess.batch(jpegs)


def add_bounds(rows: list[dict[str, Any]], threads: int) -> None:
    """``e2e_vs_model`` and, on CPU rows, ``cpu_time_bound`` for every end-to-end row (see the module docstring)."""
    for r in rows:
        if r["mode"] != "e2e":
            continue
        twin = next((m for m in rows if m["mode"] == "model" and all(
            m.get(k) == r.get(k) for k in ("backend", "precision", "device", "variant", "batch_size", "sessions"))), None)
        if twin is None or not twin["throughput"]:
            continue
        r["e2e_vs_model"] = round(r["throughput"] / twin["throughput"], 3)
        pre = r.get("preprocess_ms_per_image")
        if r["device"] == "cpu" and pre:
            core_ms = threads * twin["latency_ms"]["median"] / r["batch_size"]
            r["cpu_time_bound"] = round(core_ms / (core_ms + pre), 3)
