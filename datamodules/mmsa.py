"""MMSA release pickles (``aligned_50.pkl`` / ``unaligned_50.pkl``) <-> :class:`DatasetBundle`, safely.

An MMSA pickle is ``{"train": {...}, "valid": {...}, "test": {...}}``; each split is a dict of per-sample
arrays:

========================  ===================================================================
``id``                    str (N,), ``"<video_id>$_$<clip>"``
``raw_text``              str (N,) (OOD split builder only)
``text_bert``             float (N, 3, L_t): token ids, attention mask, segment ids
``text``                  float (N, L_t, d_t) precomputed token features
``audio`` / ``vision``    float (N, T, d) frame features
``*_lengths``             int (N,) valid frames
``regression_labels``     float (N,) in [-3, 3]
``classification_labels`` int 0 neg / 1 neu / 2 pos (optional; consistency check only)
``annotations``           str (optional; unused)
========================  ===================================================================

Strings may be numpy ``<U`` arrays, numpy object arrays or lists; numbers may be arrays or lists.

Pickles are read with :class:`RestrictedUnpickler`, which resolves only the few globals that numpy arrays
and scalars need, so a crafted pickle cannot run code. Every error is a :class:`DataError` that names the
file, the split and the key, and says what was expected.
"""

from __future__ import annotations

import codecs
import dataclasses
import glob
import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

import numpy as np

from datamodules.atomic import atomic_write_bytes, atomic_write_text
from datamodules.schema import LABEL_MAX, LABEL_MIN, DataError, DatasetBundle, FeatureSpec, SplitData

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
Nonfinite = Literal["error", "zero"]
NONFINITE_MODES: tuple[str, ...] = get_args(Nonfinite)
PICKLE_PROTOCOL = 4  # what MMSA writes; no out-of-band buffers, supports > 4 GiB objects
_ANNOTATIONS = np.array(["Negative", "Neutral", "Positive"], dtype=object)

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------
# Safe unpickling
# --------------------------------------------------------------------------------------------------


def _numpy_internals() -> dict[str, Any]:
    """numpy's pickle helpers, from ``numpy._core`` (numpy >= 2) or ``numpy.core`` (numpy 1.x)."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return {"_reconstruct": multiarray._reconstruct, "scalar": multiarray.scalar, "_frombuffer": numeric._frombuffer}


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickle protocols 0-2 use it for ``bytes`` (latin-1 only)."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused; only latin-1 is allowed")
    return codecs.encode(obj, "latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    np_int = _numpy_internals()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocols 0-2 spell ``bytes`` (the array buffers) as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy._core", "numpy.core"):  # numpy 2 writes the first, numpy 1.x the second
        allowed[(f"{core}.multiarray", "_reconstruct")] = np_int["_reconstruct"]
        allowed[(f"{core}.multiarray", "scalar")] = np_int["scalar"]
        allowed[(f"{core}.numeric", "_frombuffer")] = np_int["_frombuffer"]  # protocol 5
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits only numpy arrays, numpy scalars and plain containers.

    ``find_class`` resolves a fixed allow-list (``numpy.ndarray``, ``numpy.dtype``, numpy's
    ``_reconstruct`` / ``scalar`` / ``_frombuffer`` under ``numpy._core`` or ``numpy.core``, and a
    latin-1-only ``_codecs.encode`` for protocol <= 2 byte strings) to the objects themselves, without
    importing anything by name. Any other global (``os.system``, ``builtins.exec``, a class ...) is refused
    with a :class:`DataError` naming the file and the refused ``module.name``, before it can be called.
    Dicts, lists, tuples, str, bytes, int, float, bool and None need no globals.
    """

    _ALLOWED: dict[tuple[str, str], Any] | None = None

    def __init__(self, file: BinaryIO, *, path: PathLike | None = None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.path = str(path) if path is not None else str(getattr(file, "name", "<stream>"))

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        try:
            return RestrictedUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.path}: refused to load global '{module}.{name}' from the pickle; expected only numpy "
                f"arrays, numpy scalars and plain containers (an MMSA pickle needs nothing else)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.path}: refused a persistent id in the pickle; expected a self-contained pickle")


