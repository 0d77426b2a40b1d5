"""Real CMU-MOSI / CMU-MOSEI transcripts and labels -> text-only :class:`DatasetBundle` (``mosi_text``, ``mosei_text``).

Inputs live under the data root (``root`` config field, else ``$MSABENCH_DATA``, else the per-user data
directory; see :mod:`datamodules.dataroot`; ``msabench data fetch`` builds them): ``<root>/<mosi|mosei>/label.csv``
with MMSA's columns ``video_id,clip_id,text,label,mode`` (mode = the standard CMU folds train / valid / test),
and for MOSI optionally the CMU-MultimodalSDK label file ``CMU_MOSI_Opinion_Labels.csd`` (HDF5; segment i of a video
is clip i+1), chosen with ``labels=csd``. Ids are ``<video_id>$_$<clip_id>`` read as strings (some video
ids start with ``-``, some clip ids look numeric). ``raw_text`` keeps the transcript as released (the
OOD split builder reads it); the model sees only the offline encoding (:mod:`datamodules.encoder`):
token features (N, L, d) and BERT-style token ids (N, 3, L).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from datamodules.dataroot import data_root, missing_data_hint, require_file
from datamodules.encoder import TextEncoder, encode_cached
from datamodules.fields import data_neutral, non_semantic
from datamodules.mmsa import SPLITS, sha256_file
from datamodules.schema import LABEL_MAX, LABEL_MIN, DataError, DatasetBundle, SplitData

LABEL_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
CSD_FILE = "CMU_MOSI_Opinion_Labels.csd"
CSD_GROUP = "Opinion Segment Labels"
ID_SEP = "$_$"


def read_label_csv(path: str | os.PathLike) -> pd.DataFrame:
    """An MMSA ``label.csv`` as a DataFrame with columns ``id, video_id, clip_id, text, label, mode``.

    Ids are read as strings (never numbers or NaN); labels must be finite and in [-3, 3], modes in
    train / valid / test, ids unique. Errors are :class:`DataError` naming the file and column.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc}); expected columns {list(LABEL_COLUMNS)}") from exc
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; expected {list(LABEL_COLUMNS)}, found {list(df.columns)}"
        )
    try:
        label = df["label"].astype(np.float64)
    except ValueError as exc:
        raise DataError(f"{path}: column 'label' is not numeric ({exc}); expected sentiment scores in [-3, 3]") from exc
    bad = ~np.isfinite(label) | (label < LABEL_MIN) | (label > LABEL_MAX)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path}: column 'label' has {int(bad.sum())} values that are not finite or outside [{LABEL_MIN}, "
            f"{LABEL_MAX}] (first: row {first + 2}, {df['label'].iloc[first]!r})"
        )
    modes = set(df["mode"].unique())
    if not modes <= set(SPLITS):
        raise DataError(f"{path}: column 'mode' has values {sorted(modes - set(SPLITS))}; expected {list(SPLITS)}")
    out = pd.DataFrame(
        {
            "id": df["video_id"] + ID_SEP + df["clip_id"],
            "video_id": df["video_id"],
            "clip_id": df["clip_id"],
            "text": df["text"],
            "label": label.astype(np.float32),
            "mode": df["mode"],
        }
    )
    dups = out["id"][out["id"].duplicated()]
    if len(dups):
        raise DataError(f"{path}: {len(dups)} duplicated ids <video_id>$_$<clip_id>, e.g. {dups.iloc[:3].tolist()}")
    return out


def read_csd_labels(path: str | os.PathLike) -> dict[str, float]:
    """Sentiment labels of a CMU-MultimodalSDK ``.csd`` file as ``{"<video_id>$_$<i+1>": label}``.

    Segment i (0-based) of a video's ``features`` (n, 1) is clip i+1, as in MMSA's MOSI ids.
    """
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            if CSD_GROUP not in f or "data" not in f[CSD_GROUP]:
                raise DataError(f"{path}: no group '{CSD_GROUP}/data'; expected the CMU-SDK MOSI opinion labels")
            labels: dict[str, float] = {}
            for video, group in f[CSD_GROUP]["data"].items():
                values = np.asarray(group["features"], dtype=np.float64).reshape(-1)
                for i, value in enumerate(values):
                    labels[f"{video}{ID_SEP}{i + 1}"] = float(value)
    except OSError as exc:
        raise DataError(f"{path}: cannot read as HDF5 ({exc}); expected a CMU-SDK computational sequence") from exc
    return labels


@dataclass
class TranscriptConfig:
    """A transcript track: ``label.csv`` + the offline text encoder.

    ``root`` the data folder ('' = ``$MSABENCH_DATA`` or the per-user data directory); ``encoder`` a local
    transformers directory ('' = the packaged all-MiniLM-L6-v2); ``max_length`` tokens per text
    ([CLS] and [SEP] included); ``features`` whether to run the encoder (false: token ids only, for
    ``backbone.text.mode=finetune``); ``cache_dir`` ('' = ``$MSABENCH_CACHE`` or ~/.cache/msabench);
    ``batch_size`` texts per encoder batch; ``threads`` CPU threads while encoding (1: robust on a
    shared CPU, where several threads spin-wait for each other - MOSEI took 4.2 min with 1 thread and
    21 min with 2 on a loaded 2-core machine; 0 = torch's setting, all cores, for an idle machine);
    ``progress`` shows a progress bar while encoding.
    """

    root: str = data_neutral("")
    encoder: str = data_neutral("")
    max_length: int = data_neutral(50)
    features: bool = data_neutral(True)
    cache_dir: str = non_semantic("")
    batch_size: int = data_neutral(64)
    threads: int = non_semantic(1)
    progress: bool = non_semantic(True)


