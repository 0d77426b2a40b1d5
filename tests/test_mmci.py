"""MMCI (docs/algorithms-mmci-camib.md): attention pairs, relations per modality subset, the backdoor permutation,
isolation without the intervention, node pooling, training, and the synthetic per-modality shortcut switch."""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import pytest
import torch

from datamodules.datamodule import MSADataModule
from datamodules.schema import Batch, FeatureSpec
from datamodules.synthetic import generate
from methods.mmci import (
    MMCI,
    MMCIConfig,
    RelationBlock,
    adaptive_node_pool,
    grad_reverse,
    kmeans,
    relation_list,
    relation_name,
)
from methods.seq_encoders import ConvTransformerEncoder, key_padding_bias, post_norm_layer, sinusoidal_positions
from tests.conftest import tiny_synthetic


def _cfg(**overrides) -> MMCIConfig:
    """A small MMCI (d=16, 4 nodes, FF 32) so every test runs in seconds."""
    cfg = MMCIConfig(d=16, nodes_per_modality=4, enc_heads=2, enc_ff_mult=2)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


LEGACY = {"readout": "unsplit", "combine": "linear", "shortcut_loss": "const"}


def _model_and_batch(modalities=("text", "audio", "vision"), n=12, **overrides) -> tuple[MMCI, Batch]:
    torch.manual_seed(0)
    bundle = generate(tiny_synthetic(modalities=list(modalities)))
    model = MMCI(FeatureSpec.from_split(bundle.train), _cfg(**overrides))
    return model, Batch.from_split(bundle.train, np.arange(n))


@pytest.mark.parametrize("overrides", [{}, {"layers": 2}, {"relations": "grouped", "edges": "window"}])
def test_attention_pairs_sum_to_one(overrides):
    model, batch = _model_and_batch(**overrides)
    with torch.no_grad():
        out = model.graph_forward(batch)
    assert len(out.alpha) == 9 and len(out.beta) == 3
    for name, alpha in out.alpha.items():
        assert alpha.shape[-1] == 2 and alpha.min() >= 0
        torch.testing.assert_close(alpha.sum(-1), torch.ones(alpha.shape[:-1]), msg=name)
        assert alpha[..., 0].std() > 0, f"{name}: attention is input-dependent"
    for beta in out.beta.values():
        torch.testing.assert_close(beta.sum(-1), torch.ones(beta.shape[:-1]))


@pytest.mark.parametrize(
    ("modalities", "names", "strata"),
    [
        (("text", "audio", "vision"), ["t->t", "a->a", "v->v", "t->a", "a->t", "t->v", "v->t", "a->v", "v->a"], 2),
        (("text", "audio"), ["t->t", "a->a", "t->a", "a->t"], 2),
        (("text",), ["t->t"], 1),
    ],
)
def test_relations_match_the_modality_subset(modalities, names, strata):
    assert [relation_name(s, t) for s, t in relation_list(modalities)] == names
    model, batch = _model_and_batch(modalities)
    with torch.no_grad():
        out = model.graph_forward(batch)
    assert list(out.alpha) == names
    assert out.causal.shape == (len(batch), len(names) * 16)
    assert out.shortcut.shape == out.causal.shape, "S lives in C's layout (readout=split)"
    assert set(out.strata) == ({"intra", "inter"} if strata == 2 else {"intra"})
    assert model.w_s is None, "combine=add is a direct sum: nothing learnable can switch the intervention off"
    assert len(model.graph.layers[0].relations) == len(names)
    legacy, _ = _model_and_batch(modalities, **LEGACY)
    with torch.no_grad():
        old = legacy.graph_forward(batch)
    assert old.shortcut.shape == (len(batch), strata * 16)
    assert legacy.w_s.in_features == strata * 16 and legacy.w_s.out_features == len(names) * 16
    with torch.no_grad():
        heads = model.predict_heads(batch)
    assert set(heads) == {"causal", "shortcut", "intervened"}
    assert all(h.shape == (len(batch),) for h in heads.values())


