"""Run folders -> leaderboard (v2): a pure function of the run folders below a root.

A run folder (docs/design.md#the-run-folder) holds ``config.yaml``, ``result.json``, ``predictions.csv``, ``done``.
Only folders with ``done`` count; the others are reported as incomplete and ignored. With ``recompute=True`` every
per-set metric is recomputed from ``predictions.csv`` with :func:`methods.metrics.msa_metrics` (and the OOD average
and gap from those), so any number in the table can be reproduced from saved predictions. The group metrics
(below) are always computed from ``predictions.csv``.

**Rows.** One row per (label, dataset). A run's label is ``result.json``'s ``"label"`` (a named variant of a method,
e.g. the ablation ``gear_noipw`` of ``gear``), or its method when it has none. A row's **kind** is
``result.json``'s ``"kind"``: ``method`` (ranked), ``reference`` (e.g. the ceiling ``erm_unbiased``) or ``oracle``
(uses ground truth a real dataset does not have); absent or empty = ``method``; the runs of one row must agree.
Rows are sorted by dataset; within a dataset the ``method`` rows come first, then the ``reference`` rows, then the
``oracle`` rows (those two blocks are never ranked against methods). Within each block, rows with a headline are
ordered by headline mean, descending (ties by label), and come before the rows without one, which follow ``order``
(registry method names; other methods alphabetically after them), then the label (the method's plain row first,
then its variants alphabetically).

**Headline** (docs/protocol.md#headline). A dataset's headline set is ``ood_tav`` when a run has it, else the first
(in column order) of its test sets whose name ends with ``_tav`` (real data: the TAV manifest, e.g.
``test_nn_tav``), else none. The headline is Non0 Acc-2 on that set; beside it, worst-group Non0 Acc-2 on the IID
set ``test`` where the data has groups. The OOD average stays as a diagnostic column: on a set where some shortcuts
still agree with the label, a shortcut user can beat a debiased model, so that average must not rank methods.

**Group metrics**. ``predictions.csv`` may carry the ground-truth columns :data:`GROUND_TRUTH_COLUMNS`
(``z_<m>`` in {-1, 0, +1}; ``conflict_<m>`` 1/0, empty where modality m carries no shortcut; ``group`` a string
such as ``+|t+a-v+``; all empty for real data). For every test set whose rows have a ``group``, three Non0 Acc-2
values per run (MMSA's definition: samples with label 0 excluded, sign agreement of ``> 0``; 4 decimals, like the
run's own metrics): ``aligned_acc2`` on the samples where no modality conflicts, ``conflicting_acc2`` on those
where at least one does, ``worst_group_acc2`` the minimum over the groups with at least ``min_group_size``
samples of non-zero label in that set (default :data:`DEFAULT_MIN_GROUP_SIZE`). A value is absent (not counted in
``n``) for a run whose set has no ground truth, no such sample or no such group.

**CSV convention** (``leaderboard.csv``): the leading columns :data:`ID_COLUMNS` are ``method`` (the registered
method), ``label`` (the row), ``kind``, ``dataset``, ``n_seeds``, ``seeds`` (ascending, ``;``-separated),
``ood_sets`` (the OOD sets that entered the row's OOD average, ``;``-separated in column order; a set that only
``k`` of the ``n`` averaged seeds have is written ``name[k/n]``; empty when no seed has an average) and
``headline_set`` (the dataset's headline set; empty when it has none). Then blocks of *cells*; a cell ``X`` is the
five columns ``X/mean``, ``X/std``, ``X/n``, ``X/ci_low``, ``X/ci_high`` (:data:`STATS`):

1. the IID set ``test``: a cell ``test/<metric>`` for each metric of :data:`methods.metrics.METRIC_KEYS`, then the
   cells ``test/aligned_acc2``, ``test/conflicting_acc2``, ``test/worst_group_acc2`` (:data:`GROUP_METRICS`);
2. ``headline`` (the cell ``<headline_set>/Non0_acc_2``, repeated here), ``worst_group`` (the cell
   ``test/worst_group_acc2``, repeated here) and ``bias_id_auroc`` (x100, :func:`bias_id_auroc`: the AUROC of the
   method's per-sample weight or error flag against the true conflict flags on train; n = 0 for methods without);
3. the row against the ``baseline`` row of the same dataset on the headline (:data:`DIFF_COLUMNS`), over the seeds
   both rows have on the headline set (:func:`benchmarks.statistics.paired_difference`): ``headline_diff`` (mean
   paired difference, x100), ``headline_diff_ci_low`` / ``headline_diff_ci_high`` (its 95 % percentile-bootstrap
   interval, resampling paired seeds, x100), ``headline_diff_n`` (the number of paired seeds), ``p_better`` (the
   share of paired seeds where the row is higher, ties 1/2; a fraction, not x100) and ``resolved`` (``True`` when
   the interval excludes 0 and there are at least two pairs). NaN / 0 / ``False`` for the baseline row itself, for
   a dataset without a headline set or without a baseline row;
4. each OOD set, in order of first appearance over the runs sorted by (dataset, label, seed): its 8 metric cells
   and 3 group cells, as for ``test``;
5. last, always present, the cells ``ood_avg/<metric>`` and ``gap/<metric>`` for each metric:

- ``ood_avg``: per seed, the unweighted mean of that seed's OOD sets (every test set except ``test``), then
  aggregated over seeds (per seed first; the mean equals the mean of the per-set means when every seed
  has the same sets, the std does not). A diagnostic, not a ranking (see Headline);
- ``gap``: per seed, ``test`` minus that seed's OOD average, then aggregated. For accuracies and F1 a positive gap is
  what the row loses out of distribution; for MAE a negative gap is the extra OOD error.

Both are computed only for a seed that has ``test`` and at least one OOD set; their ``n`` counts those seeds.
Mean and std are over seeds of the per-run (4-decimal) metrics, std is the **population** std (ddof=0), both x100
and rounded to 2 decimals (MAE and Corr too: 54.84 means 0.5484); ``n`` is the number of runs that have that cell.
``ci_low`` / ``ci_high`` is the 95 % percentile-bootstrap interval for the mean over those runs
(:func:`benchmarks.statistics.bootstrap_mean_ci`: 10,000 resamples of the seeds, numpy Generator seeded with 0, so
the same values give the same interval), x100, 2 decimals; it equals the mean when ``n`` is 1 and is NaN when the
mean is (no run, or a NaN value). Floats are written with ``%.2f``; NaN (e.g. Corr of a constant prediction, which
also makes that seed's OOD average and gap of Corr NaN, or a cell no run of the row has, then with n = 0) is written
as ``nan``; ``resolved`` as ``True`` / ``False``. Lines end with ``\\n``; the file is byte-stable for the same run
folders.

Selection other than IID valid (e.g. the test-domain ``oracle``) is a separate leaderboard: ``--selection NAME``
recomputes every cell from the per-epoch records (``epochs.npz``; `benchmarks.selection`) into
``DIR/selection-NAME/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.selection import DEFAULT_SELECTION, get_selection, model_config, reselect
from benchmarks.statistics import bootstrap_mean_ci, paired_difference
from datamodules.atomic import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)
from methods.metrics import METRIC_KEYS, msa_metrics, report_cell

__all__ = [
    "BASELINE_LABEL",
    "CEILING_LABEL",
    "CONVENTION",
    "DEFAULT_MD_METRICS",
    "DEFAULT_MIN_GROUP_SIZE",
    "DEFAULT_PLOT_METRIC",
    "DIFF_COLUMNS",
    "GAP",
    "GROUND_TRUTH_COLUMNS",
    "GROUP_METRICS",
    "HEADLINE",
    "HEADLINE_METRIC",
    "ID_COLUMNS",
    "IID_SET",
    "KINDS",
    "OOD_AVG",
    "STATS",
    "WORST_GROUP",
    "BIAS_ID",
    "bias_id_auroc",
    "build_leaderboard",
    "find_runs",
    "group_metrics",
    "headline_set",
    "iid_vs_headline_figure",
    "leaderboard_figure",
    "leaderboard_markdown",
    "load_run",
    "log_to_wandb",
    "per_seed_table",
    "row_kind",
    "row_label",
    "run_group_metrics",
    "write_leaderboard",
]

log = logging.getLogger(__name__)

CONVENTION = "mean ± population std (ddof=0) over n seeds, ×100"
DEFAULT_MD_METRICS: tuple[str, ...] = ("Non0_acc_2", "MAE")
DEFAULT_PLOT_METRIC = "Non0_acc_2"
ID_COLUMNS: tuple[str, ...] = (
    "method", "label", "kind", "dataset", "n_seeds", "seeds", "ood_sets", "headline_set", "selection",
    "selected_epochs", "selected_choices", "delayed_term_active",
)
IID_SET = "test"
OOD_AVG = "ood_avg"
GAP = "gap"
HEADLINE = "headline"
WORST_GROUP = "worst_group"
BIAS_ID = "bias_id_auroc"
HEADLINE_METRIC = "Non0_acc_2"
HEADLINE_SET = "ood_tav"
HEADLINE_SUFFIX = "_tav"
BASELINE_LABEL = "baseline"
CEILING_LABEL = "erm_unbiased"
KINDS: tuple[str, ...] = ("method", "reference", "oracle")
STATS: tuple[str, ...] = ("mean", "std", "n", "ci_low", "ci_high")
GROUP_METRICS: tuple[str, ...] = ("aligned_acc2", "conflicting_acc2", "worst_group_acc2")
DIFF_COLUMNS: tuple[str, ...] = (
    "headline_diff",
    "headline_diff_ci_low",
    "headline_diff_ci_high",
    "headline_diff_n",
    "p_better",
    "resolved",
)
MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
CONFLICT_COLUMNS: tuple[str, ...] = tuple(f"conflict_{m}" for m in MODALITIES)
GROUP_COLUMN = "group"
GROUND_TRUTH_COLUMNS: tuple[str, ...] = (*(f"z_{m}" for m in MODALITIES), *CONFLICT_COLUMNS, GROUP_COLUMN)
DEFAULT_MIN_GROUP_SIZE = 10
CSV_FLOAT_FORMAT = "%.2f"
CSV_NA_REP = "nan"
_MISSING = "—"
_RESERVED_SETS = (OOD_AVG, GAP, HEADLINE, WORST_GROUP, BIAS_ID)
_WANDB_MODES = ("online", "offline", "disabled", "shared")


# ---------------------------------------------------------------------------------------------------------------------
# Reading run folders
# ---------------------------------------------------------------------------------------------------------------------


def find_runs(root: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """(complete, incomplete) run folders below ``root``, each sorted by path.

    A run folder is a directory holding ``result.json`` or ``config.yaml``; it is complete when it also holds
    ``done`` and ``result.json``. The search does not descend into run folders, nor into hidden folders (the
    staging folder of a job replacing a complete run).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"run root {root} is not a directory")
    complete: list[Path] = []
    incomplete: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # staging folders of running jobs
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


