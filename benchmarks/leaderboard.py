"""Run folders -> leaderboard (v1): a pure function of the run folders below a root.

A run folder (DESIGN.md) holds ``config.yaml``, ``result.json``, ``predictions.csv`` and ``done`` (written last).
Only folders with ``done`` count; the others are reported as incomplete and ignored. With ``recompute=True`` every
per-set metric is recomputed from ``predictions.csv`` with :func:`methods.metrics.msa_metrics` (and the OOD average
and gap from those), so any number in the table can be reproduced from saved predictions.

**Rows.** One row per (label, dataset). A run's label is ``result.json``'s ``"label"`` (a named variant of a method,
e.g. the ablation ``gear_noipw`` of ``gear``), or its method when it has none. Rows follow ``order`` (registry method
names; other methods alphabetically after them), then the label (the method's plain row first, then its variants
alphabetically), then the dataset.

**CSV convention** (``leaderboard.csv``): the leading columns :data:`ID_COLUMNS` are ``method`` (the registered
method), ``label`` (the row), ``dataset``, ``n_seeds``, ``seeds`` (ascending, ``;``-separated) and ``ood_sets``
(the OOD sets that entered the row's OOD average, ``;``-separated in column order; a set that only ``k`` of the
``n`` averaged seeds have is written ``name[k/n]``; empty when no seed has an average). Then, for each test set and
each metric of :data:`methods.metrics.METRIC_KEYS`: ``<set>/<metric>/mean``, ``<set>/<metric>/std``,
``<set>/<metric>/n``; the IID set ``test`` comes first, then the OOD sets in order of first appearance over the runs
sorted by (dataset, label, seed). Last, always present, the same triples for ``ood_avg/<metric>`` and
``gap/<metric>``:

- ``ood_avg``: per seed, the unweighted mean of that seed's OOD sets (every test set except ``test``), then
  aggregated over seeds (METHODS §1.2: per seed first; the mean equals the mean of the per-set means when every seed
  has the same sets, the std does not);
- ``gap``: per seed, ``test`` minus that seed's OOD average, then aggregated. For accuracies and F1 a positive gap is
  what the row loses out of distribution; for MAE a negative gap is the extra OOD error.

Both are computed only for a seed that has ``test`` and at least one OOD set; their ``n`` counts those seeds.
Mean and std are over seeds of the per-run (4-decimal) metrics, std is the **population** std (ddof=0), both x100
and rounded to 2 decimals (MAE and Corr too: 54.84 means 0.5484); ``n`` is the number of runs that have that cell.
Floats are written with ``%.2f``; NaN (e.g. Corr of a constant prediction, which also makes that seed's OOD average
and gap of Corr NaN, or a cell no run of the row has, then with n = 0) is written as ``nan``. Lines end with
``\\n``; the file is byte-stable for the same run folders.

No oracle column: a run folder keeps only the predictions of the epoch selected on IID valid, so the test metrics
of the other epochs, which an OOD-selected oracle needs, are not in the run folders.
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
    "DEFAULT_PLOT_METRIC",
    "GAP",
    "ID_COLUMNS",
    "IID_SET",
    "OOD_AVG",
    "build_leaderboard",
    "find_runs",
    "leaderboard_figure",
    "leaderboard_markdown",
    "load_run",
    "log_to_wandb",
    "per_seed_table",
    "row_label",
    "write_leaderboard",
]

log = logging.getLogger(__name__)

CONVENTION = "mean ± population std (ddof=0) over n seeds, ×100"
DEFAULT_MD_METRICS: tuple[str, ...] = ("Non0_acc_2", "MAE")
DEFAULT_PLOT_METRIC = "Non0_acc_2"
ID_COLUMNS: tuple[str, ...] = ("method", "label", "dataset", "n_seeds", "seeds", "ood_sets")
IID_SET = "test"
OOD_AVG = "ood_avg"
GAP = "gap"
STATS: tuple[str, ...] = ("mean", "std", "n")
CSV_FLOAT_FORMAT = "%.2f"
CSV_NA_REP = "nan"
_MISSING = "—"
_RESERVED_SETS = (OOD_AVG, GAP)
_WANDB_MODES = ("online", "offline", "disabled", "shared")


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
    a required field, a test set's metrics or its predictions are missing, or a test set is named like a derived
    column (``ood_avg``, ``gap``).
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
    reserved = [s for s in result["test_sets"] if s in _RESERVED_SETS or "/" in s]
    if reserved:
        raise ValueError(
            f"{path}: test set name(s) {reserved} clash with the leaderboard's columns; "
            f"expected names without '/' other than {list(_RESERVED_SETS)}"
        )

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


def row_label(result: dict[str, Any]) -> str:
    """The leaderboard row a run belongs to: its ``label`` (a named variant) or, without one, its method."""
    return str(result.get("label") or result["method"])


# ---------------------------------------------------------------------------------------------------------------------
# Building the table
# ---------------------------------------------------------------------------------------------------------------------


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def _identity(result: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree for two records of the same (label, dataset, seed) to be one and the same job."""
    metrics = {s: {k: _value(result["metrics"][s][k]) for k in METRIC_KEYS} for s in result["test_sets"]}
    # NaN != NaN: compare a canonical text form instead
    return result.get("config_hash"), tuple(result["test_sets"]), json.dumps(metrics, sort_keys=True)


