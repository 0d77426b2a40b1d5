"""Post-hoc model selection (docs/protocol.md#model-selection): per-epoch records in the run folder, the rules, the
leaderboard's ``--selection`` and the GEAR selection window."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main as cli_main
from benchmarks.config import build_config
from benchmarks.leaderboard import build_leaderboard, leaderboard_markdown, run_group_metrics
from benchmarks.run import run_job
from benchmarks.selection import SELECTIONS, iid_valid_epoch, reselect
from methods import METHODS
from methods.epoch_records import FILE_NAME, EpochRecorder, load_epoch_records
from tests.conftest import TINY_JOB


def _run(root: Path, *extra: str) -> tuple[Path, dict]:
    run_dir = run_job(build_config([*TINY_JOB, f"output.root={root}", "trainer.max_epochs=4", *extra]))
    return run_dir, json.loads((run_dir / "result.json").read_text())


@pytest.fixture(scope="module")
def baseline_run(tmp_path_factory) -> tuple[Path, dict]:
    return _run(tmp_path_factory.mktemp("runs"), "seed=5")


def test_every_trained_epoch_is_recorded_on_valid_and_every_test_set(baseline_run):
    run_dir, result = baseline_run
    records = load_epoch_records(run_dir / FILE_NAME)
    assert records.epochs.tolist() == [h["epoch"] for h in result["valid_history"]]
    assert set(records.sets) == {"valid", *result["test_sets"]}
    for name in result["test_sets"]:
        assert records.sets[name].prediction.shape == (records.epochs.size, result["n_samples"][name])
        assert records.sets[name].prediction.dtype == np.float32
    assert result["epoch_records"] == {"file": FILE_NAME, "bytes": (run_dir / FILE_NAME).stat().st_size}


def test_iid_valid_reselection_reproduces_result_json(baseline_run):
    run_dir, result = baseline_run
    again = reselect(run_dir, result, "iid_valid")
    assert again["metrics"] == result["metrics"]
    assert set(again["selected_epochs"].values()) == {result["selected_epoch"]}
    assert iid_valid_epoch(result) == result["selected_epoch"]


def test_last_and_oracle_rules(baseline_run):
    run_dir, result = baseline_run
    last = reselect(run_dir, result, "last")
    assert set(last["selected_epochs"].values()) == {max(h["epoch"] for h in result["valid_history"])}
    oracle = reselect(run_dir, result, "oracle")
    assert oracle["kind"] == "oracle"
    for name in result["test_sets"]:  # the oracle picks the best epoch of each set: never below any other rule
        best = oracle["metrics"][name]["Non0_acc_2"]
        assert best >= result["metrics"][name]["Non0_acc_2"] and best >= last["metrics"][name]["Non0_acc_2"]
    with pytest.raises(ValueError, match="unknown selection 'best'; expected one of iid_valid, oracle, last"):
        reselect(run_dir, result, "best")


def test_recording_does_not_change_training(tmp_path, baseline_run):
    _, recorded = baseline_run
    _, plain = _run(tmp_path, "seed=5", "trainer.record_epochs=false")
    assert plain["metrics"] == recorded["metrics"] and plain["selected_epoch"] == recorded["selected_epoch"]
    assert plain["epoch_records"] is None


@pytest.mark.parametrize("name", sorted(METHODS))
def test_recording_is_invisible_to_every_method(tmp_path, name):
    """Scoring the test sets every epoch draws nothing from the random stream and changes no state: the same job
    with and without records reports the same numbers, for every registered method."""
    extra = ["gear.swap_epochs=1"] if name == "gear" else []
    _, with_records = _run(tmp_path / "a", f"method={name}", "trainer.max_epochs=2", "seed=9", *extra)
    _, without = _run(
        tmp_path / "b", f"method={name}", "trainer.max_epochs=2", "seed=9", "trainer.record_epochs=false", *extra
    )
    assert with_records["metrics"] == without["metrics"]
    assert with_records["valid_history"] == without["valid_history"]


def test_a_selection_start_beyond_the_budget_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="selection starts at 0-based epoch 5 .* trainer.max_epochs=4"):
        _run(tmp_path, "method=gear")
    assert not list(tmp_path.rglob("result.json"))


def test_early_stop_off_trains_the_full_budget(tmp_path):
    _, result = _run(tmp_path, "trainer.early_stop=false", "trainer.patience=0", "trainer.max_epochs=4")
    assert [h["epoch"] for h in result["valid_history"]] == [0, 1, 2, 3]


def test_iid_valid_epoch_follows_best_state():
    history = [{"epoch": e, "select": v} for e, v in enumerate([0.9, 0.5, float("nan"), 0.5 + 1e-9, 0.4])]
    result = {"valid_history": history, "selection": {"key": "mae"}}
    assert iid_valid_epoch(result) == 4
    history[4]["select"] = 0.6
    assert iid_valid_epoch(result) == 1  # float32 tie with epoch 3: the first one stays
    result["selection"]["first_epoch"] = 2
    assert iid_valid_epoch(result) == 3
    result["selection"] = {"key": "acc2_mean"}
    assert iid_valid_epoch(result) == 0


def test_clue_oracle_chooses_alpha_among_its_candidates(tmp_path):
    run_dir, result = _run(tmp_path, "method=clue", "seed=2")
    records = load_epoch_records(run_dir / FILE_NAME)
    assert {"fused", "counterfactual"} <= set(records.sets["ood_tav"].heads)
    oracle = reselect(run_dir, result, "oracle")
    grid = sorted({float(a) for a in METHODS["clue"].config_class().alpha_grid})
    assert set(oracle["selected_candidates"].values()) <= {f"alpha={a:g}" for a in grid}
    assert reselect(run_dir, result, "iid_valid")["metrics"] == result["metrics"]
    df = build_leaderboard(tmp_path, selection="oracle")
    assert df.loc[0, "selected_choices"] == oracle["selected_candidates"]["ood_tav"]
    assert build_leaderboard(tmp_path).loc[0, "selected_choices"] == ""


def test_gear_selects_only_epochs_with_the_swap_on(tmp_path):
    run_dir, result = _run(tmp_path, "method=gear", "gear.swap_epochs=2", "seed=4")
    assert result["selection"]["first_epoch"] == 2 and result["selected_epoch"] >= 2
    assert len(result["valid_history"]) >= 3
    df = build_leaderboard(tmp_path)
    assert df.loc[0, "delayed_term_active"] == "1/1" and df.loc[0, "selected_epochs"] == str(result["selected_epoch"])
    _, off = _run(tmp_path / "off", "method=gear", "gear.swap_epochs=2", "gear.select_after_swap=false", "seed=4")
    assert off["selection"]["first_epoch"] == 0


def test_leaderboard_selection_and_runs_without_records(tmp_path, baseline_run, capsys):
    src, _ = baseline_run
    root = tmp_path / "root"
    (root / "new").mkdir(parents=True)
    for name in ("config.yaml", "result.json", "predictions.csv", "done", FILE_NAME):
        (root / "new" / name).write_bytes((src / name).read_bytes())
    old_dir, _ = _run(root / "old", "seed=6", "trainer.record_epochs=false")
    df = build_leaderboard(root, selection="oracle")
    assert df["selection"].tolist() == ["oracle"] and df["kind"].tolist() == ["oracle"] and df.loc[0, "n_seeds"] == 1
    assert df.attrs["unselectable_runs"] == [str(old_dir)]
    assert "Left out (no per-epoch records" in leaderboard_markdown(df)
    assert build_leaderboard(root)["n_seeds"].tolist() == [2]  # iid_valid reads both
    assert cli_main(["leaderboard", str(root), "--selection", "oracle"]) == 0
    assert (root / "selection-oracle" / "leaderboard.csv").is_file()
    assert cli_main(["leaderboard", str(root), "--selection", "bestest"]) == 2
    assert "unknown --selection 'bestest'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown selection"):
        build_leaderboard(root, selection="bestest")


def test_group_metrics_follow_the_selected_predictions(baseline_run):
    run_dir, result = baseline_run
    last = reselect(run_dir, result, "last")
    mine = run_group_metrics(run_dir, result["test_sets"], predictions=last["_predictions"])
    flipped = run_group_metrics(
        run_dir, result["test_sets"], predictions={k: -v for k, v in last["_predictions"].items()}
    )
    assert any(mine[s]["aligned_acc2"] != flipped[s]["aligned_acc2"] for s in result["test_sets"]
               if not math.isnan(mine[s]["aligned_acc2"]))


def test_records_refuse_inconsistent_input(tmp_path):
    recorder = EpochRecorder()
    recorder.add(0, "valid", np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="labels differ"):
        recorder.add(1, "valid", np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="contains '/'"):
        recorder.add(0, "a/b", np.ones(3), np.zeros(3))
    bad = tmp_path / FILE_NAME
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=f"{bad}: cannot read per-epoch records"):
        load_epoch_records(bad)


def test_registry_names():
    assert list(SELECTIONS) == ["iid_valid", "oracle", "last"]
