"""Tests for benchmarks/statistics.py against plain-loop reference implementations on fixed arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks.statistics import bootstrap_mean_ci, paired_difference

FIXED = [
    [0.7143, 0.8571, 0.5714],
    [0.75, 0.75, 0.75, 0.8125],
    [0.61, 0.72, 0.55, 0.9, 0.66, 0.71, 0.68, 0.59, 0.63, 0.70],
    [-0.35, 0.12],
]


def _percentile(sorted_values: list[float], q: float) -> float:
    """numpy's default ('linear') quantile of an ascending list, written out."""
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def _reference_ci(values: list[float], n_resamples: int, level: float, seed: int) -> tuple[float, float]:
    """One resample at a time, the mean by a Python sum, the percentile by hand."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    if len(vals) == 1:
        return vals[0], vals[0]
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(n_resamples):
        idx = rng.integers(0, len(vals), size=len(vals))  # same stream as one (n_resamples, n) draw
        means.append(sum(vals[i] for i in idx) / len(vals))
    means.sort()
    alpha = (1 - level) / 2
    return _percentile(means, alpha), _percentile(means, 1 - alpha)


@pytest.mark.parametrize("values", FIXED)
@pytest.mark.parametrize(("n_resamples", "level", "seed"), [(10_000, 0.95, 0), (2_000, 0.9, 7), (999, 0.5, 123)])
def test_bootstrap_mean_ci_matches_the_loop(values: list[float], n_resamples: int, level: float, seed: int) -> None:
    got = bootstrap_mean_ci(values, n_resamples=n_resamples, level=level, seed=seed)
    expected = _reference_ci(values, n_resamples, level, seed)
    assert got == pytest.approx(expected, abs=1e-12)
    low, high = got
    assert min(values) <= low <= np.mean(values) <= high <= max(values)


def test_bootstrap_mean_ci_is_seeded_and_deterministic() -> None:
    values = FIXED[2]
    assert bootstrap_mean_ci(values) == bootstrap_mean_ci(values)  # default seed 0, exactly equal
    # another seed, other resamples (with 10,000 resamples the quantiles of so discrete a set often coincide)
    assert bootstrap_mean_ci(values, n_resamples=50, seed=1) != bootstrap_mean_ci(values, n_resamples=50)
    assert bootstrap_mean_ci(values) == bootstrap_mean_ci(np.asarray(values), n_resamples=10_000, level=0.95, seed=0)


def test_bootstrap_mean_ci_edge_cases() -> None:
    assert bootstrap_mean_ci([0.8]) == (0.8, 0.8)
    assert bootstrap_mean_ci([math.nan, 0.8, None]) == (0.8, 0.8)  # NaN and None dropped
    low, high = bootstrap_mean_ci([])
    assert math.isnan(low) and math.isnan(high)
    low, high = bootstrap_mean_ci([math.nan, math.nan])
    assert math.isnan(low) and math.isnan(high)
    assert bootstrap_mean_ci([0.5, 0.5, 0.5]) == pytest.approx((0.5, 0.5))
    # NaN dropped == the same call without it
    assert bootstrap_mean_ci([0.6, math.nan, 0.7, 0.9]) == bootstrap_mean_ci([0.6, 0.7, 0.9])
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_ci([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_mean_ci([1.0, 2.0], n_resamples=0)
    with pytest.raises(ValueError, match="infinite"):
        bootstrap_mean_ci([1.0, math.inf])


def test_bootstrap_interval_narrows_with_more_seeds() -> None:
    rng = np.random.default_rng(3)
    few, many = rng.normal(size=5), rng.normal(size=200)
    width = lambda v: np.subtract(*bootstrap_mean_ci(v)[::-1])  # noqa: E731
    assert width(many) < width(few)
    # roughly the normal interval for large n: 1.96 * population std / sqrt(n)
    assert width(many) == pytest.approx(2 * 1.96 * many.std() / np.sqrt(many.size), rel=0.1)


def _reference_paired(row: dict, base: dict, n_resamples: int, level: float, seed: int) -> dict:
    seeds = sorted(s for s in row if s in base and not math.isnan(row[s]) and not math.isnan(base[s]))
    diffs = [row[s] - base[s] for s in seeds]
    wins = 0.0
    for s in seeds:
        if row[s] > base[s]:
            wins += 1.0
        elif row[s] == base[s]:
            wins += 0.5
    low, high = _reference_ci(diffs, n_resamples, level, seed)
    return {
        "n_pairs": len(seeds),
        "seeds": seeds,
        "mean_diff": sum(diffs) / len(diffs),
        "ci_low": low,
        "ci_high": high,
        "p_better": wins / len(seeds),
        "resolved": len(seeds) >= 2 and (low > 0 or high < 0),
    }


PAIRS = [
    # row better on every seed: resolved
    ({1: 0.80, 2: 0.85, 3: 0.82}, {1: 0.70, 2: 0.72, 3: 0.69}),
    # mixed: one tie, one loss; seed 4 only in the row and seed 5 only in the baseline are not paired
    ({1: 0.7143, 2: 0.5714, 3: 0.8571, 4: 0.9}, {1: 0.7143, 2: 0.6429, 3: 0.7857, 5: 0.1}),
    # worse on every seed: resolved (interval below 0)
    ({10: 0.5, 11: 0.52, 12: 0.49, 13: 0.51}, {10: 0.6, 11: 0.61, 12: 0.58, 13: 0.62}),
    # a NaN seed is dropped from the pairs
    ({1: 0.6, 2: math.nan, 3: 0.7}, {1: 0.5, 2: 0.5, 3: 0.72}),
]


@pytest.mark.parametrize(("row", "base"), PAIRS)
@pytest.mark.parametrize(("n_resamples", "level", "seed"), [(10_000, 0.95, 0), (500, 0.8, 5)])
def test_paired_difference_matches_the_loop(row: dict, base: dict, n_resamples: int, level: float, seed: int) -> None:
    got = paired_difference(row, base, n_resamples=n_resamples, level=level, seed=seed)
    expected = _reference_paired(row, base, n_resamples, level, seed)
    assert set(got) == set(expected)
    assert got["seeds"] == expected["seeds"] and got["n_pairs"] == expected["n_pairs"]
    assert got["resolved"] is expected["resolved"]
    for key in ("mean_diff", "ci_low", "ci_high", "p_better"):
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_paired_difference_values() -> None:
    better = paired_difference(*PAIRS[0])
    assert better["p_better"] == 1.0 and better["resolved"] and better["ci_low"] > 0
    mixed = paired_difference(*PAIRS[1])
    assert mixed["seeds"] == [1, 2, 3] and mixed["p_better"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert not mixed["resolved"] and mixed["ci_low"] < 0 < mixed["ci_high"]
    worse = paired_difference(*PAIRS[2])
    assert worse["p_better"] == 0.0 and worse["resolved"] and worse["ci_high"] < 0
    assert paired_difference(*PAIRS[3])["seeds"] == [1, 3]
    # resampling pairs, not the two rows independently: a constant offset has a zero-width interval
    shifted = paired_difference({s: v + 0.05 for s, v in PAIRS[0][1].items()}, PAIRS[0][1])
    assert shifted["ci_low"] == pytest.approx(0.05) and shifted["ci_high"] == pytest.approx(0.05)
    assert shifted["resolved"]


def test_paired_difference_without_enough_pairs() -> None:
    none = paired_difference({1: 0.5}, {2: 0.5})
    assert none["n_pairs"] == 0 and none["resolved"] is False
    assert all(math.isnan(none[k]) for k in ("mean_diff", "ci_low", "ci_high", "p_better"))
    one = paired_difference({1: 0.9}, {1: 0.5})
    assert one["n_pairs"] == 1 and one["ci_low"] == one["ci_high"] == pytest.approx(0.4)
    assert one["resolved"] is False  # one pair says nothing about the spread over seeds
    same = paired_difference({1: 0.5, 2: 0.6}, {1: 0.5, 2: 0.6})
    assert same["mean_diff"] == 0 and same["p_better"] == 0.5 and same["resolved"] is False