def safe_load_pickle(path: PathLike) -> object:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    A missing, unreadable, truncated or corrupt file, or a refused global, is a :class:`DataError`
    naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path=path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e}); expected a readable MMSA pickle") from e
    except Exception as e:  # EOFError, UnpicklingError, ValueError, struct errors ... from a damaged stream
        raise DataError(
            f"{path}: truncated or corrupt pickle ({type(e).__name__}: {e}); expected a complete MMSA pickle "
            f"(re-download or re-create the file)"
        ) from e


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_mmsa(
    path: PathLike, *, nonfinite: str = "error", name: str | None = None, source_sha256: str | None = None
) -> DatasetBundle:
    """Read an MMSA pickle as released into a validated :class:`DatasetBundle`.

    Features become float32, lengths int64, labels float32, ``id`` / ``raw_text`` numpy str arrays,
    ``text_bert`` int64 ``text_ids`` with ``text_lengths`` = attention-mask row sums (clamped to >= 1).
    Rules (as MMSA's loader): ``-inf`` in ``audio`` becomes 0 (count logged); any other non-finite feature
    value is a :class:`DataError` unless ``nonfinite="zero"`` (then 0, count logged); lengths < 1 are
    clamped to 1 (count logged) and lengths > T are an error; labels must be finite and in [-3, 3];
    ``classification_labels``, when present, must satisfy ``(cls >= 1) == (y >= 0)``; ids are unique per
    split. Any non-empty subset of text / audio / vision works, the same in every split.

    ``name`` defaults to the file stem; ``source_sha256`` is the file's SHA-256 (computed here unless the
    caller already knows it, as :func:`load_mmsa_cached` does). For MOSEI-sized pickles use
    :func:`load_mmsa_cached`, which unpickles once and memory-maps afterwards.
    """
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    path = Path(path)
    raw = safe_load_pickle(path)
    if not isinstance(raw, Mapping):
        raise DataError(
            f"{path}: top level is a {type(raw).__name__}; expected a dict with splits {list(SPLITS)} (an MMSA pickle)"
        )
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise DataError(
            f"{path}: missing split key(s) {missing}; expected top-level keys {list(SPLITS)}, "
            f"found {sorted(map(str, raw))}"
        )
    splits = {s: _convert_split(raw[s], f"{path} [split {s}]", nonfinite) for s in SPLITS}
    del raw
    digest = source_sha256 if source_sha256 is not None else sha256_file(path)
    bundle = DatasetBundle(name=name or path.stem, **splits, source_sha256=digest)
    bundle.validate(str(path))
    logger.info(
        "loaded %s: modalities %s, dims %s, max lengths %s, sizes %s",
        path,
        bundle.spec.modalities,
        bundle.spec.dims,
        bundle.spec.max_lengths,
        {s: len(getattr(bundle, s)) for s in SPLITS},
    )
    return bundle


