"""Sweeps: methods (and labelled variants) x datasets x seeds -> jobs, launched serially, on a local
process pool, or on Slurm through submitit.

A job is a list of config overrides; its run folder is named by a hash of its resolved config
(DomainBed's idea), so relaunching a sweep runs only what is missing. States: ``not launched``
(no folder), ``incomplete`` (a run folder without ``done``, or the hidden ``.<name>.new`` folder a job
trains into, left by a running, failed or killed attempt; redone on the next launch) and ``done``
(``done`` is written last by `benchmarks.run.run_job`). A sweep killed midway loses at most the
jobs that were running; they never reached their visible folder and are redone from scratch.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from omegaconf import OmegaConf

from benchmarks.config import Kind, build_config, checked_choices, run_dir_for, staging_dir
from benchmarks.workers import (
    WorkerSlot,
    check_gpu_config,
    check_gpus_present,
    gpu_slots,
    worker_env,
    worker_pool,
)
from methods import METHODS

log = logging.getLogger(__name__)
STATES = ("not launched", "incomplete", "done")


@dataclass
class VariantConfig:
    """An extra leaderboard row: a registered method with fixed overrides (e.g. an ablation)."""

    method: str = "baseline"
    overrides: list[str] = field(default_factory=list)
    kind: Kind = ""  # leaderboard kind of the row ("" = the method's own): method | reference | oracle


@dataclass
class LauncherConfig:
    """``serial`` | ``local`` | ``slurm``. For ``local``: ``workers`` processes (0 = as many as the
    cores allow at ``threads`` torch threads each); with ``gpus`` (CUDA device indices, repeats allowed) one worker
    per entry and per ``workers_per_gpu``, each pinned to its device and running its jobs with
    ``trainer.accelerator=gpu`` (``gpus=[0,0,1,1]`` and ``gpus=[0,1] workers_per_gpu=2`` are the same 4 workers;
    ``workers`` > 0 caps them, and so do the cores at ``threads`` each)."""

    name: Literal["serial", "local", "slurm"] = "local"
    workers: int = 0
    threads: int = 1
    gpus: list[int] = field(default_factory=list)
    workers_per_gpu: int = 1


@dataclass
class SlurmConfig:
    """submitit options for ``launcher.name=slurm`` (one array job per launch)."""

    partition: str = ""
    time_min: int = 120
    cpus_per_task: int = 2
    gpus_per_node: int = 0
    mem_gb: int = 16
    array_parallelism: int = 64
    cluster: str = ""
    additional: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckConfig:
    """The CI regression check's statistics (``msabench check``; see benchmarks/check.py): the reference is
    this sweep run with ``reference_seeds``, the check runs it with the sweep's ``seeds``."""

    reference_seeds: list[int] = field(default_factory=list)
    alpha: float = 0.05
    min_reference_seeds: int = 8
    min_std: float = 0.5


@dataclass
class SweepConfig:
    """A named sweep; see ``benchmarks/sweeps/*.yaml``."""

    name: str = "default"
    root: str = "runs"
    methods: list[str] = field(default_factory=lambda: ["all"])
    variants: dict[str, VariantConfig] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    seeds: list[int] = field(default_factory=lambda: [1111, 1112, 1113])
    test_sets: dict[str, list[str]] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    method_overrides: dict[str, list[str]] = field(default_factory=dict)
    dataset_overrides: dict[str, list[str]] = field(default_factory=dict)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    check: CheckConfig = field(default_factory=CheckConfig)


@dataclass(frozen=True)
class Job:
    label: str
    method: str
    dataset: str
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path


