"""One job: fit with early stopping on the IID valid split, restore the best epoch, then test once
on every test set and write the run folder (docs: the run folder): ``config.yaml``, ``epochs.npz``,
``predictions.csv``, ``result.json``, and ``done`` last (each written to a temporary file, fsynced, renamed;
``done`` holds the SHA-256 of ``result.json``). Data and config are loaded and validated before any folder is
created; a complete run is replaced only by a complete new one. No test set is read before the checkpoint is fixed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
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

from benchmarks.atomic import atomic_write_bytes, atomic_write_text
from benchmarks.config import config_hash, run_dir_for, to_object
from benchmarks.environment import environment, git_commit, library_versions
from datamodules import get_dataset
from datamodules.datamodule import MSADataModule
from methods import get_method
from methods.epoch_records import FILE_NAME as EPOCH_RECORDS
from methods.metrics import SELECTION_MODES

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


class RunExistsError(FileExistsError):
    """The run folder already holds a complete run."""


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
    """The folder a job writes into. A complete run (``done``) is never touched here: with ``overwrite`` the new job
    writes into a hidden staging sibling (``.<name>.new``) that replaces the old folder only once it is complete
    (:func:`_swap_in`), so a failing rerun leaves the old results as they were. An incomplete folder is
    removed and redone."""
    if (run_dir / "done").exists():
        if not overwrite:
            raise RunExistsError(f"{run_dir} already holds a complete run; set output.overwrite=true to redo it")
        staging = run_dir.parent / f".{run_dir.name}.new"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        return staging
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    return run_dir


def _swap_in(staging: Path, run_dir: Path) -> None:
    """Replace the complete run ``run_dir`` by the complete run ``staging`` (two renames, then the old is removed;
    a crash in between leaves the old run in ``.<name>.old``, never half of either)."""
    old = run_dir.parent / f".{run_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(run_dir, old)
    os.replace(staging, run_dir)
    shutil.rmtree(old)


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n")


def _extra_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    """Loggers besides the always-on CSVLogger: ``wandb`` (offline unless WANDB_MODE says otherwise).

    A W&B failure is reported and never fails the job."""
    unknown = set(cfg.logger) - {"csv", "wandb"}
    if unknown:
        raise ValueError(f"logger: unknown entries {sorted(unknown)}; expected a list of csv, wandb")
    if "wandb" not in cfg.logger:
        return []
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        timeout = float(cfg.wandb.timeout_s)
        logger = WandbLogger(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity or None,
            group=cfg.wandb.group or cfg.output.sweep,
            name=run_dir_for(cfg).name,
            tags=[cfg.method, cfg.dataset, f"seed={cfg.seed}"],
            save_dir=str(run_dir),
            mode=os.environ["WANDB_MODE"],
            settings=wandb.Settings(init_timeout=timeout, finish_timeout=timeout, login_timeout=timeout),
        )
        logger.experiment.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
        return [logger]
    except Exception as exc:  # noqa: BLE001 - logging must never fail the job
        log.warning("W&B logger disabled for %s: %s", run_dir, exc)
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
    bundle = get_dataset(cfg.dataset).load(to_object(cfg.source))
    return MSADataModule(
        bundle,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        seed=cfg.seed,
        modalities=list(cfg.data.modalities) if cfg.data.modalities else None,
        manifests=list(cfg.data.manifests),
        allow_source_mismatch=cfg.data.allow_source_mismatch,
        train_label_noise=cfg.data.train_label_noise,
    )


def run_job(cfg: DictConfig) -> Path:
    """Run one resolved job config and return its run folder."""
    start = time.time()
    final_dir = run_dir_for(cfg)
    if (final_dir / "done").exists() and not cfg.output.overwrite:
        raise RunExistsError(f"{final_dir} already holds a complete run; set output.overwrite=true to redo it")
    if cfg.trainer.threads > 0:
        torch.set_num_threads(cfg.trainer.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(cfg.trainer.deterministic, warn_only=True)

    dm = build_datamodule(cfg)
    method = get_method(cfg.method)(dm.spec, to_object(cfg.model))
    method.configure_selection(cfg.selection.key)
    recorder = method.enable_epoch_records() if cfg.trainer.record_epochs else None
    mode = SELECTION_MODES[cfg.selection.key]
    first_epoch = method.first_selectable_epoch()
    if first_epoch >= cfg.trainer.max_epochs:
        raise ValueError(
            f"{cfg.method}: model selection starts at 0-based epoch {first_epoch} (e.g. gear.swap_epochs with "
            f"gear.select_after_swap=true) but trainer.max_epochs={cfg.trainer.max_epochs}; raise max_epochs or "
            "lower that start"
        )
    # Data and config are loaded and valid: only now is a folder created (or a complete one staged for replacing).
    run_dir = _prepare_dir(final_dir, cfg.output.overwrite)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg))
    best = BestState(mode, first_epoch)
    callbacks: list[Callback] = [best]
    if cfg.trainer.early_stop:
        callbacks.insert(
            0, EarlyStopping("val/select", patience=cfg.trainer.patience, min_delta=cfg.trainer.min_delta, mode=mode)
        )
    if cfg.trainer.progress_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    loggers = [CSVLogger(str(run_dir), name="logs", version=""), *_extra_loggers(cfg, run_dir)]
    trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        min_epochs=max(cfg.trainer.min_epochs, first_epoch + 1),
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        accumulate_grad_batches=method.cfg.optim.accumulate,
        limit_train_batches=cfg.trainer.limit_train_batches,
        callbacks=callbacks,
        logger=loggers,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.trainer.progress_bar,
        log_every_n_steps=10,
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*deterministic.*")
            trainer.fit(method, datamodule=dm)
            best.restore(method)
            trainer.test(method, datamodule=dm, verbose=False)
            mechanism = method.compute_mechanism_diagnostics(dm)
            _log_mechanism(trainer, mechanism)
    finally:
        if "wandb" in cfg.logger:
            _finish_wandb()

    rows = []
    for name in dm.test_set_names:
        out = method.test_outputs[name]
        ids = dm.ids_of(name)[out["index"]]
        frame = {"set": name, "id": ids, "prediction": out["prediction"], "label": out["label"]}
        # Ground truth (METHODS.md §11.1): z_m, conflict_m, group; empty strings for real data.
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
    if run_dir != final_dir:
        _swap_in(run_dir, final_dir)
        run_dir = final_dir
    return run_dir
