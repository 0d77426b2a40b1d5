"""GPU plumbing that can be tested without a GPU: worker -> device assignment, each worker's environment, the
checks made before a launch or a run, and the dry-run plan (docs/gpu.md)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks import sweep as sweep_module
from benchmarks.cli import main as cli_main
from benchmarks.config import build_config
from benchmarks.run import run_job
from benchmarks.sweep import LauncherConfig, expand, launch, load_sweep, plan_launch, plan_workers, worker_slots
from benchmarks.workers import check_gpus_present, gpu_slots, worker_env, worker_pool
from tests.conftest import TINY_JOB

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_device_environment(monkeypatch):
    """Plans map launcher indices through the launcher's own CUDA_VISIBLE_DEVICES: start from none."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)


def _sweep_file(tmp_path: Path, launcher: dict, **extra) -> Path:
    spec = {
        "name": "g",
        "root": str(tmp_path / "runs"),
        "methods": ["baseline"],
        "datasets": ["synthetic"],
        "seeds": [1, 2, 3, 4, 5],
        "overrides": [*TINY_JOB, "trainer.max_epochs=1"],
        "launcher": {"name": "local", "threads": 1, **launcher},
        **extra,
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_gpu_slots_repeat_and_interleave_devices():
    assert gpu_slots([0, 0, 1, 1], 1) == [0, 1, 0, 1]
    assert gpu_slots([0, 1], 2) == [0, 1, 0, 1], "gpus=[0,1] x 2 is the same 4 workers as [0,0,1,1]"
    assert gpu_slots([0, 0, 1], 1) == [0, 1, 0]
    assert gpu_slots([3], 3) == [3, 3, 3]
    assert gpu_slots([], 2) == []


def test_plan_workers_with_gpus_caps_by_slots_workers_cores_and_jobs(caplog):
    four = LauncherConfig(gpus=[0, 1], workers_per_gpu=2)
    assert plan_workers(four, n_jobs=10, cores=8) == (4, 1)
    assert plan_workers(LauncherConfig(gpus=[0, 0, 1, 1]), n_jobs=10, cores=8) == (4, 1)
    assert plan_workers(LauncherConfig(gpus=[0, 1], workers_per_gpu=2, threads=2), n_jobs=10, cores=8) == (4, 2)
    assert plan_workers(LauncherConfig(gpus=[0, 1], workers_per_gpu=2, workers=3), n_jobs=10, cores=8) == (3, 1)
    assert plan_workers(four, n_jobs=1, cores=8) == (1, 1)
    with caplog.at_level(logging.WARNING, logger="benchmarks.sweep"):
        assert plan_workers(LauncherConfig(gpus=[0, 1], workers_per_gpu=2, threads=2), n_jobs=10, cores=4) == (2, 2)
    assert "oversubscribe 4 cores" in caplog.text
    slots = worker_slots(LauncherConfig(gpus=[0, 1], workers_per_gpu=2), 3, 1)
    assert [s.gpu for s in slots] == [0, 1, 0], "a capped pool still spreads over both devices"


def test_worker_env_pins_one_device_and_the_threads(monkeypatch):
    env = worker_env(1, 2, environ={})
    assert env == {
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "CUDA_VISIBLE_DEVICES": "1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
    }
    cpu = worker_env(None, 1, environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert cpu == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mapped = worker_env(1, 1, environ={"CUDA_VISIBLE_DEVICES": "4,6", "CUBLAS_WORKSPACE_CONFIG": ":16:8"})
    assert mapped["CUDA_VISIBLE_DEVICES"] == "6", "indices count within the launcher's own CUDA_VISIBLE_DEVICES"
    assert mapped["CUBLAS_WORKSPACE_CONFIG"] == ":16:8", "a workspace the user set is kept"
    with pytest.raises(ValueError, match=r"device index 2 is beyond the launcher's CUDA_VISIBLE_DEVICES=4,6"):
        worker_env(2, 1, environ={"CUDA_VISIBLE_DEVICES": "4,6"})


def test_gpu_checks_name_the_key_or_the_index(monkeypatch):
    with pytest.raises(ValueError, match=r"launcher.gpus=\[0\]: no CUDA device is available"):
        check_gpus_present([0], device_count=0, cuda_available=False)
    beyond = r"device index 2 is beyond this machine's 2 CUDA device\(s\) \(valid indices 0-1\)"
    with pytest.raises(ValueError, match=beyond):
        check_gpus_present([0, 2, 1], device_count=2, cuda_available=True)
    check_gpus_present([1, 1, 0], device_count=2, cuda_available=True)
    check_gpus_present([], device_count=0, cuda_available=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="device index 1 is beyond this machine's 1 CUDA device"):
        check_gpus_present([0, 1])


@pytest.mark.parametrize(
    ("launcher", "extra", "message"),
    [
        ({"workers_per_gpu": 0, "gpus": [0]}, {}, "launcher.workers_per_gpu must be >= 1, got 0"),
        ({"workers_per_gpu": 2}, {}, r"launcher.workers_per_gpu=2 needs launcher.gpus"),
        ({"gpus": [0], "name": "serial"}, {}, r"launcher.gpus=\[0\] is for launcher.name=local"),
        ({"gpus": [0, -1]}, {}, "device index -1 is negative"),
        ({"gpus": [0]}, {"method_overrides": {"baseline": ["trainer.accelerator=cpu"]}},
         r"method_overrides.baseline: 'trainer.accelerator=cpu' conflicts with launcher.gpus=\[0\]"),
        ({"gpus": [0]}, {"overrides": ["trainer.devices=2"]}, "overrides: 'trainer.devices=2' conflicts"),
    ],
)
def test_sweep_gpu_keys_are_validated_at_load(tmp_path, launcher, extra, message):
    with pytest.raises(ValueError, match=message):
        load_sweep(_sweep_file(tmp_path, launcher, **extra))


def test_gpu_jobs_run_on_gpu_and_hash_apart_from_cpu_jobs(tmp_path):
    cpu = expand(load_sweep(_sweep_file(tmp_path, {})))
    gpu = expand(load_sweep(_sweep_file(tmp_path, {"gpus": [0, 1], "workers_per_gpu": 2})))
    assert all("trainer.accelerator=gpu" in j.overrides and "trainer.devices=1" in j.overrides for j in gpu)
    cfg = build_config(list(gpu[0].overrides))
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", 1)
    assert not {j.run_dir for j in cpu} & {j.run_dir for j in gpu}
    same = expand(load_sweep(_sweep_file(tmp_path, {"gpus": [0, 0, 1, 1]})))
    assert [j.run_dir for j in same] == [j.run_dir for j in gpu], "which GPU a job gets is not part of its hash"


def test_dry_run_prints_the_worker_device_assignment(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep_module, "available_cores", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = _sweep_file(tmp_path, {"gpus": [0, 1], "workers_per_gpu": 2})
    assert cli_main(["sweep", "launch", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "local pool: 4 workers x 1 threads (8 cores: launcher.threads up to 2 fits)" in out
    assert "GPU workers per device: GPU 0: 2, GPU 1: 2" in out
    for i, gpu in enumerate([0, 1, 0, 1]):
        assert f"worker {i}: GPU {gpu} (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, CUDA_VISIBLE_DEVICES={gpu}," in out
    assert "every job adds: trainer.accelerator=gpu trainer.devices=1" in out
    assert "a launch on this machine would stop: launcher.gpus=[0, 1]: no CUDA device is available" in out
    assert "dry run: nothing launched" in out
    assert not (tmp_path / "runs").exists(), "a dry run writes nothing"


def test_launch_with_gpus_on_a_machine_without_cuda_is_one_error_before_any_job(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = _sweep_file(tmp_path, {"gpus": [0]})
    assert cli_main(["sweep", "launch", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["msabench sweep: error: launcher.gpus=[0]: no CUDA device is available on this machine (a CPU-only "
                   "torch build, no GPU, or CUDA_VISIBLE_DEVICES hides them); remove launcher.gpus to run on the CPU, "
                   "or use --dry-run to see the plan"]
    assert not (tmp_path / "runs").exists()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="device index 1 is beyond this machine's 1 CUDA device"):
        launch(load_sweep(_sweep_file(tmp_path, {"gpus": [0, 1]})), progress=lambda _: None)
    plan = plan_launch(load_sweep(_sweep_file(tmp_path, {"gpus": [0]})), n_jobs=5, cores=8)
    assert plan.problems == [], "one visible device serves gpus=[0]"


def test_single_run_on_gpu_without_cuda_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = build_config([*TINY_JOB, f"output.root={tmp_path}", "trainer.accelerator=gpu"])
    with pytest.raises(ValueError, match="trainer.accelerator=gpu: torch .* sees no CUDA device"):
        run_job(cfg)
    with pytest.raises(ValueError, match="trainer.accelerator=cuda: torch .* sees no CUDA device"):
        run_job(build_config([*TINY_JOB, f"output.root={tmp_path}", "trainer.accelerator=cuda"]))
    assert not any(tmp_path.iterdir()), "no run folder was created"
    assert cli_main(["run", *TINY_JOB, f"output.root={tmp_path}", "trainer.accelerator=gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("msabench run: error: trainer.accelerator=gpu: torch")


def test_the_worker_module_does_not_import_torch():
    code = "import sys, benchmarks.workers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _probe(barrier) -> dict[str, object]:
    """Runs in a pool worker: wait until every worker holds a probe (so each worker answers once), then report."""
    barrier.wait(timeout=120)
    names = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MSABENCH_WORKER")
    return {"pid": os.getpid(), "torch_threads": torch.get_num_threads(), **{n: os.environ.get(n) for n in names}}


def test_real_workers_start_with_their_device_and_threads(monkeypatch):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 cores to tell OMP_NUM_THREADS=1 from torch's default")
    import multiprocessing as mp

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    slots = worker_slots(LauncherConfig(gpus=[0, 1]), 2, 1)
    manager = mp.get_context("spawn").Manager()
    try:
        barrier = manager.Barrier(len(slots))
        with worker_pool(slots) as pool:
            answers = [f.result(timeout=300) for f in [pool.submit(_probe, barrier) for _ in slots]]
    finally:
        manager.shutdown()
    assert len({a["pid"] for a in answers}) == 2
    assert sorted(a["CUDA_VISIBLE_DEVICES"] for a in answers) == ["5", "7"], "launcher index -> visible device"
    assert sorted(a["MSABENCH_WORKER"] for a in answers) == ["0", "1"]
    assert all(a["OMP_NUM_THREADS"] == a["MKL_NUM_THREADS"] == "1" for a in answers)
    assert all(a["torch_threads"] == 1 for a in answers), "OMP_NUM_THREADS was set before torch started"