def _convert_split(d: Any, where: str, nonfinite: str) -> SplitData:
    if not isinstance(d, Mapping):
        raise DataError(f"{where}: split is a {type(d).__name__}; expected a dict of per-sample arrays")
    keys = sorted(map(str, d))
    for key in ("id", "regression_labels"):
        if key not in d:
            raise DataError(f"{where}: missing required key '{key}'; keys present: {keys}")
    if not any(k in d for k in ("text", "text_bert", "audio", "vision")):
        raise DataError(
            f"{where}: no modality; expected at least one of keys 'text', 'text_bert', 'audio', 'vision', "
            f"keys present: {keys}"
        )

    label = _labels(d["regression_labels"], where)
    n = int(label.shape[0])
    ids = _strings(d["id"], n, where, "id")
    _check_unique(ids, where)
    _check_label_range(label, ids, where)
    if "classification_labels" in d:
        _check_classes(d["classification_labels"], label, ids, where)
    raw_text = _strings(d["raw_text"], n, where, "raw_text") if "raw_text" in d else None

    text = _features(d["text"], n, where, "text", nonfinite) if "text" in d else None
    text_ids = text_lengths = None
    if "text_bert" in d:
        text_ids = _text_bert(d["text_bert"], n, None if text is None else text.shape[1], where)
        text_lengths = text_ids[:, 1].sum(axis=1)
        short = int((text_lengths < 1).sum())
        if short:
            logger.warning(
                "%s: key 'text_bert': %d rows have an all-zero attention mask; length set to 1", where, short
            )
            text_lengths = np.maximum(text_lengths, 1)

    out: dict[str, np.ndarray | None] = {}
    for feat in ("audio", "vision"):
        if feat not in d:
            continue
        arr = _features(d[feat], n, where, feat, nonfinite)
        out[feat] = arr
        if f"{feat}_lengths" in d:
            out[f"{feat}_lengths"] = _lengths(d[f"{feat}_lengths"], n, arr.shape[1], where, f"{feat}_lengths", feat)
        else:
            logger.warning(
                "%s: no key '%s_lengths' (aligned pickles may omit it); all %d rows use the full length %d",
                where, feat, n, arr.shape[1],
            )
            out[f"{feat}_lengths"] = np.full(n, arr.shape[1], dtype=np.int64)
    return SplitData(
        ids=ids, label=label, text=text, text_ids=text_ids, text_lengths=text_lengths, raw_text=raw_text, **out
    )


def _numeric(value: Any, where: str, key: str, expected: str) -> np.ndarray:
    """``value`` as a numeric numpy array (object arrays / nested lists converted), else a DataError."""
    try:
        arr = np.asarray(value)
        if arr.dtype == object:  # numbers, or per-sample arrays, held in an object array
            arr = np.array(arr.tolist(), dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: key '{key}' cannot be read as a numeric array ({e}); expected {expected}") from e
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{where}: key '{key}' has dtype {arr.dtype}; expected {expected}")
    return arr


def _labels(value: Any, where: str) -> np.ndarray:
    arr = _numeric(value, where, "regression_labels", "float (N,) in [-3, 3]")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{where}: key 'regression_labels' has shape {arr.shape}; expected (N,)")
    if arr.shape[0] == 0:
        raise DataError(f"{where}: key 'regression_labels' is empty; expected N >= 1 samples")
    arr = np.require(arr, dtype=np.float32, requirements=("C", "W"))
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise DataError(f"{where}: key 'regression_labels' has {bad} non-finite values; expected finite labels")
    return arr


def _check_label_range(label: np.ndarray, ids: np.ndarray, where: str) -> None:
    bad = (label < LABEL_MIN) | (label > LABEL_MAX)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: key 'regression_labels' has {int(bad.sum())} values outside [{LABEL_MIN}, {LABEL_MAX}] "
            f"(min {label.min():.4g}, max {label.max():.4g}; first: id {ids[first]!r} = {label[first]:.4g}); "
            f"expected sentiment scores in [{LABEL_MIN}, {LABEL_MAX}]"
        )


