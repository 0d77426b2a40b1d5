"""Simulated annealing: objective, moves, schedule, incremental == full recompute, seeded chains."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from ood_splits.annealing import (
    CUT,
    EXCHANGE,
    REVERSE,
    SWAP,
    AnnealingError,
    Problem,
    Schedule,
    anneal,
    chain_rng,
    draw_chain,
    energy,
    label_sides,
    objective,
    random_baseline,
    run_chain,
    side_counts,
)


def random_problem(seed: int, n: int, v: int, *, density: float = 0.15, neutral: float = 0.0, weights: bool = False):
    """A random count matrix (repeats up to 3, some empty rows) with random labels."""
    rng = np.random.default_rng(seed)
    counts = sp.random(n, v, density=density, random_state=rng, data_rvs=lambda k: rng.integers(1, 4, k)).tocsr()
    label = rng.normal(size=n)
    label[rng.random(n) < neutral] = 0.0
    side = label_sides(label, "np" if neutral else "nn")
    w = rng.uniform(0.2, 2.0, v) if weights else None
    return Problem(counts.astype(np.int64), side, w)


def test_label_sides():
    y = np.array([-1.2, 0.0, 0.4, -0.0, 3.0])
    np.testing.assert_array_equal(label_sides(y, "nn"), [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(label_sides(y, "np"), [0, -1, 1, -1, 1])
    with pytest.raises(AnnealingError, match="split.label_mode='pn'"):
        label_sides(y, "pn")


def test_objective_by_hand():
    counts = sp.csr_matrix(np.array([[2, 0, 1], [1, 1, 0], [0, 3, 0], [1, 0, 0]]))
    side = np.array([0, 1, 1, 0])
    problem = Problem(counts, side)
    mask = np.array([1, 1, 1, 0], dtype=bool)
    neg, pos = side_counts(problem, mask)
    np.testing.assert_array_equal(neg, [2, 0, 1])
    np.testing.assert_array_equal(pos, [1, 4, 0])
    expected = 1 / (3 + 1e-6) + 4 / (4 + 1e-6) + 1 / (1 + 1e-6)
    assert objective(problem, mask) == pytest.approx(expected, abs=1e-12)
    # absent words contribute 0; neutral samples (side -1) count on neither side
    assert energy(np.zeros(2), np.zeros(2), np.ones(2), 1e-6) == 0.0
    neutral = Problem(counts, np.array([0, -1, -1, 1]))
    assert objective(neutral, np.ones(4, dtype=bool)) == pytest.approx(1 / (3 + 1e-6) + 0 + 1 / (1 + 1e-6), abs=1e-12)


def test_schedule_matches_methods():
    schedule = Schedule()
    assert schedule.n_proposals == 94_041
    assert schedule.inner_counts()[0] == 200 and len(schedule.inner_counts()) == 400
    assert schedule.temperatures()[0] == 0.1
    assert schedule.temperatures()[-1] * 0.99 == pytest.approx(1.8e-3, rel=0.01)
    with pytest.raises(AnnealingError, match="split.sa.cooling=1.5"):
        Schedule(cooling=1.5)


def test_draws_are_valid_uniform_and_seeded():
    n, n_sel, count = 9, 4, 30_000
    draws = draw_chain(chain_rng(3, 1), n, n_sel, count)
    assert draws.mask0.sum() == n_sel and draws.mask0.dtype == np.int8
    kinds = np.bincount(draws.kind, minlength=3) / count
    np.testing.assert_allclose(kinds, [1 / 3] * 3, atol=0.02)
    swap, rev, cut = draws.kind == SWAP, draws.kind == REVERSE, draws.kind == CUT
    assert (draws.a[swap] != draws.b[swap]).all()
    assert (draws.a[rev] < draws.b[rev]).all()
    assert ((draws.a[cut] < draws.b[cut]) & (draws.b[cut] < draws.c[cut])).all()
    # positions cover all N, the first and last included (the notebook never drew 0 and N-1)
    positions = np.bincount(np.concatenate([draws.a[swap], draws.b[swap]]), minlength=n) / (2 * swap.sum())
    np.testing.assert_allclose(positions, 1 / n, atol=0.01)
    assert draws.a[cut].min() == 0 and draws.c[cut].max() == n - 1
    again = draw_chain(chain_rng(3, 1), n, n_sel, count)
    np.testing.assert_array_equal(again.a, draws.a)
    other = draw_chain(chain_rng(3, 2), n, n_sel, count)
    assert not np.array_equal(other.a, draws.a)
    exchange = draw_chain(chain_rng(0, 0), n, n_sel, 500, "exchange")
    assert (exchange.kind == EXCHANGE).all() and exchange.a.max() < n_sel and exchange.b.max() < n - n_sel


@pytest.mark.parametrize("moves", ["notebook", "exchange"])
def test_incremental_counts_equal_full_recompute_after_long_random_move_sequences(moves):
    """Property test over random problems: at a huge temperature almost every move is accepted, so
    the int64 counts and E carried incrementally through ~10^4 moves must equal a recomputation."""
    hot = Schedule(t0=1e6, cooling=1.0, outer=4, n0=2500, growth=1.0)
    for case in range(12):
        rng = np.random.default_rng(case)
        n, v = int(rng.integers(5, 120)), int(rng.integers(1, 40))
        problem = random_problem(case, n, v, neutral=0.2 * (case % 2), weights=case % 3 == 0)
        n_sel = int(rng.integers(1, n))
        result = run_chain(problem, n_sel, hot, seed=case, chain=0, moves=moves)
        assert result.mask.sum() == n_sel
        assert result.accepted > 0.99 * hot.n_proposals
        assert result.drift < 1e-9
        neg, pos = side_counts(problem, result.mask)
        assert result.trace[-1] == pytest.approx(energy(neg, pos, problem.weights, problem.eps), abs=1e-9)
        assert result.final == pytest.approx(result.trace[-1], abs=1e-9)


@pytest.mark.parametrize("moves", ["notebook", "exchange"])
@pytest.mark.parametrize("neutral", [0.0, 0.15])
def test_incremental_and_full_paths_agree(moves, neutral):
    problem = random_problem(7, 80, 25, neutral=neutral)
    schedule = Schedule(outer=60, n0=40)
    fast = run_chain(problem, 37, schedule, seed=11, chain=2, moves=moves)
    for path in ("full", "full_sparse"):
        ref = run_chain(problem, 37, schedule, seed=11, chain=2, moves=moves, path=path)
        np.testing.assert_array_equal(fast.mask, ref.mask)
        assert fast.final == pytest.approx(ref.final, abs=1e-9)
        np.testing.assert_allclose(fast.trace, ref.trace, atol=1e-9, rtol=0)
        assert fast.accepted == ref.accepted
    assert fast.initial > fast.final
    assert 0 < fast.accepted < schedule.n_proposals


def test_moves_preserve_selection_count_and_chains_are_seeded():
    problem = random_problem(1, 60, 15)
    schedule = Schedule(outer=40, n0=30)
    result = anneal(problem, 23, schedule, chains=3, seed=5)
    assert [c.mask.sum() for c in result.chains] == [23, 23, 23]
    assert result.best.final == min(c.final for c in result.chains)
    assert len(result.best.trace) == 40
    again = anneal(problem, 23, schedule, chains=3, seed=5)
    np.testing.assert_array_equal(again.best.mask, result.best.mask)
    other = anneal(problem, 23, schedule, chains=3, seed=6)
    assert not all(np.array_equal(a.mask, b.mask) for a, b in zip(other.chains, result.chains))


def test_annealing_beats_random_subsets():
    problem = random_problem(2, 300, 30, density=0.1)
    result = anneal(problem, 141, Schedule(outer=100), chains=2, seed=0)
    baseline = random_baseline(problem, 141, seed=0, n=100)
    assert result.best.final < baseline.mean() - 5 * baseline.std()
    assert result.best.initial == pytest.approx(objective(problem, draw_chain(chain_rng(0, result.chosen), 300, 141,
                                                                             10).mask0))


@pytest.mark.parametrize(
    "n, n_sel, message",
    [(10, 0, r"n_sel=0 is out of range; expected 1 <= n_sel <= 9"), (10, 10, "out of range"), (2, 1, "at least 3")],
)
def test_bad_sizes_give_one_clear_error(n, n_sel, message):
    problem = random_problem(0, n, 3, density=0.5)
    with pytest.raises(AnnealingError, match=message):
        anneal(problem, n_sel, Schedule(outer=2), chains=1)


def test_empty_vocabulary_and_bad_inputs():
    with pytest.raises(AnnealingError, match="empty vocabulary"):
        Problem(sp.csr_matrix((5, 0), dtype=np.int64), np.zeros(5))
    with pytest.raises(AnnealingError, match="side has shape"):
        Problem(sp.csr_matrix(np.ones((5, 2))), np.zeros(4))
    with pytest.raises(AnnealingError, match="split.sa.moves='shuffle'"):
        anneal(random_problem(0, 10, 3), 4, Schedule(outer=2), moves="shuffle")
