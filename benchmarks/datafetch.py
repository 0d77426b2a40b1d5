"""``msabench data fetch | list``: build the real-data files from pinned public upstream files, and check them.

The datamodules read a few small files under the data root (:mod:`datamodules.dataroot`):

========================  ============================================  ==========================================
dataset                   files (under the data root)                   built from
========================  ============================================  ==========================================
``mosi_utt``              ``mosi/bclstm_utterance.npz``                 bc-LSTM release CSVs + GCNet's MOSI pickle
``mosi_text``             ``mosi/label.csv``, ``mosi/std_folds.json``,  GCNet's MOSI pickle, CMU-MultimodalSDK
                          ``mosi/CMU_MOSI_Opinion_Labels.csd``          folds, the SDK label sequence (copied)
``mosei_text``            ``mosei/label.csv``, ``mosei/std_folds.json``  a published MMSA label.csv (copied),
                                                                        CMU-MultimodalSDK folds
========================  ============================================  ==========================================

``benchmarks/data_sources.json`` (package data) pins every upstream file: owner, repository, full commit
id, path, raw.githubusercontent.com URL, SHA-256, size and licence. ``fetch`` downloads them (or reads
them from a local mirror laid out as ``<owner>/<repo>/<path in repo>``), refuses any whose SHA-256
differs, builds every output in memory, checks the outputs whose bytes the sources fix against the
maintainers' reference build, and only then writes each file atomically. ``<root>/SOURCES.lock.json``
records what was built from which upstream SHA-256; ``list`` verifies the files against it. This is
the only place in the product that opens a network connection.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import http.client
import io
import json
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamodules.atomic import atomic_write_bytes, atomic_write_text
from datamodules.dataroot import APP_NAME, DataRoot, resolve_data_root
from datamodules.schema import DataError

LOCK_FILE = "SOURCES.lock.json"
LOCK_FORMAT = 1
TIMEOUT_S = 60.0
_CHUNK = 1 << 16

# Upstream files, by their mirror path <owner>/<repo>/<path in repo>.
_BCLSTM = "declare-lab/multimodal-deep-learning/bc-LSTM/data/"
GCNET_PKL = "zeroQiaoba/GCNet/dataset/CMUMOSI/CMUMOSI_features_raw_2way.pkl"
MOSI_CSD = "worldreboot/audio-text-sentiment-analysis/cmumosi/CMU_MOSI_Opinion_Labels.csd"
MOSEI_LABEL = "ailiwood/mme_0621/data/mosei/label.csv"
_SDK = "CMU-MultiComp-Lab/CMU-MultimodalSDK/mmsdk/mmdatasdk/dataset/standard_datasets/"
MOSI_FOLDS = _SDK + "CMU_MOSI/cmu_mosi_std_folds.py"
MOSEI_FOLDS = _SDK + "CMU_MOSEI/cmu_mosei_std_folds.py"
BCLSTM_TRANSCRIPTS = _BCLSTM + "transcripts.csv"
BCLSTM_PARTS = ("train", "test")


def _bclstm_files(part: str) -> dict[str, str]:
    """The bc-LSTM files of one part: ``index`` (row into transcripts.csv + text features) and the ``*0`` files
    (features + binary label) of each modality, all in the same row order."""
    return {
        "index": f"{_BCLSTM}text_{part}.csv",
        "text": f"{_BCLSTM}text/text_{part}0.csv",
        "audio": f"{_BCLSTM}audio/audio_{part}0.csv",
        "vision": f"{_BCLSTM}video/video_{part}0.csv",
    }


class FetchError(RuntimeError):
    """A download, mirror or checksum failure; the message names the URL or file and the way out."""


# --------------------------------------------------------------------------------------------------
# The pinned catalog
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One pinned upstream file (an entry of ``data_sources.json``)."""

    owner: str
    repo: str
    commit: str
    path: str
    url: str
    sha256: str
    bytes: int
    license: str

    @property
    def key(self) -> str:
        """Its path in a mirror: ``<owner>/<repo>/<path in repo>``."""
        return f"{self.owner}/{self.repo}/{self.path}"


