"""The dataset registry: name -> how to build a DatasetBundle from a config dataclass.

``method_preset`` holds dataset-specific method defaults (dotted keys into the method config),
applied before the user's overrides and visible in the resolved config. The MOSI preset is
GEAR's MOSI override (its reference script's MOSI setting): dropouts 0.3 and every weight decay 0; every MOSI-family
dataset (``synthetic`` and its scenario presets, ``mosi``, ``mosi_text``, ``mosi_utt``) gets it, the
MOSEI ones none.

Synthetic: ``synthetic`` (scenario ``independent`` by default) and one named dataset per scenario
(datamodules/synthetic.py), ``synthetic_shared``, ``synthetic_independent`` and ``synthetic_single``: the same
generator and config fields with that ``scenario`` as default (``<name>.bias=...`` etc. as for
``synthetic``).

Real data: ``mosi`` / ``mosei`` are MMSA release pickles (memory-mapped cache after the first
load), ``mosi_text`` / ``mosei_text`` the real transcripts with the offline text encoder, and
``mosi_utt`` the real bc-LSTM utterance features; see their modules for the file layouts.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datamodules.dataroot import resolve_data_root
from datamodules.fields import data_neutral, hash_neutral, non_semantic
from datamodules.mmsa import Nonfinite
from datamodules.schema import Batch, DatasetBundle, FeatureSpec, SplitData
from datamodules.synthetic import SCENARIOS, Scenario, SyntheticConfig, generate
from datamodules.transcripts import MOSITextConfig, TranscriptConfig, load_mosei_text, load_mosi_text
from datamodules.utterance import UtteranceConfig, load_mosi_utterance

MOSI_PRESET: dict[str, Any] = {
    "backbone.text.dropout": 0.3,
    "backbone.audio.dropout": 0.3,
    "backbone.vision.dropout": 0.3,
    "backbone.lstm_dropout": 0.3,
    "optim.weight_decay": {"text_encoder": 0.0, "audio_lstm": 0.0, "vision_lstm": 0.0, "modality": 0.0, "head": 0.0},
}


@dataclass
class MMSAConfig:
    """Any MMSA pickle (``aligned_50.pkl`` / ``unaligned_50.pkl``) given by path.

    ``cache``: convert it once into memory-mapped arrays in ``cache_dir`` ('' = ``$MSABENCH_CACHE`` or
    ~/.cache/msabench) and map those on later loads; ``verify_hash`` re-hashes the pickle on every load
    instead of trusting its remembered SHA-256 (same path, size, mtime).
    """

    path: str = data_neutral("")
    nonfinite: Nonfinite = "error"
    cache: bool = non_semantic(True)
    cache_dir: str = non_semantic("")
    verify_hash: bool = non_semantic(False)


def _read_mmsa(path: Path, cfg: MMSAConfig, name: str | None) -> DatasetBundle:
    from datamodules.mmsa import load_mmsa, load_mmsa_cached

    if cfg.cache:
        return load_mmsa_cached(
            path, nonfinite=cfg.nonfinite, name=name, cache_dir=cfg.cache_dir or None, verify_hash=cfg.verify_hash
        )
    return load_mmsa(path, nonfinite=cfg.nonfinite, name=name)


def _load_mmsa(cfg: MMSAConfig) -> DatasetBundle:
    if not cfg.path:
        raise ValueError("dataset=mmsa needs mmsa.path=/path/to/unaligned_50.pkl (an MMSA release pickle)")
    return _read_mmsa(Path(cfg.path).expanduser(), cfg, None)


@dataclass
class MMSAReleaseConfig(MMSAConfig):
    """``mosi`` / ``mosei``: the MMSA release pickle of that dataset.

    ``path``: the pickle or the folder holding it; when empty, ``$MSABENCH_MOSI_PKL`` /
    ``$MSABENCH_MOSEI_PKL`` (file or folder), else ``<root>/<mosi|mosei>/``. ``aligned`` picks
    ``aligned_50.pkl`` over ``unaligned_50.pkl`` in a folder. ``root``: the data folder ('' =
    ``$MSABENCH_DATA`` or the per-user data directory).
    """

    aligned: bool = data_neutral(False)  # picks the file, whose SHA-256 a manifest checks
    root: str = data_neutral("")


MMSA_VARIANTS = ("unaligned_50.pkl", "aligned_50.pkl")


def mmsa_release_path(name: str, cfg: MMSAReleaseConfig) -> Path:
    """Where the ``mosi`` / ``mosei`` pickle is, or a FileNotFoundError saying where to put it and how to check it."""
    variant = MMSA_VARIANTS[int(cfg.aligned)]
    env = f"MSABENCH_{name.upper()}_PKL"
    given, origin = (cfg.path, f"{name}.path") if cfg.path else (os.environ.get(env, ""), env)
    if given:
        path = Path(given).expanduser()
        if path.is_dir():
            path = path / variant
        elif path.name in MMSA_VARIANTS and path.name != variant:
            raise ValueError(
                f"{name}.aligned={str(cfg.aligned).lower()} asks for {variant}, but {origin} points to {path.name} "
                f"({path}); set {name}.aligned={str(not cfg.aligned).lower()} or point {origin} at {variant}"
            )
    else:
        root = resolve_data_root(cfg.root, field=f"{name}.root")
        path = root.path / name / variant
        origin = f"the data root {root.path} ({root.why})"
    if not path.is_file():
        upper = name.upper()
        raise FileNotFoundError(
            f"{upper} MMSA pickle not found at {path} (from {origin}). Download {upper}/Processed/{variant} of the "
            f"MMSA release (thuiar/MMSA, README section 'Datasets'; `msabench data fetch` does not get it, see "
            f"docs/data.md) and put it there, or set {name}.path=/path/to/{variant} "
            f"(the file or its folder) or the environment variable {env}. Check the download with "
            f"`sha256sum {variant}` against the checksum published with your copy; split manifests record the "
            f"SHA-256 of the file they were built from and refuse a different one."
        )
    return path


def _load_release(name: str) -> Callable[[MMSAReleaseConfig], DatasetBundle]:
    def load(cfg: MMSAReleaseConfig) -> DatasetBundle:
        return _read_mmsa(mmsa_release_path(name, cfg), cfg, name)

    load.__doc__ = f"The {name} MMSA release pickle (see MMSAReleaseConfig)."
    return load


@dataclass
class SyntheticSharedConfig(SyntheticConfig):
    """``synthetic_shared``: the synthetic benchmark with one confounder per clip (scenario ``shared``)."""

    scenario: Scenario = hash_neutral("shared", neutral="independent")


@dataclass
class SyntheticIndependentConfig(SyntheticConfig):
    """``synthetic_independent``: the synthetic benchmark with independent shortcuts (scenario ``independent``)."""

    scenario: Scenario = hash_neutral("independent")


@dataclass
class SyntheticSingleConfig(SyntheticConfig):
    """``synthetic_single``: the synthetic benchmark with a shortcut in ``single_modality`` only (scenario single)."""

    scenario: Scenario = hash_neutral("single", neutral="independent")


SYNTHETIC_SCENARIO_CONFIGS: dict[str, type[SyntheticConfig]] = {
    "shared": SyntheticSharedConfig,
    "independent": SyntheticIndependentConfig,
    "single": SyntheticSingleConfig,
}
assert set(SYNTHETIC_SCENARIO_CONFIGS) == set(SCENARIOS), "one named dataset per synthetic scenario"
_SCENARIO_TEXT = {
    "shared": "one confounder per clip shown by every modality",
    "independent": "independent shortcut per modality",
    "single": "a shortcut in synthetic.single_modality only (default text)",
}


@dataclass
class DatasetEntry:
    config_class: type
    load: Callable[[Any], DatasetBundle]
    description: str
    method_preset: dict[str, Any] = field(default_factory=dict)
    # Whether the data records shortcut ground truth (z, groups): what oracle and reference rows need.
    has_ground_truth: bool = False


DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(
        SyntheticConfig,
        generate,
        "seeded MOSI-shaped data with planted shortcuts and ground-truth OOD sets (no download)",
        MOSI_PRESET,
        has_ground_truth=True,
    ),
    **{
        f"synthetic_{scenario}": DatasetEntry(
            config_class,
            generate,
            f"synthetic with scenario={scenario}: {_SCENARIO_TEXT[scenario]}",
            MOSI_PRESET,
            has_ground_truth=True,
        )
        for scenario, config_class in SYNTHETIC_SCENARIO_CONFIGS.items()
    },
    "mmsa": DatasetEntry(MMSAConfig, _load_mmsa, "an MMSA release pickle given by mmsa.path"),
    "mosi": DatasetEntry(
        MMSAReleaseConfig,
        _load_release("mosi"),
        "CMU-MOSI MMSA pickle (unaligned_50 / aligned_50); mosi.path or $MSABENCH_MOSI_PKL",
        MOSI_PRESET,
    ),
    "mosei": DatasetEntry(
        MMSAReleaseConfig,
        _load_release("mosei"),
        "CMU-MOSEI MMSA pickle (unaligned_50 / aligned_50); mosei.path or $MSABENCH_MOSEI_PKL",
    ),
    "mosi_text": DatasetEntry(
        MOSITextConfig,
        load_mosi_text,
        "real MOSI transcripts + labels (label.csv or .csd), standard folds, offline MiniLM encoding",
        MOSI_PRESET,
    ),
    "mosei_text": DatasetEntry(
        TranscriptConfig,
        load_mosei_text,
        "real MOSEI transcripts + labels (label.csv), standard folds, offline MiniLM encoding",
    ),
    "mosi_utt": DatasetEntry(
        UtteranceConfig,
        load_mosi_utterance,
        "real MOSI bc-LSTM utterance features (t/a/v, length 1), speaker-independent split, valid by videos",
        MOSI_PRESET,
    ),
}


def get_dataset(name: str) -> DatasetEntry:
    """The registered entry for ``name``, with the valid names on a typo."""
    try:
        return DATASETS[name]
    except KeyError:
        match = difflib.get_close_matches(str(name), list(DATASETS), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise KeyError(f"unknown dataset {name!r}{hint}; registered datasets: {', '.join(DATASETS)}") from None


__all__ = [
    "DATASETS",
    "Batch",
    "DatasetBundle",
    "FeatureSpec",
    "MMSAConfig",
    "MMSAReleaseConfig",
    "SYNTHETIC_SCENARIO_CONFIGS",
    "SplitData",
    "get_dataset",
    "mmsa_release_path",
]
