"""Where the real data lives: the data root and the per-user directories of the suite.

The data root is the folder holding ``mosi/`` and ``mosei/`` (the files ``msabench data fetch`` builds,
and the MMSA pickles a user brings). It is, in this order: the dataset's ``root`` config field (or
``--root`` of ``msabench data``), else the environment variable ``$MSABENCH_DATA``, else the per-user
data directory of the platform (``platformdirs.user_data_dir("msa-debias-bench")``, e.g.
``~/.local/share/msa-debias-bench`` on Linux). The product never looks beside its own install folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

APP_NAME = "msa-debias-bench"
DATA_ENV = "MSABENCH_DATA"


def user_dir() -> Path:
    """The suite's per-user data directory (platformdirs); built split manifests also go below it."""
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False))


class DataRoot(NamedTuple):
    """A resolved data root and why it was chosen: ``origin`` is ``config``, ``env`` or ``user``."""

    path: Path
    origin: str
    why: str


def resolve_data_root(override: str | os.PathLike | None = None, *, field: str = "root") -> DataRoot:
    """The data root with its origin: ``override`` (the config field named ``field``), else ``$MSABENCH_DATA``,
    else the per-user data directory."""
    if override:
        return DataRoot(Path(override).expanduser(), "config", f"set by {field}")
    env = os.environ.get(DATA_ENV, "")
    if env:
        return DataRoot(Path(env).expanduser(), "env", f"set by the environment variable {DATA_ENV}")
    return DataRoot(user_dir(), "user", f"the per-user data directory, as neither {field} nor {DATA_ENV} is set")


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The data root folder (see :func:`resolve_data_root`)."""
    return resolve_data_root(override).path


def require_file(path: Path, what: str, how: str) -> Path:
    """``path`` if it is a file, else a FileNotFoundError saying what is missing and what to do."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found at {path}. {how}")
    return path


def missing_data_hint(field: str, dataset: str, override: str | os.PathLike | None = None) -> str:
    """The instruction shown when a file of ``dataset`` (a ``msabench data fetch`` name) is missing under the data
    root that ``override`` (the config field ``field``) or the environment selected."""
    root = resolve_data_root(override, field=field)
    where = f" --root {root.path}" if root.origin == "config" else ""
    return (
        f"The data root is {root.path} ({root.why}). Build the files with `msabench data fetch {dataset}{where}` "
        f"(downloads the pinned public sources and checks their SHA-256; offline, add `--from DIR` to read them from "
        f"a local mirror), or point {field}=/path/to/data or the environment variable {DATA_ENV}=/path/to/data at a "
        "folder holding mosi/ and mosei/. `msabench data list` shows what is there; docs/data.md describes the files."
    )


__all__ = [
    "APP_NAME",
    "DATA_ENV",
    "DataRoot",
    "data_root",
    "missing_data_hint",
    "require_file",
    "resolve_data_root",
    "user_dir",
]