def _load_unique(
    runs: Sequence[Path], recompute: bool
) -> tuple[dict[tuple[str, str], dict[int, dict[str, Any]]], list[Path]]:
    """Group runs by (label, dataset) and seed; identical duplicates are kept once, differing ones raise.

    A label used by two different methods raises too: one row must be one method."""
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    owner: dict[tuple[str, str, int], Path] = {}
    method_of: dict[str, tuple[str, Path]] = {}
    duplicates: list[Path] = []
    for run in runs:
        result = load_run(run, recompute=recompute)
        label, method = row_label(result), str(result["method"])
        if label in method_of and method_of[label][0] != method:
            other_method, other_run = method_of[label]
            raise ValueError(
                f"label {label!r} is used by method {other_method!r} ({other_run}) and by method {method!r} ({run}); "
                "expected one method per label (give the variant its own label)"
            )
        method_of.setdefault(label, (method, run))
        key = (label, str(result["dataset"]), int(result["seed"]))
        if key in owner:
            first = owner[key]
            if _identity(groups[key[:2]][key[2]]) != _identity(result):
                raise ValueError(
                    f"conflicting runs for label={key[0]!r} dataset={key[1]!r} seed={key[2]}: "
                    f"{first} and {run} differ; keep one of them (or give the variant its own label)"
                )
            log.warning("run %s duplicates %s (same config and metrics); counted once", run, first)
            duplicates.append(run)
            continue
        owner[key] = run
        groups.setdefault(key[:2], {})[key[2]] = result
    return groups, duplicates


def _row_order(
    keys: Iterable[tuple[str, str]], method_of: dict[str, str], order: Sequence[str] | None
) -> list[tuple[str, str]]:
    """(label, dataset) keys sorted by method rank, method, plain row before variants, label, dataset."""
    rank = {name: i for i, name in enumerate(order or ())}

    def key(k: tuple[str, str]) -> tuple[Any, ...]:
        label, dataset = k
        method = method_of[label]
        return rank.get(method, len(rank)), method, label != method, label, dataset

    return sorted(keys, key=key)


def _per_seed_ood(result: dict[str, Any]) -> tuple[list[str], dict[str, float], dict[str, float]] | None:
    """(OOD sets, OOD average, IID - OOD average) of one run; ``None`` without ``test`` or without an OOD set."""
    sets = result["test_sets"]
    ood = [s for s in sets if s != IID_SET]
    if IID_SET not in sets or not ood:
        return None
    metrics = result["metrics"]
    avg = {m: sum(_value(metrics[s][m]) for s in ood) / len(ood) for m in METRIC_KEYS}
    gap = {m: _value(metrics[IID_SET][m]) - avg[m] for m in METRIC_KEYS}
    return ood, avg, gap


def _ood_sets_cell(used: Sequence[list[str]], set_order: Sequence[str]) -> str:
    """The ``ood_sets`` cell: the sets averaged, ``name[k/n]`` for one only k of the n averaged seeds have."""
    n = len(used)
    counts = {s: sum(s in sets for sets in used) for s in set_order}
    return ";".join(s if counts[s] == n else f"{s}[{counts[s]}/{n}]" for s in set_order if counts[s])


def _stat_columns(prefix: str) -> list[str]:
    return [f"{prefix}/{m}/{stat}" for m in METRIC_KEYS for stat in STATS]


