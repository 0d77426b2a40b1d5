"""Every registered method passes the same smoke test (DomainBed style), plus backbone contracts."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.datamodule import MSADataModule
from datamodules.schema import Batch, FeatureSpec
from datamodules.synthetic import generate
from methods import METHODS
from methods.backbone import OPTIM_GROUPS, BackboneConfig, FusionConfig, LFTFBackbone
from tests.conftest import tiny_synthetic

SMALL_FUSION = FusionConfig(ff=64)
VARIANTS = {
    "tav": {},
    "text_only": {"modalities": ["text"]},
    "text_audio": {"modalities": ["text", "audio"]},
    "length_1": {"max_len": {"text": 3, "audio": 1, "vision": 1}, "min_len": {"text": 3, "audio": 1, "vision": 1}},
}


def _small_cfg(method_cls):
    cfg = method_cls.config_class()
    cfg.backbone.fusion = dataclasses.replace(SMALL_FUSION)
    return cfg


def _fit(method, dm, epochs=2):
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, accumulate_grad_batches=method.cfg.optim.accumulate,
    )
    trainer.fit(method, datamodule=dm)
    trainer.test(method, datamodule=dm, verbose=False)
    return trainer


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", list(METHODS))
def test_registry_smoke(name, variant):
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic(**VARIANTS[variant]))
    dm = MSADataModule(bundle, batch_size=32, seed=0)
    method = METHODS[name](dm.spec, _small_cfg(METHODS[name]))
    before = {k: v.clone() for k, v in method.state_dict().items()}
    _fit(method, dm)
    changed = [k for k, v in method.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert changed, "training changed no parameter"
    assert method.valid_history and np.isfinite(method.valid_history[-1]["MAE"])
    assert set(method.test_metrics) == set(dm.test_set_names)
    for set_name, out in method.test_outputs.items():
        assert out["prediction"].shape == (len(dm.test_splits[set_name]),)
        assert np.all(np.isfinite(out["prediction"]))
    batch = next(iter(dm.val_dataloader()))
    method.eval()
    with torch.no_grad():
        p1, p2 = method.predict(batch), method.predict(batch)
    assert p1.shape == (len(batch),) and torch.equal(p1, p2), "evaluation is deterministic"


@pytest.mark.parametrize("heads", [True, False])
@pytest.mark.parametrize("name", list(METHODS))
def test_one_pass_evaluation_equals_predict_and_predict_heads(name, heads):
    """`predict_with_heads` (one forward pass where a method shares it) gives exactly what evaluation got from
    `predict` and `predict_heads` called one after the other, after some training (MMCI's memory strata filled)."""
    torch.manual_seed(0)
    dm = MSADataModule(generate(tiny_synthetic()), batch_size=32, seed=0)
    method = METHODS[name](dm.spec, _small_cfg(METHODS[name]))
    _fit(method, dm, epochs=1)
    method.eval()
    for batch in dm.iter_eval_batches("valid"):
        with torch.no_grad():
            separate_heads = method.predict_heads(batch) if heads else {}
            separate = method.predict(batch)
            pred, joint_heads = method.predict_with_heads(batch, heads=heads)
        assert torch.equal(pred, separate)
        assert set(joint_heads) == set(separate_heads)
        for key, value in joint_heads.items():
            assert torch.equal(value, separate_heads[key]), key


@pytest.mark.parametrize("name", list(METHODS))
def test_every_parameter_is_in_an_optimiser_group(name):
    bundle = generate(tiny_synthetic())
    method = METHODS[name](FeatureSpec.from_split(bundle.train), _small_cfg(METHODS[name]))
    opt = method.configure_optimizers()
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_groups == {id(p) for p in method.parameters() if p.requires_grad}
    assert {g["name"] for g in opt.param_groups} <= set(OPTIM_GROUPS)
    cfg = method.cfg.optim
    for group in opt.param_groups:
        assert group["lr"] == cfg.lr[group["name"]], group["name"]


def test_baseline_uses_the_documented_learning_rates():
    bundle = generate(tiny_synthetic())
    method = METHODS["baseline"](FeatureSpec.from_split(bundle.train), _small_cfg(METHODS["baseline"]))
    lrs = {g["name"]: g["lr"] for g in method.configure_optimizers().param_groups}
    assert lrs == {"audio_lstm": 5e-3, "vision_lstm": 1e-4, "modality": 1e-3, "head": 1e-3}


def test_baseline_seq_is_the_baseline_head_on_mmci_encoders_and_optimiser():
    """The matched-architecture row: same encoder modules and optimiser settings as MMCI, LF-TF fusion on top."""
    from methods.mmci import MMCIConfig

    bundle = generate(tiny_synthetic())
    spec = FeatureSpec.from_split(bundle.train)
    seq = METHODS["baseline_seq"](spec, _small_cfg(METHODS["baseline_seq"]))
    mmci = METHODS["mmci"](spec, MMCIConfig())
    for m in spec.modalities:
        ours = {k: v.shape for k, v in seq.encoders[m].encoder.state_dict().items()}
        assert ours == {k: v.shape for k, v in mmci.encoders[m].state_dict().items()}, m
    assert dataclasses.asdict(seq.cfg.optim) == dataclasses.asdict(mmci.cfg.optim)
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in seq.configure_optimizers().param_groups}
    assert groups == {"modality": (1e-3, 0.0), "head": (1e-3, 0.0)} and seq.cfg.optim.accumulate == 1
    assert seq.heads["audio"][0].in_features == 64 and seq.heads["audio"][0].out_features == seq.cfg.backbone.dim
    batch = Batch.from_split(bundle.train, np.arange(8))
    seq.eval()
    noisy = dataclasses.replace(batch, audio=batch.audio.clone())
    noisy.audio[torch.arange(noisy.audio.shape[1])[None, :] >= noisy.audio_lengths[:, None]] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(seq.predict(batch), seq.predict(noisy), msg="padding is masked")


