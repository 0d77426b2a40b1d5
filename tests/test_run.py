"""One job end to end: the run folder, determinism, learning, the CLI and config errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from omegaconf.errors import ConfigKeyError, ValidationError

from benchmarks.cli import main
from benchmarks.config import build_config, config_hash
from benchmarks.run import RunExistsError, run_job
from datamodules.schema import GROUND_TRUTH_COLUMNS
from methods.metrics import msa_metrics
from tests.conftest import TINY_JOB


def _job(tmp_path, *extra):
    return build_config([*TINY_JOB, f"output.root={tmp_path}", *extra])


def test_run_writes_a_complete_run_folder(tmp_path):
    run_dir = run_job(_job(tmp_path, "seed=7"))
    for name in ("config.yaml", "result.json", "predictions.csv", "done", "logs/metrics.csv"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "done").stat().st_mtime_ns >= (run_dir / "result.json").stat().st_mtime_ns
    result = json.loads((run_dir / "result.json").read_text())
    assert result["method"] == "baseline" and result["dataset"] == "synthetic" and result["seed"] == 7
    assert result["test_sets"] == ["test", "ood_text", "ood_audio", "ood_vision", "ood_tav"]
    assert result["selection"]["split"] == "valid" and 0 <= result["selected_epoch"] < 3
    assert result["config_hash"] == config_hash(_job(tmp_path, "seed=7"))
    preds = pd.read_csv(run_dir / "predictions.csv")
    assert list(preds.columns) == ["set", "id", "prediction", "label", *GROUND_TRUTH_COLUMNS]
    assert preds.groupby("set").size().to_dict() == {"test": 96, "ood_text": 64, "ood_audio": 64,
                                                     "ood_vision": 64, "ood_tav": 64}
    for name, group in preds.groupby("set"):
        assert group["id"].is_unique
        assert msa_metrics(group["prediction"], group["label"]) == pytest.approx(result["metrics"][name], nan_ok=True)


def test_same_seed_same_metrics_and_refuses_to_overwrite(tmp_path):
    first = json.loads((run_job(_job(tmp_path / "a", "seed=3")) / "result.json").read_text())
    second = json.loads((run_job(_job(tmp_path / "b", "seed=3")) / "result.json").read_text())
    assert first["metrics"] == second["metrics"]
    assert first["selected_epoch"] == second["selected_epoch"]
    with pytest.raises(RunExistsError, match="complete run"):
        run_job(_job(tmp_path / "a", "seed=3"))
    again = run_job(_job(tmp_path / "a", "seed=3", "output.overwrite=true"))
    assert json.loads((again / "result.json").read_text())["metrics"] == first["metrics"]


def test_baseline_learns_a_small_synthetic_set(tmp_path):
    cfg = _job(tmp_path, "trainer.max_epochs=25", "synthetic.n_train=600", "synthetic.bias=0.5")
    run_dir = run_job(cfg)
    result = json.loads((run_dir / "result.json").read_text())
    preds = pd.read_csv(run_dir / "predictions.csv")
    test = preds[preds.set == "test"]
    mean_mae = np.mean(np.abs(test.label - test.label.mean()))
    assert result["metrics"]["test"]["MAE"] < 0.8 * mean_mae
    assert result["valid_at_selected_epoch"]["MAE"] < 0.8 * mean_mae
    assert result["metrics"]["test"]["Non0_acc_2"] > 0.7


def test_config_aliases_and_errors():
    cfg = build_config(["method=baseline", "baseline.backbone.dim=16", "synthetic.bias=0.7", "seed=5"])
    assert cfg.model.backbone.dim == 16 and cfg.source.bias == 0.7 and cfg.seed == 5
    assert cfg.model.backbone.text.dropout == 0.3, "synthetic applies the MOSI preset"
    assert build_config(["data.preset=false"]).model.backbone.text.dropout == 0.0
    assert build_config(["baseline.backbone.text.dropout=0.1"]).model.backbone.text.dropout == 0.1
    with pytest.raises(ConfigKeyError, match="not_a_field"):
        build_config(["synthetic.not_a_field=1"])
    with pytest.raises(ValidationError, match="bias"):
        build_config(["synthetic.bias=high"])
    with pytest.raises(KeyError, match="registered methods"):
        build_config(["method=nope"])
    assert config_hash(build_config(["seed=1"])) != config_hash(build_config(["seed=2"]))
    assert config_hash(build_config(["output.root=/x"])) == config_hash(build_config(["output.root=/y"]))


def test_cli_run_and_leaderboard(tmp_path, capsys):
    assert main(["run", *TINY_JOB, f"output.root={tmp_path}", "trainer.max_epochs=1"]) == 0
    assert "ood_tav" in capsys.readouterr().out
    assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "board")]) == 0
    board = pd.read_csv(tmp_path / "board" / "leaderboard.csv")
    assert board.loc[0, "method"] == "baseline" and board.loc[0, "n_seeds"] == 1
    assert main(["run", "synthetic.bias=2"]) == 2
    assert "synthetic.bias" in capsys.readouterr().err


def _text_columns(run_dir):
    return pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)


def test_predictions_carry_the_ground_truth_of_synthetic_data(tmp_path):
    from benchmarks.config import to_object
    from benchmarks.leaderboard import load_run
    from datamodules.schema import conflict_flags, group_names_of
    from datamodules.synthetic import generate

    cfg = _job(tmp_path, "trainer.max_epochs=1", "synthetic.shortcut_modalities=[text,vision]")
    run_dir = run_job(cfg)
    preds = _text_columns(run_dir)
    bundle = generate(to_object(cfg.source))
    for name, split in [("test", bundle.test), *bundle.extra_tests.items()]:
        rows = preds[preds["set"] == name]
        pos = {sample_id: i for i, sample_id in enumerate(split.ids.tolist())}
        idx = np.array([pos[i] for i in rows["id"]])
        z, flags = split.z[idx], conflict_flags(split.label[idx], split.z[idx])
        assert rows["z_text"].astype(int).tolist() == z[:, 0].tolist()
        assert set(rows["z_audio"]) == {"0"} and set(rows["conflict_audio"]) == {""}, "no shortcut in audio"
        assert rows["conflict_vision"].astype(int).tolist() == flags[:, 2].tolist()
        assert rows["group"].tolist() == group_names_of(split.label[idx], z).tolist()
        assert all(g.startswith(("+|t", "-|t")) and "a" not in g for g in rows["group"])
    again = load_run(run_dir, recompute=True)
    assert again["metrics"]["test"]["MAE"] == pytest.approx(json.loads((run_dir / "result.json").read_text())[
        "metrics"]["test"]["MAE"], abs=1e-4)


def test_predictions_of_data_without_ground_truth_have_empty_columns(tmp_path, monkeypatch):
    import dataclasses

    from benchmarks.leaderboard import load_run
    from datamodules import DATASETS, DatasetEntry
    from datamodules.synthetic import SyntheticConfig, generate

    def load_without_z(cfg):
        b = generate(cfg)
        strip = lambda split: dataclasses.replace(split, z=None)  # noqa: E731
        return dataclasses.replace(b, name="handmade", train=strip(b.train), valid=strip(b.valid),
                                   test=strip(b.test), extra_tests={})

    monkeypatch.setitem(DATASETS, "handmade", DatasetEntry(SyntheticConfig, load_without_z, "a bundle without z"))
    job = [item.replace("synthetic.", "handmade.", 1) for item in TINY_JOB]
    run_dir = run_job(build_config([*job, "dataset=handmade", f"output.root={tmp_path}", "trainer.max_epochs=1"]))
    preds = _text_columns(run_dir)
    assert list(preds.columns) == ["set", "id", "prediction", "label", *GROUND_TRUTH_COLUMNS]
    assert len(preds) == 96 and all(set(preds[c]) == {""} for c in GROUND_TRUTH_COLUMNS)
    assert "test" in load_run(run_dir, recompute=True)["metrics"]
