"""GEAR: general debiasing for MSA (Sun et al., ACM MM 2023; docs/algorithms.md#gear).

Per present modality m, two architecturally identical LF-TF encoders give a robust feature h_c^m and
a biased feature h_b^m. The robust side reads f_c^m = phi_c^m([h_c^m; sg(h_b^m)]) and the fusion F
predicts y from [f_c^m]; the biased side predicts y from head_b^m(phi_b^m([sg(h_c^m); h_b^m])) with a
generalised MAE (GMAE) that focuses it on easy, bias-aligned samples. Each sample's fused loss is
weighted by w = l_b / (l_b + sg(l_f) + 1e-8) (inverse probability weighting, IPW), so samples the
biased branches already fit get little weight. From ``swap_epochs`` on, the biased features are
permuted across the batch (independently per modality): the robust prediction on swapped features
keeps the sample's own label, the biased prediction on swapped features targets the permuted label.

Gradient routing: the biased parameters (E_b, phi_b, head_b) are trained only by the GMAE
losses, the robust ones (E_c, phi_c, F) only by mean(w * l_f); w is a constant for autograd.
Evaluation: no swap, y_hat = F([f_c^m]) with the sample's own detached h_b.

Defaults are GEAR by default (gmae ``tanh``, weight ``avg``); ``weight=none`` is GEAR without IPW
and ``swap=false`` GEAR without the swap augmentation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import Fusion, build_encoder
from methods.base import MethodConfig, MSAMethod
from methods.bias_id import conflict_flags, identification_record
from methods.metrics import msa_metrics
from methods.weighting import (
    GmaeVariant,
    WeightDiagnostics,
    WeightMode,
    aggregate_bias_loss,
    biased_branch_losses,
    check_gmae,
    check_weight_mode,
    gmae,
    ipw_weight,
)


@dataclass
class GearConfig(MethodConfig):
    """GEAR hyper-parameters (docs/algorithms.md#gear). ``gmae``: tanh | sigmoid | exp | cauchy | none;
    ``q``: the GMAE exponent / temperature / scale (float); ``weight``: avg | min | none (none = no
    IPW); ``swap``: the swap augmentation on/off, active from 0-based epoch ``swap_epochs``;
    ``swap_dim``: width of h_c and h_b (each phi reads 2 * swap_dim and writes backbone.dim)."""

    gmae: GmaeVariant = "tanh"
    q: float = 1.0
    weight: WeightMode = "avg"
    lambda_dis: float = 15.0
    lambda_swap: float = 1.0
    swap_epochs: int = 5
    swap: bool = True
    # Model selection only among epochs with the swap active (>= swap_epochs); false = any epoch (earlier runs).
    select_after_swap: bool = True
    swap_dim: int = 32


@dataclass
class GearLosses:
    """Everything one GEAR step computes: the total loss and the parts the diagnostics and tests read.

    ``bias_losses`` L_b^m (scalars, swap term included); ``bias_errors`` |y_b^m - y| (B,), un-swapped;
    ``plain_error`` |F(f_c) - y| (B,), un-swapped; ``fused_error`` l_f (B,), plus lambda_swap times
    ``fused_swap_error`` |F(f_c swapped) - y| once the swap is active; ``weights`` w (B,);
    ``permutations`` P_m and ``swap_targets`` y[P_m] per modality (empty without swap).
    """

    loss: Tensor
    bias_loss: Tensor
    weighted_fused: Tensor
    bias_losses: dict[str, Tensor]
    bias_errors: dict[str, Tensor]
    plain_error: Tensor
    fused_error: Tensor
    weights: Tensor
    swap: bool
    permutations: dict[str, Tensor] = field(default_factory=dict)
    swap_targets: dict[str, Tensor] = field(default_factory=dict)
    fused_swap_error: Tensor | None = None


def _phi(d_in: int, d_out: int) -> nn.Module:
    module = nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU())
    module.optim_group = "modality"
    return module


def _check(cfg: GearConfig) -> None:
    check_gmae(cfg.gmae, cfg.q)
    check_weight_mode(cfg.weight)
    for name in ("lambda_dis", "lambda_swap"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.swap_epochs < 0:
        raise ValueError(f"swap_epochs must be >= 0 (0-based epoch the swap starts), got {cfg.swap_epochs}")
    if cfg.swap_dim < 1:
        raise ValueError(f"swap_dim must be >= 1, got {cfg.swap_dim}")


class Gear(WeightDiagnostics, MSAMethod):
    """GEAR: robust/biased extractors per modality, swap augmentation, GMAE biased branch, IPW."""

    config_class = GearConfig

    def __init__(self, dims: FeatureSpec, cfg: GearConfig) -> None:
        super().__init__(dims, cfg)
        _check(cfg)
        self.modalities = dims.modalities
        enc_cfg = dataclasses.replace(cfg.backbone, dim=cfg.swap_dim)
        d_cat, d_out = 2 * cfg.swap_dim, cfg.backbone.dim
        self.enc_c = nn.ModuleDict({m: build_encoder(m, dims, enc_cfg) for m in self.modalities})
        self.enc_b = nn.ModuleDict({m: build_encoder(m, dims, enc_cfg) for m in self.modalities})
        self.phi_c = nn.ModuleDict({m: _phi(d_cat, d_out) for m in self.modalities})
        self.phi_b = nn.ModuleDict({m: _phi(d_cat, d_out) for m in self.modalities})
        self.head_b = nn.ModuleDict({m: nn.Linear(d_out, 1) for m in self.modalities})
        for head in self.head_b.values():
            head.optim_group = "modality"
        self.fusion = Fusion(len(self.modalities), cfg.backbone)
        self.swap_seed: int | None = None
        self.swap_generator: torch.Generator | None = None

    def robust_modules(self) -> list[nn.Module]:
        """E_c, phi_c and F: trained only by the weighted fused loss."""
        return [self.enc_c, self.phi_c, self.fusion]

    def biased_modules(self) -> list[nn.Module]:
        """E_b, phi_b and head_b: trained only by the GMAE losses."""
        return [self.enc_b, self.phi_b, self.head_b]

    def encode(self, batch: Batch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Robust and biased encoder outputs h_c^m, h_b^m, each (B, swap_dim)."""
        return (
            {m: self.enc_c[m](batch) for m in self.modalities},
            {m: self.enc_b[m](batch) for m in self.modalities},
        )

    def robust_feature(self, m: str, hc: Tensor, hb: Tensor) -> Tensor:
        """f_c^m = phi_c^m([h_c; sg(h_b)]): no gradient reaches the biased encoder."""
        return self.phi_c[m](torch.cat([hc, hb.detach()], dim=-1))

    def biased_prediction(self, m: str, hc: Tensor, hb: Tensor) -> Tensor:
        """y_b^m = head_b^m(phi_b^m([sg(h_c); h_b])), (B,): no gradient reaches the robust encoder."""
        return self.head_b[m](self.phi_b[m](torch.cat([hc.detach(), hb], dim=-1))).squeeze(-1)

    def predict(self, batch: Batch) -> Tensor:
        hc, hb = self.encode(batch)
        return self.fusion([self.robust_feature(m, hc[m], hb[m]) for m in self.modalities])

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        """Each modality's biased-branch prediction (its valid MAE shows how well it learns the bias)."""
        hc, hb = self.encode(batch)
        return {f"bias_{m}": self.biased_prediction(m, hc[m], hb[m]) for m in self.modalities}

    def predict_with_heads(self, batch: Batch, *, heads: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """One encoder pass for the prediction and the biased heads (the same values as the two calls)."""
        hc, hb = self.encode(batch)
        pred = self.fusion([self.robust_feature(m, hc[m], hb[m]) for m in self.modalities])
        extra = {f"bias_{m}": self.biased_prediction(m, hc[m], hb[m]) for m in self.modalities} if heads else {}
        return pred, extra

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self.reset_swap_generator(torch.initial_seed())

    def reset_swap_generator(self, seed: int) -> None:
        """(Re)seed the generator that draws the swap permutations (the run's seed at fit start)."""
        self.swap_seed = int(seed)
        self.swap_generator = torch.Generator().manual_seed(self.swap_seed)

    def swap_active(self) -> bool:
        """True from 0-based epoch ``swap_epochs`` on (epoch > swap_epochs counted from 1), if enabled."""
        return bool(self.cfg.swap) and int(self.current_epoch) >= self.cfg.swap_epochs

    @classmethod
    def delayed_term_active(cls, model_cfg: dict[str, Any], epoch: int) -> bool | None:
        """The swap is on from 0-based epoch ``swap_epochs`` when ``swap`` is true."""
        return bool(model_cfg.get("swap", True)) and int(epoch) >= int(model_cfg.get("swap_epochs", 5))

    def first_selectable_epoch(self) -> int:
        """With the swap on and ``select_after_swap``, selection starts at the swap's first epoch: otherwise early
        stopping on IID valid often picks an epoch before it and the row reports GEAR without its swap."""
        return int(self.cfg.swap_epochs) if self.cfg.swap and self.cfg.select_after_swap else 0

    def _permutation(self, n: int, device: torch.device) -> Tensor:
        if self.swap_generator is None:
            self.reset_swap_generator(torch.initial_seed())
        return torch.randperm(n, generator=self.swap_generator).to(device)

    def compute_losses(self, batch: Batch, swap: bool) -> GearLosses:
        """GEAR's training objective on one batch, with or without the swap augmentation."""
        cfg, y = self.cfg, batch.label
        hc, hb = self.encode(batch)
        plain_error = (self.fusion([self.robust_feature(m, hc[m], hb[m]) for m in self.modalities]) - y).abs()
        preds = {m: self.biased_prediction(m, hc[m], hb[m]) for m in self.modalities}
        bias_errors, bias_losses = biased_branch_losses(preds, y, cfg.gmae, cfg.q, cfg.lambda_dis)
        fused_error, fused_swap_error = plain_error, None
        permutations: dict[str, Tensor] = {}
        swap_targets: dict[str, Tensor] = {}
        if swap:
            robust_swapped = []
            for m in self.modalities:
                perm = self._permutation(len(y), y.device)
                permutations[m], swap_targets[m] = perm, y[perm]
                robust_swapped.append(self.robust_feature(m, hc[m], hb[m][perm]))
                swapped_pred = self.biased_prediction(m, hc[m], hb[m][perm])
                swapped_loss = gmae(swapped_pred, swap_targets[m], cfg.gmae, cfg.q).mean()
                bias_losses[m] = bias_losses[m] + cfg.lambda_swap * cfg.lambda_dis * swapped_loss
            fused_swap_error = (self.fusion(robust_swapped) - y).abs()
            fused_error = plain_error + cfg.lambda_swap * fused_swap_error
        lb = aggregate_bias_loss(torch.stack([bias_errors[m] for m in self.modalities]), cfg.weight)
        weights = ipw_weight(lb, fused_error, cfg.weight)
        weighted_fused = (weights * fused_error).mean()
        bias_loss = torch.stack(list(bias_losses.values())).sum()
        return GearLosses(
            loss=bias_loss + weighted_fused,
            bias_loss=bias_loss,
            weighted_fused=weighted_fused,
            bias_losses=bias_losses,
            bias_errors=bias_errors,
            plain_error=plain_error,
            fused_error=fused_error,
            weights=weights,
            swap=swap,
            permutations=permutations,
            swap_targets=swap_targets,
            fused_swap_error=fused_swap_error,
        )

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """One GEAR step. Logs under ``train/``, per step and as epoch means: ``loss``, ``Lb_<m>``,
        ``bias_mae_<m>`` (un-swapped |y_b^m - y|), ``fused_weighted`` mean(w * l_f), ``fused_unweighted``
        mean(l_f), ``fused_plain`` mean|F(f_c) - y| (un-swapped), ``w_mean``, ``w_frac_below_0.1`` and
        ``swap_active``; per step ``w_p10`` / ``w_p50`` / ``w_p90`` (exact epoch values: ``w_p*_epoch``)."""
        out = self.compute_losses(batch, self.swap_active())
        values = {
            "loss": out.loss,
            "fused_weighted": out.weighted_fused,
            "fused_unweighted": out.fused_error.mean(),
            "fused_plain": out.plain_error.mean(),
            "swap_active": float(out.swap),
            **{f"Lb_{m}": value for m, value in out.bias_losses.items()},
            **{f"bias_mae_{m}": err.mean() for m, err in out.bias_errors.items()},
        }
        self.log_weighting(values, out.weights, len(batch), batch=batch)
        return out.loss

    # ----- mechanism diagnostics -----

    def mechanism_diagnostics(self, dm: Any) -> dict[str, Any]:
        """At the selected weights (eval mode, no swap):

        * ``weights.<set>`` for train and IID valid: the IPW weight w = l_b / (l_b + l_f) the model gives each
          sample, split by the true conflict flag where the data has ground truth (``mean_w_conflict``,
          ``mean_w_aligned``, ``auroc``: w against the flag, 0.5 = chance); ``mean_w`` otherwise.
        * ``hb_shuffle_probe.<set>`` for valid and every test set: how much the robust path reads the biased
          features at test time. Every modality's h_b is permuted across the whole set (independent seeded
          permutations, as the swap does in training); ``mean_abs_change`` = mean |y_hat - y_hat_shuffled|,
          ``relative_change`` = that over the std of y_hat, ``mae`` / ``mae_shuffled`` and ``non0_acc2`` /
          ``non0_acc2_shuffled`` (MMSA's Non0 Acc-2); ``per_modality.<m>`` = ``mean_abs_change`` with only m's h_b
          permuted. Near 0: the prediction ignores h_b (the swap taught F to); large: it reads the bias."""
        weights = {name: self._weight_record(dm, name) for name in ("train", "valid")}
        probe = {name: self._hb_probe(dm, name) for name in ("valid", *dm.test_set_names)}
        return {"weights": weights, "hb_shuffle_probe": probe}

    def _weight_record(self, dm: Any, name: str) -> dict[str, Any]:
        ws, flags = [], []
        for batch in self.eval_batches(dm, name):
            out = self.compute_losses(batch, swap=False)
            ws.append(out.weights.double().cpu())
            if batch.z is not None:
                flags.append(conflict_flags(batch.z, batch.label).cpu())
        w = torch.cat(ws).numpy()
        if not flags:
            return {"n": int(w.size), "mean_w": float(w.mean())}
        record = identification_record(w, torch.cat(flags).numpy(), int(self.current_epoch), "w")
        record.pop("epoch")
        record["mean_w"] = float(w.mean())
        return record

    def _hb_probe(self, dm: Any, name: str) -> dict[str, Any]:
        hc: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        hb: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
        labels = []
        for batch in self.eval_batches(dm, name):
            c, b = self.encode(batch)
            for m in self.modalities:
                hc[m].append(c[m])
                hb[m].append(b[m])
            labels.append(batch.label)
        hc_all = {m: torch.cat(v) for m, v in hc.items()}
        hb_all = {m: torch.cat(v) for m, v in hb.items()}
        y = torch.cat(labels).double().cpu().numpy()
        n = y.size
        generator = torch.Generator().manual_seed(0)
        perms = {m: torch.randperm(n, generator=generator).to(self.device) for m in self.modalities}

        def predict(shuffled: tuple[str, ...]) -> Tensor:
            feats = [
                self.robust_feature(m, hc_all[m], hb_all[m][perms[m]] if m in shuffled else hb_all[m])
                for m in self.modalities
            ]
            return self.fusion(feats).double().cpu()

        plain, mixed = predict(()), predict(self.modalities)
        change = (plain - mixed).abs()
        spread = float(plain.std(correction=0))
        before, after = msa_metrics(plain.numpy(), y), msa_metrics(mixed.numpy(), y)
        return {
            "n": int(n),
            "mean_abs_change": float(change.mean()),
            "relative_change": float(change.mean()) / spread if spread > 0 else float("nan"),
            "mae": before["MAE"],
            "mae_shuffled": after["MAE"],
            "non0_acc2": before["Non0_acc_2"],
            "non0_acc2_shuffled": after["Non0_acc_2"],
            "per_modality": {m: float((plain - predict((m,))).abs().mean()) for m in self.modalities},
        }
