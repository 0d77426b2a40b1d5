"""Sequence encoders that keep the time axis (docs/algorithms-mmci-camib.md), for methods that work on frames or tokens.

The LF-TF backbone (`methods.backbone`) pools each modality to one vector; graph-based methods
(MMCI) and CaMIB's ``seq`` encoder option need per-step states instead. Each encoder maps a `Batch`
to ``(states, mask)``: states (B, L, d) and a bool mask (B, L) of valid steps (a prefix of the
sequence; padding follows it, as in the Batch contract).

* text, precomputed token features (B, L_t, d_t): Linear(d_t -> d) per token;
* text, token ids: the fine-tuned local transformers encoder of the backbone
  (`methods.backbone.TextFinetuneEncoder`, same loading and optimiser tag), last layer's token states
  -> Linear(hidden -> d);
* audio / vision: padded frames zeroed, Conv1d(d_m -> d, k=3, same padding) -> sinusoidal positions ->
  TransformerEncoder (post-norm, ReLU) with a key-padding mask from the lengths. On the CPU the layers run
  written out, the same function in less time (docs/performance.md "MMCI step profile"): `post_norm_layer` in
  training (the same dropout draws as torch's path), `post_norm_layer_eval` in eval mode (fused attention); on
  CUDA torch's own TransformerEncoder runs (its fused kernels).

Every module carries ``optim_group = "modality"`` (the fine-tuned text encoder inside keeps its own
``text_encoder`` group), which `methods.base` reads to build the optimiser's parameter groups.

`PooledSequenceEncoder` pools one of them to a vector (masked mean; CaMIB's ``seq`` encoders and the
``baseline_seq`` row), and `seq_optim` is the optimiser MMCI trains these encoders with (docs/algorithms-mmci-camib.md),
shared by the rows that are compared with MMCI on the same encoders.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.schema import Batch, FeatureSpec
from methods.backbone import TextConfig, TextFinetuneEncoder, masked_mean, resolve_text_mode
from methods.base import OptimConfig


def seq_optim() -> OptimConfig:
    """MMCI's optimiser (docs/algorithms-mmci-camib.md): fine-tuned text encoder as in the LF-TF backbone (lr 5e-5,
    wd 1e-3); everything else Adam 1e-3, wd 0; no gradient accumulation. The LSTM groups are unused by sequence
    encoders and kept only so every group has a value."""
    return OptimConfig(
        lr={"text_encoder": 5e-5, "audio_lstm": 1e-3, "vision_lstm": 1e-3, "modality": 1e-3, "head": 1e-3},
        weight_decay={"text_encoder": 1e-3, "audio_lstm": 0.0, "vision_lstm": 0.0, "modality": 0.0, "head": 0.0},
        accumulate=1,
    )


def sinusoidal_positions(length: int, dim: int, *, device: torch.device | None = None) -> Tensor:
    """The fixed sine / cosine position table (length, dim) of Vaswani et al. (odd ``dim`` allowed)."""
    position = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: dim // 2])
    return table


def step_mask(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Bool (B, L) of valid steps from ``lengths`` (all steps when lengths is None)."""
    if lengths is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]


def attention_keys(mask: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The keys each query may attend to, bool (B, L), and a per-sample factor (B, 1) for the attention output.

    A sample without any valid step has all its keys allowed (a softmax over none would be NaN) and a factor of 0,
    which is what torch's ``_safe_softmax`` gives it (attention weights of 0); every other sample has its valid
    steps allowed and a factor of 1."""
    has_steps = mask.any(1, keepdim=True)
    return mask | ~has_steps, has_steps.to(dtype)


def key_padding_bias(mask: Tensor, heads: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Built once per batch and shared by every layer: the additive attention bias (B * heads, 1, L), -inf at the
    keys `attention_keys` does not allow, and its factor per (sample, head), (B * heads, 1, 1)."""
    allowed, keep = attention_keys(mask, dtype)
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~allowed, float("-inf"))
    batch, steps = mask.shape
    bias = bias[:, None, None, :].expand(batch, heads, 1, steps).reshape(batch * heads, 1, steps)
    keep = keep[:, None, :].expand(batch, heads, 1).reshape(batch * heads, 1, 1)
    return bias, keep


