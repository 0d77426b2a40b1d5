"""MMCI: multi-relational multimodal causal intervention (docs/algorithms-mmci-camib.md; reconstructed on CAL).

Jiang et al. (arXiv 2508.04999) publish no code. This module is a reconstruction that borrows
CAL's verified mechanics (Sui et al., KDD 2022):

1. Sequence encoders (`methods.seq_encoders`) give per-step states of width d for every present
   modality; masked adaptive mean pooling turns them into ``nodes_per_modality`` nodes per modality
   (fewer when the data's sequences are shorter, one for utterance-level data), plus a learned
   modality embedding.
2. One relation per ordered pair of present modalities (9 for t/a/v, 4 for two, 1 for text only):
   dense edges from every source node to every target node (self-loops included for intra
   relations). Per relation an edge MLP gives a softmax over two logits, the causal / shortcut
   edge attention pair (alpha^c, alpha^s) summing to one; a shared node MLP gives (beta^c, beta^s).
3. ``readout=split`` (default, as CAL): every node state h_j is split *before* message passing,
   x^c_j = beta^c_j h_j and x^s_j = beta^s_j h_j; causal messages and readouts use only x^c (residual
   included), shortcut ones only x^s. C = concat_r C_r and S = concat_r S_r share one layout, so they
   can be added; the strata are S's intra-relation blocks and its inter-relation blocks.
   ``readout=unsplit`` is the earlier layout, kept as an ablation: the readouts add the unsplit h_i,
   and S is two d-wide strata (the means over intra and over inter relations).
4. Losses: L_c = |f_c(C) - y|; L_s makes f_s(S) uninformative (default ``kl_uniform``: a 7-bin head
   pushed to the uniform distribution, CAL's loss); the backdoor intervention
   L_int = |f_int(C_i + S~_i) - y_i|, where S~_i takes its intra blocks from S_pi_intra(i) and its inter
   blocks from S_pi_inter(i) (independent per-batch permutations) and is added to C directly
   (``combine=add``; ``linear`` maps S by a learnable W_s first, the earlier layout; ``concat`` feeds
   [C ; S~]); L = L_c + lambda_s L_s + lambda_int L_int. Variant ``stratify=memory``: a FIFO of detached
   shortcut vectors, K-means into K strata once per epoch, and the intervened prediction averaged over
   the stratum centres weighted by their frequencies.

An empty stratum (text only has no inter relation) is left out: S then holds the intra blocks only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.schema import Batch, FeatureSpec
from methods.base import MethodConfig, MSAMethod, OptimConfig
from methods.bias_id import shortcut_modalities
from methods.seq_encoders import build_seq_encoder, seq_optim

SHORT_NAMES = {"text": "t", "audio": "a", "vision": "v"}
STRATA = ("intra", "inter")
KL_BINS = 7
READOUTS = ("split", "unsplit")


@dataclass
class MMCIConfig(MethodConfig):
    """MMCI's knobs (docs/algorithms-mmci-camib.md; all reconstruction). Of ``backbone`` only ``backbone.text``
    (mode, encoder) is read: MMCI has its own sequence encoders and no LF-TF fusion.

    * ``d``: node / encoder width; ``nodes_per_modality``: nodes per modality (at most the data's length).
    * ``enc_layers``, ``enc_heads``, ``enc_ff_mult`` (FF = mult * d), ``enc_dropout``, ``enc_kernel``:
      the audio / vision Conv1d + TransformerEncoder.
    * ``edges``: ``dense`` | ``window`` (intra relations connect nodes at most ``window`` apart; inter stay dense).
    * ``relations``: ``pairs`` (own weights per ordered modality pair: 9 for t/a/v) | ``grouped`` (two weight
      sets, intra and inter, shared by their pairs).
    * ``readout``: ``split`` (CAL: nodes split by beta before message passing, split residuals, S in C's
      layout) | ``unsplit`` (the earlier layout: residuals carry the unsplit h, S = two d-wide strata).
    * ``layers``: graph layers; beyond the first, causal and shortcut node states update separately,
      x^c <- ReLU(LN(x^c + mean_r m^c)) (likewise x^s). Under ``split`` beta is computed once (the split) and
      the edge attentions of later layers read x^c + x^s; under ``unsplit`` every layer has its own beta and
      its attentions read (h^c + h^s) / 2.
    * ``aggregate``: how the per-relation readouts form C (and, under ``split``, S): ``concat`` (R d wide) |
      ``sum`` (d wide).
    * ``combine``: the intervened head's input, ``add`` (C + S~, a direct sum: nothing can switch the
      intervention off; needs ``readout=split``) | ``linear`` (C + W_s S~, W_s learnable) | ``concat`` ([C ; S~]).
    * ``shortcut_loss``: ``kl_uniform`` (7-bin head, KL(uniform || softmax), CAL's) | ``const`` (regress f_s to
      the training-label mean) | ``grl`` (f_s regresses y through gradient reversal scaled by ``grl_scale``).
    * ``stratify``: ``permute`` (independent per-batch permutations of the intra / inter strata) | ``memory``
      (FIFO of the last ``memory_size`` detached shortcut vectors S; K-means with ``memory_strata`` centres and
      ``kmeans_iters`` Lloyd steps once per epoch; L_int on sum_k p_k f_int(combine(C_i, s_k)); the first
      epoch, before any centres exist, uses ``permute``).
    * ``lambda_s``, ``lambda_int``: loss weights; ``inference``: ``intervened`` (f_int(combine(C, S)), no
      shuffle) | ``causal`` (f_c(C)) | ``expectation`` (sum_k p_k f_int(combine(C, s_k)); ``stratify=memory``
      only). ``intervened`` and ``expectation`` need ``lambda_int > 0`` (f_int is trained only by L_int).
    * ``head_dropout``: dropout inside f_c, f_s, f_int (LN -> Linear -> ReLU -> Dropout -> Linear).
    """

    d: int = 64
    nodes_per_modality: int = 16
    enc_layers: int = 2
    enc_heads: int = 4
    enc_ff_mult: int = 4
    enc_dropout: float = 0.1
    enc_kernel: int = 3
    edges: Literal["dense", "window"] = "dense"
    window: int = 1
    relations: Literal["pairs", "grouped"] = "pairs"
    layers: int = 1
    readout: Literal["split", "unsplit"] = "split"
    aggregate: Literal["concat", "sum"] = "concat"
    combine: Literal["add", "linear", "concat"] = "add"
    shortcut_loss: Literal["kl_uniform", "const", "grl"] = "kl_uniform"
    grl_scale: float = 1.0
    stratify: Literal["permute", "memory"] = "permute"
    memory_size: int = 4096
    memory_strata: int = 8
    kmeans_iters: int = 20
    lambda_s: float = 0.5
    lambda_int: float = 0.5
    inference: Literal["intervened", "causal", "expectation"] = "intervened"
    head_dropout: float = 0.1
    optim: OptimConfig = field(default_factory=seq_optim)


# field -> its choices, read from the Literal annotations above (the config builder checks them too).
_CHOICES = {name: get_args(hint) for name, hint in get_type_hints(MMCIConfig).items() if get_origin(hint) is Literal}


def check_config(cfg: MMCIConfig) -> None:
    """Reject unknown choices and out-of-range values, naming the ``mmci.<field>`` that is wrong."""
    for name, allowed in _CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"mmci.{name} must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}")
    for name in ("d", "nodes_per_modality", "enc_layers", "enc_heads", "enc_ff_mult", "layers", "memory_strata"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"mmci.{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.window < 0:
        raise ValueError(f"mmci.window must be >= 0, got {cfg.window}")
    for name in ("lambda_s", "lambda_int"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"mmci.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.memory_size < cfg.memory_strata:
        raise ValueError(f"mmci.memory_size={cfg.memory_size} must be >= mmci.memory_strata={cfg.memory_strata}")
    if cfg.kmeans_iters < 0:
        raise ValueError(f"mmci.kmeans_iters must be >= 0, got {cfg.kmeans_iters}")
    if cfg.combine == "add" and cfg.readout != "split":
        raise ValueError(
            f"mmci.combine=add sums C and S directly and needs S in C's layout (mmci.readout=split); "
            f"mmci.readout={cfg.readout} gives S as two d-wide strata: use mmci.combine=linear or concat"
        )
    if cfg.inference == "expectation" and cfg.stratify != "memory":
        raise ValueError("mmci.inference=expectation needs mmci.stratify=memory (it averages over memory strata)")
    if cfg.inference in ("intervened", "expectation") and cfg.lambda_int == 0:
        raise ValueError(
            f"mmci.inference={cfg.inference} needs mmci.lambda_int > 0 (f_int is trained only by L_int); "
            "with the intervention off use mmci.inference=causal"
        )


def relation_list(modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """(source, target) pairs among the present modalities: intra relations first (t->t, a->a, v->v), then
    inter relations in the order (t->a, a->t, t->v, v->t, a->v, v->a)."""
    intra = [(m, m) for m in modalities]
    inter = []
    for i, first in enumerate(modalities):
        for second in modalities[i + 1 :]:
            inter += [(first, second), (second, first)]
    return intra + inter


def relation_name(source: str, target: str) -> str:
    """``t->a`` style name of a relation (source -> target)."""
    return f"{SHORT_NAMES[source]}->{SHORT_NAMES[target]}"


def adaptive_node_pool(states: Tensor, lengths: Tensor, n: int) -> Tensor:
    """Masked adaptive mean pooling of (B, L, d) states into (B, n, d) nodes over the valid prefix.

    Bin k covers valid positions [floor(k l / n), max(floor(k l / n) + 1, ceil((k + 1) l / n))), so every
    bin holds at least one frame even when l < n (bins then repeat frames) and padding is never read.
    """
    steps = states.shape[1]
    length = lengths.clamp(1, steps).to(torch.long)[:, None]
    k = torch.arange(n, device=states.device)[None, :]
    start = torch.div(k * length, n, rounding_mode="floor")
    end = torch.maximum(start + 1, torch.div((k + 1) * length + n - 1, n, rounding_mode="floor"))
    t = torch.arange(steps, device=states.device)[None, None, :]
    weights = ((t >= start[..., None]) & (t < end[..., None])).to(states.dtype)
    weights = weights / (end - start)[..., None].to(states.dtype)
    return weights @ states


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """K-means of the rows of ``x`` (n >= k): k-means++ seeding from ``generator``, then ``iters`` Lloyd
    steps (an emptied cluster keeps its centre). Returns centres (k, d) and cluster frequencies (k,) that
    sum to one. Runs on the CPU in float64 so the result is deterministic for the generator's state."""
    data = x.detach().to("cpu", torch.float64)
    n = data.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k={k} vectors, got {n}")
    chosen = [int(torch.randint(n, (1,), generator=generator))]
    dist = ((data - data[chosen[0]]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(dist.sum())
        probs = dist / total if total > 0 else torch.full((n,), 1.0 / n, dtype=torch.float64)
        chosen.append(int(torch.multinomial(probs, 1, generator=generator)))
        dist = torch.minimum(dist, ((data - data[chosen[-1]]) ** 2).sum(1))
    centres = data[chosen].clone()
    assign = torch.cdist(data, centres).argmin(1)
    for _ in range(iters):
        counts = torch.bincount(assign, minlength=k).to(data.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, data)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        assign = torch.cdist(data, centres).argmin(1)
    counts = torch.bincount(assign, minlength=k).to(data.dtype)
    return centres.to(x.dtype), (counts / n).to(x.dtype)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward, gradient multiplied by ``-scale`` backward (adversarial shortcut head)."""
    return _GradReverse.apply(x, scale)


def _head(d_in: int, d: int, dropout: float, out: int = 1) -> nn.Sequential:
    """f_c / f_s / f_int: LN -> Linear(in -> d) -> ReLU -> Dropout -> Linear(d -> out)."""
    head = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, out))
    head.optim_group = "head"
    return head


class RelationBlock(nn.Module):
    """One relation's weights in one graph layer: edge MLP_r = Linear(2d -> d) -> ReLU -> Linear(d -> 2) on
    [h_i ; h_j], message maps W^c_r, W^s_r, and (last layer only) the readout LayerNorms LN^c_r, LN^s_r."""

    def __init__(self, d: int, readout: bool) -> None:
        super().__init__()
        self.edge = nn.Linear(2 * d, d)
        self.edge_out = nn.Linear(d, 2)
        self.w_c = nn.Linear(d, d, bias=False)
        self.w_s = nn.Linear(d, d, bias=False)
        if readout:
            self.ln_c = nn.LayerNorm(d)
            self.ln_s = nn.LayerNorm(d)

    def attention(self, h_target: Tensor, h_source: Tensor) -> Tensor:
        """(alpha^c, alpha^s) per edge, (B, n_target, n_source, 2), a softmax over the last axis.

        Linear(2d -> d) on the concatenation [h_i ; h_j] is applied as the sum of its two halves, which is
        the same map without materialising every pair's 2d input. The softmax of the two logits is computed as
        sigmoid(+-(l^c - l^s)), with l^c - l^s from the difference of ``edge_out``'s two rows: the same function,
        but the (B, n_target, n_source, d) hidden layer meets one weight vector instead of two."""
        d = h_target.shape[-1]
        a = F.linear(h_target, self.edge.weight[:, :d], self.edge.bias)
        b = F.linear(h_source, self.edge.weight[:, d:])
        hidden = torch.relu_(a[:, :, None] + b[:, None])
        w, bias = self.edge_out.weight, self.edge_out.bias
        diff = hidden @ (w[0] - w[1]) + (bias[0] - bias[1])
        return torch.sigmoid(torch.stack([diff, -diff], dim=-1))

    def messages(self, alpha: Tensor, xc_source: Tensor, xs_source: Tensor, edge_mask: Tensor) -> tuple[Tensor, Tensor]:
        """m^c_i = (1/|N(i)|) sum_j alpha^c_ij W^c x^c_j, and m^s likewise from x^s; each (B, n_target, d).

        The caller passes the source states already split (x^c = beta^c h, x^s = beta^s h in the first layer)."""
        mask = edge_mask.to(alpha.dtype)
        degree = mask.sum(-1, keepdim=True).clamp_min(1.0)
        m_c = (alpha[..., 0] * mask) @ self.w_c(xc_source) / degree
        m_s = (alpha[..., 1] * mask) @ self.w_s(xs_source) / degree
        return m_c, m_s


class GraphLayer(nn.Module):
    """One layer: the shared node MLP (``node``: every layer of the unsplit layout, the first of the split one),
    one `RelationBlock` per relation key, and (all but the last layer) per-modality LayerNorms for the separate
    causal / shortcut node-state updates."""

    def __init__(self, d: int, keys: list[str], modalities: tuple[str, ...], last: bool, node: bool) -> None:
        super().__init__()
        self.node = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 2)) if node else None
        self.relations = nn.ModuleDict({key: RelationBlock(d, readout=last) for key in keys})
        if not last:
            self.update_c = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})
            self.update_s = nn.ModuleDict({m: nn.LayerNorm(d) for m in modalities})


@dataclass
class GraphOutput:
    """What one forward pass of the graph gives: the causal vector C (B, c_dim), the shortcut strata
    (name -> tensor, present strata only; ``split``: the intra / inter relations' readouts S_r, concatenated
    or summed as ``join`` says; ``unsplit``: the d-wide means over intra / inter relations), and the last
    layer's attentions: alpha per relation name (B, n_target, n_source, 2), edge masks per relation name
    (n_target, n_source), beta per modality (B, n_m, 2)."""

    causal: Tensor
    strata: dict[str, Tensor]
    alpha: dict[str, Tensor]
    edge_mask: dict[str, Tensor]
    beta: dict[str, Tensor]
    join: str = "cat"

    def assemble(self, strata: dict[str, Tensor]) -> Tensor:
        """The shortcut vector from (possibly permuted) strata: concatenated in stratum order (``cat``) or summed
        (``sum``, the ``aggregate=sum`` layout of C)."""
        parts = [strata[s] for s in STRATA if s in strata]
        return torch.cat(parts, dim=-1) if self.join == "cat" else torch.stack(parts).sum(0)

    @property
    def shortcut(self) -> Tensor:
        """S over the present strata: under ``readout=split`` in C's layout (same shape as C)."""
        return self.assemble(self.strata)


class CausalGraph(nn.Module):
    """Nodes -> multi-relational causal / shortcut attention -> C and the shortcut strata."""

    def __init__(self, spec: FeatureSpec, cfg: MMCIConfig) -> None:
        super().__init__()
        self.modalities = spec.modalities
        self.edges, self.window = cfg.edges, cfg.window
        self.readout, self.aggregate = cfg.readout, cfg.aggregate
        self.relations = relation_list(self.modalities)
        self.names = [relation_name(s, t) for s, t in self.relations]
        if cfg.relations == "pairs":
            self.keys = [f"{SHORT_NAMES[s]}_{SHORT_NAMES[t]}" for s, t in self.relations]
        else:
            self.keys = ["intra" if s == t else "inter" for s, t in self.relations]
        unique = list(dict.fromkeys(self.keys))
        self.modality_embedding = nn.Embedding(len(self.modalities), cfg.d)
        split = cfg.readout == "split"
        self.layers = nn.ModuleList(
            GraphLayer(cfg.d, unique, self.modalities, last=(i == cfg.layers - 1), node=(i == 0 or not split))
            for i in range(cfg.layers)
        )
        self.optim_group = "head"

    @property
    def strata_present(self) -> list[str]:
        """The non-empty strata: ``intra`` always, ``inter`` when two or more modalities are present."""
        return ["intra"] + (["inter"] if len(self.modalities) > 1 else [])

    def widths(self, d: int) -> tuple[int, int]:
        """(width of C, width of S) for node width ``d``."""
        c_dim = len(self.relations) * d if self.aggregate == "concat" else d
        s_dim = c_dim if self.readout == "split" else len(self.strata_present) * d
        return c_dim, s_dim

    def edge_mask(self, source: str, target: str, n_target: int, n_source: int, device: torch.device) -> Tensor:
        """Bool (n_target, n_source): dense, or for ``edges=window`` intra edges with |i - j| <= window."""
        if self.edges == "dense" or source != target:
            return torch.ones(n_target, n_source, dtype=torch.bool, device=device)
        i = torch.arange(n_target, device=device)
        return (i[:, None] - i[None, :]).abs() <= self.window

    def forward(self, nodes: dict[str, Tensor]) -> GraphOutput:
        """``nodes``: modality -> (B, n_m, d) pooled nodes (before the modality embedding)."""
        h = {m: nodes[m] + self.modality_embedding.weight[k] for k, m in enumerate(self.modalities)}
        if self.readout == "split":
            return self._forward_split(h)
        return self._forward_unsplit(h)

    def _join(self, parts: list[Tensor]) -> Tensor:
        return torch.cat(parts, dim=-1) if self.aggregate == "concat" else torch.stack(parts).sum(0)

    def _forward_split(self, h: dict[str, Tensor]) -> GraphOutput:
        """CAL's layout: beta splits every node once, x^c = beta^c h and x^s = beta^s h, before any message;
        causal messages, residuals and readouts read x^c only (shortcut ones x^s only). The edge attentions read
        x^c + x^s (= h in the first layer), as CAL's read the node features."""
        betas = {m: torch.softmax(self.layers[0].node(h[m]), dim=-1) for m in self.modalities}
        xc = {m: betas[m][..., 0:1] * h[m] for m in self.modalities}
        xs = {m: betas[m][..., 1:2] * h[m] for m in self.modalities}
        readout_c: list[Tensor] = []
        readout_s: list[Tensor] = []
        alphas: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        for li, layer in enumerate(self.layers):
            last = li == len(self.layers) - 1
            whole = {m: xc[m] + xs[m] for m in self.modalities}
            incoming_c: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
            incoming_s: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
            for (source, target), name, key in zip(self.relations, self.names, self.keys):
                block = layer.relations[key]
                alpha = block.attention(whole[target], whole[source])
                mask = self.edge_mask(source, target, alpha.shape[1], alpha.shape[2], alpha.device)
                m_c, m_s = block.messages(alpha, xc[source], xs[source], mask)
                if last:
                    readout_c.append(torch.relu(block.ln_c(xc[target] + m_c)).mean(1))
                    readout_s.append(torch.relu(block.ln_s(xs[target] + m_s)).mean(1))
                    alphas[name], masks[name] = alpha, mask
                else:
                    incoming_c[target].append(m_c)
                    incoming_s[target].append(m_s)
            if not last:
                xc = {m: torch.relu(layer.update_c[m](xc[m] + torch.stack(incoming_c[m]).mean(0))) for m in xc}
                xs = {m: torch.relu(layer.update_s[m](xs[m] + torch.stack(incoming_s[m]).mean(0))) for m in xs}
        intra = [r for r, (s, t) in zip(readout_s, self.relations) if s == t]
        inter = [r for r, (s, t) in zip(readout_s, self.relations) if s != t]
        strata = {"intra": self._join(intra)}
        if inter:
            strata["inter"] = self._join(inter)
        return GraphOutput(
            causal=self._join(readout_c), strata=strata, alpha=alphas, edge_mask=masks, beta=betas,
            join="cat" if self.aggregate == "concat" else "sum",
        )

    def _forward_unsplit(self, h: dict[str, Tensor]) -> GraphOutput:
        """The earlier layout (ablation ``readout=unsplit``): messages carry beta-weighted sources, but the
        readout residuals add the unsplit h, and S is the mean over intra and over inter relations."""
        hc, hs = h, h
        readout_c: list[Tensor] = []
        readout_s: list[Tensor] = []
        alphas: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        betas: dict[str, Tensor] = {}
        for li, layer in enumerate(self.layers):
            last = li == len(self.layers) - 1
            mixed = h if li == 0 else {m: 0.5 * (hc[m] + hs[m]) for m in self.modalities}
            betas = {m: torch.softmax(layer.node(mixed[m]), dim=-1) for m in self.modalities}
            incoming_c: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
            incoming_s: dict[str, list[Tensor]] = {m: [] for m in self.modalities}
            for (source, target), name, key in zip(self.relations, self.names, self.keys):
                block = layer.relations[key]
                alpha = block.attention(mixed[target], mixed[source])
                mask = self.edge_mask(source, target, alpha.shape[1], alpha.shape[2], alpha.device)
                beta = betas[source]
                m_c, m_s = block.messages(alpha, beta[..., 0:1] * hc[source], beta[..., 1:2] * hs[source], mask)
                if last:
                    readout_c.append(torch.relu(block.ln_c(hc[target] + m_c)).mean(1))
                    readout_s.append(torch.relu(block.ln_s(hs[target] + m_s)).mean(1))
                    alphas[name], masks[name] = alpha, mask
                else:
                    incoming_c[target].append(m_c)
                    incoming_s[target].append(m_s)
            if not last:
                hc = {m: torch.relu(layer.update_c[m](hc[m] + torch.stack(incoming_c[m]).mean(0))) for m in hc}
                hs = {m: torch.relu(layer.update_s[m](hs[m] + torch.stack(incoming_s[m]).mean(0))) for m in hs}
        intra = [r for r, (s, t) in zip(readout_s, self.relations) if s == t]
        inter = [r for r, (s, t) in zip(readout_s, self.relations) if s != t]
        strata = {"intra": torch.stack(intra).mean(0)}
        if inter:
            strata["inter"] = torch.stack(inter).mean(0)
        return GraphOutput(causal=self._join(readout_c), strata=strata, alpha=alphas, edge_mask=masks, beta=betas)


class MMCI(MSAMethod):
    """MMCI: relation-wise causal attention with a stratified backdoor intervention.

    ``predict`` uses ``mmci.inference`` (default: the intervened head on the un-shuffled pair);
    ``predict_heads`` returns the ``causal``, ``shortcut`` and ``intervened`` heads, so the base class
    logs ``val/causal_MAE``, ``val/shortcut_MAE`` and ``val/intervened_MAE`` every epoch.
    """

    config_class = MMCIConfig
    matched_baseline = "baseline_seq"

    def __init__(self, dims: FeatureSpec, cfg: MMCIConfig) -> None:
        super().__init__(dims, cfg)
        check_config(cfg)
        for m in dims.modalities:
            if m not in dims.max_lengths:
                raise ValueError(f"the data's FeatureSpec has no max_lengths entry for modality {m!r}")
        self.modalities = dims.modalities
        self.n_nodes = {m: min(cfg.nodes_per_modality, dims.max_lengths[m]) for m in self.modalities}
        self.encoders = nn.ModuleDict(
            {
                m: build_seq_encoder(
                    m, dims, cfg.d, cfg.backbone.text, layers=cfg.enc_layers, heads=cfg.enc_heads,
                    ff=cfg.enc_ff_mult * cfg.d, dropout=cfg.enc_dropout, kernel=cfg.enc_kernel,
                )
                for m in self.modalities
            }
        )
        self.graph = CausalGraph(dims, cfg)
        c_dim, s_dim = self.graph.widths(cfg.d)
        self.w_s: nn.Module | None = None
        if cfg.combine == "linear":
            self.w_s = nn.Linear(s_dim, c_dim)
            self.w_s.optim_group = "head"
        z_dim = c_dim + s_dim if cfg.combine == "concat" else c_dim
        self.f_c = _head(c_dim, cfg.d, cfg.head_dropout)
        self.f_s = _head(s_dim, cfg.d, cfg.head_dropout, out=KL_BINS if cfg.shortcut_loss == "kl_uniform" else 1)
        self.f_int = _head(z_dim, cfg.d, cfg.head_dropout)
        self._perm_generator: torch.Generator | None = None
        self._valid_sums: dict[str, float] = {}
        self._valid_count = 0
        self._memory_fill, self._memory_next, self._memory_new = 0, 0, 0
        if cfg.stratify == "memory":
            # Centres and frequencies are buffers, so the selected epoch's strata are restored with its weights.
            self.register_buffer("strata_centres", torch.zeros(cfg.memory_strata, s_dim))
            self.register_buffer("strata_weights", torch.zeros(cfg.memory_strata))
            self.register_buffer("strata_ready", torch.zeros((), dtype=torch.bool))
            self.register_buffer("memory", torch.zeros(cfg.memory_size, s_dim), persistent=False)

    # ----- forward pieces -----

    def nodes(self, batch: Batch) -> dict[str, Tensor]:
        """Per-modality nodes (B, n_m, d): sequence encoder -> masked adaptive mean pooling."""
        out = {}
        for m in self.modalities:
            states, mask = self.encoders[m](batch)
            out[m] = adaptive_node_pool(states, mask.sum(1), self.n_nodes[m])
        return out

    def graph_forward(self, batch: Batch) -> GraphOutput:
        """Encoders, nodes and the relational graph for one batch."""
        return self.graph(self.nodes(batch))

    def combine(self, causal: Tensor, shortcut: Tensor) -> Tensor:
        """The intervened head's input over the last axis: C + S (``combine=add``, a direct sum), C + W_s S
        (``linear``) or [C ; S] (``concat``)."""
        if self.cfg.combine == "add":
            return causal + shortcut
        if self.w_s is not None:
            return causal + self.w_s(shortcut)
        return torch.cat([causal, shortcut], dim=-1)

    def shortcut_prediction(self, shortcut: Tensor) -> Tensor:
        """f_s as a score (B,): its output, or for ``kl_uniform`` the expected bin value in [-3, 3]."""
        out = self.f_s(shortcut)
        if self.cfg.shortcut_loss == "kl_uniform":
            bins = torch.arange(KL_BINS, device=out.device, dtype=out.dtype) - (KL_BINS - 1) / 2
            return torch.softmax(out, dim=-1) @ bins
        return out.squeeze(-1)

    def _generator(self) -> torch.Generator:
        """The method's own CPU generator (seeded from ``torch.initial_seed()`` at fit start, so a run's
        permutations and K-means seeds follow its seed)."""
        if self._perm_generator is None:
            self._perm_generator = torch.Generator().manual_seed(torch.initial_seed())
        return self._perm_generator

    def permutations(self, n: int) -> dict[str, Tensor]:
        """Independent uniform permutations of the batch, one per present stratum."""
        return {s: torch.randperm(n, generator=self._generator()) for s in self.graph.strata_present}

    @property
    def memory_ready(self) -> bool:
        """Whether memory strata exist (``stratify=memory`` after the first K-means)."""
        return self.cfg.stratify == "memory" and bool(self.strata_ready)

    def push_memory(self, shortcut: Tensor) -> None:
        """Append detached shortcut vectors (B, s_dim) to the FIFO memory, overwriting the oldest."""
        rows = shortcut.detach()[-self.memory.shape[0] :]
        index = (self._memory_next + torch.arange(rows.shape[0])) % self.memory.shape[0]
        self.memory[index.to(self.memory.device)] = rows.to(self.memory.dtype)
        self._memory_next = int(index[-1] + 1) % self.memory.shape[0]
        self._memory_fill = min(self._memory_fill + rows.shape[0], self.memory.shape[0])
        self._memory_new += rows.shape[0]

    def refresh_strata(self) -> bool:
        """K-means of the memory into ``memory_strata`` strata, when new vectors arrived since the last one
        and at least K are stored; returns whether the strata were recomputed."""
        k = self.cfg.memory_strata
        if self.cfg.stratify != "memory" or self._memory_new == 0 or self._memory_fill < k:
            return False
        centres, weights = kmeans(self.memory[: self._memory_fill], k, self.cfg.kmeans_iters, self._generator())
        self.strata_centres.copy_(centres)
        self.strata_weights.copy_(weights)
        self.strata_ready.fill_(True)
        self._memory_new = 0
        return True

    def expected_intervention(self, causal: Tensor) -> Tensor:
        """sum_k p_k f_int(combine(C_i, s_k)) over the memory strata, (B,)."""
        n, k = causal.shape[0], self.strata_centres.shape[0]
        centres = self.strata_centres[None].expand(n, k, -1)
        z = self.combine(causal[:, None].expand(n, k, -1), centres)
        return self.f_int(z).squeeze(-1) @ self.strata_weights

    def intervened_inputs(self, out: GraphOutput, perms: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The backdoor pair: C unchanged, each stratum's rows permuted by its own permutation.
        Returns (C (B, c_dim), S~ (B, s_dim)): S~_i holds the intra blocks of S_pi_intra(i) and the inter blocks
        of S_pi_inter(i), in S's layout."""
        device = out.causal.device
        return out.causal, out.assemble({s: x[perms[s].to(device)] for s, x in out.strata.items()})

    # ----- losses and steps -----

    def shortcut_loss(self, shortcut: Tensor, label: Tensor) -> Tensor:
        """L_s per ``mmci.shortcut_loss`` (``const``: target is ``self.train_label_mean``)."""
        kind = self.cfg.shortcut_loss
        if kind == "const":
            return (self.f_s(shortcut).squeeze(-1) - self.train_label_mean).abs().mean()
        if kind == "grl":
            return (self.f_s(grad_reverse(shortcut, self.cfg.grl_scale)).squeeze(-1) - label).abs().mean()
        log_p = torch.log_softmax(self.f_s(shortcut), dim=-1)
        uniform = torch.full_like(log_p, 1.0 / KL_BINS)
        return F.kl_div(log_p, uniform, reduction="batchmean")

    def losses(self, batch: Batch, perms: dict[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its parts for one batch; ``perms`` default to fresh draws of `permutations`.

        A weight of 0 leaves its term out of the graph (it is still computed, detached, for the logs), so
        with ``lambda_int = 0`` the shuffled shortcut partner cannot reach any gradient. With
        ``stratify=memory`` and strata available, L_int uses the expectation over the strata, and in
        training mode the batch's detached shortcut vectors then enter the memory."""
        cfg = self.cfg
        out = self.graph_forward(batch)
        label = batch.label
        loss_c = (self.f_c(out.causal).squeeze(-1) - label).abs().mean()
        shortcut = out.shortcut
        perms = perms if perms is not None else self.permutations(len(batch))
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.lambda_s > 0):
            loss_s = self.shortcut_loss(shortcut, label)
        with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.lambda_int > 0):
            if self.memory_ready:
                intervened = self.expected_intervention(out.causal)
            else:
                intervened = self.f_int(self.combine(*self.intervened_inputs(out, perms))).squeeze(-1)
            loss_int = (intervened - label).abs().mean()
        if cfg.stratify == "memory" and self.training:
            self.push_memory(shortcut)
        total = loss_c
        if cfg.lambda_s > 0:
            total = total + cfg.lambda_s * loss_s
        if cfg.lambda_int > 0:
            total = total + cfg.lambda_int * loss_int
        with torch.no_grad():
            spread = self.shortcut_prediction(shortcut).std(correction=0)
        parts = {"loss": total, "L_c": loss_c, "L_s": loss_s, "L_int": loss_int, "shortcut_spread": spread}
        parts.update(self.attention_means(out, reduce=True))
        return total, parts

    def attention_means(self, out: GraphOutput, *, reduce: bool) -> dict[str, Tensor]:
        """Mean causal attention per relation (``attn/t->a``, over valid edges) and per modality
        (``node_attn/text``); per sample (B,) or, with ``reduce``, batch means."""
        values: dict[str, Tensor] = {}
        for name, alpha in out.alpha.items():
            mask = out.edge_mask[name].to(alpha.dtype)
            values[f"attn/{name}"] = (alpha[..., 0] * mask).sum((1, 2)).detach() / mask.sum()
        for m, beta in out.beta.items():
            values[f"node_attn/{m}"] = beta[..., 0].mean(1).detach()
        return {k: v.mean() for k, v in values.items()} if reduce else values

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._perm_generator = torch.Generator().manual_seed(torch.initial_seed())

    def on_train_epoch_start(self) -> None:
        self.refresh_strata()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        total, parts = self.losses(batch)
        per_step = {k: parts[k] for k in ("loss", "L_c", "L_s", "L_int", "shortcut_spread")}
        self.log_diagnostics(per_step, batch_size=len(batch))
        per_epoch = {k: v for k, v in parts.items() if k not in per_step}
        self.log_diagnostics(per_epoch, on_step=False, batch_size=len(batch))
        return total

    # ----- evaluation -----

    def predict(self, batch: Batch) -> Tensor:
        """``mmci.inference``'s head; ``expectation`` before any memory strata exist (an untrained model)
        falls back to the intervened head on the un-shuffled pair."""
        return self._prediction(self.graph_forward(batch))

    def _prediction(self, out: GraphOutput) -> Tensor:
        if self.cfg.inference == "causal":
            return self.f_c(out.causal).squeeze(-1)
        if self.cfg.inference == "expectation" and self.memory_ready:
            return self.expected_intervention(out.causal)
        return self.f_int(self.combine(out.causal, out.shortcut)).squeeze(-1)

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        return self._heads(self.graph_forward(batch))

    def predict_with_heads(self, batch: Batch, *, heads: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """One graph pass for the prediction and the heads (evaluation is deterministic, so the values equal those
        of `predict` and `predict_heads`; tested)."""
        out = self.graph_forward(batch)
        return self._prediction(out), self._heads(out) if heads else {}

    def _heads(self, out: GraphOutput) -> dict[str, Tensor]:
        heads = {
            "causal": self.f_c(out.causal).squeeze(-1),
            "shortcut": self.shortcut_prediction(out.shortcut),
            "intervened": self.f_int(self.combine(out.causal, out.shortcut)).squeeze(-1),
        }
        if self.memory_ready:
            heads["expectation"] = self.expected_intervention(out.causal)
        return heads

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._valid_sums, self._valid_count = {}, 0
        self.refresh_strata()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.graph_forward(batch)  # one pass: prediction, heads and attention means
        self.buffer_valid(batch, self._prediction(out), self._heads(out))
        for key, value in self.attention_means(out, reduce=False).items():
            self._valid_sums[key] = self._valid_sums.get(key, 0.0) + float(value.sum())
        self._valid_count += len(batch)

    def on_validation_epoch_end(self) -> None:
        spread = None
        if self._valid_buffer:
            spread = float(torch.cat([h["shortcut"] for _, _, h, _ in self._valid_buffer]).std(correction=0))
        n_before = len(self.valid_history)
        super().on_validation_epoch_end()
        if len(self.valid_history) == n_before or spread is None:
            return
        extra = {k: v / max(self._valid_count, 1) for k, v in self._valid_sums.items()}
        extra["shortcut_spread"] = spread
        self.log_dict({f"val/{k}": v for k, v in extra.items()}, on_step=False, on_epoch=True)
        self.valid_history[-1].update(extra)

    # ----- mechanism diagnostics -----

    def mechanism_diagnostics(self, dm: Any) -> dict[str, Any]:
        """Where the causal split puts each modality, at the selected weights, on IID valid and every test set:
        ``sets.<set>.beta_c.<modality>`` (mean node attention beta^c over the modality's nodes and the samples) and
        ``sets.<set>.alpha_c.<src->tgt>`` (mean causal edge attention over valid edges and samples). Where the
        ground truth names the modalities that carry a shortcut (``shortcut_modalities``) and others do not
        (scenario ``single``), ``sets.<set>.shortcut_gap`` = mean over the shortcut modalities minus mean over the
        others, for beta^c and for alpha^c of the relations whose source is a shortcut modality: below 0, the
        causal branch draws less on the shortcut modality."""
        carriers: set[str] = set()
        sets: dict[str, dict[str, Any]] = {}
        for name in ("valid", *dm.test_set_names):
            sums: dict[str, float] = {}
            count = 0
            for batch in self.eval_batches(dm, name):
                for key, value in self.attention_means(self.graph_forward(batch), reduce=False).items():
                    sums[key] = sums.get(key, 0.0) + float(value.sum())
                count += len(batch)
                carriers.update(shortcut_modalities(batch.z))
            means = {key: value / max(count, 1) for key, value in sums.items()}
            sets[name] = {
                "beta_c": {m: means[f"node_attn/{m}"] for m in self.modalities},
                "alpha_c": {rel: means[f"attn/{rel}"] for rel in self.graph.names},
            }
        shortcut = [m for m in self.modalities if m in carriers]
        others = [m for m in self.modalities if m not in carriers]
        if shortcut and others:
            short = {SHORT_NAMES[m] for m in shortcut}
            for entry in sets.values():
                beta, alpha = entry["beta_c"], entry["alpha_c"]
                from_short = [v for rel, v in alpha.items() if rel.split("->")[0] in short]
                from_other = [v for rel, v in alpha.items() if rel.split("->")[0] not in short]
                entry["shortcut_gap"] = {
                    "beta_c": _mean([beta[m] for m in shortcut]) - _mean([beta[m] for m in others]),
                    "alpha_c_from_shortcut": _mean(from_short) - _mean(from_other),
                }
        return {"shortcut_modalities": shortcut, "sets": sets}


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))
