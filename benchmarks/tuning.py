"""Hyper-parameter choice on the IID validation split (docs/protocol.md#model-selection: first seed, IID valid).

A grid is a sweep whose variants share a label prefix (e.g. ``benchmarks/sweeps/jtt_grid.yaml``: ``jtt_T1_up5`` ...);
:func:`choose_on_valid` reads the finished runs and returns the variant with the best IID-valid selection value
(``result.json`` ``selection``), never a test metric. :func:`grid_overrides` turns the chosen variant back into the
overrides that set it (the model fields whose values differ between the grid's variants), and :func:`record_choice`
writes the whole choice to a JSON file, so the chosen values are recorded and then run on every seed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from benchmarks.leaderboard import find_runs, load_run, row_label
from datamodules.atomic import atomic_write_text
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
            "label": label, "method": result["method"], "dataset": result["dataset"], "seed": int(result["seed"]),
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


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys -> leaf values (lists stay leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _override_value(value: Any) -> str:
    """A value as the right-hand side of a ``key=value`` override."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return str(value)


def grid_overrides(table: pd.DataFrame, label: str) -> list[str]:
    """``<method>.<field>=<value>`` for every model field whose value differs between the grid's variants, at the
    value variant ``label`` ran with (its first run's ``config.yaml``): the overrides that reproduce the choice."""
    methods = set(table["method"])
    if len(methods) != 1:
        raise ValueError(f"the grid's runs are of several methods {sorted(methods)}; a grid varies one method")
    method = methods.pop()
    first = table.drop_duplicates("label").set_index("label")["model"]
    if label not in first.index:
        raise ValueError(f"variant {label!r} is not in the grid (has {sorted(first.index)})")
    flat = {lab: _flat(model) for lab, model in first.items()}
    keys = sorted(set().union(*flat.values()))
    varying = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat.values()}) > 1]
    return [f"{method}.{k}={_override_value(flat[label].get(k))}" for k in varying]


def record_choice(root: str | os.PathLike[str], prefix: str, dataset: str | None, out: Path) -> dict[str, Any]:
    """Choose on IID valid and write the choice to ``out`` (JSON): the grid, the selection key, the seeds, every
    variant's mean valid value, the chosen label and the overrides that set it. Returns what was written."""
    table = grid_table(root, prefix, dataset)
    choice = choose_on_valid(table)
    record = {
        "root": str(root),
        "prefix": prefix,
        "dataset": sorted(set(table["dataset"])),
        "seeds": sorted({int(s) for s in table["seed"]}),
        "split": "valid",
        **choice,
        "overrides": grid_overrides(table, choice["label"]),
    }
    atomic_write_text(out, json.dumps(record, indent=2, sort_keys=False) + "\n")
    return record


def describe(root: Path, prefix: str, dataset: str | None) -> str:
    table = grid_table(root, prefix, dataset)
    choice = choose_on_valid(table)
    lines = [f"{'label':<24} {'seeds':>5} {'valid ' + choice['key']:>14}"]
    for label, value in sorted(choice["by_label"].items(), key=lambda kv: kv[1], reverse=choice["mode"] == "max"):
        n = int((table["label"] == label).sum())
        lines.append(f"{label:<24} {n:>5} {value:>14.4f}" + ("   <- chosen" if label == choice["label"] else ""))
    if len(set(table["method"])) == 1:
        lines.append("chosen overrides: " + (" ".join(grid_overrides(table, choice["label"])) or "(none differ)"))
    return "\n".join(lines)