@dataclass(frozen=True)
class Catalog:
    """The pinned sources by mirror path, and the SHA-256 of each output of the maintainers' reference build."""

    sources: dict[str, Source]
    reference: dict[str, str]


def pinned_catalog() -> Catalog:
    """The catalog committed with the package (``benchmarks/data_sources.json``)."""
    path = Path(__file__).resolve().parent / "data_sources.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    fields = Source.__dataclass_fields__
    sources = [Source(**{k: entry[k] for k in fields}) for entry in raw["sources"]]
    return Catalog({s.key: s for s in sources}, {k: v["sha256"] for k, v in raw["reference_outputs"].items()})


# --------------------------------------------------------------------------------------------------
# Recipes: upstream bytes -> the files the datamodules read
# --------------------------------------------------------------------------------------------------


def _gcnet_mosi(data: bytes) -> tuple[dict[str, list[str]], dict[str, list[float]], dict[str, list[str]], dict]:
    """GCNet's MOSI pickle: clip ids, continuous labels and transcripts per video, and video -> standard fold.

    Read with the restricted unpickler (numpy arrays and plain containers only), after its SHA-256 was checked.
    """
    from datamodules.mmsa import RestrictedUnpickler

    try:
        obj = RestrictedUnpickler(io.BytesIO(data), path=GCNET_PKL, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{GCNET_PKL}: cannot unpickle ({exc}); expected GCNet's MOSI pickle") from exc
    if not (isinstance(obj, list) and len(obj) == 7):
        raise DataError(f"{GCNET_PKL}: expected a list of 7 (ids, labels, speakers, texts, train, valid, test)")
    ids, labels, _, texts, *folds = obj
    fold: dict[str, str] = {}
    for name, videos in zip(("train", "valid", "test"), folds):
        for video in videos:
            if video in fold:
                raise DataError(f"{GCNET_PKL}: video {video!r} is in both {fold[video]} and {name}")
            fold[video] = name
    if set(fold) != set(ids):
        raise DataError(f"{GCNET_PKL}: {len(set(ids) ^ set(fold))} videos are not in exactly one fold")
    out_ids: dict[str, list[str]] = {}
    for video in sorted(ids):
        clips = [str(c) for c in ids[video]]
        if any(not c.startswith(video + "_") for c in clips) or not len(clips) == len(labels[video]) == len(
            texts[video]
        ):
            raise DataError(f"{GCNET_PKL}: video {video!r}: clip ids, labels and texts do not line up")
        out_ids[video] = clips
    out_labels = {v: [float(x) for x in labels[v]] for v in out_ids}
    out_texts = {v: [str(t) for t in texts[v]] for v in out_ids}
    return out_ids, out_labels, out_texts, fold


def build_mosi_label_csv(src: Mapping[str, bytes]) -> bytes:
    """``mosi/label.csv`` (MMSA columns) from GCNet's MOSI pickle: videos sorted, clips in the pickle's order,
    labels rounded to 6 decimals, mode = the standard fold of the video."""
    ids, labels, texts, fold = _gcnet_mosi(src[GCNET_PKL])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["video_id", "clip_id", "text", "label", "mode"])
    for video, clips in ids.items():
        for clip, label, text in zip(clips, labels[video], texts[video]):
            writer.writerow([video, clip[len(video) + 1 :], text, repr(round(label, 6)), fold[video]])
    return buf.getvalue().encode("utf-8")


def _folds(src: Mapping[str, bytes], key: str) -> bytes:
    """``std_folds.json`` from a CMU-MultimodalSDK ``*_std_folds.py``: its three list literals, parsed (never run)."""
    try:
        tree = ast.parse(src[key].decode("utf-8"), filename=key)
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise DataError(f"{key}: cannot parse as Python ({exc}); expected the SDK's standard fold lists") from exc
    found: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = [str(v) for v in ast.literal_eval(node.value)]
            except ValueError:
                continue
    names = {split: f"standard_{split}_fold" for split in ("train", "valid", "test")}
    missing = [n for n in names.values() if n not in found]
    if missing:
        raise DataError(f"{key}: no list literal {missing}; expected {list(names.values())}")
    return json.dumps({split: found[name] for split, name in names.items()}, indent=0).encode("utf-8")


