"""`OODManifest`: the one split-manifest type, validated in one place.

A manifest names an OOD test set and lists the ids of the standard test split it keeps (docs/design.md). The
split builder (`ood_splits.builder`) writes it, the datamodule (`datamodules.datamodule`) loads it as an extra
test set, and the split report (`ood_splits.report`) reads it; all three go through :meth:`OODManifest.load` /
:meth:`OODManifest.from_dict`, so a manifest one of them accepts the others accept too.

A manifest written by the builder records the dataset config it was built on (``params.dataset_config``).
:meth:`OODManifest.config_differences` compares it with the config a job loads its data with, on the fields that
change the data (`datamodules.fields.describes_data`: not paths, roots, caches or thread counts), so that a
synthetic manifest built for one generator configuration is not used on another (the ids would still resolve).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from datamodules.fields import describes_data, has_neutral, neutral_value
from datamodules.schema import DataError

# Names a test set may not take: the standard splits and the leaderboard's derived columns.
RESERVED_SET_NAMES = ("train", "valid", "test", "ood_avg", "gap", "headline", "worst_group", "bias_id_auroc")
_SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# What `msabench splits build` records besides name and ids; the report needs it.
BUILD_RECORD = ("dataset", "ids", "params", "objective", "seed")


def check_set_name(name: object, where: str | Path) -> None:
    """Refuse a test-set name that is not a plain identifier or is reserved, naming ``where``."""
    if not isinstance(name, str) or not _SET_NAME.match(name):
        raise DataError(f"{where}: 'name' must be a plain identifier (letters, digits, _), got {name!r}")
    if name in RESERVED_SET_NAMES:
        raise DataError(f"{where}: 'name' {name!r} is reserved (a split or a leaderboard column: {RESERVED_SET_NAMES})")


@dataclass(frozen=True)
class OODManifest:
    """A split manifest: ``name`` (the test set's name), ``ids`` (over the standard test split) and, when written by
    the builder, the record of how it was built (see `ood_splits.builder.build_manifest`)."""

    name: str
    ids: list[str]
    dataset: str = ""
    protocol: str = ""
    seed: Optional[int] = None
    source_sha256: Optional[str] = None
    source_sha256_of: Optional[str] = None
    test_ids_sha256: Optional[str] = None
    ids_sha256: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    created_by: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, *, built: bool = False) -> OODManifest:
        """Read and validate the JSON manifest at ``path`` (:meth:`from_dict`), naming the file in every error."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read split manifest ({exc})") from exc
        return cls.from_dict(data, path, built=built)

    @classmethod
    def from_dict(cls, data: object, where: str | Path, *, built: bool = False) -> OODManifest:
        """Validate a manifest's JSON object: known keys only, each of its type; ``name`` a plain identifier that is
        not reserved; ``ids`` a non-empty list of distinct strings. ``built`` also requires the builder's record
        (`BUILD_RECORD`). Errors name ``where`` and the key."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: a split manifest must be a JSON object, got {type(data).__name__}")
        for key in ("name", "ids", *(BUILD_RECORD if built else ())):
            if key not in data:
                hint = "; was it written by `msabench splits build`?" if key in BUILD_RECORD else ""
                raise DataError(f"{where}: manifest has no key {key!r}{hint}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"{where}: unknown manifest key(s) {unknown}; expected keys among {sorted(known)}")
        check_set_name(data["name"], where)
        ids = data["ids"]
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{where}: 'ids' must be a list of sample-id strings, got {type(ids).__name__}")
        if not ids:
            raise DataError(f"{where}: 'ids' is empty: an OOD set needs at least one sample")
        if len(set(ids)) != len(ids):
            raise DataError(f"{where}: key 'ids' has {len(ids) - len(set(ids))} duplicate ids")
        for key in ("dataset", "protocol", "source_sha256", "source_sha256_of", "test_ids_sha256", "ids_sha256"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise DataError(f"{where}: {key!r} must be a string, got {type(data[key]).__name__}")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise DataError(f"{where}: 'seed' must be an integer, got {type(seed).__name__}")
        for key in ("params", "objective", "created_by"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise DataError(f"{where}: {key!r} must be a JSON object, got {type(data[key]).__name__}")
        config = (data.get("params") or {}).get("dataset_config")
        if config is not None and not isinstance(config, dict):
            raise DataError(f"{where}: 'params.dataset_config' must be a JSON object, got {type(config).__name__}")
        return cls(**{key: value for key, value in data.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """The manifest as its JSON object."""
        return dataclasses.asdict(self)

    @property
    def dataset_config(self) -> dict[str, Any]:
        """The dataset config the builder recorded ({} when the manifest records none)."""
        return self.params.get("dataset_config") or {}

    def config_differences(self, config: object) -> list[str]:
        """The fields that change the data (`describes_data`) on which the dataset config dataclass ``config``
        differs from the recorded one, as ``key: manifest X, here Y``. A field the manifest does not record counts
        at its hash-neutral value (it was built before the field existed), else as a difference. Empty when the
        manifest records no config (a hand-written manifest)."""
        recorded = self.dataset_config
        if not recorded or not dataclasses.is_dataclass(config):
            return []
        differences = []
        for f in dataclasses.fields(config):
            if not describes_data(f):
                continue
            here = getattr(config, f.name)
            if f.name in recorded:
                there = recorded[f.name]
            elif has_neutral(f):
                there = neutral_value(f)
            else:
                differences.append(f"{f.name}: not recorded by the manifest, here {here!r}")
                continue
            if there != here:
                differences.append(f"{f.name}: manifest {there!r}, here {here!r}")
        return differences
