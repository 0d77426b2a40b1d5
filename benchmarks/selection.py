"""Model selection as post-hoc functions of a run's stored predictions (docs/protocol.md#model-selection; DomainBed's
``model_selection.py``): a rule picks, per test set, an epoch (and, for a method that makes a choice on valid such as
CLUE's alpha, one of its candidates), and the set's metrics are recomputed from the predictions recorded then.

Rules (:data:`SELECTIONS`):

* ``iid_valid`` (default, honest): the epoch with the best IID-valid selection value, exactly as training chose it
  (same key, same direction, first of ties, only epochs from ``selection.first_epoch`` on), with the method's own
  choice on valid. Reproduces ``result.json`` (tested).
* ``oracle``: per test set, the epoch and candidate that score best on that set itself (Non0 Acc-2; ties: the
  earlier epoch, then the candidate order). Test-domain selection, an upper bound: its rows are kind ``oracle``.
* ``last``: the last epoch trained, with the method's own choice on valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from omegaconf import OmegaConf

from methods import METHODS
from methods.epoch_records import FILE_NAME, EpochRecords, load_epoch_records
from methods.metrics import SELECTION_MODES, msa_metrics

DEFAULT_SELECTION = "iid_valid"
ORACLE_METRIC = "Non0_acc_2"


# (set name, epoch position) -> {candidate name: predictions}; empty for a method without choices
CandidateFn = Callable[[str, int], dict[str | None, np.ndarray]]


@dataclass(frozen=True)
class Choice:
    """What a rule picked for one test set: the epoch and the candidate (None = the method's own prediction)."""

    epoch: int
    candidate: str | None = None


class SelectionMethod:
    """A selection rule: :meth:`choose` maps a run's records to a :class:`Choice` per test set. Add a rule by
    subclassing and registering an instance in :data:`SELECTIONS`."""

    name: ClassVar[str]
    kind: ClassVar[str | None] = None  # the leaderboard kind of the rows it produces (None: the run's own)

    def choose(self, result: dict[str, Any], records: EpochRecords, candidates: CandidateFn) -> dict[str, Choice]:
        raise NotImplementedError(f"{type(self).__name__} must implement choose()")



class IIDValid(SelectionMethod):
    """The epoch training selected on IID valid, recomputed from ``valid_history``."""

    name = "iid_valid"

    def choose(self, result: dict[str, Any], records: EpochRecords, candidates: CandidateFn) -> dict[str, Choice]:
        epoch = iid_valid_epoch(result)
        return {name: Choice(epoch) for name in result["test_sets"]}


class Oracle(SelectionMethod):
    """Per test set, the epoch (and candidate) with the best Non0 Acc-2 on that set."""

    name = "oracle"
    kind = "oracle"

    def choose(self, result: dict[str, Any], records: EpochRecords, candidates: CandidateFn) -> dict[str, Choice]:
        out: dict[str, Choice] = {}
        for name in result["test_sets"]:
            record = records.sets[name]
            best: tuple[float, Choice] | None = None
            for position, epoch in enumerate(records.epochs.tolist()):
                options = candidates(name, position) or {None: record.prediction[position]}
                for candidate, pred in options.items():
                    score = msa_metrics(pred.astype(np.float64), record.label.astype(np.float64))[ORACLE_METRIC]
                    if math.isfinite(score) and (best is None or score > best[0]):
                        best = (score, Choice(int(epoch), candidate))
            out[name] = best[1] if best else Choice(int(records.epochs[-1]))
        return out


class Last(SelectionMethod):
    """The last epoch trained."""

    name = "last"

    def choose(self, result: dict[str, Any], records: EpochRecords, candidates: CandidateFn) -> dict[str, Choice]:
        return {name: Choice(int(records.epochs[-1])) for name in result["test_sets"]}


SELECTIONS: dict[str, SelectionMethod] = {rule.name: rule for rule in (IIDValid(), Oracle(), Last())}


def get_selection(name: str) -> SelectionMethod:
    """The rule named ``name``; ValueError listing the registered ones otherwise."""
    if name not in SELECTIONS:
        raise ValueError(f"unknown selection {name!r}; expected one of {', '.join(SELECTIONS)}")
    return SELECTIONS[name]


def iid_valid_epoch(result: dict[str, Any]) -> int:
    """The epoch `benchmarks.run.BestState` selected, from ``valid_history``: the first epoch (from
    ``selection.first_epoch``) whose ``select`` value, as logged (float32), is strictly better than every earlier
    one; NaN values never selected."""
    history = result.get("valid_history") or []
    selection = result.get("selection") or {}
    mode = SELECTION_MODES[selection.get("key", "mae")]
    first = int(selection.get("first_epoch", 0))
    best_value, best_epoch = None, None
    for entry in history:
        value = float(np.float32(entry["select"]))
        if int(entry["epoch"]) < first or math.isnan(value):
            continue
        if best_value is None or (value < best_value if mode == "min" else value > best_value):
            best_value, best_epoch = value, int(entry["epoch"])
    if best_epoch is None:
        raise ValueError("valid_history has no finite selection value from the first selectable epoch on")
    return best_epoch


def reselect(run_dir: Path, result: dict[str, Any], selection: str) -> dict[str, Any]:
    """``result`` with every test set's metrics recomputed under rule ``selection`` from the run's ``epochs.npz``.

    Adds ``selected_epochs`` ({set: epoch}), ``selected_candidates`` ({set: candidate or None}),
    ``selection_rule`` and ``_predictions`` ({set: float64 predictions}, for group metrics). ValueError when the run
    has no records (written before per-epoch records existed) or they do not cover its test sets."""
    rule = get_selection(selection)
    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        raise ValueError(f"{run_dir}: no {FILE_NAME} (run written before per-epoch records); cannot re-select")
    records = load_epoch_records(path)
    missing = [name for name in result["test_sets"] if name not in records.sets]
    if missing:
        raise ValueError(f"{path}: no records for test set(s) {missing}")
    method_cls = METHODS.get(result["method"])
    model_cfg = model_config(Path(run_dir))

    def candidates(name: str, position: int) -> dict[str | None, np.ndarray]:
        heads = {h: v[position] for h, v in records.sets[name].heads.items()}
        if method_cls is None or not heads:
            return {}
        return dict(method_cls.choice_candidates(heads, model_cfg))

    choices = rule.choose(result, records, candidates)
    out = dict(result)
    out["metrics"], out["_predictions"] = {}, {}
    for name, choice in choices.items():
        record = records.sets[name]
        position = records.position(choice.epoch)
        pred = record.prediction[position] if choice.candidate is None else candidates(name, position)[choice.candidate]
        pred = np.asarray(pred, dtype=np.float64)
        out["metrics"][name] = msa_metrics(pred, record.label.astype(np.float64), decimals=4)
        out["_predictions"][name] = pred
    out["selected_epochs"] = {name: c.epoch for name, c in choices.items()}
    out["selected_candidates"] = {name: c.candidate for name, c in choices.items()}
    out["selection_rule"] = selection
    if rule.kind:
        out["kind"] = rule.kind
    return out


def model_config(run_dir: Path) -> dict[str, Any]:
    """The ``model`` section of a run folder's ``config.yaml`` as a plain dict ({} when the file is absent)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return {}
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return dict(cfg.get("model") or {}) if isinstance(cfg, dict) else {}
