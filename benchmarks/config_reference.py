"""The config reference of docs/cli.md as Markdown tables generated from the config dataclasses.

Every key a job, a sweep file or the split builder accepts is a field of a dataclass (``benchmarks.config``,
the method and dataset configs of the registries, ``benchmarks.sweep``, ``ood_splits.builder``). This module walks
those dataclasses and writes one row per key: its dotted name, its type, its default and the comment written above
the field in the source (or the class docstring above the table). `msabench readme` puts the tables into the
``config-*`` blocks of docs/cli.md, so the documented keys and defaults are the code's, never typed by hand.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal, Union

SKIPPED_TYPES = (Any,)


@dataclasses.dataclass(frozen=True)
class KeyRow:
    """One config key: dotted name, type and default as Markdown text, and its source comment (may be empty)."""

    key: str
    type: str
    default: str
    note: str = ""


def _docstring(cls: type) -> str:
    """The class's own docstring as Markdown: paragraphs joined into lines, ``* `` / ``- `` lines as list items
    ('' when it has none: a dataclass without a docstring gets its signature as ``__doc__``, not documentation)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    blocks: list[list[str]] = [[]]
    for line in inspect.cleandoc(doc).splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("* ", "- ")):
            blocks.append([])
        if stripped:
            blocks[-1].append(stripped)
    items = [" ".join(block) for block in blocks if block]
    text = "\n".join(f"{item}" if item.startswith(("* ", "- ")) else f"\n{item}\n" for item in items)
    return re.sub(r"\n{3,}", "\n\n", text).strip().replace("``", "`")


def _markdown(text: str) -> str:
    """A source comment as a table cell: reStructuredText literals (````x````) as code spans, ``|`` escaped."""
    return text.replace("``", "`").replace("|", "\\|")


