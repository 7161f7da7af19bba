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
    # Adaptive: after the planned rounds, more rounds until every row's median is known to within this fraction
    # (half-width of its 95% confidence interval over the median; 0 = off), for at most max_seconds of timing.
    ci_target: float = 0.0
    max_seconds: float = math.inf

    def __post_init__(self) -> None:
        if (self.warmup < 0 or self.rewarm < 0 or self.iterations < 1 or self.rounds < 1 or self.min_seconds < 0
            or self.ci_target < 0 or self.max_seconds <= 0):
            raise ValueError(f"bad timing plan {self}: warmup >= 0, iterations >= 1, rounds >= 1, min_seconds >= 0")

    @property
    def per_round(self) -> int:
        return max(1, math.ceil(self.iterations / self.rounds))


def median_ci(samples: Sequence[float], z: float = 1.96) -> tuple[float, float]:
    """The distribution-free 95% confidence interval of the median: the order statistics of ranks
    n/2 -/+ z*sqrt(n)/2 (binomial normal approximation; min and max for small n)."""
    ordered = sorted(samples)
    n = len(ordered)
    if n == 0:
        return float("nan"), float("nan")
    half = z * math.sqrt(n) / 2
    lo, hi = max(0, math.floor(n / 2 - half)), min(n - 1, math.ceil(n / 2 + half) - 1)
    return ordered[lo], ordered[hi]


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

    @property
    def ci_fraction(self) -> float:
        """Half-width of the median's 95% confidence interval over the median (inf below 2 samples)."""
        if self.count < 2:
            return math.inf
        lo, hi = median_ci(self.samples_ms)
        return (hi - lo) / 2 / self.median if self.median > 0 else math.inf

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
            "median_ci95": [round(v, 4) for v in median_ci(self.samples_ms)] if self.samples_ms else None,
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
                     on_round: Callable[[int], None] | None = None,
                     clock: Callable[[], float] = time.perf_counter) -> list[LatencyStats]:
    """Time several rows against each other: warm each up, then alternate them in rounds.

    Each row's turn in a round starts with ``rewarm`` untimed calls: the previous row's
    thread pool (ONNX Runtime and OpenMP workers spin for a while after each call) has gone
    quiet and this row's pool is awake before the first timed call. After the planned rounds,
    rounds continue while any row has less than ``min_seconds`` of samples or (``ci_target``) a
    median less certain than that, bounded by ``max_iterations`` per row and ``max_seconds`` of timing.
    """
    stats = [LatencyStats() for _ in calls]
    for call in calls:
        for _ in range(plan.warmup):
            call()
    started = time.perf_counter()
    rounds = 0
    while True:
        for call, st in zip(calls, stats):
            for _ in range(plan.rewarm):
                call()
            st.samples_ms.extend(time_calls(call, plan.per_round, clock))
        rounds += 1
        if on_round is not None:
            on_round(rounds)
        if rounds < plan.rounds:
            continue
        short = [st for st in stats if st.count < plan.max_iterations and (
            sum(st.samples_ms) < plan.min_seconds * 1000.0 or st.ci_fraction > plan.ci_target > 0)]
        if not short or time.perf_counter() - started > plan.max_seconds:
            return stats
