"""Provenance of the machine and library build a number was computed on.

CPU floating point differs between machines (vector width, fused multiply-add, BLAS kernels), and
training amplifies it, so the same seed reproduces a number bit for bit only on the same machine,
library build and thread count. Run folders and the CI reference record this description, and the
CI check prints where the current one differs from the reference's.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from ood_splits.builder import git_commit  # one home for the repository commit (manifests record it too)

__all__ = ["COMPARED_KEYS", "differences", "environment", "git_commit", "library_versions"]

# Environment variables that change which CPU kernels torch / MKL / oneDNN dispatch to.
KERNEL_ENV_VARS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
)
# CPU flags that decide the floating-point path of the kernels (vector width, FMA, AMX).
RELEVANT_CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
)
# The keys whose difference can change the numbers (compared by the CI check).
COMPARED_KEYS = ("cpu_model", "cpu_flags", "torch_cpu_capability", "kernel_env", "threads", "versions")


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that compute or aggregate the numbers."""
    import lightning
    import numpy as np
    import omegaconf
    import pandas as pd
    import sklearn
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "omegaconf": omegaconf.__version__,
    }


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, flags) from /proc/cpuinfo where it exists, else what ``platform`` knows."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = value.split()
                if model and flags:
                    break
    except OSError:
        pass
    return model, flags


def environment(threads: int | None = None) -> dict[str, Any]:
    """What decides the floating-point path here: CPU model and flags, torch's kernel dispatch,
    the environment variables that steer it, the thread count and the library versions."""
    import torch

    model, flags = _cpuinfo()
    present = set(flags)
    return {
        "machine": platform.machine(),
        "system": platform.system(),
        "cpu_model": model,
        "cpu_count": os.cpu_count() or 0,
        "cpu_flags": [f for f in RELEVANT_CPU_FLAGS if f in present],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV_VARS if k in os.environ},
        "threads": int(threads if threads is not None else torch.get_num_threads()),
        "versions": library_versions(),
    }


def differences(reference: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, reference value, current value) for every compared key that differs (nested dicts by sub-key)."""
    out: list[tuple[str, Any, Any]] = []
    for key in COMPARED_KEYS:
        ref, cur = reference.get(key), current.get(key)
        if isinstance(ref, dict) and isinstance(cur, dict):
            for sub in sorted(set(ref) | set(cur)):
                if ref.get(sub) != cur.get(sub):
                    out.append((f"{key}.{sub}", ref.get(sub), cur.get(sub)))
        elif ref != cur:
            out.append((key, ref, cur))
    return out
