"""Two CPU processes (DDP, gloo): evaluation rows are gathered before metrics and model selection.

Lightning shards the validation and test loaders across processes (each process gets every 2nd batch,
the last batch repeated to even them out). Without a gather every process would score and select on its
own half of the validation set. These tests run ``msabench run`` with ``trainer.devices=2
trainer.strategy=ddp`` in a subprocess (Lightning re-launches the command for rank 1) and check the run
folder rank 0 writes against evaluations that do not go through the sharded loaders.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist

from datamodules.synthetic import generate
from methods.epoch_records import load_epoch_records
from methods.metrics import msa_metrics
from tests.conftest import TINY_JOB, tiny_synthetic

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed with gloo is not available"
)

# eval batches of 20: valid 64 rows = 4 batches, test 96 = 5 batches (one repeated on rank 1), OOD 64 = 4.
JOB = [*TINY_JOB, "data.eval_batch_size=20", "trainer.progress_bar=false"]
FROZEN = [f"model.optim.lr.{group}=0.0" for group in ("text_encoder", "audio_lstm", "vision_lstm", "modality", "head")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(root: Path, *extra: str, devices: int = 1) -> dict:
    """``msabench run`` in a fresh process; the run folder's result.json, with the folder under ``_dir``."""
    env = {**os.environ, "WANDB_MODE": "disabled", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env.pop("LOCAL_RANK", None)
    args = [*JOB, f"output.root={root}", *extra]
    if devices > 1:
        args += [f"trainer.devices={devices}", "trainer.strategy=ddp"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "run", *args],
        env=env, capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    folders = [p for p in (root / "manual").iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1, folders  # rank 1 wrote nothing of its own
    result = json.loads((folders[0] / "result.json").read_text())
    result["_dir"] = folders[0]
    return result


def test_ddp_gathers_every_row_once_before_metrics_and_selection(tmp_path):
    res = _run(tmp_path, devices=2)
    bundle = generate(tiny_synthetic())
    records = load_epoch_records(res["_dir"] / "epochs.npz")

    # Validation: every process selected on the whole set, each row once, in dataset order.
    valid = records.sets["valid"]
    np.testing.assert_array_equal(valid.label, bundle.valid.label.astype(np.float32))
    for row, entry in zip(valid.prediction, res["valid_history"]):
        assert entry["MAE"] == pytest.approx(msa_metrics(row, valid.label, decimals=None)["MAE"], abs=1e-6)
    first = res["selection"]["first_epoch"]
    selectable = [h for h in res["valid_history"] if h["epoch"] >= first]
    assert res["selected_epoch"] == min(selectable, key=lambda h: (h["select"], h["epoch"]))["epoch"]

    # Test sets: the sharded, gathered test pass equals the unsharded per-epoch scoring of the same weights.
    at = records.position(res["selected_epoch"])
    for name in res["test_sets"]:
        record = records.sets[name]
        assert res["n_samples"][name] == record.label.size
        assert res["metrics"][name] == msa_metrics(record.prediction[at], record.label, decimals=4), name


@pytest.mark.slow
def test_ddp_equals_one_process_on_the_same_weights(tmp_path):
    """With every learning rate 0 both runs keep the seed's initial weights: same epochs, same metrics."""
    one = _run(tmp_path / "one", *FROZEN)
    two = _run(tmp_path / "two", *FROZEN, devices=2)
    assert two["selected_epoch"] == one["selected_epoch"]
    assert two["valid_history"] == one["valid_history"]
    assert two["metrics"] == one["metrics"] and two["n_samples"] == one["n_samples"]
