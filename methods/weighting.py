"""GMAE and inverse-probability weights (docs/algorithms.md#gear), as small pure functions.

GEAR (``methods.gear``) and the LfF / IPW-only ablation share these, so both train their biased
branches with the same generalised MAE and weight the main loss with the same formula.

* GMAE: with r = sg(|pred - y|), GMAE(pred, y) = w(r) * |pred - y| per sample, w(r) a detached
  weight that decreases in r, so the biased branch concentrates on easy (bias-aligned) samples.
* IPW: w_i = l_b,i / (l_b,i + sg(l_f,i) + 1e-8) with l_b,i the per-sample loss of the biased
  branch(es), aggregated over modalities by mean (``avg``) or minimum (``min``); ``none`` gives 1.
  A sample the biased branch fits well (small l_b) gets a small weight in the main loss.

`WeightDiagnostics` is the logging both methods share: weight summaries per step
and exact weight quantiles per epoch.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from torch import Tensor

from methods.bias_id import conflict_flags, identification_record

GmaeVariant = Literal["tanh", "sigmoid", "exp", "cauchy", "none"]
WeightMode = Literal["avg", "min", "none"]
GMAE_VARIANTS: tuple[str, ...] = get_args(GmaeVariant)
WEIGHT_MODES: tuple[str, ...] = get_args(WeightMode)
GMAE_MIN_RESIDUAL = 1e-8  # r is clamped to this before r ** (-q) in the tanh variant
IPW_EPS = 1e-8
SMALL_WEIGHT = 0.1  # a weight below this counts as "down-weighted" in the diagnostics


def check_gmae(variant: str, q: float) -> None:
    """Raise a ValueError naming ``gmae`` / ``q`` when the pair is not usable."""
    if variant not in GMAE_VARIANTS:
        raise ValueError(f"gmae must be one of {GMAE_VARIANTS}, got {variant!r}")
    if variant in ("tanh", "exp", "cauchy") and not float(q) > 0.0:
        raise ValueError(f"q must be a float > 0 for gmae={variant!r}, got {q!r}")


def check_weight_mode(mode: str) -> None:
    """Raise a ValueError naming ``weight`` when ``mode`` is not avg, min or none."""
    if mode not in WEIGHT_MODES:
        raise ValueError(f"weight must be one of {WEIGHT_MODES}, got {mode!r}")


def gmae_weight(residual: Tensor, variant: str = "tanh", q: float = 1.0) -> Tensor:
    """The GMAE weight w(r) for absolute residuals ``r`` (detached here).

    ``tanh``: tanh(r^-q), r clamped >= 1e-8; ``sigmoid``: 2 sigmoid(-r); ``exp``: exp(-r / q);
    ``cauchy``: 1 / (1 + q^2 r^2); ``none``: 0 (the biased branch is not trained).
    """
    check_gmae(variant, q)
    r = residual.detach()
    q = float(q)
    if variant == "tanh":
        return torch.tanh(r.clamp_min(GMAE_MIN_RESIDUAL).pow(-q))
    if variant == "sigmoid":
        return 2.0 * torch.sigmoid(-r)
    if variant == "exp":
        return torch.exp(-r / q)
    if variant == "cauchy":
        return 1.0 / (1.0 + (q * r) ** 2)
    return torch.zeros_like(r)


def gmae(pred: Tensor, target: Tensor, variant: str = "tanh", q: float = 1.0) -> Tensor:
    """Per-sample generalised MAE w(sg|pred - y|) * |pred - y|, shape of ``pred``."""
    error = (pred - target).abs()
    return gmae_weight(error, variant, q) * error


def biased_branch_losses(
    preds: dict[str, Tensor], target: Tensor, variant: str, q: float, scale: float
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-modality biased-branch terms: the detached per-sample errors |pred - y| (what IPW reads)
    and the training losses ``scale`` * mean GMAE (what trains each branch)."""
    errors = {m: (pred - target).abs().detach() for m, pred in preds.items()}
    losses = {m: scale * gmae(pred, target, variant, q).mean() for m, pred in preds.items()}
    return errors, losses


def aggregate_bias_loss(losses: Tensor, mode: str = "avg") -> Tensor:
    """Per-sample biased loss l_b from per-modality losses ``losses`` (M, B): mean (``avg``) or
    minimum (``min``) over modalities; detached. ``none`` returns the mean (unused by the weight)."""
    check_weight_mode(mode)
    if losses.ndim != 2:
        raise ValueError(f"losses must be (modalities, batch), got shape {tuple(losses.shape)}")
    losses = losses.detach()
    return losses.min(dim=0).values if mode == "min" else losses.mean(dim=0)