_DONE_SHA = re.compile(r"^result\.json sha256 ([0-9a-f]{64})$", re.MULTILINE)


def load_run(run_dir: str | os.PathLike[str], *, recompute: bool = False) -> dict[str, Any]:
    """The run's ``result.json``; with ``recompute=True`` its per-set metrics come from ``predictions.csv``.

    Recomputed metrics use :func:`msa_metrics` with 4 decimals, as the run itself does. Raises ``ValueError`` when
    a required field, a test set's metrics or its predictions are missing, a test set is named like a derived
    column (``ood_avg``, ``gap``), or ``result.json`` is not the file the run wrote (the SHA-256 in ``done``).
    """
    run_dir = Path(run_dir)
    path = run_dir / "result.json"
    done = run_dir / "done"
    stamp = done.read_text(encoding="utf-8", errors="replace") if done.is_file() else None
    if stamp is not None and not stamp.strip():
        raise ValueError(f"{done} is empty: the job did not finish writing its folder; delete {run_dir} and rerun it")
    raw = path.read_bytes()
    recorded = _DONE_SHA.search(stamp or "")
    if recorded and hashlib.sha256(raw).hexdigest() != recorded.group(1):
        raise ValueError(
            f"{path} differs from the file the run wrote (its SHA-256 is not the one {done} records): it was edited "
            f"or damaged after the run finished; restore it or delete {run_dir} and rerun the job"
        )
    try:
        result: dict[str, Any] = json.loads(raw.decode("utf-8"))  # accepts the NaN tokens json.dumps writes
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the run folder is damaged: delete it and rerun") from exc
    if not isinstance(result, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(result).__name__}")
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


def row_kind(result: dict[str, Any]) -> str:
    """The kind of a run's row (docs/protocol.md#reference-and-oracle-rows): ``result.json``'s ``"kind"``, ``method``
    when absent or empty."""
    kind = str(result.get("kind") or "method")
    if kind not in KINDS:
        raise ValueError(f"run kind {kind!r} (method {result.get('method')!r}) is not one of {list(KINDS)}")
    return kind


