"""Timing loops and latency statistics: warm-up, interleaved rounds, median/p90/p99.

A *sample* is the wall time of one call that runs one batch to completion (outputs on the host,
or the device synchronised). Percentiles use numpy's linear interpolation, so p99 of 20 samples
is close to the maximum: the report states the sample count beside every row.

Rows are timed in *rounds*: every backend runs ``iterations / rounds`` calls, then the next
backend, and so on, ``rounds`` times over. On a shared machine a burst of load then lands on
all backends alike instead of on whichever happened to run during it, which keeps the ratios
between rows (the figures this benchmark is read for) steadier than the absolute numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class TimingPlan:
    """How long to time each row: ``warmup`` untimed calls, then at least ``iterations`` timed
    calls and at least ``min_seconds`` of timed work, spread over ``rounds`` rounds."""

    warmup: int = 3
    iterations: int = 20
    rounds: int = 3
    min_seconds: float = 0.0
    max_iterations: int = 10_000
    rewarm: int = 1  # untimed calls at the start of each row's turn in a round (wakes its thread pool)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.rewarm < 0 or self.iterations < 1 or self.rounds < 1 or self.min_seconds < 0:
            raise ValueError(f"bad timing plan {self}: warmup >= 0, iterations >= 1, rounds >= 1, min_seconds >= 0")

    @property
    def per_round(self) -> int:
        return max(1, math.ceil(self.iterations / self.rounds))


@dataclass
class LatencyStats:
    """Per-call wall times (milliseconds) of one row."""

    samples_ms: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.samples_ms)

    def percentile(self, q: float) -> float:
        if not self.samples_ms:
            return float("nan")
        return float(np.percentile(np.asarray(self.samples_ms), q))

    @property
    def median(self) -> float:
        return self.percentile(50)

    @property
    def mean(self) -> float:
        return float(np.mean(self.samples_ms)) if self.samples_ms else float("nan")

    def throughput(self, batch_size: int) -> float:
        """Images per second at the median latency."""
        med = self.median
        return batch_size * 1000.0 / med if med > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {
            "median": round(self.median, 4),
            "p90": round(self.percentile(90), 4),
            "p99": round(self.percentile(99), 4),
            "mean": round(self.mean, 4),
            "min": round(min(self.samples_ms), 4) if self.samples_ms else float("nan"),
            "max": round(max(self.samples_ms), 4) if self.samples_ms else float("nan"),
            "samples": self.count,
        }


def time_calls(call: Callable[[], object], n: int, clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """``n`` timed calls of ``call``; milliseconds each."""
    out = []
    for _ in range(n):
        start = clock()
        call()
        out.append((clock() - start) * 1000.0)
    return out


def time_interleaved(calls: Sequence[Callable[[], object]], plan: TimingPlan,
                     on_round: Callable[[int], None] | None = None) -> list[LatencyStats]:
    """Time several rows against each other: warm each up, then alternate them in rounds.

    Each row's turn in a round starts with ``rewarm`` untimed calls: the previous row's
    thread pool (ONNX Runtime and OpenMP workers spin for a while after each call) has gone
    quiet and this row's pool is awake before the first timed call. After the planned rounds,
    rounds continue while any row has less than ``min_seconds`` of
    samples (bounded by ``max_iterations`` per row).
    """
    stats = [LatencyStats() for _ in calls]
    for call in calls:
        for _ in range(plan.warmup):
            call()
    rounds = 0
    while True:
        for call, st in zip(calls, stats):
            for _ in range(plan.rewarm):
                call()
            st.samples_ms.extend(time_calls(call, plan.per_round))
        rounds += 1
        if on_round is not None:
            on_round(rounds)
        if rounds < plan.rounds:
            continue
        short = [st for st in stats if sum(st.samples_ms) < plan.min_seconds * 1000.0 and st.count < plan.max_iterations]
        if not short:
            return stats
