"""CaMIB: causal multimodal information bottleneck (docs/algorithms-mmci-camib.md, a reconstruction on top of MIB).

Per present modality a variational information bottleneck (MIB's unimodal VIB) compresses the
encoder output h_m into z_m (sampled in training, the mean at evaluation) with its own decoder
g_m. The latents are fused into M, and a parameterised mask splits M into a causal part
C = m * M and a shortcut part S = (1 - m) * M. Training combines

* the causal L1 of f_c(C) and the unimodal IB terms (decoder L1 + beta * KL to N(0, I));
* a shortcut head f_s(S) made uninformative (regressed to the training-label mean);
* backdoor recombination: f_int(C_i + S_pi(i)) must still predict y_i for a random permutation pi;
* the instrumental-variable (IV) constraint: C must be recoverable from the instrument
  V = sg([z_t; z_a; z_v]) by a 2-layer MLP g, and f_c(g(V)) must predict y. Both V and the
  regression target sg(C) are detached, so L_IV trains only g and f_c (two-stage least squares):
  it cannot change the encoders, the fusion or the mask. The labelled variant ``iv.pull_c=true``
  (docs/algorithms-mmci-camib.md) keeps C attached in the stage-1 term ||g(V) - C||^2, so "global consistency"
  pulls the causal part toward what the instrument explains and its gradient reaches the mask and
  the fusion (and, through them, the encoders).

Every open choice is a field of `CaMIBConfig` with the default of docs/algorithms-mmci-camib.md. Evaluation uses
f_c(C) (``inference=causal``) or f_int(C + S) (``intervened``); every head's valid MAE is logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.fields import hash_neutral
from datamodules.schema import MODALITIES, Batch, FeatureSpec
from methods.backbone import build_encoder
from methods.base import MethodConfig, MSAMethod
from methods.bias_id import shortcut_modalities
from methods.seq_encoders import PooledSequenceEncoder

SIGMA_SHIFT = 5.0  # MIB: sigma = softplus(Linear(.) - 5), so the posterior starts nearly deterministic
LOG_EPS = 1e-12  # floor inside log(sigma), for numerical safety only

Encoder = Literal["lftf", "seq"]
FusionKind = Literal["concat", "transformer"]
MaskKind = Literal["sigmoid", "hard_concrete"]
ShortcutLoss = Literal["const", "grl"]
Instrument = Literal["ib_latents", "shuffled_modality", "prototypes"]
InferenceHead = Literal["causal", "intervened"]
ENCODERS, FUSIONS, MASKS, SHORTCUT_LOSSES, INSTRUMENTS, INFERENCE_HEADS = (
    get_args(choice) for choice in (Encoder, FusionKind, MaskKind, ShortcutLoss, Instrument, InferenceHead)
)
DIAG_TOP_DIMS = 8  # how many fused dimensions the mask diagnostic reads per ground-truth shortcut


@dataclass
class IVConfig:
    """The instrumental-variable branch (all reconstruction).

    ``instrument``: ``ib_latents`` V = sg([z_t; z_a; z_v]); ``shuffled_modality`` the same with one
    modality's block permuted across the batch in training (``shuffle_modality``: a modality name,
    or ``random`` for one drawn per batch); ``prototypes`` V = attention of sg(z) over a learned bank
    of ``prototypes`` global vectors. ``hidden`` is the width of g's hidden layer. ``pull_c``: false (default)
    detaches C in the stage-1 term ||g(V) - sg(C)||^2, so L_IV trains only g and f_c; true keeps C attached, so
    the term also pulls C (the mask and the fusion) toward g(V).
    """

    instrument: Instrument = "ib_latents"
    hidden: int = 64
    shuffle_modality: Literal["random", "text", "audio", "vision"] = "random"
    prototypes: int = 16
    pull_c: bool = hash_neutral(False)


@dataclass
class CaMIBConfig(MethodConfig):
    """CaMIB knobs (docs/algorithms-mmci-camib.md). ``lambda_iv=0`` is CaMIB without IV and ``lambda_bd=0``
    CaMIB without recombination. ``encoder``: ``lftf`` (LF-TF encoders, h_m of width backbone.dim) or
    ``seq`` (the sequence encoders of width ``seq_d`` + masked mean; FF = ``seq_ff_mult`` * seq_d)."""

    encoder: Encoder = "lftf"
    seq_d: int = 64
    seq_layers: int = 2
    seq_heads: int = 4
    seq_ff_mult: int = 4
    seq_dropout: float = 0.1
    seq_kernel: int = 3
    d_M: int = 64
    vib_hidden: int = 1024
    beta: float = 1e-3
    eval_sample: bool = False
    fusion: FusionKind = "concat"
    fused_vib: bool = False
    mask: MaskKind = "sigmoid"
    tau: float = 1.0
    head_dropout: float = 0.1
    shortcut_loss: ShortcutLoss = "const"
    lambda_s: float = 0.5
    lambda_bd: float = 0.5
    lambda_iv: float = 0.1
    lambda_m: float = 0.0
    rho: float = 0.5
    iv: IVConfig = field(default_factory=IVConfig)
    inference: InferenceHead = "causal"


def gaussian_kl(mu: Tensor, sigma: Tensor) -> Tensor:
    """MIB's KL(N(mu, sigma^2) || N(0, I)) = 1/2 * mean(mu^2 + sigma^2 - 2 log sigma - 1), the mean
    taken over batch and latent dimensions (as MIB's ``cmib.py``)."""
    return 0.5 * torch.mean(mu.pow(2) + sigma.pow(2) - 2.0 * torch.log(sigma.clamp_min(LOG_EPS)) - 1.0)


def recombine(causal: Tensor, shortcut: Tensor, perm: Tensor) -> Tensor:
    """Backdoor recombination: row i is C_i + S_perm(i) (only the shortcut partner changes)."""
    return causal + shortcut[perm]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return -grad


class _StraightThrough(torch.autograd.Function):
    """Forward: the hard 0/1 mask (soft > 0.5), exactly; backward: the gradient of the soft mask."""

    @staticmethod
    def forward(ctx: Any, soft: Tensor) -> Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def _tag(module: nn.Module, group: str) -> nn.Module:
    module.optim_group = group
    return module


def _head(d_in: int, hidden: int, dropout: float) -> nn.Module:
    """A prediction head: LN -> Linear(d_in -> hidden) -> ReLU -> Dropout -> Linear(hidden -> 1)."""
    return nn.Sequential(
        nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
    )


class VIB(nn.Module):
    """MIB's variational bottleneck: Linear(d_in -> hidden) -> ReLU; mu = Linear(hidden -> d_z);
    sigma = softplus(Linear(hidden -> d_z) - 5); decoder g = Linear(d_z -> 1)."""

    def __init__(self, d_in: int, d_z: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, d_z)
        self.raw_sigma = nn.Linear(hidden, d_z)
        self.decoder = nn.Linear(d_z, 1)

    def forward(self, h: Tensor, sample: bool) -> tuple[Tensor, Tensor, Tensor]:
        """(mu, sigma, z): z = mu + sigma * eps when ``sample``, else mu."""
        x = self.encoder(h)
        mu = self.mu(x)
        sigma = F.softplus(self.raw_sigma(x) - SIGMA_SHIFT)
        z = mu + sigma * torch.randn_like(sigma) if sample else mu
        return mu, sigma, z

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).squeeze(-1)


