"""Run folders -> leaderboard (v0): a pure function of the run folders below a root.

A run folder (DESIGN.md) holds ``config.yaml``, ``result.json``, ``predictions.csv`` and ``done`` (written last).
Only folders with ``done`` count; the others are reported as incomplete and ignored. With ``recompute=True`` every
per-set metric is recomputed from ``predictions.csv`` with :func:`methods.metrics.msa_metrics`, so any number in
the table can be reproduced from saved predictions.

**CSV convention** (``leaderboard.csv``): one row per (method, dataset); columns ``method, dataset, n_seeds, seeds``
(seeds ascending, ``;``-separated), then for each test set and each metric of
:data:`methods.metrics.METRIC_KEYS`: ``<set>/<metric>/mean``, ``<set>/<metric>/std``, ``<set>/<metric>/n``.
Mean and std are over seeds of the per-run (4-decimal) metrics, std is the **population** std (ddof=0), both x100
and rounded to 2 decimals (MAE and Corr too: 54.84 means 0.5484); ``n`` is the number of runs that have that set.
Floats are written with ``%.2f``; NaN (e.g. Corr of a constant prediction, or a set no run of the row has, then
with n = 0) is written as ``nan``. Lines end with ``\\n``; the file is byte-stable for the same run folders.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from methods.metrics import METRIC_KEYS, msa_metrics, report_cell

__all__ = [
    "CONVENTION",
    "DEFAULT_MD_METRICS",
    "build_leaderboard",
    "find_runs",
    "load_run",
    "write_leaderboard",
]

log = logging.getLogger(__name__)

CONVENTION = "mean ± population std (ddof=0) over n seeds, ×100"
DEFAULT_MD_METRICS: tuple[str, ...] = ("Non0_acc_2", "Has0_acc_2", "MAE")
ID_COLUMNS: tuple[str, ...] = ("method", "dataset", "n_seeds", "seeds")
CSV_FLOAT_FORMAT = "%.2f"
CSV_NA_REP = "nan"
_MISSING = "—"


# ---------------------------------------------------------------------------------------------------------------------
# Reading run folders
# ---------------------------------------------------------------------------------------------------------------------


def find_runs(root: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) run folders below ``root``, each sorted by path.

    A run folder is a directory holding ``result.json`` or ``config.yaml``; it is complete when it also holds
    ``done`` and ``result.json``. The search does not descend into run folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run root {root} is not a directory")
    complete: list[Path] = []
    incomplete: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        files = set(filenames)
        if "result.json" in files or "config.yaml" in files:
            dirnames[:] = []  # a run folder's sub-folders (logs, ...) are not runs
            run = Path(dirpath)
            (complete if {"done", "result.json"} <= files else incomplete).append(run)
    return sorted(complete), sorted(incomplete)


def _read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; cannot recompute metrics")
    # Read everything as text and let numpy parse the floats: exact (round-trip) on every pandas version.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"set", "id", "prediction", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks column(s) {sorted(missing)}; expected set,id,prediction,label")
    for col in ("prediction", "label"):
        try:
            df[col] = np.asarray(df[col].to_numpy(), dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"{path}: column {col!r} is not numeric: {err}") from err
    return df


def load_run(run_dir: str | os.PathLike[str], *, recompute: bool = False) -> dict[str, Any]:
    """The run's ``result.json``; with ``recompute=True`` its per-set metrics come from ``predictions.csv``.

    Recomputed metrics use :func:`msa_metrics` with 4 decimals, as the run itself does. Raises ``ValueError`` when
    a required field, a test set's metrics or its predictions are missing.
    """
    run_dir = Path(run_dir)
    path = run_dir / "result.json"
    with path.open(encoding="utf-8") as fh:
        result: dict[str, Any] = json.load(fh)  # accepts the NaN tokens json.dumps(allow_nan=True) writes
    for key in ("method", "dataset", "seed", "metrics"):
        if key not in result:
            raise ValueError(f"{path} has no {key!r} field")
    if not result.get("test_sets"):
        result["test_sets"] = list(result["metrics"])

    if recompute:
        preds = _read_predictions(run_dir / "predictions.csv")
        metrics: dict[str, dict[str, float]] = {}
        for name in result["test_sets"]:
            rows = preds[preds["set"] == name]
            if rows.empty:
                raise ValueError(f"{run_dir / 'predictions.csv'} has no rows for test set {name!r}")
            expected_n = (result.get("n_samples") or {}).get(name)
            if expected_n is not None and int(expected_n) != len(rows):
                raise ValueError(
                    f"{run_dir / 'predictions.csv'}: {len(rows)} rows for {name!r}, result.json says {expected_n}"
                )
            metrics[name] = msa_metrics(rows["prediction"].to_numpy(), rows["label"].to_numpy(), decimals=4)
        result["metrics"] = metrics

    for name in result["test_sets"]:
        if name not in result["metrics"]:
            raise ValueError(f"{path}: test set {name!r} is listed but has no metrics")
        absent = [k for k in METRIC_KEYS if k not in result["metrics"][name]]
        if absent:
            raise ValueError(f"{path}: metrics of {name!r} lack {absent}")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Building the table
# ---------------------------------------------------------------------------------------------------------------------


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def _identity(result: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree for two records of the same (method, dataset, seed) to be one and the same job."""
    metrics = {s: {k: _value(result["metrics"][s][k]) for k in METRIC_KEYS} for s in result["test_sets"]}
    # NaN != NaN: compare a canonical text form instead
    return result.get("config_hash"), tuple(result["test_sets"]), json.dumps(metrics, sort_keys=True)


