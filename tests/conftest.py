"""Shared fixtures: tiny synthetic data so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from datamodules.schema import Batch, FeatureSpec  # noqa: E402
from datamodules.synthetic import SyntheticConfig, generate  # noqa: E402
from methods.backbone import FusionConfig  # noqa: E402

# The real data of a development checkout: ../shared/data beside it, used when MSABENCH_DATA is unset (the product
# itself never looks there). SHARED_DATA is the folder the tests read; tests that need it skip when it is absent.
_BESIDE = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("MSABENCH_DATA") and _BESIDE.is_dir():
    os.environ["MSABENCH_DATA"] = str(_BESIDE)
SHARED_DATA = Path(os.environ.get("MSABENCH_DATA") or _BESIDE)


def tiny_synthetic(**overrides) -> SyntheticConfig:
    """A small, fast synthetic config (same generative story, fewer and shorter samples)."""
    cfg = SyntheticConfig(
        n_train=192,
        n_valid=64,
        n_test=96,
        n_ood=64,
        dims={"text": 16, "audio": 5, "vision": 7},
        max_len={"text": 12, "audio": 9, "vision": 8},
        min_len={"text": 4, "audio": 2, "vision": 1},
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def tiny_method(method_cls, modalities=None, n_batch: int = 16, **fields):
    """A method built (seed 0) on tiny synthetic data with a small fusion FF, and a training batch
    of ``n_batch`` samples; ``fields`` go to the method's config dataclass."""
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic(**({"modalities": modalities} if modalities else {})))
    cfg = method_cls.config_class(**fields)
    cfg.backbone.fusion = FusionConfig(ff=64)
    method = method_cls(FeatureSpec.from_split(bundle.train), cfg)
    return method, Batch.from_split(bundle.train, np.arange(n_batch))


@pytest.fixture
def tiny_cfg() -> SyntheticConfig:
    return tiny_synthetic()


TINY_JOB = [
    "synthetic.n_train=192",
    "synthetic.n_valid=64",
    "synthetic.n_test=96",
    "synthetic.n_ood=64",
    "synthetic.dims.text=16",
    "synthetic.dims.vision=7",
    "synthetic.max_len.text=12",
    "synthetic.max_len.audio=9",
    "synthetic.max_len.vision=8",
    "synthetic.min_len.audio=2",
    "synthetic.min_len.vision=1",
    "trainer.max_epochs=3",
    "trainer.progress_bar=false",
    "model.backbone.fusion.ff=64",
]