def load_sweep(path: str | Path | None = None, overrides: list[str] | None = None) -> SweepConfig:
    """A sweep YAML (or the defaults) merged with ``key=value`` overrides; typed, so typos are errors."""
    schema = OmegaConf.structured(SweepConfig)
    parts = [schema]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep file {path} does not exist")
        try:
            parts.append(OmegaConf.load(path))
        except yaml.YAMLError as exc:
            raise ValueError(f"sweep file {path} is not valid YAML: {' '.join(str(exc).split())}") from exc
    parts.append(OmegaConf.from_dotlist(list(overrides or [])))
    with checked_choices(str(path) if path is not None else "sweep"):
        sweep = OmegaConf.to_object(OmegaConf.merge(*parts))
    validate_sweep(sweep, source=str(path) if path is not None else "sweep")
    return sweep


def _closest(name: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(name, valid, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def validate_sweep(sweep: SweepConfig, source: str = "sweep") -> None:
    """Refuse, before any job runs, names a sweep uses that nothing would read: methods and variant methods that
    are not registered, ``datasets`` and the keys of ``dataset_overrides`` / ``test_sets`` that are not registered
    datasets, ``method_overrides`` for a method the sweep does not run. Each error names the file, the section and
    the closest valid name. Also the launcher's GPU keys (`check_gpu_config`) and, with ``launcher.gpus``, any
    override that would take a job off its GPU."""
    from datamodules import DATASETS

    methods, datasets = sorted(METHODS), sorted(DATASETS)
    for name in sweep.methods:
        if name != "all" and name not in METHODS:
            raise ValueError(f"{source}: methods: unknown method {name!r}{_closest(name, methods)}")
    for label, variant in sweep.variants.items():
        if variant.method not in METHODS:
            raise ValueError(
                f"{source}: variants.{label}.method: unknown method {variant.method!r}"
                f"{_closest(variant.method, methods)}"
            )
    for name in sweep.datasets:
        if name not in DATASETS:
            raise ValueError(f"{source}: datasets: unknown dataset {name!r}{_closest(name, datasets)}")
    run_methods = (
        {m for m, cls in METHODS.items() if cls.kind == "method"} if sweep.methods == ["all"] else set(sweep.methods)
    ) | {v.method for v in sweep.variants.values()}
    for section, keys in (("dataset_overrides", sweep.dataset_overrides), ("test_sets", sweep.test_sets)):
        for name in keys:  # may name a dataset the sweep leaves out (a narrowed launch), never an unknown one
            if name not in DATASETS:
                raise ValueError(f"{source}: {section}: unknown dataset {name!r}{_closest(name, datasets)}")
    for name in sweep.method_overrides:
        if name not in run_methods:
            hint = _closest(name, sorted(run_methods)) or _closest(name, methods)
            raise ValueError(
                f"{source}: method_overrides: {name!r} is not a method the sweep runs {sorted(run_methods)}{hint}"
            )
    check_gpu_config(list(sweep.launcher.gpus), sweep.launcher.workers_per_gpu, sweep.launcher.name)
    if sweep.launcher.gpus:
        _check_gpu_overrides(sweep, source)


GPU_JOB_OVERRIDES = ("trainer.accelerator=gpu", "trainer.devices=1")


def _check_gpu_overrides(sweep: SweepConfig, source: str) -> None:
    """With ``launcher.gpus`` every job runs on its worker's one GPU: refuse overrides that say otherwise."""
    lists = [("overrides", sweep.overrides)]
    lists += [(f"dataset_overrides.{k}", v) for k, v in sweep.dataset_overrides.items()]
    lists += [(f"method_overrides.{k}", v) for k, v in sweep.method_overrides.items()]
    lists += [(f"variants.{k}.overrides", v.overrides) for k, v in sweep.variants.items()]
    allowed = dict(item.split("=", 1) for item in GPU_JOB_OVERRIDES)
    for section, items in lists:
        for item in items:
            key, _, value = item.partition("=")
            if key.strip() in allowed and value.strip() != allowed[key.strip()]:
                raise ValueError(
                    f"{source}: {section}: {item!r} conflicts with launcher.gpus={list(sweep.launcher.gpus)} (every "
                    f"job then runs with {' '.join(GPU_JOB_OVERRIDES)}); remove it, or remove launcher.gpus"
                )


def expand(sweep: SweepConfig) -> list[Job]:
    """The sweep's grid as jobs (dataset, then row, then seed order), each with its run folder."""
    if sweep.methods == ["all"]:  # every ranked method; reference and oracle rows are added by name
        methods = [m for m, cls in METHODS.items() if cls.kind == "method"]
    else:
        methods = list(sweep.methods)
    rows: list[tuple[str, str, list[str]]] = [(m, m, []) for m in methods]
    for label, v in sweep.variants.items():
        rows.append((label, v.method, [*([f"kind={v.kind}"] if v.kind else []), *v.overrides]))
    jobs = []
    for dataset in sweep.datasets:
        for label, method, variant_overrides in rows:
            for seed in sweep.seeds:
                manifests = sweep.test_sets.get(dataset, [])
                overrides = [
                    f"method={method}",
                    f"dataset={dataset}",
                    f"seed={seed}",
                    *([f"label={label}"] if label != method else []),
                    f"output.root={sweep.root}",
                    f"output.sweep={sweep.name}",
                    "trainer.progress_bar=false",
                    f"trainer.threads={max(1, sweep.launcher.threads)}",
                    *(GPU_JOB_OVERRIDES if sweep.launcher.gpus else ()),
                    *([f"data.manifests=[{','.join(manifests)}]"] if manifests else []),
                    *sweep.overrides,
                    *sweep.dataset_overrides.get(dataset, []),
                    *sweep.method_overrides.get(method, []),
                    *variant_overrides,
                ]
                cfg = build_config(overrides)
                jobs.append(Job(label, method, dataset, int(seed), tuple(overrides), run_dir_for(cfg)))
    dirs = [j.run_dir for j in jobs]
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"sweep {sweep.name!r}: two grid points resolve to the same job (identical configs)")
    return jobs


def state(job: Job) -> str:
    """``done``, ``incomplete`` (a folder without ``done``, visible or the hidden staging one) or ``not launched``."""
    if (job.run_dir / "done").is_file():
        return "done"
    return "incomplete" if job.run_dir.exists() or staging_dir(job.run_dir).exists() else "not launched"


def status(jobs: list[Job]) -> dict[str, list[Job]]:
    """Jobs grouped by state."""
    out: dict[str, list[Job]] = {s: [] for s in STATES}
    for job in jobs:
        out[state(job)].append(job)
    return out


def delete_incomplete(jobs: list[Job]) -> list[Path]:
    """Remove the folders of incomplete jobs, the hidden staging folders of failed attempts included (never a folder
    with ``done``)."""
    removed = []
    for job in jobs:
        if state(job) == "incomplete":
            for folder in (job.run_dir, staging_dir(job.run_dir)):
                if folder.exists():
                    shutil.rmtree(folder)
                    removed.append(folder)
    return removed


def run_overrides(overrides: list[str] | tuple[str, ...]) -> str:
    """Run one job from its overrides (the unit of work of every launcher); returns its folder."""
    from benchmarks.run import RunExistsError, run_job

    cfg = build_config(list(overrides))
    try:
        return str(run_job(cfg))
    except RunExistsError:
        return str(run_dir_for(cfg))


def _log_event(sweep_dir: Path, **event: Any) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / "_sweep_log.jsonl", "a") as f:
        f.write(json.dumps(event) + "\n")


