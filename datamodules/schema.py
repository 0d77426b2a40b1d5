"""The one data contract of the suite.

`SplitData` is one split as numpy arrays (what loaders produce), `Batch` is a mini-batch as
tensors (what methods consume), and `FeatureSpec` describes the modalities, dims and maximum
lengths *read from the data* (never from constants). Every modality is optional: a dataset may
provide any non-empty subset of {text, audio, vision}, and sequences may have length 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor

MODALITIES: tuple[str, ...] = ("text", "audio", "vision")
LABEL_MIN, LABEL_MAX = -3.0, 3.0

TextInput = Literal["features", "ids"]


class DataError(ValueError):
    """Invalid data; the message names the file, split and key that are wrong."""


@dataclass
class SplitData:
    """One split (train / valid / a test set) as aligned numpy arrays.

    Shapes: ``text`` float32 (N, L_t, d_t); ``text_ids`` int64 (N, 3, L_t) (token ids, attention
    mask, segment ids); ``audio`` / ``vision`` float32 (N, T, d); ``*_lengths`` int64 (N,) in
    [1, T]; ``label`` float32 (N,) in [-3, 3]; ``ids`` str (N,) unique; ``raw_text`` str (N,),
    used by the OOD split builder only and never a model input.
    """

    ids: np.ndarray
    label: np.ndarray
    text: np.ndarray | None = None
    text_ids: np.ndarray | None = None
    text_lengths: np.ndarray | None = None
    audio: np.ndarray | None = None
    audio_lengths: np.ndarray | None = None
    vision: np.ndarray | None = None
    vision_lengths: np.ndarray | None = None
    raw_text: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present, in canonical order (text counts if features or ids exist)."""
        present = []
        if self.text is not None or self.text_ids is not None:
            present.append("text")
        if self.audio is not None:
            present.append("audio")
        if self.vision is not None:
            present.append("vision")
        return tuple(present)

    def subset(self, index: np.ndarray) -> SplitData:
        """Rows ``index`` of every array (a copy)."""
        index = np.asarray(index, dtype=np.int64)
        return SplitData(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                for f in dataclasses.fields(self)
            }
        )

    def drop_modalities(self, keep: tuple[str, ...] | list[str]) -> SplitData:
        """A view with only the modalities in ``keep`` (others set to None)."""
        unknown = set(keep) - set(MODALITIES)
        if unknown:
            raise DataError(f"unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        missing = set(keep) - set(self.modalities)
        if missing:
            raise DataError(
                f"modalities {sorted(missing)} were requested but the data provides only {self.modalities}"
            )
        drop: dict[str, None] = {}
        if "text" not in keep:
            drop.update(text=None, text_ids=None, text_lengths=None)
        if "audio" not in keep:
            drop.update(audio=None, audio_lengths=None)
        if "vision" not in keep:
            drop.update(vision=None, vision_lengths=None)
        return dataclasses.replace(self, **drop)

    def validate(self, where: str) -> None:
        """Check shapes, dtypes, lengths, labels and ids; ``where`` names file and split in errors."""
        n = len(self)
        if self.label.ndim != 1:
            raise DataError(f"{where}: key 'label' must be 1-D (N,), got shape {self.label.shape}")
        if not self.modalities:
            raise DataError(f"{where}: no modality present; expected at least one of {MODALITIES}")
        if self.ids.shape != (n,):
            raise DataError(f"{where}: key 'ids' has shape {self.ids.shape}, expected ({n},)")
        if len(set(self.ids.tolist())) != n:
            raise DataError(f"{where}: key 'ids' has duplicates; ids must be unique per split")
        if not np.all(np.isfinite(self.label)):
            raise DataError(f"{where}: key 'label' has {int((~np.isfinite(self.label)).sum())} non-finite values")
        bad = (self.label < LABEL_MIN) | (self.label > LABEL_MAX)
        if bad.any():
            raise DataError(
                f"{where}: key 'label' has {int(bad.sum())} values outside [{LABEL_MIN}, {LABEL_MAX}] "
                f"(min {self.label.min():.3f}, max {self.label.max():.3f})"
            )
        if self.raw_text is not None and self.raw_text.shape != (n,):
            raise DataError(f"{where}: key 'raw_text' has shape {self.raw_text.shape}, expected ({n},)")
        for name in ("text", "audio", "vision"):
            arr = getattr(self, name)
            if arr is None:
                continue
            if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1] < 1:
                raise DataError(f"{where}: key '{name}' has shape {arr.shape}, expected ({n}, T>=1, d)")
            if not np.all(np.isfinite(arr)):
                raise DataError(f"{where}: key '{name}' has {int((~np.isfinite(arr)).sum())} non-finite values")
            lengths = getattr(self, f"{name}_lengths")
            if lengths is not None:
                _check_lengths(lengths, n, arr.shape[1], f"{where}: key '{name}_lengths'")
        if self.text_ids is not None:
            if self.text_ids.ndim != 3 or self.text_ids.shape[:2] != (n, 3):
                raise DataError(f"{where}: key 'text_ids' has shape {self.text_ids.shape}, expected ({n}, 3, L_t)")
            if self.text is not None and self.text_ids.shape[2] != self.text.shape[1]:
                raise DataError(
                    f"{where}: key 'text_ids' length {self.text_ids.shape[2]} differs from 'text' length "
                    f"{self.text.shape[1]}"
                )


