"""MSAMethod: what every method shares, written once.

A method subclasses `MSAMethod`, sets ``config_class`` (its hyper-parameter dataclass), builds its
modules in ``__init__(dims, cfg)``, implements ``training_step`` (its loss, with diagnostics
logged) and ``predict(batch) -> (B,)``. Optionally ``predict_heads`` returns extra heads whose
valid MAE is logged every epoch. This base class owns the optimiser (parameter groups with
per-group learning rates and weight decays), validation metrics on the IID valid split (the
only split used for selection), evaluation on every named test set, and prediction capture.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, get_args

import lightning as L
import numpy as np
import torch
from torch import Tensor

from datamodules.fields import hash_neutral
from datamodules.schema import Batch, FeatureSpec
from methods.backbone import OPTIM_GROUPS, BackboneConfig
from methods.distributed import gather_rows
from methods.epoch_records import VALID, EpochRecorder
from methods.metrics import SELECTION_MODES, msa_metrics, selection_value

AdamImpl = Literal["fused", "foreach", "for_loop"]
ADAM_IMPLS: tuple[str, ...] = get_args(AdamImpl)


@dataclass
class OptimConfig:
    """Adam with one parameter group per kind of parameter (docs/algorithms.md#the-shared-backbone-lf-tf)."""

    lr: dict[str, float] = field(
        default_factory=lambda: {
            "text_encoder": 5e-5,
            "audio_lstm": 5e-3,
            "vision_lstm": 1e-4,
            "modality": 1e-3,
            "head": 1e-3,
        }
    )
    weight_decay: dict[str, float] = field(
        default_factory=lambda: {
            "text_encoder": 1e-3,
            "audio_lstm": 0.0,
            "vision_lstm": 0.0,
            "modality": 0.01,
            "head": 0.0,
        }
    )
    accumulate: int = 2
    # Adam's kernel: ``foreach`` (multi-tensor, default; bit-identical to ``for_loop``, 1.5x faster), ``for_loop``
    # (per-parameter, torch's CPU default), ``fused`` (one kernel per step, 4x faster; the same update up to float
    # rounding, but with the padded LSTMs it shifted CLUE's synthetic ood_audio by -3.5 points over 8 CI seeds and
    # the CI check alarmed, so it is opt-in).
    impl: AdamImpl = hash_neutral("foreach")


@dataclass
class MethodConfig:
    """Fields every method has; a method's own dataclass subclasses this and adds its knobs."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or ".norm" in name


class MSAMethod(L.LightningModule):
    """Base LightningModule of every method; see the module docstring for the contract."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig
    # Leaderboard kind of the method's row (docs/protocol.md#reference-and-oracle-rows): ``method`` (ranked),
    # ``reference`` (what is possible, e.g. a ceiling) or ``oracle`` (uses information a real dataset does not have).
    kind: ClassVar[str] = "method"
    # True for rows that train on the synthetic generator's ground truth (oracle rows): refused on real data.
    needs_ground_truth: ClassVar[bool] = False
    # The registered row with the same encoders and optimiser but no debiasing, against which the method's own
    # contribution is read (`msabench compare`): LF-TF methods ``baseline``; MMCI ``baseline_seq``.
    matched_baseline: ClassVar[str] = "baseline"
    # Whether per-epoch records keep ``predict_heads`` on the test sets too (valid's are always kept): only for a
    # method whose choice on valid is rebuilt from heads (`choice_candidates`, CLUE); for the others it would
    # cost a second forward pass per test batch and nothing reads it.
    record_test_heads: ClassVar[bool] = False

    def __init__(self, dims: FeatureSpec, cfg: MethodConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.spec = dims
        self.cfg = cfg
        self.selection_key = "mae"
        self.train_label_mean = 0.0
        self.test_set_names: list[str] = []
        self.valid_history: list[dict[str, Any]] = []
        self.test_metrics: dict[str, dict[str, float]] = {}
        self.test_outputs: dict[str, dict[str, np.ndarray]] = {}
        self._valid_buffer: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []
        self._test_buffer: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}
        self.recorder: EpochRecorder | None = None

    def enable_epoch_records(self) -> EpochRecorder:
        """Record, after every validation epoch, the predictions on valid and on every test set of the
        datamodule (`methods.epoch_records`). Returns the recorder the run folder is written from."""
        self.recorder = EpochRecorder()
        return self.recorder

    def first_selectable_epoch(self) -> int:
        """The first 0-based epoch model selection may pick: 0, unless a method's debiasing term only starts later
        (GEAR's swap), so that the reported model is the method with its term active."""
        return 0

    @classmethod
    def delayed_term_active(cls, model_cfg: dict[str, Any], epoch: int) -> bool | None:
        """Whether the method's debiasing term that starts late (GEAR's swap) is on at 0-based ``epoch`` under the
        run's model config; None for methods without such a term. The leaderboard reports it at the selected
        epoch."""
        return None

    @classmethod
    def choice_candidates(cls, heads: dict[str, np.ndarray], model_cfg: dict[str, Any]) -> dict[str, np.ndarray]:
        """The predictions among which the method makes its own choice on valid (CLUE: one per alpha), rebuilt from
        recorded heads so that post-hoc selection can make that choice on another set. None by default."""
        return {}

    def predict(self, batch: Batch) -> Tensor:
        """The method's sentiment score per sample, (B,), as used for evaluation."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch)")

    def summary(self) -> dict[str, Any]:
        """Method-specific diagnostics of the whole run, written to result.json under ``diagnostics``."""
        return {}

    def mechanism_diagnostics(self, dm: Any) -> dict[str, Any]:
        """What the method's debiasing mechanism does at the current weights, measured on the sets of the datamodule
        ``dm`` (``eval_batches``; e.g. MMCI's attention per modality, GEAR's h_b-shuffle probe). Called through
        `compute_mechanism_diagnostics`, which sets eval mode and no-grad and protects the random generators; the
        run writes the result to result.json under ``diagnostics.mechanism``. None by default."""
        return {}

    def compute_mechanism_diagnostics(self, dm: Any) -> dict[str, Any]:
        """`mechanism_diagnostics` in eval mode, without gradients, inside a fork of the random generators: nothing
        it draws reaches the run's random stream, so results do not depend on whether it ran."""
        was_training = self.training
        self.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                return self.mechanism_diagnostics(dm)
        finally:
            self.train(was_training)

    def eval_batches(self, dm: Any, name: str) -> Iterator[Batch]:
        """Sequential batches of a named set of ``dm`` ('train', 'valid' or a test set) on the method's device,
        drawn without a DataLoader (no random state is touched)."""
        for batch in dm.iter_eval_batches(name):
            yield self.transfer_batch_to_device(batch, self.device, 0)

    def predict_heads(self, batch: Batch) -> dict[str, Tensor]:
        """Extra heads to monitor on valid (name -> (B,) predictions); none by default."""
        return {}

    def select_on_valid(
        self, pred: np.ndarray, label: np.ndarray, heads: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, float]]:
        """Hook for a choice made on the IID valid split together with the epoch (CLUE's alpha).

        Gets this epoch's valid predictions, labels and ``predict_heads`` outputs; returns the
        prediction to score (and select the epoch on) plus extra scalars logged as ``val/<key>``
        and kept in ``valid_history``. A method storing its choice in a buffer has it restored with
        the selected epoch's weights. Default: ``pred`` unchanged, nothing extra."""
        return pred, {}

    def configure_selection(self, key: str) -> None:
        """Set the selection key (``mae`` or ``acc2_mean``) read by validation logging."""
        if key not in SELECTION_MODES:
            raise ValueError(f"selection.key must be one of {sorted(SELECTION_MODES)}, got {key!r}")
        self.selection_key = key

    def on_fit_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "train_label_mean"):
            self.train_label_mean = float(dm.train_label_mean)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
        tagged = {name: module.optim_group for name, module in self.named_modules() if hasattr(module, "optim_group")}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            owner = max((m for m in tagged if name.startswith(m + ".") or m == ""), key=len, default=None)
            group = tagged[owner] if owner is not None else "head"
            decay = not (group == "text_encoder" and _no_decay(name))
            groups.setdefault((group, decay), []).append(param)
        lr, wd = self.cfg.optim.lr, self.cfg.optim.weight_decay
        for key in OPTIM_GROUPS:
            if key not in lr or key not in wd:
                raise ValueError(f"optim.lr and optim.weight_decay need an entry for group {key!r}")
        param_groups = [
            {"params": params, "lr": lr[group], "weight_decay": wd[group] if decay else 0.0, "name": group}
            for (group, decay), params in groups.items()
        ]
        impl = self.cfg.optim.impl
        if impl not in ADAM_IMPLS:
            raise ValueError(f"optim.impl must be one of {ADAM_IMPLS}, got {impl!r}")
        return torch.optim.Adam(param_groups, fused=impl == "fused" or None, foreach=impl == "foreach")

    def log_diagnostics(self, values: dict[str, Tensor | float], *, prefix: str = "train/", **kwargs: Any) -> None:
        """Log a dict of scalars (detached) under ``prefix``; per step in training, per epoch otherwise."""
        on_step = kwargs.pop("on_step", self.training)
        for key, value in values.items():
            value = value.detach() if isinstance(value, Tensor) else value
            self.log(prefix + key, value, on_step=on_step, on_epoch=not on_step, batch_size=kwargs.get("batch_size"))

    def on_validation_epoch_start(self) -> None:
        self._valid_buffer = []

    def predict_with_heads(self, batch: Batch, *, heads: bool = True) -> tuple[Tensor, dict[str, Tensor]]:
        """``predict(batch)`` and, with ``heads``, ``predict_heads(batch)``: what evaluation scores and records. A
        method whose prediction and heads come from one forward pass overrides this to run that pass once (MMCI);
        the values must equal those of the two calls."""
        extra = self.predict_heads(batch) if heads else {}
        return self.predict(batch), extra

    def buffer_valid(self, batch: Batch, pred: Tensor, heads: dict[str, Tensor]) -> None:
        """Keep one validation batch's prediction, heads, labels and dataset indices for the epoch's scoring."""
        cpu_heads = {k: v.detach().float().cpu() for k, v in heads.items()}
        self._valid_buffer.append((pred.detach().float().cpu(), batch.label.cpu(), cpu_heads, batch.index.cpu()))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        pred, heads = self.predict_with_heads(batch)
        self.buffer_valid(batch, pred, heads)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._valid_buffer:
            return
        columns = {
            "pred": torch.cat([p for p, _, _, _ in self._valid_buffer]).double().numpy(),
            "label": torch.cat([y for _, y, _, _ in self._valid_buffer]).double().numpy(),
        }
        for head in self._valid_buffer[0][2]:
            columns[f"head:{head}"] = torch.cat([h[head] for _, _, h, _ in self._valid_buffer]).double().numpy()
        index = torch.cat([i for _, _, _, i in self._valid_buffer]).numpy()
        # Under DDP each process holds a shard: select and score on the whole validation set (each row once).
        _, columns = gather_rows(self.trainer, index, columns)
        pred, label = columns.pop("pred"), columns.pop("label")
        heads = {key[len("head:") :]: value for key, value in columns.items()}
        pred, extra = self.select_on_valid(pred, label, heads)
        metrics = msa_metrics(pred, label, decimals=None)
        logged = {
            "val/MAE": metrics["MAE"],
            "val/Has0_acc_2": metrics["Has0_acc_2"],
            "val/Non0_acc_2": metrics["Non0_acc_2"],
            "val/acc2_mean": selection_value(metrics, "acc2_mean"),
            "val/Corr": metrics["Corr"],
            "val/select": selection_value(metrics, self.selection_key),
        }
        for head, head_pred in heads.items():
            logged[f"val/{head}_MAE"] = float(np.mean(np.abs(head_pred - label)))
        logged.update({f"val/{key}": float(value) for key, value in extra.items()})
        self.log_dict(logged, on_step=False, on_epoch=True)
        self.valid_history.append({"epoch": int(self.current_epoch), **{k[4:]: v for k, v in logged.items()}})
        self._valid_buffer = []
        if self.recorder is not None:
            self._record_epoch(pred, label, heads)

    @torch.no_grad()
    def _record_epoch(self, pred: np.ndarray, label: np.ndarray, heads: dict[str, np.ndarray]) -> None:
        """This epoch's valid predictions (after the method's choice) and every test set's, into the recorder."""
        epoch = int(self.current_epoch)
        self.recorder.add(epoch, VALID, label, pred, heads)
        dm = self.trainer.datamodule
        was_training = self.training
        self.eval()
        for name in dm.test_set_names:
            preds, labels, set_heads = [], [], []
            for batch in dm.iter_eval_batches(name):
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                pred, heads = self.predict_with_heads(batch, heads=self.record_test_heads)
                preds.append(pred.detach().float().cpu())
                labels.append(batch.label.cpu())
                if self.record_test_heads:
                    set_heads.append({k: v.detach().float().cpu() for k, v in heads.items()})
            self.recorder.add(
                epoch, name, torch.cat(labels).numpy(), torch.cat(preds).numpy(),
                {h: torch.cat([part[h] for part in set_heads]).numpy() for h in set_heads[0]} if set_heads else {},
            )
        self.train(was_training)

    def on_test_epoch_start(self) -> None:
        self._test_buffer = {}
        dm = getattr(self.trainer, "datamodule", None)
        self.test_set_names = list(getattr(dm, "test_set_names", []))

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        entry = (batch.index.cpu(), self.predict(batch).detach().double().cpu(), batch.label.double().cpu())
        self._test_buffer.setdefault(dataloader_idx, []).append(entry)

    def on_test_epoch_end(self) -> None:
        for idx, parts in sorted(self._test_buffer.items()):
            name = self.test_set_names[idx] if idx < len(self.test_set_names) else f"set{idx}"
            local = {"pred": torch.cat([p for _, p, _ in parts]), "label": torch.cat([y for _, _, y in parts])}
            local = {key: value.numpy() for key, value in local.items()}
            index, columns = gather_rows(self.trainer, torch.cat([i for i, _, _ in parts]).numpy(), local)
            pred, label = columns["pred"], columns["label"]
            self.test_outputs[name] = {"index": index, "prediction": pred, "label": label}
            self.test_metrics[name] = msa_metrics(pred, label, decimals=4)
        self._test_buffer = {}

    def hparams_dict(self) -> dict[str, Any]:
        """The method's hyper-parameters as a plain dict (for logging)."""
        return dataclasses.asdict(self.cfg)
