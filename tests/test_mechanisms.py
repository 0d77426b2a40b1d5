"""Mechanism diagnostics (issue 17 item 4): MMCI's attention per modality / relation, CaMIB's mask on the fused
dimensions that carry the true shortcut, GEAR's weights by true conflict and its h_b-shuffle probe; computed at the
current weights on valid / test without touching the run's random stream, and written by a run to result.json."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks.config import build_config
from benchmarks.run import run_job
from datamodules.datamodule import MSADataModule
from datamodules.synthetic import generate
from methods import METHODS
from methods.bias_id import conflict_flags, shortcut_modalities
from methods.camib import mask_on_correlated_dims
from methods.metrics import METRIC_KEYS
from tests.conftest import TINY_JOB, tiny_synthetic
from tests.test_methods import _small_cfg


def _single(modality: str = "audio") -> MSADataModule:
    """Tiny synthetic data of scenario ``single``: the shortcut in ``modality`` only."""
    return MSADataModule(generate(tiny_synthetic(scenario="single", single_modality=modality)), batch_size=32, seed=0)


def _method(name: str, dm: MSADataModule, **fields):
    torch.manual_seed(0)
    cfg = _small_cfg(METHODS[name])
    for key, value in fields.items():
        setattr(cfg, key, value)
    method = METHODS[name](dm.spec, cfg)
    method.eval()
    return method


def test_shortcut_modalities_come_from_the_ground_truth():
    z = torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    assert shortcut_modalities(z) == ["audio"]
    assert shortcut_modalities(None) == []
    assert shortcut_modalities(torch.tensor([[1.0, -1.0, 1.0]])) == ["text", "audio", "vision"]


def test_mmci_attention_per_modality_and_relation():
    dm = _single("audio")
    method = _method("mmci", dm)
    diag = method.compute_mechanism_diagnostics(dm)
    assert diag["shortcut_modalities"] == ["audio"]
    assert set(diag["sets"]) == {"valid", *dm.test_set_names}
    valid = diag["sets"]["valid"]
    with torch.no_grad():
        outs = [method.graph_forward(b) for b in dm.iter_eval_batches("valid")]
    beta_audio = torch.cat([o.beta["audio"][..., 0].mean(1) for o in outs]).mean()
    alpha_at = torch.cat([o.alpha["a->t"][..., 0].mean((1, 2)) for o in outs]).mean()
    assert valid["beta_c"]["audio"] == pytest.approx(float(beta_audio), abs=1e-6)
    assert valid["alpha_c"]["a->t"] == pytest.approx(float(alpha_at), abs=1e-6)
    assert len(valid["alpha_c"]) == 9 and all(0 < v < 1 for v in valid["alpha_c"].values())
    beta = valid["beta_c"]
    expected_gap = beta["audio"] - (beta["text"] + beta["vision"]) / 2
    assert valid["shortcut_gap"]["beta_c"] == pytest.approx(expected_gap)
    from_audio = [v for k, v in valid["alpha_c"].items() if k.startswith("a->")]
    others = [v for k, v in valid["alpha_c"].items() if not k.startswith("a->")]
    assert valid["shortcut_gap"]["alpha_c_from_shortcut"] == pytest.approx(np.mean(from_audio) - np.mean(others))


def test_mmci_gap_is_left_out_when_every_modality_carries_the_shortcut():
    dm = MSADataModule(generate(tiny_synthetic()), batch_size=32, seed=0)
    diag = _method("mmci", dm).compute_mechanism_diagnostics(dm)
    assert diag["shortcut_modalities"] == ["text", "audio", "vision"]
    assert all("shortcut_gap" not in entry for entry in diag["sets"].values())


def test_mask_diagnostic_uses_the_partial_correlation_with_z_given_y():
    """A dimension that copies y correlates with z in IID data (z agrees with sign(y) 90 % of the time), but not
    given y: the z-dimension is the one that carries z beyond y."""
    gen = torch.Generator().manual_seed(0)
    n = 2000
    y = torch.randn(n, generator=gen, dtype=torch.float64)
    agree = torch.rand(n, generator=gen, dtype=torch.float64) < 0.9
    z = torch.where(agree, torch.sign(y), -torch.sign(y))
    noise = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    fused = torch.stack([y, z + 0.3 * noise[:, 0], noise[:, 1], noise[:, 2], torch.zeros(n, dtype=torch.float64)], 1)
    mask = torch.tensor([0.9, 0.1, 0.5, 0.5, 0.5], dtype=torch.float64).expand(n, 5)
    out = mask_on_correlated_dims(fused, mask, y, z, 1)
    assert out["z_dims"] == [1] and out["mask_on_z_dims"] == pytest.approx(0.1)
    assert out["mask_on_y_dims"] == pytest.approx(0.9) and out["y_abs_corr"] == pytest.approx(1.0)
    assert out["z_abs_pcorr"] > 0.9
    raw = [abs(np.corrcoef(fused[:, k].numpy(), z.numpy())[0, 1]) for k in (0, 1)]
    assert raw[0] > 0.5, "the y-copy is correlated with z before conditioning on y"


def test_camib_mask_diagnostic_on_the_single_scenario():
    dm = _single("vision")
    method = _method("camib", dm)
    diag = method.compute_mechanism_diagnostics(dm)
    for name, entry in diag["sets"].items():
        assert 0 < entry["mask_mean"] < 1
        assert set(entry["shortcut"]) == {"vision"}, name
        part = entry["shortcut"]["vision"]
        assert len(part["z_dims"]) == diag["top_dims"] and 0 <= part["mask_on_z_dims"] <= 1


@pytest.mark.parametrize("name", ["camib", "gear", "mmci"])
def test_diagnostics_leave_the_random_streams_alone(name):
    """Computed inside a fork of the generators and in eval mode, then training mode is restored: a run's later
    draws are the same whether or not the diagnostics ran (CaMIB with eval_sample draws latents at evaluation)."""
    dm = _single("text")
    method = _method(name, dm, **({"eval_sample": True} if name == "camib" else {}))
    method.train()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    method.compute_mechanism_diagnostics(dm)
    assert torch.equal(torch.get_rng_state(), state)
    assert method.training


def test_gear_probe_reads_zero_when_the_robust_path_ignores_h_b():
    dm = _single("audio")
    method = _method("gear", dm)
    diag = method.compute_mechanism_diagnostics(dm)
    probe = diag["hb_shuffle_probe"]
    assert set(probe) == {"valid", *dm.test_set_names}
    assert probe["valid"]["mean_abs_change"] > 0 and set(probe["valid"]["per_modality"]) == {"text", "audio", "vision"}
    d = method.cfg.swap_dim
    with torch.no_grad():
        for phi in method.phi_c.values():
            phi[0].weight[:, d:] = 0.0  # phi_c([h_c ; sg(h_b)]) no longer reads h_b
    probe = method.compute_mechanism_diagnostics(dm)["hb_shuffle_probe"]
    for entry in probe.values():
        assert entry["mean_abs_change"] == 0.0 and entry["mae"] == entry["mae_shuffled"]
        assert all(v == 0.0 for v in entry["per_modality"].values())


def test_gear_weights_split_by_true_conflict():
    dm = _single("audio")
    method = _method("gear", dm)
    record = method.compute_mechanism_diagnostics(dm)["weights"]["train"]
    weights, flags = [], []
    with torch.no_grad():
        for batch in dm.iter_eval_batches("train"):
            weights.append(method.compute_losses(batch, swap=False).weights)
            flags.append(conflict_flags(batch.z, batch.label))
    w, c = torch.cat(weights).double(), torch.cat(flags)
    assert record["n"] == len(dm.train_split) and record["n_conflict"] == int(c.sum()) > 0
    assert record["mean_w_conflict"] == pytest.approx(float(w[c].mean()))
    assert record["mean_w_aligned"] == pytest.approx(float(w[~c].mean()))
    assert 0 <= record["auroc"] <= 1


def test_a_run_writes_and_logs_the_mechanism_diagnostics(tmp_path):
    job = [item.replace("synthetic.", "source.", 1) for item in TINY_JOB]
    cfg = build_config([
        *job, "method=camib", "dataset=synthetic_single", "synthetic_single.single_modality=audio",
        "trainer.max_epochs=2", f"output.root={tmp_path}",
    ])
    run_dir = run_job(cfg)
    result = json.loads((run_dir / "result.json").read_text())
    mechanism = result["diagnostics"]["mechanism"]
    assert set(mechanism["sets"]) == {"valid", *result["test_sets"]}
    assert "audio" in mechanism["sets"]["ood_audio"]["shortcut"]
    logged = pd.read_csv(run_dir / "logs" / "metrics.csv")
    column = "mechanism/sets/valid/mask_mean"
    expected = mechanism["sets"]["valid"]["mask_mean"]
    assert column in logged and logged[column].dropna().iloc[-1] == pytest.approx(expected)


def test_a_method_without_a_mechanism_writes_none(tmp_path):
    run_dir = run_job(build_config([*TINY_JOB, "trainer.max_epochs=1", f"output.root={tmp_path}"]))
    assert "mechanism" not in json.loads((run_dir / "result.json").read_text())["diagnostics"]


def _mechanism_runs(root, rows):
    """Fake complete runs with a ``diagnostics.mechanism`` tree: rows of (label, method, seed, mechanism)."""
    for label, method, seed, mechanism in rows:
        run = root / f"{label}-s{seed}"
        run.mkdir(parents=True)
        (run / "result.json").write_text(json.dumps({
            "method": method, "label": label, "dataset": "synthetic_single", "seed": seed, "test_sets": ["test"],
            "metrics": {"test": dict.fromkeys(METRIC_KEYS, 0.9)}, "diagnostics": {"mechanism": mechanism},
        }))
        (run / "done").write_text("x")


def test_mechanism_summary_over_seeds_and_key_quantities(tmp_path, capsys):
    from benchmarks.cli import main as cli_main
    from benchmarks.mechanisms import headline_markdown, key_rows, mechanism_table, summarise, write_summary
    from benchmarks.statistics import bootstrap_mean_ci

    gaps = {1111: -0.2, 1112: -0.1, 1113: -0.3}
    rows = [("mmci", "mmci", s, {"shortcut_modalities": ["text"], "sets": {"valid": {
        "beta_c": {"text": 0.3, "audio": 0.6, "vision": 0.5}, "shortcut_gap": {"beta_c": g}}}})
        for s, g in gaps.items()]
    rows += [("camib", "camib", s, {"top_dims": 8, "sets": {"valid": {"mask_mean": 0.5, "n": 10, "shortcut": {
        "text": {"z_dims": [1, 2], "mask_on_z_dims": 0.1 * s, "mask_on_y_dims": 0.9}}}}}) for s in (1, 2)]
    rows += [("baseline", "baseline", 1111, {})]  # no mechanism: skipped
    _mechanism_runs(tmp_path / "runs", rows)
    table = mechanism_table(tmp_path / "runs")
    assert set(table["label"]) == {"mmci", "camib"}
    leaves = set(table["key"].str.split(".").str[-1])
    assert not leaves & {"z_dims", "shortcut_modalities"}, "lists are not scalars"
    summary = summarise(table).set_index(["label", "key"])
    gap = summary.loc[("mmci", "sets.valid.shortcut_gap.beta_c")]
    values = list(gaps.values())
    assert gap["n"] == 3 and gap["mean"] == pytest.approx(np.mean(values))
    assert gap["std"] == pytest.approx(np.std(values, ddof=1))
    assert (gap["ci_low"], gap["ci_high"]) == pytest.approx(bootstrap_mean_ci(values))
    keys = key_rows(summarise(table))
    assert keys[keys["label"] == "camib"]["key"].tolist() == [
        "sets.valid.shortcut.text.mask_on_z_dims", "sets.valid.shortcut.text.mask_on_y_dims", "sets.valid.mask_mean",
    ], "CaMIB's entries only for the modality that carries the shortcut"
    assert keys[keys["label"] == "mmci"]["key"].tolist()[-1] == "sets.valid.shortcut_gap.beta_c"
    _, markdown = write_summary(tmp_path / "runs", tmp_path / "out")
    assert pd.read_csv(tmp_path / "out" / "mechanisms.csv").shape[0] == len(summarise(table))
    assert "| mmci | beta^c gap" in markdown and (tmp_path / "out" / "mechanisms.md").read_text() == markdown
    assert cli_main(["mechanisms", str(tmp_path / "runs")]) == 0
    assert "beta^c, text nodes" in capsys.readouterr().out
    assert cli_main(["mechanisms", str(tmp_path / "nothing")]) == 1
    headline = headline_markdown(summarise(table))
    assert "| mmci | synthetic_single | 3 | β^c gap -0.200 [" in headline
    assert "| camib | synthetic_single | 2 | mask on z dims (text) 0.150 [" in headline
