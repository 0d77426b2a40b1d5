"""Markers on config dataclass fields: what a field means for a job's run hash and for a split manifest.

Each fact is written where the field is defined, not in a central list:

* ``non_semantic(...)``: the field never changes what is computed (progress bars, loggers, output paths, caches,
  the encoder's CPU thread count). Never part of the run hash (`benchmarks.config.config_hash`), never compared
  with the dataset config a split manifest records.
* ``hash_neutral(default, neutral=...)``: a knob added after run folders existed. While it holds ``neutral`` (the
  value that reproduces the earlier behaviour; the field's default unless given) it is left out of the run hash, so
  adding the knob moves no existing run folder; any other value is hashed. A manifest that does not record the
  knob was built at ``neutral``.
* ``data_neutral(...)``: where the data is read from, or how it is encoded for a model (roots, paths, the text
  encoder and its batching), never which samples, labels and raw inputs it holds. Hashed like any field, but not
  compared with a manifest's recorded dataset config: the source file's SHA-256 and the test ids' hash that the
  manifest records check the data itself.

The module lives in ``datamodules``, the lowest layer, so dataset, method and job configs can all use it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, Field
from typing import Any

_SEMANTIC = "semantic"
_NEUTRAL = "hash_neutral"
_DATA_NEUTRAL = "data_neutral"


def non_semantic(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A dataclass field that never changes what a job computes: out of the run hash and the manifest check."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_SEMANTIC: False})


def hash_neutral(default: Any, *, neutral: Any = MISSING) -> Any:
    """A dataclass field added after run folders existed, left out of the run hash while it equals ``neutral``
    (default: ``default``), the value that reproduces the behaviour from before the field existed."""
    return dataclasses.field(default=default, metadata={_NEUTRAL: default if neutral is MISSING else neutral})


def data_neutral(default: Any = MISSING, *, default_factory: Any = MISSING) -> Any:
    """A dataset config field that says where the data is or how it is encoded, not what it holds: hashed, but not
    compared with a split manifest's recorded dataset config."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_DATA_NEUTRAL: True})


def is_semantic(f: Field) -> bool:
    """False for a field marked :func:`non_semantic`."""
    return f.metadata.get(_SEMANTIC, True)


def has_neutral(f: Field) -> bool:
    """Whether the field is marked :func:`hash_neutral`."""
    return _NEUTRAL in f.metadata


def neutral_value(f: Field) -> Any:
    """The value of a :func:`hash_neutral` field that is left out of the run hash."""
    return f.metadata[_NEUTRAL]


def describes_data(f: Field) -> bool:
    """Whether a dataset config field changes the samples, labels or raw inputs (what a manifest is built on)."""
    return is_semantic(f) and not f.metadata.get(_DATA_NEUTRAL, False)
