"""CI regression check of OOD accuracy: a calibrated one-sided test against a reference distribution over seeds.

**What is compared.** A *cell* is (row label, dataset, OOD set, metric): every OOD test set of the CI sweep
(``benchmarks/sweeps/ci.yaml``) and each row's per-seed OOD average ``ood_avg``, in ``Non0_acc_2`` x100. The
reference (``benchmarks/reference/<sweep>.csv``) keeps, per cell, the value of **every reference seed** (the sweep
run with ``check.reference_seeds``); the check runs the sweep with its own, disjoint ``seeds``.

**The test.** CPU floating point differs between machines and training amplifies it, so on another machine the same
seed is in effect another draw from the cell's distribution over seeds. The null hypothesis of a cell is therefore
"the current values are draws from the reference's distribution", and the test is one-sided (only a drop is a
regression): Student's two-sample t on the difference of means with the pooled standard deviation (exact under the
null, where both samples share one variance), the pooled std floored at ``check.min_std`` points (a cell whose seeds
agree exactly would otherwise alarm on any change), df = n_ref + n_cur - 2. Holm's step-down correction over all
cells at ``check.alpha`` bounds the probability of **one or more** false alarms in the whole check under normality;
the per-seed distributions are not normal (some methods collapse on some seeds), so the level used is the one whose
*measured* false-alarm rate (below) is under 5 %: 0.03 for the CI sweep.

**Calibration.** :func:`resampled_false_alarms` and :func:`resampled_power` measure the false-alarm rate and the
drop each cell detects with 95 % probability by re-splitting a pool of seeds run on one machine into reference and
current sets; :func:`minimum_detectable_drop` gives the same drop under normality. ``msabench check --calibrate``
also runs the check under perturbations of the floating-point path (another thread count, the kernels of an
AVX2-only CPU, another seed set) and under planted regressions (:data:`PLANTS`), and writes
``<sweep>.calibration.json``, which names the SHA-256 of the reference it calibrates: the check refuses a reference
without a matching calibration, so a refreshed reference cannot be committed without its calibration.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, stats

from datamodules.atomic import atomic_write_text

METRIC = "Non0_acc_2"
REFERENCE_COLUMNS = ("label", "dataset", "set", "metric", "seed", "value")
CELL = ["label", "dataset", "set", "metric"]
DETECTION_POWER = 0.95
TARGET_FALSE_ALARM_RATE = 0.05  # what the check states: P(any false alarm in the whole check) below this, measured


class ReferenceError(ValueError):
    """A reference, its metadata or its calibration is missing, malformed or does not fit the current results."""


# ---------------------------------------------------------------------------------------------------------------------
# Reference files
# ---------------------------------------------------------------------------------------------------------------------


def cell_name(label: str, dataset: str, test_set: str, metric: str) -> str:
    return f"method {label} on {dataset}, set {test_set}, metric {metric}"


def ood_cells(per_seed: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """The OOD cells of a per-seed table (:func:`benchmarks.leaderboard.per_seed_table`): every set except the IID
    ``test``, in the reference's long format (one row per cell and seed)."""
    table = per_seed[(per_seed["metric"] == metric) & (per_seed["set"] != "test")]
    table = table[~table["value"].isna()]
    return table[list(REFERENCE_COLUMNS)].sort_values(CELL + ["seed"]).reset_index(drop=True)


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_reference(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the long reference CSV atomically (sorted by cell and seed, values with 4 decimals)."""
    path = Path(path)
    table = table[list(REFERENCE_COLUMNS)].sort_values(["dataset", "label", "set", "metric", "seed"])
    atomic_write_text(path, table.to_csv(index=False, float_format="%.4f", lineterminator="\n"))
    return path


def write_json(data: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_reference(path: str | Path, min_seeds: int) -> pd.DataFrame:
    """The reference CSV, validated: its columns, numeric finite values, no seed twice in a cell, and at least
    ``min_seeds`` seeds in every cell (fewer cannot estimate the spread). Errors name the file and the cell."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(
            f"reference {path} does not exist; create it with `msabench check --update-reference` "
            "and calibrate it with `msabench check --calibrate`"
        )
    try:
        table = pd.read_csv(path, dtype={"label": str, "dataset": str, "set": str, "metric": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ReferenceError(f"reference {path} cannot be read as CSV: {exc}") from exc
    if tuple(table.columns) != REFERENCE_COLUMNS:
        raise ReferenceError(
            f"reference {path}: columns {list(table.columns)}, expected {list(REFERENCE_COLUMNS)} "
            "(one row per cell and seed; an old mean/std reference must be rebuilt with --update-reference)"
        )
    if table.empty:
        raise ReferenceError(f"reference {path} has no rows")
    for col in ("seed", "value"):
        numeric = pd.to_numeric(table[col], errors="coerce")
        bad = table[numeric.isna() | ~np.isfinite(numeric.astype(float))]
        if not bad.empty:
            row = bad.iloc[0]
            raise ReferenceError(
                f"reference {path}, line {int(bad.index[0]) + 2} ({cell_name(*row[CELL])}): "
                f"{col} {row[col]!r} is not a finite number"
            )
        table[col] = numeric
    table["seed"] = table["seed"].astype("int64")
    duplicated = table[table.duplicated(CELL + ["seed"], keep=False)]
    if not duplicated.empty:
        row = duplicated.iloc[0]
        raise ReferenceError(f"reference {path}: seed {row['seed']} appears twice in {cell_name(*row[CELL])}")
    counts = table.groupby(CELL).size()
    few = counts[counts < min_seeds]
    if not few.empty:
        key, n = few.index[0], int(few.iloc[0])
        raise ReferenceError(
            f"reference {path}: {cell_name(*key)} has {n} seeds, the test needs at least {min_seeds} "
            f"to estimate the spread over seeds ({len(few)} cell(s) too small)"
        )
    return table


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ReferenceError(f"{what} {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReferenceError(f"{what} {path} cannot be read as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ReferenceError(f"{what} {path}: expected a JSON object, got {type(data).__name__}")
    return data


def reference_paths(reference_csv: str | Path) -> tuple[Path, Path, Path]:
    """(reference CSV, its metadata JSON, its calibration JSON)."""
    csv = Path(reference_csv)
    stem = csv.with_suffix("")
    return csv, stem.with_name(stem.name + ".meta.json"), stem.with_name(stem.name + ".calibration.json")


# ---------------------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestSettings:
    """``alpha``: the family-wise false-alarm rate of the whole check; ``min_std``: floor on the pooled std
    (points); ``min_reference_seeds``: the fewest reference seeds a cell may have."""

    alpha: float = 0.05
    min_std: float = 0.5
    min_reference_seeds: int = 8


def _moments(values: pd.DataFrame) -> pd.DataFrame:
    grouped = values.groupby(CELL)["value"]
    return pd.DataFrame({"n": grouped.size(), "mean": grouped.mean(), "var": grouped.var(ddof=1).fillna(0.0)})


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control over all entries)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _t_test(
    n_ref: np.ndarray, mean_ref: np.ndarray, var_ref: np.ndarray,
    n_cur: np.ndarray, mean_cur: np.ndarray, var_cur: np.ndarray, min_std: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(difference, pooled std, t, one-sided p for a drop) of Student's pooled two-sample t, vectorised."""
    df = n_ref + n_cur - 2
    pooled = np.sqrt(((n_ref - 1) * var_ref + (n_cur - 1) * var_cur) / np.maximum(df, 1))
    pooled = np.maximum(pooled, min_std)
    diff = mean_cur - mean_ref
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero std (floor 0) gives t = -inf / +inf: p = 0 / 1
        t = diff / (pooled * np.sqrt(1.0 / n_ref + 1.0 / n_cur))
    return diff, pooled, t, stats.t.cdf(t, df)


def compare(
    reference: pd.DataFrame, current: pd.DataFrame, settings: TestSettings = TestSettings(), source: str = ""
) -> pd.DataFrame:
    """One row per reference cell: the test of ``current`` (long per-seed values) against ``reference``.

    Columns: the cell, ``n_ref``, ``n_cur``, ``ref_mean``, ``cur_mean``, ``diff`` (current - reference, points),
    ``pooled_std``, ``effect`` (diff / pooled std), ``t``, ``df``, ``p`` (one-sided), ``p_holm`` and ``alarm``
    (``p_holm < alpha``). A reference cell without current values raises, naming the cell; current cells the
    reference lacks are ignored (a new method has no reference yet). ``source`` names the reference in errors."""
    ref, cur = _moments(reference), _moments(current)
    missing = ref.index.difference(cur.index)
    if len(missing):
        names = "; ".join(cell_name(*key) for key in missing[:5])
        raise ReferenceError(
            f"{len(missing)} cell(s) of the reference {source or ''} have no current runs: {names}"
            + (" ..." if len(missing) > 5 else "")
        )
    cur = cur.loc[ref.index]
    diff, pooled, t, p = _t_test(
        ref["n"].to_numpy(float), ref["mean"].to_numpy(), ref["var"].to_numpy(),
        cur["n"].to_numpy(float), cur["mean"].to_numpy(), cur["var"].to_numpy(), settings.min_std,
    )
    out = ref.index.to_frame(index=False)
    out["n_ref"], out["n_cur"] = ref["n"].to_numpy(), cur["n"].to_numpy()
    out["ref_mean"], out["cur_mean"], out["diff"] = ref["mean"].to_numpy(), cur["mean"].to_numpy(), diff
    with np.errstate(divide="ignore", invalid="ignore"):
        out["pooled_std"], out["effect"], out["t"] = pooled, diff / pooled, t
    out["df"] = (ref["n"] + cur["n"] - 2).to_numpy()
    out["p"], out["p_holm"] = p, holm(p)
    out["alarm"] = out["p_holm"] < settings.alpha
    return out


def describe_alarm(row: Mapping[str, Any]) -> str:
    return (
        f"{cell_name(row['label'], row['dataset'], row['set'], row['metric'])}: {row['cur_mean']:.2f} vs reference "
        f"{row['ref_mean']:.2f} ({row['diff']:+.2f} points, effect {row['effect']:+.2f} pooled std, "
        f"t = {row['t']:.2f}, df = {int(row['df'])}, p = {row['p']:.2g}, Holm-adjusted p = {row['p_holm']:.2g})"
    )


def minimum_detectable_drop(
    std: float, n_ref: int, n_cur: int, n_cells: int, settings: TestSettings = TestSettings(),
    power: float = DETECTION_POWER,
) -> float:
    """The drop (points) a cell with true std ``std`` is flagged for with probability ``power`` when it is the
    only regressed cell of ``n_cells`` (Holm's first step, level alpha / n_cells), under normality (noncentral t)."""
    df = n_ref + n_cur - 2
    scale = max(std, settings.min_std) * math.sqrt(1.0 / n_ref + 1.0 / n_cur)
    critical = stats.t.ppf(settings.alpha / n_cells, df)

    def gap(drop: float) -> float:
        return float(stats.nct.cdf(critical, df, -drop / scale)) - power

    return float(optimize.brentq(gap, 0.0, 1000.0 * scale))


# ---------------------------------------------------------------------------------------------------------------------
# Calibration by re-splitting a pool of seeds
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Resampling:
    """Splits of a pool of seeds into a pseudo-reference of ``n_ref`` seeds and a pseudo-current set of ``n_cur``."""

    pool_seeds: list[int]
    n_ref: int
    n_cur: int
    splits: list[tuple[list[int], list[int]]] = field(default_factory=list)


def resampling_splits(seeds: Sequence[int], n_ref: int, n_cur: int, n_splits: int, seed: int = 0) -> Resampling:
    """``n_splits`` random disjoint (reference, current) seed sets drawn from ``seeds`` (seeded)."""
    seeds = sorted(int(s) for s in seeds)
    if n_ref + n_cur > len(seeds):
        raise ValueError(f"a pool of {len(seeds)} seeds cannot be split into {n_ref} reference + {n_cur} current")
    rng = np.random.default_rng(seed)
    out = Resampling(seeds, n_ref, n_cur)
    for _ in range(n_splits):
        perm = rng.permutation(seeds)
        out.splits.append((sorted(perm[:n_ref].tolist()), sorted(perm[n_ref : n_ref + n_cur].tolist())))
    return out


def _cell_matrix(pool: pd.DataFrame) -> tuple[pd.MultiIndex, list[int], np.ndarray]:
    """(cells, seeds, values[cell, seed]) over the seeds every cell has."""
    wide = pool.pivot_table(index=CELL, columns="seed", values="value", aggfunc="first")
    wide = wide.dropna(axis=1, how="any")
    return wide.index, [int(s) for s in wide.columns], wide.to_numpy(dtype=np.float64)


def _split_stats(values: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sub = values[:, columns]
    n = np.full(values.shape[0], float(sub.shape[1]))
    var = sub.var(axis=1, ddof=1) if sub.shape[1] > 1 else np.zeros(values.shape[0])
    return n, sub.mean(axis=1), var


def resampled_false_alarms(pool: pd.DataFrame, plan: Resampling, settings: TestSettings = TestSettings()) -> dict:
    """The check's false-alarm rate measured on re-splits of a pool run on one machine (no cell has regressed):
    the share of splits with at least one alarm (with a 95 % Clopper-Pearson interval) and per-cell alarm counts."""
    cells, seeds, values = _cell_matrix(pool)
    col = {s: i for i, s in enumerate(seeds)}
    family, per_cell = 0, np.zeros(len(cells), dtype=int)
    for ref_seeds, cur_seeds in plan.splits:
        nr, mr, vr = _split_stats(values, np.array([col[s] for s in ref_seeds]))
        nc, mc, vc = _split_stats(values, np.array([col[s] for s in cur_seeds]))
        _, _, _, p = _t_test(nr, mr, vr, nc, mc, vc, settings.min_std)
        alarms = holm(p) < settings.alpha
        family += bool(alarms.any())
        per_cell += alarms
    n = len(plan.splits)
    low, high = stats.binomtest(family, n).proportion_ci(0.95, method="exact") if n else (math.nan, math.nan)
    worst = int(np.argmax(per_cell)) if len(cells) else 0
    return {
        "splits": n,
        "cells": len(cells),
        "family_alarms": int(family),
        "family_rate": family / n if n else math.nan,
        "family_rate_ci95": [float(low), float(high)],
        "cell_alarms": int(per_cell.sum()),
        "worst_cell": cell_name(*cells[worst]) if len(cells) else "",
        "worst_cell_alarms": int(per_cell[worst]) if len(cells) else 0,
    }


def resampled_power(
    pool: pd.DataFrame, plan: Resampling, settings: TestSettings = TestSettings(),
    drops: Sequence[float] = tuple(np.arange(0.25, 30.01, 0.25)), power: float = DETECTION_POWER,
) -> pd.DataFrame:
    """Per cell, the smallest planted drop (points, on the grid ``drops``) the check flags in at least ``power`` of
    the re-splits, when that cell alone is lowered by the drop in the current seeds (NaN: none on the grid)."""
    cells, seeds, values = _cell_matrix(pool)
    col = {s: i for i, s in enumerate(seeds)}
    m = len(cells)
    drops = np.asarray(drops, dtype=np.float64)
    detected = np.zeros((m, drops.size))
    for ref_seeds, cur_seeds in plan.splits:
        nr, mr, vr = _split_stats(values, np.array([col[s] for s in ref_seeds]))
        nc, mc, vc = _split_stats(values, np.array([col[s] for s in cur_seeds]))
        _, _, _, p = _t_test(nr, mr, vr, nc, mc, vc, settings.min_std)
        for j in range(m):
            # lower cell j's current mean by every drop at once (its variance is unchanged by a shift) ...
            _, _, _, pj = _t_test(nr[j], mr[j], vr[j], nc[j], mc[j] - drops, vc[j], settings.min_std)
            # ... and take its Holm-adjusted p among the unchanged others: with q the others sorted and r the rank
            # of pj among them, adjusted = max(max_{i<r} (m - i) q_i, (m - r) pj)
            q = np.sort(np.delete(p, j))
            prefix = np.concatenate([[0.0], np.maximum.accumulate((m - np.arange(m - 1)) * q)])
            r = np.searchsorted(q, pj, side="left")
            detected[j] += np.minimum(1.0, np.maximum(prefix[r], (m - r) * pj)) < settings.alpha
    rate = detected / max(len(plan.splits), 1)
    first = [drops[np.argmax(r >= power)] if (r >= power).any() else math.nan for r in rate]
    out = cells.to_frame(index=False)
    out["detectable_drop"] = first
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Perturbations and planted regressions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """A way to run the CI sweep differently: sweep-level ``overrides`` (e.g. ``seeds=[...]``), extra job
    overrides for every dataset (``job_overrides``) or one (``dataset_overrides``), environment variables set for
    the workers, and the datasets it applies to (empty: all)."""

    description: str
    overrides: tuple[str, ...] = ()
    job_overrides: tuple[str, ...] = ()
    dataset_overrides: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    datasets: tuple[str, ...] = ()


# Changes that leave what is computed the same but change the floating-point path: a calibrated check raises no alarm.
PERTURBATIONS: dict[str, Scenario] = {
    "none": Scenario("the check as CI runs it (its own seeds, 1 thread, this machine's kernels)"),
    "threads2": Scenario(
        "trainer.threads=2: another reduction order in every kernel", overrides=("launcher.threads=2",)
    ),
    "avx2_kernels": Scenario(
        "the kernels an AVX2-only CPU runs (ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2, "
        "ONEDNN_MAX_CPU_ISA=AVX2)",
        env={"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    ),
    "seeds_3001": Scenario("another seed set (3001-3004)", overrides=("seeds=[3001,3002,3003,3004]",)),
}
# Real regressions planted for the power test: a calibrated check must flag them.
PLANTS: dict[str, Scenario] = {
    "label_noise": Scenario(
        "30 % of training labels replaced by labels drawn from the training labels (data.train_label_noise=0.3)",
        job_overrides=("data.train_label_noise=0.3",),
    ),
    "shortcut_x2": Scenario(
        "the synthetic shortcut twice as strong in training: conflicting clips 10 % -> 5 % (synthetic.bias=0.95)",
        dataset_overrides={"synthetic": ("synthetic.bias=0.95",)},
        datasets=("synthetic",),
    ),
}


def scenario_sweep_overrides(scenario: Scenario, datasets: Sequence[str]) -> list[str]:
    """The sweep-level dotlist that applies ``scenario`` to a sweep over ``datasets``."""
    out = list(scenario.overrides)
    kept = [d for d in datasets if not scenario.datasets or d in scenario.datasets]
    if scenario.datasets:
        out.append(f"datasets=[{','.join(kept)}]")
    return out


def apply_scenario(sweep: Any, scenario: Scenario) -> None:
    """Add the scenario's job overrides to a loaded :class:`benchmarks.sweep.SweepConfig` (in place)."""
    sweep.overrides = [*sweep.overrides, *scenario.job_overrides]
    for dataset, extra in scenario.dataset_overrides.items():
        sweep.dataset_overrides[dataset] = [*sweep.dataset_overrides.get(dataset, []), *extra]


def bitwise_agreement(a: pd.DataFrame, b: pd.DataFrame) -> dict[str, float]:
    """How far two runs of the same seeds differ: the share of (cell, seed) values that are identical and the mean
    absolute difference in points (shows a perturbation really changed the floating-point path)."""
    merged = a.merge(b, on=CELL + ["seed"], suffixes=("_a", "_b"))
    if merged.empty:
        return {"pairs": 0, "identical": math.nan, "mean_abs_diff": math.nan}
    delta = (merged["value_a"] - merged["value_b"]).abs()
    return {"pairs": len(merged), "identical": float((delta == 0).mean()), "mean_abs_diff": float(delta.mean())}


# ---------------------------------------------------------------------------------------------------------------------
# Calibration report
# ---------------------------------------------------------------------------------------------------------------------


def summarise(result: pd.DataFrame) -> dict[str, Any]:
    """One line of the calibration tables: cells compared, alarms, the smallest Holm-adjusted p, the alarms."""
    alarms = result[result["alarm"]]
    return {
        "cells": len(result),
        "alarms": len(alarms),
        "min_p_holm": float(result["p_holm"].min()) if len(result) else math.nan,
        "largest_drop": float(-result["diff"].min()) if len(result) else math.nan,
        "alarm_cells": [describe_alarm(r) for r in alarms.to_dict("records")],
    }


def render_calibration(cal: Mapping[str, Any]) -> str:
    """The calibration JSON as Markdown (the README's block between the calibration markers)."""
    s = cal["settings"]
    lines = [
        f"Reference: {cal['reference_seeds']} seeds per cell ({cal['reference_seed_list']}); the check runs "
        f"{cal['check_seeds']} seeds; {cal['cells']} cells; one-sided pooled t-test, Holm over all cells, "
        f"family-wise alpha = {s['alpha']}, std floor {s['min_std']} points. Reference machine: "
        f"{cal['environment']['cpu_model']} ({cal['environment']['torch_cpu_capability']}), "
        f"torch {cal['environment']['versions']['torch']}.",
        "",
        "| perturbation (nothing semantic changes) | cells compared | alarms | smallest Holm p | "
        "values identical to `none` | mean abs. change (points) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in cal["perturbations"].items():
        if row.get("not_run"):
            lines.append(f"| `{name}`: {row['description']} | not run in this calibration | — | — | — | — |")
            continue
        agree = row.get("agreement_with_none") or {}
        ident = "—" if not agree or agree.get("pairs", 0) == 0 else f"{100 * agree['identical']:.0f} %"
        change = "—" if not agree or agree.get("pairs", 0) == 0 else f"{agree['mean_abs_diff']:.2f}"
        lines.append(
            f"| `{name}`: {row['description']} | {row['cells']} | {row['alarms']} | {row['min_p_holm']:.2g} | "
            f"{ident} | {change} |"
        )
    fa = cal["false_alarms"]
    lines += [
        "",
        f"False alarms by re-splitting a pool of {len(fa['pool_seeds'])} seeds (1 thread, this machine) into "
        f"{fa['n_ref']} reference + {fa['n_cur']} current seeds, {fa['splits']} splits: "
        f"**{fa['family_alarms']} of {fa['splits']} checks raised any alarm** "
        f"(rate {100 * fa['family_rate']:.1f} %, 95 % CI {100 * fa['family_rate_ci95'][0]:.1f}–"
        f"{100 * fa['family_rate_ci95'][1]:.1f} %; target < {100 * cal['target_false_alarm_rate']:.0f} %).",
        "",
        "| planted regression | cells compared | alarms | alarmed cells (largest effects) |",
        "|---|---|---|---|",
    ]
    for name, row in cal["plants"].items():
        shown = "; ".join(row["alarm_cells"][:3]) + (" …" if len(row["alarm_cells"]) > 3 else "")
        lines.append(f"| `{name}`: {row['description']} | {row['cells']} | {row['alarms']} | {shown or '—'} |")
    lines += [
        "",
        "Smallest drop (points) detected with 95 % probability when one cell regresses alone, per dataset and set "
        "(median over methods; analytic = noncentral t on the reference std, resampled = re-splits of the pool, "
        "on a grid of 0.25 up to 30 points):",
        "",
        "| dataset | set | analytic | resampled |",
        "|---|---|---|---|",
    ]
    for row in cal["detectable_drop"]:
        resampled = "> 30" if row["resampled"] is None or math.isnan(row["resampled"]) else f"{row['resampled']:.2f}"
        lines.append(f"| {row['dataset']} | {row['set']} | {row['analytic']:.2f} | {resampled} |")
    return "\n".join(lines) + "\n"


def detectable_drop_table(reference: pd.DataFrame, resampled: pd.DataFrame | None, n_cur: int,
                          settings: TestSettings) -> list[dict[str, Any]]:
    """Median over rows of the analytic (and resampled) detectable drop, per dataset and set."""
    mom = _moments(reference).reset_index()
    m = len(mom)
    mom["analytic"] = [
        minimum_detectable_drop(math.sqrt(v), int(n), n_cur, m, settings) for v, n in zip(mom["var"], mom["n"])
    ]
    if resampled is not None:
        mom = mom.merge(resampled, on=CELL, how="left")
    else:
        mom["detectable_drop"] = math.nan
    out = []
    for (dataset, test_set), sub in mom.groupby(["dataset", "set"], sort=True):
        res = sub["detectable_drop"].median(skipna=False)
        out.append({
            "dataset": dataset, "set": test_set, "analytic": float(sub["analytic"].median()),
            "resampled": None if pd.isna(res) else float(res),
            "per_row": {str(r["label"]): round(float(r["analytic"]), 2) for _, r in sub.iterrows()},
        })
    return out


def all_splits_or_sample(seeds: Sequence[int], n_ref: int, n_cur: int, limit: int, seed: int = 0) -> Resampling:
    """Every (reference, current) split of ``seeds`` when there are at most ``limit``, else ``limit`` random ones."""
    seeds = sorted(seeds)
    total = math.comb(len(seeds), n_cur) * math.comb(len(seeds) - n_cur, n_ref)
    if total > limit:
        return resampling_splits(seeds, n_ref, n_cur, limit, seed)
    plan = Resampling(seeds, n_ref, n_cur)
    for cur in itertools.combinations(seeds, n_cur):
        rest = [s for s in seeds if s not in cur]
        for ref in itertools.combinations(rest, n_ref):
            plan.splits.append((list(ref), list(cur)))
    return plan
