"""Tests for benchmarks/leaderboard.py on the static run folders in tests/fixtures/runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.leaderboard import (
    CONVENTION,
    build_leaderboard,
    find_runs,
    load_run,
    write_leaderboard,
)
from methods.metrics import METRIC_KEYS, msa_metrics

FIXTURES = Path(__file__).parent / "fixtures"
RUNS = FIXTURES / "runs"
EXPECTED_CSV = FIXTURES / "leaderboard_expected.csv"
N_COMPLETE, N_INCOMPLETE = 6, 1


@pytest.fixture
def runs_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture runs (the committed fixtures are never modified)."""
    dst = tmp_path / "runs"
    shutil.copytree(RUNS, dst)
    return dst


def _complete_dir(root: Path, method: str, seed: int) -> Path:
    (match,) = [p for p in find_runs(root)[0] if p.name.startswith(f"{method}-synthetic-s{seed}-")]
    return match


# --------------------------------------------------------------------------------------------------------------------
# Fixtures are what they claim to be
# --------------------------------------------------------------------------------------------------------------------


def test_fixture_results_are_msa_metrics_of_their_predictions() -> None:
    complete, _ = find_runs(RUNS)
    assert len(complete) == N_COMPLETE
    for run in complete:
        result = json.loads((run / "result.json").read_text())
        preds = pd.read_csv(run / "predictions.csv", dtype={"set": str, "id": str})
        assert list(preds.columns) == ["set", "id", "prediction", "label"]
        assert list(dict.fromkeys(preds["set"])) == result["test_sets"]
        for name in result["test_sets"]:
            rows = preds[preds["set"] == name]
            expected = msa_metrics(rows["prediction"].to_numpy(), rows["label"].to_numpy())
            got = result["metrics"][name]
            assert list(got) == list(METRIC_KEYS)
            for key in METRIC_KEYS:
                assert got[key] == expected[key] or (math.isnan(got[key]) and math.isnan(expected[key])), (run, key)


# --------------------------------------------------------------------------------------------------------------------
# find_runs / load_run
# --------------------------------------------------------------------------------------------------------------------


def test_find_runs_separates_incomplete() -> None:
    complete, incomplete = find_runs(RUNS)
    assert len(complete) == N_COMPLETE and len(incomplete) == N_INCOMPLETE
    assert all((p / "done").is_file() for p in complete)
    assert incomplete[0].name.endswith("-rerun") and not (incomplete[0] / "done").exists()
    assert complete == sorted(complete)


def test_find_runs_missing_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_runs(tmp_path / "nope")
    assert find_runs(tmp_path) == ([], [])


def test_load_run_recompute_matches_saved_metrics() -> None:
    run = _complete_dir(RUNS, "baseline", 1112)
    saved = load_run(run)
    recomputed = load_run(run, recompute=True)
    assert saved["test_sets"] == recomputed["test_sets"] == ["test", "ood_text"]
    assert math.isnan(saved["metrics"]["ood_text"]["Corr"])  # constant predictions in that fixture
    assert json.dumps(saved["metrics"]) == json.dumps(recomputed["metrics"])


def test_load_run_recompute_detects_missing_predictions(runs_copy: Path) -> None:
    run = _complete_dir(runs_copy, "gear", 1111)
    preds = pd.read_csv(run / "predictions.csv", dtype={"set": str, "id": str})
    preds[preds["set"] == "test"].to_csv(run / "predictions.csv", index=False)
    load_run(run)  # the saved metrics are still readable
    with pytest.raises(ValueError, match="no rows for test set 'ood_text'"):
        load_run(run, recompute=True)


# --------------------------------------------------------------------------------------------------------------------
# build_leaderboard / write_leaderboard
# --------------------------------------------------------------------------------------------------------------------


def test_leaderboard_csv_matches_expected_bytes(tmp_path: Path) -> None:
    df = build_leaderboard(RUNS)
    csv_path, md_path = write_leaderboard(df, tmp_path / "out")
    assert csv_path == tmp_path / "out" / "leaderboard.csv" and md_path == tmp_path / "out" / "leaderboard.md"
    assert csv_path.read_bytes() == EXPECTED_CSV.read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["leaderboard.csv", "leaderboard.md"]  # no temps
    # writing again is byte-identical (and replaces in place)
    write_leaderboard(build_leaderboard(RUNS), tmp_path / "out")
    assert csv_path.read_bytes() == EXPECTED_CSV.read_bytes()


def test_leaderboard_columns_and_rows() -> None:
    df = build_leaderboard(RUNS)
    assert list(df.columns[:4]) == ["method", "dataset", "n_seeds", "seeds"]
    sets = ["test", "ood_text"]  # order of the first run's test_sets
    assert list(df.columns[4:]) == [f"{s}/{m}/{x}" for s in sets for m in METRIC_KEYS for x in ("mean", "std", "n")]
    assert df["method"].tolist() == ["baseline", "gear"]
    assert df["seeds"].tolist() == ["1111;1112;1113"] * 2
    assert df["n_seeds"].tolist() == [3, 3]
    gear = df.set_index("method").loc["gear"]
    assert gear["test/MAE/n"] == 3 and gear["ood_text/MAE/n"] == 2  # gear s1113 has no ood_text: its own n
    base = df.set_index("method").loc["baseline"]
    assert math.isnan(base["ood_text/Corr/mean"]) and base["ood_text/Corr/n"] == 3  # NaN propagates


