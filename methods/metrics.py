"""MSA regression metrics, MMSA-exact (docs/protocol.md#metrics), seed aggregation and online logging helpers.

Reported numbers come only from :func:`msa_metrics`, computed once per (run, test set) on gathered per-sample
predictions in float64 with numpy + scikit-learn. :class:`OnlineMSAMetrics` (torchmetrics) is for per-step
logging only and never feeds a leaderboard.

Reporting convention (docs/protocol.md#statistics): a run's metrics are rounded to 4 decimals like MMSA; a cell is
the mean and the **population** std (ddof=0) over seeds, x100, 2 decimals (MAE and Corr too), with the seed count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import torch
import torchmetrics
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics.classification import BinaryAccuracy
from torchmetrics.regression import MeanAbsoluteError

__all__ = [
    "METRIC_KEYS",
    "SELECTION_MODES",
    "SelectionKey",
    "OnlineMSAMetrics",
    "aggregate",
    "msa_metrics",
    "report_cell",
    "selection_value",
]

METRIC_KEYS: tuple[str, ...] = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)

#: The model-selection keys (``selection.key``; docs/protocol.md#model-selection; ``mae`` is the default).
SelectionKey = Literal["mae", "acc2_mean"]
#: selection key -> direction in which the key improves (one entry per SelectionKey).
SELECTION_MODES: dict[str, str] = {"mae": "min", "acc2_mean": "max"}


# ---------------------------------------------------------------------------------------------------------------------
# Offline (reported) metrics
# ---------------------------------------------------------------------------------------------------------------------


def _as_float64(x: Any, name: str) -> np.ndarray:
    """Flatten a numpy array, torch tensor (any float dtype, any device) or sequence to a float64 vector."""
    if isinstance(x, torch.Tensor):
        # bfloat16 / float16 have no direct numpy equivalent: cast on the torch side first.
        arr = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} must be numeric (numpy array, torch tensor or sequence): {err}") from err
    return arr.reshape(-1)


def _validate(pred: Any, label: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _as_float64(pred, "pred")
    y = _as_float64(label, "label")
    if p.size != y.size:
        raise ValueError(f"pred and label must have the same length, got {p.size} and {y.size}")
    if p.size < 1:
        raise ValueError("pred and label must contain at least one sample")
    for name, arr in (("pred", p), ("label", y)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf) out of {arr.size}")
    return p, y


def _pearson(p: np.ndarray, y: np.ndarray) -> float:
    """``np.corrcoef(p, y)[0, 1]``; NaN (never 0, no warning) when either vector is constant."""
    if p.size < 2 or np.ptp(p) == 0.0 or np.ptp(y) == 0.0:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.corrcoef(p, y)[0, 1])


def _acc_f1(truth: np.ndarray, preds: np.ndarray) -> tuple[float, float]:
    acc = float(accuracy_score(truth, preds))
    # zero_division only matters for classes absent from both vectors, which do not enter the weighted mean;
    # it silences sklearn's UndefinedMetricWarning without changing any value.
    f1 = float(f1_score(truth, preds, average="weighted", zero_division=0.0))
    return acc, f1


def msa_metrics(pred: Any, label: Any, *, decimals: int | None = 4) -> dict[str, float]:
    """MMSA regression metrics of predictions ``pred`` against labels ``label`` (docs/protocol.md#metrics).

    Inputs are flattened and cast to float64. ``p = 0`` counts as non-negative in Has0 and as negative in Non0;
    Non0 uses only samples with ``y != 0`` (NaN if there are none). Acc-5/Acc-7 clip ``p`` and ``y`` before
    ``np.round`` (half to even). MAE and Corr are unclipped; Corr is NaN for a constant vector. Values are rounded
    to ``decimals`` like MMSA (``None``: unrounded). Returns a dict in :data:`METRIC_KEYS` order.
    """
    p, y = _validate(pred, label)

    has0_acc, has0_f1 = _acc_f1(y >= 0, p >= 0)

    nonzero = y != 0
    if nonzero.any():
        non0_acc, non0_f1 = _acc_f1(y[nonzero] > 0, p[nonzero] > 0)
    else:
        non0_acc = non0_f1 = math.nan

    acc5 = float(np.mean(np.round(np.clip(p, -2.0, 2.0)) == np.round(np.clip(y, -2.0, 2.0))))
    acc7 = float(np.mean(np.round(np.clip(p, -3.0, 3.0)) == np.round(np.clip(y, -3.0, 3.0))))
    mae = float(np.mean(np.abs(p - y)))
    corr = _pearson(p, y)

    values = (has0_acc, has0_f1, non0_acc, non0_f1, acc5, acc7, mae, corr)
    if decimals is not None:
        # MMSA applies round(np.float64, 4), i.e. numpy's rounding.
        values = tuple(float(np.round(v, decimals)) for v in values)
    return dict(zip(METRIC_KEYS, values, strict=True))


# ---------------------------------------------------------------------------------------------------------------------
# Aggregation over seeds and model selection
# ---------------------------------------------------------------------------------------------------------------------


def aggregate(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, population std (ddof=0) and count of per-seed values. NaN propagates; no values -> (nan, nan, 0)."""
    arr = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=0)), n


