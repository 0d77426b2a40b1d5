"""One job: fit with early stopping on the IID valid split, restore the best epoch, then test once
on every test set and write the run folder (docs: the run folder): ``config.yaml``, ``epochs.npz``,
``predictions.csv``, ``result.json``, and ``done`` last (each written to a temporary file, fsynced, renamed;
``done`` holds the SHA-256 of ``result.json``). Data and config are loaded and validated before any folder is
created. Every job trains into a hidden sibling ``.<name>.new`` that is renamed into place only when complete, so a
visible run folder is always complete and a complete run is replaced only by a complete new one; a job that fails
(an exception, a NaN, Ctrl+C, a full disk) leaves the hidden folder with its logs and ``error.txt``, and says where.
No test set is read before the checkpoint is fixed (docs/faults.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from benchmarks.config import config_hash, run_dir_for, staging_dir, to_object
from benchmarks.environment import environment, git_commit, library_versions
from benchmarks.workers import CUBLAS_WORKSPACE
from datamodules import get_dataset
from datamodules.atomic import atomic_write_bytes, atomic_write_text
from datamodules.datamodule import MSADataModule
from methods import get_method
from methods.epoch_records import FILE_NAME as EPOCH_RECORDS
from methods.metrics import SELECTION_MODES

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RunExistsError(FileExistsError):
    """The run folder already holds a complete run."""


class JobFailedError(RuntimeError):
    """A job failed while training or writing; the message names the hidden folder that keeps its logs."""


class BestState(Callback):
    """Keeps an in-memory copy of the weights at the best ``val/select`` (IID valid only)."""

    def __init__(self, mode: str, first_epoch: int = 0) -> None:
        self.mode = mode
        self.first_epoch = int(first_epoch)
        self.best: float | None = None
        self.epoch = -1
        self.state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or "val/select" not in trainer.callback_metrics:
            return
        if trainer.current_epoch < self.first_epoch:
            return
        value = float(trainer.callback_metrics["val/select"])
        if np.isnan(value):
            return
        better = self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        if better:
            self.best, self.epoch = value, int(trainer.current_epoch)
            self.state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def restore(self, pl_module: L.LightningModule) -> None:
        if self.state is None:
            raise RuntimeError("no validation epoch finished: nothing to select (check trainer.max_epochs)")
        pl_module.load_state_dict(self.state)


def _prepare_dir(run_dir: Path, overwrite: bool) -> Path:
    """The empty hidden staging folder (``.<name>.new``) a job trains into; a stale one, left by a failed or killed
    attempt, is removed first. A complete run is never touched here (it is replaced by :func:`_move_into_place` once
    the new one is complete); a visible folder without ``done`` (made by an older version, which trained in place) is
    removed, so that a failure leaves no visible folder."""
    if (run_dir / "done").exists():
        if not overwrite:
            raise RunExistsError(f"{run_dir} already holds a complete run; set output.overwrite=true to redo it")
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    staging = staging_dir(run_dir)
    if staging.exists():
        log.info("removing %s, left by an earlier attempt of this job", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def _move_into_place(staging: Path, run_dir: Path) -> None:
    """Make the complete run ``staging`` the run folder ``run_dir``: one rename, or, when ``run_dir`` holds a run being
    replaced, two renames and then the old is removed (a crash in between leaves the old run in ``.<name>.old``,
    never half of either; the next completed launch removes it)."""
    old = run_dir.parent / f".{run_dir.name}.old"
    if run_dir.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(run_dir, old)
    os.replace(staging, run_dir)
    if old.exists():
        shutil.rmtree(old)


def _failure(exc: BaseException, staging: Path, run_dir: Path) -> BaseException:
    """The exception a failed job raises: one line naming the run folder, what happened and the hidden folder that
    keeps the attempt's config, logs and ``error.txt`` (the traceback). Ctrl+C stays a KeyboardInterrupt (Lightning
    turns it into ``SystemExit(1)``; this undoes that)."""
    interrupted = isinstance(exc, KeyboardInterrupt) or (
        isinstance(exc, SystemExit) and isinstance(exc.__context__, KeyboardInterrupt)
    )
    try:
        atomic_write_text(staging / "error.txt", "".join(traceback.format_exception(exc)))
    except OSError:  # a full disk: the message below still says what happened
        pass
    what = "was interrupted" if interrupted else f"failed: {type(exc).__name__}: {' '.join(str(exc).split())}"
    kept = "the complete run there is unchanged" if (run_dir / "done").exists() else "no run folder was made"
    message = (
        f"{run_dir.name} {what}; {kept}; the attempt's config, logs and error.txt (the traceback) are in {staging}, "
        "which the next launch of this job removes"
    )
    return KeyboardInterrupt(message) if interrupted else JobFailedError(message)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


LOGGERS = ("csv", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


def wandb_mode(cfg: DictConfig) -> str:
    """The W&B mode of a job: ``wandb.mode``, else ``$WANDB_MODE``, else ``offline``."""
    return cfg.wandb.mode or os.environ.get("WANDB_MODE") or "offline"


def check_loggers(cfg: DictConfig) -> None:
    """Refuse, before any data is loaded, a ``logger`` entry or ``wandb.*`` value that would fail later."""
    from benchmarks.sweep import _closest

    for name in cfg.logger:
        if name not in LOGGERS:
            raise ValueError(f"logger: unknown entry {name!r}{_closest(name, list(LOGGERS))}; expected a list of "
                             f"{', '.join(LOGGERS)}")
    if cfg.wandb.mode and cfg.wandb.mode not in WANDB_MODES:
        raise ValueError(
            f"wandb.mode={cfg.wandb.mode!r}{_closest(cfg.wandb.mode, list(WANDB_MODES))}: expected "
            f"{', '.join(WANDB_MODES)} (or empty: $WANDB_MODE, else offline)"
        )
    if not cfg.wandb.timeout_s > 0:
        raise ValueError(f"wandb.timeout_s={cfg.wandb.timeout_s}: expected a number of seconds > 0")


def _extra_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """Loggers besides the always-on CSVLogger: ``wandb`` (mode: :func:`wandb_mode`).

    W&B must never fail or stall the job: starting (and finishing) a run is bounded by ``wandb.timeout_s``; an
    unreachable server, a refused key or any other W&B error is one warning saying W&B was skipped and why, and the
    job goes on with the CSV logger."""
    if "wandb" not in cfg.logger:
        return []
    mode = wandb_mode(cfg)
    timeout = float(cfg.wandb.timeout_s)
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity or None,
            group=cfg.wandb.group or cfg.output.sweep,
            name=run_dir_for(cfg).name,
            tags=[cfg.method, cfg.dataset, f"seed={cfg.seed}"],
            save_dir=str(run_dir),
            mode=mode,
            settings=wandb.Settings(init_timeout=timeout, finish_timeout=timeout, login_timeout=timeout),
        )
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
        return [logger]
    except Exception as exc:  # noqa: BLE001 - logging must never fail the job
        # one line: W&B's messages span lines and end with advice on init_timeout, which is wandb.timeout_s here
        reason = " ".join(str(exc).split("Consider increasing")[0].split()) or "no message"
        log.warning(
            "W&B skipped for %s: it could not start a run (wandb.mode=%s, wandb.timeout_s=%g): %s: %s; the job goes "
            "on with the CSV logger only", run_dir_for(cfg).name, mode, timeout, type(exc).__name__, reason,
        )
        _finish_wandb()
        return []


def _finish_wandb() -> None:
    """End the W&B run of this job so the next job never logs into it."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()
    except Exception as exc:  # noqa: BLE001
        log.warning("wandb.finish() failed: %s", exc)


