"""Group DRO with the generator's true groups (docs/algorithms.md#oracle_groupdro), kind ``oracle``.

Sagawa et al., "Distributionally Robust Neural Networks for Group Shifts", ICLR 2020 (reference code:
kohpangwei/group_DRO, ``loss.py``). The LF-TF backbone is trained on the online worst-case mixture of group losses:
per batch, L̄_g = mean L1 of group g (0 for a group absent from the batch), q_g <- q_g * exp(eta * (L̄_g + C / sqrt(n_g)))
for the groups present (absent groups keep their weight), q normalised, loss = sum_g q_g L̄_g. Groups are
(sign(y), z_m of every shortcut modality) from the ground truth, which a real dataset does not have: hence an oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from datamodules.schema import Batch, FeatureSpec
from methods.baseline import Baseline, BaselineConfig


@dataclass
class GroupDROConfig(BaselineConfig):
    """``eta``: step size of the group weights (Sagawa et al.'s robust_step_size, 0.01); ``adjustment``: C of the
    group adjustment C / sqrt(n_g) (0 = off, their default)."""

    eta: float = 0.01
    adjustment: float = 0.0


def group_losses(per_sample: Tensor, group: Tensor, n_groups: int) -> tuple[Tensor, Tensor]:
    """(mean loss per group (0 where absent), sample count per group) of one batch."""
    onehot = torch.nn.functional.one_hot(group, n_groups).to(per_sample.dtype)  # (B, G)
    counts = onehot.sum(0)
    sums = onehot.t() @ per_sample
    return sums / counts.clamp_min(1.0), counts


def requires_ground_truth(method: str, group_names: tuple[str, ...]) -> None:
    """Raise naming the method when the data has no ground-truth groups (real data)."""
    if not group_names:
        raise ValueError(
            f"method {method!r} needs the ground-truth groups of the synthetic generator "
            "(docs/algorithms.md#oracle_groupdro); this dataset has none (use dataset=synthetic or one of its "
            "scenarios)"
        )


class GroupOracle(Baseline):
    """Base of the oracle rows: the baseline's LF-TF and prediction, plus the true groups of the training data."""

    kind = "oracle"
    needs_ground_truth = True
    row_name = "oracle"

    def __init__(self, dims: FeatureSpec, cfg: BaselineConfig) -> None:
        super().__init__(dims, cfg)
        self.group_names: tuple[str, ...] = ()

    def training_group_counts(self) -> Tensor:
        """Read the datamodule's group names (error without ground truth) and return the training count per group."""
        dm = self.trainer.datamodule
        self.group_names = tuple(getattr(dm, "group_names", ()))
        requires_ground_truth(self.row_name, self.group_names)
        return torch.as_tensor(np.asarray(dm.train_group_counts(), dtype=np.float64), dtype=torch.float32)

    def groups(self, batch: Batch) -> Tensor:
        if batch.group is None:
            raise ValueError(f"{self.row_name}: the batch carries no ground-truth group (real data?)")
        return batch.group

    def group_summary(self, weights: Tensor) -> dict[str, object]:
        return {"group_weights": {g: round(float(w), 6) for g, w in zip(self.group_names, weights.tolist())}}


class OracleGroupDRO(GroupOracle):
    """LF-TF trained with online Group DRO over the true groups (an oracle row)."""

    config_class = GroupDROConfig
    row_name = "oracle_groupdro"

    def __init__(self, dims: FeatureSpec, cfg: GroupDROConfig) -> None:
        super().__init__(dims, cfg)
        if cfg.eta <= 0:
            raise ValueError(f"eta must be > 0, got {cfg.eta}")
        if cfg.adjustment < 0:
            raise ValueError(f"adjustment must be >= 0, got {cfg.adjustment}")
        self.register_buffer("q", torch.zeros(0))
        self.register_buffer("adjust", torch.zeros(0))

    def on_fit_start(self) -> None:
        super().on_fit_start()
        counts = self.training_group_counts()
        self.q = torch.full((len(self.group_names),), 1.0 / len(self.group_names), device=self.device)
        self.adjust = (self.cfg.adjustment / counts.clamp_min(1.0).sqrt()).to(self.device)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        per_sample = (self.model(batch) - batch.label).abs()
        losses, counts = group_losses(per_sample, self.groups(batch), self.q.numel())
        present = counts > 0
        with torch.no_grad():
            step = torch.exp(self.cfg.eta * (losses.detach() + self.adjust))
            q = torch.where(present, self.q * step, self.q)
            self.q = q / q.sum()
        loss = (self.q * losses).sum()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch))
        self.log_diagnostics(
            {"q_max": self.q.max(), "worst_group_loss": losses[present].max(), "mean_l1": per_sample.mean()},
            batch_size=len(batch),
        )
        return loss

    def summary(self) -> dict[str, object]:
        """Final group weights q by group name (in result.json)."""
        return self.group_summary(self.q)
