"""Evaluation rows gathered across processes before metrics or model selection.

With ``trainer.devices > 1`` (DDP), Lightning shards the validation and test loaders: every process
sees every ``world_size``-th batch, and the last batches are repeated so that all processes get the
same number. Metrics and selection must see each sample exactly once, so every process sends its
rows (with their dataset index) to all others; duplicates are dropped and rows are put back in index
order, which is the order a single process sees them in (its evaluation loaders are sequential).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.distributed as dist


def world_size(trainer: Any) -> int:
    """The number of processes of ``trainer`` (1 without a trainer or outside DDP)."""
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def gather_rows(
    trainer: Any, index: np.ndarray, columns: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Every process's ``(index, columns)`` rows, each dataset index once, sorted by index.

    A single process returns its input unchanged (bit for bit, same order). ``columns`` are arrays with
    one row per entry of ``index``; the same keys on every process.
    """
    if world_size(trainer) <= 1 or not (dist.is_available() and dist.is_initialized()):
        return index, columns
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (np.asarray(index), {k: np.asarray(v) for k, v in columns.items()}))
    all_index = np.concatenate([p[0] for p in parts])
    unique, first = np.unique(all_index, return_index=True)
    return unique, {key: np.concatenate([p[1][key] for p in parts])[first] for key in columns}


__all__ = ["gather_rows", "world_size"]
