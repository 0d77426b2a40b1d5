"""The dataset registry: name -> how to build a DatasetBundle from a config dataclass.

``method_preset`` holds dataset-specific method defaults (dotted keys into the method config),
applied before the user's overrides and visible in the resolved config. The MOSI preset is
GEAR's MOSI override (METHODS.md §2): dropouts 0.3 and every weight decay 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datamodules.schema import Batch, DatasetBundle, FeatureSpec, SplitData
from datamodules.synthetic import SyntheticConfig, generate

MOSI_PRESET: dict[str, Any] = {
    "backbone.text.dropout": 0.3,
    "backbone.audio.dropout": 0.3,
    "backbone.vision.dropout": 0.3,
    "backbone.lstm_dropout": 0.3,
    "optim.weight_decay": {"text_encoder": 0.0, "audio_lstm": 0.0, "vision_lstm": 0.0, "modality": 0.0, "head": 0.0},
}


@dataclass
class MMSAConfig:
    """Any MMSA pickle (``aligned_50.pkl`` / ``unaligned_50.pkl``) given by path."""

    path: str = ""
    nonfinite: str = "error"


def _load_mmsa(cfg: MMSAConfig) -> DatasetBundle:
    from datamodules.mmsa import load_mmsa

    if not cfg.path:
        raise ValueError("dataset=mmsa needs mmsa.path=/path/to/unaligned_50.pkl (an MMSA release pickle)")
    return load_mmsa(cfg.path, nonfinite=cfg.nonfinite)


@dataclass
class DatasetEntry:
    config_class: type
    load: Callable[[Any], DatasetBundle]
    description: str
    method_preset: dict[str, Any] = field(default_factory=dict)


DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(
        SyntheticConfig,
        generate,
        "seeded MOSI-shaped data with planted shortcuts and ground-truth OOD sets (no download)",
        MOSI_PRESET,
    ),
    "mmsa": DatasetEntry(MMSAConfig, _load_mmsa, "an MMSA release pickle given by mmsa.path"),
}


def get_dataset(name: str) -> DatasetEntry:
    """The registered entry for ``name``, with the valid names on a typo."""
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {', '.join(DATASETS)}") from None


__all__ = ["DATASETS", "Batch", "DatasetBundle", "FeatureSpec", "SplitData", "get_dataset"]
