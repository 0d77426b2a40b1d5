"""Oracle rows (Group DRO, group reweighting), JTT and the bias-identification measurements (docs/algorithms.md)."""

from __future__ import annotations

import dataclasses
import math

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.datamodule import MSADataModule
from datamodules.synthetic import generate
from methods import METHODS
from methods.bias_id import auroc, conflict_flags, identification_record, precision_recall
from methods.groupdro import group_losses
from methods.jtt import error_set
from methods.reweight import balanced_weights
from tests.conftest import tiny_synthetic
from tests.test_methods import _small_cfg


def _fit(method, dm, epochs=2):
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accumulate_grad_batches=method.cfg.optim.accumulate,
    )
    trainer.fit(method, datamodule=dm)
    return trainer


def test_group_losses_match_a_loop():
    rng = np.random.default_rng(0)
    loss, group = rng.random(40), rng.integers(0, 5, size=40)
    group[group == 3] = 4  # group 3 absent
    means, counts = group_losses(torch.tensor(loss), torch.tensor(group), 6)
    for g in range(6):
        members = loss[group == g]
        assert counts[g] == members.size
        assert means[g].item() == pytest.approx(members.mean() if members.size else 0.0)


def test_group_dro_weights_follow_sagawas_update():
    """q_g <- q_g exp(eta (L_g + C / sqrt(n_g))) for present groups, then normalised (group_DRO loss.py)."""
    bundle = generate(tiny_synthetic())
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    cls = METHODS["oracle_groupdro"]
    cfg = dataclasses.replace(_small_cfg(cls), eta=0.5, adjustment=1.0)
    method = cls(dm.spec, cfg)
    counts = dm.train_group_counts().astype(np.float64)
    g = len(dm.group_names)
    q = np.full(g, 1.0 / g)
    method.q = torch.tensor(q, dtype=torch.float32)
    method.adjust = torch.tensor(1.0 / np.sqrt(np.maximum(counts, 1)), dtype=torch.float32)
    method.log = lambda *a, **k: None
    method.log_diagnostics = lambda *a, **k: None
    method.eval()  # no dropout: the test's forward pass and training_step's see the same losses
    for i, batch in enumerate(dm.train_dataloader()):
        if i == 3:
            break
        with torch.no_grad():
            per = (method.model(batch) - batch.label).abs().double().numpy()
        grp = batch.group.numpy()
        means = np.array([per[grp == k].mean() if (grp == k).any() else 0.0 for k in range(g)])
        present = np.array([(grp == k).any() for k in range(g)])
        step = np.exp(0.5 * (means + 1.0 / np.sqrt(np.maximum(counts, 1))))
        q = np.where(present, q * step, q)
        q = q / q.sum()
        loss = method.training_step(batch, i)
        np.testing.assert_allclose(method.q.numpy(), q, rtol=1e-4)
        assert loss.item() == pytest.approx(float((q * means).sum()), rel=1e-4)


def test_balanced_weights_give_every_group_the_same_total_and_mean_one():
    counts = np.array([50, 5, 0, 20])
    w = balanced_weights(counts)
    totals = w * counts
    assert w[2] == 0 and np.allclose(totals[counts > 0], totals[0])
    assert (w * counts).sum() / counts.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["oracle_groupdro", "oracle_reweight"])
def test_oracle_rows_refuse_data_without_ground_truth(name):
    bundle = generate(tiny_synthetic())
    for split in (bundle.train, bundle.valid, bundle.test, *bundle.extra_tests.values()):
        split.z = None
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    assert dm.group_names == ()
    method = METHODS[name](dm.spec, _small_cfg(METHODS[name]))
    with pytest.raises(ValueError, match=f"method {name!r} needs the ground-truth groups"):
        _fit(method, dm, epochs=1)
    assert METHODS[name].kind == "oracle" and METHODS[name].needs_ground_truth