def test_backbone_ignores_padding():
    bundle = generate(tiny_synthetic())
    spec = FeatureSpec.from_split(bundle.train)
    model = LFTFBackbone(spec, BackboneConfig(fusion=SMALL_FUSION)).eval()
    batch = Batch.from_split(bundle.train, np.arange(8))
    noisy = dataclasses.replace(batch, audio=batch.audio.clone(), vision=batch.vision.clone(), text=batch.text.clone())
    for m in ("audio", "vision", "text"):
        x, lengths = getattr(noisy, m), getattr(noisy, f"{m}_lengths")
        pad = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
        x[pad] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(noisy))


def test_padded_and_packed_lstm_paths_compute_the_same_function():
    """``backbone.lstm_impl=padded`` (fused kernel, cut to the batch's longest length) equals the packed path up
    to float rounding, in the output and in every gradient (text pooled by an LSTM too)."""
    bundle = generate(tiny_synthetic())
    spec = FeatureSpec.from_split(bundle.train)
    batch = Batch.from_split(bundle.train, np.arange(16))
    outputs, grads = {}, {}
    for impl in ("padded", "packed"):
        torch.manual_seed(0)
        cfg = BackboneConfig(fusion=dataclasses.replace(SMALL_FUSION, dropout=0.0, output_dropout=0.0), lstm_impl=impl)
        cfg.text.pool = "lstm"
        model = LFTFBackbone(spec, cfg)
        out = model(batch)
        out.sum().backward()
        outputs[impl] = out.detach()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(outputs["padded"], outputs["packed"], rtol=1e-5, atol=1e-6)
    assert grads["padded"].keys() == grads["packed"].keys()
    for name in grads["padded"]:
        torch.testing.assert_close(grads["padded"][name], grads["packed"][name], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="backbone.lstm_impl must be one of"):
        LFTFBackbone(spec, BackboneConfig(lstm_impl="cudnn"))


@pytest.mark.parametrize("impl", ["fused", "foreach", "for_loop"])
def test_adam_kernels_make_the_same_update(impl):
    bundle = generate(tiny_synthetic())
    spec = FeatureSpec.from_split(bundle.train)
    params = {}
    for name in ("for_loop", impl):
        torch.manual_seed(0)
        cfg = _small_cfg(METHODS["baseline"])
        cfg.optim.impl = name
        method = METHODS["baseline"](spec, cfg)
        optimizer = method.configure_optimizers()
        for p in method.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        params[name] = torch.cat([p.detach().flatten() for p in method.parameters()])
    torch.testing.assert_close(params[impl], params["for_loop"], rtol=1e-6, atol=1e-7)


def test_unknown_adam_kernel_is_refused():
    bundle = generate(tiny_synthetic())
    cfg = _small_cfg(METHODS["baseline"])
    cfg.optim.impl = "sgd"
    method = METHODS["baseline"](FeatureSpec.from_split(bundle.train), cfg)
    with pytest.raises(ValueError, match="optim.impl must be one of"):
        method.configure_optimizers()


def test_backbone_finetune_text_encoder_from_local_dir(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=300, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    bundle = generate(tiny_synthetic())
    split = dataclasses.replace(bundle.train, text=None)
    spec = FeatureSpec.from_split(split)
    assert spec.text_input == "ids"
    cfg = BackboneConfig(fusion=SMALL_FUSION)
    cfg.text.encoder = str(tmp_path)
    model = LFTFBackbone(spec, cfg)
    out = model(Batch.from_split(split, np.arange(4)))
    assert out.shape == (4,)
    out.sum().backward()
    assert model.encoders["text"].encoder.embeddings.word_embeddings.weight.grad is not None
    cfg.text.encoder = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="local transformers model directory"):
        LFTFBackbone(spec, cfg)