def post_norm_layer(layer: nn.TransformerEncoderLayer, x: Tensor, bias: Tensor, keep: Tensor) -> Tensor:
    """``layer(x, src_key_padding_mask=...)`` of a post-norm ReLU layer (batch first), written out.

    The same function on the same parameters with the same dropout draws, in the same order and on tensors of the
    same shapes and memory layouts as torch's own path (the attention weights (B, h, L, L); the attention block's
    output laid out (L, B, d) in memory), so a seeded run keeps its random stream. Faster in training because it
    skips the per-layer mask conversion and checks, uses the shared ``bias`` from `key_padding_bias` in one
    ``baddbmm`` and a plain softmax instead of torch's NaN-guarding ``_safe_softmax``."""
    attn = layer.self_attn
    batch, steps, width = x.shape
    heads = attn.num_heads
    head_dim = width // heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(batch, steps, 3, heads, head_dim)
    q, k, v = (qkv[:, :, i].transpose(1, 2).reshape(batch * heads, steps, head_dim) for i in range(3))
    scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(head_dim))
    weights = F.dropout(torch.softmax(scores, dim=-1), attn.dropout, layer.training)
    out = torch.bmm(weights, v) * keep
    out = out.view(batch, heads, steps, head_dim).permute(2, 0, 1, 3).reshape(steps * batch, width)
    out = F.linear(out, attn.out_proj.weight, attn.out_proj.bias).view(steps, batch, width).transpose(0, 1)
    x = layer.norm1(x + layer.dropout1(out))
    ff = layer.linear2(layer.dropout(torch.relu(layer.linear1(x))))
    return layer.norm2(x + layer.dropout2(ff))


