"""CLUE-style counterfactual debiasing, regression port (docs/algorithms.md#clue).

CLUE fuses a multimodal output with a text-only output, learns a scalar c standing in for the
multimodal output in a world where only text is seen, and subtracts the counterfactual fusion at
test time. Port: y_mm = the LF-TF output, y_t = a separate text branch (its own LF-TF text encoder ->
Linear(dim -> dim) -> ReLU -> Linear(dim -> 1)), additive fusion y_f = y_mm + y_t. Training loss

    |y_mm - y| + |y_f - y| + |y_t - y| + (sg(y_f) - c - sg(y_t))^2      (the last term trains c only)

and prediction y_hat = y_f - alpha * (c + y_t) = y_mm + (1 - alpha) * y_t - alpha * c.

The counterfactual strength alpha is chosen from ``alpha_grid`` on the **IID validation split**
together with the epoch: every validation epoch scores each alpha with the selection key, keeps
the best (the smallest alpha on ties) in the ``alpha`` buffer and reports its score as the epoch's
``val/select``; the selected epoch's weights carry their alpha. CLUE's own code picks alpha by
the best OOD-test accuracy; that is not done here (an oracle row would have to be labelled so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import LFTFBackbone, build_encoder, mlp_head, require_modality
from methods.base import MethodConfig, MSAMethod
from methods.metrics import SELECTION_MODES, msa_metrics, selection_value


def _default_grid() -> list[float]:
    return [0.25 * i for i in range(13)]


@dataclass
class ClueConfig(MethodConfig):
    """CLUE-style hyper-parameters: ``alpha_grid`` the counterfactual strengths tried on IID valid
    (default 0, 0.25, ..., 3); ``c_init`` the initial counterfactual output c."""

    alpha_grid: list[float] = field(default_factory=_default_grid)
    c_init: float = 0.0


@dataclass
class ClueOutputs:
    """One forward pass: ``mm`` y_mm, ``text`` y_t, ``fused`` y_f = y_mm + y_t (each (B,)), and
    ``counterfactual`` c + y_t, the term alpha scales."""

    mm: Tensor
    text: Tensor
    fused: Tensor
    counterfactual: Tensor


def _check(cfg: ClueConfig, dims: FeatureSpec) -> None:
    require_modality(dims, "text", "clue (its text-only branch)")
    grid = [float(a) for a in cfg.alpha_grid]
    if not grid or not all(np.isfinite(a) and a >= 0 for a in grid):
        raise ValueError(f"clue.alpha_grid must be a non-empty list of finite alphas >= 0, got {cfg.alpha_grid}")


class Clue(MSAMethod):
    """LF-TF + a text-only branch + a learned counterfactual constant c; alpha selected on IID valid."""

    config_class = ClueConfig

    def __init__(self, dims: FeatureSpec, cfg: ClueConfig) -> None:
        super().__init__(dims, cfg)
        _check(cfg, dims)
        self.alpha_grid = sorted({float(a) for a in cfg.alpha_grid})
        self.model = LFTFBackbone(dims, cfg.backbone)
        dim = cfg.backbone.dim
        self.text_encoder = build_encoder("text", dims, cfg.backbone)
        self.text_head = mlp_head(dim)
        self.c = nn.Parameter(torch.tensor(float(cfg.c_init)))
        self.register_buffer("alpha", torch.tensor(self.alpha_grid[0]))

    def outputs(self, batch: Batch) -> ClueOutputs:
        mm = self.model(batch)
        text = self.text_head(self.text_encoder(batch)).squeeze(-1)
        return ClueOutputs(mm=mm, text=text, fused=mm + text, counterfactual=self.c + text)

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """The four loss terms (scalars) and their sum ``loss``."""
        out, y = self.outputs(batch), batch.label
        terms = {
            "mm": (out.mm - y).abs().mean(),
            "fused": (out.fused - y).abs().mean(),
            "text": (out.text - y).abs().mean(),
            "c": (out.fused.detach() - self.c - out.text.detach()).pow(2).mean(),
        }
        return {"loss": sum(terms.values()), **{f"loss_{k}": v for k, v in terms.items()}}

    def predict(self, batch: Batch) -> Tensor:
        out = self.outputs(batch)
        return out.fused - self.alpha * out.counterfactual

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        """y_mm, y_t, y_f and c + y_t: their valid MAE is logged; the last two pick alpha."""
        out = self.outputs(batch)
        return {"mm": out.mm, "text": out.text, "fused": out.fused, "counterfactual": out.counterfactual}

    def predict_with_heads(self, batch: Batch, *, heads: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward pass for the prediction and the heads (the same values as the two calls)."""
        out = self.outputs(batch)
        extra = {"mm": out.mm, "text": out.text, "fused": out.fused, "counterfactual": out.counterfactual}
        return out.fused - self.alpha * out.counterfactual, extra if heads else {}

    record_test_heads = True  # alpha is re-chosen from fused / counterfactual by post-hoc rules

    @classmethod
    def choice_candidates(cls, heads: dict[str, np.ndarray], model_cfg: dict[str, Any]) -> dict[str, np.ndarray]:
        """One prediction per alpha of the run's ``alpha_grid``: y_f - alpha * (c + y_t), from the recorded heads."""
        grid = sorted({float(a) for a in model_cfg.get("alpha_grid", _default_grid())})
        return {f"alpha={a:g}": heads["fused"] - a * heads["counterfactual"] for a in grid}

    def select_on_valid(
        self, pred: np.ndarray, label: np.ndarray, heads: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Score every alpha on IID valid with the selection key and keep the best in ``alpha``.

        Logged: ``select_alpha_<a>`` (the valid metric vs alpha), ``alpha`` (chosen) and ``c``."""
        mode = SELECTION_MODES[self.selection_key]
        scores = {}
        for alpha in self.alpha_grid:
            candidate = heads["fused"] - alpha * heads["counterfactual"]
            scores[alpha] = selection_value(msa_metrics(candidate, label, decimals=None), self.selection_key)
        finite = {a: s for a, s in scores.items() if np.isfinite(s)}
        sign = 1.0 if mode == "min" else -1.0
        best = min(finite, key=lambda a: (sign * finite[a], a)) if finite else self.alpha_grid[0]
        self.alpha.fill_(best)
        extra = {f"select_alpha_{a:g}": s for a, s in scores.items()}
        extra.update(alpha=best, c=float(self.c.detach()))
        return heads["fused"] - best * heads["counterfactual"], extra

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Logs ``train/loss`` and its four terms ``loss_mm``, ``loss_fused``, ``loss_text``,
        ``loss_c`` (per step and epoch mean), and ``c``."""
        terms = self.losses(batch)
        for key, value in {**terms, "c": self.c}.items():
            self.log(f"train/{key}", value.detach(), on_step=True, on_epoch=True, batch_size=len(batch))
        return terms["loss"]