def field_comments(cls: type) -> dict[str, str]:
    """The comment lines written directly above each field of ``cls`` in its source (or the comment at the end of
    the field's line), joined; fields without one are absent."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^(\w+)\s*:", stripped)
        if match and match.group(1) in names and match.group(1) not in comments:
            inline = line.split("  # ", 1)[1].strip() if "  # " in line else ""
            text = " ".join(pending) or inline
            if text:
                comments[match.group(1)] = text
        pending = []
    return comments


def type_text(tp: Any) -> str:
    """A field type as short readable text: ``int``, ``list[str]``, ``float or null``, ``a | b`` for a Literal."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        text = " or ".join(type_text(a) for a in rest)
        return f"{text} or null" if len(rest) < len(args) else text
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(type_text(a) for a in args)}]"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def value_text(value: Any) -> str:
    """A default as it is written in an override: ``''`` for the empty string, ``null``, ``true``, ``[a, b]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else "''"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {value_text(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def key_rows(cls: type, prefix: str = "", instance: Any = None) -> Iterator[KeyRow]:
    """Every key of dataclass ``cls`` (and of the dataclasses nested in it) with its default, depth first, in field
    order. A dict field with a non-empty default gives one key per entry (``optim.lr.head``); a dict of dataclasses
    gives the keys of one entry under ``<name>.<label>``; fields typed ``Any`` (filled at run time) are left out."""
    instance = instance if instance is not None else cls()
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{prefix}{f.name}"
        if tp in SKIPPED_TYPES:
            continue
        value = getattr(instance, f.name)
        note = _markdown(comments.get(f.name, ""))
        if _is_dataclass_type(tp):
            yield from key_rows(tp, f"{key}.", value)
            continue
        if typing.get_origin(tp) is dict:
            value_type = typing.get_args(tp)[1]
            if _is_dataclass_type(value_type):
                yield KeyRow(key, f"map of label to {value_type.__name__}", value_text(value), note)
                yield from key_rows(value_type, f"{key}.<label>.")
                continue
            if value:
                for entry, entry_value in value.items():
                    yield KeyRow(f"{key}.{entry}", type_text(value_type), value_text(entry_value), note)
                continue
        yield KeyRow(key, type_text(tp), value_text(value), note)


def table(rows: list[KeyRow]) -> str:
    """Rows as a Markdown table (key, type, default, notes)."""
    lines = ["| key | type | default | notes |", "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| `{row.key}` | {row.type} | `{row.default}` | {row.note} |")
    return "\n".join(lines) + "\n"


def _section(title: str, cls: type, rows: list[KeyRow]) -> str:
    doc = _docstring(cls)
    return f"**{title}**\n\n" + (f"{doc}\n\n" if doc else "") + table(rows)


def render_job_keys() -> str:
    """The job-level keys of `msabench run` (``benchmarks.config.JobConfig`` without ``model`` and ``source``)."""
    from benchmarks.config import JobConfig

    return table(list(key_rows(JobConfig)))


def render_model_keys() -> str:
    """The keys every method has (``methods.base.MethodConfig``: the LF-TF backbone and the optimiser), then the
    dataset presets that change their defaults."""
    from datamodules import DATASETS
    from methods.base import MethodConfig

    out = table(list(key_rows(MethodConfig, "model.")))
    presets: dict[tuple[tuple[str, str], ...], list[str]] = {}
    for name, entry in DATASETS.items():
        items = tuple((key, value_text(value)) for key, value in entry.method_preset.items())
        presets.setdefault(items, []).append(name)
    lines = ["", "Dataset presets (applied before your overrides; `data.preset=false` turns them off):", ""]
    for items, names in presets.items():
        what = ", ".join(f"`model.{key}={value}`" for key, value in items) if items else "none"
        lines.append(f"* {', '.join(f'`{n}`' for n in names)}: {what}")
    return out + "\n".join(lines) + "\n"


def render_method_keys(only: str | None = None) -> str:
    """Per registered method (or only method ``only``), the keys it adds to ``MethodConfig`` and the inherited ones
    whose default it changes."""
    from methods import METHODS, get_method
    from methods.base import MethodConfig

    common = {row.key: row for row in key_rows(MethodConfig)}
    parts = []
    for name, cls in ({only: get_method(only)} if only else METHODS).items():
        config_class = cls.config_class
        rows = [
            dataclasses.replace(row, key=f"{name}.{row.key}")
            for row in key_rows(config_class)
            if row.key not in common or common[row.key].default != row.default
        ]
        title = f"`{name}` ({config_class.__name__})"
        if not rows:
            doc = _docstring(config_class)
            parts.append(f"**{title}**: no keys beyond the common ones." + (f"\n\n{doc}" if doc else "") + "\n")
            continue
        parts.append(_section(title, config_class, rows))
    return "\n".join(parts)


def render_dataset_keys() -> str:
    """Per registered dataset, its ``<dataset>.*`` keys; a dataset with the same keys as an earlier one lists only
    the defaults that differ."""
    from datamodules import DATASETS

    seen: dict[tuple[str, ...], tuple[str, dict[str, str]]] = {}
    parts = []
    for name, entry in DATASETS.items():
        rows = [dataclasses.replace(row, key=f"{name}.{row.key}") for row in key_rows(entry.config_class)]
        keys = tuple(row.key.split(".", 1)[1] for row in rows)
        defaults = {row.key.split(".", 1)[1]: row.default for row in rows}
        if keys in seen:
            first, first_defaults = seen[keys]
            changed = ", ".join(f"`{k}={v}`" for k, v in defaults.items() if first_defaults[k] != v)
            parts.append(f"**`{name}`**: the keys of `{first}`" + (f", defaults: {changed}" if changed else "") + ".\n")
            continue
        seen[keys] = (name, defaults)
        parts.append(_section(f"`{name}` ({entry.config_class.__name__})", entry.config_class, rows))
    return "\n".join(parts)


def render_sweep_keys() -> str:
    """The keys of a sweep YAML (``benchmarks.sweep.SweepConfig``)."""
    from benchmarks.sweep import SweepConfig

    return table(list(key_rows(SweepConfig)))


def render_split_keys() -> str:
    """The ``split.*`` keys of `msabench splits build` (``ood_splits.builder.SplitConfig``)."""
    from ood_splits.builder import SplitConfig

    return table(list(key_rows(SplitConfig, "split.")))