def _check_lengths(lengths: np.ndarray, n: int, t_max: int, what: str) -> None:
    if lengths.shape != (n,):
        raise DataError(f"{what} has shape {lengths.shape}, expected ({n},)")
    if lengths.min(initial=1) < 1 or lengths.max(initial=1) > t_max:
        raise DataError(
            f"{what} must lie in [1, {t_max}] (the sequence length), got min {lengths.min()} max {lengths.max()}"
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Modalities, feature dims and maximum lengths of a dataset, read from its train split.

    ``text_input`` is ``features`` when precomputed token features exist, else ``ids`` (token ids
    for a fine-tuned encoder, whose width comes from the encoder's config, not from here).
    """

    modalities: tuple[str, ...]
    dims: dict[str, int] = field(default_factory=dict)
    max_lengths: dict[str, int] = field(default_factory=dict)
    text_input: TextInput | None = None

    @classmethod
    def from_split(cls, split: SplitData) -> FeatureSpec:
        """Read the spec off a split's arrays."""
        dims: dict[str, int] = {}
        lengths: dict[str, int] = {}
        text_input: TextInput | None = None
        if split.text is not None:
            dims["text"], lengths["text"], text_input = int(split.text.shape[2]), int(split.text.shape[1]), "features"
        elif split.text_ids is not None:
            lengths["text"], text_input = int(split.text_ids.shape[2]), "ids"
        for name in ("audio", "vision"):
            arr = getattr(split, name)
            if arr is not None:
                dims[name], lengths[name] = int(arr.shape[2]), int(arr.shape[1])
        return cls(modalities=split.modalities, dims=dims, max_lengths=lengths, text_input=text_input)


@dataclass
class Batch:
    """A mini-batch. Absent modalities are None; lengths count valid steps (the rest is padding)."""

    label: Tensor
    index: Tensor
    text: Tensor | None = None
    text_ids: Tensor | None = None
    text_lengths: Tensor | None = None
    audio: Tensor | None = None
    audio_lengths: Tensor | None = None
    vision: Tensor | None = None
    vision_lengths: Tensor | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        present = []
        if self.text is not None or self.text_ids is not None:
            present.append("text")
        if self.audio is not None:
            present.append("audio")
        if self.vision is not None:
            present.append("vision")
        return tuple(present)

    def text_mask(self) -> Tensor:
        """Bool (B, L_t) of valid text positions: the ids' attention mask, else text lengths, else all."""
        if self.text_ids is not None:
            return self.text_ids[:, 1] > 0
        if self.text is None:
            raise ValueError("batch has no text")
        steps = torch.arange(self.text.shape[1], device=self.text.device)
        if self.text_lengths is None:
            return torch.ones(self.text.shape[:2], dtype=torch.bool, device=self.text.device)
        return steps[None, :] < self.text_lengths[:, None]

    @classmethod
    def from_split(cls, split: SplitData, index: np.ndarray | Tensor) -> Batch:
        """Gather rows ``index`` of a split into tensors (used by tests and tools; the datamodule
        gathers from tensors it already holds)."""
        idx = np.asarray(index, dtype=np.int64)

        def take(arr: np.ndarray | None, dtype: torch.dtype) -> Tensor | None:
            return None if arr is None else torch.as_tensor(np.ascontiguousarray(arr[idx]), dtype=dtype)

        return cls(
            label=take(split.label, torch.float32),
            index=torch.as_tensor(idx),
            text=take(split.text, torch.float32),
            text_ids=take(split.text_ids, torch.long),
            text_lengths=take(split.text_lengths, torch.long),
            audio=take(split.audio, torch.float32),
            audio_lengths=take(split.audio_lengths, torch.long),
            vision=take(split.vision, torch.float32),
            vision_lengths=take(split.vision_lengths, torch.long),
        )


@dataclass
class DatasetBundle:
    """Everything a datamodule needs: the standard splits, any extra named test sets with ground
    truth (the synthetic generator's OOD sets), and the source file's SHA-256 (for manifests)."""

    name: str
    train: SplitData
    valid: SplitData
    test: SplitData
    extra_tests: dict[str, SplitData] = field(default_factory=dict)
    source_sha256: str | None = None

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_split(self.train)

    def validate(self, where: str) -> None:
        for split_name in ("train", "valid", "test"):
            getattr(self, split_name).validate(f"{where} [split {split_name}]")
        for name, split in self.extra_tests.items():
            split.validate(f"{where} [test set {name}]")
        spec = self.spec
        for split_name, split in [("valid", self.valid), ("test", self.test), *self.extra_tests.items()]:
            other = FeatureSpec.from_split(split)
            if other.modalities != spec.modalities or other.dims != spec.dims:
                raise DataError(
                    f"{where} [split {split_name}]: modalities/dims {other.modalities} {other.dims} differ from "
                    f"train's {spec.modalities} {spec.dims}"
                )