class TransformerFuse(nn.Module):
    """``fusion=transformer``: the latents as a token sequence through the LF-TF's TransformerEncoder
    (the backbone's fusion layers/heads/FF/dropout), flattened -> Linear(n * d_z -> d_M) -> ReLU."""

    def __init__(self, n_modalities: int, d_z: int, d_out: int, cfg: MethodConfig) -> None:
        super().__init__()
        f = cfg.backbone.fusion
        if d_z % f.heads:
            raise ValueError(f"camib.fusion=transformer: latent width {d_z} is not divisible by fusion.heads={f.heads}")
        layer = nn.TransformerEncoderLayer(
            d_model=d_z, nhead=f.heads, dim_feedforward=f.ff, dropout=f.dropout, batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=f.layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.Linear(n_modalities * d_z, d_out), nn.ReLU())

    def forward(self, latents: list[Tensor]) -> Tensor:
        return self.out(self.transformer(torch.stack(latents, dim=1)).flatten(1))


@dataclass
class CaMIBOutput:
    """Everything one forward pass produces (per-modality dicts keyed by modality name)."""

    mu: dict[str, Tensor]
    sigma: dict[str, Tensor]
    z: dict[str, Tensor]
    fused: Tensor
    mask: Tensor
    causal: Tensor
    shortcut: Tensor
    fused_mu: Tensor | None = None
    fused_sigma: Tensor | None = None


