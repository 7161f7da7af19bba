"""Confidence bounds behind the gates: what n held-out images can and cannot say (numpy only).

Every gate asks whether a figure is on the right side of a threshold. It is decided on one-sided
bounds at ``CONFIDENCE`` (95 %), never on the point estimate:

* ``passed``: the pessimistic bound clears the threshold;
* ``failed``: the optimistic bound misses it;
* ``inconclusive``: the threshold lies between the two bounds, so the sample cannot decide;
  :func:`images_needed` says how many images, at the rates observed, would.

The bounds, each checkable by hand:

* a rate (top-1 agreement, accuracy), ``k`` of ``n``: Wilson score bounds,
  ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``z = 1.645``;
* a paired difference (accuracy drop: the reference and the backend see the same images):
  ``b`` images only the reference gets right, ``c`` only the backend; Agresti-Min: add 1/2 to each
  cell of the 2x2 table (``n' = n + 2``), then ``d = (b' - c')/n'`` ± ``z·sqrt(((b' + c')/n' - d²)/n')``;
* a tail quantile (the ``q``-quantile of per-image cosines): order statistics, exact and free of
  any assumption on the distribution: the ``r``-th smallest of ``n`` values is below the true
  ``q``-quantile with probability ``P(Binomial(n, q) >= r)``. So the gate "the q-quantile is at
  least t" is the same as "at most a share ``q`` of images fall below t", a binomial question.
  With ``q = 0.01`` no lower bound exists below 299 images (``1 - 0.99^298 < 0.95``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Literal, Sequence

import numpy as np

CONFIDENCE = 0.95
Verdict = Literal["passed", "failed", "inconclusive"]


@dataclass(frozen=True)
class Bound:
    """A figure with its one-sided lower and upper bounds (each at the stated confidence), from n images."""

    estimate: float
    lower: float
    upper: float
    n: int
    confidence: float = CONFIDENCE

    def decide(self, threshold: float, op: str) -> Verdict:
        """``op`` is ``>=`` (the figure must be at least ``threshold``) or ``<=`` (at most)."""
        if op == ">=":
            return "passed" if self.lower >= threshold else "failed" if self.upper < threshold else "inconclusive"
        if op == "<=":
            return "passed" if self.upper <= threshold else "failed" if self.lower > threshold else "inconclusive"
        raise ValueError(f"op must be '>=' or '<=', got {op!r}")


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(confidence)


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> Bound:
    """Bounds on a rate observed as ``k`` successes in ``n`` trials."""
    if n <= 0:
        return Bound(math.nan, 0.0, 1.0, 0, confidence)
    p, z = k / n, _z(confidence)
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return Bound(p, max(0.0, (centre - half) / scale), min(1.0, (centre + half) / scale), n, confidence)


def paired_difference(b: int, c: int, n: int, confidence: float = CONFIDENCE) -> Bound:
    """Bounds on ``(b - c) / n``: ``b`` images only the first model gets right, ``c`` only the second."""
    if n <= 0:
        return Bound(math.nan, -1.0, 1.0, 0, confidence)
    b2, c2, n2, z = b + 0.5, c + 0.5, n + 2, _z(confidence)
    d = (b2 - c2) / n2
    half = z * math.sqrt(max((b2 + c2) / n2 - d * d, 0.0) / n2)
    return Bound((b - c) / n, max(-1.0, d - half), min(1.0, d + half), n, confidence)


def binomial_cdf(n: int, q: float) -> np.ndarray:
    """``P(Binomial(n, q) <= k)`` for ``k = 0 .. n`` (computed in log space: no underflow at large n)."""
    k = np.arange(n, dtype=np.float64)
    steps = np.log((n - k) / (k + 1)) + math.log(q / (1 - q))
    logpmf = n * math.log1p(-q) + np.concatenate([[0.0], np.cumsum(steps)])
    return np.minimum(np.cumsum(np.exp(logpmf)), 1.0)


def quantile_ranks(n: int, q: float, confidence: float = CONFIDENCE) -> tuple[int | None, int | None]:
    """1-based ranks ``(r, s)``: the r-th smallest value is a lower bound of the q-quantile and the s-th an
    upper bound, each at ``confidence``; None where n is too small for that side."""
    if n <= 0:
        return None, None
    cdf = binomial_cdf(n, q)[:n]  # cdf[r-1] = P(B <= r-1); P(X_(r) <= quantile) = P(B >= r) = 1 - cdf[r-1]
    lower = np.nonzero(1 - cdf >= confidence)[0]
    upper = np.nonzero(cdf >= confidence)[0]  # P(X_(s) >= quantile) = P(B <= s-1)
    return (int(lower[-1]) + 1 if len(lower) else None), (int(upper[0]) + 1 if len(upper) else None)


def quantile(values: Sequence[float] | np.ndarray, q: float, confidence: float = CONFIDENCE) -> Bound:
    """Bounds on the ``q``-quantile of the distribution ``values`` were drawn from (order statistics)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        return Bound(math.nan, -math.inf, math.inf, 0, confidence)
    r, s = quantile_ranks(n, q, confidence)
    estimate = float(x[min(n - 1, max(0, math.ceil(q * n) - 1))])  # the empirical q-quantile (inverted CDF)
    return Bound(estimate, float(x[r - 1]) if r else -math.inf, float(x[s - 1]) if s else math.inf, n, confidence)


def images_needed(decides: Callable[[int], bool], n: int, limit: int = 10_000_000) -> int | None:
    """The smallest sample size from ``n`` on at which ``decides(size)`` holds (rates kept as observed),
    found by doubling then bisection; None when even ``limit`` images would not decide."""
    hi = max(n, 1)
    while not decides(hi):
        if hi >= limit:
            return None
        hi = min(limit, hi * 2)
    lo = max(n, 1) - 1 if hi == max(n, 1) else hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decides(mid) else (mid, hi)
    return hi


def quantile_at_least(below: int, n: int, q: float, confidence: float = CONFIDENCE) -> Verdict:
    """The gate "the q-quantile is at least t" from the count of images below t alone: passed when fewer
    than r of n are below (the r-th smallest, the lower bound, is then >= t), failed when at least s are
    (the upper bound is below t); the same decision :meth:`Bound.decide` makes on :func:`quantile`."""
    r, s = quantile_ranks(n, q, confidence)
    if r is not None and below < r:
        return "passed"
    if s is not None and below >= s:
        return "failed"
    return "inconclusive"
