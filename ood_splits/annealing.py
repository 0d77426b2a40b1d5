"""Simulated annealing over size-preserving selection masks (docs/algorithms.md#ood-split-builder).

For a 0/1 mask s over the N test samples, with per-sample word counts c_i and binary sides b_i,

    N_w = Σ_i s_i c_iw 1[b_i = 0],   P_w = Σ_i s_i c_iw 1[b_i = 1],
    E(s) = Σ_w weight_w · |N_w − P_w| / (N_w + P_w + ε)            (minimised)

Every random number of a chain (initial shuffle, move types, positions, acceptance uniforms) is
drawn up front from ``Generator(SeedSequence([seed, chain]))``, vectorised. Two paths consume the
same draws: ``incremental`` (a numba kernel that keeps N_w, P_w as int64 and per proposal touches
only the CSR rows of the samples whose mask value changes and the words in them) and ``full``
(pure numpy, recomputes E from the whole count matrix per proposal; the testing reference). Both
give the same final mask and E.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import numba
import numpy as np
import scipy.sparse as sp

LabelMode = Literal["nn", "np"]
MoveSet = Literal["notebook", "exchange"]
LABEL_MODES: tuple[str, ...] = get_args(LabelMode)
MOVE_SETS: tuple[str, ...] = get_args(MoveSet)
SWAP, REVERSE, CUT, EXCHANGE = 0, 1, 2, 3
MOVE_NAMES = {SWAP: "swap", REVERSE: "reverse", CUT: "cut_insert", EXCHANGE: "exchange"}


class AnnealingError(ValueError):
    """Bad annealing input (sizes, labels, schedule); the message names the knob and the value."""


def label_sides(label: np.ndarray, mode: str = "nn") -> np.ndarray:
    """Side of each sample: 0 negative, 1 the other side, -1 on neither side.

    ``nn``: b = 1[y >= 0] (negative vs non-negative); ``np``: negative vs positive, neutral
    samples (y == 0) on neither side (they still take up selection slots).
    """
    y = np.asarray(label, dtype=np.float64)
    if mode == "nn":
        return np.where(y >= 0, 1, 0).astype(np.int8)
    if mode == "np":
        return np.where(y > 0, 1, np.where(y < 0, 0, -1)).astype(np.int8)
    raise AnnealingError(f"split.label_mode={mode!r}; expected one of {LABEL_MODES}")


@dataclass
class Problem:
    """What the annealer balances: int64 CSR counts (N, |V|), sides (N,), weights (|V|,), ε."""

    counts: sp.csr_matrix
    side: np.ndarray
    weights: np.ndarray | None = None
    eps: float = 1e-6

    def __post_init__(self) -> None:
        self.counts = sp.csr_matrix(self.counts, dtype=np.int64)
        self.counts.sort_indices()
        self.side = np.asarray(self.side, dtype=np.int8)
        n, v = self.counts.shape
        if self.side.shape != (n,):
            raise AnnealingError(f"side has shape {self.side.shape}, expected ({n},) (one per count row)")
        if v == 0:
            raise AnnealingError("empty vocabulary: the count matrix has no columns, nothing to balance")
        self.weights = np.ones(v) if self.weights is None else np.asarray(self.weights, dtype=np.float64)
        if self.weights.shape != (v,):
            raise AnnealingError(f"weights have shape {self.weights.shape}, expected ({v},)")
        if (self.counts.data < 0).any():
            raise AnnealingError("counts must be non-negative")

    @property
    def n(self) -> int:
        return int(self.counts.shape[0])


def side_counts(problem: Problem, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N_w, P_w) as int64 for a mask, from the whole count matrix."""
    mask = np.asarray(mask).astype(bool)
    ct = problem.counts.T
    neg = ct @ (mask & (problem.side == 0)).astype(np.int64)
    pos = ct @ (mask & (problem.side == 1)).astype(np.int64)
    return np.asarray(neg, dtype=np.int64), np.asarray(pos, dtype=np.int64)


def energy(neg: np.ndarray, pos: np.ndarray, weights: np.ndarray, eps: float) -> float:
    """E = Σ_w weight_w |N_w − P_w| / (N_w + P_w + ε); absent words contribute 0."""
    return float(np.sum(weights * (np.abs(neg - pos) / (neg + pos + eps))))


def objective(problem: Problem, mask: np.ndarray) -> float:
    """E(mask), recomputed from scratch."""
    neg, pos = side_counts(problem, mask)
    return energy(neg, pos, problem.weights, problem.eps)