def test_conflict_flags_and_auroc_match_definitions():
    z = torch.tensor([[1, -1, 0], [1, 1, 1], [-1, 0, 0], [0, 0, 0]], dtype=torch.float32)
    y = torch.tensor([0.4, 1.0, 2.0, -1.0])
    assert conflict_flags(z, y).tolist() == [True, False, True, False]
    rng = np.random.default_rng(1)
    scores, flags = rng.random(50), rng.random(50) < 0.3
    scores[3] = scores[4]
    pairs = [(a, b) for a in scores[flags] for b in scores[~flags]]
    manual = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
    assert auroc(scores, flags) == pytest.approx(manual)
    assert math.isnan(auroc(scores, np.zeros(50, bool)))
    record = identification_record(scores, flags, 3, "w")
    assert record["n_conflict"] == flags.sum() and record["epoch"] == 3
    assert precision_recall(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == {
        "precision": 0.5, "recall": 0.5}


def test_jtt_error_set_follows_mmsa_non0_rule():
    pred = np.array([0.5, -0.2, 0.0, 1.0, -1.0])
    label = np.array([1.0, 1.0, 0.6, 0.0, -2.0])
    assert error_set(pred, label).tolist() == [False, True, True, False, False]


def test_jtt_upsamples_its_error_set_and_measures_it_against_the_truth():
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic())
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    cls = METHODS["jtt"]
    cfg = dataclasses.replace(_small_cfg(cls), epochs_stage1=1, upweight=5)
    method = cls(dm.spec, cfg)
    n_train = len(dm.train_split)
    _fit(method, dm, epochs=1)
    d = method.summary()
    assert 0 < d["error_set_size"] < n_train and d["train_size"] == n_train
    assert 0.0 <= d["precision"] <= 1.0 and 0.0 <= d["recall"] <= 1.0
    assert 0.0 <= d["identification"]["auroc"] <= 1.0
    seen = sum(len(b) for b in dm.train_dataloader())
    assert seen == n_train + 4 * d["error_set_size"]


@pytest.mark.parametrize("name", ["gear", "lff"])
def test_weighting_methods_record_bias_identification_per_epoch(name):
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic())
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    method = METHODS[name](dm.spec, _small_cfg(METHODS[name]))
    _fit(method, dm, epochs=2)
    records = method.summary()["bias_identification"]
    assert [r["epoch"] for r in records] == [0, 1]
    for r in records:
        assert r["n"] == len(dm.train_split) and 0.0 <= r["auroc"] <= 1.0


def test_bad_rows_and_scenarios_are_refused_when_the_config_is_built():
    from benchmarks.config import build_config

    with pytest.raises(ValueError, match="method=oracle_groupdro is an oracle row .* dataset=mosi_utt has none"):
        build_config(["method=oracle_groupdro", "dataset=mosi_utt"])
    with pytest.raises(ValueError, match="synthetic.scenario must be one of"):
        build_config(["synthetic.scenario=nope"])
    with pytest.raises(ValueError, match="kind must be one of"):
        build_config(["kind=ceiling"])
    assert build_config(["method=oracle_reweight", "dataset=synthetic_shared"]).method == "oracle_reweight"


def test_default_sweep_has_the_reference_rows_with_their_kinds():
    from pathlib import Path

    from benchmarks.sweep import expand, load_sweep

    jobs = expand(load_sweep(Path(__file__).resolve().parents[1] / "benchmarks" / "sweeps" / "default.yaml"))
    labels = {j.label for j in jobs}
    assert {"baseline", "jtt", "erm_unbiased", "oracle_groupdro", "oracle_reweight"} <= labels
    ceiling = next(j for j in jobs if j.label == "erm_unbiased")
    assert "kind=reference" in ceiling.overrides and any("train_bias=0.5" in o for o in ceiling.overrides)


def test_tune_chooses_the_variant_with_the_best_iid_valid_value(tmp_path):
    import json

    from benchmarks.tuning import choose_on_valid, describe, grid_table

    values = {"jtt_T1_up5": [0.80, 0.82], "jtt_T2_up20": [0.70, 0.74], "jtt_T5_up50": [0.90, 0.60], "baseline": [0.1]}
    for label, vals in values.items():
        for seed, v in enumerate(vals):
            run = tmp_path / f"{label}-s{seed}"
            run.mkdir()
            metrics = {"test": {k: 0.5 for k in ("MAE", "Corr", "Has0_acc_2", "Has0_F1_score", "Non0_acc_2",
                                                 "Non0_F1_score", "Mult_acc_5", "Mult_acc_7")}}
            (run / "result.json").write_text(json.dumps({
                "method": "jtt" if label != "baseline" else "baseline", "label": label, "dataset": "synthetic",
                "seed": seed, "test_sets": ["test"], "metrics": metrics,
                "selection": {"key": "mae", "value": v},
            }))
            (run / "config.yaml").write_text("model:\n  epochs_stage1: 1\n")
            (run / "done").write_text("x")
    table = grid_table(tmp_path, "jtt_")
    assert set(table["label"]) == {"jtt_T1_up5", "jtt_T2_up20", "jtt_T5_up50"}
    choice = choose_on_valid(table)
    assert choice["label"] == "jtt_T2_up20" and choice["mode"] == "min"  # mean valid MAE 0.72 < 0.75 < 0.81
    chosen = [line for line in describe(tmp_path, "jtt_", None).splitlines() if line.endswith("<- chosen")]
    assert len(chosen) == 1 and chosen[0].startswith("jtt_T2_up20")
    with pytest.raises(ValueError, match="no complete run .* starting with 'lff_'"):
        grid_table(tmp_path, "lff_")
