"""``mosi_utt``: the real multimodal CMU-MOSI utterance features of bc-LSTM (Poria et al., ACL 2017).

``<root>/mosi/bclstm_utterance.npz`` holds one vector per clip: ``text`` (2199, 100), ``audio``
(2199, 73, openSMILE), ``vision`` (2199, 100), ``label`` in [-3, 3], ``clip_id``, ``video_id``,
``raw_text`` and two split columns. Only ``split_bclstm`` (speaker-independent train / test by
video) is used: the text and vision features were produced by encoders trained on its train part,
so on the standard split they leak test labels.

The validation set (default ``valid_from=test``) is a seeded random 20 % of the *test* videos of
``split_bclstm`` (whole videos, so no speaker is in both): 6 of 31 videos, 134 clips, about the size of
the earlier split (131); the remaining 618 test clips are the IID test set and the pool the committed
OOD manifests are drawn from. Those clips were never seen by the bc-LSTM encoders, so selection on
them is clean.

``valid_from=train`` (the earlier protocol, 10 % of the train videos) is kept for comparison only and
logs a warning: its clips were in the part the bc-LSTM encoders were trained on, so the baseline
scores Non0 Acc-2 ~0.98 on it and ~0.77 on test, and every selection made on it is optimistic (MMCI
selects epoch 0-1 there).

Each modality becomes a sequence of length 1 (``(N, 1, d)``, lengths 1). With ``standardize``
(default) every feature is z-scored with the mean and std of the train part (after the validation
videos are held out); constant features get std 1. The file is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from typing import Optional

import numpy as np

from datamodules.dataroot import data_root, missing_data_hint, require_file
from datamodules.mmsa import sha256_file
from datamodules.schema import DataError, DatasetBundle, SplitData
from datamodules.transcripts import ID_SEP

UTTERANCE_FILE = "bclstm_utterance.npz"
SPLIT_KEY = "split_bclstm"
DEFAULT_VALID_FRACTION = {"test": 0.2, "train": 0.1}
LEAKY_VALID_WARNING = (
    "mosi_utt.valid_from=train: the validation clips come from the videos the bc-LSTM feature encoders "
    "were trained on (valid Non0 Acc-2 ~0.98 vs test ~0.77), so selection on them is optimistic; "
    "the default valid_from=test holds out clean test videos"
)
log = logging.getLogger(__name__)
_REQUIRED = ("text", "audio", "vision", "label", "clip_id", "video_id", "raw_text", SPLIT_KEY)


@dataclass
class UtteranceConfig:
    """``root`` data folder ('' = ``$MSABENCH_DATA`` or the per-user data directory); ``valid_fraction`` of
    the videos of ``valid_from`` (``test``, the clean default, or ``train`` of split_bclstm) held out for
    validation, drawn with ``valid_seed`` (None = 0.2 of test / 0.1 of train videos); ``standardize``
    z-scores every feature with train statistics."""

    root: str = ""
    valid_fraction: Optional[float] = None
    valid_seed: int = 0
    valid_from: str = "test"
    standardize: bool = True


def split_videos(videos: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The held-out videos: round(fraction * #videos) (at least 1) of the sorted unique ``videos``, seeded."""
    unique = np.unique(videos)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"mosi_utt.valid_fraction must lie in (0, 1), got {fraction}")
    count = min(max(1, int(round(fraction * unique.size))), unique.size - 1)
    if count < 1:
        raise DataError(f"cannot hold out validation videos from {unique.size} train video(s)")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(unique, size=count, replace=False))


def load_mosi_utterance(cfg: UtteranceConfig) -> DatasetBundle:
    """The ``mosi_utt`` bundle: train / valid (held-out test videos by default) / test of ``split_bclstm``."""
    path = require_file(
        data_root(cfg.root) / "mosi" / UTTERANCE_FILE,
        "MOSI utterance features (bclstm_utterance.npz)",
        missing_data_hint("mosi_utt.root", "mosi_utt", cfg.root),
    )
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _REQUIRED if k not in npz.files]
            if missing:
                raise DataError(f"{path}: missing key(s) {missing}; expected {list(_REQUIRED)}")
            data = {k: npz[k] for k in _REQUIRED}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # truncated or bit-flipped
        raise DataError(f"{path}: cannot read as a numpy .npz without pickles ({exc})") from exc
    n = data["label"].shape[0]
    videos, clips = data["video_id"].astype(str), data["clip_id"].astype(str)
    if any(not c.startswith(v + "_") for v, c in zip(videos, clips)):
        raise DataError(f"{path}: key 'clip_id' must be '<video_id>_<clip>' for every row")
    ids = np.array([f"{v}{ID_SEP}{c[len(v) + 1 :]}" for v, c in zip(videos, clips)])
    split = data[SPLIT_KEY].astype(str)
    if set(np.unique(split)) != {"train", "test"}:
        raise DataError(f"{path}: key '{SPLIT_KEY}' has values {np.unique(split).tolist()}; expected train / test")
    shared = np.intersect1d(videos[split == "train"], videos[split == "test"])
    if shared.size:
        raise DataError(f"{path}: videos {shared[:3].tolist()} are in both train and test of '{SPLIT_KEY}'")
    if cfg.valid_from not in ("train", "test"):
        raise ValueError(f"mosi_utt.valid_from must be 'train' or 'test', got {cfg.valid_from!r}")
    if cfg.valid_from == "train":
        log.warning(LEAKY_VALID_WARNING)
    fraction = DEFAULT_VALID_FRACTION[cfg.valid_from] if cfg.valid_fraction is None else cfg.valid_fraction
    held_out = split_videos(videos[split == cfg.valid_from], fraction, cfg.valid_seed)
    part = np.where(np.isin(videos, held_out), "valid", split)

    features = {}
    for name in ("text", "audio", "vision"):
        arr = np.asarray(data[name], dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise DataError(f"{path}: key '{name}' has shape {arr.shape}; expected ({n}, d)")
        if cfg.standardize:
            train = arr[part == "train"].astype(np.float64)
            mean, std = train.mean(axis=0), train.std(axis=0)
            std[std < 1e-8] = 1.0
            arr = ((arr - mean) / std).astype(np.float32)
        features[name] = arr[:, None, :]

    label = np.asarray(data["label"], dtype=np.float32)
    raw_text = data["raw_text"].astype(str)
    ones = np.ones(n, dtype=np.int64)
    splits = {}
    for name in ("train", "valid", "test"):
        rows = np.flatnonzero(part == name)
        splits[name] = SplitData(
            ids=ids[rows],
            label=label[rows],
            text=features["text"][rows],
            audio=features["audio"][rows],
            audio_lengths=ones[rows],
            vision=features["vision"][rows],
            vision_lengths=ones[rows],
            raw_text=raw_text[rows],
        )
    bundle = DatasetBundle(name="mosi_utt", **splits, source_sha256=sha256_file(path))
    bundle.validate(str(path))
    return bundle


__all__ = [
    "DEFAULT_VALID_FRACTION",
    "LEAKY_VALID_WARNING",
    "UTTERANCE_FILE",
    "UtteranceConfig",
    "load_mosi_utterance",
    "split_videos",
]