def test_leaderboard_cells_match_an_independent_computation() -> None:
    df = build_leaderboard(RUNS).set_index("method")
    for method in ("baseline", "gear"):
        results = [json.loads((_complete_dir(RUNS, method, s) / "result.json").read_text()) for s in (1111, 1112, 1113)]
        for name in ("test", "ood_text"):
            for key in METRIC_KEYS:
                vals = np.array([r["metrics"][name][key] for r in results if name in r["metrics"]], dtype=float)
                mean, std = df.loc[method, f"{name}/{key}/mean"], df.loc[method, f"{name}/{key}/std"]
                if np.isnan(vals).any():
                    assert math.isnan(mean) and math.isnan(std)
                    continue
                assert mean == round(100 * vals.mean(), 2)
                assert std == round(100 * np.sqrt(np.mean((vals - vals.mean()) ** 2)), 2)  # ddof = 0
                assert df.loc[method, f"{name}/{key}/n"] == len(vals)


def test_recompute_gives_the_same_table(tmp_path: Path) -> None:
    saved, recomputed = build_leaderboard(RUNS), build_leaderboard(RUNS, recompute=True)
    pd.testing.assert_frame_equal(saved, recomputed)
    csv_path, _ = write_leaderboard(recomputed, tmp_path)
    assert csv_path.read_bytes() == EXPECTED_CSV.read_bytes()


def test_incomplete_run_is_ignored_and_counted() -> None:
    df = build_leaderboard(RUNS)
    assert len(df.attrs["incomplete_runs"]) == N_INCOMPLETE
    assert len(df.attrs["complete_runs"]) == N_COMPLETE
    # the incomplete folder holds a garbage result.json for baseline/1111; it neither counts nor conflicts
    assert df.set_index("method").loc["baseline", "test/Has0_acc_2/mean"] == 80.0


def test_order_is_respected() -> None:
    assert build_leaderboard(RUNS, order=["gear"])["method"].tolist() == ["gear", "baseline"]
    assert build_leaderboard(RUNS, order=["gear", "baseline"])["method"].tolist() == ["gear", "baseline"]
    assert build_leaderboard(RUNS, order=["unknown"])["method"].tolist() == ["baseline", "gear"]
    # row order does not change the columns
    assert list(build_leaderboard(RUNS, order=["gear"]).columns) == list(build_leaderboard(RUNS).columns)


def test_conflicting_duplicate_seed_raises(runs_copy: Path) -> None:
    src = _complete_dir(runs_copy, "gear", 1112)
    dup = src.parent.parent / "other_sweep" / (src.name[:-12] + "0123456789ab")
    shutil.copytree(src, dup)
    result = json.loads((dup / "result.json").read_text())
    result["config_hash"] = "0123456789ab"
    result["metrics"]["test"]["MAE"] = 0.1
    (dup / "result.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match="conflicting runs") as err:
        build_leaderboard(runs_copy)
    assert str(src) in str(err.value) and str(dup) in str(err.value)


def test_identical_duplicate_counts_once(runs_copy: Path) -> None:
    """The same job (same config hash and metrics) found twice, e.g. under two sweep folders, is one seed."""
    src = _complete_dir(runs_copy, "gear", 1112)
    shutil.copytree(src, src.parent.parent / "other_sweep" / src.name)
    df = build_leaderboard(runs_copy)
    assert df["n_seeds"].tolist() == [3, 3]
    assert len(df.attrs["duplicate_runs"]) == 1
    expected = build_leaderboard(RUNS)
    pd.testing.assert_frame_equal(df, expected)


def test_markdown_states_convention(tmp_path: Path) -> None:
    _, md_path = write_leaderboard(build_leaderboard(RUNS), tmp_path)
    text = md_path.read_text(encoding="utf-8")
    assert CONVENTION in text and "ddof=0" in text and "±" in text
    assert "## synthetic" in text and "1 incomplete" in text
    assert "| baseline | 3 | 75.00 ± 0.00 (3) |" in text
    assert "78.57 ± 7.14 (2)" in text  # gear Non0_acc_2 on ood_text: 2 seeds


def test_markdown_missing_cells_and_custom_metrics(runs_copy: Path, tmp_path: Path) -> None:
    # a third method with only the IID test set: its ood_text cells are missing ("—"), n = 0 in the CSV
    src = _complete_dir(runs_copy, "gear", 1113)
    dst = src.parent / src.name.replace("gear", "rubi")
    shutil.copytree(src, dst)
    result = json.loads((dst / "result.json").read_text())
    result["method"] = "rubi"
    (dst / "result.json").write_text(json.dumps(result))
    df = build_leaderboard(runs_copy)
    rubi = df.set_index("method").loc["rubi"]
    assert rubi["ood_text/MAE/n"] == 0 and math.isnan(rubi["ood_text/MAE/mean"])
    csv_path, md_path = write_leaderboard(df, tmp_path, metrics=("Corr",))
    text = md_path.read_text(encoding="utf-8")
    assert "| rubi | 1 |" in text and "—" in text and "test Corr" in text and "test MAE" not in text
    assert "nan ± nan (3)" in text  # baseline's NaN Corr on ood_text is reported, not hidden
    row = [line for line in csv_path.read_text().splitlines() if line.startswith("rubi,")][0]
    assert row.endswith(",nan,nan,0")
    with pytest.raises(ValueError, match="unknown metric"):
        write_leaderboard(df, tmp_path, metrics=("Acc2",))


def test_empty_root(tmp_path: Path) -> None:
    df = build_leaderboard(tmp_path)
    assert df.empty and list(df.columns) == ["method", "dataset", "n_seeds", "seeds"]
    csv_path, md_path = write_leaderboard(df, tmp_path / "out")
    assert csv_path.read_text() == "method,dataset,n_seeds,seeds\n"
    assert "No complete runs." in md_path.read_text(encoding="utf-8")
