"""Hyper-parameter choice on the IID validation split (docs/protocol.md#model-selection: first seed, IID valid).

A grid is a sweep whose variants share a label prefix (e.g. ``benchmarks/sweeps/jtt_grid.yaml``: ``jtt_T1_up5`` ...);
:func:`choose_on_valid` reads the finished runs and returns the variant with the best IID-valid selection value
(``result.json`` ``selection``), never a test metric. The chosen overrides then run on every seed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from benchmarks.leaderboard import find_runs, load_run, row_label
from methods.metrics import SELECTION_MODES


def grid_table(root: str | os.PathLike[str], prefix: str, dataset: str | None = None) -> pd.DataFrame:
    """One row per complete run whose label starts with ``prefix``: label, dataset, seed, selection key and value,
    and the run's variant overrides (its ``config.yaml`` model section)."""
    complete, _ = find_runs(root)
    rows: list[dict[str, Any]] = []
    for run in complete:
        result = load_run(run)
        label = row_label(result)
        if not label.startswith(prefix) or (dataset and result["dataset"] != dataset):
            continue
        selection = result.get("selection") or {}
        if "key" not in selection or "value" not in selection:
            raise ValueError(f"{run / 'result.json'} has no selection key/value; cannot choose on IID valid")
        model = OmegaConf.to_container(OmegaConf.load(run / "config.yaml")).get("model", {})
        rows.append({
            "label": label, "dataset": result["dataset"], "seed": int(result["seed"]),
            "key": selection["key"], "valid": float(selection["value"]), "model": model, "run": str(run),
        })
    if not rows:
        raise ValueError(f"no complete run below {root} has a label starting with {prefix!r}")
    return pd.DataFrame(rows)


def choose_on_valid(table: pd.DataFrame) -> dict[str, Any]:
    """The variant with the best mean IID-valid selection value (over the seeds it has), per the key's direction."""
    keys = set(table["key"])
    if len(keys) != 1:
        raise ValueError(f"the grid's runs use different selection keys {sorted(keys)}; cannot compare them")
    key = keys.pop()
    mode = SELECTION_MODES[key]
    means = table.groupby("label")["valid"].mean()
    best = means.idxmin() if mode == "min" else means.idxmax()
    value = float(means[best])
    if math.isnan(value):
        raise ValueError("every variant of the grid has a NaN validation value")
    return {"label": str(best), "key": key, "mode": mode, "valid": value, "by_label": means.to_dict()}


def describe(root: Path, prefix: str, dataset: str | None) -> str:
    table = grid_table(root, prefix, dataset)
    choice = choose_on_valid(table)
    lines = [f"{'label':<24} {'seeds':>5} {'valid ' + choice['key']:>14}"]
    for label, value in sorted(choice["by_label"].items(), key=lambda kv: kv[1], reverse=choice["mode"] == "max"):
        n = int((table["label"] == label).sum())
        lines.append(f"{label:<24} {n:>5} {value:>14.4f}" + ("   <- chosen" if label == choice["label"] else ""))
    return "\n".join(lines)