@dataclass
class MOSITextConfig(TranscriptConfig):
    """``mosi_text``: ``labels`` = ``csv`` (label.csv) or ``csd`` (CMU_MOSI_Opinion_Labels.csd)."""

    labels: Literal["csv", "csd"] = "csv"


def load_transcripts(dataset: str, cfg: TranscriptConfig, *, name: str | None = None) -> DatasetBundle:
    """``<root>/<dataset>/label.csv`` on its standard folds, encoded offline (cached).

    Rows keep the file's order within each split. ``source_sha256`` is the SHA-256 of label.csv, or
    with ``labels=csd`` the SHA-256 of both files' hashes (the labels then come from the .csd).
    """
    if cfg.max_length < 3:
        raise ValueError(f"{dataset}_text.max_length must be >= 3, got {cfg.max_length}")
    labels_from = getattr(cfg, "labels", "csv")
    if labels_from not in ("csv", "csd"):
        raise ValueError(f"{dataset}_text.labels must be 'csv' or 'csd', got {labels_from!r}")
    folder = data_root(cfg.root) / dataset
    hint = missing_data_hint(f"{dataset}_text.root", f"{dataset}_text", cfg.root)
    csv_path = require_file(folder / "label.csv", f"{dataset.upper()} transcripts and labels (label.csv)", hint)
    frame = read_label_csv(csv_path)
    source = sha256_file(csv_path)
    if labels_from == "csd":
        csd_path = require_file(folder / CSD_FILE, f"{dataset.upper()} CMU-SDK label file", hint)
        csd = read_csd_labels(csd_path)
        unknown = [i for i in frame["id"] if i not in csd]
        if unknown:
            raise DataError(f"{csd_path}: no label for {len(unknown)} clips of {csv_path}, e.g. {unknown[:3]}")
        frame["label"] = np.array([csd[i] for i in frame["id"]], dtype=np.float32)
        if not np.all((frame["label"] >= LABEL_MIN) & (frame["label"] <= LABEL_MAX)):
            raise DataError(f"{csd_path}: labels outside [{LABEL_MIN}, {LABEL_MAX}]")
        bundle_sha = hashlib.sha256(f"{source}{sha256_file(csd_path)}".encode()).hexdigest()
    else:
        bundle_sha = source
    order = np.argsort(frame["mode"].map({s: k for k, s in enumerate(SPLITS)}).to_numpy(), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    encoder = TextEncoder(
        cfg.encoder or None, batch_size=cfg.batch_size, threads=cfg.threads, key=f"{name or dataset + '_text'}.encoder"
    )
    encoded = encode_cached(
        frame["text"].tolist(),
        source_sha256=source,
        encoder=encoder,
        max_length=cfg.max_length,
        features=cfg.features,
        cache_dir=cfg.cache_dir or None,
        progress=cfg.progress,
    )
    lengths = encoded.lengths
    modes, ids, texts = frame["mode"].to_numpy(), frame["id"].tolist(), frame["text"].tolist()
    labels = np.array(frame["label"].to_numpy(dtype=np.float32))  # a writable copy (pandas may return a read-only view)
    splits = {}
    for split_name in SPLITS:
        rows = np.flatnonzero(modes == split_name)
        if rows.size == 0:
            raise DataError(f"{csv_path}: split {split_name!r} is empty; expected rows with mode={split_name}")
        part = slice(int(rows[0]), int(rows[-1]) + 1)  # contiguous after the sort: views of the mapped cache
        splits[split_name] = SplitData(
            ids=np.array(ids[part], dtype=str),
            label=labels[part],
            text=None if encoded.features is None else encoded.features[part],
            text_ids=encoded.ids[part],
            text_lengths=np.maximum(lengths[part], 1),
            raw_text=np.array(texts[part], dtype=str),
        )
    bundle = DatasetBundle(name=name or f"{dataset}_text", **splits, source_sha256=bundle_sha)
    _validate_light(bundle, str(csv_path))
    return bundle


def _validate_light(bundle: DatasetBundle, where: str) -> None:
    """Validate everything but the finiteness of the (mapped, possibly GB-sized) token features."""
    for split_name in SPLITS:
        split: SplitData = getattr(bundle, split_name)
        light = SplitData(
            ids=split.ids, label=split.label, text_ids=split.text_ids, text_lengths=None, raw_text=split.raw_text
        )
        light.validate(f"{where} [split {split_name}]")
        n, _, length = split.text_ids.shape
        if split.text is not None and split.text.shape[:2] != (n, length):
            raise DataError(
                f"{where} [split {split_name}]: token features have shape {split.text.shape}; "
                f"expected ({n}, {length}, d)"
            )


def load_mosi_text(cfg: MOSITextConfig) -> DatasetBundle:
    """The ``mosi_text`` dataset (1284 / 229 / 686 clips)."""
    return load_transcripts("mosi", cfg)


def load_mosei_text(cfg: TranscriptConfig) -> DatasetBundle:
    """The ``mosei_text`` dataset (16274 / 1861 / 4653 clips as ``msabench data fetch mosei_text`` builds it)."""
    return load_transcripts("mosei", cfg)


__all__ = [
    "MOSITextConfig",
    "TranscriptConfig",
    "load_mosei_text",
    "load_mosi_text",
    "load_transcripts",
    "read_csd_labels",
    "read_label_csv",
]