def _load_unique(
    runs: Sequence[Path], recompute: bool
) -> tuple[dict[tuple[str, str], dict[int, dict[str, Any]]], list[Path]]:
    """Group runs by (method, dataset) and seed; identical duplicates are kept once, differing ones raise."""
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    owner: dict[tuple[str, str, int], Path] = {}
    duplicates: list[Path] = []
    for run in runs:
        result = load_run(run, recompute=recompute)
        key = (str(result["method"]), str(result["dataset"]), int(result["seed"]))
        if key in owner:
            first = owner[key]
            if _identity(groups[key[:2]][key[2]]) != _identity(result):
                raise ValueError(
                    f"conflicting runs for method={key[0]!r} dataset={key[1]!r} seed={key[2]}: "
                    f"{first} and {run} differ; keep one of them (or give the variant its own method name)"
                )
            log.warning("run %s duplicates %s (same config and metrics); counted once", run, first)
            duplicates.append(run)
            continue
        owner[key] = run
        groups.setdefault(key[:2], {})[key[2]] = result
    return groups, duplicates


def _row_order(keys: Iterable[tuple[str, str]], order: Sequence[str] | None) -> list[tuple[str, str]]:
    rank = {name: i for i, name in enumerate(order or ())}
    return sorted(keys, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1]))


