"""CLUE-style counterfactual debiasing (docs/algorithms.md#clue): loss, routing, prediction, alpha on IID valid."""

from __future__ import annotations

import dataclasses
import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.config import build_config
from benchmarks.run import run_job
from datamodules.datamodule import MSADataModule
from datamodules.synthetic import generate
from methods.backbone import FusionConfig
from methods.clue import Clue, ClueConfig
from methods.metrics import msa_metrics
from tests.conftest import TINY_JOB, tiny_method, tiny_synthetic


def _method(modalities=None, **fields):
    return tiny_method(Clue, modalities, **fields)


def _grad_norm(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> float:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_config_defaults_aliases_and_errors():
    cfg = ClueConfig()
    assert cfg.alpha_grid == [0.25 * i for i in range(13)] and cfg.alpha_grid[-1] == 3.0
    job = build_config(["method=clue", "clue.alpha_grid=[0,0.5,1]", "clue.c_init=0.2"])
    assert list(job.model.alpha_grid) == [0.0, 0.5, 1.0] and job.model.c_init == 0.2
    with pytest.raises(ValueError, match="needs the text modality"):
        _method(modalities=["audio", "vision"])
    with pytest.raises(ValueError, match="alpha_grid"):
        _method(alpha_grid=[])
    with pytest.raises(ValueError, match="alpha_grid"):
        _method(alpha_grid=[0.0, -1.0])


def test_losses_match_the_formula_and_the_c_term_trains_only_c():
    method, batch = _method(c_init=0.3)
    method.eval()  # no dropout, so two forward passes agree
    y = batch.label
    terms = method.losses(batch)
    out = method.outputs(batch)
    torch.testing.assert_close(out.fused, out.mm + out.text)
    torch.testing.assert_close(out.counterfactual, method.c + out.text)
    torch.testing.assert_close(terms["loss_mm"], (out.mm - y).abs().mean())
    torch.testing.assert_close(terms["loss_fused"], (out.fused - y).abs().mean())
    torch.testing.assert_close(terms["loss_text"], (out.text - y).abs().mean())
    torch.testing.assert_close(terms["loss_c"], (out.fused - 0.3 - out.text).pow(2).mean())
    total = terms["loss_mm"] + terms["loss_fused"] + terms["loss_text"] + terms["loss_c"]
    torch.testing.assert_close(terms["loss"], total)
    others = [p for name, p in method.named_parameters() if name != "c"]
    assert _grad_norm(terms["loss_c"], others) == 0.0, "the counterfactual term must train c only"
    assert _grad_norm(terms["loss_c"], [method.c]) > 0
    for loss in (terms["loss_mm"], terms["loss_fused"], terms["loss_text"]):
        assert _grad_norm(loss, [method.c]) == 0.0, "c is trained by its own term only"
    text_branch = [*method.text_encoder.parameters(), *method.text_head.parameters()]
    assert _grad_norm(terms["loss_mm"], text_branch) == 0.0
    assert _grad_norm(terms["loss_text"], list(method.model.parameters())) == 0.0
    assert _grad_norm(terms["loss_fused"], text_branch) > 0
    assert _grad_norm(terms["loss_fused"], list(method.model.parameters())) > 0


def test_prediction_subtracts_alpha_times_the_counterfactual():
    method, batch = _method(c_init=-0.4)
    method.eval()
    with torch.no_grad():
        out = method.outputs(batch)
        for alpha in (0.0, 1.0, 2.5):
            method.alpha.fill_(alpha)
            torch.testing.assert_close(method.predict(batch), out.fused - alpha * (method.c + out.text))
            torch.testing.assert_close(method.predict(batch), out.mm + (1 - alpha) * out.text - alpha * method.c)
    assert "alpha" in method.state_dict(), "the chosen alpha travels with the selected epoch's weights"


def _score(pred, label, key):
    m = msa_metrics(pred, label, decimals=None)
    return m["MAE"] if key == "mae" else (m["Has0_acc_2"] + m["Non0_acc_2"]) / 2


@pytest.mark.parametrize("key", ["mae", "acc2_mean"])
def test_alpha_is_chosen_on_valid_by_the_selection_key(key):
    method, _ = _method(alpha_grid=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    method.configure_selection(key)
    rng = np.random.default_rng(0)
    label = np.round(rng.uniform(-3, 3, 200), 1)
    cf = rng.normal(0, 1, 200)
    fused = label + 1.5 * cf + rng.normal(0, 0.3, 200)
    pred, extra = method.select_on_valid(fused.copy(), label, {"fused": fused, "counterfactual": cf})
    sign = 1.0 if key == "mae" else -1.0
    scores = [sign * _score(fused - a * cf, label, key) for a in method.alpha_grid]
    expected = method.alpha_grid[int(np.argmin(scores))]
    assert expected == 1.5, "the planted strength is found"
    assert extra["alpha"] == expected and float(method.alpha) == expected
    np.testing.assert_allclose(pred, fused - expected * cf)
    assert set(extra) == {"alpha", "c"} | {f"select_alpha_{a:g}" for a in method.alpha_grid}
    for a in method.alpha_grid:
        assert extra[f"select_alpha_{a:g}"] == pytest.approx(_score(fused - a * cf, label, key))


def test_alpha_ties_go_to_the_smallest_alpha():
    method, _ = _method(alpha_grid=[2.0, 0.0, 1.0])
    assert method.alpha_grid == [0.0, 1.0, 2.0]
    label = np.array([1.0, -1.0, 2.0])
    _, extra = method.select_on_valid(label, label, {"fused": label, "counterfactual": np.zeros(3)})
    assert extra["alpha"] == 0.0


def _fit(test_label_sign: float) -> Clue:
    L.seed_everything(3, verbose=False)
    bundle = generate(tiny_synthetic())
    bundle.extra_tests = {
        k: dataclasses.replace(v, label=test_label_sign * v.label) for k, v in bundle.extra_tests.items()
    }
    bundle.test = dataclasses.replace(bundle.test, label=test_label_sign * bundle.test.label)
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    cfg = ClueConfig()
    cfg.backbone.fusion = FusionConfig(ff=64)
    method = Clue(dm.spec, cfg)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(method, datamodule=dm)
    trainer.test(method, datamodule=dm, verbose=False)
    return method


def test_the_test_sets_cannot_influence_alpha():
    plain, flipped = _fit(1.0), _fit(-1.0)
    assert [h["alpha"] for h in plain.valid_history] == [h["alpha"] for h in flipped.valid_history]
    assert plain.valid_history == flipped.valid_history
    assert float(plain.alpha) == float(flipped.alpha)


def test_run_reports_the_selected_alpha_and_the_diagnostics(tmp_path):
    run_dir = run_job(build_config([*TINY_JOB, "method=clue", "clue.alpha_grid=[0,0.5,1]", f"output.root={tmp_path}"]))
    result = json.loads((run_dir / "result.json").read_text())
    selected = result["valid_at_selected_epoch"]
    assert selected["alpha"] in (0.0, 0.5, 1.0)
    assert selected["select"] == pytest.approx(selected[f"select_alpha_{selected['alpha']:g}"])
    logs = pd.read_csv(run_dir / "logs" / "metrics.csv")
    for column in ("val/alpha", "val/c", "val/text_MAE", "val/mm_MAE", "val/select_alpha_0", "val/select_alpha_0.5",
                   "train/loss_c_epoch", "train/c_epoch"):
        assert logs[column].notna().any(), column
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert np.isfinite(predictions["prediction"]).all()