def post_norm_layer_eval(layer: nn.TransformerEncoderLayer, x: Tensor, allowed: Tensor, keep: Tensor) -> Tensor:
    """``layer(x, src_key_padding_mask=...)`` in eval mode (no dropout), written out around
    ``F.scaled_dot_product_attention`` (a fused attention kernel on the CPU), which on these sizes is faster than
    torch's own eval path (its ``_masked_softmax`` is not vectorised). ``allowed``: bool (B, 1, 1, L), True at the
    keys a query may attend to; ``keep``: (B, 1, 1); both from `attention_keys`. The same function: outputs equal
    torch's up to float rounding (tested)."""
    attn = layer.self_attn
    batch, steps, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(batch, steps, 3, heads, width // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(batch, steps, width)
    x = layer.norm1(x + F.linear(out * keep, attn.out_proj.weight, attn.out_proj.bias))
    hidden = F.relu(layer.linear1(x), inplace=not torch.is_grad_enabled())
    return layer.norm2(x + layer.linear2(hidden))


class ConvTransformerEncoder(nn.Module):
    """Frames (B, L, d_in) -> Conv1d(k) -> + sinusoidal positions -> TransformerEncoder -> (B, L, d).

    Padded steps are zeroed before the convolution (so the valid edge frames see the same zero
    context as the convolution's own padding) and excluded as attention keys; their outputs are
    meaningless and must be masked by the caller. On the CPU the layers run through `post_norm_layer` (training)
    or `post_norm_layer_eval` (eval mode).
    """

    def __init__(
        self, d_in: int, d: int, *, layers: int = 2, heads: int = 4, ff: int = 256, dropout: float = 0.1,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be a positive odd number (same-length convolution), got {kernel}")
        if d % heads != 0:
            raise ValueError(f"model width d={d} must be divisible by the number of heads {heads}")
        self.conv = nn.Conv1d(d_in, d, kernel_size=kernel, padding=kernel // 2)
        layer = nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=ff, dropout=dropout,
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.optim_group = "modality"
        self._positions: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

    @property
    def heads(self) -> int:
        """Attention heads of the layers."""
        return self.transformer.layers[0].self_attn.num_heads

    def positions(self, steps: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """`sinusoidal_positions`, computed once per length, device and dtype (a constant, not a parameter)."""
        key = (steps, dim, device, dtype)
        if key not in self._positions:
            self._positions[key] = sinusoidal_positions(steps, dim, device=device).to(dtype)
        return self._positions[key]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x * mask.unsqueeze(-1).to(x.dtype)
        h = self.conv(x.transpose(1, 2)).transpose(1, 2)
        h = h + self.positions(h.shape[1], h.shape[2], h.device, h.dtype)
        if h.device.type != "cpu":  # on CUDA torch's path has fused attention kernels
            return self.transformer(h, src_key_padding_mask=~mask)
        if not self.training:
            allowed, keep = attention_keys(mask, h.dtype)
            for layer in self.transformer.layers:
                h = post_norm_layer_eval(layer, h, allowed[:, None, None, :], keep[:, :, None])
            return h
        bias, keep = key_padding_bias(mask, self.heads, h.dtype)
        for layer in self.transformer.layers:
            h = post_norm_layer(layer, h, bias, keep)
        return h


class FrameEncoder(nn.Module):
    """Audio or vision of a Batch -> (states (B, L, d), mask (B, L)) via `ConvTransformerEncoder`."""

    def __init__(self, modality: str, d_in: int, d: int, **kwargs: int | float) -> None:
        super().__init__()
        self.modality = modality
        self.encoder = ConvTransformerEncoder(d_in, d, **kwargs)
        self.optim_group = "modality"

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        x = getattr(batch, self.modality)
        mask = step_mask(x, getattr(batch, f"{self.modality}_lengths"))
        return self.encoder(x, mask), mask


class TextTokenEncoder(nn.Module):
    """Precomputed token features (B, L_t, d_t) -> Linear(d_t -> d) per token, with the text mask."""

    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d)
        self.optim_group = "modality"

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.proj(batch.text), batch.text_mask()


class TextTokenFinetuneEncoder(TextFinetuneEncoder):
    """The backbone's fine-tuned local encoder, keeping every token: last layer -> Linear(hidden -> d).

    Loading, the offline check and the ``text_encoder`` optimiser tag are the backbone's; only the
    projection (per token, no pooling, no ReLU) differs.
    """

    def __init__(self, d: int, cfg: TextConfig) -> None:
        super().__init__(d, cfg)
        self.proj = nn.Linear(int(self.encoder.config.hidden_size), d)
        self.optim_group = "modality"

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        ids = batch.text_ids
        states = self.encoder(input_ids=ids[:, 0], attention_mask=ids[:, 1], token_type_ids=ids[:, 2])
        return self.proj(states.last_hidden_state), batch.text_mask()


def build_seq_encoder(
    modality: str, spec: FeatureSpec, d: int, text: TextConfig, *, layers: int = 2, heads: int = 4, ff: int = 256,
    dropout: float = 0.1, kernel: int = 3,
) -> nn.Module:
    """The sequence encoder of one modality: ``module(batch) -> (states (B, L, d), mask (B, L))``.

    Text uses precomputed features or the fine-tuned encoder as ``text.mode`` (``auto``: features
    when the data has them) decides; audio / vision use the convolution + transformer encoder.
    """
    if modality not in spec.modalities:
        raise ValueError(f"modality {modality!r} is not in the data (has {spec.modalities})")
    if modality == "text":
        if resolve_text_mode(spec, text) == "features":
            return TextTokenEncoder(spec.dims["text"], d)
        return TextTokenFinetuneEncoder(d, text)
    return FrameEncoder(modality, spec.dims[modality], d, layers=layers, heads=heads, ff=ff, dropout=dropout,
                        kernel=kernel)


class PooledSequenceEncoder(nn.Module):
    """A §5.1 sequence encoder of one modality, masked mean over its valid steps -> (B, d)."""

    def __init__(
        self, modality: str, spec: FeatureSpec, d: int, text: TextConfig, *, layers: int = 2, heads: int = 4,
        ff: int = 256, dropout: float = 0.1, kernel: int = 3,
    ) -> None:
        super().__init__()
        self.encoder = build_seq_encoder(
            modality, spec, d, text, layers=layers, heads=heads, ff=ff, dropout=dropout, kernel=kernel
        )

    def forward(self, batch: Batch) -> Tensor:
        states, mask = self.encoder(batch)
        return masked_mean(states, mask)
