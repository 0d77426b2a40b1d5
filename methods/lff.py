"""LfF / IPW-only: GEAR without the swap and without the concatenation (docs/algorithms.md#lff).

One biased branch per present modality (its own LF-TF encoder -> Linear(dim -> 1)) is trained with
the generalised MAE of GEAR, so it fits the easy, bias-aligned samples. The unchanged LF-TF
model is trained with mean(w_i * l_f,i), w_i = l_b,i / (l_b,i + sg(l_f,i) + 1e-8), l_b,i the biased
branches' per-sample L1 aggregated over modalities by ``avg`` or ``min``, as GEAR's. The two sides share
no parameter and no gradient: the row isolates the inverse-probability weighting from GEAR's swap.

``lff.ema`` (off by default, for GEAR parity) adds Learning-from-Failure's per-sample exponential
moving average of both losses (l <- a * l + (1 - a * seen) * l_new, a = ``ema_alpha``) and divides
each by its maximum within the sample's label bin round(clip(y, -3, 3)) before the weight.
The weighting and GMAE functions are GEAR's (``methods.weighting``), not a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import LFTFBackbone, build_encoder
from methods.base import MethodConfig, MSAMethod
from methods.weighting import (
    GmaeVariant,
    WeightDiagnostics,
    WeightMode,
    aggregate_bias_loss,
    biased_branch_losses,
    check_gmae,
    check_weight_mode,
    ipw_weight,
)


@dataclass
class LfFConfig(MethodConfig):
    """LfF / IPW-only hyper-parameters. ``gmae``, ``q``, ``weight`` and ``lambda_dis`` are GEAR's
    with GEAR's defaults; ``ema`` switches on LfF's per-sample EMA of both
    losses with decay ``ema_alpha`` and the per-label-bin max normalisation."""

    gmae: GmaeVariant = "tanh"
    q: float = 1.0
    weight: WeightMode = "avg"
    lambda_dis: float = 15.0
    ema: bool = False
    ema_alpha: float = 0.7


@dataclass
class LfFLosses:
    """One step: ``loss`` = ``bias_loss`` + ``weighted_fused``; ``bias_losses`` L_b^m (scalars);
    ``bias_errors`` |y_b^m - y| (B,); ``fused_error`` l_f = |F(x) - y| (B,); ``weights`` w (B,);
    ``bias_score`` / ``fused_score`` the two numbers w is made of (EMA-normalised when ``ema``)."""

    loss: Tensor
    bias_loss: Tensor
    weighted_fused: Tensor
    bias_losses: dict[str, Tensor]
    bias_errors: dict[str, Tensor]
    fused_error: Tensor
    weights: Tensor
    bias_score: Tensor
    fused_score: Tensor


def label_bins(label: Tensor) -> Tensor:
    """LfF's class of a regression label: round(clip(y, -3, 3)) shifted to 0..6 (long); halves round
    to even, as np.round does for Acc-7."""
    return torch.round(label.clamp(-3.0, 3.0)).long() + 3


class SampleEMA:
    """LfF's per-sample exponential moving average of a loss, with per-label-bin maxima.

    ``update(index, loss)`` sets v[i] <- a * v[i] + (1 - a * seen[i]) * loss (the first update
    stores the loss itself) and returns v[index] divided by the maximum of v over every training
    sample in the same label bin (bins from ``label_bins``)."""

    def __init__(self, labels: Tensor, alpha: float) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.bins = label_bins(labels)
        self.values = torch.zeros(len(labels), dtype=torch.float32, device=labels.device)
        self.seen = torch.zeros(len(labels), dtype=torch.float32, device=labels.device)

    def update(self, index: Tensor, loss: Tensor) -> Tensor:
        index = index.to(self.values.device)
        loss = loss.detach().to(self.values.dtype)
        self.values[index] = self.alpha * self.values[index] + (1.0 - self.alpha * self.seen[index]) * loss
        self.seen[index] = 1.0
        maxima = torch.zeros(7, dtype=self.values.dtype, device=self.values.device)
        maxima = maxima.scatter_reduce(0, self.bins, self.values, reduce="amax", include_self=True)
        return self.values[index] / maxima[self.bins[index]].clamp_min(1e-8)


def _check(cfg: LfFConfig) -> None:
    check_gmae(cfg.gmae, cfg.q)
    check_weight_mode(cfg.weight)
    if cfg.lambda_dis < 0:
        raise ValueError(f"lambda_dis must be >= 0, got {cfg.lambda_dis}")
    if not 0.0 <= cfg.ema_alpha < 1.0:
        raise ValueError(f"ema_alpha must be in [0, 1), got {cfg.ema_alpha}")


class LfF(WeightDiagnostics, MSAMethod):
    """LF-TF trained with IPW weights from GMAE-trained per-modality biased branches (no swap)."""

    config_class = LfFConfig

    def __init__(self, dims: FeatureSpec, cfg: LfFConfig) -> None:
        super().__init__(dims, cfg)
        _check(cfg)
        self.modalities = dims.modalities
        self.model = LFTFBackbone(dims, cfg.backbone)
        self.enc_b = nn.ModuleDict({m: build_encoder(m, dims, cfg.backbone) for m in self.modalities})
        self.head_b = nn.ModuleDict({m: nn.Linear(cfg.backbone.dim, 1) for m in self.modalities})
        for head in self.head_b.values():
            head.optim_group = "modality"
        self.ema_b: SampleEMA | None = None
        self.ema_f: SampleEMA | None = None

    def robust_modules(self) -> list[nn.Module]:
        """The LF-TF model: trained only by mean(w * l_f)."""
        return [self.model]

    def biased_modules(self) -> list[nn.Module]:
        """The biased encoders and heads: trained only by the GMAE losses."""
        return [self.enc_b, self.head_b]

    def biased_prediction(self, m: str, batch: Batch) -> Tensor:
        """y_b^m = head_b^m(E_b^m(x_m)), (B,)."""
        return self.head_b[m](self.enc_b[m](batch)).squeeze(-1)

    def predict(self, batch: Batch) -> Tensor:
        return self.model(batch)

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        """Each modality's biased-branch prediction (its valid MAE shows how well it learns the bias)."""
        return {f"bias_{m}": self.biased_prediction(m, batch) for m in self.modalities}

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.cfg.ema:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_split"):
            raise RuntimeError("lff.ema=true needs an MSADataModule (the EMA is indexed by training sample)")
        labels = torch.as_tensor(np.asarray(dm.train_split.label, dtype=np.float32), device=self.device)
        self.ema_b = SampleEMA(labels, self.cfg.ema_alpha)
        self.ema_f = SampleEMA(labels, self.cfg.ema_alpha)

    def compute_losses(self, batch: Batch) -> LfFLosses:
        """The LfF / IPW objective on one batch (EMA tables updated in place when ``ema`` is on)."""
        cfg, y = self.cfg, batch.label
        fused_error = (self.model(batch) - y).abs()
        preds = {m: self.biased_prediction(m, batch) for m in self.modalities}
        bias_errors, bias_losses = biased_branch_losses(preds, y, cfg.gmae, cfg.q, cfg.lambda_dis)
        lb = aggregate_bias_loss(torch.stack([bias_errors[m] for m in self.modalities]), cfg.weight)
        lf = fused_error.detach()
        if cfg.ema:
            if self.ema_b is None or self.ema_f is None:
                raise RuntimeError("lff.ema=true: the EMA tables are built at fit start; call trainer.fit")
            lb, lf = self.ema_b.update(batch.index, lb), self.ema_f.update(batch.index, lf)
        weights = ipw_weight(lb, lf, cfg.weight)
        weighted_fused = (weights * fused_error).mean()
        bias_loss = torch.stack(list(bias_losses.values())).sum()
        return LfFLosses(
            loss=bias_loss + weighted_fused,
            bias_loss=bias_loss,
            weighted_fused=weighted_fused,
            bias_losses=bias_losses,
            bias_errors=bias_errors,
            fused_error=fused_error,
            weights=weights,
            bias_score=lb,
            fused_score=lf,
        )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One step. Logs under ``train/`` (per step and epoch mean): ``loss``, ``Lb_<m>``,
        ``bias_mae_<m>``, ``fused_weighted`` mean(w * l_f), ``fused_unweighted`` mean(l_f),
        ``w_mean``, ``w_frac_below_0.1``; per step ``w_p10`` / ``w_p50`` / ``w_p90`` (exact epoch
        quantiles: ``w_p*_epoch``)."""
        out = self.compute_losses(batch)
        values = {
            "loss": out.loss,
            "fused_weighted": out.weighted_fused,
            "fused_unweighted": out.fused_error.mean(),
            **{f"Lb_{m}": value for m, value in out.bias_losses.items()},
            **{f"bias_mae_{m}": err.mean() for m, err in out.bias_errors.items()},
        }
        self.log_weighting(values, out.weights, len(batch), batch=batch)
        return out.loss
