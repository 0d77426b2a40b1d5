"""RUBi-style text masking, regression port (docs/algorithms.md#rubi).

RUBi (Cadene et al., NeurIPS 2019) multiplies the main output by a mask computed by a bias-only
branch during training and drops the mask at test time: samples the bias branch already explains
demand less from the main model. Port: a text-only head o_t = MLP(sg(h_t)) on the LF-TF's own text
feature h_t (no gradient reaches the encoder from it), trained with its own loss |o_t - y|, and the
training prediction

    signed (default):  y_train = y_mm * 2 sigmoid(o_t * sg(sign(y_mm)))   mask in (0, 2), > 1 when
                                                                           o_t agrees with y_mm's sign
    plain:             y_train = y_mm * sigmoid(o_t)                       (CLUE's ``rubi`` fusion)

trained with |y_train - y| through both branches. Test prediction y_hat = y_mm (no mask).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import LFTFBackbone, mlp_head, require_modality
from methods.base import MethodConfig, MSAMethod

RubiMask = Literal["signed", "plain"]
MASKS: tuple[str, ...] = get_args(RubiMask)


@dataclass
class RubiConfig(MethodConfig):
    """RUBi-style hyper-parameters: ``mask`` signed | plain; ``lambda_text`` the weight of the
    text-only head's own loss (RUBi adds it with weight 1)."""

    mask: RubiMask = "signed"
    lambda_text: float = 1.0


@dataclass
class RubiOutputs:
    """One training forward pass: ``mm`` y_mm, ``text`` o_t, ``mask`` and ``masked`` = y_mm * mask (B,)."""

    mm: Tensor
    text: Tensor
    mask: Tensor
    masked: Tensor


def _check(cfg: RubiConfig, dims: FeatureSpec) -> None:
    require_modality(dims, "text", "rubi (its bias branch is text-only)")
    if cfg.mask not in MASKS:
        raise ValueError(f"rubi.mask must be one of {MASKS}, got {cfg.mask!r}")
    if cfg.lambda_text < 0:
        raise ValueError(f"rubi.lambda_text must be >= 0, got {cfg.lambda_text}")


class Rubi(MSAMethod):
    """LF-TF trained through a text-only mask that is dropped at test time."""

    config_class = RubiConfig

    def __init__(self, dims: FeatureSpec, cfg: RubiConfig) -> None:
        super().__init__(dims, cfg)
        _check(cfg, dims)
        self.model = LFTFBackbone(dims, cfg.backbone)
        self.text_head = mlp_head(cfg.backbone.dim)

    def mask_of(self, text: Tensor, mm: Tensor) -> Tensor:
        """The training mask from the text-only output ``text`` and the main output ``mm``."""
        if self.cfg.mask == "signed":
            return 2.0 * torch.sigmoid(text * torch.sign(mm).detach())
        return torch.sigmoid(text)

    def outputs(self, batch: Batch) -> RubiOutputs:
        h = self.model.encode(batch)
        mm = self.model.fusion([self.model.heads[m](h[m]) for m in self.model.modalities])
        text = self.text_head(h["text"].detach()).squeeze(-1)
        mask = self.mask_of(text, mm)
        return RubiOutputs(mm=mm, text=text, mask=mask, masked=mm * mask)

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """``loss`` = ``loss_masked`` |y_mm * mask - y| + lambda_text * ``loss_text`` |o_t - y|, plus
        the mask diagnostics ``mask_mean`` and ``mask_frac_above_1``."""
        out, y = self.outputs(batch), batch.label
        masked = (out.masked - y).abs().mean()
        text = (out.text - y).abs().mean()
        return {
            "loss": masked + self.cfg.lambda_text * text,
            "loss_masked": masked,
            "loss_text": text,
            "mask_mean": out.mask.detach().mean(),
            "mask_frac_above_1": (out.mask.detach() > 1.0).float().mean(),
        }

    def predict(self, batch: Batch) -> Tensor:
        return self.model(batch)

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        """The text-only head o_t (its valid MAE is the text-only MAE diagnostic)."""
        return {"text": self.text_head(self.model.encoders["text"](batch)).squeeze(-1)}

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Logs under ``train/`` (per step and epoch mean): ``loss``, ``loss_masked``, ``loss_text``,
        ``mask_mean`` and ``mask_frac_above_1``."""
        terms = self.losses(batch)
        for key, value in terms.items():
            self.log(f"train/{key}", value.detach(), on_step=True, on_epoch=True, batch_size=len(batch))
        return terms["loss"]