@dataclass
class Schedule:
    """The temperature schedule: T_k = t0·cooling^k over ``outer`` steps with int(n_k) proposals
    each, n_0 = n0 and n_{k+1} = growth·n_k (defaults: 94,041 proposals, final T ≈ 1.8e-3)."""

    t0: float = 0.1
    cooling: float = 0.99
    outer: int = 400
    n0: float = 200.0
    growth: float = 1.0008

    def __post_init__(self) -> None:
        checks = [
            ("t0", self.t0 > 0, "> 0"),
            ("cooling", 0 < self.cooling <= 1, "in (0, 1]"),
            ("outer", self.outer >= 1, ">= 1"),
            ("n0", self.n0 >= 1, ">= 1"),
            ("growth", self.growth > 0, "> 0"),
        ]
        for key, ok, want in checks:
            if not ok:
                raise AnnealingError(f"split.sa.{key}={getattr(self, key)} must be {want}")

    def inner_counts(self) -> np.ndarray:
        """Proposals per outer step, int(n_k) with n_k grown iteratively as in the notebook."""
        out, n = np.empty(self.outer, dtype=np.int64), float(self.n0)
        for k in range(self.outer):
            out[k] = int(n)
            n *= self.growth
        return out

    def temperatures(self) -> np.ndarray:
        """T_k used during outer step k (T is multiplied by ``cooling`` after each step)."""
        out, t = np.empty(self.outer), float(self.t0)
        for k in range(self.outer):
            out[k] = t
            t *= self.cooling
        return out

    @property
    def n_proposals(self) -> int:
        return int(self.inner_counts().sum())


@dataclass
class ChainDraws:
    """All random numbers of one chain. ``kind`` per proposal (SWAP, REVERSE, CUT or EXCHANGE);
    positions ``a, b, c``: swap i = a, j = b; reverse [a, b] with a < b; cut [a, b] and re-insert
    after c with a < b < c; exchange: a indexes the selected list, b the unselected list."""

    mask0: np.ndarray
    kind: np.ndarray
    a: np.ndarray
    b: np.ndarray
    c: np.ndarray
    u: np.ndarray


def draw_chain(rng: np.random.Generator, n: int, n_sel: int, n_proposals: int, moves: str = "notebook") -> ChainDraws:
    """Draw a chain's random numbers, vectorised, in a fixed order: initial permutation, move
    types, positions, acceptance uniforms. Positions are uniform over all N."""
    check_sizes(n, n_sel, moves)
    mask0 = rng.permutation(np.concatenate([np.ones(n_sel, np.int8), np.zeros(n - n_sel, np.int8)]))
    if moves == "notebook":
        kind = rng.integers(0, 3, size=n_proposals).astype(np.int8)
        i = rng.integers(0, n, size=n_proposals)
        j = rng.integers(0, n - 1, size=n_proposals)
        j += j >= i
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        k = rng.integers(0, n - 2, size=n_proposals)
        k += k >= lo
        k += k >= hi
        s = np.sort(np.stack([i, j, k], axis=1), axis=1)
        a = np.where(kind == SWAP, i, np.where(kind == REVERSE, lo, s[:, 0]))
        b = np.where(kind == SWAP, j, np.where(kind == REVERSE, hi, s[:, 1]))
        c = np.where(kind == CUT, s[:, 2], -1)
    else:
        kind = np.full(n_proposals, EXCHANGE, dtype=np.int8)
        a = rng.integers(0, n_sel, size=n_proposals)
        b = rng.integers(0, n - n_sel, size=n_proposals)
        c = np.full(n_proposals, -1, dtype=np.int64)
    u = rng.random(n_proposals)
    return ChainDraws(mask0, kind, a.astype(np.int64), b.astype(np.int64), c.astype(np.int64), u)


def check_sizes(n: int, n_sel: int, moves: str = "notebook") -> None:
    """One clear error for a subset size or set size the moves cannot handle."""
    if moves not in MOVE_SETS:
        raise AnnealingError(f"split.sa.moves={moves!r}; expected one of {MOVE_SETS}")
    least = 3 if moves == "notebook" else 2
    if n < least:
        raise AnnealingError(f"the test split has {n} samples; the {moves!r} moves need at least {least}")
    if not 1 <= n_sel <= n - 1:
        raise AnnealingError(f"subset size n_sel={n_sel} is out of range; expected 1 <= n_sel <= {n - 1} (N = {n})")


