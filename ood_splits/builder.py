"""Build OOD test-set manifests (docs/algorithms.md#ood-split-builder): vocabulary -> annealing -> manifest JSON.

``build_manifest(bundle, SplitConfig(...), dataset=..., dataset_config=...)`` returns the
manifest as a dict; ``write_manifest`` writes it atomically to
``<root>/<dataset>/<name>.json``: ``root`` is the caller's choice, by default the per-user manifest folder
(:func:`user_manifest_root`); the committed manifests under ``ood_splits/manifests`` are package data, written
only when a maintainer names that folder (``make splits``). The manifest holds ids only (no labels, no
text), so it can be committed; the datamodule sub-selects the standard test split by them (``data.manifests=[...]``).

Determinism: the same data, config and seed give a byte-identical file (``json.dumps`` with sorted
keys, fixed indent, no timestamps, no wall times). ``created_by.git_commit`` records the commit of the git
checkout the command runs in (``-dirty`` when tracked files differ from it; null outside a checkout), so two
builds compare byte for byte within one commit; across commits only that field may differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np

from datamodules.atomic import atomic_write_text
from datamodules.manifest import OODManifest, check_set_name
from datamodules.schema import DataError, DatasetBundle, SplitData
from ood_splits.annealing import (
    LABEL_MODES,
    MOVE_SETS,
    AnnealResult,
    LabelMode,
    MoveSet,
    Problem,
    Schedule,
    anneal,
    label_sides,
)
from ood_splits.annealing import random_baseline as random_energies
from ood_splits.vocab import (
    NLTK_ENGLISH_STOP_WORDS,
    Descriptor,
    Vocabulary,
    VocabularyError,
    av_vocabulary,
    text_vocabulary,
    union,
)

MODALITY_SETS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "audio": ("audio",),
    "vision": ("vision",),
    "tav": ("text", "audio", "vision"),
}
PROTOCOL = "gear_subset"
MANIFEST_ROOT = Path(__file__).resolve().parent / "manifests"  # committed manifests: package data, read-only
ID_SEP = "$_$"


@dataclass
class SAConfig:
    """``split.sa.*``: the annealing schedule, number of chains and the move set."""

    t0: float = 0.1
    cooling: float = 0.99
    outer: int = 400
    n0: float = 200.0
    growth: float = 1.0008
    chains: int = 8
    moves: MoveSet = "notebook"


@dataclass
class TextConfig:
    """``split.text.*``: ``min_count`` threshold on the test split's total count (a word is
    kept if its count is > min_count); None = 50 for test splits of at least ``split.large_test``
    samples (MOSEI) and 10 below (MOSI). ``stop_words``: ``nltk`` (the 179-word list) or ``none``."""

    min_count: Optional[int] = None
    stop_words: Literal["nltk", "none"] = "nltk"


@dataclass
class AVConfig:
    """``split.av.*``: acoustic / visual words. ``k`` None = 50 for test splits of at least
    ``split.large_test`` samples (MOSEI) and 10 below (MOSI)."""

    descriptor: Descriptor = "masked_mean"
    normalise: Literal["train_zscore", "none"] = "train_zscore"
    fit_on: Literal["train", "test"] = "train"
    k: Optional[int] = None
    words: Literal["utterance", "frame"] = "utterance"
    frame_k: int = 64
    n_init: int = 10


@dataclass
class TAVConfig:
    """``split.tav.*``: ``sum`` (E_t + E_a + E_v) or ``per_modality`` (each term / |V_m|)."""

    weighting: Literal["sum", "per_modality"] = "sum"


@dataclass
class SplitConfig:
    """``split.*``: one OOD set of the GEAR protocol (a subset of the standard test split).

    ``modality`` text | audio | vision | tav; ``label_mode`` nn (b = 1[y >= 0]) | np (neutral on
    neither side); ``fraction`` of the test split selected (``n_sel`` overrides it); ``seed`` of
    the chains, the random baseline and K-means; ``eps`` of the objective; ``random_subsets`` the
    size of the random baseline; ``name`` of the set ('' = ``test_<label_mode>_<modality>``);
    ``large_test`` the test size from which the MOSEI defaults of ``text.min_count`` and ``av.k``
    apply.
    """

    modality: Literal["text", "audio", "vision", "tav"] = "text"
    label_mode: LabelMode = "nn"
    fraction: float = 0.47
    n_sel: Optional[int] = None
    seed: int = 0
    eps: float = 1e-6
    random_subsets: int = 100
    name: str = ""
    large_test: int = 2000
    sa: SAConfig = field(default_factory=SAConfig)
    text: TextConfig = field(default_factory=TextConfig)
    av: AVConfig = field(default_factory=AVConfig)
    tav: TAVConfig = field(default_factory=TAVConfig)

    def set_name(self) -> str:
        """The test-set name the datamodule will use."""
        return self.name or f"test_{self.label_mode}_{self.modality}"


class SplitBuildError(ValueError):
    """The split cannot be built from these inputs; the message names the key and what was expected."""


def check_config(cfg: SplitConfig) -> None:
    """One clear error per bad knob, before any work is done."""
    if cfg.modality not in MODALITY_SETS:
        raise SplitBuildError(f"split.modality={cfg.modality!r}; expected one of {list(MODALITY_SETS)}")
    if cfg.label_mode not in LABEL_MODES:
        raise SplitBuildError(f"split.label_mode={cfg.label_mode!r}; expected one of {LABEL_MODES}")
    if cfg.n_sel is None and not 0.0 < cfg.fraction < 1.0:
        raise SplitBuildError(f"split.fraction={cfg.fraction} must lie in (0, 1)")
    if cfg.sa.moves not in MOVE_SETS:
        raise SplitBuildError(f"split.sa.moves={cfg.sa.moves!r}; expected one of {MOVE_SETS}")
    if cfg.sa.chains < 1:
        raise SplitBuildError(f"split.sa.chains={cfg.sa.chains} must be >= 1")
    if cfg.text.stop_words not in ("nltk", "none"):
        raise SplitBuildError(f"split.text.stop_words={cfg.text.stop_words!r}; expected 'nltk' or 'none'")
    if cfg.random_subsets < 1:
        raise SplitBuildError(f"split.random_subsets={cfg.random_subsets} must be >= 1")
    if cfg.eps <= 0:
        raise SplitBuildError(f"split.eps={cfg.eps} must be > 0")
    try:
        check_set_name(cfg.set_name(), "split.name")
    except DataError as exc:
        raise SplitBuildError(str(exc)) from None
    Schedule(cfg.sa.t0, cfg.sa.cooling, cfg.sa.outer, cfg.sa.n0, cfg.sa.growth)


def resolved_min_count(cfg: SplitConfig, n_test: int) -> int:
    """``split.text.min_count`` or its size-dependent default (50 for MOSEI-size test splits, else 10)."""
    if cfg.text.min_count is not None:
        return int(cfg.text.min_count)
    return 50 if n_test >= cfg.large_test else 10


def resolved_k(cfg: SplitConfig, n_test: int) -> int:
    """``split.av.k`` or its size-dependent default (50 for MOSEI-size test splits, else 10)."""
    if cfg.av.k is not None:
        return int(cfg.av.k)
    return 50 if n_test >= cfg.large_test else 10


def resolved_n_sel(cfg: SplitConfig, n_test: int) -> int:
    """``split.n_sel`` or round(``split.fraction`` · N); out of [1, N-1] is an error."""
    n_sel = int(cfg.n_sel) if cfg.n_sel is not None else int(round(cfg.fraction * n_test))
    if not 1 <= n_sel <= n_test - 1:
        source = f"split.n_sel={cfg.n_sel}" if cfg.n_sel is not None else f"split.fraction={cfg.fraction}"
        raise SplitBuildError(
            f"subset size {n_sel} (from {source}) is out of range for a test split of {n_test} samples; "
            f"expected 1 <= n_sel <= {n_test - 1}"
        )
    return n_sel


def _frames(split: SplitData, modality: str, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    x = getattr(split, modality)
    if x is None:
        raise SplitBuildError(f"{where}: the {modality} vocabulary needs {modality} features, but the split has none")
    return x, getattr(split, f"{modality}_lengths")


def build_vocabulary(bundle: DatasetBundle, cfg: SplitConfig) -> Vocabulary:
    """The vocabulary of ``cfg.modality`` with counts on the test split (balanced) and on train
    (for the report); TAV is the union of the text, audio and vision vocabularies."""
    check_config(cfg)
    n_test = len(bundle.test)
    parts = []
    for modality in MODALITY_SETS[cfg.modality]:
        where = f"dataset {bundle.name!r}, split.modality={cfg.modality}"
        if modality == "text":
            if bundle.test.raw_text is None:
                raise SplitBuildError(
                    f"{where}: the text vocabulary needs transcripts (raw_text) on the test split, and it has none"
                )
            stop_words = NLTK_ENGLISH_STOP_WORDS if cfg.text.stop_words == "nltk" else ()
            train_text = None if bundle.train.raw_text is None else bundle.train.raw_text.tolist()
            parts.append(
                text_vocabulary(bundle.test.raw_text.tolist(), train_text, resolved_min_count(cfg, n_test), stop_words)
            )
        else:
            train_x, train_len = _frames(bundle.train, modality, f"{where} [train]")
            test_x, test_len = _frames(bundle.test, modality, f"{where} [test]")
            parts.append(
                av_vocabulary(
                    modality,
                    train_x,
                    train_len,
                    test_x,
                    test_len,
                    k=resolved_k(cfg, n_test),
                    seed=cfg.seed,
                    descriptor=cfg.av.descriptor,
                    normalise=cfg.av.normalise,
                    fit_on=cfg.av.fit_on,
                    words=cfg.av.words,
                    frame_k=cfg.av.frame_k,
                    n_init=cfg.av.n_init,
                )
            )
    if len(parts) == 1:
        return parts[0]
    return union(parts, cfg.tav.weighting)


def sha256_lines(items: list[str]) -> str:
    """SHA-256 of ``items`` joined by newlines (no trailing newline): the manifest's id hashes."""
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()


