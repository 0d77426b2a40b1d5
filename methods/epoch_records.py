"""Per-epoch predictions of a run (docs/design.md#epochsnpz): what post-hoc selection reads.

After every validation epoch the method scores the IID valid split and every test set with the weights of that
epoch and hands the predictions here, with its extra heads (``predict_heads``): on valid always, on the test sets
only for a method whose choice on valid is rebuilt from them (``record_test_heads``: CLUE's ``fused`` and
``counterfactual``, from which its α can be re-made on any set). A run folder keeps them as one
compressed ``epochs.npz``:

* ``epochs``: int64 (E,), the 0-based epochs recorded, in order;
* per set ``S`` (``valid`` and every test set): ``S/label`` float32 (N,), ``S/prediction`` float32 (E, N) (the
  prediction the method scores, after its own choices on valid), and ``S/head/H`` float32 (E, N) per head.

Rows follow the set's order (the order of ``predictions.csv`` for a test set). float32 halves the size against
float64; metrics from it equal the run's own (float64) metrics at the 4 decimals ``result.json`` keeps, except
for a prediction within float32 rounding of 0 (tested on real runs, not guaranteed).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FILE_NAME = "epochs.npz"
VALID = "valid"


@dataclass
class SetRecord:
    """One set's records: labels (N,), predictions (E, N) and heads {name: (E, N)}."""

    label: np.ndarray
    prediction: np.ndarray
    heads: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class EpochRecords:
    """Every set's per-epoch predictions of one run (see the module docstring)."""

    epochs: np.ndarray
    sets: dict[str, SetRecord]

    def position(self, epoch: int) -> int:
        """Row of ``epoch`` in the (E, N) arrays; ValueError when it was not recorded."""
        where = np.flatnonzero(self.epochs == int(epoch))
        if where.size == 0:
            raise ValueError(f"epoch {epoch} was not recorded (recorded: {self.epochs.tolist()})")
        return int(where[0])


class EpochRecorder:
    """Collects predictions epoch by epoch in memory; :meth:`to_bytes` is the ``epochs.npz`` payload."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self._label: dict[str, np.ndarray] = {}
        self._prediction: dict[str, list[np.ndarray]] = {}
        self._heads: dict[str, dict[str, list[np.ndarray]]] = {}

    def add(self, epoch: int, name: str, label: np.ndarray, prediction: np.ndarray,
            heads: dict[str, np.ndarray] | None = None) -> None:
        """Record set ``name`` at ``epoch`` (a new epoch starts when ``epoch`` differs from the last one)."""
        if "/" in name:
            raise ValueError(f"set name {name!r} contains '/'")
        if not self.epochs or self.epochs[-1] != epoch:
            self.epochs.append(int(epoch))
        label = np.asarray(label, dtype=np.float32)
        known = self._label.setdefault(name, label)
        if known.shape != label.shape or not np.array_equal(known, label):
            raise ValueError(f"set {name!r}: labels differ from the first recorded epoch's")
        self._prediction.setdefault(name, []).append(np.asarray(prediction, dtype=np.float32))
        for head, values in (heads or {}).items():
            self._heads.setdefault(name, {}).setdefault(head, []).append(np.asarray(values, dtype=np.float32))
        if len(self._prediction[name]) != len(self.epochs):
            raise ValueError(f"set {name!r} has {len(self._prediction[name])} records for {len(self.epochs)} epochs")

    def to_bytes(self) -> bytes:
        """The compressed ``epochs.npz`` content."""
        arrays: dict[str, np.ndarray] = {"epochs": np.asarray(self.epochs, dtype=np.int64)}
        for name, label in self._label.items():
            arrays[f"{name}/label"] = label
            arrays[f"{name}/prediction"] = np.stack(self._prediction[name])
            for head, values in self._heads.get(name, {}).items():
                arrays[f"{name}/head/{head}"] = np.stack(values)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()


def load_epoch_records(path: str | Path) -> EpochRecords:
    """Read an ``epochs.npz``; ValueError naming the file when it is damaged or inconsistent."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: cannot read per-epoch records ({exc})") from exc
    if "epochs" not in arrays:
        raise ValueError(f"{path}: no 'epochs' array; not a per-epoch record file")
    epochs = arrays.pop("epochs")
    sets: dict[str, SetRecord] = {}
    for key in sorted(k for k in arrays if k.endswith("/label")):
        name = key[: -len("/label")]
        prediction = arrays.get(f"{name}/prediction")
        if prediction is None or prediction.shape != (epochs.size, arrays[key].size):
            raise ValueError(f"{path}: set {name!r} has no (epochs x samples) prediction array")
        heads = {k.split("/head/", 1)[1]: v for k, v in arrays.items() if k.startswith(f"{name}/head/")}
        sets[name] = SetRecord(label=arrays[key], prediction=prediction, heads=heads)
    return EpochRecords(epochs=epochs, sets=sets)
