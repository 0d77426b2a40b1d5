"""Local sweep workers: which device each worker process gets, how many CPU threads, and the environment set in it.

The local launcher (`benchmarks.sweep`) starts one process per worker slot. A slot is pinned to one CUDA device
(``launcher.gpus``, repeats allowed, times ``launcher.workers_per_gpu``) or to the CPU. Its environment
(``CUDA_VISIBLE_DEVICES``, ``OMP_NUM_THREADS``, ...) is set by `init_worker`, the pool's initializer, before the
worker imports torch: this module imports neither torch nor anything that does, so a spawned worker reaches
`init_worker` with torch not yet loaded and CUDA not yet initialised.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

# cuBLAS needs a fixed workspace to be deterministic (torch.use_deterministic_algorithms; trainer.deterministic).
CUBLAS_WORKSPACE = ":4096:8"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass(frozen=True)
class WorkerSlot:
    """One worker process: its number, its CUDA device (an index of ``launcher.gpus``' numbering; None = CPU) and
    the environment variables set in it before torch is imported."""

    index: int
    gpu: int | None
    env: dict[str, str]

    def describe(self) -> str:
        """``worker 0: GPU 1 (CUDA_VISIBLE_DEVICES=1), OMP_NUM_THREADS=1 ...`` for plans and logs."""
        where = "CPU" if self.gpu is None else f"GPU {self.gpu}"
        return f"worker {self.index}: {where} (" + ", ".join(f"{k}={v}" for k, v in self.env.items()) + ")"


def gpu_slots(gpus: list[int], workers_per_gpu: int) -> list[int]:
    """The device of every GPU worker: each entry of ``gpus`` (repeats allowed) ``workers_per_gpu`` times, ordered
    round-robin over the devices (the k-th worker of each device before any device's (k+1)-th), so that a sweep
    with fewer jobs than slots still spreads them over every device. ``[0, 1]`` x 2 -> ``[0, 1, 0, 1]``; ``[0, 0, 1]``
    x 1 -> ``[0, 1, 0]``."""
    counts = Counter(gpu for gpu in gpus for _ in range(workers_per_gpu))
    order = list(dict.fromkeys(gpus))
    slots: list[int] = []
    for k in range(max(counts.values(), default=0)):
        slots += [gpu for gpu in order if counts[gpu] > k]
    return slots


def visible_devices(environ: dict[str, str] | None = None) -> list[str] | None:
    """The launcher's own ``CUDA_VISIBLE_DEVICES`` as a list (None when unset): ``launcher.gpus`` indices count
    within it, as torch's device indices do."""
    value = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


def worker_env(gpu: int | None, threads: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a worker sets before importing torch: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = ``threads``
    (torch's own thread count is the job's ``trainer.threads``; these keep OpenMP and MKL pools to the same size),
    and for a GPU worker ``CUDA_VISIBLE_DEVICES`` = that one device (mapped through the launcher's own
    ``CUDA_VISIBLE_DEVICES`` when set) and ``CUBLAS_WORKSPACE_CONFIG`` (deterministic cuBLAS) unless already set."""
    environ = dict(os.environ if environ is None else environ)
    env = {name: str(threads) for name in THREAD_VARIABLES}
    if gpu is not None:
        visible = visible_devices(environ)
        if visible is not None and gpu >= len(visible):
            raise ValueError(
                f"launcher.gpus: device index {gpu} is beyond the launcher's CUDA_VISIBLE_DEVICES={','.join(visible)} "
                f"(valid indices 0-{len(visible) - 1})"
            )
        env["CUDA_VISIBLE_DEVICES"] = str(gpu) if visible is None else visible[gpu]
        env["CUBLAS_WORKSPACE_CONFIG"] = environ.get("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    return env


def check_gpu_config(gpus: list[int], workers_per_gpu: int, launcher_name: str) -> None:
    """Machine-independent checks of ``launcher.gpus`` / ``launcher.workers_per_gpu`` (at sweep load)."""
    if workers_per_gpu < 1:
        raise ValueError(f"launcher.workers_per_gpu must be >= 1, got {workers_per_gpu}")
    if not gpus:
        if workers_per_gpu != 1:
            raise ValueError(
                f"launcher.workers_per_gpu={workers_per_gpu} needs launcher.gpus (a list of CUDA device indices, "
                "e.g. launcher.gpus=[0])"
            )
        return
    if launcher_name != "local":
        raise ValueError(
            f"launcher.gpus={list(gpus)} is for launcher.name=local, got launcher.name={launcher_name} "
            "(on Slurm request GPUs with slurm.gpus_per_node and set trainer.accelerator=gpu in overrides)"
        )
    negative = [g for g in gpus if g < 0]
    if negative:
        raise ValueError(f"launcher.gpus: device index {negative[0]} is negative; expected CUDA device indices >= 0")


def check_gpus_present(gpus: list[int], device_count: int | None = None, cuda_available: bool | None = None) -> None:
    """Refuse, before any worker starts, a GPU list this machine cannot serve: no CUDA at all, or an index beyond
    ``torch.cuda.device_count()``. ``device_count`` / ``cuda_available`` default to torch's answers (tests pass
    their own)."""
    if not gpus:
        return
    if cuda_available is None or device_count is None:
        import torch

        cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
        device_count = torch.cuda.device_count() if device_count is None else device_count
    if not cuda_available or device_count == 0:
        raise ValueError(
            f"launcher.gpus={list(gpus)}: no CUDA device is available on this machine (a CPU-only torch build, no "
            "GPU, or CUDA_VISIBLE_DEVICES hides them); remove launcher.gpus to run on the CPU, or use --dry-run to see "
            "the plan"
        )
    beyond = [g for g in gpus if g >= device_count]
    if beyond:
        raise ValueError(
            f"launcher.gpus: device index {beyond[0]} is beyond this machine's {device_count} CUDA device(s) "
            f"(valid indices 0-{device_count - 1})"
        )


def die_with_parent() -> bool:
    """Ask the kernel to send this process SIGKILL when its parent (the sweep launcher) dies (Linux
    ``PR_SET_PDEATHSIG``), so that killing the launcher alone never leaves workers finishing the queue, and a
    relaunch never runs a job twice. SIGKILL, not SIGTERM: Lightning installs its own SIGTERM handler while it
    trains, and two workers of a killed launcher were seen to outlive it, ignoring SIGTERM. The job the worker was
    running is left in its hidden staging folder, which a relaunch removes. False where unsupported (then
    workers stop at the launcher's next signal)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the launcher died before the call
        os._exit(1)
    return True


def init_worker(slot_queue: Any, slots: list[WorkerSlot]) -> None:
    """Pool initializer: take a free slot from ``slot_queue``, set its environment (before torch is imported in
    this process), die with the launcher, and quiet Lightning's INFO logs."""
    import warnings

    slot = slots[slot_queue.get()]
    os.environ.update(slot.env)
    os.environ["MSABENCH_WORKER"] = str(slot.index)
    die_with_parent()

    import lightning  # noqa: F401 - it sets its loggers to INFO when imported: quiet them afterwards

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def worker_pool(slots: list[WorkerSlot]) -> ProcessPoolExecutor:
    """A process pool of one spawned worker per slot; each worker takes one slot (`init_worker`) and keeps it for
    its life (the pool never replaces workers), so the slots' devices are each served by exactly one process."""
    ctx = mp.get_context("spawn")
    slot_queue = ctx.Queue()
    for slot in slots:
        slot_queue.put(slot.index)
    return ProcessPoolExecutor(len(slots), mp_context=ctx, initializer=init_worker, initargs=(slot_queue, slots))