def _flat_scalars(tree: Any, prefix: str) -> dict[str, float]:
    """The numeric leaves of a nested dict as ``prefix/a/b`` -> float (lists and strings are left out)."""
    if isinstance(tree, dict):
        out: dict[str, float] = {}
        for key, value in tree.items():
            out.update(_flat_scalars(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def _log_mechanism(trainer: L.Trainer, mechanism: dict[str, Any]) -> None:
    """Log the mechanism diagnostics' scalars (``mechanism/<...>``) to every logger of the run, at the last step."""
    scalars = _flat_scalars(mechanism, "mechanism")
    if not scalars:
        return
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=trainer.global_step)
        logger.save()


def build_datamodule(cfg: DictConfig) -> MSADataModule:
    """The job's datamodule (dataset from the registry, restricted to ``data.modalities``)."""
    source = to_object(cfg.source)
    bundle = get_dataset(cfg.dataset).load(source)
    return MSADataModule(
        bundle,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        seed=cfg.seed,
        modalities=list(cfg.data.modalities) if cfg.data.modalities else None,
        manifests=list(cfg.data.manifests),
        allow_source_mismatch=cfg.data.allow_source_mismatch,
        train_label_noise=cfg.data.train_label_noise,
        source_config=source,
    )


def ddp_child() -> bool:
    """True in a process that Lightning's DDP launcher started for a rank other than 0: it re-runs the same
    command, trains its shard and takes part in every gather, but must not create, replace or write run files."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def check_device(cfg: DictConfig) -> None:
    """Before any data is read: ``trainer.accelerator=gpu`` (or ``cuda``) needs a CUDA device torch can see (one
    line naming the key otherwise, instead of Lightning's refusal once the data is loaded). On a GPU, sets the
    cuBLAS workspace that deterministic kernels need (``trainer.deterministic``) unless the environment already has
    one; it must be set before CUDA starts."""
    accelerator = cfg.trainer.accelerator
    if accelerator not in ("gpu", "cuda"):
        return
    if not torch.cuda.is_available():
        raise ValueError(
            f"trainer.accelerator={accelerator}: torch {torch.__version__} sees no CUDA device on this machine (a "
            "CPU-only build, no GPU, or CUDA_VISIBLE_DEVICES hides them); use trainer.accelerator=cpu"
        )
    if cfg.trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def run_job(cfg: DictConfig) -> Path:
    """Run one resolved job config and return its run folder."""
    start = time.time()
    final_dir = run_dir_for(cfg)
    child = ddp_child()
    check_loggers(cfg)
    if (final_dir / "done").exists() and not cfg.output.overwrite:
        raise RunExistsError(f"{final_dir} already holds a complete run; set output.overwrite=true to redo it")
    check_device(cfg)
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(cfg.trainer.deterministic, warn_only=True)

    dm = build_datamodule(cfg)
    method = get_method(cfg.method)(dm.spec, to_object(cfg.model))
    method.configure_selection(cfg.selection.key)
    recorder = method.enable_epoch_records() if cfg.trainer.record_epochs else None
    first_epoch = method.first_selectable_epoch()
    if first_epoch >= cfg.trainer.max_epochs:
        raise ValueError(
            f"{cfg.method}: model selection starts at 0-based epoch {first_epoch} (e.g. gear.swap_epochs with "
            f"gear.select_after_swap=true) but trainer.max_epochs={cfg.trainer.max_epochs}; raise max_epochs or "
            "lower that start"
        )
    trainer, best = _make_trainer(cfg, method, first_epoch)
    if child:  # a DDP rank > 0 trains its shard in a scratch folder and writes no run file
        scratch = Path(tempfile.mkdtemp(prefix="msabench-ddp-rank-"))
        try:
            _fit_and_write(cfg, dm, method, trainer, best, recorder, first_epoch, scratch, start, write=False)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return final_dir
    # Data, config and trainer settings are loaded and valid: only now is a (hidden) folder created.
    staging = _prepare_dir(final_dir, cfg.output.overwrite)
    try:
        _fit_and_write(cfg, dm, method, trainer, best, recorder, first_epoch, staging, start)
        _move_into_place(staging, final_dir)
    except BaseException as exc:  # noqa: BLE001 - Ctrl+C too: every failure names the folder that keeps its logs
        raise _failure(exc, staging, final_dir) from exc
    return final_dir


def _restore_sigint(handler: Any) -> None:
    """Lightning ignores Ctrl+C for good after catching one (its graceful shutdown); give it back to the jobs this
    process runs next (a serial sweep)."""
    if handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def _make_trainer(cfg: DictConfig, method: L.LightningModule, first_epoch: int) -> tuple[L.Trainer, BestState]:
    """The job's Trainer (its loggers are attached once the run folder exists) and the best-epoch keeper. Trainer
    settings Lightning refuses (an accelerator or precision it does not know or cannot find) are one line naming the
    keys, before any folder is made."""
    if not cfg.trainer.limit_train_batches > 0:
        raise ValueError(
            f"trainer.limit_train_batches={cfg.trainer.limit_train_batches}: expected a fraction in (0, 1] or a "
            "number of batches >= 1 (0 trains nothing)"
        )
    mode = SELECTION_MODES[cfg.selection.key]
    best = BestState(mode, first_epoch)
    callbacks: list[Callback] = [best]
    if cfg.trainer.early_stop:
        callbacks.insert(
            0, EarlyStopping("val/select", patience=cfg.trainer.patience, min_delta=cfg.trainer.min_delta, mode=mode)
        )
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    try:
        trainer = L.Trainer(
            max_epochs=cfg.trainer.max_epochs,
            min_epochs=max(cfg.trainer.min_epochs, first_epoch + 1),
            accelerator=cfg.trainer.accelerator,
            devices=cfg.trainer.devices,
            strategy=cfg.trainer.strategy,
            precision=cfg.trainer.precision,
            accumulate_grad_batches=method.cfg.optim.accumulate,
            limit_train_batches=cfg.trainer.limit_train_batches,
            callbacks=callbacks,
            logger=False,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=cfg.trainer.progress_bar,
            log_every_n_steps=10,
        )
    except Exception as exc:  # noqa: BLE001 - Lightning raises several types for settings it refuses
        raise ValueError(
            f"trainer.accelerator={cfg.trainer.accelerator!r}, trainer.devices={cfg.trainer.devices}, "
            f"trainer.strategy={cfg.trainer.strategy!r}, trainer.precision={cfg.trainer.precision!r}: Lightning "
            f"refuses them ({type(exc).__name__}: {' '.join(str(exc).split())})"
        ) from exc
    return trainer, best


def _fit_and_write(
    cfg: DictConfig,
    dm: MSADataModule,
    method: L.LightningModule,
    trainer: L.Trainer,
    best: BestState,
    recorder: Any,
    first_epoch: int,
    run_dir: Path,
    start: float,
    *,
    write: bool = True,
) -> None:
    """Train, select, test and write every file of the run folder into ``run_dir`` (``done`` last); ``write=False``
    (a DDP rank > 0) stops after training and testing."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    trainer.loggers = [CSVLogger(str(run_dir), name="logs", version=""), *_extra_loggers(cfg, run_dir)]
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*deterministic.*")
            # Under DDP, evaluation rows are gathered (and de-duplicated) before anything is logged or selected.
            warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
            warnings.filterwarnings("ignore", message=".*Using `DistributedSampler` with the dataloaders.*")
            trainer.fit(method, datamodule=dm)
            best.restore(method)
            trainer.test(method, datamodule=dm, verbose=False)
            mechanism = method.compute_mechanism_diagnostics(dm)
            _log_mechanism(trainer, mechanism)
    finally:
        _restore_sigint(sigint)
        if "wandb" in cfg.logger:
            _finish_wandb()
    if not write:
        return

    rows = []
    for name in dm.test_set_names:
        out = method.test_outputs[name]
        ids = dm.ids_of(name)[out["index"]]
        frame = {"set": name, "id": ids, "prediction": out["prediction"], "label": out["label"]}
        # Ground truth (docs/design.md#ground-truth): z_m, conflict_m, group; empty strings for real data.
        frame.update(dm.ground_truth_of(name, np.asarray(out["index"])))
        rows.append(pd.DataFrame(frame))
    records_bytes = None
    if recorder is not None:
        records_bytes = recorder.to_bytes()
        atomic_write_bytes(run_dir / EPOCH_RECORDS, records_bytes)
    predictions = pd.concat(rows, ignore_index=True)
    atomic_write_text(run_dir / "predictions.csv", predictions.to_csv(index=False, lineterminator="\n"))
    selected = next((h for h in method.valid_history if h["epoch"] == best.epoch), {})
    result = {
        "method": cfg.method,
        "label": cfg.label or cfg.method,
        "kind": cfg.kind or type(method).kind,
        "dataset": cfg.dataset,
        "seed": int(cfg.seed),
        "sweep": cfg.output.sweep,
        "config_hash": config_hash(cfg),
        "selected_epoch": best.epoch,
        "epochs_trained": int(trainer.current_epoch),
        "selection": {"key": cfg.selection.key, "split": "valid", "value": best.best, "first_epoch": first_epoch},
        "valid_at_selected_epoch": selected,
        "valid_history": method.valid_history,
        "epoch_records": None if records_bytes is None else {"file": EPOCH_RECORDS, "bytes": len(records_bytes)},
        "test_sets": dm.test_set_names,
        "metrics": {name: method.test_metrics[name] for name in dm.test_set_names},
        "n_samples": {name: int(len(method.test_outputs[name]["index"])) for name in dm.test_set_names},
        "diagnostics": {**method.summary(), **({"mechanism": mechanism} if mechanism else {})},
        "versions": library_versions(),
        "environment": environment(torch.get_num_threads()),
        "git_commit": git_commit(),
        "torch_threads": torch.get_num_threads(),
        "wall_time_s": round(time.time() - start, 2),
    }
    _write_json(run_dir / "result.json", result)
    result_sha = hashlib.sha256((run_dir / "result.json").read_bytes()).hexdigest()
    atomic_write_text(run_dir / "done", f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\nresult.json sha256 {result_sha}\n")
