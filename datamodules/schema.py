"""The one data contract of the suite.

`SplitData` is one split as numpy arrays (what loaders produce), `Batch` is a mini-batch as
tensors (what methods consume), and `FeatureSpec` describes the modalities, dims and maximum
lengths *read from the data* (never from constants). Every modality is optional: a dataset may
provide any non-empty subset of {text, audio, vision}, and sequences may have length 1.

Ground truth (docs/design.md#ground-truth): a dataset that knows its shortcuts (the synthetic generator) records
``z`` per sample, the shortcut sign of each modality in the fixed order text, audio, vision (0 where
the modality carries no shortcut). :func:`label_sign`, :func:`conflict_flags` and :func:`group_names_of`
derive the bias-conflict flags and the group (e.g. ``+|t+a-v+``) from labels and
``z``, vectorised; :func:`ground_truth_columns` renders them as the ``predictions.csv`` columns
:data:`GROUND_TRUTH_COLUMNS`. Real datasets have no ``z`` (None) and no groups.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

Modality = Literal["text", "audio", "vision"]
MODALITIES: tuple[str, ...] = get_args(Modality)
LABEL_MIN, LABEL_MAX = -3.0, 3.0
# Ground-truth columns of predictions.csv, after set,id,prediction,label (docs/design.md#ground-truth).
GROUND_TRUTH_COLUMNS: tuple[str, ...] = (
    *(f"z_{m}" for m in MODALITIES),
    *(f"conflict_{m}" for m in MODALITIES),
    "group",
)

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

    ``z`` (optional, ground truth): int8 (N, 3), columns in the fixed order text, audio, vision
    whatever modalities are present; z_m in {-1, +1} is the sign of the shortcut that modality m
    shows for the sample, 0 where m carries no shortcut. It describes the data, not the model input:
    it keeps all three columns when modalities are dropped. Only the synthetic generator records it;
    real datasets leave it None.
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
    z: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def groups(self) -> np.ndarray | None:
        """Group name of every sample (:func:`group_names_of`), or None without ground truth."""
        return None if self.z is None else group_names_of(self.label, self.z)

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
        """A view with only the modalities in ``keep`` (others set to None); ``z`` keeps all three columns."""
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
        if self.z is not None:
            if self.z.shape != (n, len(MODALITIES)):
                raise DataError(f"{where}: key 'z' has shape {self.z.shape}, expected ({n}, {len(MODALITIES)})")
            bad_z = ~np.isin(self.z, (-1, 0, 1))
            if bad_z.any():
                raise DataError(f"{where}: key 'z' has {int(bad_z.sum())} values outside {{-1, 0, 1}}")
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


def label_sign(label: np.ndarray) -> np.ndarray:
    """sign(y) as int8 (N,): +1 for y >= 0, -1 otherwise (the sign of a group)."""
    return np.where(np.asarray(label) >= 0, 1, -1).astype(np.int8)


def conflict_flags(label: np.ndarray, z: np.ndarray) -> np.ndarray:
    """int8 (N, 3): 1 where modality m carries a shortcut (z_m != 0) whose sign differs from sign(y), else 0."""
    z = np.asarray(z)
    return ((z != 0) & (z != label_sign(label)[:, None])).astype(np.int8)


def group_names_of(label: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Group name per sample (str (N,)): ``+`` if y >= 0 else ``-``, then ``|``, then for every modality with
    z_m != 0, in text/audio/vision order, its initial and the sign of z_m, e.g. ``+|t+a-v+`` (``+|`` when no
    modality carries a shortcut)."""
    label, z = np.asarray(label), np.asarray(z)
    if z.ndim != 2 or z.shape != (label.shape[0], len(MODALITIES)):
        raise ValueError(f"z must have shape ({label.shape[0]}, {len(MODALITIES)}), got {z.shape}")
    names = np.where(label >= 0, "+|", "-|").astype(object)
    for k, m in enumerate(MODALITIES):
        part = np.where(z[:, k] > 0, f"{m[0]}+", f"{m[0]}-")
        names = names + np.where(z[:, k] != 0, part, "").astype(object)
    return names.astype(str)