# ---------------------------------------------------------------------------------------------
# incremental path (numba)


@numba.njit(cache=True)
def _term(neg: int, pos: int, weight: float, eps: float) -> float:
    return weight * (abs(neg - pos) / (neg + pos + eps))


@numba.njit(cache=True)
def _energy_nb(counts: np.ndarray, weights: np.ndarray, eps: float) -> float:
    n_words, total = weights.shape[0], 0.0
    for w in range(n_words):
        total += _term(counts[w], counts[n_words + w], weights[w], eps)
    return total


@numba.njit(cache=True)
def _add_row(row: int, sign: int, n_t: int, indptr, word, slot, data, delta, touched, is_touched) -> int:
    """Add sign·c_row to the pending deltas; returns the new number of touched words."""
    for k in range(indptr[row], indptr[row + 1]):
        w = word[k]
        if not is_touched[w]:
            is_touched[w] = True
            touched[n_t] = w
            n_t += 1
        delta[slot[k]] += sign * data[k]
    return n_t


@numba.njit(cache=True)
def _anneal_incremental(indptr, word, slot, data, weights, eps, mask, kind, a, b, c, u, inner, temps, sel, unsel):
    """Run one chain in place on ``mask``; returns (trace, accepted, max drift, counts).

    ``counts`` (2|V|,) int64 holds N_w in slots [0, |V|) and P_w in [|V|, 2|V|); row k of the CSR
    (indptr, word, data) is sample k's count vector, ``slot`` = word + |V|·side (rows of samples
    on neither side are empty). Per proposal only the rows of samples whose mask value changes
    are read, and only the words in them are re-evaluated.
    """
    n, n_words = mask.shape[0], weights.shape[0]
    counts = np.zeros(2 * n_words, np.int64)
    for i in range(n):
        if mask[i] == 1:
            for k in range(indptr[i], indptr[i + 1]):
                counts[slot[k]] += data[k]
    e_cur = _energy_nb(counts, weights, eps)
    delta = np.zeros(2 * n_words, np.int64)
    touched = np.empty(n_words, np.int64)
    is_touched = np.zeros(n_words, np.bool_)
    tmp = np.empty(n, np.int8)
    flipped = np.empty(n, np.int64)
    trace = np.empty(inner.shape[0])
    accepted, drift, q = 0, 0.0, 0
    for step in range(inner.shape[0]):
        temp = temps[step]
        for _ in range(inner[step]):
            mv, i0, i1, i2, uq = kind[q], a[q], b[q], c[q], u[q]
            q += 1
            n_t, flips = 0, 0
            if mv == 0 or mv == 3:
                if mv == 3:
                    i0, i1 = sel[i0], unsel[i1]
                if mask[i0] != mask[i1]:
                    enter = i0 if mask[i0] == 0 else i1
                    n_t = _add_row(enter, 1, n_t, indptr, word, slot, data, delta, touched, is_touched)
                    n_t = _add_row(i0 + i1 - enter, -1, n_t, indptr, word, slot, data, delta, touched, is_touched)
                    flips = 2
            elif mv == 1:
                # reverse [i0, i1]: the pair (lo, i0 + i1 - lo) flips when its values differ. The scan
                # collects those positions without a data-dependent branch, then their rows are added.
                lo, hi = i0, i1
                while lo < hi:
                    flipped[flips] = lo
                    flips += mask[lo] != mask[hi]
                    lo += 1
                    hi -= 1
                for t in range(flips):
                    lo = flipped[t]
                    sign = 1 - 2 * mask[lo]
                    n_t = _add_row(lo, sign, n_t, indptr, word, slot, data, delta, touched, is_touched)
                    n_t = _add_row(i0 + i1 - lo, -sign, n_t, indptr, word, slot, data, delta, touched, is_touched)
                flips *= 2
            else:
                # cut [i0, i1], re-insert after i2: position p takes the value at p + seg (p < i0 + rest)
                # or at p - rest (the moved segment), with seg = i1 - i0 + 1 and rest = i2 - i1
                seg, rest = i1 - i0 + 1, i2 - i1
                for p in range(i0, i0 + rest):
                    flipped[flips] = p
                    flips += mask[p + seg] != mask[p]
                for p in range(i0 + rest, i2 + 1):
                    flipped[flips] = p
                    flips += mask[p - rest] != mask[p]
                for t in range(flips):
                    p = flipped[t]
                    n_t = _add_row(p, 1 - 2 * mask[p], n_t, indptr, word, slot, data, delta, touched, is_touched)
            d_e = 0.0
            for t in range(n_t):
                w = touched[t]
                neg, pos = counts[w], counts[n_words + w]
                d_e += _term(neg + delta[w], pos + delta[n_words + w], weights[w], eps) - _term(
                    neg, pos, weights[w], eps
                )
            accept = d_e < 0.0 or uq < math.exp(-d_e / temp)
            for t in range(n_t):
                w = touched[t]
                if accept:
                    counts[w] += delta[w]
                    counts[n_words + w] += delta[n_words + w]
                delta[w] = 0
                delta[n_words + w] = 0
                is_touched[w] = False
            if not accept:
                continue
            accepted += 1
            e_cur += d_e
            if flips == 0:
                continue
            if mv == 0:
                mask[i0], mask[i1] = mask[i1], mask[i0]
            elif mv == 3:
                mask[i0], mask[i1] = 0, 1
                sel[a[q - 1]], unsel[b[q - 1]] = i1, i0
            elif mv == 1:
                lo, hi = i0, i1
                while lo < hi:
                    mask[lo], mask[hi] = mask[hi], mask[lo]
                    lo += 1
                    hi -= 1
            else:
                seg, rest = i1 - i0 + 1, i2 - i1
                for p in range(i0, i2 + 1):
                    tmp[p] = mask[p + seg] if p < i0 + rest else mask[p - rest]
                for p in range(i0, i2 + 1):
                    mask[p] = tmp[p]
        e_full = _energy_nb(counts, weights, eps)
        drift = max(drift, abs(e_cur - e_full))
        e_cur = e_full
        trace[step] = e_cur
    return trace, accepted, drift, counts


