"""LfF / IPW-only (docs/algorithms.md#lff): GEAR's weighting without swap or concatenation, optional LfF EMA."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.config import build_config
from benchmarks.run import run_job
from methods import weighting
from methods.backbone import LFTFBackbone
from methods.lff import LfF, LfFConfig, SampleEMA, label_bins
from tests.conftest import TINY_JOB, tiny_method


def _method(**fields):
    return tiny_method(LfF, **fields)


def _nonzero(loss: torch.Tensor, modules: list[torch.nn.Module]) -> int:
    params = [p for module in modules for p in module.parameters()]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(int(torch.count_nonzero(g)) for g in grads if g is not None)


def test_config_defaults_are_gears_and_errors_name_the_field():
    cfg = LfFConfig()
    fields = (cfg.gmae, cfg.q, cfg.weight, cfg.lambda_dis, cfg.ema, cfg.ema_alpha)
    assert fields == ("tanh", 1.0, "avg", 15.0, False, 0.7)
    job = build_config(["method=lff", "lff.ema=true", "lff.weight=min"])
    assert job.model.ema is True and job.model.weight == "min"
    with pytest.raises(ValueError, match="gmae must be one of"):
        _method(gmae="huber")
    with pytest.raises(ValueError, match="weight must be one of"):
        _method(weight="max")
    with pytest.raises(ValueError, match="ema_alpha"):
        _method(ema_alpha=1.0)


def test_the_main_model_is_the_plain_lftf_backbone():
    method, _ = _method()
    assert isinstance(method.model, LFTFBackbone)
    reference = LFTFBackbone(method.spec, method.cfg.backbone)
    assert {k: v.shape for k, v in method.model.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }, "no concatenation: the robust side is the baseline architecture"
    assert not hasattr(method, "swap_active"), "no swap augmentation"
    assert all(head.in_features == method.cfg.backbone.dim for head in method.head_b.values())


def test_gradient_routing_and_the_weight_formula():
    method, batch = _method()
    method.eval()
    out = method.compute_losses(batch)
    torch.testing.assert_close(out.loss, out.bias_loss + out.weighted_fused)
    assert _nonzero(out.bias_loss, method.robust_modules()) == 0, "the GMAE loss must not reach the LF-TF model"
    assert _nonzero(out.weighted_fused, method.biased_modules()) == 0, "w * l_f must not reach the biased side"
    assert _nonzero(out.weighted_fused, method.robust_modules()) > 0
    for m in method.modalities:
        assert _nonzero(out.bias_loss, [method.enc_b[m], method.head_b[m]]) > 0, f"biased branch {m} is not trained"
    y = batch.label
    with torch.no_grad():
        torch.testing.assert_close(out.fused_error, (method.model(batch) - y).abs())
        for m in method.modalities:
            pred = method.biased_prediction(m, batch)
            torch.testing.assert_close(out.bias_errors[m], (pred - y).abs())
            torch.testing.assert_close(out.bias_losses[m], 15.0 * weighting.gmae(pred, y, "tanh", 1.0).mean())
    lb = torch.stack([out.bias_errors[m] for m in method.modalities]).mean(0)
    torch.testing.assert_close(out.weights, lb / (lb + out.fused_error.detach() + 1e-8))
    torch.testing.assert_close(out.weighted_fused, (out.weights * out.fused_error).mean())
    assert not out.weights.requires_grad


def test_min_aggregation_and_no_weighting():
    method, batch = _method(weight="min")
    method.eval()
    out = method.compute_losses(batch)
    lb = torch.stack([out.bias_errors[m] for m in method.modalities]).min(0).values
    torch.testing.assert_close(out.weights, lb / (lb + out.fused_error.detach() + 1e-8))
    method, batch = _method(weight="none")
    out = method.compute_losses(batch)
    torch.testing.assert_close(out.weights, torch.ones(len(batch)))


def _reference_ema(labels, steps, alpha):
    """LfF's EMA and per-class max normalisation, written as plain loops."""
    values, seen = np.zeros(len(labels)), np.zeros(len(labels))
    bins = [int(round(min(max(y, -3.0), 3.0))) for y in labels]
    outputs = []
    for index, loss in steps:
        for i, value in zip(index, loss):
            values[i] = alpha * values[i] + (1 - alpha * seen[i]) * value
            seen[i] = 1
        maxima = {b: max(values[j] for j in range(len(labels)) if bins[j] == b) for b in set(bins)}
        outputs.append([values[i] / maxima[bins[i]] for i in index])
    return outputs


def test_sample_ema_matches_lffs_update_and_per_bin_normalisation():
    labels = torch.tensor([-3.4, -1.2, -0.8, 0.2, 0.4, 1.6, 2.5, 2.9])
    assert label_bins(labels).tolist() == [0, 2, 2, 3, 3, 5, 5, 6], "halves round to even, as np.round in Acc-7"
    steps = [
        ([0, 1, 3, 6], [0.5, 2.0, 1.0, 0.25]),
        ([1, 2, 6, 7], [1.0, 0.5, 1.5, 0.75]),
        ([0, 1, 2, 3, 4, 5, 6, 7], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]),
    ]
    ema = SampleEMA(labels, alpha=0.7)
    expected = _reference_ema(labels.tolist(), steps, 0.7)
    for (index, loss), want in zip(steps, expected):
        got = ema.update(torch.tensor(index), torch.tensor(loss))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert ema.values[0].item() == pytest.approx(0.7 * 0.5 + 0.3 * 0.1)
    assert ema.values[5].item() == pytest.approx(0.6), "the first update stores the loss itself"


def test_training_logs_the_diagnostics_with_and_without_ema(tmp_path):
    for ema in ("false", "true"):
        run_dir = run_job(build_config([*TINY_JOB, "method=lff", f"lff.ema={ema}", "trainer.max_epochs=2",
                                        f"output.root={tmp_path}"]))
        result = json.loads((run_dir / "result.json").read_text())
        assert all(np.isfinite(result["metrics"][name]["MAE"]) for name in result["test_sets"])
        logs = pd.read_csv(run_dir / "logs" / "metrics.csv")
        epochs = logs.dropna(subset=["train/w_mean_epoch"])
        assert len(epochs) == 2
        for column in ("train/w_p10_epoch", "train/w_p90_epoch", "train/w_mean_epoch"):
            assert epochs[column].between(0, 1).all(), (ema, column)
        for m in ("text", "audio", "vision"):
            assert epochs[f"train/Lb_{m}_epoch"].gt(0).all() and epochs[f"train/bias_mae_{m}_epoch"].gt(0).all()
            assert logs[f"val/bias_{m}_MAE"].notna().sum() == 2
        assert epochs["train/w_frac_below_0.1_epoch"].notna().all()
        assert (epochs["train/fused_weighted_epoch"] < epochs["train/fused_unweighted_epoch"]).all()