def group_index(groups: np.ndarray, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """int64 (N,): the position of every sample's group in ``names`` (sorted, holding every group of ``groups``)."""
    groups = np.asarray(groups, dtype=str)
    lookup = {name: i for i, name in enumerate(names)}
    missing = sorted(set(groups.tolist()) - set(lookup))
    if missing:
        raise ValueError(f"groups {missing[:5]} are not among the group names {list(names)}")
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    unique, inverse = np.unique(groups, return_inverse=True)
    return np.array([lookup[u] for u in unique.tolist()], dtype=np.int64)[inverse.reshape(-1)]


def sorted_group_names(splits: Iterable[SplitData]) -> tuple[str, ...]:
    """Every group name occurring in any of ``splits`` (those with ``z``), sorted; empty without ground truth."""
    names: set[str] = set()
    for split in splits:
        if split.z is not None:
            names.update(split.groups.tolist())
    return tuple(sorted(names))


def ground_truth_columns(label: np.ndarray, z: np.ndarray | None) -> dict[str, np.ndarray]:
    """The :data:`GROUND_TRUTH_COLUMNS` of ``predictions.csv`` as str arrays (N,): ``z_m`` as -1 / 0 / 1,
    ``conflict_m`` as 0 / 1 and empty where z_m = 0 (no shortcut), ``group``; all empty strings when ``z`` is
    None (real data)."""
    n = int(np.asarray(label).shape[0])
    if z is None:
        return {col: np.full(n, "", dtype=object) for col in GROUND_TRUTH_COLUMNS}
    z = np.asarray(z)
    flags = conflict_flags(label, z)
    out: dict[str, np.ndarray] = {}
    for k, m in enumerate(MODALITIES):
        out[f"z_{m}"] = z[:, k].astype(np.int64).astype(str).astype(object)
    for k, m in enumerate(MODALITIES):
        out[f"conflict_{m}"] = np.where(z[:, k] != 0, flags[:, k].astype(str), "").astype(object)
    out["group"] = group_names_of(label, z).astype(object)
    return out


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
    """A mini-batch. Absent modalities are None; lengths count valid steps (the rest is padding).

    Ground truth, only where the data has it (the synthetic generator; None for real data): ``z`` float32
    (B, 3), the shortcut sign per modality in text/audio/vision order (0 = no shortcut), and ``group`` long
    (B,), the index of each sample's group in the datamodule's ``group_names``. They
    are for oracle rows and diagnostics (Group DRO, oracle reweighting, bias-identification AUROC), never a
    model input.
    """

    label: Tensor
    index: Tensor
    text: Tensor | None = None
    text_ids: Tensor | None = None
    text_lengths: Tensor | None = None
    audio: Tensor | None = None
    audio_lengths: Tensor | None = None
    vision: Tensor | None = None
    vision_lengths: Tensor | None = None
    z: Tensor | None = None
    group: Tensor | None = None

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
    def from_split(
        cls, split: SplitData, index: np.ndarray | Tensor, group_names: tuple[str, ...] | None = None
    ) -> Batch:
        """Gather rows ``index`` of a split into tensors (used by tests and tools; the datamodule
        gathers from tensors it already holds). ``group`` indexes ``group_names`` (default: the sorted
        groups of this split alone; pass the datamodule's to agree with its batches)."""
        idx = np.asarray(index, dtype=np.int64)
        group = None
        if split.z is not None:
            groups = split.groups
            names = tuple(group_names) if group_names is not None else tuple(sorted(set(groups.tolist())))
            group = torch.as_tensor(group_index(groups[idx], names))

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
            z=take(split.z, torch.float32),
            group=group,
        )


@dataclass
class DatasetBundle:
    """Everything a datamodule needs: the standard splits, any extra named test sets with ground
    truth (the synthetic generator's OOD sets), and the source file's SHA-256 (for manifests).

    Ground truth is all or nothing: either every split (train, valid, test and every extra test set)
    records ``z`` (the synthetic generator) or none does (real data)."""

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
        named = [("train", self.train), ("valid", self.valid), ("test", self.test), *self.extra_tests.items()]
        with_z = [split_name for split_name, split in named if split.z is not None]
        if with_z and len(with_z) != len(named):
            without = [split_name for split_name, split in named if split.z is None]
            raise DataError(f"{where}: key 'z' is present in {with_z} but missing in {without}; all splits or none")
        spec = self.spec
        for split_name, split in [("valid", self.valid), ("test", self.test), *self.extra_tests.items()]:
            other = FeatureSpec.from_split(split)
            if other.modalities != spec.modalities or other.dims != spec.dims:
                raise DataError(
                    f"{where} [split {split_name}]: modalities/dims {other.modalities} {other.dims} differ from "
                    f"train's {spec.modalities} {spec.dims}"
                )
