"""Baseline: the LF-TF backbone trained with per-sample L1, no debiasing (docs/algorithms.md#baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import LFTFBackbone
from methods.base import MethodConfig, MSAMethod


@dataclass
class BaselineConfig(MethodConfig):
    """The LF-TF backbone and optimiser defaults; nothing else."""


class Baseline(MSAMethod):
    """LF-TF + L1: the reference every debiasing method is compared with."""

    config_class = BaselineConfig

    def __init__(self, dims: FeatureSpec, cfg: BaselineConfig) -> None:
        super().__init__(dims, cfg)
        self.model = LFTFBackbone(dims, cfg.backbone)

    def predict(self, batch: Batch) -> Tensor:
        return self.model(batch)

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = (self.model(batch) - batch.label).abs().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss
