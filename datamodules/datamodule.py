"""MSADataModule: train, IID valid and named test sets (IID ``test`` plus OOD sets) as Batches.

All tensors are held in memory and a batch is gathered by one index operation per array (no
per-sample Python collate loop). Shuffling uses a seeded ``torch.Generator``, so the batch order
of a run is a function of its seed. OOD test sets come from the dataset itself (the synthetic
generator's ground-truth sets) and from split manifests (id lists over the standard test split).

Where the data has ground truth (``SplitData.z``, the synthetic generator), every batch also carries
``z`` and ``group``, the index of the sample's group in :attr:`MSADataModule.group_names` (one sorted
tuple for all splits, so indices agree across splits); for real data both are None.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler, SubsetRandomSampler

from datamodules.manifest import OODManifest
from datamodules.schema import (
    Batch,
    DataError,
    DatasetBundle,
    FeatureSpec,
    SplitData,
    ground_truth_columns,
    group_index,
    sorted_group_names,
)

log = logging.getLogger(__name__)

_TENSOR_KEYS = {
    "label": torch.float32,
    "text": torch.float32,
    "text_ids": torch.long,
    "text_lengths": torch.long,
    "audio": torch.float32,
    "audio_lengths": torch.long,
    "vision": torch.float32,
    "vision_lengths": torch.long,
    "z": torch.float32,
}


class TensorSplit(Dataset):
    """A split as tensors; ``split[list_of_indices]`` returns a whole Batch.

    ``group``: int64 (N,) group index of every row (only with ground truth), gathered as ``Batch.group``."""

    def __init__(self, split: SplitData, group: np.ndarray | None = None) -> None:
        self.ids = split.ids
        self.tensors = {
            key: torch.as_tensor(np.ascontiguousarray(getattr(split, key)), dtype=dtype)
            for key, dtype in _TENSOR_KEYS.items()
            if getattr(split, key) is not None
        }
        if group is not None:
            self.tensors["group"] = torch.as_tensor(np.asarray(group, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, index: Sequence[int] | slice) -> Batch:
        """The rows ``index`` (a list of positions, or a slice) as one Batch. A slice, or a list of consecutive
        ascending positions (sequential evaluation), returns views of the stored tensors instead of copies."""
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError(f"slice step must be 1, got {step}")
            idx = torch.arange(start, stop)
            return Batch(index=idx, **{key: value[start:stop] for key, value in self.tensors.items()})
        idx = torch.as_tensor(index, dtype=torch.long)
        if idx.numel() and int(idx[-1]) - int(idx[0]) + 1 == idx.numel() and bool((idx.diff() == 1).all()):
            return self[int(idx[0]) : int(idx[-1]) + 1]
        return Batch(index=idx, **{key: value[idx] for key, value in self.tensors.items()})


def load_manifest(
    path: str | Path,
    test: SplitData,
    source_sha256: str | None,
    *,
    allow_mismatch: bool,
    source_config: object | None = None,
) -> tuple[str, np.ndarray]:
    """Read a split manifest (`OODManifest.load`) and return (set name, row indices into the test split).

    Unknown ids are errors; a ``source_sha256``, test-id hash or recorded dataset config (compared with
    ``source_config`` on the fields that change the data) differing from the loaded data's is an error unless
    ``allow_mismatch`` (then a warning, and every id must still resolve).
    """
    path = Path(path)
    manifest = OODManifest.load(path)

    def mismatch(msg: str) -> None:
        if not allow_mismatch:
            raise DataError(msg + " (set data.allow_source_mismatch=true to use it anyway)")
        log.warning(msg)

    want, have = manifest.source_sha256, source_sha256
    if want and have and want != have:
        mismatch(f"{path}: source_sha256 {want[:12]}... differs from the loaded data's {have[:12]}...")
    want_ids = manifest.test_ids_sha256
    if want_ids:
        have_ids = hashlib.sha256("\n".join(test.ids.tolist()).encode("utf-8")).hexdigest()
        if have_ids != want_ids:
            mismatch(f"{path}: test_ids_sha256 differs: the manifest was built on a different test split")
    differences = manifest.config_differences(source_config)
    if differences:
        mismatch(
            f"{path}: built for another {manifest.dataset or 'dataset'} configuration ({'; '.join(differences)}); "
            "rebuild the manifest for this configuration"
        )
    position = {sample_id: i for i, sample_id in enumerate(test.ids.tolist())}
    unknown = [i for i in manifest.ids if i not in position]
    if unknown:
        raise DataError(f"{path}: {len(unknown)} ids are not in the test split, e.g. {unknown[:3]}")
    return manifest.name, np.array([position[i] for i in manifest.ids], dtype=np.int64)


def with_label_noise(split: SplitData, fraction: float, seed: int) -> SplitData:
    """A copy of ``split`` whose labels are, for ``round(fraction * N)`` samples chosen at random, replaced by
    labels drawn with replacement from the split's own labels (the label distribution is kept, the signal of
    those samples is gone). Seeded by ``seed``; used to plant a regression for the CI check's power test."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3003]))
    n = len(split)
    noisy = rng.choice(n, size=int(round(fraction * n)), replace=False)
    label = split.label.copy()
    label[noisy] = rng.choice(split.label, size=noisy.size, replace=True)
    return dataclasses.replace(split, label=label)