def test_grouped_relations_share_weights_and_window_masks_intra_edges():
    model, batch = _model_and_batch(relations="grouped", edges="window", window=1)
    assert set(model.graph.layers[0].relations) == {"intra", "inter"}
    with torch.no_grad():
        out = model.graph_forward(batch)
    intra, inter = out.edge_mask["a->a"], out.edge_mask["t->a"]
    assert intra.shape == (4, 4) and intra.sum() == 4 + 2 * 3, "tridiagonal: self-loops and +/-1 neighbours"
    assert bool(inter.all())


def test_permutation_changes_only_the_shortcut_partner():
    model, batch = _model_and_batch(n=16)
    model.eval()
    with torch.no_grad():
        out = model.graph_forward(batch)
        perms = model.permutations(len(batch))
        causal, shuffled = model.intervened_inputs(out, perms)
    assert set(perms) == {"intra", "inter"}
    assert not torch.equal(perms["intra"], perms["inter"]), "the two strata are permuted independently"
    for p in perms.values():
        assert torch.equal(torch.sort(p).values, torch.arange(len(batch))) and not torch.equal(p, torch.arange(16))
    torch.testing.assert_close(causal, out.causal, rtol=0, atol=0)
    assert shuffled.shape == causal.shape
    intra, inter = out.shortcut[:, : 3 * 16], out.shortcut[:, 3 * 16 :]
    torch.testing.assert_close(shuffled[:, : 3 * 16], intra[perms["intra"]], rtol=0, atol=0)
    torch.testing.assert_close(shuffled[:, 3 * 16 :], inter[perms["inter"]], rtol=0, atol=0)
    with torch.no_grad():
        shuffled_pred = model.f_int(model.combine(causal, shuffled))
        plain_pred = model.f_int(model.combine(out.causal, out.shortcut))
    assert not torch.allclose(shuffled_pred, plain_pred), "the partner enters the intervened head"
    torch.testing.assert_close(model.combine(causal, shuffled), causal + shuffled, rtol=0, atol=0)



def test_summed_readout_keeps_s_in_c_layout_and_permutes_each_stratum():
    model, batch = _model_and_batch(n=10, aggregate="sum")
    model.eval()
    with torch.no_grad():
        out = model.graph_forward(batch)
        perms = {"intra": torch.arange(10).roll(1), "inter": torch.arange(10).flip(0)}
        causal, shuffled = model.intervened_inputs(out, perms)
    assert causal.shape == out.shortcut.shape == (10, 16)
    torch.testing.assert_close(out.shortcut, out.strata["intra"] + out.strata["inter"])
    torch.testing.assert_close(shuffled, out.strata["intra"][perms["intra"]] + out.strata["inter"][perms["inter"]])

def _saturate_node_attention(model: MMCI, causal: float) -> None:
    """Make the node MLP output beta^c = ``causal`` exactly (0 or 1) for every node, whatever the input."""
    last = model.graph.layers[0].node[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([1e4, -1e4]) if causal else torch.tensor([-1e4, 1e4]))


@pytest.mark.parametrize("layout", ["split", "unsplit"])
def test_causal_branch_sees_node_states_only_through_beta_c(layout):
    """Split layout (CAL): the causal vector's only path from the node states h is x^c = beta^c h. With beta^c = 0
    exactly, dC/dh is exactly 0 while dS/dh is not; with beta^c = 1, dS/dh is 0. The earlier layout adds the
    unsplit h to both readouts, so C depends on h whatever beta says."""
    model, batch = _model_and_batch(n=8, **({} if layout == "split" else LEGACY))
    model.eval()
    with torch.no_grad():
        nodes = model.nodes(batch)
    for causal_share, silent, live in ((0.0, "causal", "shortcut"), (1.0, "shortcut", "causal")):
        _saturate_node_attention(model, causal_share)
        leaves = {m: x.clone().requires_grad_(True) for m, x in nodes.items()}
        out = model.graph(leaves)
        assert all(torch.equal(b[..., 0], torch.full_like(b[..., 0], causal_share)) for b in out.beta.values())
        vectors = {"causal": out.causal, "shortcut": out.shortcut}
        grads = {
            name: torch.autograd.grad(vec.pow(2).sum(), list(leaves.values()), retain_graph=True)
            for name, vec in vectors.items()
        }
        assert all(g.abs().sum() > 0 for g in grads[live]), f"{live} must depend on the node states"
        if layout == "split":
            assert all(torch.equal(g, torch.zeros_like(g)) for g in grads[silent]), (
                f"beta^{silent[0]} = 0: the {silent} branch must not see the unsplit node state"
            )
        else:
            assert all(g.abs().sum() > 0 for g in grads[silent]), "the unsplit residual leaks h into both branches"


