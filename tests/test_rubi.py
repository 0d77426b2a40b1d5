"""RUBi-style text masking (docs/algorithms.md#rubi): the mask, its gradient routing, no mask at test time."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.config import build_config
from benchmarks.run import run_job
from methods.rubi import Rubi, RubiConfig
from tests.conftest import TINY_JOB, tiny_method


def _method(modalities=None, **fields):
    return tiny_method(Rubi, modalities, **fields)


def _nonzero(loss: torch.Tensor, params: list[torch.nn.Parameter]) -> int:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(int(torch.count_nonzero(g)) for g in grads if g is not None)


def test_config_defaults_and_errors():
    assert (RubiConfig().mask, RubiConfig().lambda_text) == ("signed", 1.0)
    assert build_config(["method=rubi", "rubi.mask=plain"]).model.mask == "plain"
    with pytest.raises(ValueError, match="rubi.mask must be one of"):
        _method(mask="hard")
    with pytest.raises(ValueError, match="needs the text modality"):
        _method(modalities=["audio", "vision"])


def test_signed_and_plain_masks_match_their_formulas():
    method, _ = _method()
    text = torch.tensor([2.0, 2.0, -1.0, 0.5, 3.0])
    mm = torch.tensor([0.7, -0.7, -2.0, 0.0, 1.0])
    signed = method.mask_of(text, mm)
    expected = 2.0 / (1.0 + torch.exp(-text * torch.sign(mm)))
    torch.testing.assert_close(signed, expected)
    assert torch.all((signed > 0) & (signed < 2))
    assert signed[0] > 1 and signed[2] > 1, "agreeing signs give a mask above 1"
    assert signed[1] < 1, "disagreeing signs give a mask below 1"
    assert signed[3] == 1, "a zero main output leaves the sample unmasked"
    method, _ = _method(mask="plain")
    torch.testing.assert_close(method.mask_of(text, mm), torch.sigmoid(text))


def test_losses_and_gradient_routing():
    method, batch = _method()
    method.eval()
    y = batch.label
    terms = method.losses(batch)
    out = method.outputs(batch)
    torch.testing.assert_close(out.mm, method.model(batch))
    torch.testing.assert_close(out.masked, out.mm * 2 * torch.sigmoid(out.text * torch.sign(out.mm)))
    torch.testing.assert_close(terms["loss_masked"], (out.masked - y).abs().mean())
    torch.testing.assert_close(terms["loss_text"], (out.text - y).abs().mean())
    torch.testing.assert_close(terms["loss"], terms["loss_masked"] + terms["loss_text"])
    text_encoder = list(method.model.encoders["text"].parameters())
    head = list(method.text_head.parameters())
    assert _nonzero(terms["loss_text"], text_encoder) == 0, "the text-only loss must not reach the encoder"
    assert _nonzero(terms["loss_text"], list(method.model.parameters())) == 0
    assert _nonzero(terms["loss_text"], head) > 0
    assert _nonzero(terms["loss_masked"], head) > 0, "the masked loss trains the text head through the mask"
    assert _nonzero(terms["loss_masked"], text_encoder) > 0, "the main model is trained through the masked output"
    grad_mm = torch.autograd.grad((out.masked - y).abs().mean(), out.mm, retain_graph=True)[0]
    expected = out.mask.detach() * torch.sign(out.masked.detach() - y) / len(y)
    torch.testing.assert_close(grad_mm, expected), "y_mm gets the masked L1 gradient scaled by the mask"
    assert 0 < terms["mask_mean"] < 2 and 0 <= terms["mask_frac_above_1"] <= 1


def test_test_time_prediction_drops_the_mask():
    method, batch = _method()
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method.predict(batch), method.model(batch))
        heads = method.predict_heads(batch)
        torch.testing.assert_close(heads["text"], method.outputs(batch).text)


def test_training_logs_the_diagnostics(tmp_path):
    run_dir = run_job(build_config([*TINY_JOB, "method=rubi", "trainer.max_epochs=2", f"output.root={tmp_path}"]))
    result = json.loads((run_dir / "result.json").read_text())
    assert all(np.isfinite(result["metrics"][name]["MAE"]) for name in result["test_sets"])
    logs = pd.read_csv(run_dir / "logs" / "metrics.csv")
    epochs = logs.dropna(subset=["train/mask_mean_epoch"])
    assert len(epochs) == 2 and epochs["train/mask_mean_epoch"].between(0, 2).all()
    assert epochs["train/mask_frac_above_1_epoch"].between(0, 1).all()
    assert logs["val/text_MAE"].notna().sum() == 2
