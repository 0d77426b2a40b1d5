"""Training throughput of every registered method (figures, not assertions): `make perf`.

    python -m benchmarks.perf_training [--methods baseline,mmci] [--data synthetic,mosi_shaped]
                                      [--epochs 3] [--batches N] [--accelerator cpu|gpu] [--compare]
                                      [--records] [--workdir /tmp/msabench_perf]

For each method and data, one job as `msabench run` builds it (default batch size and threads,
``trainer.threads=1``), trained for ``--epochs`` epochs without early stopping; the first epoch is a
warm-up and is not counted. Printed per method: training samples/s (training samples of a measured
epoch / seconds of its training loop), seconds per epoch (training loop plus validation), and the share
of the training loop spent fetching batches (Lightning's profiler, ``train_dataloader_next``). ``--records``
also scores every test set after each epoch, as `msabench run` does by default (per-epoch records,
``trainer.record_epochs``); seconds per epoch then include it.
``--batches N`` trains N batches per epoch (a quick check; 0 = all). ``--accelerator gpu`` runs every job
with ``trainer.accelerator=gpu`` on the first visible CUDA device (CUDA_VISIBLE_DEVICES picks another);
the clock then waits for the device at each epoch's start and end.

Data:
  synthetic    the default synthetic benchmark (``synthetic_shared``: 1284 / 229 / 686 clips,
               text 50 x 768, audio 50 x 5, vision 50 x 20)
  mosi_shaped  an MMSA pickle written by `msabench prepare synthetic` with MOSI's unaligned shapes
               (text 50 x 768, audio 375 x 5, vision 500 x 20; 1284 / 229 / 686 clips), read as
               ``dataset=mmsa``

``--compare`` also runs each job on the earlier kernels (``model.backbone.lstm_impl=packed``:
packed-sequence LSTMs; ``model.optim.impl=for_loop``: per-parameter Adam) and prints the speed-up.
Both paths compute the same function; their metrics agree up to float rounding (see docs).
Wall-clock figures depend on the machine's load: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.profilers import SimpleProfiler  # noqa: E402

from benchmarks.config import build_config, to_object  # noqa: E402
from benchmarks.run import build_datamodule, check_device  # noqa: E402
from methods import METHODS, get_method  # noqa: E402

LEGACY = ["model.backbone.lstm_impl=packed", "model.optim.impl=for_loop"]
MOSI_SHAPE = ["max_len.audio=375", "max_len.vision=500", "min_len.audio=100", "min_len.vision=100"]


def mosi_shaped_pickle(workdir: Path) -> Path:
    """The MOSI-shaped MMSA pickle in ``workdir`` (written once by `msabench prepare synthetic`)."""
    path = workdir / "mosi_shaped.pkl"
    if not path.is_file():
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.cli", "prepare", "synthetic", *MOSI_SHAPE, "--out", str(path)]
        done = subprocess.run(cmd, capture_output=True, text=True)  # its notes (e.g. OOD sets not written) stay out
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr}")
    return path


def data_overrides(name: str, workdir: Path) -> list[str]:
    """The `msabench run` overrides of one ``--data`` choice."""
    if name == "synthetic":
        return ["dataset=synthetic_shared"]
    if name == "mosi_shaped":
        return ["dataset=mmsa", f"source.path={mosi_shaped_pickle(workdir)}"]
    raise ValueError(f"--data: unknown choice {name!r}; expected synthetic or mosi_shaped")


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock marks on a GPU include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    overrides: list[str], epochs: int, workdir: Path, batches: int = 0, records: bool = False
) -> dict[str, float]:
    """Train one job for ``epochs`` epochs (``batches`` per epoch, 0 = all; ``records``: per-epoch test-set
    records as `msabench run` makes them); throughput over the epochs after the first."""
    cfg = build_config([*overrides, "trainer.threads=1", "seed=1111"])
    check_device(cfg)
    torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.seed, verbose=False)
    dm = build_datamodule(cfg)
    method = get_method(cfg.method)(dm.spec, to_object(cfg.model))
    method.configure_selection(cfg.selection.key)
    if records:
        method.enable_epoch_records()
    epoch_times: list[float] = []
    samples: list[int] = []

    class EpochClock(L.Callback):
        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            _sync(module.device)
            self.start = time.perf_counter()
            samples.append(0)

        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, idx) -> None:
            samples[-1] += len(batch)

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:  # after validation
            _sync(module.device)
            epoch_times.append(time.perf_counter() - self.start)

    class SyncedProfiler(SimpleProfiler):
        """Lightning's profiler, waiting for the device when a training epoch's loop ends."""

        def stop(self, action_name: str) -> None:
            if action_name == "run_training_epoch":
                _sync(method.device)
            super().stop(action_name)

    profiler = SyncedProfiler(dirpath=workdir, filename="profile")  # its report goes to a file, not stdout
    trainer = L.Trainer(
        max_epochs=epochs, accelerator=cfg.trainer.accelerator, devices=1, logger=False, profiler=profiler,
        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False, num_sanity_val_steps=0,
        accumulate_grad_batches=method.cfg.optim.accumulate, callbacks=[EpochClock()],
        limit_train_batches=batches or 1.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(method, datamodule=dm)
    durations = profiler.recorded_durations
    train_loop = durations["run_training_epoch"][1:]
    fetch = durations["[_TrainingEpochLoop].train_dataloader_next"]
    per_epoch_fetch = sum(fetch) / epochs
    return {
        "samples_s": sum(samples[1:]) / sum(train_loop),
        "epoch_s": sum(epoch_times[1:]) / len(epoch_times[1:]),
        "fetch_share": per_epoch_fetch / (sum(durations["run_training_epoch"]) / epochs),
    }


def describe_device(accelerator: str) -> str:
    """The header's machine part: the CPU, or the CUDA device the jobs use."""
    if accelerator == "gpu":
        props = torch.cuda.get_device_properties(0)
        return f"GPU {props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="all", help="comma-separated registered methods (default all)")
    parser.add_argument("--data", default="synthetic,mosi_shaped", help="synthetic and/or mosi_shaped")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per job, the first is a warm-up (default 3)")
    parser.add_argument("--batches", type=int, default=0, help="training batches per epoch (default 0 = all)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="trainer.accelerator of every job")
    parser.add_argument("--compare", action="store_true", help="also run the earlier kernels and print speed-ups")
    parser.add_argument("--records", action="store_true",
                        help="score every test set after each epoch, as msabench run does (in the epoch figure)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "msabench_perf"))
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first epoch is a warm-up)")
    if args.batches < 0:
        parser.error(f"--batches must be >= 0 (0 = all), got {args.batches}")
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        parser.error(f"--accelerator gpu: torch {torch.__version__} sees no CUDA device on this machine")
    methods = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; registered: {', '.join(sorted(METHODS))}")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # no "GPU available" lines between rows
        logging.getLogger(name).setLevel(logging.WARNING)
    print(
        f"training throughput, 1 torch thread, default batch size{', per-epoch records' if args.records else ''}; "
        f"{describe_device(args.accelerator)}, "
        f"torch {torch.__version__}", flush=True,
    )
    device = [f"trainer.accelerator={args.accelerator}"]
    header = f"{'data':<12} {'method':<16} {'samples/s':>10} {'epoch s':>8} {'fetch %':>8}"
    if args.compare:
        header += f" {'earlier samples/s':>18} {'speed-up':>9}"
    print(header, flush=True)
    for data in args.data.split(","):
        base = [*data_overrides(data, workdir), *device]
        for name in methods:
            try:
                now = measure([f"method={name}", *base], args.epochs, workdir, args.batches, args.records)
            except (ValueError, FileNotFoundError) as exc:
                print(f"{data:<12} {name:<16} skipped: {exc}")
                continue
            line = (f"{data:<12} {name:<16} {now['samples_s']:>10.0f} {now['epoch_s']:>8.2f} "
                    f"{100 * now['fetch_share']:>7.1f}%")
            if args.compare:
                before = measure([f"method={name}", *base, *LEGACY], args.epochs, workdir, args.batches, args.records)
                line += f" {before['samples_s']:>18.0f} {now['samples_s'] / before['samples_s']:>8.2f}x"
            print(line, flush=True)


if __name__ == "__main__":
    main()