def _grads(model: MMCI, batch: Batch, perms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    model.zero_grad()
    total, _ = model.losses(batch, perms)
    total.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("lambda_int", [0.0, 0.5])
def test_without_the_intervention_the_partner_cannot_reach_the_causal_gradient(lambda_int):
    model, batch = _model_and_batch(n=16, lambda_int=lambda_int, inference="causal")
    model.eval()
    identity = {s: torch.arange(16) for s in ("intra", "inter")}
    shuffled = {"intra": torch.arange(16).roll(3), "inter": torch.arange(16).flip(0)}
    a, b = _grads(model, batch, identity), _grads(model, batch, shuffled)
    causal_side = [k for k in a if k.startswith("graph.") and ".w_c." in k] + [k for k in a if k.startswith("f_c.")]
    assert causal_side
    if lambda_int == 0:
        assert set(a) == set(b) and not any(k.startswith(("f_int.", "w_s.")) for k in a)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    else:
        assert any(not torch.allclose(a[k], b[k]) for k in causal_side if k.startswith("graph.")), (
            "with lambda_int > 0 the shuffled partner changes the causal branch's gradient"
        )


def test_node_pooling_bins_cover_valid_frames_only():
    states = torch.arange(1, 9, dtype=torch.float32).view(1, 8, 1).repeat(3, 1, 1)
    lengths = torch.tensor([8, 3, 1])
    states[1, 3:] = 100.0
    states[2, 1:] = 100.0
    nodes = adaptive_node_pool(states, lengths, 4)[..., 0]
    torch.testing.assert_close(nodes[0], torch.tensor([1.5, 3.5, 5.5, 7.5]))
    torch.testing.assert_close(nodes[1], torch.tensor([1.0, 1.5, 2.5, 3.0]), msg="l < n: every bin >= 1 frame")
    torch.testing.assert_close(nodes[2], torch.ones(4), msg="length 1: every node is the one frame")
    single = adaptive_node_pool(states[:2], lengths[:2], 1)[..., 0, 0]
    torch.testing.assert_close(single, torch.tensor([4.5, 2.0]))


def test_nodes_per_modality_degrade_with_short_data():
    bundle = generate(tiny_synthetic(max_len={"text": 3, "audio": 1, "vision": 1},
                                     min_len={"text": 3, "audio": 1, "vision": 1}))
    model = MMCI(FeatureSpec.from_split(bundle.train), _cfg(nodes_per_modality=16))
    assert model.n_nodes == {"text": 3, "audio": 1, "vision": 1}
    with torch.no_grad():
        out = model.graph_forward(Batch.from_split(bundle.train, np.arange(4)))
    assert out.alpha["a->v"].shape == (4, 1, 1, 2) and out.alpha["t->a"].shape == (4, 1, 3, 2)


def test_predictions_ignore_padding():
    model, batch = _model_and_batch(n=8)
    model.eval()
    noisy = dataclasses.replace(batch, audio=batch.audio.clone(), vision=batch.vision.clone(), text=batch.text.clone())
    for m in ("audio", "vision", "text"):
        x, lengths = getattr(noisy, m), getattr(noisy, f"{m}_lengths")
        x[torch.arange(x.shape[1])[None, :] >= lengths[:, None]] = 100.0
    with torch.no_grad():
        torch.testing.assert_close(model.predict(batch), model.predict(noisy))
        torch.testing.assert_close(model.predict_heads(batch)["causal"], model.predict_heads(noisy)["causal"])


def test_sinusoidal_positions_table():
    table = sinusoidal_positions(5, 7)
    assert table.shape == (5, 7)
    torch.testing.assert_close(table[0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))
    torch.testing.assert_close(table[3, 0], torch.tensor(np.sin(3.0), dtype=torch.float32))


@pytest.mark.parametrize("kind", ["const", "kl_uniform", "grl"])
def test_shortcut_losses(kind):
    model, batch = _model_and_batch(n=16, shortcut_loss=kind)
    model.train_label_mean = 0.25
    model.eval()
    total, parts = model.losses(batch)
    assert torch.isfinite(total) and parts["L_s"] >= 0
    out = model.graph_forward(batch)
    pred = model.shortcut_prediction(out.shortcut)
    assert pred.shape == (16,) and pred.abs().max() <= (3.0 if kind == "kl_uniform" else 1e6)
    if kind == "const":
        expected = (model.f_s(out.shortcut).squeeze(-1) - 0.25).abs().mean()
        torch.testing.assert_close(model.shortcut_loss(out.shortcut, batch.label), expected)
    if kind == "kl_uniform":
        assert parts["L_s"] > 0, "a random head is not uniform"
        with torch.no_grad():
            model.f_s[-1].weight.zero_()
            model.f_s[-1].bias.zero_()
        torch.testing.assert_close(model.shortcut_loss(out.shortcut, batch.label), torch.tensor(0.0))


def test_gradient_reversal():
    x = torch.randn(5, requires_grad=True)
    (grad_reverse(x, 0.5) * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((5,), -1.0))


def test_bad_config_names_the_field():
    bundle = generate(tiny_synthetic())
    spec = FeatureSpec.from_split(bundle.train)
    with pytest.raises(ValueError, match="mmci.readout"):
        MMCI(spec, _cfg(readout="max"))
    with pytest.raises(ValueError, match="mmci.inference=intervened needs mmci.lambda_int > 0"):
        MMCI(spec, _cfg(lambda_int=0.0))
    with pytest.raises(ValueError, match="mmci.nodes_per_modality"):
        MMCI(spec, _cfg(nodes_per_modality=0))
    with pytest.raises(ValueError, match="mmci.inference=expectation needs mmci.stratify=memory"):
        MMCI(spec, _cfg(inference="expectation"))
    with pytest.raises(ValueError, match="mmci.combine=add .* needs S in C's layout"):
        MMCI(spec, _cfg(readout="unsplit"))


def test_optimiser_groups_follow_mmci_defaults():
    cfg = MMCIConfig()
    assert cfg.optim.accumulate == 1 and cfg.lambda_s == cfg.lambda_int == 0.5
    assert (cfg.readout, cfg.combine, cfg.shortcut_loss) == ("split", "add", "kl_uniform"), "MMCI defaults"
    model, _ = _model_and_batch()
    opt = model.configure_optimizers()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    groups = {g["name"]: (g["lr"], g["weight_decay"]) for g in opt.param_groups}
    assert groups == {"modality": (1e-3, 0.0), "head": (1e-3, 0.0)}
    encoder_params = {id(p) for p in model.encoders.parameters()}
    modality = next(g for g in opt.param_groups if g["name"] == "modality")
    assert {id(p) for p in modality["params"]} == encoder_params


def test_finetuned_text_encoder_keeps_token_states(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=300, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    bundle = generate(tiny_synthetic())
    split = dataclasses.replace(bundle.train, text=None)
    cfg = _cfg()
    cfg.backbone.text.encoder = str(tmp_path)
    model = MMCI(FeatureSpec.from_split(split), cfg)
    batch = Batch.from_split(split, np.arange(6))
    states, mask = model.encoders["text"](batch)
    assert states.shape == (6, split.text_ids.shape[2], 16) and torch.equal(mask, batch.text_mask())
    model.losses(batch)[0].backward()
    assert model.encoders["text"].encoder.embeddings.word_embeddings.weight.grad is not None
    groups = {g["name"]: g["lr"] for g in model.configure_optimizers().param_groups}
    assert groups["text_encoder"] == 5e-5 and groups["modality"] == 1e-3


def test_trains_and_logs_its_diagnostics():
    torch.manual_seed(0)
    dm = MSADataModule(generate(tiny_synthetic()), batch_size=32, seed=0)
    model = MMCI(dm.spec, _cfg())
    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert model.train_label_mean == pytest.approx(float(dm.train_split.label.mean()), abs=1e-6)
    first, last = model.valid_history[0], model.valid_history[-1]
    for key in ("causal_MAE", "shortcut_MAE", "intervened_MAE", "shortcut_spread", "attn/t->a", "node_attn/vision"):
        assert np.isfinite(last[key]), key
    assert 0 < last["attn/v->v"] < 1
    assert last["intervened_MAE"] < first["intervened_MAE"], "validation MAE improves while training"
    logged = trainer.callback_metrics
    for key in ("train/L_s", "train/L_int", "train/attn/t->t", "train/node_attn/text", "val/attn/a->v"):
        assert key in logged, key


def test_kmeans_finds_separated_strata_with_their_frequencies():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 4, generator=gen) * 0.1 + 5, torch.randn(10, 4, generator=gen) * 0.1 - 5])
    centres, weights = kmeans(x, 2, 10, torch.Generator().manual_seed(1))
    order = centres[:, 0].argsort(descending=True)
    torch.testing.assert_close(centres[order], torch.stack([x[:30].mean(0), x[30:].mean(0)]))
    torch.testing.assert_close(weights[order], torch.tensor([0.75, 0.25]))