# ---------------------------------------------------------------------------------------------------------------------
# Ground-truth group metrics (from predictions.csv)
# ---------------------------------------------------------------------------------------------------------------------


def _non0_acc2(pred: np.ndarray, label: np.ndarray) -> float:
    """MMSA's Non0 Acc-2, 4 decimals: ``y != 0`` only, ``1[p > 0]`` vs ``1[y > 0]``; NaN without such
    a sample. The same number as ``msa_metrics(pred, label)["Non0_acc_2"]`` (tested) without its other metrics,
    which a table over many groups would pay for many times."""
    nonzero = label != 0
    if not nonzero.any():
        return math.nan
    return float(np.round(np.mean((pred[nonzero] > 0) == (label[nonzero] > 0)), 4))


def group_metrics(
    preds: pd.DataFrame, test_sets: Sequence[str], *, min_group_size: int = DEFAULT_MIN_GROUP_SIZE, source: str = ""
) -> dict[str, dict[str, float]]:
    """``{set: {aligned_acc2, conflicting_acc2, worst_group_acc2}}`` (fractions, 4 decimals) of one run.

    ``preds`` is a run's ``predictions.csv`` read as text with ``prediction`` and ``label`` parsed as floats. Values
    are NaN where undefined: no ground-truth columns, a set whose ``group`` cells are all empty (real data), no
    aligned (or conflicting) sample with a non-zero label, no group with ``min_group_size`` samples of non-zero
    label. Raises ``ValueError`` for a malformed ground truth: a ``group`` column without the ``conflict_<m>``
    columns, a conflict flag other than ``1``, ``0`` or empty, a set with some ``group`` cells empty and others not,
    or a listed set without rows.
    """
    if int(min_group_size) != min_group_size or min_group_size < 1:
        raise ValueError(f"min_group_size must be a positive integer, got {min_group_size!r}")
    nan = dict.fromkeys(GROUP_METRICS, math.nan)
    if GROUP_COLUMN not in preds.columns:
        return {name: dict(nan) for name in test_sets}
    missing = [c for c in CONFLICT_COLUMNS if c not in preds.columns]
    if missing:
        raise ValueError(f"{source}: has a {GROUP_COLUMN!r} column but not {missing}")
    out: dict[str, dict[str, float]] = {}
    for name in test_sets:
        rows = preds[preds["set"] == name]
        if rows.empty:
            raise ValueError(f"{source} has no rows for test set {name!r}")
        group = rows[GROUP_COLUMN].astype(str).str.strip().to_numpy()
        empty = group == ""
        if empty.all():
            out[name] = dict(nan)
            continue
        if empty.any():
            raise ValueError(
                f"{source}: test set {name!r} has {int(empty.sum())} of {empty.size} rows without a {GROUP_COLUMN!r}; "
                "expected every row or none (real data)"
            )
        flags = np.stack([rows[c].astype(str).str.strip().to_numpy() for c in CONFLICT_COLUMNS], axis=1)
        bad = sorted(set(flags[~np.isin(flags, ["", "0", "1"])].tolist()))
        if bad:
            raise ValueError(f"{source}: test set {name!r} has conflict flags {bad[:5]}; expected 1, 0 or empty")
        conflicting = (flags == "1").any(axis=1)
        pred = rows["prediction"].to_numpy(dtype=np.float64)
        label = rows["label"].to_numpy(dtype=np.float64)
        worst = math.nan
        for g in sorted(set(group.tolist())):
            members = group == g
            if int(np.count_nonzero(members & (label != 0))) >= min_group_size:
                acc = _non0_acc2(pred[members], label[members])
                worst = acc if math.isnan(worst) else min(worst, acc)
        out[name] = {
            "aligned_acc2": _non0_acc2(pred[~conflicting], label[~conflicting]),
            "conflicting_acc2": _non0_acc2(pred[conflicting], label[conflicting]),
            "worst_group_acc2": worst,
        }
    return out