def build_leaderboard(
    root: str | os.PathLike[str], *, recompute: bool = False, order: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per (label, dataset) over the complete runs below ``root`` (see the module docstring for columns).

    Two runs with the same label, dataset and seed raise ``ValueError`` unless they are the same job (same config
    hash, when recorded, and same metrics), which counts once; so does a label shared by two methods.
    ``df.attrs`` records the complete, incomplete and duplicate run folders.
    """
    complete, incomplete = find_runs(root)
    if incomplete:
        log.warning("%d incomplete run folder(s) (no 'done') ignored below %s", len(incomplete), root)
    groups, duplicates = _load_unique(complete, recompute)
    method_of = {label: str(next(iter(runs.values()))["method"]) for (label, _), runs in groups.items()}

    sets: list[str] = []
    for label, dataset in sorted(groups, key=lambda k: (k[1], k[0])):
        for seed in sorted(groups[(label, dataset)]):
            for name in groups[(label, dataset)][seed]["test_sets"]:
                if name not in sets:
                    sets.append(name)
    if IID_SET in sets:
        sets.remove(IID_SET)
        sets.insert(0, IID_SET)
    ood_order = [s for s in sets if s != IID_SET]

    columns = list(ID_COLUMNS) + [c for s in (*sets, OOD_AVG, GAP) for c in _stat_columns(s)]
    rows: list[dict[str, Any]] = []
    for label, dataset in _row_order(groups, method_of, order):
        runs = groups[(label, dataset)]
        seeds = sorted(runs)
        per_seed = [p for p in (_per_seed_ood(runs[seed]) for seed in seeds) if p is not None]
        row: dict[str, Any] = {
            "method": method_of[label],
            "label": label,
            "dataset": dataset,
            "n_seeds": len(seeds),
            "seeds": ";".join(str(s) for s in seeds),
            "ood_sets": _ood_sets_cell([p[0] for p in per_seed], ood_order),
        }
        for s in sets:
            having = [runs[seed] for seed in seeds if s in runs[seed]["test_sets"]]
            for m in METRIC_KEYS:
                mean, std, n = report_cell(_value(r["metrics"][s][m]) for r in having)
                row[f"{s}/{m}/mean"], row[f"{s}/{m}/std"], row[f"{s}/{m}/n"] = mean, std, n
        for prefix, index in ((OOD_AVG, 1), (GAP, 2)):
            for m in METRIC_KEYS:
                mean, std, n = report_cell(p[index][m] for p in per_seed)
                row[f"{prefix}/{m}/mean"], row[f"{prefix}/{m}/std"], row[f"{prefix}/{m}/n"] = mean, std, n
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


PER_SEED_COLUMNS: tuple[str, ...] = ("label", "method", "dataset", "seed", "set", "metric", "value")


def per_seed_table(
    root: str | os.PathLike[str] | None = None,
    *,
    runs: Sequence[str | os.PathLike[str]] | None = None,
    metric: str = DEFAULT_PLOT_METRIC,
    recompute: bool = False,
) -> pd.DataFrame:
    """One row per (label, dataset, seed, set) over the complete runs below ``root`` (or the run folders
    ``runs``, each of which must be complete): the run's ``metric`` x100 on every test set, plus ``ood_avg`` (that
    seed's mean over its OOD sets) where it exists.

    The long form the leaderboard aggregates and the CI check tests; same loading rules as
    :func:`build_leaderboard` (identical duplicates once, conflicting ones raise)."""
    if metric not in METRIC_KEYS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {list(METRIC_KEYS)}")
    if (root is None) == (runs is None):
        raise ValueError("per_seed_table takes a run root or a list of run folders, not both")
    if runs is not None:
        complete = [Path(r) for r in runs]
        unfinished = [r for r in complete if not (r / "done").is_file() or not (r / "result.json").is_file()]
        if unfinished:
            raise ValueError(f"run folder {unfinished[0]} is not complete (no 'done' or no 'result.json')")
    else:
        complete, incomplete = find_runs(root)
        if incomplete:
            log.warning("%d incomplete run folder(s) (no 'done') ignored below %s", len(incomplete), root)
    groups, _ = _load_unique(complete, recompute)
    records = []
    for (label, dataset), runs in sorted(groups.items()):
        for seed in sorted(runs):
            result = runs[seed]
            values = {name: _value(result["metrics"][name][metric]) for name in result["test_sets"]}
            per_seed = _per_seed_ood(result)
            if per_seed is not None:
                values[OOD_AVG] = per_seed[1][metric]
            method = str(result["method"])
            records += [(label, method, dataset, seed, name, metric, 100.0 * v) for name, v in values.items()]
    return pd.DataFrame.from_records(records, columns=list(PER_SEED_COLUMNS))


def _test_sets_of(df: pd.DataFrame) -> list[str]:
    """The test sets of a leaderboard's columns in column order (``test`` first), without ``ood_avg`` and ``gap``."""
    prefixes = dict.fromkeys(c.split("/")[0] for c in df.columns if c.count("/") == 2)
    return [s for s in prefixes if s not in _RESERVED_SETS]


def _present(sub: pd.DataFrame, name: str, metrics: Sequence[str]) -> bool:
    return any(f"{name}/{m}/n" in sub and bool((sub[f"{name}/{m}/n"] > 0).any()) for m in metrics)


# ---------------------------------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.2f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {list(METRIC_KEYS)}")


def _md_cell(row: pd.Series, prefix: str, metric: str) -> str:
    n = int(row[f"{prefix}/{metric}/n"])
    if n == 0:
        return _MISSING
    mean, std = float(row[f"{prefix}/{metric}/mean"]), float(row[f"{prefix}/{metric}/std"])
    cell = f"{_fmt(mean)} ± {_fmt(std)}"
    return cell if n == int(row["n_seeds"]) else f"{cell} ({n})"


def _sets_line(sub: pd.DataFrame) -> str:
    cells = [(str(r["label"]), str(r["ood_sets"])) for _, r in sub.iterrows()]
    if len({c for _, c in cells}) == 1:
        used = cells[0][1]
        return f"OOD avg over: {_md_escape(used.replace(';', ', ')) if used else 'no OOD set'} (every row)."
    parts = [f"{_md_escape(label)}: {_md_escape(c.replace(';', ', ')) if c else 'none'}" for label, c in cells]
    return "OOD avg over: " + "; ".join(parts) + "."


def leaderboard_markdown(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_MD_METRICS) -> str:
    """Markdown: convention and footnotes, then per dataset one table per metric (a row per label).

    Columns: seeds, IID (``test``), each OOD set the dataset's rows have, OOD avg, gap; missing cells are "—".
    """
    _check_metrics(metrics)
    sets = _test_sets_of(df)
    lines = [
        "# Leaderboard",
        "",
        f"Cells: {CONVENTION} (MAE and Corr too); a cell from fewer seeds than the row's `seeds` shows that "
        "count in parentheses; — = no run of the row has that set. "
        "Each run's metrics are MMSA's, rounded to 4 decimals; Acc-2 variants are named (Has0 / Non0).",
        f"OOD avg = unweighted mean of a seed's OOD sets (every test set except `{IID_SET}`), computed per seed, "
        f"then mean ± std over seeds; gap = IID (`{IID_SET}`) − OOD avg, per seed, then aggregated: a positive "
        "accuracy gap is what the row loses out of distribution, a negative MAE gap is its extra OOD error. "
        f"Both only over seeds that have `{IID_SET}` and at least one OOD set; in the 'OOD avg over' lines, "
        "`set[k/n]` is a set that only k of the n averaged seeds have.",
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
        ood = [s for s in sets if s != IID_SET and _present(sub, s, metrics)]
        header = ["label", "seeds", f"IID ({IID_SET})", *ood, "OOD avg", "gap"]
        prefixes = [IID_SET, *ood, OOD_AVG, GAP]
        lines += ["", f"## {_md_escape(dataset)}"]
        for metric in metrics:
            lines += [
                "",
                f"### {metric}",
                "",
                "| " + " | ".join(_md_escape(h) for h in header) + " |",
                "|---|" + "---:|" * (len(header) - 1),
            ]
            for _, row in sub.iterrows():
                cells = [_md_escape(row["label"]), str(row["n_seeds"])]
                cells += [_md_cell(row, p, metric) if f"{p}/{metric}/n" in row else _MISSING for p in prefixes]
                lines.append("| " + " | ".join(cells) + " |")
        lines += ["", _sets_line(sub)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------------------------------------


def leaderboard_figure(df: pd.DataFrame, metric: str = DEFAULT_PLOT_METRIC) -> Any:
    """A matplotlib Figure (Agg canvas, no pyplot state): one panel per dataset, grouped bars per row label.

    Bars: IID (``test``), each OOD set the dataset has, and the OOD average; height = mean of ``metric`` (x100),
    error bar = population std over seeds. A missing cell has no bar. Each bar series is a ``BarContainer`` whose
    ``get_label()`` is the set name (``IID (test)``, the OOD set, ``OOD avg``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_metrics([metric])
    datasets = sorted(df["dataset"].unique()) if not df.empty else []
    sets = _test_sets_of(df)
    n_labels = max((int((df["dataset"] == d).sum()) for d in datasets), default=1)
    n_bars = max(len(sets) + 1, 2)
    fig = Figure(figsize=(max(6.0, 1.5 + n_labels * (0.3 * n_bars + 0.5)), 3.6 * max(len(datasets), 1)))
    FigureCanvasAgg(fig)
    if not datasets:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "No complete runs", ha="center", va="center")
        ax.set_axis_off()
        return fig
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for ax, dataset in zip(axes, datasets):
        sub = df[df["dataset"] == dataset].reset_index(drop=True)
        series = [s for s in sets if _present(sub, s, [metric])] + [OOD_AVG]
        width = 0.8 / len(series)
        x = np.arange(len(sub), dtype=float)
        for i, name in enumerate(series):
            n = sub[f"{name}/{metric}/n"].to_numpy()
            mean = sub[f"{name}/{metric}/mean"].to_numpy(dtype=float)
            std = sub[f"{name}/{metric}/std"].to_numpy(dtype=float)
            keep = (n > 0) & np.isfinite(mean)
            label = f"IID ({IID_SET})" if name == IID_SET else ("OOD avg" if name == OOD_AVG else name)
            style = {"hatch": "//", "edgecolor": "black", "color": "0.75"} if name == OOD_AVG else {}
            ax.bar(
                x[keep] + (i - (len(series) - 1) / 2) * width,
                mean[keep],
                width,
                yerr=np.nan_to_num(std[keep]),
                capsize=2,
                label=label,
                linewidth=0.5,
                **style,
            )
        ax.set_xticks(x, [str(v) for v in sub["label"]], rotation=20 if len(sub) > 4 else 0)
        ax.set_ylabel(f"{metric} (×100)")
        ax.set_title(f"{dataset}: {metric}, mean ± population std over seeds (no bar: no run has that set)")
        ax.set_xlim(-0.6, len(sub) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", ncols=min(len(series), 6), loc="lower center", bbox_to_anchor=(0.5, 1.1))
    fig.tight_layout()
    return fig


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


def _atomic_write_png(path: Path, fig: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            # no "Software" entry: the bytes do not depend on the matplotlib version string
            fig.savefig(fh, format="png", dpi=110, metadata={"Software": None})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_leaderboard(
    df: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    metrics: Sequence[str] = DEFAULT_MD_METRICS,
    plot_metric: str = DEFAULT_PLOT_METRIC,
) -> tuple[Path, Path, Path]:
    """Write ``leaderboard.csv`` (``%.2f``, NaN as ``nan``), ``leaderboard.md`` and ``leaderboard.png`` atomically.

    Returns the three paths (csv, md, png)."""
    _check_metrics([*metrics, plot_metric])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.png"
    csv_text = df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, na_rep=CSV_NA_REP, lineterminator="\n")
    _atomic_write(csv_path, csv_text)
    _atomic_write(md_path, leaderboard_markdown(df, metrics))
    _atomic_write_png(png_path, leaderboard_figure(df, plot_metric))
    return csv_path, md_path, png_path


# ---------------------------------------------------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------------------------------------------------


def _table_value(x: Any) -> Any:
    """A JSON-clean cell for ``wandb.Table``: NaN -> None, numpy scalars -> Python scalars."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def log_to_wandb(
    df: pd.DataFrame,
    *,
    project: str = "msa-debias-bench",
    name: str | None = None,
    plot: str | os.PathLike[str] | None = None,
) -> bool:
    """Log the leaderboard as a ``wandb.Table`` (key ``leaderboard``) in a new run of job_type ``leaderboard``.

    The plot, when given, is logged too (``leaderboard_plot``). W&B runs offline unless the user set ``WANDB_MODE``
    (``os.environ.setdefault``, never forced); the run is finished with ``wandb.finish()``. Any W&B failure is
    logged as a warning and returns ``False``; it never raises.
    """
    mode = os.environ.setdefault("WANDB_MODE", "offline")
    try:
        import wandb

        # mode and dir are passed explicitly too: W&B reads its environment once per process, so a long-lived
        # process (a test session, a notebook) would otherwise keep the mode of its first run
        run = wandb.init(
            project=project,
            job_type="leaderboard",
            name=name,
            mode=mode if mode in _WANDB_MODES else None,
            dir=os.environ.get("WANDB_DIR") or None,
            config={
                "root": df.attrs.get("root"),
                "complete_runs": len(df.attrs.get("complete_runs", [])),
                "incomplete_runs": len(df.attrs.get("incomplete_runs", [])),
            },
        )
        try:
            data = [[_table_value(v) for v in row] for row in df.itertuples(index=False, name=None)]
            payload: dict[str, Any] = {"leaderboard": wandb.Table(columns=list(df.columns), data=data)}
            if plot is not None:
                payload["leaderboard_plot"] = wandb.Image(str(plot))
            run.log(payload)
        finally:
            wandb.finish()
    except Exception as exc:  # noqa: BLE001 - W&B must never fail the leaderboard
        log.warning("W&B: the leaderboard was not logged (%s: %s)", type(exc).__name__, exc)
        return False
    return True
