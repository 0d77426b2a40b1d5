"""Bias identification against the synthetic generator's ground truth (docs/algorithms.md#bias-identification).

A debiasing method that reweights or upsamples samples implicitly *identifies* bias-conflicting samples: GEAR and
LfF give them large IPW weights, JTT puts them in its error set. On synthetic data the truth is known (``batch.z``:
the shortcut sign per modality, 0 where a modality carries none), so how well a method identifies them is
measurable: the AUROC of its per-sample score against the true conflict flag (0.5 = no better than chance).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor

from datamodules.schema import MODALITIES as GROUND_TRUTH_ORDER


def conflict_flags(z: Tensor, label: Tensor) -> Tensor:
    """Bool (B,): the sample's shortcut disagrees with its label's sign in at least one modality that carries one.

    ``z`` (B, 3) in {-1, 0, +1} (0: no shortcut in that modality); sign(y) = +1 for y >= 0, else -1."""
    sign = torch.where(label >= 0, 1.0, -1.0).to(z.dtype)
    return ((z != 0) & (z != sign[:, None])).any(dim=1)


def shortcut_modalities(z: Tensor | None) -> list[str]:
    """The modalities whose ground-truth shortcut sign ``z`` (B, 3), text/audio/vision order, is non-zero for some
    sample: the ones that carry a shortcut (scenario ``single``: one). Empty without ground truth."""
    if z is None:
        return []
    carried = (z != 0).any(dim=0).tolist()
    return [m for m, flag in zip(GROUND_TRUTH_ORDER, carried) if flag]


def auroc(scores: np.ndarray, flags: np.ndarray) -> float:
    """AUROC of ``scores`` for the positive ``flags`` (ties count half); NaN when a class is absent."""
    flags = np.asarray(flags, dtype=bool)
    if flags.all() or not flags.any():
        return math.nan
    return float(roc_auc_score(flags, np.asarray(scores, dtype=np.float64)))


def identification_record(scores: np.ndarray, flags: np.ndarray, epoch: int, score_name: str) -> dict[str, Any]:
    """One epoch's bias-identification summary: AUROC, sample and conflict counts, mean score per class."""
    flags = np.asarray(flags, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "epoch": int(epoch),
        "score": score_name,
        "auroc": auroc(scores, flags),
        "n": int(flags.size),
        "n_conflict": int(flags.sum()),
        f"mean_{score_name}_conflict": float(scores[flags].mean()) if flags.any() else math.nan,
        f"mean_{score_name}_aligned": float(scores[~flags].mean()) if (~flags).any() else math.nan,
    }


def precision_recall(selected: np.ndarray, flags: np.ndarray) -> dict[str, float]:
    """Precision and recall of a selected set (e.g. JTT's error set) against the true conflict flags."""
    selected, flags = np.asarray(selected, dtype=bool), np.asarray(flags, dtype=bool)
    hits = int((selected & flags).sum())
    return {
        "precision": hits / int(selected.sum()) if selected.any() else math.nan,
        "recall": hits / int(flags.sum()) if flags.any() else math.nan,
    }