def test_memory_variant_fifo_strata_and_expectation():
    model, batch = _model_and_batch(n=8, stratify="memory", memory_size=20, memory_strata=3, inference="expectation")
    assert {"strata_centres", "strata_weights", "strata_ready"} <= set(model.state_dict())
    assert "memory" not in model.state_dict()
    assert not model.memory_ready and not model.refresh_strata()
    pushed = [torch.randn(8, model.memory.shape[1]) for _ in range(3)]
    for rows in pushed:
        model.push_memory(rows)
    torch.testing.assert_close(model.memory[:4], pushed[2][4:])
    torch.testing.assert_close(model.memory[4:8], pushed[0][4:])
    torch.testing.assert_close(model.memory[16:], pushed[2][:4])
    assert model.refresh_strata() and model.memory_ready and not model.refresh_strata()
    torch.testing.assert_close(model.strata_weights.sum(), torch.tensor(1.0))
    model.eval()
    with torch.no_grad():
        out = model.graph_forward(batch)
        manual = sum(
            w * model.f_int(model.combine(out.causal, c.expand(8, -1))).squeeze(-1)
            for c, w in zip(model.strata_centres[:, None], model.strata_weights)
        )
        torch.testing.assert_close(model.predict(batch), manual)
        torch.testing.assert_close(model.predict_heads(batch)["expectation"], manual)
        a, _ = model.losses(batch, {s: torch.arange(8) for s in ("intra", "inter")})
        b, _ = model.losses(batch, {s: torch.arange(8).flip(0) for s in ("intra", "inter")})
    torch.testing.assert_close(a, b, rtol=0, atol=0, msg="with strata the batch partner plays no role")