def ipw_weight(bias_loss: Tensor, fused_loss: Tensor, mode: str = "avg") -> Tensor:
    """w = l_b / (l_b + sg(l_f) + 1e-8) per sample (1 for ``mode=none``); a constant for autograd."""
    check_weight_mode(mode)
    if mode == "none":
        return torch.ones_like(fused_loss).detach()
    lb, lf = bias_loss.detach(), fused_loss.detach()
    return lb / (lb + lf + IPW_EPS)


def weight_summary(weights: Tensor) -> dict[str, Tensor]:
    """Scalar summary of IPW weights for logging (the CSV logger has no histograms): mean, the
    p10 / p50 / p90 quantiles and the fraction of weights below 0.1."""
    w = weights.detach().flatten().float()
    quantiles = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9], dtype=w.dtype, device=w.device))
    return {
        "w_mean": w.mean(),
        "w_p10": quantiles[0],
        "w_p50": quantiles[1],
        "w_p90": quantiles[2],
        "w_frac_below_0.1": (w < SMALL_WEIGHT).float().mean(),
    }


class WeightDiagnostics:
    """Mixin for a LightningModule that weights its loss with IPW weights (GEAR, LfF).

    ``log_weighting(values, weights, batch_size)`` logs ``values`` plus ``w_mean`` and
    ``w_frac_below_0.1`` under ``train/`` per step and as epoch means, and ``w_p10`` / ``w_p50`` /
    ``w_p90`` per step; at each epoch end the exact quantiles of every weight of the epoch are
    logged as ``train/w_p*_epoch`` (the CSV logger has no histograms)."""

    _epoch_weights: list[Tensor]
    _epoch_conflicts: list[Tensor]
    bias_identification: list[dict[str, Any]]
    log: Any
    current_epoch: int

    def log_weighting(
        self, values: dict[str, Tensor | float], weights: Tensor, batch_size: int, batch: Any = None
    ) -> None:
        """Log ``values`` and the weight summaries; with a ``batch`` carrying ground truth (``batch.z``), also keep
        the true conflict flags for the epoch's bias-identification AUROC."""
        if not hasattr(self, "_epoch_weights"):
            self._epoch_weights, self._epoch_conflicts = [], []
        self._epoch_weights.append(weights.detach().cpu())
        if batch is not None and getattr(batch, "z", None) is not None:
            self._epoch_conflicts.append(conflict_flags(batch.z, batch.label).cpu())
        summary = weight_summary(weights)
        both = {**values, "w_mean": summary["w_mean"], "w_frac_below_0.1": summary["w_frac_below_0.1"]}
        for key, value in both.items():
            value = value.detach() if isinstance(value, Tensor) else value
            self.log(f"train/{key}", value, on_step=True, on_epoch=True, batch_size=batch_size)
        for key in ("w_p10", "w_p50", "w_p90"):
            self.log(f"train/{key}", summary[key], on_step=True, on_epoch=False, batch_size=batch_size)

    def on_train_epoch_start(self) -> None:
        self._epoch_weights, self._epoch_conflicts = [], []

    def on_train_epoch_end(self) -> None:
        """Exact quantiles of every IPW weight of the epoch (the per-epoch histogram summary) and, on data with
        ground truth, the AUROC of the weight against the true conflict flag (``train/w_auroc_conflict``; kept per
        epoch in ``bias_identification`` for result.json)."""
        weights = getattr(self, "_epoch_weights", [])
        if not weights:
            return
        all_weights = torch.cat(weights)
        summary = weight_summary(all_weights)
        for key in ("w_p10", "w_p50", "w_p90"):
            self.log(f"train/{key}_epoch", summary[key], on_step=False, on_epoch=True)
        conflicts = getattr(self, "_epoch_conflicts", [])
        if conflicts and sum(c.numel() for c in conflicts) == all_weights.numel():
            record = identification_record(
                all_weights.double().numpy(), torch.cat(conflicts).numpy(), self.current_epoch, "w"
            )
            if not hasattr(self, "bias_identification"):
                self.bias_identification = []
            self.bias_identification.append(record)
            self.log("train/w_auroc_conflict", record["auroc"], on_step=False, on_epoch=True)
        self._epoch_weights, self._epoch_conflicts = [], []

    def summary(self) -> dict[str, Any]:
        """Per-epoch bias identification (AUROC of the IPW weight against the true conflict flags)."""
        return {"bias_identification": list(getattr(self, "bias_identification", []))}
