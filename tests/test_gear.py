"""GEAR (docs/algorithms.md#gear) and its shared weighting functions (GMAE, IPW)."""

from __future__ import annotations

import json
import math

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.config import build_config
from benchmarks.run import run_job
from datamodules.datamodule import MSADataModule
from datamodules.schema import Batch, FeatureSpec
from datamodules.synthetic import generate
from methods.backbone import FusionConfig
from methods.gear import Gear, GearConfig
from methods.weighting import aggregate_bias_loss, gmae, gmae_weight, ipw_weight, weight_summary
from tests.conftest import TINY_JOB, tiny_synthetic


def _method(**fields) -> tuple[Gear, Batch]:
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic())
    cfg = GearConfig(**fields)
    cfg.backbone.fusion = FusionConfig(ff=64)
    method = Gear(FeatureSpec.from_split(bundle.train), cfg)
    return method, Batch.from_split(bundle.train, np.arange(16))


def _params(modules: list[torch.nn.Module]) -> list[torch.nn.Parameter]:
    return [p for module in modules for p in module.parameters()]


def _grads(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


# ----------------------------------------------------------------------------- weighting functions


@pytest.mark.parametrize(
    "variant, formula",
    [
        ("tanh", lambda r, q: math.tanh(max(r, 1e-8) ** (-q))),
        ("sigmoid", lambda r, q: 2.0 / (1.0 + math.exp(r))),
        ("exp", lambda r, q: math.exp(-r / q)),
        ("cauchy", lambda r, q: 1.0 / (1.0 + q * q * r * r)),
        ("none", lambda r, q: 0.0),
    ],
)
def test_gmae_variants_match_their_formulas(variant, formula):
    r = [0.0, 0.05, 0.3, 1.0, 2.5]
    for q in (1.0, 0.7, 2.0):
        expected = torch.tensor([formula(x, q) for x in r], dtype=torch.float64)
        got = gmae_weight(torch.tensor(r, dtype=torch.float64), variant, q)
        torch.testing.assert_close(got, expected)
    target = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    pred = torch.tensor([0.2, 0.4, 2.1, -2.0], dtype=torch.float64, requires_grad=True)
    loss = gmae(pred, target, variant, 0.7)
    error = (pred - target).abs().detach()
    weight = torch.tensor([formula(x, 0.7) for x in error.tolist()], dtype=torch.float64)
    torch.testing.assert_close(loss.detach(), weight * error)
    loss.sum().backward()
    torch.testing.assert_close(pred.grad, weight * torch.sign(pred.detach() - target))


def test_gmae_weight_decreases_with_the_residual_and_rejects_bad_settings():
    r = torch.linspace(0.01, 3.0, 50, dtype=torch.float64)
    for variant in ("tanh", "sigmoid", "exp", "cauchy"):
        assert torch.all(gmae_weight(r, variant, 0.7).diff() < 0), variant
    with pytest.raises(ValueError, match="gmae must be one of"):
        gmae_weight(r, "huber", 1.0)
    with pytest.raises(ValueError, match="q must be a float > 0"):
        gmae_weight(r, "exp", 0.0)


def test_ipw_weights_match_the_formula_for_avg_and_min():
    losses = torch.tensor([[0.2, 1.0, 0.5, 3.0], [0.4, 0.1, 0.5, 1.0], [0.6, 0.4, 2.0, 2.0]], requires_grad=True)
    fused = torch.tensor([0.4, 1.5, 0.25, 6.0], requires_grad=True)
    avg = aggregate_bias_loss(losses, "avg")
    mn = aggregate_bias_loss(losses, "min")
    torch.testing.assert_close(avg, torch.tensor([0.4, 0.5, 1.0, 2.0]))
    torch.testing.assert_close(mn, torch.tensor([0.2, 0.1, 0.5, 1.0]))
    w_avg = ipw_weight(avg, fused, "avg")
    w_min = ipw_weight(mn, fused, "min")
    torch.testing.assert_close(w_avg, torch.tensor([0.5, 0.25, 0.8, 0.25]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w_min, torch.tensor([1 / 3, 0.0625, 2 / 3, 1 / 7]), atol=1e-6, rtol=0)
    for w in (w_avg, w_min):
        assert torch.all((w > 0) & (w < 1))
        assert not w.requires_grad, "w is a constant for autograd"
    torch.testing.assert_close(ipw_weight(avg, fused, "none"), torch.ones(4))
    with pytest.raises(ValueError, match="weight must be one of"):
        ipw_weight(avg, fused, "max")


def test_weight_summary_quantiles_and_small_fraction():
    w = torch.arange(1, 101, dtype=torch.float32) / 100.0
    summary = weight_summary(w)
    torch.testing.assert_close(summary["w_p50"], torch.quantile(w, 0.5))
    torch.testing.assert_close(summary["w_p10"], torch.quantile(w, 0.1))
    torch.testing.assert_close(summary["w_p90"], torch.quantile(w, 0.9))
    assert summary["w_frac_below_0.1"].item() == pytest.approx(0.09)
    assert summary["w_mean"].item() == pytest.approx(0.505)


# ----------------------------------------------------------------------------- the method


def test_config_defaults_float_q_and_errors():
    cfg = GearConfig()
    assert (cfg.gmae, cfg.q, cfg.weight, cfg.lambda_dis, cfg.lambda_swap, cfg.swap_epochs, cfg.swap) == (
        "tanh", 1.0, "avg", 15.0, 1.0, 5, True,
    )
    job = build_config(["method=gear", "gear.q=0.7", "gear.weight=min", "gear.swap=false"])
    assert job.model.q == 0.7 and job.model.weight == "min" and job.model.swap is False
    method, batch = _method(q=0.7, swap_dim=16)
    assert method.enc_c["audio"].proj[-2].out_features == 16 and method.phi_c["audio"][0].in_features == 32
    assert method.compute_losses(batch, swap=True).loss.isfinite()
    with pytest.raises(ValueError, match="gmae must be one of"):
        _method(gmae="huber")
    with pytest.raises(ValueError, match="weight must be one of"):
        _method(weight="max")
    with pytest.raises(ValueError, match="swap_epochs"):
        _method(swap_epochs=-1)


def test_robust_and_biased_extractors_are_identical_in_shape_but_independent():
    method, _ = _method()
    for m in method.modalities:
        c, b = method.enc_c[m].state_dict(), method.enc_b[m].state_dict()
        assert {k: v.shape for k, v in c.items()} == {k: v.shape for k, v in b.items()}
        assert {p.data_ptr() for p in method.enc_c[m].parameters()}.isdisjoint(
            p.data_ptr() for p in method.enc_b[m].parameters()
        )


@pytest.mark.parametrize("swap", [False, True])
def test_gradient_routing(swap):
    method, batch = _method()
    out = method.compute_losses(batch, swap=swap)
    torch.testing.assert_close(out.loss, out.bias_loss + out.weighted_fused)
    robust, biased = method.robust_modules(), method.biased_modules()
    for grad in _grads(out.bias_loss, _params(robust)):
        assert torch.count_nonzero(grad) == 0, "the biased loss must not reach E_c, phi_c or F"
    for grad in _grads(out.weighted_fused, _params(biased)):
        assert torch.count_nonzero(grad) == 0, "the weighted fused loss must not reach E_b, phi_b or head_b"
    for group, loss in ((robust, out.weighted_fused), (biased, out.bias_loss)):
        for module in group:
            grads = _grads(loss, list(module.parameters()))
            assert sum(int(torch.count_nonzero(g)) for g in grads) > 0, f"{type(module).__name__} gets no gradient"
    for m in method.modalities:
        grads = _grads(out.bias_loss, list(method.enc_b[m].parameters()))
        assert sum(int(torch.count_nonzero(g)) for g in grads) > 0, f"E_b[{m}] is not trained"


def test_swap_targets_permuted_on_the_biased_side_and_original_on_the_robust_side():
    method, batch = _method(lambda_swap=0.5)
    method.eval()
    method.reset_swap_generator(123)
    out = method.compute_losses(batch, swap=True)
    y, cfg = batch.label, method.cfg
    perms = out.permutations
    assert set(perms) == set(method.modalities)
    for m, perm in perms.items():
        assert sorted(perm.tolist()) == list(range(len(y))) and not torch.equal(perm, torch.arange(len(y)))
        torch.testing.assert_close(out.swap_targets[m], y[perm])
    assert not torch.equal(perms["text"], perms["audio"]), "permutations are independent per modality"
    with torch.no_grad():
        hc, hb = method.encode(batch)
        for m, perm in perms.items():
            plain = gmae(method.biased_prediction(m, hc[m], hb[m]), y).mean()
            swapped_pred = method.biased_prediction(m, hc[m], hb[m][perm])
            expected = cfg.lambda_dis * (plain + cfg.lambda_swap * gmae(swapped_pred, y[perm]).mean())
            torch.testing.assert_close(out.bias_losses[m], expected)
            wrong = cfg.lambda_dis * (plain + cfg.lambda_swap * gmae(swapped_pred, y).mean())
            assert not torch.isclose(out.bias_losses[m], wrong)
        robust_pred = method.fusion([method.robust_feature(m, hc[m], hb[m][perms[m]]) for m in method.modalities])
        torch.testing.assert_close(out.fused_swap_error, (robust_pred - y).abs())
        torch.testing.assert_close(out.fused_error, out.plain_error + cfg.lambda_swap * (robust_pred - y).abs())
        lb = torch.stack([out.bias_errors[m] for m in method.modalities]).mean(0)
        torch.testing.assert_close(out.weights, lb / (lb + out.fused_error + 1e-8))
        state = method.swap_generator.get_state()
        plain_pred = method.fusion([method.robust_feature(m, hc[m], hb[m]) for m in method.modalities])
        torch.testing.assert_close(method.predict(batch), plain_pred)
        assert torch.equal(method.swap_generator.get_state(), state), "evaluation never swaps"
    method.reset_swap_generator(123)
    again = method.compute_losses(batch, swap=True)
    assert all(torch.equal(again.permutations[m], perms[m]) for m in perms), "the generator is seeded"


def test_no_swap_loss_term_without_swap():
    method, batch = _method()
    method.reset_swap_generator(7)
    state = method.swap_generator.get_state()
    out = method.compute_losses(batch, swap=False)
    assert out.permutations == {} and out.fused_swap_error is None
    torch.testing.assert_close(out.fused_error, out.plain_error)
    assert torch.equal(method.swap_generator.get_state(), state)


class _SwapProbe(L.Callback):
    """Records, at each epoch end, whether the swap was active and whether the generator was used."""

    def __init__(self) -> None:
        self.epochs: list[tuple[bool, bool]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Gear) -> None:
        fresh = torch.Generator().manual_seed(pl_module.swap_seed).get_state()
        self.epochs.append((pl_module.swap_active(), not torch.equal(pl_module.swap_generator.get_state(), fresh)))


@pytest.mark.parametrize("swap, swap_epochs, expected", [(True, 1, [(False, False), (True, True)]),
                                                         (False, 0, [(False, False), (False, False)])])
def test_swap_starts_at_swap_epochs_from_a_seeded_generator(swap, swap_epochs, expected):
    method, _ = _method(swap=swap, swap_epochs=swap_epochs)
    L.seed_everything(5, verbose=False)
    dm = MSADataModule(generate(tiny_synthetic()), batch_size=32, seed=0)
    probe = _SwapProbe()
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_train_batches=2, limit_val_batches=1, callbacks=[probe])
    trainer.fit(method, datamodule=dm)
    assert method.swap_seed == 5, "the swap generator is seeded from the run's seed"
    assert probe.epochs == expected


def test_training_on_synthetic_logs_the_diagnostics(tmp_path):
    run_dir = run_job(build_config([*TINY_JOB, "method=gear", "gear.swap_epochs=1", "trainer.max_epochs=2",
                                    "trainer.patience=5", f"output.root={tmp_path}"]))
    result = json.loads((run_dir / "result.json").read_text())
    assert result["method"] == "gear" and (run_dir / "done").is_file()
    assert all(np.isfinite(result["metrics"][name]["MAE"]) for name in result["test_sets"])
    logs = pd.read_csv(run_dir / "logs" / "metrics.csv")
    epochs = logs.dropna(subset=["train/w_mean_epoch"]).sort_values("epoch")
    assert epochs["train/swap_active_epoch"].tolist() == [0.0, 1.0]
    for column in ("train/w_p10_epoch", "train/w_p50_epoch", "train/w_p90_epoch", "train/w_mean_epoch"):
        assert epochs[column].between(0, 1, inclusive="neither").all(), column
    assert (epochs["train/w_p10_epoch"] <= epochs["train/w_p90_epoch"]).all()
    for m in ("text", "audio", "vision"):
        assert epochs[f"train/Lb_{m}_epoch"].gt(0).all() and epochs[f"train/bias_mae_{m}_epoch"].gt(0).all()
        assert logs[f"val/bias_{m}_MAE"].notna().sum() == 2
    for column in ("train/w_frac_below_0.1_epoch", "train/fused_weighted_epoch", "train/fused_unweighted_epoch",
                   "train/fused_plain_epoch"):
        assert epochs[column].notna().all(), column
    assert (epochs["train/fused_weighted_epoch"] < epochs["train/fused_unweighted_epoch"]).all()


def test_weight_none_is_plain_fused_loss():
    method, batch = _method(weight="none")
    out = method.compute_losses(batch, swap=True)
    torch.testing.assert_close(out.weights, torch.ones(len(batch)))
    torch.testing.assert_close(out.weighted_fused, out.fused_error.mean())