def _strings(value: Any, n: int, where: str, key: str) -> np.ndarray:
    """A numpy str array (N,) from a ``<U`` / ``S`` / object array or a list of str / bytes."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: key '{key}' cannot be read as an array ({e}); expected str ({n},)") from e
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise DataError(f"{where}: key '{key}' has shape {arr.shape}; expected str ({n},) (one per sample)")
    if arr.dtype.kind == "U":
        return arr
    if arr.dtype.kind == "S":
        try:
            return np.char.decode(arr, "utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{where}: key '{key}' holds bytes that are not UTF-8 ({e}); expected str") from e
    if arr.dtype.kind != "O":
        raise DataError(f"{where}: key '{key}' has dtype {arr.dtype}; expected str ({n},)")
    items = arr.tolist()
    for i, item in enumerate(items):
        if isinstance(item, bytes):
            try:
                items[i] = item.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{where}: key '{key}' element {i} is not UTF-8 ({e}); expected str") from e
        elif not isinstance(item, str):
            raise DataError(f"{where}: key '{key}' element {i} is a {type(item).__name__} ({item!r}); expected str")
    return np.array(items, dtype=str) if items else np.zeros(0, dtype=str)


def _check_unique(ids: np.ndarray, where: str) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if unique.shape[0] != ids.shape[0]:
        dups = unique[counts > 1]
        raise DataError(
            f"{where}: key 'id' has {len(dups)} duplicated ids (e.g. {dups[:3].tolist()}); "
            "expected unique ids per split"
        )


def _check_classes(value: Any, label: np.ndarray, ids: np.ndarray, where: str) -> None:
    n = label.shape[0]
    arr = _numeric(value, where, "classification_labels", f"int ({n},) with 0 neg / 1 neu / 2 pos")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise DataError(f"{where}: key 'classification_labels' has shape {arr.shape}; expected ({n},)")
    if not np.all(np.isin(arr, (0, 1, 2))):
        raise DataError(
            f"{where}: key 'classification_labels' has values {np.unique(arr)[:10].tolist()}; "
            f"expected 0 neg / 1 neu / 2 pos"
        )
    bad = (arr >= 1) != (label >= 0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{where}: key 'classification_labels' disagrees with 'regression_labels' on {int(bad.sum())} samples "
            f"(first: id {ids[first]!r}, class {arr[first]:g}, label {label[first]:.4g}); "
            f"expected (class >= 1) == (label >= 0)"
        )


def _features(value: Any, n: int, where: str, key: str, nonfinite: str) -> np.ndarray:
    """float32 (N, T, d), C-contiguous and writable, with the non-finite rules applied."""
    expected = f"float ({n}, T>=1, d>=1)"
    arr = _numeric(value, where, key, expected)
    if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataError(f"{where}: key '{key}' has shape {arr.shape}; expected {expected} (samples, steps, features)")
    arr = np.require(arr, dtype=np.float32, requirements=("C", "W"))
    if key == "audio":
        neg = np.isneginf(arr)
        count = int(neg.sum())
        if count:
            arr[neg] = 0.0
            logger.info("%s: key 'audio': replaced %d -inf values by 0 (as MMSA's loader does)", where, count)
        del neg
    bad = ~np.isfinite(arr)
    count = int(bad.sum())
    if count:
        if nonfinite == "error":
            raise DataError(
                f"{where}: key '{key}' has {count} non-finite values (NaN/inf); expected finite features "
                f"(set source.nonfinite=zero on the msabench command line to replace them by 0)"
            )
        arr[bad] = 0.0
        logger.warning("%s: key '%s': replaced %d non-finite values by 0 (nonfinite='zero')", where, key, count)
    return arr


def _integers(value: Any, where: str, key: str, expected: str) -> np.ndarray:
    arr = _numeric(value, where, key, expected)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{where}: key '{key}' has non-finite values; expected {expected}")
        if not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{where}: key '{key}' has non-integer values; expected {expected}")
    return np.require(arr, dtype=np.int64, requirements=("C", "W"))


def _text_bert(value: Any, n: int, text_len: int | None, where: str) -> np.ndarray:
    expected = f"float ({n}, 3, L_t) of token ids, attention mask, segment ids"
    arr = _integers(value, where, "text_bert", expected)
    if arr.ndim != 3 or arr.shape[:2] != (n, 3) or arr.shape[2] < 1:
        raise DataError(f"{where}: key 'text_bert' has shape {arr.shape}; expected {expected}")
    if text_len is not None and arr.shape[2] != text_len:
        raise DataError(
            f"{where}: key 'text_bert' has length L_t={arr.shape[2]} but key 'text' has L_t={text_len}; "
            f"expected the same token length"
        )
    mask = arr[:, 1]
    if not np.all((mask == 0) | (mask == 1)):
        raise DataError(f"{where}: key 'text_bert' row 1 (attention mask) has values other than 0/1; expected 0/1")
    return arr


def _lengths(value: Any, n: int, t_max: int, where: str, key: str, feat: str) -> np.ndarray:
    expected = f"int ({n},) in [1, {t_max}]"
    arr = _integers(value, where, key, expected)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.shape != (n,):
        raise DataError(f"{where}: key '{key}' has shape {arr.shape}; expected {expected}")
    too_long = arr > t_max
    if too_long.any():
        raise DataError(
            f"{where}: key '{key}' has {int(too_long.sum())} lengths longer than the sequence "
            f"(max {int(arr.max())} > T={t_max}, the length of key '{feat}'); expected lengths in [1, {t_max}]"
        )
    short = arr < 1
    count = int(short.sum())
    if count:
        arr = arr.copy()
        arr[short] = 1
        logger.warning("%s: key '%s': clamped %d lengths < 1 to 1", where, key, count)
    return arr


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def to_mmsa_dict(bundle_or_splits: DatasetBundle | Mapping[str, SplitData]) -> dict[str, dict[str, Any]]:
    """The MMSA pickle payload ``{split: {key: array}}`` of a bundle (train / valid / test) or of a
    mapping split name -> :class:`SplitData`.

    Keys, dtypes and layouts are MMSA's: ``id``, ``raw_text``, ``annotations`` numpy object arrays of
    str; ``text``, ``audio``, ``vision`` float32 (N, T, d); ``text_bert`` float32 (N, 3, L_t);
    ``audio_lengths`` / ``vision_lengths`` int64 (N,); ``regression_labels`` float32 (N,);
    ``classification_labels`` int64 from the label's sign (y < 0 -> 0, y == 0 -> 1, y > 0 -> 2);
    ``annotations`` "Negative" / "Neutral" / "Positive". Keys of absent modalities are left out, and
    so is ``raw_text`` when the split has none. A bundle's ``extra_tests`` have no place in the format
    and are not written (a warning says so).

    Synthesised fields: a split with ``text`` but no ``text_ids`` gets ``text_bert`` built from
    ``text_lengths`` (token ids 0, attention mask 1 on the first ``text_lengths`` positions, or on all
    when there are no lengths, segment ids 0), so loading it back gives ``text_ids`` whose ids are
    meaningless; models must use ``text``. Audio / vision without lengths get full lengths T.
    Arrays may share memory with the input.
    """
    if isinstance(bundle_or_splits, DatasetBundle):
        if bundle_or_splits.extra_tests:
            logger.warning(
                "to_mmsa_dict: extra test sets %s are not part of the MMSA format and are not written",
                sorted(bundle_or_splits.extra_tests),
            )
        splits: Mapping[str, SplitData] = {s: getattr(bundle_or_splits, s) for s in SPLITS}
    elif isinstance(bundle_or_splits, Mapping):
        splits = bundle_or_splits
    else:
        raise TypeError(
            f"expected a DatasetBundle or a mapping of split name -> SplitData, got {type(bundle_or_splits)}"
        )
    return {name: _split_to_mmsa(split) for name, split in splits.items()}


def _object_strings(arr: np.ndarray) -> np.ndarray:
    out = np.empty(len(arr), dtype=object)
    out[:] = [str(x) for x in arr.tolist()]
    return out


def _split_to_mmsa(split: SplitData) -> dict[str, Any]:
    n = len(split)
    label = np.asarray(split.label, dtype=np.float32)
    out: dict[str, Any] = {"id": _object_strings(np.asarray(split.ids))}
    if split.raw_text is not None:
        out["raw_text"] = _object_strings(np.asarray(split.raw_text))
    if split.text is not None:
        out["text"] = np.asarray(split.text, dtype=np.float32)
    if split.text_ids is not None:
        out["text_bert"] = np.asarray(split.text_ids, dtype=np.float32)
    elif split.text is not None:
        length = split.text.shape[1]
        bert = np.zeros((n, 3, length), dtype=np.float32)
        if split.text_lengths is None:
            bert[:, 1] = 1.0
        else:
            bert[:, 1] = np.arange(length)[None, :] < np.asarray(split.text_lengths)[:, None]
        out["text_bert"] = bert
    for feat in ("audio", "vision"):
        arr = getattr(split, feat)
        if arr is None:
            continue
        out[feat] = np.asarray(arr, dtype=np.float32)
        lengths = getattr(split, f"{feat}_lengths")
        out[f"{feat}_lengths"] = (
            np.full(n, arr.shape[1], dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
        )
    out["regression_labels"] = label
    cls = np.where(label < 0, 0, np.where(label == 0, 1, 2)).astype(np.int64)
    out["classification_labels"] = cls
    out["annotations"] = _ANNOTATIONS[cls]
    return out


def write_mmsa_pickle(bundle: DatasetBundle, path: PathLike) -> None:
    """Validate ``bundle`` and write it as an MMSA pickle (see :func:`to_mmsa_dict`) to ``path``.

    The write is atomic (`datamodules.atomic`): a temporary file in the same directory, flushed and
    fsynced, then renamed over ``path``, so a crash never leaves a half-written file under the final name.
    Parent directories are created. Protocol 4, as MMSA uses.
    """
    path = Path(path)
    bundle.validate(f"write_mmsa_pickle({path})")
    atomic_write_bytes(path, pickle.dumps(to_mmsa_dict(bundle), protocol=PICKLE_PROTOCOL))
    logger.info("wrote %s (%s)", path, {s: len(getattr(bundle, s)) for s in SPLITS})


# --------------------------------------------------------------------------------------------------
# On-disk cache: memory-mapped arrays keyed by the pickle's SHA-256
# --------------------------------------------------------------------------------------------------

CACHE_ENV = "MSABENCH_CACHE"
CACHE_FORMAT = 1
_SPLIT_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SplitData))
_MAPPED_KEYS = frozenset({"text", "text_ids", "audio", "vision"})  # the big ones; the rest is read into memory
_TMP_MARK = ".tmp-"


def cache_root(override: PathLike | None = None) -> Path:
    """The suite's cache directory: ``override`` when given, else ``$MSABENCH_CACHE``, else ``~/.cache/msabench``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "msabench"



