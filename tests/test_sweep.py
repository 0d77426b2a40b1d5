"""Sweeps: stable job hashes, resumability after SIGKILL, worker limits, W&B modes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmarks.config import build_config
from benchmarks.leaderboard import build_leaderboard
from benchmarks.run import run_job
from benchmarks.sweep import LauncherConfig, expand, launch, load_sweep, plan_workers, status
from tests.conftest import TINY_JOB

ROOT = Path(__file__).resolve().parents[1]


def _sweep_file(tmp_path: Path, name: str, seeds=(1, 2, 3, 4), workers=2, methods=("baseline",), **extra) -> Path:
    spec = {
        "name": name,
        "root": str(tmp_path / "runs"),
        "methods": list(methods),
        "datasets": ["synthetic"],
        "seeds": list(seeds),
        "overrides": [*TINY_JOB, "trainer.max_epochs=2"],
        "launcher": {"name": "local", "workers": workers, "threads": 1},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_job_hashes_are_stable_and_change_with_the_config(tmp_path):
    path = _sweep_file(tmp_path, "h")
    a, b = expand(load_sweep(path)), expand(load_sweep(path))
    assert [j.run_dir for j in a] == [j.run_dir for j in b]
    assert len({j.run_dir for j in a}) == 4
    changed = expand(load_sweep(path, ["overrides=[trainer.max_epochs=3]"]))
    assert not {j.run_dir for j in a} & {j.run_dir for j in changed}
    small = "variants={bl_small: {method: baseline, overrides: [baseline.backbone.dim=8]}}"
    variant = expand(load_sweep(path, [small]))
    labels = {j.label for j in variant}
    assert labels == {"baseline", "bl_small"}
    assert all(j.run_dir.name.startswith(j.label + "-") for j in variant)


def test_plan_workers_never_oversubscribes():
    assert plan_workers(LauncherConfig(workers=0, threads=1), n_jobs=10, cores=2) == (2, 1)
    assert plan_workers(LauncherConfig(workers=5, threads=1), n_jobs=10, cores=2) == (2, 1)
    assert plan_workers(LauncherConfig(workers=2, threads=2), n_jobs=10, cores=2) == (1, 2)
    assert plan_workers(LauncherConfig(workers=0, threads=1), n_jobs=1, cores=8) == (1, 1)
    assert plan_workers(LauncherConfig(workers=0, gpus=[0, 1]), n_jobs=10, cores=8) == (2, 1)


def _board(root: Path) -> pd.DataFrame:
    board = build_leaderboard(root)
    return board.drop(columns=[c for c in board.columns if "seeds" in c and c != "n_seeds"], errors="ignore")


@pytest.mark.slow
def test_killed_sweep_resumes_to_the_same_leaderboard(tmp_path):
    path = _sweep_file(tmp_path, "k")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cli", "sweep", "launch", str(path)],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    sweep = load_sweep(path)
    jobs = expand(sweep)
    deadline = time.time() + 240
    while time.time() < deadline and not status(jobs)["done"]:
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = status(jobs)
    assert 1 <= len(before["done"]) < 4, "the kill should land mid-sweep"
    final = launch(sweep, progress=lambda _: None)
    assert len(final["done"]) == 4 and not final["incomplete"]
    for job in jobs:
        files = sorted(p.name for p in job.run_dir.iterdir())
        assert {"config.yaml", "result.json", "predictions.csv", "done"} <= set(files)
    log_lines = [json.loads(x) for x in (Path(sweep.root) / sweep.name / "_sweep_log.jsonl").read_text().splitlines()]
    finished = [x["run_dir"] for x in log_lines if x["run_dir"]]
    assert sorted(set(finished)) == sorted(str(j.run_dir) for j in jobs)
    assert len(finished) == 4, "every job ran to completion exactly once"
    (tmp_path / "clean").mkdir()
    clean = load_sweep(_sweep_file(tmp_path / "clean", "k"))
    launch(clean, progress=lambda _: None)
    pd.testing.assert_frame_equal(_board(Path(sweep.root) / "k"), _board(Path(clean.root) / "k"))


def test_local_launcher_runs_every_job_with_at_most_the_workers_asked(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, "w", seeds=(1, 2, 3), workers=1))
    final = launch(sweep, progress=lambda _: None)
    assert len(final["done"]) == 3
    events = [json.loads(x) for x in (Path(sweep.root) / "w" / "_sweep_log.jsonl").read_text().splitlines()]
    assert len({e["pid"] for e in events}) == 1
    spans = sorted((e["start"], e["end"]) for e in events)
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "jobs never overlap"
    again = launch(sweep, progress=lambda _: None)
    assert len(again["done"]) == 3
    assert len((Path(sweep.root) / "w" / "_sweep_log.jsonl").read_text().splitlines()) == 3, "nothing re-ran"


def test_slurm_path_through_submitit_debug_executor(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path, "s", seeds=(1,), launcher={"name": "slurm"}, slurm={"cluster": "debug"}))
    final = launch(sweep, progress=lambda _: None)
    assert len(final["done"]) == 1


@pytest.mark.parametrize("mode", ["disabled", "offline"])
def test_wandb_logger_modes(tmp_path, monkeypatch, mode):
    monkeypatch.setenv("WANDB_MODE", mode)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = build_config([*TINY_JOB, f"output.root={tmp_path}", "trainer.max_epochs=1", "logger=[csv,wandb]"])
    run_dir = run_job(cfg)
    assert (run_dir / "done").is_file()
    if mode == "offline":
        assert list(run_dir.glob("wandb/offline-run-*")), "an offline W&B run was written"
    import wandb

    assert wandb.run is None, "wandb.finish() ran after the job"


def test_wandb_init_failure_leaves_the_job_done(tmp_path, monkeypatch):
    import wandb

    def boom(*args, **kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", boom)
    cfg = build_config([*TINY_JOB, f"output.root={tmp_path}", "trainer.max_epochs=1", "logger=[csv,wandb]"])
    run_dir = run_job(cfg)
    assert (run_dir / "done").is_file()


@pytest.mark.parametrize("path", sorted((ROOT / "benchmarks" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_committed_sweep_expands_to_registered_methods(path):
    from methods import METHODS

    sweep = load_sweep(path)
    assert sweep.name == path.stem, f"{path}: name must match the file name"
    jobs = expand(sweep)
    assert jobs and all(job.method in METHODS for job in jobs)
    for label, variant in sweep.variants.items():
        rows = [job for job in jobs if job.label == label]
        assert len(rows) == len(sweep.seeds) * len(sweep.datasets), label
        assert {job.method for job in rows} == {variant.method}, label