def _check(cfg: CaMIBConfig) -> None:
    choices = {
        "camib.encoder": (cfg.encoder, ENCODERS),
        "camib.fusion": (cfg.fusion, FUSIONS),
        "camib.mask": (cfg.mask, MASKS),
        "camib.shortcut_loss": (cfg.shortcut_loss, SHORTCUT_LOSSES),
        "camib.iv.instrument": (cfg.iv.instrument, INSTRUMENTS),
        "camib.inference": (cfg.inference, INFERENCE_HEADS),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
    for key in ("d_M", "vib_hidden", "seq_d", "seq_layers", "seq_heads", "seq_ff_mult"):
        if getattr(cfg, key) < 1:
            raise ValueError(f"camib.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.iv.hidden < 1 or cfg.iv.prototypes < 1:
        raise ValueError(
            f"camib.iv.hidden and camib.iv.prototypes must be >= 1, got {cfg.iv.hidden} and {cfg.iv.prototypes}"
        )
    if cfg.tau <= 0:
        raise ValueError(f"camib.tau must be > 0, got {cfg.tau}")
    if not 0.0 <= cfg.head_dropout < 1.0:
        raise ValueError(f"camib.head_dropout must lie in [0, 1), got {cfg.head_dropout}")
    for key in ("beta", "lambda_s", "lambda_bd", "lambda_iv", "lambda_m"):
        if getattr(cfg, key) < 0:
            raise ValueError(f"camib.{key} must be >= 0, got {getattr(cfg, key)}")


class CaMIB(MSAMethod):
    """Unimodal VIBs -> fusion -> causal / shortcut mask -> causal, shortcut, intervened and IV heads."""

    config_class = CaMIBConfig

    def __init__(self, dims: FeatureSpec, cfg: CaMIBConfig) -> None:
        super().__init__(dims, cfg)
        _check(cfg)
        self.modalities = dims.modalities
        if cfg.iv.shuffle_modality not in ("random", *self.modalities):
            raise ValueError(
                f"camib.iv.shuffle_modality must be 'random' or one of {self.modalities}, "
                f"got {cfg.iv.shuffle_modality!r}"
            )
        if cfg.encoder == "lftf":
            self.encoders = nn.ModuleDict({m: build_encoder(m, dims, cfg.backbone) for m in self.modalities})
            d_h = cfg.backbone.dim
        else:
            self.encoders = nn.ModuleDict({
                m: PooledSequenceEncoder(
                    m, dims, cfg.seq_d, cfg.backbone.text, layers=cfg.seq_layers, heads=cfg.seq_heads,
                    ff=cfg.seq_ff_mult * cfg.seq_d, dropout=cfg.seq_dropout, kernel=cfg.seq_kernel,
                )
                for m in self.modalities
            })
            d_h = cfg.seq_d
        d_z, d_m, n = d_h, cfg.d_M, len(self.modalities)
        self.vib = nn.ModuleDict({m: _tag(VIB(d_h, d_z, cfg.vib_hidden), "modality") for m in self.modalities})
        if cfg.fusion == "concat":
            self.fuse = _tag(nn.Sequential(nn.Linear(n * d_z, d_m), nn.ReLU()), "head")
        else:
            self.fuse = _tag(TransformerFuse(n, d_z, d_m, cfg), "head")
        self.fused_vib = _tag(VIB(d_m, d_m, cfg.vib_hidden), "head") if cfg.fused_vib else None
        self.mask_net = _tag(nn.Sequential(nn.Linear(d_m, d_m), nn.ReLU(), nn.Linear(d_m, d_m)), "head")
        self.f_c = _tag(_head(d_m, d_m, cfg.head_dropout), "head")
        self.f_s = _tag(_head(d_m, d_m, cfg.head_dropout), "head")
        self.f_int = _tag(_head(d_m, d_m, cfg.head_dropout), "head")
        iv_layers = [nn.Linear(n * d_z, cfg.iv.hidden), nn.ReLU(), nn.Linear(cfg.iv.hidden, d_m)]
        self.iv_net = _tag(nn.Sequential(*iv_layers), "head")
        if cfg.iv.instrument == "prototypes":
            self.prototypes = nn.Parameter(torch.randn(cfg.iv.prototypes, n * d_z) / math.sqrt(n * d_z))
        self.perm_generator = torch.Generator().manual_seed(0)

    def on_fit_start(self) -> None:
        """Read the training-label mean (base) and seed the permutation generator from the run's seed."""
        super().on_fit_start()
        self.perm_generator.manual_seed(torch.initial_seed())

    def _randperm(self, n: int, device: torch.device) -> Tensor:
        return torch.randperm(n, generator=self.perm_generator).to(device)

    def _mask(self, fused: Tensor) -> Tensor:
        logits = self.mask_net(fused) / self.cfg.tau
        if self.cfg.mask == "sigmoid":
            return torch.sigmoid(logits)
        if not self.training:
            return (logits > 0).to(fused.dtype)
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        soft = torch.sigmoid(logits + (torch.log(u) - torch.log1p(-u)) / self.cfg.tau)
        return _StraightThrough.apply(soft)

    def forward_parts(self, batch: Batch) -> CaMIBOutput:
        """One forward pass; samples the latents in training (and at evaluation if ``eval_sample``)."""
        sample = self.training or self.cfg.eval_sample
        mu, sigma, z = {}, {}, {}
        for m in self.modalities:
            mu[m], sigma[m], z[m] = self.vib[m](self.encoders[m](batch), sample)
        latents = [z[m] for m in self.modalities]
        fused = self.fuse(torch.cat(latents, dim=-1) if self.cfg.fusion == "concat" else latents)
        fused_mu = fused_sigma = None
        if self.fused_vib is not None:
            fused_mu, fused_sigma, fused = self.fused_vib(fused, sample)
        mask = self._mask(fused)
        return CaMIBOutput(mu, sigma, z, fused, mask, mask * fused, (1.0 - mask) * fused, fused_mu, fused_sigma)

    def instrument(self, out: CaMIBOutput) -> Tensor:
        """The detached instrument V (B, n * d_z); ``shuffled_modality`` permutes only in training."""
        blocks = [out.z[m].detach() for m in self.modalities]
        iv = self.cfg.iv
        if iv.instrument == "shuffled_modality" and self.training:
            if iv.shuffle_modality == "random":
                k = int(torch.randint(len(blocks), (1,), generator=self.perm_generator))
            else:
                k = self.modalities.index(iv.shuffle_modality)
            blocks[k] = blocks[k][self._randperm(blocks[k].shape[0], blocks[k].device)]
        v = torch.cat(blocks, dim=-1)
        if iv.instrument == "prototypes":
            attn = torch.softmax(v @ self.prototypes.t() / math.sqrt(v.shape[-1]), dim=-1)
            v = attn @ self.prototypes
        return v

    def _score(self, head: nn.Module, x: Tensor) -> Tensor:
        return head(x).squeeze(-1)

    def predict(self, batch: Batch) -> Tensor:
        return self._prediction(self.forward_parts(batch))

    def _prediction(self, out: CaMIBOutput) -> Tensor:
        if self.cfg.inference == "causal":
            return self._score(self.f_c, out.causal)
        return self._score(self.f_int, out.causal + out.shortcut)

    def predict_with_heads(self, batch: Batch, *, heads: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """One forward pass for the prediction and the heads; with ``camib.eval_sample`` each pass draws its own
        noise, so the two separate passes are kept."""
        if self.cfg.eval_sample:
            return super().predict_with_heads(batch, heads=heads)
        out = self.forward_parts(batch)
        return self._prediction(out), self._heads(out, len(batch)) if heads else {}

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        return self._heads(self.forward_parts(batch), len(batch))

    def _heads(self, out: CaMIBOutput, n: int) -> dict[str, Tensor]:
        """causal f_c(C), intervened f_int(C + S), shortcut f_s(S), recombined f_int(C_i + S_pi(i))
        (a fixed permutation per call, seed 0), iv f_c(g(V)) and each unimodal decoder g_m(z_m)."""
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).to(out.fused.device)
        heads = {
            "causal": self._score(self.f_c, out.causal),
            "intervened": self._score(self.f_int, out.causal + out.shortcut),
            "shortcut": self._score(self.f_s, out.shortcut),
            "recombined": self._score(self.f_int, recombine(out.causal, out.shortcut, perm)),
            "iv": self._score(self.f_c, self.iv_net(self.instrument(out))),
        }
        for m in self.modalities:
            heads[f"g_{m}"] = self.vib[m].decode(out.z[m])
        return heads

    def loss_terms(self, batch: Batch) -> tuple[dict[str, Tensor], CaMIBOutput]:
        """Every loss term (unweighted) plus the weighted total under ``loss``.

        ``iv_reg`` is the squared L2 norm ||C_hat - sg(C)||^2 summed over the d_M features and
        averaged over the batch (C not detached under ``iv.pull_c``).
        """
        cfg, y = self.cfg, batch.label
        out = self.forward_parts(batch)
        terms: dict[str, Tensor] = {}
        ib_total = y.new_zeros(())
        for m in self.modalities:
            terms[f"dec_{m}"] = (self.vib[m].decode(out.z[m]) - y).abs().mean()
            terms[f"kl_{m}"] = gaussian_kl(out.mu[m], out.sigma[m])
            ib_total = ib_total + terms[f"dec_{m}"] + cfg.beta * terms[f"kl_{m}"]
        if self.fused_vib is not None:
            terms["dec_fused"] = (self.fused_vib.decode(out.fused) - y).abs().mean()
            terms["kl_fused"] = gaussian_kl(out.fused_mu, out.fused_sigma)
            ib_total = ib_total + terms["dec_fused"] + cfg.beta * terms["kl_fused"]
        terms["ib"] = ib_total
        terms["causal"] = (self._score(self.f_c, out.causal) - y).abs().mean()
        if cfg.shortcut_loss == "const":
            shortcut_pred = self._score(self.f_s, out.shortcut)
            terms["shortcut"] = (shortcut_pred - self.train_label_mean).abs().mean()
        else:
            shortcut_pred = self._score(self.f_s, _GradReverse.apply(out.shortcut))
            terms["shortcut"] = (shortcut_pred - y).abs().mean()
        terms["shortcut_MAE"] = (shortcut_pred - y).abs().mean()
        perm = self._randperm(len(batch), y.device)
        terms["bd"] = (self._score(self.f_int, recombine(out.causal, out.shortcut, perm)) - y).abs().mean()
        c_hat = self.iv_net(self.instrument(out))
        target = out.causal if cfg.iv.pull_c else out.causal.detach()
        terms["iv_reg"] = (c_hat - target).pow(2).sum(-1).mean()
        terms["iv_label"] = (self._score(self.f_c, c_hat) - y).abs().mean()
        terms["iv"] = terms["iv_reg"] + terms["iv_label"]
        terms["mask"] = (out.mask.mean() - cfg.rho).abs()
        terms["loss"] = (
            terms["causal"]
            + terms["ib"]
            + cfg.lambda_s * terms["shortcut"]
            + cfg.lambda_bd * terms["bd"]
            + cfg.lambda_iv * terms["iv"]
            + cfg.lambda_m * terms["mask"]
        )
        return terms, out

    def diagnostics(self, terms: dict[str, Tensor], out: CaMIBOutput) -> dict[str, Tensor]:
        """Diagnostics: KL and mean sigma per modality, mask mean / spread / fraction > 0.5,
        the loss terms, and the causal / shortcut / recombined head MAE."""
        values: dict[str, Tensor] = {}
        for m in self.modalities:
            values[f"kl_{m}"] = terms[f"kl_{m}"]
            values[f"sigma_{m}"] = out.sigma[m].mean()
            values[f"g_{m}_MAE"] = terms[f"dec_{m}"]
        if out.fused_sigma is not None:
            values["kl_fused"] = terms["kl_fused"]
            values["sigma_fused"] = out.fused_sigma.mean()
        values["mask_mean"] = out.mask.mean()
        values["mask_std"] = out.mask.std(correction=0)
        values["mask_frac_gt_half"] = (out.mask > 0.5).float().mean()
        values.update(
            L_c=terms["causal"], L_ib=terms["ib"], L_s=terms["shortcut"], L_bd=terms["bd"], L_iv=terms["iv"],
            L_iv_reg=terms["iv_reg"], L_iv_label=terms["iv_label"], L_mask=terms["mask"],
            causal_MAE=terms["causal"], shortcut_MAE=terms["shortcut_MAE"], recombined_MAE=terms["bd"],
        )
        return values

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        terms, out = self.loss_terms(batch)
        self.log("train/loss", terms["loss"], on_step=True, on_epoch=True, batch_size=len(batch))
        self.log_diagnostics(self.diagnostics(terms, out), on_step=False, batch_size=len(batch))
        return terms["loss"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Base validation (predictions and heads), plus the KL / sigma / mask diagnostics on valid."""
        super().validation_step(batch, batch_idx)
        out = self.forward_parts(batch)
        values: dict[str, Tensor] = {
            "mask_mean": out.mask.mean(),
            "mask_std": out.mask.std(correction=0),
            "mask_frac_gt_half": (out.mask > 0.5).float().mean(),
        }
        for m in self.modalities:
            values[f"kl_{m}"] = gaussian_kl(out.mu[m], out.sigma[m])
            values[f"sigma_{m}"] = out.sigma[m].mean()
        self.log_diagnostics(values, prefix="val/", on_step=False, batch_size=len(batch))

    def mechanism_diagnostics(self, dm: Any) -> dict[str, Any]:
        """Does the mask keep the shortcut out of C? At the selected weights, on IID valid and every test set:
        ``mask_mean`` over all fused dimensions and, for each modality that carries a ground-truth shortcut
        (synthetic data), under ``shortcut.<modality>``: the ``DIAG_TOP_DIMS`` fused dimensions most correlated
        with its shortcut sign z_m given the label (partial correlation, so a dimension that tracks y is not
        counted just because z agrees with y in IID data), their mean |partial correlation| (``z_abs_pcorr``), the
        mean mask on them (``mask_on_z_dims``) and, for contrast, on the dimensions most correlated with y
        (``mask_on_y_dims``). A mask that removes the shortcut has ``mask_on_z_dims`` well below
        ``mask_on_y_dims``."""
        sets: dict[str, dict[str, Any]] = {}
        for name in ("valid", *dm.test_set_names):
            fused, masks, labels, zs = [], [], [], []
            for batch in self.eval_batches(dm, name):
                out = self.forward_parts(batch)
                fused.append(out.fused.double().cpu())
                masks.append(out.mask.double().cpu())
                labels.append(batch.label.double().cpu())
                if batch.z is not None:
                    zs.append(batch.z.double().cpu())
            fused_t, mask_t, y = torch.cat(fused), torch.cat(masks), torch.cat(labels)
            entry: dict[str, Any] = {"mask_mean": float(mask_t.mean()), "n": int(y.numel())}
            z = torch.cat(zs) if zs else None
            shortcut: dict[str, Any] = {}
            for m in shortcut_modalities(z):
                column = z[:, MODALITIES.index(m)]
                shortcut[m] = mask_on_correlated_dims(fused_t, mask_t, y, column, DIAG_TOP_DIMS)
            if shortcut:
                entry["shortcut"] = shortcut
            sets[name] = entry
        return {"top_dims": DIAG_TOP_DIMS, "sets": sets}


def _residual(x: Tensor, y: Tensor) -> Tensor:
    """Columns of ``x`` (N, k) minus their least-squares fit on [1, y] (float64)."""
    design = torch.stack([torch.ones_like(y), y], dim=1)
    coef = torch.linalg.lstsq(design, x).solution
    return x - design @ coef


def _corr_columns(x: Tensor, v: Tensor) -> Tensor:
    """Pearson correlation of every column of ``x`` (N, k) with ``v`` (N,); 0 for a constant column."""
    xc, vc = x - x.mean(0), v - v.mean()
    denom = xc.norm(dim=0) * vc.norm()
    return torch.where(denom > 0, (xc * vc[:, None]).sum(0) / denom.clamp_min(1e-300), torch.zeros_like(denom))


def mask_on_correlated_dims(fused: Tensor, mask: Tensor, y: Tensor, z: Tensor, k: int) -> dict[str, Any]:
    """The mask on the ``k`` fused dimensions most correlated with ``z`` given ``y`` (partial correlation), against
    the ``k`` dimensions most correlated with ``y``; see `CaMIB.mechanism_diagnostics`."""
    k = min(k, fused.shape[1])
    pcorr = _corr_columns(_residual(fused, y), _residual(z[:, None], y)[:, 0]).abs()
    ycorr = _corr_columns(fused, y).abs()
    z_dims = torch.topk(pcorr, k).indices
    y_dims = torch.topk(ycorr, k).indices
    per_dim = mask.mean(0)
    return {
        "z_dims": sorted(int(i) for i in z_dims),
        "z_abs_pcorr": float(pcorr[z_dims].mean()),
        "mask_on_z_dims": float(per_dim[z_dims].mean()),
        "y_abs_corr": float(ycorr[y_dims].mean()),
        "mask_on_y_dims": float(per_dim[y_dims].mean()),
    }