def _worker_job(overrides: tuple[str, ...], sweep_dir: str) -> tuple[str, str | None]:
    start = time.time()
    try:
        run_dir, error = run_overrides(overrides), None
    except Exception:  # noqa: BLE001 - one failing job must not stop the sweep
        run_dir, error = "", traceback.format_exc()
    # which local worker ran it and on which device (absent in the serial launcher's own process)
    names = {"worker": "MSABENCH_WORKER", "cuda_visible_devices": "CUDA_VISIBLE_DEVICES"}
    where = {key: os.environ[var] for key, var in names.items() if var in os.environ}
    _log_event(Path(sweep_dir), pid=os.getpid(), start=start, end=time.time(), run_dir=run_dir, error=error, **where)
    return run_dir, error


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def plan_workers(launcher: LauncherConfig, n_jobs: int, cores: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) such that workers x threads never exceeds the cores, never more workers
    than jobs, and with ``launcher.gpus`` never more workers than GPU slots (`gpu_slots`)."""
    cores = cores or available_cores()
    threads = max(1, launcher.threads)
    if threads > cores:
        log.warning("launcher.threads=%d exceeds the %d cores; using %d", threads, cores, cores)
        threads = cores
    limit = max(1, cores // threads)
    if launcher.gpus:
        n_slots = len(gpu_slots(list(launcher.gpus), launcher.workers_per_gpu))
        workers = n_slots if launcher.workers <= 0 else min(launcher.workers, n_slots)
    else:
        workers = limit if launcher.workers <= 0 else launcher.workers
    if workers > limit:
        log.warning(
            "%d workers x %d threads would oversubscribe %d cores; using %d workers", workers, threads, cores, limit
        )
        workers = limit
    return max(1, min(workers, max(n_jobs, 1))), threads


def worker_slots(launcher: LauncherConfig, workers: int, threads: int) -> list[WorkerSlot]:
    """The local pool's ``workers`` slots: the first ``workers`` GPU slots (round-robin over the devices) with
    ``launcher.gpus``, else CPU slots; each with the environment its process sets before importing torch."""
    devices: list[int | None] = list(gpu_slots(list(launcher.gpus), launcher.workers_per_gpu)) or [None] * workers
    return [WorkerSlot(i, gpu, worker_env(gpu, threads)) for i, gpu in enumerate(devices[:workers])]


@dataclass
class LaunchPlan:
    """What a launch of the sweep's missing jobs would start: printable ``lines`` (workers, threads, each worker's
    device and environment, the overrides GPU jobs get), the local pool's ``slots`` (empty for serial and slurm),
    and the ``problems`` that stop a launch on this machine (none: it can start)."""

    lines: list[str]
    slots: list[WorkerSlot]
    problems: list[str]


def plan_launch(sweep: SweepConfig, n_jobs: int, cores: int | None = None) -> LaunchPlan:
    """The `LaunchPlan` of ``n_jobs`` jobs on this machine (``cores`` defaults to the cores this process may use)."""
    problems = []
    try:
        check_gpus_present(list(sweep.launcher.gpus))
    except ValueError as exc:
        problems.append(str(exc))
    name = sweep.launcher.name
    if name != "local":
        where = "in the launcher's process, one job at a time" if name == "serial" else "as one Slurm array job"
        return LaunchPlan([f"{name} launcher: {n_jobs} jobs {where}"], [], problems)
    cores = cores or available_cores()
    workers, threads = plan_workers(sweep.launcher, n_jobs, cores)
    if threads != max(1, sweep.launcher.threads):
        problems.insert(0, (
            f"launcher.threads={sweep.launcher.threads} exceeds what this machine allows ({threads}); "
            "lower it (each job's trainer.threads is part of its config and hash)"
        ))
    slots = worker_slots(sweep.launcher, workers, threads)
    lines = [f"local pool: {workers} workers x {threads} threads ({cores} cores: launcher.threads up to "
             f"{max(1, cores // workers)} fits)"]
    if sweep.launcher.gpus:
        per_device = Counter(slot.gpu for slot in slots)
        lines.append("GPU workers per device: " + ", ".join(f"GPU {g}: {n}" for g, n in sorted(per_device.items())))
        lines.append(f"every job adds: {' '.join(GPU_JOB_OVERRIDES)} (part of its config hash)")
    lines += [f"  {slot.describe()}" for slot in slots]
    return LaunchPlan(lines, slots, problems)


def launch(
    sweep: SweepConfig, *, progress: Callable[[str], None] = print, dry_run: bool = False
) -> dict[str, list[Job]]:
    """Run every job of the sweep that is not done; returns the final status. ``dry_run`` prints the plan (the
    workers, their devices and environment) and what would stop a launch on this machine, and runs nothing."""
    jobs = expand(sweep)
    todo = [j for j in jobs if state(j) != "done"]
    sweep_dir = Path(sweep.root) / sweep.name
    progress(
        f"sweep {sweep.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} done, {len(todo)} to run "
        f"({sweep.launcher.name} launcher)"
    )
    if not todo:
        return status(jobs)
    plan = plan_launch(sweep, len(todo))
    if dry_run:
        for line in plan.lines + [f"a launch on this machine would stop: {p}" for p in plan.problems]:
            progress(line)
        progress("dry run: nothing launched")
        return status(jobs)
    if plan.problems:
        raise ValueError(plan.problems[0])
    for line in plan.lines:
        progress(line)
    name = sweep.launcher.name
    failures: list[tuple[Job, str]] = []
    if name == "serial":
        for i, job in enumerate(todo, 1):
            _, error = _worker_job(job.overrides, str(sweep_dir))
            progress(f"[{i}/{len(todo)}] {job.run_dir.name}: {'FAILED' if error else 'done'}")
            if error:
                failures.append((job, error))
    elif name == "local":
        with worker_pool(plan.slots) as pool:
            futures = {pool.submit(_worker_job, job.overrides, str(sweep_dir)): job for job in todo}
            for i, future in enumerate(as_completed(futures), 1):
                job = futures[future]
                _, error = future.result()
                progress(f"[{i}/{len(todo)}] {job.run_dir.name}: {'FAILED' if error else 'done'}")
                if error:
                    failures.append((job, error))
    elif name == "slurm":
        failures = _launch_slurm(sweep, todo, progress)
    else:
        raise ValueError(f"launcher.name must be serial, local or slurm, got {name!r}")
    for job, error in failures:
        progress(f"FAILED {job.run_dir}:\n{error}")
    return status(jobs)


def _launch_slurm(sweep: SweepConfig, todo: list[Job], progress: Callable[[str], None]) -> list[tuple[Job, str]]:
    """One submitit array job over the missing jobs; waits for it. ``slurm.cluster=local|debug``
    runs the same path without a cluster (tests)."""
    import submitit

    s = sweep.slurm
    folder = Path(sweep.root) / sweep.name / "_submitit"
    executor = submitit.AutoExecutor(folder=str(folder), cluster=s.cluster or None)
    params: dict[str, Any] = {
        "timeout_min": s.time_min,
        "cpus_per_task": s.cpus_per_task,
        "mem_gb": s.mem_gb,
        "gpus_per_node": s.gpus_per_node,
        "slurm_array_parallelism": s.array_parallelism,
        "name": f"msabench-{sweep.name}",
    }
    if s.partition:
        params["slurm_partition"] = s.partition
    if s.additional:
        params["slurm_additional_parameters"] = dict(s.additional)
    executor.update_parameters(**params)
    sweep_dir = str(Path(sweep.root) / sweep.name)
    submitted = executor.map_array(_worker_job, [j.overrides for j in todo], [sweep_dir] * len(todo))
    first_id = submitted[0].job_id if submitted else "-"
    progress(f"submitted {len(submitted)} jobs to {executor.cluster} (first job id {first_id})")
    failures = []
    for i, (job, handle) in enumerate(zip(todo, submitted), 1):
        try:
            _, error = handle.result()
        except Exception:  # noqa: BLE001
            error = traceback.format_exc()
        progress(f"[{i}/{len(todo)}] {job.run_dir.name}: {'FAILED' if error else 'done'}")
        if error:
            failures.append((job, error))
    return failures
