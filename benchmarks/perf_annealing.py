"""Speed of the OOD split annealer: incremental (numba) vs full recomputation, same seed.

A MOSEI-size problem (N = 4659 test samples, |V| = 115 words, the full 94,041-proposal schedule of
docs/algorithms.md#ood-split-builder): per-sample counts with a Zipf word distribution and ~Poisson(6) vocabulary tokens
per utterance, 30 % negative labels (MOSEI's test split under label mode nn is ~30 % negative).
With ``--real`` the real MOSEI test transcripts are used instead (``mosei_text``, N = 4653 here).

Paths, all consuming the same pre-drawn random numbers of chain 0:
  incremental   numba kernel, running N_w / P_w, only the changed samples' rows per proposal
  full_sparse   numpy/scipy, E recomputed from all N rows per proposal (sparse products)
  full          numpy, E recomputed as in the notebook: dense (N, |V|) products per proposal

    python benchmarks/perf_annealing.py [--chains 3] [--skip-dense] [--real]

Every path runs on one thread (BLAS threads are limited to 1 for this process unless the caller
sets OMP_NUM_THREADS / OPENBLAS_NUM_THREADS / MKL_NUM_THREADS), so the comparison is one core
against one core. Wall seconds depend on the machine's load; CPU seconds (process time) are
printed beside them.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from ood_splits.annealing import ChainResult, Problem, Schedule, label_sides, run_chain  # noqa: E402


def mosei_size_problem(seed: int = 0, n: int = 4659, v: int = 115) -> Problem:
    """Random counts shaped like MOSEI's test vocabulary (see the module docstring)."""
    rng = np.random.default_rng(seed)
    freq = 1.0 / np.arange(1, v + 1) ** 0.8
    freq /= freq.sum()
    rows = []
    for _ in range(n):
        words = rng.choice(v, size=rng.poisson(6.0), p=freq)
        rows.append(np.bincount(words, minlength=v))
    counts = sp.csr_matrix(np.array(rows, dtype=np.int64))
    label = np.where(rng.random(n) < 0.3, -1.0, 1.0) * rng.uniform(0, 3, n)
    return Problem(counts, label_sides(label, "nn"))


def real_mosei_problem() -> Problem:
    """The real MOSEI test split's text vocabulary (min_count 50) and labels."""
    from ood_splits.builder import SplitConfig, build_vocabulary, load_dataset

    bundle = load_dataset("mosei_text", {"features": False, "progress": False})
    vocab = build_vocabulary(bundle, SplitConfig())
    return Problem(vocab.test_counts, label_sides(bundle.test.label, "nn"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=3, help="incremental chains timed (default 3)")
    parser.add_argument("--skip-dense", action="store_true", help="skip the slow dense full-recompute path")
    parser.add_argument("--real", action="store_true", help="use the real MOSEI test transcripts")
    args = parser.parse_args()

    problem = real_mosei_problem() if args.real else mosei_size_problem()
    schedule = Schedule()
    n_sel = int(round(0.47 * problem.n))
    nnz = problem.counts.nnz / problem.n
    print(
        f"problem: N = {problem.n}, |V| = {problem.counts.shape[1]}, nnz/row = {nnz:.2f}, n_sel = {n_sel}, "
        f"{schedule.n_proposals} proposals per chain; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    start = time.perf_counter()
    run_chain(problem, n_sel, Schedule(outer=2, n0=10), seed=0, chain=0)
    print(f"numba compile / cache load: {time.perf_counter() - start:.2f} s (once per process)")

    def timed(path: str, chain: int) -> ChainResult:
        result = run_chain(problem, n_sel, schedule, seed=0, chain=chain, path=path)
        print(
            f"  {path} chain {chain}: {result.seconds:.2f} s wall, {result.cpu_seconds:.2f} s CPU, "
            f"final E {result.final:.6f}",
            flush=True,
        )
        return result

    incremental = [timed("incremental", k) for k in range(args.chains)]
    results = {"incremental": incremental[0]}
    for path in ["full_sparse"] + ([] if args.skip_dense else ["full"]):
        results[path] = timed(path, 0)

    base = results["incremental"]
    print()
    print(
        "| path (chain 0) | wall s | CPU s | proposals/s (CPU) | incremental is faster by (wall / CPU) | final E "
        "| same mask and E as incremental |"
    )
    print("|---|---|---|---|---|---|---|")
    for path, r in results.items():
        same = bool(np.array_equal(r.mask, base.mask)) and abs(r.final - base.final) < 1e-9
        print(
            f"| {path} | {r.seconds:.3f} | {r.cpu_seconds:.3f} | {schedule.n_proposals / r.cpu_seconds:,.0f} | "
            f"{r.seconds / base.seconds:.1f}x / {r.cpu_seconds / base.cpu_seconds:.1f}x | {r.final:.6f} | {same} |"
        )
    wall = np.array([r.seconds for r in incremental])
    cpu = np.array([r.cpu_seconds for r in incremental])
    print()
    print(
        f"incremental, {len(incremental)} chains: {wall.mean():.3f} s wall / {cpu.mean():.3f} s CPU per chain "
        f"(wall min {wall.min():.3f}, max {wall.max():.3f}); E {incremental[0].initial:.3f} -> "
        f"{', '.join(f'{r.final:.3f}' for r in incremental)}; acceptance "
        f"{np.mean([r.accepted for r in incremental]) / schedule.n_proposals:.3f}; max drift "
        f"{max(r.drift for r in incremental):.2e}; load average now {os.getloadavg()[0]:.1f}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
