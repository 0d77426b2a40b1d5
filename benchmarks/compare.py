"""Rows read against the rows they must be compared with (issue 17): matched baselines and ablations.

The leaderboard compares every row with ``baseline`` (LF-TF). That mixes a method's debiasing with its architecture:
MMCI's sequence encoders and optimiser differ from the baseline's. Two comparisons separate them, on the headline
(docs/protocol.md#headline) with the paired statistics of docs/protocol.md#statistics
(`benchmarks.statistics.paired_difference`: mean difference over the seeds both rows have, its 95 % bootstrap
interval, P(row > reference)):

* ``matched``: each method row (kind ``method``) against its method's matched-architecture baseline
  (``MSAMethod.matched_baseline``: ``baseline_seq`` for MMCI, ``baseline`` for the LF-TF methods);
* ``term``: each method's plain row against each of its named variants (an ablation such as ``mmci_no_int``, or an
  alternative such as ``mmci_legacy``), difference = full method - variant. The term *acts* when that interval
  excludes 0 (``resolved``); otherwise the seeds cannot tell the method from its ablation.

Pure functions of a leaderboard DataFrame (`benchmarks.leaderboard.build_leaderboard`, whose ``attrs["per_seed"]``
holds every run's headline), so everything is recomputable from run folders.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from benchmarks.statistics import paired_difference
from methods import METHODS

COLUMNS = (
    "dataset", "comparison", "row", "reference", "n_pairs", "row_headline", "reference_headline", "diff", "ci_low",
    "ci_high", "p_better", "resolved",
)


def _mean(values: dict[int, float]) -> float:
    finite = [v for v in values.values() if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def comparisons(board: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison (see the module docstring), in the leaderboard's row order: ``matched`` first, then
    ``term``. Headlines and differences in Non0 Acc-2 points (x100, as the per-seed records), unrounded;
    ``p_better`` a fraction."""
    if "per_seed" not in board.attrs:
        raise ValueError("the leaderboard has no per-seed records (attrs['per_seed']); build it with build_leaderboard")
    values: dict[tuple[str, str], dict[int, float]] = {}
    for record in board.attrs["per_seed"]:
        values.setdefault((record["label"], record["dataset"]), {})[int(record["seed"])] = float(record["headline"])
    pairs: list[tuple[str, str, str, str]] = []
    rows = board[board["kind"] == "method"]
    for label, dataset, method in zip(rows["label"], rows["dataset"], rows["method"]):
        reference = METHODS[method].matched_baseline if method in METHODS else ""
        if reference and reference != label and (reference, dataset) in values:
            pairs.append((dataset, "matched", label, reference))
    for label, dataset, method in zip(rows["label"], rows["dataset"], rows["method"]):
        if label != method and (method, dataset) in values:
            pairs.append((dataset, "term", method, label))
    out = []
    for dataset, kind, row, reference in pairs:
        a, b = values[(row, dataset)], values[(reference, dataset)]
        diff = paired_difference(a, b)
        out.append({
            "dataset": dataset, "comparison": kind, "row": row, "reference": reference, "n_pairs": diff["n_pairs"],
            "row_headline": _mean(a), "reference_headline": _mean(b), "diff": diff["mean_diff"],
            "ci_low": diff["ci_low"], "ci_high": diff["ci_high"], "p_better": diff["p_better"],
            "resolved": bool(diff.get("resolved", False)),
        })
    frame = pd.DataFrame(out, columns=list(COLUMNS))
    return frame.sort_values(["dataset", "comparison"], kind="stable", key=_order).reset_index(drop=True)


def _order(column: pd.Series) -> pd.Series:
    return column.map({"matched": 0, "term": 1}) if column.name == "comparison" else column


def _num(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def verdict(kind: str, diff: float, resolved: bool) -> str:
    """The word for one comparison: for a ``term`` (full − variant) ``acts: full >`` / ``acts: full <`` (the
    variant, e.g. an ablation, is worse / better than the full method), for ``matched`` ``above`` / ``below`` the
    matched baseline; ``**not resolved**`` when the interval includes 0."""
    if not resolved:
        return "**not resolved**"
    if kind == "term":
        return "acts: full >" if diff > 0 else "acts: full <"
    return "above" if diff > 0 else "below"


def comparisons_markdown(frame: pd.DataFrame) -> str:
    """Per dataset: each method row against its matched baseline, then each variant against its method (full -
    variant), with the interval, P(> reference) and the :func:`verdict`."""
    lines = [
        "# Matched baselines and ablations",
        "",
        "Headline = Non0_acc_2 on the set where every shortcut is broken (x100, mean over seeds). Δ = paired "
        "difference over the seeds both rows have, with its 95 % bootstrap interval; P(>) = share of those seeds "
        "where the first row is higher (ties 1/2); **not resolved** = the interval includes 0; a term **acts** when "
        "full − variant excludes 0 (`full >`: the variant is worse than the full method, `full <`: better).",
    ]
    for dataset, part in frame.groupby("dataset", sort=True):
        for kind, title, first, second, column in (
            ("matched", "against the matched-architecture baseline", "row", "matched baseline", "vs matched"),
            ("term", "does the term act? full method - variant", "method", "variant", "term"),
        ):
            block = part[part["comparison"] == kind]
            if block.empty:
                continue
            lines += ["", f"## {dataset}: {title}", "",
                      f"| {first} | {second} | pairs | {first} headline | {second} headline | Δ [95% CI] | P(>) | "
                      f"{column} |",
                      "|---|---|---:|---:|---:|---:|---:|---|"]
            for r in block.itertuples(index=False):
                state = verdict(kind, r.diff, r.resolved)
                lines.append(
                    f"| {r.row} | {r.reference} | {r.n_pairs} | {_num(r.row_headline)} | {_num(r.reference_headline)} "
                    f"| {_num(r.diff, True)} [{_num(r.ci_low, True)}, {_num(r.ci_high, True)}] | "
                    f"{_num(r.p_better)} | {state} |"
                )
    return "\n".join(lines) + "\n"