def kernel_arrays(problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indptr, word, slot, data) of the kernel's CSR: rows of samples on neither side emptied,
    ``slot`` = word + |V|·side so one delta array holds both sides."""
    counts = problem.counts
    keep = np.repeat(problem.side >= 0, np.diff(counts.indptr))
    row_nnz = np.where(problem.side >= 0, np.diff(counts.indptr), 0)
    indptr = np.concatenate([[0], np.cumsum(row_nnz)]).astype(np.int64)
    word = counts.indices[keep].astype(np.int64)
    sides = np.repeat(problem.side.astype(np.int64), np.diff(counts.indptr))[keep]
    slot = word + counts.shape[1] * sides
    return indptr, word, slot, counts.data[keep].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# full-recompute reference path (numpy)


def _anneal_full(problem: Problem, draws: ChainDraws, schedule: Schedule, dense: bool) -> tuple[np.ndarray, int]:
    """The reference: applies each proposal to a copy of the mask and recomputes E from all N
    samples and all words (``dense``: an (N, |V|) matrix product, O(N·|V|) as in the notebook;
    else a sparse product). Consumes the same draws and acceptance rule as the numba kernel."""
    mat = problem.counts.toarray().astype(np.float64) if dense else problem.counts.T.tocsr().astype(np.float64)
    neg_side, pos_side = problem.side == 0, problem.side == 1

    def e_of(mask: np.ndarray) -> float:
        on = mask.astype(bool)
        x_neg, x_pos = (on & neg_side).astype(np.float64), (on & pos_side).astype(np.float64)
        neg, pos = (x_neg @ mat, x_pos @ mat) if dense else (mat @ x_neg, mat @ x_pos)
        return energy(neg, pos, problem.weights, problem.eps)

    mask = draws.mask0.copy()
    sel, unsel = np.flatnonzero(mask == 1), np.flatnonzero(mask == 0)
    e_cur = e_of(mask)
    trace = np.empty(schedule.outer)
    accepted, q = 0, 0
    for step, (count, temp) in enumerate(zip(schedule.inner_counts(), schedule.temperatures())):
        for _ in range(int(count)):
            mv, a, b, c, u = draws.kind[q], draws.a[q], draws.b[q], draws.c[q], draws.u[q]
            q += 1
            new = mask.copy()
            if mv == SWAP:
                new[a], new[b] = mask[b], mask[a]
            elif mv == REVERSE:
                new[a : b + 1] = mask[a : b + 1][::-1]
            elif mv == CUT:
                new[a : c + 1] = np.concatenate([mask[b + 1 : c + 1], mask[a : b + 1]])
            else:
                new[sel[a]], new[unsel[b]] = 0, 1
            e_new = e_of(new)
            d_e = e_new - e_cur
            if d_e < 0.0 or u < math.exp(-d_e / temp):
                accepted += 1
                mask, e_cur = new, e_new
                if mv == EXCHANGE:
                    sel[a], unsel[b] = unsel[b], sel[a]
        trace[step] = e_cur
    return trace, accepted, mask


# ---------------------------------------------------------------------------------------------
# chains


@dataclass
class ChainResult:
    """One chain: E of its random start, its final E (full recompute), acceptance count, the E
    trace after every outer step, its final mask, the largest incremental-vs-full drift seen at an
    outer-step boundary (0 for the full path), and the wall and CPU seconds of the annealing loop."""

    chain: int
    initial: float
    final: float
    accepted: int
    trace: np.ndarray
    mask: np.ndarray
    drift: float = 0.0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class AnnealResult:
    """All chains and the chosen one (lowest final E; ties go to the lowest chain index)."""

    chains: list[ChainResult]
    chosen: int
    n_proposals: int
    extra: dict = field(default_factory=dict)

    @property
    def best(self) -> ChainResult:
        return self.chains[self.chosen]


def chain_rng(seed: int, chain: int) -> np.random.Generator:
    """The generator of chain ``chain``: ``default_rng(SeedSequence([seed, chain]))``."""
    return np.random.default_rng(np.random.SeedSequence([seed, chain]))


def run_chain(
    problem: Problem,
    n_sel: int,
    schedule: Schedule,
    seed: int,
    chain: int,
    *,
    moves: str = "notebook",
    path: str = "incremental",
) -> ChainResult:
    """Run one seeded chain by the ``incremental`` path (default) or a full-recompute reference
    (``full``: dense O(N·|V|) per proposal; ``full_sparse``: sparse product per proposal)."""
    if path not in ("incremental", "full", "full_sparse"):
        raise AnnealingError(f"path={path!r}; expected 'incremental', 'full' or 'full_sparse'")
    draws = draw_chain(chain_rng(seed, chain), problem.n, n_sel, schedule.n_proposals, moves)
    initial = objective(problem, draws.mask0)
    start, cpu_start = time.perf_counter(), time.process_time()
    drift = 0.0
    if path == "incremental":
        mask = draws.mask0.copy()
        trace, accepted, drift, _ = _anneal_incremental(
            *kernel_arrays(problem),
            problem.weights,
            float(problem.eps),
            mask,
            draws.kind,
            draws.a,
            draws.b,
            draws.c,
            draws.u,
            schedule.inner_counts(),
            schedule.temperatures(),
            np.flatnonzero(mask == 1).astype(np.int64),
            np.flatnonzero(mask == 0).astype(np.int64),
        )
    else:
        trace, accepted, mask = _anneal_full(problem, draws, schedule, dense=path == "full")
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return ChainResult(
        chain=chain,
        initial=initial,
        final=objective(problem, mask),
        accepted=int(accepted),
        trace=np.asarray(trace),
        mask=mask.astype(bool),
        drift=float(drift),
        seconds=seconds,
        cpu_seconds=cpu_seconds,
    )


def anneal(
    problem: Problem,
    n_sel: int,
    schedule: Schedule | None = None,
    *,
    chains: int = 8,
    seed: int = 0,
    moves: str = "notebook",
    path: str = "incremental",
) -> AnnealResult:
    """Run ``chains`` seeded chains and keep the one with the lowest final E."""
    schedule = schedule or Schedule()
    if chains < 1:
        raise AnnealingError(f"split.sa.chains={chains} must be >= 1")
    check_sizes(problem.n, n_sel, moves)
    results = [run_chain(problem, n_sel, schedule, seed, k, moves=moves, path=path) for k in range(chains)]
    finals = [r.final for r in results]
    return AnnealResult(results, int(np.argmin(finals)), schedule.n_proposals)


def random_baseline(problem: Problem, n_sel: int, seed: int, n: int = 100) -> np.ndarray:
    """E of ``n`` uniformly random subsets of size ``n_sel`` (stream ``SeedSequence([seed, 1_000_003])``,
    disjoint from every chain's)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1_000_003]))
    out = np.empty(n)
    for k in range(n):
        mask = np.zeros(problem.n, dtype=bool)
        mask[rng.choice(problem.n, size=n_sel, replace=False)] = True
        out[k] = objective(problem, mask)
    return out
