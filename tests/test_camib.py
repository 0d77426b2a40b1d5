"""CaMIB (docs/algorithms-mmci-camib.md): VIB, mask, recombination, IV stop-gradients, options, training."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.datamodule import MSADataModule
from datamodules.schema import Batch, FeatureSpec
from datamodules.synthetic import generate
from methods.backbone import FusionConfig
from methods.camib import CaMIB, CaMIBConfig, gaussian_kl, recombine
from tests.conftest import tiny_synthetic


def _method(**fields) -> tuple[CaMIB, Batch]:
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic())
    iv = fields.pop("iv", {})
    cfg = CaMIBConfig(**fields)
    cfg.iv = dataclasses.replace(cfg.iv, **iv)
    cfg.backbone.fusion = FusionConfig(ff=64)
    method = CaMIB(FeatureSpec.from_split(bundle.train), cfg)
    return method, Batch.from_split(bundle.train, np.arange(16))


def _grads(loss: torch.Tensor, module: torch.nn.Module) -> list[torch.Tensor]:
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def _has_grad(loss: torch.Tensor, module: torch.nn.Module) -> bool:
    return any(g.abs().sum() > 0 for g in _grads(loss, module))


def test_kl_is_zero_at_the_prior_and_positive_otherwise():
    mu, sigma = torch.zeros(4, 8), torch.ones(4, 8)
    assert gaussian_kl(mu, sigma).item() == 0.0
    assert gaussian_kl(mu + 0.3, sigma) > 0
    assert gaussian_kl(mu, sigma * 0.5) > 0
    assert gaussian_kl(mu, sigma * 2.0) > 0
    torch.testing.assert_close(gaussian_kl(mu + 1.0, sigma), torch.tensor(0.5))


def test_evaluation_uses_the_mean_and_training_samples():
    method, batch = _method()
    method.eval()
    with torch.no_grad():
        out = method.forward_parts(batch)
        for m in method.modalities:
            assert torch.equal(out.z[m], out.mu[m])
        assert torch.equal(method.predict(batch), method.predict(batch))
    method.train()
    with torch.no_grad():
        out = method.forward_parts(batch)
    assert not torch.equal(out.z["text"], out.mu["text"]), "training must use the reparameterised sample"
    sampling, _ = _method(eval_sample=True)
    sampling.eval()
    with torch.no_grad():
        assert not torch.equal(sampling.forward_parts(batch).z["text"], sampling.forward_parts(batch).z["text"])


def test_mask_lies_in_the_open_unit_interval_and_parts_sum_to_the_fused_representation():
    method, batch = _method()
    for training in (True, False):
        method.train(training)
        with torch.no_grad():
            out = method.forward_parts(batch)
        assert out.mask.shape == out.fused.shape == (16, 64)
        assert bool((out.mask > 0).all() and (out.mask < 1).all())
        torch.testing.assert_close(out.causal + out.shortcut, out.fused)
        torch.testing.assert_close(out.causal, out.mask * out.fused)


def test_hard_concrete_mask_is_binary_at_evaluation_and_straight_through_in_training():
    method, batch = _method(mask="hard_concrete")
    method.eval()
    with torch.no_grad():
        out = method.forward_parts(batch)
    assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(out.causal + out.shortcut, out.fused)
    method.train()
    terms, out = method.loss_terms(batch)
    assert set(out.mask.detach().unique().tolist()) <= {0.0, 1.0}
    assert _has_grad(terms["causal"], method.mask_net), "the straight-through estimator must reach the mask MLP"


def test_recombination_changes_only_the_shortcut_partner():
    causal = torch.randn(5, 3, requires_grad=True)
    shortcut = torch.randn(5, 3)
    perm = torch.tensor([3, 0, 4, 1, 2])
    mixed = recombine(causal, shortcut, perm)
    torch.testing.assert_close(mixed - causal, shortcut[perm])
    (jac,) = torch.autograd.grad(mixed[2].sum(), causal)
    assert torch.equal(jac.abs().sum(1) > 0, torch.tensor([False, False, True, False, False]))
    torch.testing.assert_close(recombine(causal, shortcut, torch.arange(5)), causal + shortcut)


def test_backdoor_loss_pairs_each_causal_part_with_the_permuted_shortcut(monkeypatch):
    method, batch = _method()
    method.eval()
    perm = torch.arange(len(batch)).flip(0)
    monkeypatch.setattr(method, "_randperm", lambda n, device: perm)
    with torch.no_grad():
        terms, out = method.loss_terms(batch)
        expected = (method.f_int(out.causal + out.shortcut[perm]).squeeze(-1) - batch.label).abs().mean()
        unpermuted = (method.f_int(out.fused).squeeze(-1) - batch.label).abs().mean()
    torch.testing.assert_close(terms["bd"], expected)
    assert not torch.isclose(terms["bd"], unpermuted)


@pytest.mark.parametrize("instrument", ["ib_latents", "shuffled_modality", "prototypes"])
def test_iv_branch_stop_gradients(instrument):
    method, batch = _method(iv={"instrument": instrument})
    method.train()
    terms, _ = method.loss_terms(batch)
    for name in ("iv", "iv_reg", "iv_label"):
        for frozen in (method.encoders, method.vib, method.fuse, method.mask_net):
            assert not _has_grad(terms[name], frozen), f"L_{name} must not reach {type(frozen).__name__}"
    assert _has_grad(terms["iv_reg"], method.iv_net)
    assert _has_grad(terms["iv_label"], method.iv_net)
    assert _has_grad(terms["iv_label"], method.f_c), "f_c is shared by the IV label term"
    assert not _has_grad(terms["iv_reg"], method.f_c)
    assert _has_grad(terms["causal"], method.mask_net) and _has_grad(terms["causal"], method.vib)
    if instrument == "prototypes":
        (grad,) = torch.autograd.grad(terms["iv"], [method.prototypes], retain_graph=True)
        assert grad.abs().sum() > 0


@pytest.mark.parametrize("instrument", ["ib_latents", "shuffled_modality"])
def test_pull_c_variant_sends_the_iv_gradient_to_the_mask_and_fusion(instrument):
    """camib.iv.pull_c (docs/algorithms-mmci-camib.md): the stage-1 term keeps C attached, so L_IV reaches the mask
    MLP, the fusion and the encoders; the instrument itself stays detached."""
    method, batch = _method(iv={"instrument": instrument, "pull_c": True})
    method.train()
    terms, out = method.loss_terms(batch)
    for module in (method.mask_net, method.fuse, method.vib, method.encoders):
        assert _has_grad(terms["iv_reg"], module), f"L_iv_reg must reach {type(module).__name__}"
        assert _has_grad(terms["iv"], module)
    assert not _has_grad(terms["iv_label"], method.mask_net), "the label term still reads only g(V)"
    if instrument == "ib_latents":  # d/dm of mean_i ||g(V_i) - m_i * M_i||^2 = 2 (C - g(V)) * M / B
        (g_mask,) = torch.autograd.grad(terms["iv_reg"], [out.mask], retain_graph=True)
        expected = 2.0 * (out.causal - method.iv_net(method.instrument(out))) * out.fused / len(batch)
        torch.testing.assert_close(g_mask, expected.detach(), rtol=1e-4, atol=1e-7)


def test_pull_c_default_off_keeps_run_hashes():
    from benchmarks.config import build_config, config_hash

    plain = build_config(["method=camib"])
    assert plain.model.iv.pull_c is False
    assert config_hash(plain) == config_hash(build_config(["method=camib", "camib.iv.pull_c=false"]))
    assert config_hash(plain) != config_hash(build_config(["method=camib", "camib.iv.pull_c=true"]))


def test_iv_regression_is_the_batch_mean_of_the_squared_norm():
    method, batch = _method()
    method.eval()
    with torch.no_grad():
        terms, out = method.loss_terms(batch)
        c_hat = method.iv_net(torch.cat([out.z[m] for m in method.modalities], dim=-1))
    torch.testing.assert_close(terms["iv_reg"], ((c_hat - out.causal) ** 2).sum(1).mean())


def test_shortcut_head_regresses_to_the_training_label_mean():
    method, batch = _method()
    method.eval()
    method.train_label_mean = 0.7
    with torch.no_grad():
        terms, out = method.loss_terms(batch)
        expected = (method.f_s(out.shortcut).squeeze(-1) - 0.7).abs().mean()
    torch.testing.assert_close(terms["shortcut"], expected)


def test_ablations_are_one_field_away():
    from benchmarks.config import build_config

    cfg = build_config(["method=camib", "camib.lambda_iv=0", "camib.lambda_bd=0"])
    assert cfg.model.lambda_iv == 0 and cfg.model.lambda_bd == 0 and cfg.model.lambda_s == 0.5
    full, batch = _method()
    terms, _ = full.loss_terms(batch)
    assert _has_grad(terms["loss"], full.iv_net) and _has_grad(terms["loss"], full.f_int)
    no_iv, _ = _method(lambda_iv=0.0)
    terms, _ = no_iv.loss_terms(batch)
    assert not _has_grad(terms["loss"], no_iv.iv_net) and _has_grad(terms["loss"], no_iv.f_int)
    no_bd, _ = _method(lambda_bd=0.0)
    terms, _ = no_bd.loss_terms(batch)
    assert not _has_grad(terms["loss"], no_bd.f_int) and _has_grad(terms["loss"], no_bd.iv_net)


def test_total_loss_is_the_documented_weighted_sum():
    method, batch = _method(lambda_m=0.2, rho=0.3)
    method.eval()
    with torch.no_grad():
        t, _ = method.loss_terms(batch)
    expected = t["causal"] + t["ib"] + 0.5 * t["shortcut"] + 0.5 * t["bd"] + 0.1 * t["iv"] + 0.2 * t["mask"]
    torch.testing.assert_close(t["loss"], expected)
    ib = sum(t[f"dec_{m}"] + 1e-3 * t[f"kl_{m}"] for m in method.modalities)
    torch.testing.assert_close(t["ib"], ib)


def test_inference_heads_and_logged_heads():
    method, batch = _method()
    method.eval()
    with torch.no_grad():
        heads = method.predict_heads(batch)
        assert set(heads) == {"causal", "intervened", "shortcut", "recombined", "iv", "g_text", "g_audio", "g_vision"}
        torch.testing.assert_close(method.predict(batch), heads["causal"])
        method.cfg.inference = "intervened"
        torch.testing.assert_close(method.predict(batch), heads["intervened"])


@pytest.mark.parametrize(
    "fields",
    [
        {"fusion": "transformer"},
        {"fused_vib": True},
        {"shortcut_loss": "grl"},
        {"iv": {"instrument": "shuffled_modality", "shuffle_modality": "audio"}},
        {"encoder": "seq", "seq_d": 16, "fusion": "transformer"},
    ],
    ids=["transformer", "fused_vib", "grl", "shuffled_audio", "seq"],
)
def test_options_train_one_step(fields):
    method, batch = _method(**fields)
    method.train()
    terms, out = method.loss_terms(batch)
    assert torch.isfinite(terms["loss"])
    terms["loss"].backward()
    assert all(p.grad is not None for p in method.f_c.parameters())
    if fields.get("encoder") == "seq":
        assert out.mu["audio"].shape == (16, 16) and method.vib["text"].encoder[0].in_features == 16
        assert all(p.grad is not None for p in method.encoders["vision"].parameters())
    if fields.get("fused_vib"):
        assert "kl_fused" in terms and out.fused_sigma is not None
    if fields.get("shortcut_loss") == "grl":
        method.eval()
        t, out = method.loss_terms(batch)
        (g_s,) = torch.autograd.grad(t["shortcut"], [out.shortcut], retain_graph=True)
        (g_plain,) = torch.autograd.grad(
            (method.f_s(out.shortcut).squeeze(-1) - batch.label).abs().mean(), [out.shortcut]
        )
        torch.testing.assert_close(g_s, -g_plain)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [("mask", "soft", "camib.mask"), ("inference", "both", "camib.inference"), ("tau", 0.0, "camib.tau"),
     ("encoder", "gru", "camib.encoder"), ("lambda_iv", -1.0, "camib.lambda_iv")],
)
def test_invalid_settings_name_the_key(field, value, key):
    with pytest.raises(ValueError, match=key):
        _method(**{field: value})
    with pytest.raises(ValueError, match="camib.iv.shuffle_modality"):
        _method(iv={"shuffle_modality": "smell"})


def test_trains_on_the_synthetic_benchmark_and_logs_diagnostics():
    L.seed_everything(1234, verbose=False)
    bundle = generate(tiny_synthetic())
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    cfg = CaMIBConfig()
    cfg.backbone.fusion = FusionConfig(ff=64)
    method = CaMIB(dm.spec, cfg)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accumulate_grad_batches=cfg.optim.accumulate,
    )
    trainer.fit(method, datamodule=dm)
    assert method.perm_generator.initial_seed() == 1234, "the permutation generator is seeded from the run seed"
    assert method.train_label_mean == pytest.approx(float(np.mean(bundle.train.label)))
    history = method.valid_history
    assert history[-1]["causal_MAE"] < history[0]["causal_MAE"]
    assert history[-1]["MAE"] == pytest.approx(history[-1]["causal_MAE"], abs=1e-5)
    logged = trainer.callback_metrics
    for key in ("kl_text", "sigma_audio", "mask_mean", "mask_std", "mask_frac_gt_half", "L_iv", "L_bd",
                "causal_MAE", "shortcut_MAE", "recombined_MAE", "g_vision_MAE"):
        assert torch.isfinite(logged[f"train/{key}"]), key
    for key in ("val/intervened_MAE", "val/g_text_MAE", "val/recombined_MAE", "val/mask_mean", "val/kl_vision"):
        assert torch.isfinite(logged[key]), key
    assert 0 < float(logged["train/mask_mean"]) < 1