def build_leaderboard(
    root: str | os.PathLike[str], *, recompute: bool = False, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per (method, dataset) over the complete runs below ``root`` (see the module docstring for columns).

    Rows follow ``order`` (method names) first, the other methods alphabetically, then dataset. Test-set column
    order is that of the first run by (method, dataset, seed), with sets only other runs have appended in order of
    appearance. Two runs with the same method, dataset and seed raise ``ValueError`` unless they are the same job
    (same config hash, when recorded, and same metrics), which counts once. ``df.attrs`` records the complete,
    incomplete and duplicate run folders.
    """
    complete, incomplete = find_runs(root)
    if incomplete:
        log.warning("%d incomplete run folder(s) (no 'done') ignored below %s", len(incomplete), root)
    groups, duplicates = _load_unique(complete, recompute)

    sets: list[str] = []
    for key in sorted(groups):
        for seed in sorted(groups[key]):
            for name in groups[key][seed]["test_sets"]:
                if name not in sets:
                    sets.append(name)

    columns = list(ID_COLUMNS) + [f"{s}/{m}/{stat}" for s in sets for m in METRIC_KEYS for stat in ("mean", "std", "n")]
    rows: list[dict[str, Any]] = []
    for method, dataset in _row_order(groups, order):
        runs = groups[(method, dataset)]
        seeds = sorted(runs)
        row: dict[str, Any] = {
            "method": method,
            "dataset": dataset,
            "n_seeds": len(seeds),
            "seeds": ";".join(str(s) for s in seeds),
        }
        for s in sets:
            having = [runs[seed] for seed in seeds if s in runs[seed]["test_sets"]]
            for m in METRIC_KEYS:
                mean, std, n = report_cell(_value(r["metrics"][s][m]) for r in having)
                row[f"{s}/{m}/mean"], row[f"{s}/{m}/std"], row[f"{s}/{m}/n"] = mean, std, n
        rows.append(row)

    df = pd.DataFrame(rows, columns=columns)
    for col in columns:
        if col.endswith("/n") or col == "n_seeds":
            df[col] = df[col].astype("int64")
        elif col.endswith(("/mean", "/std")):
            df[col] = df[col].astype("float64")
    df.attrs.update(
        root=str(root),
        complete_runs=[str(p) for p in complete],
        incomplete_runs=[str(p) for p in incomplete],
        duplicate_runs=[str(p) for p in duplicates],
    )
    return df


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def leaderboard_markdown(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_MD_METRICS) -> str:
    """Markdown: the convention line, then one table per dataset (a row per method, a column per set x metric)."""
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {list(METRIC_KEYS)}")
    sets = list(dict.fromkeys(c.split("/")[0] for c in df.columns if c.count("/") == 2))
    lines = [
        "# Leaderboard",
        "",
        f"Cells: {CONVENTION} (MAE and Corr too); (n) = seeds with that test set. "
        "Each run's metrics are MMSA's, rounded to 4 decimals; Acc-2 variants are named (Has0 / Non0).",
    ]
    if df.attrs.get("incomplete_runs") is not None:
        lines.append(
            f"Runs: {len(df.attrs.get('complete_runs', []))} complete, "
            f"{len(df.attrs['incomplete_runs'])} incomplete (no `done`, ignored)."
        )
    if df.empty:
        lines += ["", "No complete runs."]
    for dataset in sorted(df["dataset"].unique()) if not df.empty else []:
        sub = df[df["dataset"] == dataset]
        shown = [s for s in sets if any(f"{s}/{m}/n" in sub and (sub[f"{s}/{m}/n"] > 0).any() for m in metrics)]
        header = ["method", "seeds"] + [f"{s} {m}" for s in shown for m in metrics]
        lines += [
            "",
            f"## {_md_escape(dataset)}",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|",
        ]
        for _, row in sub.iterrows():
            cells = [_md_escape(row["method"]), str(row["n_seeds"])]
            for s in shown:
                for m in metrics:
                    n = int(row[f"{s}/{m}/n"])
                    mean, std = float(row[f"{s}/{m}/mean"]), float(row[f"{s}/{m}/std"])
                    cells.append(_MISSING if n == 0 else f"{_fmt(mean)} ± {_fmt(std)} ({n})")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_leaderboard(
    df: pd.DataFrame, out_dir: str | os.PathLike[str], *, metrics: Sequence[str] = DEFAULT_MD_METRICS
) -> tuple[Path, Path]:
    """Write ``leaderboard.csv`` (``%.2f``, NaN as ``nan``) and ``leaderboard.md`` atomically; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "leaderboard.csv", out / "leaderboard.md"
    csv_text = df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, na_rep=CSV_NA_REP, lineterminator="\n")
    _atomic_write(csv_path, csv_text)
    _atomic_write(md_path, leaderboard_markdown(df, metrics))
    return csv_path, md_path