def _round2(x: float) -> float:
    r = round(x, 2)
    return r + 0.0  # turns -0.0 into 0.0 so tables never show "-0.00"; NaN stays NaN


def report_cell(values: Iterable[float]) -> tuple[float, float, int]:
    """A leaderboard cell: (round(100*mean, 2), round(100*std, 2), n), std with ddof=0 (docs/protocol.md#statistics)."""
    mean, std, n = aggregate(values)
    return _round2(100.0 * mean), _round2(100.0 * std), n


def selection_value(metrics: Mapping[str, float], key: str) -> float:
    """The model-selection value of ``metrics`` for ``key``; see :data:`SELECTION_MODES` for its direction."""
    if key == "mae":
        return float(metrics["MAE"])
    if key == "acc2_mean":
        return (float(metrics["Has0_acc_2"]) + float(metrics["Non0_acc_2"])) / 2.0
    raise ValueError(f"unknown selection key {key!r}; valid keys: {sorted(SELECTION_MODES)}")


# ---------------------------------------------------------------------------------------------------------------------
# Online (logging-only) metrics
# ---------------------------------------------------------------------------------------------------------------------


class _Has0Acc2(BinaryAccuracy):
    """Has0 Acc-2 on raw scores: binarises explicitly (``>= 0``) and feeds integer tensors."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update((preds.reshape(-1) >= 0).long(), (target.reshape(-1) >= 0).long())


class _Non0Acc2(BinaryAccuracy):
    """Non0 Acc-2 on raw scores: ``y == 0`` is ignored (``ignore_index``), then ``> 0`` on integer tensors.

    A batch whose labels are all zero contributes nothing; torchmetrics reports 0 (not NaN) if nothing was seen.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(ignore_index=-1, **kwargs)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        target = target.reshape(-1)
        binary_target = torch.where(target == 0, -1, (target > 0).long())
        super().update((preds.reshape(-1) > 0).long(), binary_target)


class OnlineMSAMetrics(torchmetrics.MetricCollection):
    """Per-step logging metrics: ``MAE``, ``Has0_acc_2``, ``Non0_acc_2`` from raw float scores and labels.

    Logging only -- reported numbers come from :func:`msa_metrics`. Compute groups are off: the two Acc-2 metrics
    share state names and would be merged (silently giving Non0 = Has0) when a first batch has no zeros.
    """

    def __init__(self, prefix: str | None = None) -> None:
        super().__init__(
            {"MAE": MeanAbsoluteError(), "Has0_acc_2": _Has0Acc2(), "Non0_acc_2": _Non0Acc2()},
            prefix=prefix,
            compute_groups=False,
        )
