"""Just Train Twice (``jtt``; docs/algorithms.md#jtt), kind ``method``: reweighting that needs no bias labels.

Liu et al., "Just Train Twice: Improving Group Robustness without Training Group Information", ICML 2021
(reference code: anniesch/jtt). Stage 1: the baseline (LF-TF + L1, the same optimiser and accumulation) trained for
``epochs_stage1`` = T epochs; its error set E = the training samples with y != 0 whose predicted sign is wrong
(MMSA's Non0 rule: pred > 0 vs y > 0). Stage 2: the baseline retrained from scratch (this module's own LF-TF, built
before stage 1) on the training set with every sample of E repeated ``upweight`` = lambda_up times per epoch, which is
what the Lightning fit does after ``on_fit_start`` has run stage 1 and set the datamodule's repeats. T and
lambda_up are chosen on the IID validation split (the grid sweep ``benchmarks/sweeps/jtt_grid.yaml``); JTT's paper
selects on group-labelled validation data, which would make it an oracle.

Reported in ``result.json`` (``diagnostics``): |E|, and on synthetic data the precision and recall of E and the
AUROC of the stage-1 error flag against the true conflict flags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device

from datamodules.schema import FeatureSpec
from methods.baseline import Baseline, BaselineConfig
from methods.bias_id import conflict_flags, identification_record, precision_recall


@dataclass
class JTTConfig(BaselineConfig):
    """``epochs_stage1``: T (grid {1, 2, 5}); ``upweight``: lambda_up, the integer number of times each error-set
    sample appears per stage-2 epoch (grid {5, 20, 50})."""

    epochs_stage1: int = 2
    upweight: int = 20


def error_set(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Bool (N,): y != 0 and the predicted sign is wrong (pred > 0 vs y > 0, as MMSA's Non0 Acc-2)."""
    pred, label = np.asarray(pred), np.asarray(label)
    return (label != 0) & ((pred > 0) != (label > 0))


class JTT(Baseline):
    """Just Train Twice: a baseline for T epochs, then retrained with its error set upsampled lambda_up times.

    Stage 1 runs in ``on_fit_start`` (a separate baseline); stage 2 is the Lightning fit on the upsampled data."""

    config_class = JTTConfig

    def __init__(self, dims: FeatureSpec, cfg: JTTConfig) -> None:
        super().__init__(dims, cfg)
        if cfg.epochs_stage1 < 1:
            raise ValueError(f"epochs_stage1 must be >= 1, got {cfg.epochs_stage1}")
        if cfg.upweight < 1:
            raise ValueError(f"upweight must be an integer >= 1, got {cfg.upweight}")
        self.diagnostics: dict[str, Any] = {}

    def _train_stage1(self, dm: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Train the stage-1 baseline; return (its train predictions, labels, true conflict flags or None)."""
        stage1 = Baseline(self.spec, BaselineConfig(backbone=self.cfg.backbone, optim=self.cfg.optim)).to(self.device)
        optimizer = stage1.configure_optimizers()
        accumulate = max(1, int(self.cfg.optim.accumulate))
        stage1.train()
        loader = dm.train_dataloader()  # one loader: its generator moves on, so each epoch has its own order
        n_batches = len(loader)
        for _ in range(self.cfg.epochs_stage1):
            optimizer.zero_grad()
            for i, batch in enumerate(loader):
                batch = move_data_to_device(batch, self.device)
                loss = (stage1.model(batch) - batch.label).abs().mean() / accumulate
                loss.backward()
                if (i + 1) % accumulate == 0 or i + 1 == n_batches:
                    optimizer.step()
                    optimizer.zero_grad()
        stage1.eval()
        preds, labels, flags = [], [], []
        with torch.no_grad():
            for batch in dm.eval_dataloader("train"):
                batch = move_data_to_device(batch, self.device)
                preds.append(stage1.model(batch).double().cpu())
                labels.append(batch.label.double().cpu())
                if batch.z is not None:
                    flags.append(conflict_flags(batch.z, batch.label).cpu())
        conflict = torch.cat(flags).numpy() if flags else None
        return torch.cat(preds).numpy(), torch.cat(labels).numpy(), conflict

    def on_fit_start(self) -> None:
        super().on_fit_start()
        dm = self.trainer.datamodule
        with torch.random.fork_rng(devices=[]):  # stage 1 must not shift the RNG stream stage 2 starts from
            pred, label, conflict = self._train_stage1(dm)
        errors = error_set(pred, label)
        repeats = np.where(errors, self.cfg.upweight, 1).astype(np.int64)
        dm.set_train_repeats(repeats)
        self.diagnostics = {
            "epochs_stage1": self.cfg.epochs_stage1,
            "upweight": self.cfg.upweight,
            "error_set_size": int(errors.sum()),
            "train_size": int(errors.size),
            "stage1_train_non0_acc2": float(1.0 - errors.sum() / max(1, int((label != 0).sum()))),
        }
        if conflict is not None:
            self.diagnostics.update(precision_recall(errors, conflict))
            self.diagnostics["identification"] = identification_record(
                errors.astype(np.float64), conflict, self.cfg.epochs_stage1, "error"
            )

    def on_train_epoch_end(self) -> None:
        if self.current_epoch == 0 and self.diagnostics:  # stage 1's outcome, logged once (no logging in on_fit_start)
            ident = self.diagnostics.get("identification", {})
            values = {"jtt_error_set_size": float(self.diagnostics["error_set_size"])}
            if ident:
                values["jtt_error_auroc_conflict"] = ident["auroc"]
            self.log_diagnostics(values, on_step=False)

    def summary(self) -> dict[str, Any]:
        return dict(self.diagnostics)
