"""Intervals over seeds for the leaderboard (docs/protocol.md#statistics): small, vectorised, seeded.

- :func:`bootstrap_mean_ci`: the percentile-bootstrap interval for the mean of per-seed values (resampling seeds
  with replacement, ``n_resamples`` times, with a seeded :class:`numpy.random.Generator`).
- :func:`paired_difference`: a row against the baseline over the seeds both have: the mean paired difference, its
  percentile-bootstrap interval (resampling *paired* seeds), and ``p_better``, the share of paired seeds where the
  row is higher (ties count 1/2), i.e. rliable's probability of improvement on paired runs.

Both are pure functions of their inputs: the same values and ``seed`` give the same numbers (the leaderboard CSV is
byte-stable because of it). The percentile is numpy's default (linear interpolation between order statistics).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

__all__ = ["DEFAULT_LEVEL", "DEFAULT_RESAMPLES", "DEFAULT_SEED", "bootstrap_mean_ci", "paired_difference"]

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0


def _check(n_resamples: int, level: float) -> None:
    if int(n_resamples) != n_resamples or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")


def _finite_values(values: Iterable[Any]) -> np.ndarray:
    arr = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64).reshape(-1)
    if np.isinf(arr).any():
        raise ValueError("values must be finite or NaN, got an infinite value")
    return arr[~np.isnan(arr)]


def bootstrap_mean_ci(
    values: Iterable[Any],
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap ``level`` interval ``(low, high)`` for the mean of ``values`` (one value per seed).

    NaN (and ``None``) values are dropped first. No value left: ``(nan, nan)``; one value ``v``: ``(v, v)``.
    Otherwise ``n_resamples`` samples of the same size are drawn with replacement (one ``rng.integers`` call,
    ``rng = numpy.random.default_rng(seed)``), and the bounds are the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles (numpy's linear interpolation) of the resampled means.
    """
    _check(n_resamples, level)
    arr = _finite_values(values)
    n = arr.size
    if n == 0:
        return math.nan, math.nan
    if n == 1:
        return float(arr[0]), float(arr[0])
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(int(n_resamples), n))
    means = arr[index].mean(axis=1)
    alpha = (1.0 - float(level)) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def paired_difference(
    row: Mapping[Any, Any],
    base: Mapping[Any, Any],
    n_resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """``row`` against ``base`` (each ``{seed: value}``) over the seeds both have with a non-NaN value.

    Returns a dict:

    - ``n_pairs``: the number of paired seeds; ``seeds``: them, ascending;
    - ``mean_diff``: the mean of ``row[s] - base[s]`` over the paired seeds;
    - ``ci_low`` / ``ci_high``: :func:`bootstrap_mean_ci` of those differences (paired seeds resampled together);
    - ``p_better``: the share of paired seeds with ``row[s] > base[s]``, ties counting 1/2 (rliable's probability of
      improvement on paired runs);
    - ``resolved``: the interval excludes 0 (``ci_low > 0`` or ``ci_high < 0``). ``False`` with fewer than two
      pairs: one pair gives a zero-width interval that says nothing about the spread over seeds.

    Without a pair every number is NaN and ``resolved`` is ``False``.
    """
    _check(n_resamples, level)

    def value(x: Any) -> float:
        return math.nan if x is None else float(x)

    seeds = sorted(s for s in set(row) & set(base) if not math.isnan(value(row[s])) and not math.isnan(value(base[s])))
    a = np.asarray([value(row[s]) for s in seeds], dtype=np.float64)
    b = np.asarray([value(base[s]) for s in seeds], dtype=np.float64)
    if not seeds:
        return {
            "n_pairs": 0,
            "seeds": [],
            "mean_diff": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p_better": math.nan,
            "resolved": False,
        }
    diff = a - b
    low, high = bootstrap_mean_ci(diff, n_resamples=n_resamples, level=level, seed=seed)
    # wins and ties compare the values themselves (exact for the 4-decimal metrics), not their float difference
    wins = np.where(a > b, 1.0, np.where(a == b, 0.5, 0.0))
    return {
        "n_pairs": len(seeds),
        "seeds": seeds,
        "mean_diff": float(diff.mean()),
        "ci_low": low,
        "ci_high": high,
        "p_better": float(wins.mean()),
        "resolved": bool(len(seeds) >= 2 and (low > 0.0 or high < 0.0)),
    }