def test_memory_variant_trains():
    torch.manual_seed(0)
    dm = MSADataModule(generate(tiny_synthetic()), batch_size=32, seed=0)
    model = MMCI(dm.spec, _cfg(stratify="memory", memory_size=256, memory_strata=4, inference="expectation"))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, datamodule=dm)
    assert model.memory_ready and model._memory_fill == 256
    assert all(np.isfinite(h["expectation_MAE"]) for h in model.valid_history)


def test_synthetic_shortcut_in_one_modality_only():
    from tests.test_synthetic import _agreement, _frame_shortcut, _text_shortcut

    base_cfg = tiny_synthetic(n_train=2000)
    only_vision = tiny_synthetic(n_train=2000, shortcut_modalities=["vision"])
    full, vision = generate(base_cfg), generate(only_vision)
    np.testing.assert_array_equal(full.train.label, vision.train.label)
    np.testing.assert_array_equal(full.train.vision, vision.train.vision)
    assert not np.array_equal(full.train.audio, vision.train.audio)
    assert abs(_agreement(_frame_shortcut(vision.train, "vision", only_vision), vision.train.label) - 0.9) < 0.04
    assert abs(_agreement(_frame_shortcut(vision.train, "audio", only_vision), vision.train.label) - 0.5) < 0.05
    assert abs(_agreement(_text_shortcut(vision.train), vision.train.label) - 0.5) < 0.05
    with pytest.raises(ValueError, match="synthetic.shortcut_modalities"):
        generate(tiny_synthetic(shortcut_modalities=["smell"]))