def source_fingerprint(bundle: DatasetBundle, dataset: str, dataset_config: dict[str, Any] | None) -> tuple[str, str]:
    """(sha256, what it hashes): the bundle's source-file SHA-256 when the dataset has a file;
    for generated data (``source_sha256`` None, e.g. ``synthetic``) the SHA-256 of the canonical
    JSON of ``{"dataset": name, "config": dataset config}``, which determines the data."""
    if bundle.source_sha256:
        return bundle.source_sha256, "file"
    canonical = json.dumps({"dataset": dataset, "config": dataset_config or {}}, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest(), "dataset_config"


def video_of(sample_id: str) -> str:
    """The video id of a sample id: the text before ``$_$`` (the whole id if there is none)."""
    return sample_id.split(ID_SEP, 1)[0]


def suite_version() -> str:
    """``msa-debias-bench <version>`` of the installed distribution."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"msa-debias-bench {version('msa-debias-bench')}"
    except PackageNotFoundError:
        return "msa-debias-bench unknown"


def git_commit() -> str | None:
    """HEAD of the git checkout the current working directory is in, ``-dirty`` if tracked files differ from it;
    None outside a git checkout or without git. Provenance of what the user ran, never of the install folder."""
    try:
        cwd = Path.cwd()
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "") if head else None


def user_manifest_root() -> Path:
    """Where ``msabench splits build`` writes manifests without ``--out``: ``manifests/`` in the per-user data
    directory (never the installed package)."""
    from datamodules.dataroot import user_dir

    return user_dir() / "manifests"


def is_package_manifest(path: str | os.PathLike) -> bool:
    """Whether ``path`` lies among the committed manifests of the package (``ood_splits/manifests``)."""
    return Path(path).resolve().is_relative_to(MANIFEST_ROOT.resolve())


def _vocabulary_params(vocab: Vocabulary) -> dict[str, Any]:
    parts = vocab.info["parts"] if vocab.info.get("kind") == "union" else [vocab.info]
    out: dict[str, Any] = {"size": len(vocab), "parts": {part["kind"]: part for part in parts}}
    if vocab.info.get("kind") == "union":
        out["tav_weighting"] = vocab.info["weighting"]
    return out


def build_manifest(
    bundle: DatasetBundle,
    cfg: SplitConfig,
    *,
    dataset: str,
    dataset_config: dict[str, Any] | None = None,
    commit: str | None = None,
) -> tuple[dict[str, Any], AnnealResult, Vocabulary]:
    """Build one OOD set: vocabulary, seeded chains, random baseline, and the manifest dict.

    ``dataset`` is the registry name (the manifest's ``dataset``), ``dataset_config`` its resolved
    config (recorded so the report can reload the same data, and hashed for generated data).
    ``commit`` overrides the recorded git commit (tests; default: :func:`git_commit`).
    """
    check_config(cfg)
    test = bundle.test
    n_test = len(test)
    n_sel = resolved_n_sel(cfg, n_test)
    vocab = build_vocabulary(bundle, cfg)
    if len(vocab) == 0:
        raise VocabularyError(f"empty vocabulary for split.modality={cfg.modality}")
    side = label_sides(test.label, cfg.label_mode)
    for value, what in ((0, "negative"), (1, "non-negative" if cfg.label_mode == "nn" else "positive")):
        if not (side == value).any():
            raise SplitBuildError(
                f"dataset {dataset!r}: the test split has no {what} sample under split.label_mode={cfg.label_mode}; "
                "the objective cannot balance anything"
            )
    problem = Problem(vocab.test_counts, side, vocab.weights, cfg.eps)
    schedule = Schedule(cfg.sa.t0, cfg.sa.cooling, cfg.sa.outer, cfg.sa.n0, cfg.sa.growth)
    result = anneal(problem, n_sel, schedule, chains=cfg.sa.chains, seed=cfg.seed, moves=cfg.sa.moves)
    baseline = random_energies(problem, n_sel, cfg.seed, cfg.random_subsets)
    best = result.best
    ids = test.ids[np.flatnonzero(best.mask)].tolist()
    sha, sha_of = source_fingerprint(bundle, dataset, dataset_config)
    manifest = {
        "name": cfg.set_name(),
        "dataset": dataset,
        "protocol": PROTOCOL,
        "source_sha256": sha,
        "source_sha256_of": sha_of,
        "test_ids_sha256": sha256_lines(test.ids.tolist()),
        "ids_sha256": sha256_lines(ids),
        "ids": ids,
        "seed": int(cfg.seed),
        "objective": {
            "initial": best.initial,
            "final": best.final,
            "chosen_chain": result.chosen,
            "chains": [
                {
                    "chain": c.chain,
                    "initial": c.initial,
                    "final": c.final,
                    "accepted": c.accepted,
                    "acceptance_rate": c.accepted / result.n_proposals,
                    "max_drift": c.drift,
                    "trace": [float(e) for e in c.trace],
                }
                for c in result.chains
            ],
            "random_baseline": {
                "n": int(cfg.random_subsets),
                "mean": float(baseline.mean()),
                "std": float(baseline.std()),
                "min": float(baseline.min()),
            },
        },
        "params": {
            "modality": cfg.modality,
            "modalities": list(MODALITY_SETS[cfg.modality]),
            "label_mode": cfg.label_mode,
            "n_source": n_test,
            "n_sel": n_sel,
            "fraction_selected": n_sel / n_test,
            "n_proposals": result.n_proposals,
            "vocabulary": _vocabulary_params(vocab),
            "split_config": dataclasses.asdict(cfg),
            "dataset_config": dataset_config or {},
        },
        "created_by": {"suite": suite_version(), "git_commit": commit if commit is not None else git_commit()},
    }
    return manifest, result, vocab


def dumps(manifest: dict[str, Any]) -> str:
    """The canonical bytes of a manifest: sorted keys, indent 1, ASCII, trailing newline."""
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=True, allow_nan=False) + "\n"


def manifest_path(root: str | os.PathLike, dataset: str, name: str) -> Path:
    """``<root>/<dataset>/<name>.json``."""
    return Path(root) / dataset / f"{name}.json"


def write_manifest(manifest: dict[str, Any], path: str | os.PathLike) -> Path:
    """Validate (`OODManifest`, the datamodule's check, with the builder's record) and write atomically."""
    path = Path(path)
    OODManifest.from_dict(manifest, path, built=True)
    atomic_write_text(path, dumps(manifest))
    return path


def load_dataset(dataset: str, dataset_config: dict[str, Any] | None = None) -> DatasetBundle:
    """Load a registered dataset with its config dataclass and the recorded/given field values."""
    from omegaconf import OmegaConf

    from datamodules import get_dataset

    entry = get_dataset(dataset)
    merged = OmegaConf.merge(OmegaConf.structured(entry.config_class), OmegaConf.create(dataset_config or {}))
    return entry.load(OmegaConf.to_object(merged))


def split_config_from(data: dict[str, Any] | None) -> SplitConfig:
    """A SplitConfig from a (possibly partial) dict, e.g. a manifest's ``params.split_config``."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(SplitConfig), OmegaConf.create(data or {}))
    return OmegaConf.to_object(merged)


def build_and_write(
    bundle: DatasetBundle,
    cfg: SplitConfig,
    *,
    dataset: str,
    dataset_config: dict[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``build_manifest`` then ``write_manifest`` to ``<root>/<dataset>/<name>.json`` (``root`` None: the per-user
    manifest folder)."""
    manifest, _, _ = build_manifest(bundle, cfg, dataset=dataset, dataset_config=dataset_config)
    path = write_manifest(manifest, manifest_path(root or user_manifest_root(), dataset, manifest["name"]))
    return path, manifest