def _csv_rows(src: Mapping[str, bytes], key: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(src[key].decode("utf-8"))))


def _matrix(src: Mapping[str, bytes], key: str, width: int) -> np.ndarray:
    rows = _csv_rows(src, key)
    if any(len(r) != width for r in rows):
        raise DataError(f"{key}: expected {width} columns in every row")
    return np.array(rows, dtype=np.float64)


def build_bclstm_npz(src: Mapping[str, bytes]) -> bytes:
    """``mosi/bclstm_utterance.npz``: the bc-LSTM utterance features of every MOSI clip, in label.csv's order.

    ``text_<part>.csv`` gives each row's clip (a row of transcripts.csv) and the text features; the ``*_<part>0.csv``
    files hold the text, audio and visual features with the binary label in the same row order. The order is
    checked: the ``*0`` binary labels must equal transcripts.csv's, and text0's features the indexed ones.
    """
    ids, labels, _, fold = _gcnet_mosi(src[GCNET_PKL])
    transcripts = _csv_rows(src, BCLSTM_TRANSCRIPTS)
    if any(len(r) != 4 for r in transcripts):
        raise DataError(f"{BCLSTM_TRANSCRIPTS}: expected 4 columns (clip id, transcript, video number, label)")
    rows: dict[str, dict[str, Any]] = {}
    for part in BCLSTM_PARTS:
        files = _bclstm_files(part)
        index = _matrix(src, files["index"], 101)
        text0, audio0, video0 = (_matrix(src, files[m], w) for m, w in (("text", 101), ("audio", 74), ("vision", 101)))
        n = index.shape[0]
        if not text0.shape[0] == audio0.shape[0] == video0.shape[0] == n:
            raise DataError(f"bc-LSTM {part} files have {n} / {text0.shape[0]} / {audio0.shape[0]} / "
                            f"{video0.shape[0]} rows; expected the same count")
        if not np.array_equal(index[:, 1:].astype(np.float32), text0[:, :100].astype(np.float32)):
            raise DataError(f"{files['text']}: features differ from {files['index']}; expected the same row order")
        for j, r in enumerate(index[:, 0].astype(np.int64)):
            clip, raw_text, _, binary = transcripts[r]
            if not int(binary) == text0[j, 100] == audio0[j, 73] == video0[j, 100]:
                raise DataError(f"bc-LSTM {part} row {j} ({clip}): binary labels disagree between the files")
            if clip in rows:
                raise DataError(f"bc-LSTM: clip {clip} appears twice")
            rows[clip] = {
                "part": part, "text": index[j, 1:], "audio": audio0[j, :73], "vision": video0[j, :100],
                "binary": int(binary), "raw_text": raw_text,
            }
    order = [clip for clips in ids.values() for clip in clips]
    if set(order) != set(rows):
        raise DataError(f"bc-LSTM covers {len(rows)} clips, {GCNET_PKL} {len(order)}; expected the same MOSI clips")
    label = {c: x for v, clips in ids.items() for c, x in zip(clips, labels[v])}
    video_of = {c: v for v, clips in ids.items() for c in clips}
    arrays = {
        "clip_id": np.array(order),
        "video_id": np.array([video_of[c] for c in order]),
        "text": np.array([rows[c]["text"] for c in order], dtype=np.float32),
        "audio": np.array([rows[c]["audio"] for c in order], dtype=np.float32),
        "vision": np.array([rows[c]["vision"] for c in order], dtype=np.float32),
        "label": np.array([label[c] for c in order], dtype=np.float32),
        "label_bin_bclstm": np.array([rows[c]["binary"] for c in order], dtype=np.int64),
        "raw_text": np.array([rows[c]["raw_text"] for c in order]),
        "split_std": np.array([fold[video_of[c]] for c in order]),
        "split_bclstm": np.array([rows[c]["part"] for c in order]),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def _copy(key: str) -> Callable[[Mapping[str, bytes]], bytes]:
    def build(src: Mapping[str, bytes]) -> bytes:
        return src[key]

    return build


@dataclass(frozen=True)
class Recipe:
    """How one output file is built: from which sources, by which function; ``exact`` when its bytes are fixed by
    the sources (then checked against the reference build; a compressed .npz depends on the zlib build)."""

    output: str
    what: str
    sources: tuple[str, ...]
    build: Callable[[Mapping[str, bytes]], bytes]
    exact: bool = True


_BCLSTM_ALL = tuple(f for part in BCLSTM_PARTS for f in _bclstm_files(part).values())
RECIPES: dict[str, Recipe] = {
    r.output: r
    for r in (
        Recipe(
            "mosi/bclstm_utterance.npz",
            "MOSI bc-LSTM utterance features (text 100, audio 73, vision 100) with labels and both splits",
            (*_BCLSTM_ALL, BCLSTM_TRANSCRIPTS, GCNET_PKL),
            build_bclstm_npz,
            exact=False,
        ),
        Recipe("mosi/label.csv", "MOSI transcripts, continuous labels and standard folds", (GCNET_PKL,),
               build_mosi_label_csv),
        Recipe("mosi/CMU_MOSI_Opinion_Labels.csd", "MOSI labels as a CMU-MultimodalSDK sequence (HDF5)", (MOSI_CSD,),
               _copy(MOSI_CSD)),
        Recipe("mosi/std_folds.json", "MOSI standard train / valid / test video ids", (MOSI_FOLDS,),
               lambda src: _folds(src, MOSI_FOLDS)),
        Recipe("mosei/label.csv", "MOSEI transcripts, continuous labels and standard folds", (MOSEI_LABEL,),
               _copy(MOSEI_LABEL)),
        Recipe("mosei/std_folds.json", "MOSEI standard train / valid / test video ids", (MOSEI_FOLDS,),
               lambda src: _folds(src, MOSEI_FOLDS)),
    )
}
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "mosi_utt": ("mosi/bclstm_utterance.npz",),
    "mosi_text": ("mosi/label.csv", "mosi/CMU_MOSI_Opinion_Labels.csd", "mosi/std_folds.json"),
    "mosei_text": ("mosei/label.csv", "mosei/std_folds.json"),
}
FETCH_NAMES = (*DATASET_FILES, "all")