def cached_sha256(path: PathLike, cache_dir: PathLike | None = None, *, verify: bool = False) -> str:
    """SHA-256 of a file, remembered in ``<cache>/sha256/`` under the file's (path, size, mtime, inode).

    Hashing a MOSEI-sized pickle takes seconds, so an unchanged file (same stat stamp) is not re-read;
    ``verify=True`` always re-hashes. An unwritable cache only costs the memo (a warning is logged).
    """
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    memo = cache_root(cache_dir) / "sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:32]}.json"
    if not verify:
        try:
            record = json.loads(memo.read_text())
            if record.get("stamp") == stamp and isinstance(record.get("sha256"), str):
                return record["sha256"]
        except (OSError, ValueError):
            pass
    digest = sha256_file(path)
    try:
        atomic_write_text(memo, json.dumps({"stamp": stamp, "sha256": digest}))
    except OSError as exc:
        logger.warning("cannot remember the SHA-256 of %s in %s (%s); it will be recomputed next time", path, memo, exc)
    return digest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_builds(final: Path) -> None:
    """Delete temporary build folders of ``final`` left by dead processes of this host (a killed build)."""
    prefix = f".{final.name}{_TMP_MARK}{socket.gethostname()}-"
    if not final.parent.is_dir():
        return
    for tmp in final.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            logger.info("removed %s, an interrupted cache build", tmp)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_directory(final: PathLike) -> Iterator[Path]:
    """Build a cache folder under a temporary name and rename it to ``final`` only when complete.

    Yields an empty folder beside ``final`` (``.<name>.tmp-<host>-<pid>-<random>``); when the block
    ends normally its files are fsynced and the folder is renamed to ``final`` in one step, so a
    reader sees either no ``final`` or a complete one. On an exception the folder is removed; if the
    process is killed instead, the next build of ``final`` on this host removes it. If another process
    renamed its build to ``final`` first, that one is kept and ours discarded.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(final)
    tmp = final.parent / f".{final.name}{_TMP_MARK}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            with open(child, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            logger.info("%s was completed by another process; discarded this build", final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def mmsa_cache_dir(source_sha256: str, nonfinite: str, cache_dir: PathLike | None = None) -> Path:
    """Where the memory-mapped cache of a pickle with this SHA-256 (and non-finite rule) lives."""
    return cache_root(cache_dir) / "mmsa" / f"{source_sha256}-{nonfinite}-v{CACHE_FORMAT}"


def load_mmsa_cached(
    path: PathLike,
    *,
    nonfinite: str = "error",
    name: str | None = None,
    cache_dir: PathLike | None = None,
    verify_hash: bool = False,
) -> DatasetBundle:
    """:func:`load_mmsa` with an on-disk cache of memory-mapped ``.npy`` arrays.

    The first load unpickles and validates the file as :func:`load_mmsa` does, writes every array as
    ``<cache>/mmsa/<sha256>-<nonfinite>-v1/<split>.<key>.npy`` plus ``meta.json`` (see
    :func:`atomic_directory`: a half-written cache is never read), and returns the mapped arrays. Later
    loads map the big arrays (``text``, ``text_ids``, ``audio``, ``vision``) with ``np.load(mmap_mode='c')``
    (copy-on-write: writable, never written back) and read the small ones (ids, labels, lengths, raw
    text), so loading costs milliseconds and pages are read only when a batch touches them. The
    pickle's SHA-256 is remembered by :func:`cached_sha256` (``verify_hash=True`` re-hashes).

    A cached load re-checks shapes, dtypes, ids, labels and lengths but not the finiteness of every
    feature value (that would read all the data; the values were checked when the cache was built).
    An unreadable or inconsistent cache folder is rebuilt; an unwritable cache directory falls back
    to the in-memory bundle with a warning.
    """
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}, got {nonfinite!r}")
    path = Path(path)
    if not path.is_file():
        return load_mmsa(path, nonfinite=nonfinite, name=name)  # raises the DataError naming the file
    digest = cached_sha256(path, cache_dir, verify=verify_hash)
    final = mmsa_cache_dir(digest, nonfinite, cache_dir)
    bundle_name = name or path.stem
    if final.is_dir():
        cached = _read_mmsa_cache(final, bundle_name)
        if cached is not None:
            return cached
        logger.warning("%s: cache folder is incomplete or inconsistent; rebuilding it from %s", final, path)
        shutil.rmtree(final, ignore_errors=True)
    built = load_mmsa(path, nonfinite=nonfinite, name=bundle_name, source_sha256=digest)
    try:
        with atomic_directory(final) as tmp:
            _write_mmsa_cache(built, tmp, source=path, nonfinite=nonfinite)
    except OSError as exc:
        logger.warning("cannot write the MMSA cache %s (%s); using the unpickled arrays", final, exc)
        return built
    del built
    cached = _read_mmsa_cache(final, bundle_name)
    if cached is None:
        raise DataError(f"{final}: the cache just written cannot be read back; check the disk (or delete the folder)")
    logger.info("cached %s as memory-mapped arrays in %s", path, final)
    return cached


def _write_mmsa_cache(bundle: DatasetBundle, folder: Path, *, source: Path, nonfinite: str) -> None:
    meta: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "kind": "mmsa",
        "source": str(source),
        "source_sha256": bundle.source_sha256,
        "nonfinite": nonfinite,
        "splits": {},
    }
    for split_name in SPLITS:
        split = getattr(bundle, split_name)
        arrays = {}
        for key in _SPLIT_KEYS:
            arr = getattr(split, key)
            if arr is None:
                continue
            arr = np.ascontiguousarray(arr)
            np.save(folder / f"{split_name}.{key}.npy", arr, allow_pickle=False)
            arrays[key] = {"shape": list(arr.shape), "dtype": arr.dtype.str}
        meta["splits"][split_name] = {"n": len(split), "arrays": arrays}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def _read_mmsa_cache(folder: Path, name: str) -> DatasetBundle | None:
    """The cached bundle, or None when the folder is not a complete, consistent cache."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT or set(meta.get("splits", {})) != set(SPLITS):
            return None
        splits = {}
        for split_name in SPLITS:
            info = meta["splits"][split_name]
            fields = {}
            for key, spec in info["arrays"].items():
                if key not in _SPLIT_KEYS:
                    return None
                file = folder / f"{split_name}.{key}.npy"
                arr = np.load(file, mmap_mode="c" if key in _MAPPED_KEYS else None, allow_pickle=False)
                if list(arr.shape) != spec["shape"] or arr.dtype.str != spec["dtype"]:
                    return None
                fields[key] = arr
            splits[split_name] = SplitData(**fields)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s: unreadable cache (%s)", folder, exc)
        return None
    bundle = DatasetBundle(name=name, **splits, source_sha256=meta.get("source_sha256"))
    try:
        _check_cached(bundle, str(folder))
    except DataError as exc:
        logger.warning("%s", exc)
        return None
    return bundle


