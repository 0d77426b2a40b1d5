"""Mechanism diagnostics over seeds (issue 17 item 4): what each debiasing mechanism does, read from the runs.

Every run of a method with a mechanism writes ``result.json`` -> ``diagnostics.mechanism`` at its selected weights
(`methods.base.MSAMethod.compute_mechanism_diagnostics`; MMCI's beta^c / alpha^c, CaMIB's mask on the shortcut's
dimensions, GEAR's weights by true conflict and its h_b-shuffle probe; how to read them:
docs/algorithms-mmci-camib.md#5-mechanism-diagnostics).
This module flattens those trees into one row per run and scalar (:func:`mechanism_table`), summarises each scalar
over the seeds of a row with the protocol's bootstrap interval (:func:`summarise`), and names the few quantities
that answer "does the mechanism do what it claims?" (:data:`KEY_QUANTITIES`, rendered by :func:`key_rows`).
Pure functions of run folders, so the summary is recomputable from them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.leaderboard import find_runs, load_run, row_label
from benchmarks.statistics import bootstrap_mean_ci
from datamodules.atomic import atomic_write_text
from datamodules.schema import MODALITIES

TABLE_COLUMNS = ("label", "method", "dataset", "seed", "key", "value")
SUMMARY_COLUMNS = ("label", "method", "dataset", "key", "n", "mean", "std", "ci_low", "ci_high")

# (method, key template, what it says). ``{m}`` is the modality that carries the shortcut (scenario ``single``);
# every key is read on the IID validation split, where the shortcut holds, unless it names another set.
KEY_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("mmci", "sets.valid.beta_c.text", "beta^c, text nodes"),
    ("mmci", "sets.valid.beta_c.audio", "beta^c, audio nodes"),
    ("mmci", "sets.valid.beta_c.vision", "beta^c, vision nodes"),
    ("mmci", "sets.valid.shortcut_gap.beta_c", "beta^c gap: shortcut modality - others (< 0: C avoids it)"),
    ("mmci", "sets.valid.shortcut_gap.alpha_c_from_shortcut",
     "alpha^c gap: edges from the shortcut modality - others"),
    ("camib", "sets.valid.shortcut.{m}.mask_on_z_dims", "mask on the 8 dims most tied to the shortcut z"),
    ("camib", "sets.valid.shortcut.{m}.mask_on_y_dims", "mask on the 8 dims most tied to the label"),
    ("camib", "sets.valid.mask_mean", "mask, all fused dims"),
    ("gear", "weights.train.auroc", "IPW weight vs true conflict, AUROC (0.5 = blind)"),
    ("gear", "weights.train.mean_w_conflict", "mean weight, conflicting train samples"),
    ("gear", "weights.train.mean_w_aligned", "mean weight, aligned train samples"),
    ("gear", "hb_shuffle_probe.valid.relative_change",
     "h_b shuffled: mean abs. change of the prediction / its std (0: ignores h_b)"),
    ("gear", "hb_shuffle_probe.valid.non0_acc2", "Non0 Acc-2, valid"),
    ("gear", "hb_shuffle_probe.valid.non0_acc2_shuffled", "Non0 Acc-2, valid, h_b shuffled"),
)


# The one or two numbers per method that say whether its mechanism separates the shortcut (README): (method, key
# template, short name). The same keys as :data:`KEY_QUANTITIES`.
HEADLINE_QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("mmci", "sets.valid.shortcut_gap.beta_c", "β^c gap"),
    ("mmci", "sets.valid.shortcut_gap.alpha_c_from_shortcut", "α^c gap"),
    ("camib", "sets.valid.shortcut.{m}.mask_on_z_dims", "mask on z dims"),
    ("camib", "sets.valid.shortcut.{m}.mask_on_y_dims", "mask on y dims"),
    ("gear", "weights.train.auroc", "weight AUROC vs conflict"),
    ("gear", "hb_shuffle_probe.valid.relative_change", "h_b-shuffle change"),
)


def _flatten(tree: Any, prefix: str = "") -> Iterable[tuple[str, float]]:
    """Dotted keys -> float for every numeric leaf (bools and lists such as ``z_dims`` are not scalars)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