# --------------------------------------------------------------------------------------------------
# Getting the sources
# --------------------------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manual_step(source: Source, command: str) -> str:
    return (
        f"To work offline, download {source.url} on a machine with network access, save it as "
        f"DIR/{source.key} (a mirror laid out as <owner>/<repo>/<path in repo>; benchmarks/data_sources.json lists "
        f"every file, docs/data.md shows how to mirror them all) and run `{command} --from DIR`"
    )


def download(source: Source, command: str, progress: bool = True) -> bytes:
    """The bytes at ``source.url`` (with a progress bar), or a FetchError naming the URL and the manual step."""
    from tqdm.auto import tqdm

    request = urllib.request.Request(source.url, headers={"User-Agent": f"{APP_NAME} (msabench data fetch)"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, tqdm(
            total=source.bytes, unit="B", unit_scale=True, desc=Path(source.path).name, disable=not progress,
            leave=False,
        ) as bar:
            chunks = []
            while chunk := response.read(_CHUNK):
                chunks.append(chunk)
                bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise FetchError(f"cannot download {source.url} ({exc}). {_manual_step(source, command)}.") from exc
    return b"".join(chunks)


def obtain(
    source: Source,
    *,
    mirror: Path | None,
    command: str,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> bytes:
    """One source's bytes, from ``mirror`` or the network, refused unless its SHA-256 is the pinned one."""
    if mirror is not None:
        path = mirror / source.key
        if not path.is_file():
            raise FetchError(
                f"{path} is missing from the mirror {mirror}: expected {source.key} ({source.bytes} bytes, sha256 "
                f"{source.sha256}), downloadable from {source.url}"
            )
        data, where = path.read_bytes(), str(path)
    else:
        data, where = download(source, command, progress), source.url
    actual = _sha256(data)
    if actual != source.sha256:
        raise FetchError(
            f"{where}: sha256 is {actual}, expected {source.sha256} ({source.owner}/{source.repo} at commit "
            f"{source.commit}, {source.path}); nothing was written"
        )
    log(f"{'read' if mirror is not None else 'downloaded'} {where} ({len(data):,} bytes, sha256 ok)")
    return data


# --------------------------------------------------------------------------------------------------
# State of the data root
# --------------------------------------------------------------------------------------------------


def read_lock(root: Path) -> dict[str, Any]:
    """``<root>/SOURCES.lock.json`` (empty when absent): output path -> sha256, bytes and the sources used."""
    path = root / LOCK_FILE
    if not path.is_file():
        return {"format": LOCK_FORMAT, "files": {}}
    try:
        lock = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: cannot read the build record ({exc}); delete it and run `msabench data fetch`"
        ) from exc
    if not isinstance(lock, dict) or not isinstance(lock.get("files"), dict):
        raise DataError(f"{path}: expected an object with a 'files' object; delete it and run `msabench data fetch`")
    return lock


def _source_record(recipe: Recipe, catalog: Catalog) -> list[dict[str, str]]:
    return [
        {"file": k, "commit": catalog.sources[k].commit, "url": catalog.sources[k].url,
         "sha256": catalog.sources[k].sha256}
        for k in recipe.sources
    ]


@dataclass(frozen=True)
class FileState:
    """One output under the data root: ``status`` missing | verified | changed | stale | unverified."""

    output: str
    path: Path
    status: str
    detail: str
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "verified"


def file_state(root: Path, output: str, lock: Mapping[str, Any], catalog: Catalog) -> FileState:
    """Whether ``<root>/<output>`` is there and verifies against the build record, else the reference build."""
    path = root / output
    if not path.is_file():
        return FileState(output, path, "missing", "not built")
    data = path.read_bytes()
    sha, size = _sha256(data), len(data)
    entry = lock.get("files", {}).get(output)
    if entry is not None:
        if entry.get("sha256") != sha:
            return FileState(output, path, "changed", f"sha256 {sha} differs from the build record "
                             f"{entry.get('sha256')}", size)
        if entry.get("sources") != _source_record(RECIPES[output], catalog):
            return FileState(output, path, "stale", "built from other upstream files than the pinned ones", size)
        return FileState(output, path, "verified", "sha256 matches the build record", size)
    if catalog.reference.get(output) == sha:
        return FileState(output, path, "verified", "sha256 matches the reference build (no build record)", size)
    return FileState(output, path, "unverified", "no build record, and the sha256 differs from the reference build",
                     size)


def expand_names(names: Sequence[str]) -> list[str]:
    """Dataset names with ``all`` expanded, in order, or a ValueError naming the valid ones."""
    out: list[str] = []
    for name in names:
        if name not in FETCH_NAMES:
            raise ValueError(f"unknown data set {name!r}; expected one of {list(FETCH_NAMES)}")
        for dataset in DATASET_FILES if name == "all" else (name,):
            if dataset not in out:
                out.append(dataset)
    return out


def list_data(
    root: str | os.PathLike | None = None, *, catalog: Catalog | None = None
) -> tuple[DataRoot, dict[str, list[FileState]]]:
    """The resolved data root and, per dataset, the state of each of its files."""
    catalog = catalog or pinned_catalog()
    where = resolve_data_root(root, field="--root")
    lock = read_lock(where.path)
    return where, {name: [file_state(where.path, f, lock, catalog) for f in files] for name, files in
                   DATASET_FILES.items()}


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_listing(where: DataRoot, states: Mapping[str, list[FileState]]) -> str:
    """The text of ``msabench data list``."""
    lines = [f"data root: {where.path} ({where.why})"]
    root_arg = f" --root {where.path}" if where.origin == "config" else ""
    for name, files in states.items():
        ready = all(s.ok for s in files)
        head = "ready" if ready else f"not ready: run `msabench data fetch {name}{root_arg}`"
        lines.append(f"{name}: {head}")
        for s in files:
            size = _size(s.bytes) if s.status != "missing" else "-"
            lines.append(f"  {s.output:<34} {size:>8}  {s.status}: {s.detail}")
    lock = where.path / LOCK_FILE
    lines.append(f"build record: {lock}" if lock.is_file() else f"build record: none yet ({lock})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Fetch
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """One output of a fetch: ``action`` built | kept."""

    output: str
    path: Path
    action: str
    sha256: str


def fetch(
    names: Sequence[str],
    root: str | os.PathLike | None = None,
    *,
    mirror: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    catalog: Catalog | None = None,
) -> tuple[DataRoot, list[Built]]:
    """Build the files of ``names`` (datasets or ``all``) under the data root.

    Verified files are kept unless ``force``. Every needed source is obtained and checked, and every output built
    and (where exact) compared with the reference build, before the first file is written; each file is then
    written atomically and recorded in ``SOURCES.lock.json``.
    """
    catalog = catalog or pinned_catalog()
    datasets = expand_names(names)
    where = resolve_data_root(root, field="--root")
    mirror_dir = Path(mirror).expanduser() if mirror else None
    if mirror_dir is not None and not mirror_dir.is_dir():
        raise FetchError(f"--from {mirror_dir}: not a folder; expected a mirror laid out as <owner>/<repo>/<path>")
    command = f"msabench data fetch {' '.join(names)}" + (f" --root {where.path}" if where.origin == "config" else "")
    lock = read_lock(where.path)
    outputs = list(dict.fromkeys(f for d in datasets for f in DATASET_FILES[d]))
    results: list[Built] = []
    todo: list[Recipe] = []
    for output in outputs:
        state = file_state(where.path, output, lock, catalog)
        if state.ok and not force:
            log(f"{state.path}: kept ({state.detail}; --force rebuilds it)")
            results.append(Built(output, state.path, "kept", _sha256(state.path.read_bytes())))
            continue
        if state.status != "missing" and not force:
            log(f"{state.path}: {state.status} ({state.detail}); rebuilding it")
        todo.append(RECIPES[output])
    if not todo:
        return where, results
    keys = list(dict.fromkeys(k for r in todo for k in r.sources))
    log(f"{'reading' if mirror_dir else 'downloading'} {len(keys)} upstream file(s), "
        f"{sum(catalog.sources[k].bytes for k in keys):,} bytes" + (f" from {mirror_dir}" if mirror_dir else ""))
    blobs = {k: obtain(catalog.sources[k], mirror=mirror_dir, command=command, progress=progress, log=log)
             for k in keys}
    built: dict[str, bytes] = {}
    for recipe in todo:
        data = recipe.build(blobs)
        expected = catalog.reference.get(recipe.output)
        if recipe.exact and expected is not None and _sha256(data) != expected:
            raise FetchError(
                f"{recipe.output}: the file built from the verified sources has sha256 {_sha256(data)}, expected "
                f"{expected} (the reference build); nothing was written"
            )
        built[recipe.output] = data
    for recipe in todo:
        data, path = built[recipe.output], where.path / recipe.output
        atomic_write_bytes(path, data)
        lock.setdefault("files", {})[recipe.output] = {
            "sha256": _sha256(data),
            "bytes": len(data),
            "sources": _source_record(recipe, catalog),
        }
        lock["format"] = LOCK_FORMAT
        atomic_write_text(where.path / LOCK_FILE, json.dumps(lock, indent=1, sort_keys=True) + "\n")
        log(f"wrote {path} ({len(data):,} bytes): {recipe.what}")
        results.append(Built(recipe.output, path, "built", _sha256(data)))
    return where, sorted(results, key=lambda b: outputs.index(b.output))


__all__ = [
    "DATASET_FILES",
    "FETCH_NAMES",
    "LOCK_FILE",
    "RECIPES",
    "Built",
    "Catalog",
    "FetchError",
    "FileState",
    "Recipe",
    "Source",
    "expand_names",
    "fetch",
    "file_state",
    "format_listing",
    "list_data",
    "obtain",
    "pinned_catalog",
]