def run_group_metrics(
    run_dir: str | os.PathLike[str],
    test_sets: Sequence[str],
    *,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    predictions: Mapping[str, np.ndarray] | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`group_metrics` of a run folder's ``predictions.csv`` (all NaN, with a warning, when it is missing).
    ``predictions`` ({set: array in the file's row order}) replaces a set's predictions, e.g. those of another
    selected epoch (`benchmarks.selection.reselect`); the ground-truth columns stay the file's."""
    path = Path(run_dir) / "predictions.csv"
    if not path.is_file():
        log.warning("%s is missing: no group metrics for that run", path)
        return {name: dict.fromkeys(GROUP_METRICS, math.nan) for name in test_sets}
    preds = _read_predictions(path)
    for name, values in (predictions or {}).items():
        rows = np.flatnonzero((preds["set"] == name).to_numpy())
        if rows.size != len(values):
            raise ValueError(f"{path}: {rows.size} rows for set {name!r}, the selected predictions have {len(values)}")
        preds.loc[preds.index[rows], "prediction"] = np.asarray(values, dtype=np.float64)
    return group_metrics(preds, test_sets, min_group_size=min_group_size, source=str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Building the table
# ---------------------------------------------------------------------------------------------------------------------


def _value(x: Any) -> float:
    return math.nan if x is None else float(x)


def _round2(x: float) -> float:
    return round(x, 2) + 0.0  # as methods.metrics.report_cell: -0.0 -> 0.0, NaN stays NaN


def _identity(result: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree for two records of the same (label, dataset, seed) to be one and the same job."""
    metrics = {s: {k: _value(result["metrics"][s][k]) for k in METRIC_KEYS} for s in result["test_sets"]}
    # NaN != NaN: compare a canonical text form instead
    return result.get("config_hash"), tuple(result["test_sets"]), json.dumps(metrics, sort_keys=True)


def _load_unique(
    runs: Sequence[Path], recompute: bool, selection: str = DEFAULT_SELECTION
) -> tuple[dict[tuple[str, str], dict[int, dict[str, Any]]], list[Path], list[Path]]:
    """Group runs by (label, dataset) and seed; identical duplicates are kept once, differing ones raise.

    A label used by two different methods raises too: one row must be one method. Each kept result records its
    folder under ``"_run_dir"``. Under a ``selection`` other than ``iid_valid`` every run is re-selected from its
    per-epoch records (`benchmarks.selection.reselect`); runs without records are left out and returned third."""
    groups: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    owner: dict[tuple[str, str, int], Path] = {}
    method_of: dict[str, tuple[str, Path]] = {}
    duplicates: list[Path] = []
    unselectable: list[Path] = []
    for run in runs:
        result = load_run(run, recompute=recompute)
        if selection != DEFAULT_SELECTION:
            try:
                result = reselect(run, result, selection)
            except ValueError as exc:
                log.warning("%s; left out under selection %r", exc, selection)
                unselectable.append(run)
                continue
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
        result["_run_dir"] = str(run)
        groups.setdefault(key[:2], {})[key[2]] = result
    return groups, duplicates, unselectable


def _row_kinds(groups: Mapping[tuple[str, str], Mapping[int, dict[str, Any]]]) -> dict[tuple[str, str], str]:
    """The kind of every (label, dataset) row; runs of one row with different kinds raise ``ValueError``."""
    kinds: dict[tuple[str, str], str] = {}
    for key, runs in groups.items():
        found = {seed: row_kind(result) for seed, result in runs.items()}
        if len(set(found.values())) > 1:
            raise ValueError(
                f"row label={key[0]!r} dataset={key[1]!r} mixes kinds {dict(sorted(found.items()))} over its seeds; "
                "expected one kind per row (give the variant its own label)"
            )
        kinds[key] = next(iter(found.values()))
    return kinds


def headline_set(sets: Sequence[str]) -> str:
    """The headline set among ``sets`` (in column order): ``ood_tav``, else the first ``*_tav`` set, else ``""``."""
    if HEADLINE_SET in sets:
        return HEADLINE_SET
    tav = [s for s in sets if s.endswith(HEADLINE_SUFFIX)]
    if len(tav) > 1:
        log.warning("test sets %s all end with %r; the headline is %r", tav, HEADLINE_SUFFIX, tav[0])
    return tav[0] if tav else ""


def _row_order(
    keys: Iterable[tuple[str, str]],
    method_of: Mapping[str, str],
    kind_of: Mapping[tuple[str, str], str],
    headline: Mapping[tuple[str, str], float],
    order: Sequence[str] | None,
) -> list[tuple[str, str]]:
    """(label, dataset) keys: by dataset, kind block (method, reference, oracle), then headline mean descending
    (ties by label), then the rows without a headline by method rank, method, plain row before variants, label."""
    rank = {name: i for i, name in enumerate(order or ())}

    def key(k: tuple[str, str]) -> tuple[Any, ...]:
        label, dataset = k
        block = KINDS.index(kind_of[k])
        h = headline[k]
        if math.isfinite(h):
            return dataset, block, 0, -h, label, ()
        method = method_of[label]
        return dataset, block, 1, 0.0, "", (rank.get(method, len(rank)), method, label != method, label)

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


def _cell_columns(prefix: str) -> list[str]:
    return [f"{prefix}/{stat}" for stat in STATS]


def _set_columns(prefix: str, with_groups: bool = True) -> list[str]:
    names = [*METRIC_KEYS, *(GROUP_METRICS if with_groups else ())]
    return [c for m in names for c in _cell_columns(f"{prefix}/{m}")]


def _cell(values: Iterable[Any]) -> tuple[float, float, int, float, float]:
    """(mean, std, n, ci_low, ci_high) of per-seed values, x100, 2 decimals (see the module docstring)."""
    vals = [_value(v) for v in values]
    mean, std, n = report_cell(vals)
    if n == 0 or any(math.isnan(v) for v in vals):
        return mean, std, n, math.nan, math.nan
    low, high = bootstrap_mean_ci(vals)
    return mean, std, n, _round2(100.0 * low), _round2(100.0 * high)


def _put(row: dict[str, Any], prefix: str, cell: tuple[float, float, int, float, float]) -> None:
    for stat, value in zip(STATS, cell, strict=True):
        row[f"{prefix}/{stat}"] = value


def selected_epoch(result: Mapping[str, Any], set_name: str = "") -> int:
    """The 0-based epoch whose predictions a run reports on ``set_name``: the re-selected one under a post-hoc
    rule, else ``result.json``'s ``selected_epoch`` (-1 when absent)."""
    epochs = result.get("selected_epochs") or {}
    if set_name in epochs:
        return int(epochs[set_name])
    return int(result.get("selected_epoch", -1))


def _choices_cell(results: Sequence[Mapping[str, Any]], target: str) -> str:
    """Per seed, the method's choice re-made by a post-hoc rule on set ``target`` (CLUE's ``alpha=...``),
    ``;``-separated; empty when no run has one (every run under ``iid_valid``, or a method without choices)."""
    choices = [(r.get("selected_candidates") or {}).get(target) for r in results]
    return ";".join(c or "" for c in choices) if any(choices) else ""


def _delayed_term_cell(results: Iterable[Mapping[str, Any]], target: str) -> str:
    """``k/n``: in how many of the row's n runs the method's late-starting term (GEAR's swap) is active at the
    epoch selected for set ``target``; empty for methods without one."""
    from methods import METHODS

    flags = []
    for result in results:
        method = METHODS.get(str(result["method"]))
        if method is None or "_run_dir" not in result:
            continue
        active = method.delayed_term_active(model_config(Path(result["_run_dir"])), selected_epoch(result, target))
        if active is not None:
            flags.append(bool(active))
    return f"{sum(flags)}/{len(flags)}" if flags else ""


def bias_id_auroc(result: Mapping[str, Any]) -> float:
    """The run's bias-identification AUROC (fraction; NaN when the method reports none): JTT's error set at the
    end of stage 1 (``diagnostics.identification``), or a weighting method's per-epoch record
    (``diagnostics.bias_identification``) at the selected epoch (the last record up to it)."""
    diagnostics = result.get("diagnostics") or {}
    single = diagnostics.get("identification")
    if isinstance(single, Mapping) and single.get("auroc") is not None:
        return float(single["auroc"])
    records = [r for r in diagnostics.get("bias_identification") or [] if r.get("auroc") is not None]
    selected = result.get("selected_epoch")
    if selected is not None:
        records = [r for r in records if int(r.get("epoch", -1)) <= int(selected)]
    return float(records[-1]["auroc"]) if records else math.nan


def _seed_values(runs: Mapping[int, dict[str, Any]], name: str, metric: str) -> dict[int, float]:
    """``{seed: metric on set name}`` over the runs that have the set (fractions, as in result.json)."""
    return {seed: _value(r["metrics"][name][metric]) for seed, r in runs.items() if name in r["test_sets"]}


def _percent(result: dict[str, Any], name: str) -> float:
    """The run's headline metric on set ``name``, x100 (unrounded); NaN when the run lacks the set."""
    if not name or name not in result["test_sets"]:
        return math.nan
    return 100.0 * _value(result["metrics"][name][HEADLINE_METRIC])


def build_leaderboard(
    root: str | os.PathLike[str],
    *,
    recompute: bool = False,
    order: Sequence[str] | None = None,
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE,
    selection: str = DEFAULT_SELECTION,
) -> pd.DataFrame:
    """One row per (label, dataset) over the complete runs below ``root`` (see the module docstring for columns,
    row order, the headline, the group metrics and the intervals).

    Two runs with the same label, dataset and seed raise ``ValueError`` unless they are the same job (same config
    hash, when recorded, and same metrics), which counts once; so do a label shared by two methods and a row whose
    runs disagree on the kind. ``min_group_size``: the smallest group (samples with a non-zero label) that enters
    the worst-group accuracy. ``df.attrs`` records the complete, incomplete and duplicate run folders, the
    ``min_group_size`` and, under ``per_seed``, one record per run (label, dataset, kind, seed, ``iid`` and
    ``headline`` Non0 Acc-2 x100, NaN where the run lacks the set) for :func:`iid_vs_headline_figure`.
    ``selection``: a rule of `benchmarks.selection` (default ``iid_valid`` = ``result.json``); under another rule
    every cell is recomputed from the runs' per-epoch records, and runs without records are listed in
    ``df.attrs["unselectable_runs"]``.
    """
    get_selection(selection)
    if int(min_group_size) != min_group_size or min_group_size < 1:
        raise ValueError(f"min_group_size must be a positive integer, got {min_group_size!r}")
    complete, incomplete = find_runs(root)
    if incomplete:
        log.warning("%d incomplete run folder(s) (no 'done') ignored below %s", len(incomplete), root)
    groups, duplicates, unselectable = _load_unique(complete, recompute, selection)
    method_of = {label: str(next(iter(runs.values()))["method"]) for (label, _), runs in groups.items()}
    kind_of = _row_kinds(groups)
    group_values: dict[tuple[str, str, int], dict[str, dict[str, float]]] = {}
    for (label, dataset), runs in groups.items():
        for seed, result in runs.items():
            group_values[(label, dataset, seed)] = run_group_metrics(
                result["_run_dir"], result["test_sets"], min_group_size=min_group_size,
                predictions=result.get("_predictions"),
            )

    sets: list[str] = []
    sets_of: dict[str, list[str]] = {}
    for label, dataset in sorted(groups, key=lambda k: (k[1], k[0])):
        for seed in sorted(groups[(label, dataset)]):
            for name in groups[(label, dataset)][seed]["test_sets"]:
                if name not in sets:
                    sets.append(name)
                sets_of.setdefault(dataset, [])
                if name not in sets_of[dataset]:
                    sets_of[dataset].append(name)
    if IID_SET in sets:
        sets.remove(IID_SET)
        sets.insert(0, IID_SET)
    ood_order = [s for s in sets if s != IID_SET]
    headline_of = {d: headline_set([s for s in sets if s in names]) for d, names in sets_of.items()}

    # headline values per (label, dataset) -> {seed: value}; the baseline of a dataset is its row labelled baseline
    head_values = {
        key: (_seed_values(runs, headline_of[key[1]], HEADLINE_METRIC) if headline_of[key[1]] else {})
        for key, runs in groups.items()
    }
    head_mean = {key: report_cell(v.values())[0] for key, v in head_values.items()}

    columns = [
        *ID_COLUMNS,
        *(_set_columns(IID_SET) if IID_SET in sets else []),
        *_cell_columns(HEADLINE),
        *_cell_columns(WORST_GROUP),
        *_cell_columns(BIAS_ID),
        *DIFF_COLUMNS,
        *(c for s in ood_order for c in _set_columns(s)),
        *(c for s in (OOD_AVG, GAP) for c in _set_columns(s, with_groups=False)),
    ]
    rows: list[dict[str, Any]] = []
    per_seed_records: list[dict[str, Any]] = []
    for label, dataset in _row_order(groups, method_of, kind_of, head_mean, order):
        key = (label, dataset)
        runs = groups[key]
        seeds = sorted(runs)
        per_seed = [p for p in (_per_seed_ood(runs[seed]) for seed in seeds) if p is not None]
        hset = headline_of[dataset]
        row: dict[str, Any] = {
            "method": method_of[label],
            "label": label,
            "kind": kind_of[key],
            "dataset": dataset,
            "n_seeds": len(seeds),
            "seeds": ";".join(str(s) for s in seeds),
            "ood_sets": _ood_sets_cell([p[0] for p in per_seed], ood_order),
            "headline_set": hset,
            "selection": selection,
            "selected_epochs": ";".join(str(selected_epoch(runs[seed], hset)) for seed in seeds),
            "selected_choices": _choices_cell([runs[seed] for seed in seeds], hset or IID_SET),
            "delayed_term_active": _delayed_term_cell([runs[seed] for seed in seeds], hset or IID_SET),
        }
        for s in sets:
            having = [seed for seed in seeds if s in runs[seed]["test_sets"]]
            for m in METRIC_KEYS:
                _put(row, f"{s}/{m}", _cell(_value(runs[seed]["metrics"][s][m]) for seed in having))
            for g in GROUP_METRICS:
                vals = [group_values[(label, dataset, seed)][s][g] for seed in having]
                _put(row, f"{s}/{g}", _cell(v for v in vals if not math.isnan(v)))
        for prefix, index in ((OOD_AVG, 1), (GAP, 2)):
            for m in METRIC_KEYS:
                _put(row, f"{prefix}/{m}", _cell(p[index][m] for p in per_seed))

        head_cell = [row.get(f"{hset}/{HEADLINE_METRIC}/{stat}", math.nan) for stat in STATS] if hset else []
        _put(row, HEADLINE, tuple(head_cell) if hset else (math.nan, math.nan, 0, math.nan, math.nan))
        worst = [row.get(f"{IID_SET}/worst_group_acc2/{stat}", math.nan) for stat in STATS]
        _put(row, WORST_GROUP, tuple(worst) if IID_SET in sets else (math.nan, math.nan, 0, math.nan, math.nan))
        _put(row, BIAS_ID, _cell(v for v in (bias_id_auroc(runs[seed]) for seed in seeds) if not math.isnan(v)))

        base_key = (BASELINE_LABEL, dataset)
        diff = {"n_pairs": 0, "mean_diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_better": math.nan}
        if hset and base_key in groups and key != base_key:
            diff = paired_difference(head_values[key], head_values[base_key])
        row["headline_diff"] = _round2(100.0 * diff["mean_diff"])
        row["headline_diff_ci_low"] = _round2(100.0 * diff["ci_low"])
        row["headline_diff_ci_high"] = _round2(100.0 * diff["ci_high"])
        row["headline_diff_n"] = diff["n_pairs"]
        row["p_better"] = diff["p_better"]
        row["resolved"] = bool(diff.get("resolved", False))
        rows.append(row)

        for seed in seeds:
            per_seed_records.append(
                {
                    "label": label,
                    "dataset": dataset,
                    "kind": kind_of[key],
                    "seed": seed,
                    "iid": _percent(runs[seed], IID_SET),
                    "headline": _percent(runs[seed], hset),
                }
            )

    df = pd.DataFrame(rows, columns=columns)
    for col in columns:
        if col.endswith("/n") or col in ("n_seeds", "headline_diff_n"):
            df[col] = df[col].astype("int64")
        elif col == "resolved":
            df[col] = df[col].astype("bool")
        elif col.endswith(("/mean", "/std", "/ci_low", "/ci_high")) or col in DIFF_COLUMNS:
            df[col] = df[col].astype("float64")
    df.attrs.update(
        root=str(root),
        complete_runs=[str(p) for p in complete],
        incomplete_runs=[str(p) for p in incomplete],
        duplicate_runs=[str(p) for p in duplicates],
        min_group_size=int(min_group_size),
        per_seed=per_seed_records,
        selection=selection,
        unselectable_runs=[str(p) for p in unselectable],
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
    groups, _, _ = _load_unique(complete, recompute)
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


def _signed(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:+.2f}"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in METRIC_KEYS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {list(METRIC_KEYS)}")


def _md_stat(row: pd.Series, prefix: str, *, interval: bool = False) -> str:
    """``mean ± std`` (``[ci_low, ci_high]`` with ``interval``) of the cell ``prefix``; ``(n)`` when n < seeds."""
    n = int(row[f"{prefix}/n"])
    if n == 0:
        return _MISSING
    cell = f"{_fmt(float(row[f'{prefix}/mean']))} ± {_fmt(float(row[f'{prefix}/std']))}"
    if interval:
        cell += f" [{_fmt(float(row[f'{prefix}/ci_low']))}, {_fmt(float(row[f'{prefix}/ci_high']))}]"
    return cell if n == int(row["n_seeds"]) else f"{cell} ({n})"


def _md_cell(row: pd.Series, prefix: str, metric: str) -> str:
    return _md_stat(row, f"{prefix}/{metric}") if f"{prefix}/{metric}/n" in row else _MISSING


def _sets_line(sub: pd.DataFrame) -> str:
    cells = [(str(r["label"]), str(r["ood_sets"])) for _, r in sub.iterrows()]
    if len({c for _, c in cells}) == 1:
        used = cells[0][1]
        return f"OOD avg over: {_md_escape(used.replace(';', ', ')) if used else 'no OOD set'} (every row)."
    parts = [f"{_md_escape(label)}: {_md_escape(c.replace(';', ', ')) if c else 'none'}" for label, c in cells]
    return "OOD avg over: " + "; ".join(parts) + "."


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(h) for h in header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _resolved_cell(row: pd.Series) -> str:
    if row["label"] == BASELINE_LABEL:
        return "baseline"
    if int(row["headline_diff_n"]) == 0:
        return _MISSING
    return "resolved" if bool(row["resolved"]) else "not resolved"


def _headline_rows(sub: pd.DataFrame, with_worst: bool) -> list[list[str]]:
    out = []
    for _, row in sub.iterrows():
        cells = [_md_escape(row["label"]), str(row["kind"]), str(row["n_seeds"])]
        cells.append(_md_cell(row, IID_SET, HEADLINE_METRIC))
        cells.append(_md_stat(row, HEADLINE, interval=True))
        if with_worst:
            cells.append(_md_stat(row, WORST_GROUP))
        n_pairs = int(row["headline_diff_n"])
        if n_pairs:
            low, high = float(row["headline_diff_ci_low"]), float(row["headline_diff_ci_high"])
            cells += [
                f"{_signed(float(row['headline_diff']))} [{_fmt(low)}, {_fmt(high)}]",
                str(n_pairs),
                _fmt(float(row["p_better"])),
            ]
        else:
            cells += [_MISSING, _MISSING, _MISSING]
        cells.append(_resolved_cell(row))
        cells.append(str(row["selected_epochs"]).replace(";", ", "))
        cells.append(str(row["delayed_term_active"]) or _MISSING)
        out.append(cells)
    return out


def leaderboard_markdown(df: pd.DataFrame, metrics: Sequence[str] = DEFAULT_MD_METRICS) -> str:
    """Markdown: convention and footnotes, then per dataset the headline table (method rows ranked by the headline,
    then the reference and oracle rows in a table of their own), one diagnostic table per metric (a row per label;
    seeds, IID, each OOD set, OOD avg, gap) and, where the data has ground-truth groups, the group accuracies.
    Missing cells are "—".
    """
    _check_metrics(metrics)
    sets = _test_sets_of(df)
    min_group = df.attrs.get("min_group_size", DEFAULT_MIN_GROUP_SIZE)
    lines = [
        "# Leaderboard",
        "",
        f"Cells: {CONVENTION} (MAE and Corr too); a cell from fewer seeds than the row's `seeds` shows that "
        "count in parentheses; — = no run of the row has that set. "
        "Each run's metrics are MMSA's, rounded to 4 decimals; Acc-2 variants are named (Has0 / Non0).",
        f"Headline (docs/protocol.md#headline): {HEADLINE_METRIC} on the set where every shortcut is broken "
        f"(`{HEADLINE_SET}`; on real data the `*{HEADLINE_SUFFIX}` set), with its 95 % interval in brackets; "
        f"worst group = the lowest {HEADLINE_METRIC} over the ground-truth groups of IID `{IID_SET}` with at least "
        f"{min_group} samples of non-zero label (only where the data has groups). Method rows are ranked by the "
        "headline mean; reference and oracle rows (docs/protocol.md#reference-and-oracle-rows) say what is possible "
        "on the data and are listed apart, never ranked.",
        "Intervals: 95 % percentile bootstrap over seeds (10,000 resamples, seeded); every cell's interval is in "
        f"the CSV (`ci_low`, `ci_high`). Δ vs baseline = the paired difference of the headline to the "
        f"`{BASELINE_LABEL}` row over the seeds both have, with its interval; P(> baseline) = the share of those "
        "seeds where the row is higher (ties count 1/2); **not resolved** = that interval includes 0 (or fewer than "
        "two paired seeds): the seeds cannot tell the row from the baseline.",
        f"OOD avg = unweighted mean of a seed's OOD sets (every test set except `{IID_SET}`), computed per seed, "
        f"then mean ± std over seeds; gap = IID (`{IID_SET}`) − OOD avg, per seed, then aggregated: a positive "
        "accuracy gap is what the row loses out of distribution, a negative MAE gap is its extra OOD error. "
        f"Both only over seeds that have `{IID_SET}` and at least one OOD set; in the 'OOD avg over' lines, "
        "`set[k/n]` is a set that only k of the n averaged seeds have. The OOD avg is a diagnostic, not a "
        "ranking: on a set where some shortcuts still agree with the label, a shortcut user can beat a debiased "
        "model.",
    ]
    rule = df.attrs.get("selection", DEFAULT_SELECTION)
    lines.append(
        f"Selection: `{rule}` (`msabench leaderboard --selection`; docs/protocol.md#model-selection). epochs = the "
        "0-based epoch each seed reports on the headline set; late term on = in how many seeds a debiasing term "
        "that starts late (GEAR's swap) is active at that epoch."
        + (" Test-set selection: an upper bound on what selection gives, never a result." if rule == "oracle" else "")
    )
    if df.attrs.get("unselectable_runs"):
        lines.append(
            f"Left out (no per-epoch records, written before they existed; `iid_valid` still reads them): "
            f"{len(df.attrs['unselectable_runs'])} run(s): "
            + ", ".join(f"`{Path(p).name}`" for p in df.attrs["unselectable_runs"])
        )
    if df.attrs.get("incomplete_runs") is not None:
        lines.append(
            f"Runs: {len(df.attrs.get('complete_runs', []))} complete, "
            f"{len(df.attrs['incomplete_runs'])} incomplete (no `done`, ignored)."
        )
    if df.empty:
        lines += ["", "No complete runs."]
    for dataset in sorted(df["dataset"].unique()) if not df.empty else []:
        sub = df[df["dataset"] == dataset]
        lines += ["", f"## {_md_escape(dataset)}"]

        hset = str(sub["headline_set"].iloc[0])
        if hset:
            with_worst = bool((sub[f"{WORST_GROUP}/n"] > 0).any())
            header = ["label", "kind", "seeds", f"IID ({IID_SET})", f"headline ({hset})"]
            header += [f"worst group ({IID_SET})"] if with_worst else []
            header += ["Δ vs baseline [95% CI]", "pairs", "P(> baseline)", "vs baseline", "epochs", "late term on"]
            ranked, apart = sub[sub["kind"] == "method"], sub[sub["kind"] != "method"]
            lines += ["", f"### Headline: {HEADLINE_METRIC} on `{_md_escape(hset)}`", ""]
            lines += _table(header, _headline_rows(ranked, with_worst)) if not ranked.empty else ["No method rows."]
            if not apart.empty:
                lines += ["", "Reference and oracle rows (not ranked):", ""]
                lines += _table(header, _headline_rows(apart, with_worst))
        else:
            lines += [
                "",
                f"No headline set (no `{HEADLINE_SET}` or `*{HEADLINE_SUFFIX}` test set): rows follow the registry "
                "order within each kind.",
            ]

        with_bias_id = sub[sub[f"{BIAS_ID}/n"] > 0]
        if not with_bias_id.empty:
            lines += [
                "",
                "Bias identification: AUROC x100 of the method's per-sample weight (GEAR, LfF: at the selected "
                "epoch) or stage-1 error flag (JTT) against the true conflict flags of the training samples "
                "(50 = chance; below 50 = the weight favours bias-aligned samples).",
                "",
                *_table(
                    ["label", "seeds", "AUROC x100"],
                    [
                        [_md_escape(r["label"]), str(r["n_seeds"]), _md_stat(r, BIAS_ID)]
                        for _, r in with_bias_id.iterrows()
                    ],
                ),
            ]

        ood = [s for s in sets if s != IID_SET and _present(sub, s, metrics)]
        header = ["label", "kind", "seeds", f"IID ({IID_SET})", *ood, "OOD avg", "gap"]
        prefixes = [IID_SET, *ood, OOD_AVG, GAP]
        for metric in metrics:
            rows = [
                [_md_escape(row["label"]), str(row["kind"]), str(row["n_seeds"])]
                + [_md_cell(row, p, metric) for p in prefixes]
                for _, row in sub.iterrows()
            ]
            lines += ["", f"### {metric}", "", *_table(header, rows)]

        group_sets = [s for s in sets if _present(sub, s, GROUP_METRICS)]
        if group_sets:
            rows = [
                [_md_escape(row["label"]), str(row["kind"]), s] + [_md_cell(row, s, g) for g in GROUP_METRICS]
                for _, row in sub.iterrows()
                for s in group_sets
            ]
            lines += [
                "",
                f"### Ground-truth groups: {HEADLINE_METRIC}",
                "",
                f"aligned = samples where no modality's shortcut conflicts with the label, conflicting = at least one "
                f"does, worst group = the lowest group (groups with at least {min_group} samples of non-zero label).",
                "",
                *_table(["label", "kind", "set", "aligned", "conflicting", "worst group"], rows),
            ]
        lines += ["", _sets_line(sub)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------------------

_KIND_MARKERS = {"method": "o", "reference": "s", "oracle": "^"}


def _tick_label(row: pd.Series) -> str:
    return str(row["label"]) if row["kind"] == "method" else f"{row['label']}\n({row['kind']})"


def leaderboard_figure(df: pd.DataFrame, metric: str = DEFAULT_PLOT_METRIC) -> Any:
    """A matplotlib Figure (Agg canvas, no pyplot state): one panel per dataset, grouped bars per row label.

    Bars: IID (``test``), each OOD set the dataset has, and the OOD average; height = mean of ``metric`` (x100),
    error bar = population std over seeds. A missing cell has no bar. Each bar series is a ``BarContainer`` whose
    ``get_label()`` is the set name (``IID (test)``, the OOD set, ``OOD avg``). The y axis starts a little below the
    lowest value shown (mean − std), not at 0; rows of kind ``reference`` / ``oracle`` have it under their label.
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
        shown: list[np.ndarray] = []
        for i, name in enumerate(series):
            n = sub[f"{name}/{metric}/n"].to_numpy()
            mean = sub[f"{name}/{metric}/mean"].to_numpy(dtype=float)
            std = sub[f"{name}/{metric}/std"].to_numpy(dtype=float)
            keep = (n > 0) & np.isfinite(mean)
            err = np.nan_to_num(std[keep])
            shown += [mean[keep] - err, mean[keep] + err]
            label = f"IID ({IID_SET})" if name == IID_SET else ("OOD avg" if name == OOD_AVG else name)
            style = {"hatch": "//", "edgecolor": "black", "color": "0.75"} if name == OOD_AVG else {}
            ax.bar(
                x[keep] + (i - (len(series) - 1) / 2) * width,
                mean[keep],
                width,
                yerr=err,
                capsize=2,
                label=label,
                linewidth=0.5,
                **style,
            )
        values = np.concatenate(shown) if shown else np.empty(0)
        if values.size:
            low, high = float(values.min()), float(values.max())
            pad = max(0.05 * (high - low), 1.0)
            ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(x, [_tick_label(r) for _, r in sub.iterrows()], rotation=20 if len(sub) > 4 else 0)
        ax.set_ylabel(f"{metric} (×100)")
        ax.set_title(
            f"{dataset}: {metric}, mean ± population std over seeds (y axis not from 0; no bar: no run has that set)"
        )
        ax.set_xlim(-0.6, len(sub) - 0.4)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="small", ncols=min(len(series), 6), loc="lower center", bbox_to_anchor=(0.5, 1.1))
    fig.tight_layout()
    return fig


def _seed_points(df: pd.DataFrame, row: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(IID, headline) x100 of every seed of ``row`` that has both (from ``df.attrs['per_seed']``); without those
    records (a table read back from CSV), the row's two means."""
    records = df.attrs.get("per_seed")
    if records is None:
        pairs = [(float(row[f"{IID_SET}/{HEADLINE_METRIC}/mean"]), float(row[f"{HEADLINE}/mean"]))]
    else:
        pairs = [
            (r["iid"], r["headline"]) for r in records if r["label"] == row["label"] and r["dataset"] == row["dataset"]
        ]
    pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    return np.asarray([a for a, _ in pairs], dtype=float), np.asarray([b for _, b in pairs], dtype=float)


def iid_vs_headline_figure(df: pd.DataFrame) -> Any:
    """Accuracy on the line: a matplotlib Figure (Agg canvas), one panel per dataset with a headline set.

    x = IID (``test``) Non0 Acc-2, y = headline Non0 Acc-2 (both x100), one point per run (seed), one colour per row
    (a ``PathCollection`` labelled with the row label), marker by kind (method ``o``, reference ``s``, oracle
    ``^``); the dashed diagonal y = x (label ``y = x``) and, when the dataset has an ``erm_unbiased`` row, the
    ceiling as a horizontal line at its mean headline (label ``ceiling (erm_unbiased) ...``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    datasets = (
        sorted(d for d in df["dataset"].unique() if str(df.loc[df["dataset"] == d, "headline_set"].iloc[0]))
        if not df.empty
        else []
    )
    fig = Figure(figsize=(8.0, 5.2 * max(len(datasets), 1)))
    FigureCanvasAgg(fig)
    if not datasets:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "No headline set (no ood_tav or *_tav test set)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    colours = [f"C{i}" for i in range(10)]
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for ax, dataset in zip(axes, datasets):
        sub = df[df["dataset"] == dataset].reset_index(drop=True)
        hset = str(sub["headline_set"].iloc[0])
        everything: list[float] = []
        for i, (_, row) in enumerate(sub.iterrows()):
            xs, ys = _seed_points(df, row)
            everything += [*xs.tolist(), *ys.tolist()]
            kind = str(row["kind"])
            ax.scatter(
                xs,
                ys,
                color=colours[i % len(colours)],
                marker=_KIND_MARKERS.get(kind, "o"),
                s=40,
                edgecolors="black",
                linewidths=0.5,
                label=str(row["label"]) if kind == "method" else f"{row['label']} ({kind})",
            )
        ceiling = sub[sub["label"] == CEILING_LABEL]
        ceiling_mean = float(ceiling[f"{HEADLINE}/mean"].iloc[0]) if not ceiling.empty else math.nan
        if math.isfinite(ceiling_mean):
            everything.append(ceiling_mean)
        low, high = (min(everything), max(everything)) if everything else (0.0, 100.0)
        pad = max(0.05 * (high - low), 1.0)
        low, high = low - pad, high + pad
        ax.plot([low, high], [low, high], linestyle="--", color="0.5", linewidth=1.0, label="y = x")
        if math.isfinite(ceiling_mean):
            ax.axhline(
                ceiling_mean,
                color="green",
                linestyle=":",
                linewidth=1.5,
                label=f"ceiling ({CEILING_LABEL}) {ceiling_mean:.2f}",
            )
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"IID ({IID_SET}) {HEADLINE_METRIC} (×100)")
        ax.set_ylabel(f"headline ({hset}) {HEADLINE_METRIC} (×100)")
        ax.set_title(f"{dataset}: IID vs headline, one point per seed")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------


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
) -> tuple[Path, Path, Path, Path]:
    """Write ``leaderboard.csv`` (``%.2f``, NaN as ``nan``), ``leaderboard.md``, ``leaderboard.png`` (the bars of
    :func:`leaderboard_figure`) and ``leaderboard_iid_vs_headline.png`` (:func:`iid_vs_headline_figure`) atomically.

    Returns the four paths (csv, md, bar png, IID-vs-headline png)."""
    _check_metrics([*metrics, plot_metric])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "leaderboard.csv", out / "leaderboard.md"
    png_path, line_path = out / "leaderboard.png", out / "leaderboard_iid_vs_headline.png"
    csv_text = df.to_csv(index=False, float_format=CSV_FLOAT_FORMAT, na_rep=CSV_NA_REP, lineterminator="\n")
    atomic_write_text(csv_path, csv_text)
    atomic_write_text(md_path, leaderboard_markdown(df, metrics))
    _atomic_write_png(png_path, leaderboard_figure(df, plot_metric))
    _atomic_write_png(line_path, iid_vs_headline_figure(df))
    return csv_path, md_path, png_path, line_path


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
    line_plot: str | os.PathLike[str] | None = None,
) -> bool:
    """Log the leaderboard as a ``wandb.Table`` (key ``leaderboard``) in a new run of job_type ``leaderboard``.

    The plots, when given, are logged too (``leaderboard_plot``: the bars; ``leaderboard_iid_vs_headline``: the
    IID-vs-headline scatter). W&B runs offline unless the user set ``WANDB_MODE``
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
            if line_plot is not None:
                payload["leaderboard_iid_vs_headline"] = wandb.Image(str(line_plot))
            run.log(payload)
        finally:
            wandb.finish()
    except Exception as exc:  # noqa: BLE001 - W&B must never fail the leaderboard
        log.warning("W&B: the leaderboard was not logged (%s: %s)", type(exc).__name__, exc)
        return False
    return True
