"""The confidence bounds the gates decide on, against independent references (scipy) and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from vitmsn.export.validation import stats

Z95 = 1.6448536269514722  # one-sided 95 % normal quantile


@pytest.mark.parametrize("k,n", [(0, 8), (8, 8), (31, 32), (190, 200), (943, 1000)])
def test_wilson_bounds_match_scipy(k: int, n: int) -> None:
    # One-sided 95 % bounds are the ends of the two-sided 90 % interval.
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.90, method="wilson")
    b = stats.wilson(k, n)
    assert b.lower == pytest.approx(ci.low, abs=1e-12) and b.upper == pytest.approx(ci.high, abs=1e-12)
    assert b.estimate == k / n and b.n == n


def test_a_perfect_rate_on_200_images_cannot_prove_99_5_percent() -> None:
    # Hand value: with k = n the Wilson lower bound is n / (n + z²).
    b = stats.wilson(200, 200)
    assert b.lower == pytest.approx(200 / (200 + Z95 ** 2), rel=1e-12)
    assert b.decide(0.995, ">=") == "inconclusive"
    assert b.decide(0.98, ">=") == "passed"
    assert stats.wilson(150, 200).decide(0.95, ">=") == "failed"


def test_paired_difference_is_agresti_min_by_hand() -> None:
    # b = c = 0 of 8: cells + 1/2 -> d = 0, half width = z * sqrt((1/10) / 10) = 0.1 z.
    b = stats.paired_difference(0, 0, 8)
    assert b.estimate == 0 and b.upper == pytest.approx(0.1 * Z95, rel=1e-12)
    assert b.decide(0.02, "<=") == "inconclusive"
    # 6 lost, 1 gained of 200: b' = 6.5, c' = 1.5, n' = 202.
    d = 5 / 202
    half = Z95 * math.sqrt((8 / 202 - d * d) / 202)
    got = stats.paired_difference(6, 1, 200)
    assert got.estimate == pytest.approx(5 / 200) and got.upper == pytest.approx(d + half, rel=1e-12)
    assert got.lower == pytest.approx(d - half, rel=1e-12)
    assert stats.paired_difference(0, 0, 1000).decide(0.02, "<=") == "passed"


@pytest.mark.parametrize("n,q", [(10, 0.5), (299, 0.01), (1000, 0.01), (50_000, 0.001)])
def test_binomial_cdf_matches_scipy(n: int, q: float) -> None:
    np.testing.assert_allclose(stats.binomial_cdf(n, q), sps.binom.cdf(np.arange(n + 1), n, q), rtol=1e-9, atol=1e-12)


def test_first_percentile_has_no_lower_bound_below_299_images() -> None:
    # 1 - 0.99^298 = 0.94996 < 0.95 <= 1 - 0.99^299 = 0.95052 (by hand).
    assert stats.quantile_ranks(298, 0.01)[0] is None
    assert stats.quantile_ranks(299, 0.01)[0] == 1
    values = np.linspace(0.9, 1.0, 299)[::-1]
    b = stats.quantile(values, 0.01)
    assert b.lower == pytest.approx(0.9)  # the minimum
    assert stats.quantile(values[:298], 0.01).lower == -math.inf


def test_quantile_ranks_are_exact_order_statistic_bounds() -> None:
    # Coverage of the chosen ranks is >= 95 % and the next rank inward falls short (scipy's binomial).
    for n, q in [(200, 0.05), (1000, 0.01), (64, 0.1)]:
        r, s = stats.quantile_ranks(n, q)
        assert r is not None and s is not None
        assert sps.binom.sf(r - 1, n, q) >= 0.95 > sps.binom.sf(r, n, q)
        assert sps.binom.cdf(s - 1, n, q) >= 0.95 > sps.binom.cdf(s - 2, n, q)


def test_images_needed_is_the_first_deciding_size() -> None:
    # All agree; threshold 0.99: Wilson lower bound n/(n+z²) >= 0.99  <=>  n >= 0.99 z² / 0.01 = 267.86.
    needed = stats.images_needed(lambda m: stats.wilson(m, m).decide(0.99, ">=") != "inconclusive", 32)
    assert needed == 268
    assert stats.images_needed(lambda m: False, 8, limit=1000) is None
    assert stats.images_needed(lambda m: True, 500) == 500