def mechanism_table(root: str | os.PathLike[str]) -> pd.DataFrame:
    """One row per complete run below ``root`` and numeric leaf of its ``diagnostics.mechanism``; runs without one
    are skipped."""
    complete, _ = find_runs(root)
    rows: list[dict[str, Any]] = []
    for run in complete:
        result = load_run(run)
        mechanism = (result.get("diagnostics") or {}).get("mechanism")
        if not mechanism:
            continue
        label, dataset = row_label(result), str(result["dataset"])
        for key, value in _flatten(mechanism):
            rows.append({"label": label, "method": result["method"], "dataset": dataset,
                         "seed": int(result["seed"]), "key": key, "value": value})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per (label, dataset, key): seeds, mean, std (ddof 1; 0 with one seed) and the 95 % bootstrap interval of the
    mean (`benchmarks.statistics.bootstrap_mean_ci`, the protocol's interval), NaN values dropped."""
    out: list[dict[str, Any]] = []
    for (label, method, dataset, key), part in table.groupby(["label", "method", "dataset", "key"], sort=False):
        values = part["value"].to_numpy(dtype=np.float64)
        finite = values[~np.isnan(values)]
        low, high = bootstrap_mean_ci(finite)
        out.append({
            "label": label, "method": method, "dataset": dataset, "key": key, "n": int(finite.size),
            "mean": float(finite.mean()) if finite.size else math.nan,
            "std": float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else math.nan),
            "ci_low": low, "ci_high": high,
        })
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def key_rows(summary: pd.DataFrame, quantities: tuple[tuple[str, str, str], ...] = KEY_QUANTITIES) -> pd.DataFrame:
    """The ``quantities`` (:data:`KEY_QUANTITIES`) of every row of ``summary`` whose method has them, in order, with a
    ``quantity`` column saying what each is. ``{m}`` stands for each modality the summary has that key for (the
    CaMIB entries exist only for the modalities that carry a ground-truth shortcut)."""
    picked: list[pd.DataFrame] = []
    for (_, _), part in summary.groupby(["label", "dataset"], sort=False):
        method = str(part["method"].iloc[0])
        by_key = part.set_index("key")
        for owner, template, text in quantities:
            if owner != method:
                continue
            keys = [(template, text)] if "{m}" not in template else [
                (template.format(m=m), f"{text} ({m})") for m in MODALITIES
            ]
            for key, quantity in keys:
                if key in by_key.index:
                    row = by_key.loc[[key]].reset_index()
                    row.insert(4, "quantity", quantity)
                    picked.append(row)
    columns = [*SUMMARY_COLUMNS[:4], "quantity", *SUMMARY_COLUMNS[4:]]
    if not picked:
        return pd.DataFrame(columns=columns)
    return pd.concat(picked, ignore_index=True)[columns]


def key_rows_markdown(rows: pd.DataFrame) -> str:
    """The key quantities as one Markdown table per dataset: row, quantity, mean ± std [95 % interval] (n seeds)."""
    if rows.empty:
        return "No run below this root wrote mechanism diagnostics (GEAR, MMCI and CaMIB runs do).\n"
    lines: list[str] = []
    for dataset, part in rows.groupby("dataset", sort=True):
        seeds = sorted(set(part["n"]))
        lines += [
            f"**{dataset}**: at the selected weights, on IID valid (where the shortcut holds); mean ± std "
            f"[95 % bootstrap interval] over {'/'.join(str(s) for s in seeds)} seeds.",
            "",
            "| row | quantity | value |",
            "|---|---|---:|",
        ]
        for r in part.itertuples(index=False):
            lines.append(f"| {r.label} | {r.quantity} | {r.mean:.3f} ± {r.std:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] |")
        lines.append("")
    return "\n".join(lines)


def summary_of(root: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """The runs below ``root`` summarised (every scalar) and the Markdown of their key quantities."""
    summary = summarise(mechanism_table(root))
    return summary, key_rows_markdown(key_rows(summary))


def write_summary(root: str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """:func:`summary_of` written to ``out/mechanisms.csv`` (every scalar) and ``out/mechanisms.md`` (the key
    quantities); returns both. Written atomically, so a failure leaves the old files."""
    summary, markdown = summary_of(root)
    out = Path(out)
    atomic_write_text(out / "mechanisms.csv", summary.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
    atomic_write_text(out / "mechanisms.md", markdown)
    return summary, markdown


def headline_markdown(summary: pd.DataFrame) -> str:
    """One line per row: the :data:`HEADLINE_QUANTITIES` of its method as ``name mean [95 % interval]``."""
    rows = key_rows(summary, HEADLINE_QUANTITIES)
    if rows.empty:
        return "No run wrote mechanism diagnostics.\n"
    lines = ["| row | dataset | seeds | mean [95 % interval] over seeds, on IID valid |", "|---|---|---:|---|"]
    for (label, dataset), part in rows.groupby(["label", "dataset"], sort=False):
        cells = "; ".join(f"{r.quantity} {r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" for r in part.itertuples())
        lines.append(f"| {label} | {dataset} | {int(part['n'].min())} | {cells} |")
    return "\n".join(lines) + "\n"
