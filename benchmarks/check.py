"""CI regression check of OOD accuracy: a small fixed sweep compared with committed reference results.

The reference (``benchmarks/reference/<sweep>.csv``) holds, per row label x dataset x OOD set,
the mean and population std over seeds of ``Non0_acc_2`` (x100), taken from the leaderboard of
the same sweep. A cell regresses when its new mean falls below the reference mean by more than
the tolerance

    tol = max(K_STD * reference std, MIN_TOL)      (K_STD = 2, MIN_TOL = 1.0 point)

so a method whose accuracy varies a lot between seeds gets a wider band, and bit-level noise from
other library versions never fails the check. Same config + seed on CPU gives the same numbers,
so on the reference machine the check reproduces the reference exactly.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

METRIC = "Non0_acc_2"
K_STD = 2.0
MIN_TOL = 1.0
REFERENCE_COLUMNS = ("label", "dataset", "set", "metric", "mean", "std", "n")


@dataclass(frozen=True)
class Regression:
    label: str
    dataset: str
    test_set: str
    metric: str
    reference: float
    new: float
    tolerance: float

    def __str__(self) -> str:
        return (
            f"method {self.label} on {self.dataset}, set {self.test_set}: {self.metric} {self.new:.2f} is "
            f"{self.reference - self.new:.2f} points below the reference {self.reference:.2f} "
            f"(tolerance {self.tolerance:.2f})"
        )


def _row_label(row: pd.Series) -> str:
    label = row.get("label")
    return str(label) if isinstance(label, str) and label else str(row["method"])


def reference_table(board: pd.DataFrame, metric: str = METRIC) -> pd.DataFrame:
    """The OOD cells of a leaderboard as a reference table (one row per label x dataset x set).

    OOD sets are every ``<set>/<metric>/mean`` column except the IID ``test`` and the ``gap``."""
    records = []
    for _, row in board.iterrows():
        for column in board.columns:
            parts = column.split("/")
            if len(parts) != 3 or parts[1] != metric or parts[2] != "mean" or parts[0] in ("test", "gap"):
                continue
            test_set = parts[0]
            mean, std, n = row[column], row[f"{test_set}/{metric}/std"], row[f"{test_set}/{metric}/n"]
            if n == 0 or (isinstance(mean, float) and math.isnan(mean)):
                continue
            records.append((_row_label(row), row["dataset"], test_set, metric, float(mean), float(std), int(n)))
    return pd.DataFrame.from_records(records, columns=list(REFERENCE_COLUMNS))


def compare(reference: pd.DataFrame, current: pd.DataFrame) -> tuple[list[Regression], list[str]]:
    """(regressions, problems): cells below reference by more than the tolerance, and reference
    cells that the current results lack (a missing cell is a failure too: nothing was measured)."""
    regressions: list[Regression] = []
    missing: list[str] = []
    now = {(r.label, r.dataset, r.set, r.metric): r for r in current.itertuples(index=False)}
    for ref in reference.itertuples(index=False):
        key = (ref.label, ref.dataset, ref.set, ref.metric)
        if key not in now:
            missing.append(f"method {ref.label} on {ref.dataset}, set {ref.set}: {ref.metric} missing from the results")
            continue
        tol = max(K_STD * float(ref.std), MIN_TOL)
        if now[key].mean < ref.mean - tol:
            regressions.append(Regression(ref.label, ref.dataset, ref.set, ref.metric, ref.mean, now[key].mean, tol))
    return regressions, missing


def read_reference(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference {path} does not exist; create it with `msabench check --update-reference`")
    table = pd.read_csv(path, dtype={"label": str, "dataset": str, "set": str, "metric": str})
    if tuple(table.columns) != REFERENCE_COLUMNS:
        raise ValueError(f"{path}: columns {list(table.columns)}, expected {list(REFERENCE_COLUMNS)}")
    return table


def write_reference(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the reference CSV atomically (sorted, 2 decimals)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.sort_values(["dataset", "label", "set"]).reset_index(drop=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as f:
        table.to_csv(f, index=False, float_format="%.2f", lineterminator="\n")
    os.replace(tmp, path)
    return path
