"""Baselines without debiasing: the LF-TF backbone (docs/algorithms.md#baseline) and its matched-architecture
twin for MMCI.

* ``baseline``: LF-TF + per-sample L1, the reference every debiasing method is compared with.
* ``baseline_seq``: the same per-modality head, fusion and L1 on MMCI's sequence encoders (Conv1d +
  TransformerEncoder for audio / vision, per-token Linear or the fine-tuned encoder for text;
  docs/algorithms-mmci-camib.md), pooled by a masked mean, trained with MMCI's optimiser (Adam 1e-3 everywhere, wd 0, no
  accumulation). MMCI's gain over ``baseline`` mixes its encoders and optimiser with its graph and
  debiasing terms; its gain over ``baseline_seq`` does not (the matched-architecture row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import Fusion, LFTFBackbone, modality_head
from methods.base import MethodConfig, MSAMethod, OptimConfig
from methods.seq_encoders import PooledSequenceEncoder, seq_optim


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


@dataclass
class BaselineSeqConfig(MethodConfig):
    """``baseline_seq``: MMCI's encoder knobs with MMCI's defaults (``d``, ``enc_layers``, ``enc_heads``,
    ``enc_ff_mult``, ``enc_dropout``, ``enc_kernel``; docs/algorithms-mmci-camib.md) and MMCI's optimiser. Of
    ``backbone``, the text mode / encoder, ``dim`` (the per-modality head's width) and ``fusion`` are read."""

    d: int = 64
    enc_layers: int = 2
    enc_heads: int = 4
    enc_ff_mult: int = 4
    enc_dropout: float = 0.1
    enc_kernel: int = 3
    optim: OptimConfig = field(default_factory=seq_optim)


class BaselineSeq(MSAMethod):
    """The baseline head (per-modality Linear -> ReLU, LF-TF fusion, L1) on MMCI's sequence encoders and optimiser:
    MMCI's matched-architecture baseline."""

    config_class = BaselineSeqConfig

    def __init__(self, dims: FeatureSpec, cfg: BaselineSeqConfig) -> None:
        super().__init__(dims, cfg)
        for name in ("d", "enc_layers", "enc_heads", "enc_ff_mult"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"baseline_seq.{name} must be >= 1, got {getattr(cfg, name)}")
        self.modalities = dims.modalities
        self.encoders = nn.ModuleDict({
            m: PooledSequenceEncoder(
                m, dims, cfg.d, cfg.backbone.text, layers=cfg.enc_layers, heads=cfg.enc_heads,
                ff=cfg.enc_ff_mult * cfg.d, dropout=cfg.enc_dropout, kernel=cfg.enc_kernel,
            )
            for m in self.modalities
        })
        self.heads = nn.ModuleDict({m: modality_head(cfg.backbone, d_in=cfg.d) for m in self.modalities})
        self.fusion = Fusion(len(self.modalities), cfg.backbone)

    def predict(self, batch: Batch) -> Tensor:
        return self.fusion([self.heads[m](self.encoders[m](batch)) for m in self.modalities])

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = (self.predict(batch) - batch.label).abs().mean()
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(batch))
        return loss