def _check_cached(bundle: DatasetBundle, where: str) -> None:
    """:meth:`DatasetBundle.validate` without the finiteness scan of the feature arrays."""
    spec = FeatureSpec.from_split(bundle.train)
    for split_name in SPLITS:
        split: SplitData = getattr(bundle, split_name)
        at = f"{where} [split {split_name}]"
        n = len(split)
        if split.label.ndim != 1 or split.ids.shape != (n,):
            raise DataError(f"{at}: 'label' / 'ids' shapes {split.label.shape} / {split.ids.shape}; expected ({n},)")
        _check_unique(split.ids, at)
        if not np.all(np.isfinite(split.label)):
            raise DataError(f"{at}: key 'label' has non-finite values")
        _check_label_range(split.label, split.ids, at)
        for key in _SPLIT_KEYS:
            arr = getattr(split, key)
            if arr is not None and arr.shape[0] != n:
                raise DataError(f"{at}: key '{key}' has {arr.shape[0]} rows; expected {n}")
        for feat in ("text", "audio", "vision"):
            arr, lengths = getattr(split, feat), getattr(split, f"{feat}_lengths")
            if arr is None or lengths is None:
                continue
            if lengths.shape != (n,) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > arr.shape[1]:
                raise DataError(f"{at}: key '{feat}_lengths' outside [1, {arr.shape[1]}]")
        other = FeatureSpec.from_split(split)
        if other.modalities != spec.modalities or other.dims != spec.dims:
            raise DataError(f"{at}: modalities/dims {other.modalities} {other.dims} differ from train's")


__all__ = [
    "CACHE_ENV",
    "NONFINITE_MODES",
    "SPLITS",
    "RestrictedUnpickler",
    "atomic_directory",
    "cache_root",
    "cached_sha256",
    "load_mmsa",
    "load_mmsa_cached",
    "mmsa_cache_dir",
    "safe_load_pickle",
    "sha256_file",
    "to_mmsa_dict",
    "write_mmsa_pickle",
]
