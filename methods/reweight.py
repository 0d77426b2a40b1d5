"""Oracle reweighting with the generator's true groups (docs/algorithms.md#oracle_reweight), kind ``oracle``.

The baseline with static per-sample weights w_i proportional to 1 / n_{g(i)} (every group present in training weighs
the same in the loss), normalised to mean 1 over the training set: the importance weighting a method would do if it
knew the bias labels. Groups as in :mod:`methods.groupdro`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamodules.schema import Batch, FeatureSpec
from methods.baseline import BaselineConfig
from methods.groupdro import GroupOracle


@dataclass
class ReweightConfig(BaselineConfig):
    """No knobs beyond the backbone and optimiser: the weights follow from the training group counts."""


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """Per-group weight such that each present group weighs the same and the per-sample mean is 1 (0 if absent)."""
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


class OracleReweight(GroupOracle):
    """LF-TF trained with mean(w_g(i) * |y_hat - y|), w_g = N / (G * n_g) from the true training groups."""

    config_class = ReweightConfig
    row_name = "oracle_reweight"

    def __init__(self, dims: FeatureSpec, cfg: ReweightConfig) -> None:
        super().__init__(dims, cfg)
        self.register_buffer("group_weight", torch.zeros(0))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        weights = balanced_weights(self.training_group_counts().numpy())
        self.group_weight = torch.as_tensor(weights, dtype=torch.float32, device=self.device)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = (self.group_weight[self.groups(batch)] * (self.model(batch) - batch.label).abs()).mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss

    def summary(self) -> dict[str, object]:
        return self.group_summary(self.group_weight)