class MSADataModule(L.LightningDataModule):
    """Batches for one dataset bundle.

    ``modalities`` restricts the modalities used (an ablation such as text-only); ``manifests``
    are split-manifest paths whose ids sub-select the standard test split as extra named sets;
    ``source_config`` is the dataset config dataclass the bundle was loaded with, compared with the
    config each manifest records (`OODManifest.config_differences`).
    """

    def __init__(
        self,
        bundle: DatasetBundle,
        *,
        batch_size: int = 32,
        eval_batch_size: int = 256,
        seed: int = 0,
        modalities: Sequence[str] | None = None,
        manifests: Sequence[str | Path] = (),
        allow_source_mismatch: bool = False,
        train_label_noise: float = 0.0,
        source_config: object | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} / {eval_batch_size}")
        if not 0.0 <= train_label_noise <= 1.0:
            raise ValueError(f"data.train_label_noise must lie in [0, 1], got {train_label_noise}")
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        keep = tuple(modalities) if modalities else bundle.train.modalities

        def restrict(split: SplitData) -> SplitData:
            return split.drop_modalities(keep)

        self.train_split, self.valid_split = restrict(bundle.train), restrict(bundle.valid)
        if train_label_noise > 0:
            self.train_split = with_label_noise(self.train_split, train_label_noise, seed)
        tests: dict[str, SplitData] = {"test": restrict(bundle.test)}
        for name, split in bundle.extra_tests.items():
            tests[name] = restrict(split)
        for path in manifests:
            name, rows = load_manifest(
                path, bundle.test, bundle.source_sha256,
                allow_mismatch=allow_source_mismatch, source_config=source_config,
            )
            if name in tests:
                raise DataError(f"{path}: test set name {name!r} is already taken by another set")
            tests[name] = tests["test"].subset(rows)
        self.test_splits = tests
        self.dataset_name = bundle.name
        # Groups (docs/design.md#ground-truth) over every split as held here (the train labels after any label noise).
        self.group_names: tuple[str, ...] = sorted_group_names([self.train_split, self.valid_split, *tests.values()])
        self._tensors: dict[str, TensorSplit] = {}
        self.train_repeats: np.ndarray | None = None

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_split(self.train_split)

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_splits)

    @property
    def train_label_mean(self) -> float:
        return float(np.mean(self.train_split.label, dtype=np.float64))

    def ids_of(self, set_name: str) -> np.ndarray:
        """Sample ids of a named set ('train', 'valid' or a test set)."""
        return self._split(set_name).ids

    @property
    def has_ground_truth(self) -> bool:
        """Whether the data records shortcut ground truth (``z``, groups): synthetic yes, real data no."""
        return self.train_split.z is not None

    def groups_of(self, set_name: str) -> np.ndarray | None:
        """int64 (N,) group index (into :attr:`group_names`) of every sample of a named set; None without ground
        truth."""
        split = self._split(set_name)
        return None if split.z is None else group_index(split.groups, self.group_names)

    def train_group_counts(self) -> np.ndarray:
        """int64 array aligned with :attr:`group_names`: the number of training samples in each group (empty for
        real data)."""
        groups = self.groups_of("train")
        if groups is None:
            return np.zeros(0, dtype=np.int64)
        return np.bincount(groups, minlength=len(self.group_names)).astype(np.int64)

    def ground_truth_of(self, set_name: str, index: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The ground-truth columns of ``predictions.csv`` (``schema.GROUND_TRUTH_COLUMNS``) for rows ``index``
        (default: all) of a named set; empty strings for real data."""
        split = self._split(set_name)
        rows = np.arange(len(split)) if index is None else np.asarray(index, dtype=np.int64)
        return ground_truth_columns(split.label[rows], None if split.z is None else split.z[rows])

    def _split(self, name: str) -> SplitData:
        if name == "train":
            return self.train_split
        if name == "valid":
            return self.valid_split
        if name not in self.test_splits:
            raise KeyError(f"unknown set {name!r}; available: train, valid, {', '.join(self.test_splits)}")
        return self.test_splits[name]

    def _tensor_split(self, name: str) -> TensorSplit:
        if name not in self._tensors:
            self._tensors[name] = TensorSplit(self._split(name), self.groups_of(name))
        return self._tensors[name]

    def set_train_repeats(self, repeats: np.ndarray | None) -> None:
        """Upsample training samples: sample i appears ``repeats[i]`` times per epoch (JTT's stage 2); None = once.
        Takes effect for train loaders created afterwards."""
        if repeats is not None:
            repeats = np.asarray(repeats)
            if repeats.shape != (len(self.train_split),) or not np.issubdtype(repeats.dtype, np.integer):
                raise ValueError(f"train repeats must be integers of shape ({len(self.train_split)},), "
                                 f"got {repeats.dtype} {repeats.shape}")
            if (repeats < 0).any() or repeats.sum() == 0:
                raise ValueError("train repeats must be >= 0 and select at least one sample")
        self.train_repeats = repeats

    def eval_dataloader(self, name: str) -> DataLoader:
        """Sequential batches of any named set ('train', 'valid' or a test set), e.g. to score the training set."""
        return self._loader(name, shuffle=False)

    def iter_eval_batches(self, name: str) -> Iterator[Batch]:
        """Sequential batches (``eval_batch_size``) of a named set without a DataLoader: unlike iterating one, this
        draws nothing from torch's global generator, so scoring extra sets mid-training (per-epoch records)
        leaves the training run's random stream, and so its results, unchanged."""
        data = self._tensor_split(name)
        for start in range(0, len(data), self.eval_batch_size):
            yield data[start : start + self.eval_batch_size]

    def _loader(self, name: str, shuffle: bool) -> DataLoader:
        data = self._tensor_split(name)
        if shuffle and name == "train" and self.train_repeats is not None:
            generator = torch.Generator().manual_seed(self.seed)
            expanded = np.repeat(np.arange(len(data)), self.train_repeats).tolist()
            sampler = BatchSampler(SubsetRandomSampler(expanded, generator=generator), self.batch_size, drop_last=False)
        elif shuffle:
            generator = torch.Generator().manual_seed(self.seed)
            sampler = BatchSampler(RandomSampler(data, generator=generator), self.batch_size, drop_last=False)
        else:
            sampler = BatchSampler(SequentialSampler(data), self.eval_batch_size, drop_last=False)
        return DataLoader(data, sampler=sampler, batch_size=None, collate_fn=None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> list[DataLoader]:
        return [self._loader(name, shuffle=False) for name in self.test_splits]