def test_training_encoder_layers_match_torchs_with_the_same_dropout_draws():
    """`post_norm_layer` (training on the CPU) against torch's TransformerEncoder on the same input and seed: same
    outputs and gradients up to float rounding, the random stream left where torch leaves it, and a sample without
    any valid step handled as torch's _safe_softmax does (zero attention)."""
    torch.manual_seed(0)
    encoder = ConvTransformerEncoder(5, 16, layers=2, heads=4, ff=32, dropout=0.3).train()
    x = torch.randn(6, 9, 16, requires_grad=True)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 0, 7, 9])[:, None]
    runs = []
    for use_torch in (True, False):
        torch.manual_seed(123)
        if use_torch:
            out = encoder.transformer(x, src_key_padding_mask=~mask)
        else:
            bias, keep = key_padding_bias(mask, encoder.heads, x.dtype)
            out = x
            for layer in encoder.transformer.layers:
                out = post_norm_layer(layer, out, bias, keep)
        rng = torch.get_rng_state()
        grads = torch.autograd.grad((out * torch.randn_like(out)).sum(), [x, *encoder.parameters()], allow_unused=True)
        runs.append((out, rng, grads))
    (ref, ref_rng, ref_grads), (new, new_rng, new_grads) = runs
    assert torch.equal(ref_rng, new_rng), "the same number of random draws"
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(new_grads, ref_grads):
        if b is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    frames = torch.randn(6, 9, 5)
    encoder.eval()
    with torch.no_grad():
        evaluated = encoder(frames, mask)
    assert torch.isfinite(evaluated[mask]).all()


def test_eval_encoder_layers_match_torchs_eval_path():
    """In eval mode on the CPU the encoder runs `post_norm_layer_eval` (fused scaled-dot-product attention):
    the valid steps' outputs equal torch's own eval path up to float rounding, a sample without any valid step
    stays finite, and nothing is drawn from the random stream (no dropout)."""
    torch.manual_seed(0)
    encoder = ConvTransformerEncoder(5, 16, layers=2, heads=4, ff=32, dropout=0.3).eval()
    frames = torch.randn(6, 9, 5)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 4, 1, 0, 7, 9])[:, None]
    with torch.no_grad():
        h = encoder.conv((frames * mask[..., None]).transpose(1, 2)).transpose(1, 2)
        h = h + sinusoidal_positions(9, 16)
        reference = encoder.transformer(h, src_key_padding_mask=~mask)
        state = torch.get_rng_state()
        out = encoder(frames, mask)
        assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(out[mask], reference[mask], rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out).all()
    with torch.enable_grad():  # eval mode with gradients (e.g. a probe): the same values, and a gradient
        frames.requires_grad_(True)
        again = encoder(frames, mask)
        again[mask].sum().backward()
    torch.testing.assert_close(again.detach()[mask], out[mask])
    assert frames.grad is not None and torch.isfinite(frames.grad).all()


def test_edge_attention_is_the_softmax_of_the_edge_mlp_on_concatenated_pairs():
    """RelationBlock.attention (split Linear, sigmoid of the logit difference) against its definition:
    softmax(edge_out(ReLU(edge([h_i ; h_j])))) on every pair, values and gradients."""
    torch.manual_seed(0)
    block = RelationBlock(8, readout=False)
    target, source = torch.randn(3, 4, 8, requires_grad=True), torch.randn(3, 5, 8, requires_grad=True)
    pairs = torch.cat([target[:, :, None].expand(3, 4, 5, 8), source[:, None].expand(3, 4, 5, 8)], dim=-1)
    reference = torch.softmax(block.edge_out(torch.relu(block.edge(pairs))), dim=-1)
    alpha = block.attention(target, source)
    torch.testing.assert_close(alpha, reference)
    weights = torch.randn_like(alpha)
    inputs = [target, source, *block.parameters()]
    for a, b in zip(torch.autograd.grad((alpha * weights).sum(), inputs, allow_unused=True),
                    torch.autograd.grad((reference * weights).sum(), inputs, allow_unused=True)):
        if b is not None:
            torch.testing.assert_close(a, b)
