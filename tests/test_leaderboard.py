"""Tests for benchmarks/leaderboard.py on the static run folders in tests/fixtures/runs.

Fixture rows (tests/fixtures/runs/default): ``baseline`` and ``gear`` on ``synthetic`` (seeds 1111-1113, sets
``test`` + ``ood_text``; gear s1113 has only ``test``; no ``label`` field, so the label is the method), the variant
``gear_noipw`` of ``gear`` on ``synthetic`` (seeds 1111-1112, ``test`` + the 4 synthetic OOD sets) and ``baseline``
on ``mosi_utt`` (manifest-named OOD sets: s1111 ``test_nn_text`` + ``test_nn_audio``, s1112 only ``test_nn_text``),
plus one incomplete folder (no ``done``). Their predictions.csv has no ground-truth columns (old run folders).

Fixture rows (tests/fixtures/runs_gt, written by tests/fixtures/make_runs_gt.py): predictions.csv with the
ground-truth columns (docs/design.md). ``synthetic`` (sets ``test``, ``ood_text``, ``ood_tav``; shortcuts in text and
audio, none in vision; every ``ood_tav`` clip conflicts): ``baseline`` (no ``kind`` field), ``gear``, ``jtt`` (seeds
1111-1112 only), ``erm_unbiased`` (kind ``reference``), ``oracle_groupdro`` (kind ``oracle``); ``mosi_utt`` (real
data: ground-truth columns empty; sets ``test``, ``test_nn_text``, ``test_nn_tav``): ``baseline`` and ``gear``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer

from benchmarks.cli import main as cli_main
from benchmarks.leaderboard import (
    BIAS_ID,
    CONVENTION,
    DIFF_COLUMNS,
    GROUND_TRUTH_COLUMNS,
    GROUP_METRICS,
    ID_COLUMNS,
    STATS,
    bias_id_auroc,
    build_leaderboard,
    find_runs,
    group_metrics,
    headline_set,
    iid_vs_headline_figure,
    leaderboard_figure,
    leaderboard_markdown,
    load_run,
    log_to_wandb,
    run_group_metrics,
    write_leaderboard,
)
from benchmarks.statistics import bootstrap_mean_ci, paired_difference
from methods import METHODS
from methods.metrics import METRIC_KEYS, msa_metrics

FIXTURES = Path(__file__).parent / "fixtures"
RUNS = FIXTURES / "runs"
RUNS_GT = FIXTURES / "runs_gt"
EXPECTED_CSV = FIXTURES / "leaderboard_expected.csv"
EXPECTED_MD = FIXTURES / "leaderboard_expected.md"
EXPECTED_GT_CSV = FIXTURES / "leaderboard_gt_expected.csv"
EXPECTED_GT_MD = FIXTURES / "leaderboard_gt_expected.md"
N_COMPLETE, N_INCOMPLETE = 10, 1
ORDER = list(METHODS)  # what the CLI passes
SETS = ["test", "test_nn_text", "test_nn_audio", "ood_text", "ood_audio", "ood_vision", "ood_tav"]
GT_SETS = ["test", "test_nn_text", "test_nn_tav", "ood_text", "ood_tav"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUT_FILES = ["leaderboard.csv", "leaderboard.md", "leaderboard.png", "leaderboard_iid_vs_headline.png"]


@pytest.fixture
def runs_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture runs (the committed fixtures are never modified)."""
    dst = tmp_path / "runs"
    shutil.copytree(RUNS, dst)
    return dst


@pytest.fixture
def gt_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture runs with ground-truth columns."""
    dst = tmp_path / "runs_gt"
    shutil.copytree(RUNS_GT, dst)
    return dst


def _complete_dir(root: Path, label: str, seed: int, dataset: str = "synthetic") -> Path:
    (match,) = [p for p in find_runs(root)[0] if p.name.startswith(f"{label}-{dataset}-s{seed}-")]
    return match


def _edit_result(run: Path, **changes: object) -> dict:
    result = json.loads((run / "result.json").read_text())
    result.update(changes)
    (run / "result.json").write_text(json.dumps(result))
    return result


def _row(df: pd.DataFrame, label: str, dataset: str = "synthetic") -> pd.Series:
    (index,) = df.index[(df["label"] == label) & (df["dataset"] == dataset)]
    return df.loc[index]


def _results_by_row(root: Path) -> dict[tuple[str, str], list[dict]]:
    """Complete runs' result.json grouped by (label or method, dataset), seeds ascending: read without the module."""
    rows: dict[tuple[str, str], list[dict]] = {}
    for run in sorted(root.rglob("done")):
        result = json.loads((run.parent / "result.json").read_text())
        rows.setdefault((result.get("label") or result["method"], result["dataset"]), []).append(result)
    return {k: sorted(v, key=lambda r: r["seed"]) for k, v in rows.items()}


def _cell(vals: list[float]) -> tuple[float, float, int]:
    arr = np.asarray(vals, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan, 0
    mean, std = float(arr.mean()), float(np.sqrt(np.mean((arr - arr.mean()) ** 2)))  # ddof = 0
    return round(100 * mean, 2), round(100 * std, 2), arr.size  # Python's round of a float, as the module


def _ci(vals: list[float]) -> tuple[float, float]:
    """The cell's interval: statistics.bootstrap_mean_ci (tested against a loop in test_statistics) x100, 2 dp."""
    if not vals or any(math.isnan(v) for v in vals):
        return math.nan, math.nan
    low, high = bootstrap_mean_ci(vals, n_resamples=10_000, level=0.95, seed=0)
    return round(100 * low, 2) + 0.0, round(100 * high, 2) + 0.0


def _same(got: float, expected: float) -> bool:
    return (math.isnan(got) and math.isnan(expected)) or got == expected


# --------------------------------------------------------------------------------------------------------------------
# Fixtures are what they claim to be
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", [RUNS, RUNS_GT])
def test_fixture_results_are_msa_metrics_of_their_predictions(root: Path) -> None:
    complete, _ = find_runs(root)
    assert len(complete) == (N_COMPLETE if root == RUNS else 18)
    for run in complete:
        result = json.loads((run / "result.json").read_text())
        preds = pd.read_csv(run / "predictions.csv", dtype={"set": str, "id": str})
        gt = [] if root == RUNS else list(GROUND_TRUTH_COLUMNS)
        assert list(preds.columns) == ["set", "id", "prediction", "label", *gt]
        assert list(dict.fromkeys(preds["set"])) == result["test_sets"]
        for name in result["test_sets"]:
            rows = preds[preds["set"] == name]
            assert len(rows) == result["n_samples"][name]
            expected = msa_metrics(rows["prediction"].to_numpy(), rows["label"].to_numpy())
            got = result["metrics"][name]
            assert list(got) == list(METRIC_KEYS)
            for key in METRIC_KEYS:
                assert _same(got[key], expected[key]), (run, name, key)


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


@pytest.mark.parametrize("name", ["ood_avg", "gap", "headline", "worst_group", "a/b"])
def test_load_run_rejects_set_names_that_clash_with_columns(runs_copy: Path, name: str) -> None:
    run = _complete_dir(runs_copy, "gear", 1113)
    result = json.loads((run / "result.json").read_text())
    _edit_result(run, test_sets=["test", name], metrics={"test": result["metrics"]["test"], name: {}})
    with pytest.raises(ValueError, match="clash with the leaderboard's columns"):
        load_run(run)


# --------------------------------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("root", "csv", "md"), [(RUNS, EXPECTED_CSV, EXPECTED_MD), (RUNS_GT, EXPECTED_GT_CSV, EXPECTED_GT_MD)]
)
def test_leaderboard_files_match_expected_bytes(tmp_path: Path, root: Path, csv: Path, md: Path) -> None:
    out = tmp_path / "out"
    paths = write_leaderboard(build_leaderboard(root, order=ORDER), out)
    assert paths == tuple(out / name for name in OUT_FILES)
    csv_path, md_path, png_path, line_path = paths
    assert csv_path.read_bytes() == csv.read_bytes()
    assert md_path.read_bytes() == md.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)  # no temps
    # writing again is byte-identical (and replaces in place)
    png_bytes, line_bytes = png_path.read_bytes(), line_path.read_bytes()
    write_leaderboard(build_leaderboard(root, order=ORDER), out)
    assert csv_path.read_bytes() == csv.read_bytes() and md_path.read_bytes() == md.read_bytes()
    assert png_path.read_bytes() == png_bytes and line_path.read_bytes() == line_bytes
    assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)


def test_cli_writes_the_expected_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["leaderboard", str(RUNS), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard.csv").read_bytes() == EXPECTED_CSV.read_bytes()
    assert (tmp_path / "leaderboard.md").read_bytes() == EXPECTED_MD.read_bytes()
    assert (tmp_path / "leaderboard.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "leaderboard_iid_vs_headline.png").read_bytes().startswith(PNG_MAGIC)
    out = capsys.readouterr().out
    assert "## synthetic" in out and "leaderboard.png" in out and "10 complete runs, 1 incomplete" in out
    assert "leaderboard_iid_vs_headline.png" in out


def test_cli_min_group_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["leaderboard", str(RUNS_GT), "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "leaderboard.csv").read_bytes() == EXPECTED_GT_CSV.read_bytes()
    assert cli_main(["leaderboard", str(RUNS_GT), "--out", str(tmp_path / "b"), "--min-group-size", "1"]) == 0
    small = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    expected = build_leaderboard(RUNS_GT, order=ORDER, min_group_size=1)
    worst = [c for c in expected.columns if "worst_group" in c]
    np.testing.assert_array_equal(small[worst].to_numpy(dtype=float), expected[worst].to_numpy(dtype=float))
    default = build_leaderboard(RUNS_GT, order=ORDER)
    assert not np.array_equal(default[worst].to_numpy(dtype=float), expected[worst].to_numpy(dtype=float))
    assert cli_main(["leaderboard", str(RUNS_GT), "--min-group-size", "0"]) == 2
    assert "--min-group-size" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------------
# Columns, rows, labels
# --------------------------------------------------------------------------------------------------------------------


def _cells(prefix: str, names: tuple[str, ...] | list[str]) -> list[str]:
    return [f"{prefix}/{m}/{x}" for m in names for x in ("mean", "std", "n", "ci_low", "ci_high")]


def test_leaderboard_columns() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    assert ID_COLUMNS == (
        "method", "label", "kind", "dataset", "n_seeds", "seeds", "ood_sets", "headline_set", "selection",
        "selected_epochs", "selected_choices", "delayed_term_active",
    )
    assert STATS == ("mean", "std", "n", "ci_low", "ci_high")
    assert DIFF_COLUMNS == (
        "headline_diff",
        "headline_diff_ci_low",
        "headline_diff_ci_high",
        "headline_diff_n",
        "p_better",
        "resolved",
    )
    assert list(df.columns[:12]) == list(ID_COLUMNS)
    # test first (metrics, then group metrics), then the headline, worst group, bias identification and the
    # difference to the baseline,
    # then the OOD sets in order of appearance over runs sorted by (dataset, label, seed), then the derived cells
    expected = [*ID_COLUMNS, *_cells("test", [*METRIC_KEYS, *GROUP_METRICS])]
    expected += [f"{p}/{x}" for p in ("headline", "worst_group", "bias_id_auroc") for x in STATS] + list(DIFF_COLUMNS)
    for s in SETS[1:]:
        expected += _cells(s, [*METRIC_KEYS, *GROUP_METRICS])
    expected += _cells("ood_avg", METRIC_KEYS) + _cells("gap", METRIC_KEYS)
    assert list(df.columns) == expected
    # row order does not change the columns
    assert list(build_leaderboard(RUNS, order=["gear"]).columns) == list(df.columns)
    assert df["resolved"].dtype == bool and df["headline_diff_n"].dtype == np.int64


def test_label_rows_and_registry_order() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    assert list(zip(df["method"], df["label"], df["dataset"])) == [
        ("baseline", "baseline", "mosi_utt"),  # no headline set on that dataset: registry order
        ("gear", "gear_noipw", "synthetic"),  # the only synthetic row with the headline set ood_tav: first
        ("baseline", "baseline", "synthetic"),  # rows without a headline: registry order
        ("gear", "gear", "synthetic"),  # runs without a "label" field: the label is the method
    ]
    assert df["kind"].tolist() == ["method"] * 4  # no "kind" in these result.json: method
    assert df["headline_set"].tolist() == ["", "ood_tav", "ood_tav", "ood_tav"]
    assert df["seeds"].tolist() == ["1111;1112", "1111;1112", "1111;1112;1113", "1111;1112;1113"]
    assert df["n_seeds"].tolist() == [2, 2, 3, 3]
    assert df["ood_sets"].tolist() == [
        "test_nn_text;test_nn_audio[1/2]",  # s1112 has no test_nn_audio
        "ood_text;ood_audio;ood_vision;ood_tav",
        "ood_text",
        "ood_text",
    ]
    gear = _row(df, "gear")
    assert gear["test/MAE/n"] == 3 and gear["ood_text/MAE/n"] == 2  # gear s1113 has no ood_text: its own n
    assert gear["ood_audio/MAE/n"] == 0 and math.isnan(gear["ood_audio/MAE/mean"])  # a set the row lacks
    base = _row(df, "baseline")
    assert math.isnan(base["ood_text/Corr/mean"]) and base["ood_text/Corr/n"] == 3  # NaN propagates
    assert math.isnan(base["ood_avg/Corr/mean"]) and math.isnan(base["gap/Corr/mean"])  # ... into the derived cells


def test_order_is_respected() -> None:
    """``order`` ranks the rows without a headline; datasets first, the headline before it."""
    labels = lambda order: build_leaderboard(RUNS, order=order)["label"].tolist()  # noqa: E731
    assert labels(["gear"]) == ["baseline", "gear_noipw", "gear", "baseline"]
    assert labels(["gear", "baseline"]) == ["baseline", "gear_noipw", "gear", "baseline"]
    assert labels(["unknown"]) == labels(None) == ["baseline", "gear_noipw", "baseline", "gear"]


def test_variants_follow_the_plain_row_alphabetically(runs_copy: Path) -> None:
    """Without a headline: plain method row first, then its variants alphabetically, even a variant whose label
    sorts before it."""
    for new_label, seed in (("a_gear", 1111), ("gear_aggmin", 1112)):
        src = _complete_dir(runs_copy, "gear", seed)  # gear's runs have no ood_tav: no headline
        dst = src.parent / src.name.replace("gear", new_label)
        shutil.copytree(src, dst)
        _edit_result(dst, label=new_label, config_hash="0123456789ab")
    df = build_leaderboard(runs_copy, order=ORDER)
    assert df["label"].tolist() == ["baseline", "gear_noipw", "baseline", "gear", "a_gear", "gear_aggmin"]
    assert df["method"].tolist() == ["baseline", "gear", "baseline", "gear", "gear", "gear"]
    assert _row(df, "a_gear")["seeds"] == "1111"


def test_label_shared_by_two_methods_raises(runs_copy: Path) -> None:
    run = _complete_dir(runs_copy, "baseline", 1111)
    _edit_result(run, label="gear_noipw")
    with pytest.raises(ValueError, match="label 'gear_noipw' is used by method 'baseline' .* and by method 'gear'"):
        build_leaderboard(runs_copy)


def test_empty_label_falls_back_to_method(runs_copy: Path) -> None:
    run = _complete_dir(runs_copy, "gear", 1111)
    _edit_result(run, label="")
    pd.testing.assert_frame_equal(build_leaderboard(runs_copy), build_leaderboard(RUNS))


# --------------------------------------------------------------------------------------------------------------------
# Cell values
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("root", "sets"), [(RUNS, SETS), (RUNS_GT, GT_SETS)])
def test_set_cells_match_an_independent_computation(root: Path, sets: list[str]) -> None:
    df = build_leaderboard(root, order=ORDER)
    for (label, dataset), results in _results_by_row(root).items():
        row = _row(df, label, dataset)
        for name in sets:
            for key in METRIC_KEYS:
                vals = [r["metrics"][name][key] for r in results if name in r["metrics"]]
                vals = [math.nan if v is None else v for v in vals]
                mean, std, n = _cell(vals)
                assert row[f"{name}/{key}/n"] == n, (label, name, key)
                assert _same(row[f"{name}/{key}/mean"], mean) and _same(row[f"{name}/{key}/std"], std)
                low, high = _ci(vals)
                assert _same(row[f"{name}/{key}/ci_low"], low) and _same(row[f"{name}/{key}/ci_high"], high)
                if n:
                    assert math.isnan(mean) or low <= mean <= high


@pytest.mark.parametrize("root", [RUNS, RUNS_GT])
def test_ood_avg_and_gap_cells_match_an_independent_computation(root: Path) -> None:
    df = build_leaderboard(root, order=ORDER)
    for (label, dataset), results in _results_by_row(root).items():
        row = _row(df, label, dataset)
        for key in METRIC_KEYS:
            avgs, gaps = [], []
            for r in results:
                ood = [s for s in r["test_sets"] if s != "test"]
                if "test" in r["test_sets"] and ood:
                    avg = np.mean([r["metrics"][s][key] for s in ood])
                    avgs.append(avg)
                    gaps.append(r["metrics"]["test"][key] - avg)
            for prefix, vals in (("ood_avg", avgs), ("gap", gaps)):
                mean, std, n = _cell(vals)
                assert row[f"{prefix}/{key}/n"] == n, (label, prefix, key)
                assert _same(row[f"{prefix}/{key}/mean"], mean) and _same(row[f"{prefix}/{key}/std"], std)
                low, high = _ci([float(v) for v in vals])
                assert _same(row[f"{prefix}/{key}/ci_low"], low) and _same(row[f"{prefix}/{key}/ci_high"], high)


def test_ood_avg_is_per_seed_then_aggregated() -> None:
    """Average a seed's OOD sets first, then aggregate over seeds; the pooled std is not it."""
    row = _row(build_leaderboard(RUNS), "gear_noipw")
    # Non0_acc_2 per seed (result.json): s1111 text .7143 audio .8571 vision 1.0 tav .5714 -> avg .7857
    #                                    s1112 text .7143 audio 1.0 vision .8571 tav .8571 -> avg .857125
    # mean (.7857 + .857125) / 2 = .8214125 -> 82.14;  population std |.857125 - .7857| / 2 = .0357125 -> 3.57
    assert (row["ood_avg/Non0_acc_2/mean"], row["ood_avg/Non0_acc_2/std"], row["ood_avg/Non0_acc_2/n"]) == (
        82.14,
        3.57,
        2,
    )
    # pooling the 8 (seed, set) values instead: same mean, std 13.83 (what the table must not show)
    pooled = np.array([0.7143, 0.8571, 1.0, 0.5714, 0.7143, 1.0, 0.8571, 0.8571])
    assert round(100 * pooled.mean(), 2) == 82.14 and round(100 * pooled.std(), 2) == 13.83
    # when seeds have different sets, even the mean differs from the mean of the per-set means:
    # mosi_utt s1111 (.7143 + .8571) / 2 = .7857, s1112 .5714 -> 67.86 (per-set means: 64.285 and 85.71 -> 75.00)
    mosi = _row(build_leaderboard(RUNS), "baseline", "mosi_utt")
    assert mosi["ood_avg/Non0_acc_2/mean"] == 67.86 and mosi["ood_avg/Non0_acc_2/n"] == 2
    assert mosi["ood_sets"] == "test_nn_text;test_nn_audio[1/2]"


def test_gap_is_iid_minus_ood_avg_per_seed() -> None:
    df = build_leaderboard(RUNS)
    noipw = _row(df, "gear_noipw")
    # test Non0_acc_2 .875 and 1.0 minus the averages above: .0893 and .142875 -> 11.61 ± 2.68
    assert (noipw["gap/Non0_acc_2/mean"], noipw["gap/Non0_acc_2/std"], noipw["gap/Non0_acc_2/n"]) == (11.61, 2.68, 2)
    # gear: s1113 has only `test`, so neither OOD avg nor gap: .875 - .8571, .875 - .7143 -> 8.93 ± 7.14 (2 seeds)
    gear = _row(df, "gear")
    assert (gear["gap/Non0_acc_2/mean"], gear["gap/Non0_acc_2/std"], gear["gap/Non0_acc_2/n"]) == (8.93, 7.14, 2)
    # MAE: IID .55/.565/.555 minus ood_text .635/1.475/.61 -> -.085, -.91, -.055: mean -35.00 (more OOD error)
    base = _row(df, "baseline")
    assert base["gap/MAE/mean"] == -35.0 and base["gap/MAE/n"] == 3


def test_seed_without_test_set_has_no_ood_avg_or_gap(runs_copy: Path) -> None:
    run = _complete_dir(runs_copy, "gear_noipw", 1112)
    result = json.loads((run / "result.json").read_text())
    sets = [s for s in result["test_sets"] if s != "test"]
    _edit_result(run, test_sets=sets, metrics={s: result["metrics"][s] for s in sets})
    row = _row(build_leaderboard(runs_copy), "gear_noipw")
    assert row["test/Non0_acc_2/n"] == 1 and row["ood_text/Non0_acc_2/n"] == 2
    assert (row["ood_avg/Non0_acc_2/mean"], row["ood_avg/Non0_acc_2/std"], row["ood_avg/Non0_acc_2/n"]) == (
        78.57,
        0.0,
        1,
    )
    assert row["gap/Non0_acc_2/n"] == 1 and row["ood_sets"] == "ood_text;ood_audio;ood_vision;ood_tav"


# --------------------------------------------------------------------------------------------------------------------
# Recompute
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("root", "csv"), [(RUNS, EXPECTED_CSV), (RUNS_GT, EXPECTED_GT_CSV)])
def test_recompute_gives_the_same_table(tmp_path: Path, root: Path, csv: Path) -> None:
    saved, recomputed = build_leaderboard(root, order=ORDER), build_leaderboard(root, order=ORDER, recompute=True)
    pd.testing.assert_frame_equal(saved, recomputed)
    csv_path, *_ = write_leaderboard(recomputed, tmp_path)
    assert csv_path.read_bytes() == csv.read_bytes()


def test_recompute_takes_every_column_from_predictions(runs_copy: Path) -> None:
    """A tampered result.json changes the stored table, OOD avg and gap included; recompute restores the golden."""
    run = _complete_dir(runs_copy, "gear_noipw", 1111)
    result = json.loads((run / "result.json").read_text())
    result["metrics"]["ood_audio"]["Non0_acc_2"] = 0.1
    (run / "result.json").write_text(json.dumps(result))
    stored = _row(build_leaderboard(runs_copy), "gear_noipw")
    golden = _row(build_leaderboard(RUNS), "gear_noipw")
    for column in ("ood_audio/Non0_acc_2/mean", "ood_avg/Non0_acc_2/mean", "gap/Non0_acc_2/mean"):
        assert stored[column] != golden[column], column
    pd.testing.assert_frame_equal(build_leaderboard(runs_copy, recompute=True), build_leaderboard(RUNS))


# --------------------------------------------------------------------------------------------------------------------
# Duplicates and incomplete runs
# --------------------------------------------------------------------------------------------------------------------


def test_incomplete_run_is_ignored_and_counted() -> None:
    df = build_leaderboard(RUNS)
    assert len(df.attrs["incomplete_runs"]) == N_INCOMPLETE
    assert len(df.attrs["complete_runs"]) == N_COMPLETE
    # the incomplete folder holds a garbage result.json for baseline/1111; it neither counts nor conflicts
    assert _row(df, "baseline")["test/Has0_acc_2/mean"] == 80.0


def test_conflicting_duplicate_seed_raises(runs_copy: Path) -> None:
    src = _complete_dir(runs_copy, "gear", 1112)
    dup = src.parent.parent / "other_sweep" / (src.name[:-12] + "0123456789ab")
    shutil.copytree(src, dup)
    result = _edit_result(dup, config_hash="0123456789ab")
    result["metrics"]["test"]["MAE"] = 0.1
    (dup / "result.json").write_text(json.dumps(result))
    with pytest.raises(ValueError, match="conflicting runs for label='gear'") as err:
        build_leaderboard(runs_copy)
    assert str(src) in str(err.value) and str(dup) in str(err.value)


def test_identical_duplicate_counts_once(runs_copy: Path) -> None:
    """The same job (same config hash and metrics) found twice, e.g. under two sweep folders, is one seed."""
    src = _complete_dir(runs_copy, "gear_noipw", 1112)
    shutil.copytree(src, src.parent.parent / "other_sweep" / src.name)
    df = build_leaderboard(runs_copy)
    assert len(df.attrs["duplicate_runs"]) == 1
    pd.testing.assert_frame_equal(df, build_leaderboard(RUNS))


# --------------------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------------------


def test_markdown_layout() -> None:
    text = leaderboard_markdown(build_leaderboard(RUNS, order=ORDER))
    assert CONVENTION in text and "ddof=0" in text and "1 incomplete" in text
    assert "computed per seed" in text and "gap = IID (`test`) − OOD avg" in text
    assert text.index("## mosi_utt") < text.index("## synthetic")
    synthetic = text[text.index("## synthetic") :]
    assert synthetic.index("### Non0_acc_2") < synthetic.index("### MAE") and "### Has0_acc_2" not in synthetic
    header = "| label | kind | seeds | IID (test) | ood_text | ood_audio | ood_vision | ood_tav | OOD avg | gap |"
    assert synthetic.count(header) == 2 and "test_nn_text" not in synthetic.split("OOD avg over")[0]
    # a row lacking a set shows "—"; a cell from fewer seeds than the row shows its count
    gear = "| gear | method | 3 | 91.67 ± 5.89 | 78.57 ± 7.14 (2) | — | — | — | 78.57 ± 7.14 (2) | 8.93 ± 7.14 (2) |"
    assert gear in text
    assert "| gear_noipw | method | 2 | 93.75 ± 6.25 | 71.43 ± 0.00 |" in text
    assert "82.14 ± 3.57 | 11.61 ± 2.68 |" in text
    noipw_sets = "gear_noipw: ood_text, ood_audio, ood_vision, ood_tav;"
    assert f"OOD avg over: {noipw_sets} baseline: ood_text; gear: ood_text." in text
    assert "OOD avg over: test_nn_text, test_nn_audio[1/2] (every row)." in text
    # the headline: only gear_noipw has ood_tav; mosi_utt has no *_tav set
    assert "### Headline: Non0_acc_2 on `ood_tav`" in synthetic
    assert "| gear_noipw | method | 2 | 93.75 ± 6.25 | 71.43 ± 14.28 [57.14, 85.71] | — | — | — | — |" in synthetic
    assert "| baseline | method | 3 | 75.00 ± 0.00 | — | — | — | — | baseline |" in synthetic
    assert "No headline set (no `ood_tav` or `*_tav` test set)" in text.split("## synthetic")[0]
    assert "The OOD avg is a diagnostic, not a ranking" in text and "not resolved" in text


def test_markdown_custom_metrics_and_missing_iid(runs_copy: Path) -> None:
    # a third method with only the IID test set: its OOD cells, OOD avg and gap are missing ("—"), n = 0 in the CSV
    src = _complete_dir(runs_copy, "gear", 1113)
    dst = src.parent / src.name.replace("gear", "rubi")
    shutil.copytree(src, dst)
    _edit_result(dst, method="rubi")
    df = build_leaderboard(runs_copy)
    rubi = _row(df, "rubi")
    assert rubi["ood_text/MAE/n"] == 0 and math.isnan(rubi["ood_text/MAE/mean"]) and rubi["ood_sets"] == ""
    assert rubi["ood_avg/MAE/n"] == 0 and rubi["gap/MAE/n"] == 0
    text = leaderboard_markdown(df, metrics=("Corr",))
    assert "### Corr" in text and "### MAE" not in text
    assert "| rubi | method | 1 | 97.84 ± 0.00 | — | — | — | — | — | — |" in text
    assert "| baseline | method | 3 | 94.61 ± 0.24 | nan ± nan |" in text  # baseline's NaN Corr is reported, not hidden
    assert "rubi: none" in text
    with pytest.raises(ValueError, match="unknown metric"):
        leaderboard_markdown(df, metrics=("Acc2",))


def test_empty_root(tmp_path: Path) -> None:
    df = build_leaderboard(tmp_path)
    assert df.empty and list(df.columns[:12]) == list(ID_COLUMNS)
    headline = [f"{p}/{x}" for p in ("headline", "worst_group", "bias_id_auroc") for x in STATS] + list(DIFF_COLUMNS)
    assert list(df.columns[12:]) == headline + _cells("ood_avg", METRIC_KEYS) + _cells("gap", METRIC_KEYS)
    csv_path, md_path, png_path, line_path = write_leaderboard(df, tmp_path / "out")
    assert csv_path.read_text().splitlines() == [",".join(df.columns)]
    assert "No complete runs." in md_path.read_text(encoding="utf-8")
    assert png_path.read_bytes().startswith(PNG_MAGIC) and line_path.read_bytes().startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------------------------


def test_png_is_written(tmp_path: Path) -> None:
    _, _, png_path, line_path = write_leaderboard(build_leaderboard(RUNS), tmp_path)
    data = png_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert line_path.read_bytes().startswith(PNG_MAGIC) and len(line_path.read_bytes()) > 10_000
    with pytest.raises(ValueError, match="unknown metric"):
        write_leaderboard(build_leaderboard(RUNS), tmp_path / "bad", plot_metric="acc")


def test_figure_bars_are_the_table_cells() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    fig = leaderboard_figure(df)
    mosi_ax, syn_ax = fig.axes
    assert "mosi_utt" in mosi_ax.get_title() and "synthetic" in syn_ax.get_title()
    assert [t.get_text() for t in syn_ax.get_xticklabels()] == ["gear_noipw", "baseline", "gear"]  # table order
    bars = {c.get_label(): c for c in syn_ax.containers if isinstance(c, BarContainer)}
    assert list(bars) == ["IID (test)", "ood_text", "ood_audio", "ood_vision", "ood_tav", "OOD avg"]
    syn = df[df["dataset"] == "synthetic"].set_index("label")
    assert [p.get_height() for p in bars["IID (test)"].patches] == syn["test/Non0_acc_2/mean"].tolist()
    assert [p.get_height() for p in bars["OOD avg"].patches] == syn["ood_avg/Non0_acc_2/mean"].tolist()
    assert [p.get_height() for p in bars["ood_audio"].patches] == [syn.loc["gear_noipw", "ood_audio/Non0_acc_2/mean"]]
    # error bars: population std over seeds (segment from mean - std to mean + std)
    (segments,) = bars["OOD avg"].errorbar.lines[2]
    spans = [seg[1][1] - seg[0][1] for seg in segments.get_segments()]
    assert np.allclose(spans, 2 * syn["ood_avg/Non0_acc_2/std"].to_numpy())
    mosi_bars = [c.get_label() for c in mosi_ax.containers if isinstance(c, BarContainer)]
    assert mosi_bars == ["IID (test)", "test_nn_text", "test_nn_audio", "OOD avg"]
    # the y axis starts a little below the lowest value shown (mean - std), not at 0
    shown = [
        syn[f"{s}/Non0_acc_2/mean"] - syn[f"{s}/Non0_acc_2/std"]
        for s in ("test", "ood_text", "ood_audio", "ood_vision", "ood_tav", "ood_avg")
    ]
    lowest = float(np.nanmin(np.concatenate([v.to_numpy(dtype=float) for v in shown])))
    bottom, top = syn_ax.get_ylim()
    assert 0 < bottom < lowest and lowest - bottom <= max(0.05 * (top - bottom), 1.0) + 1e-9
    mae = leaderboard_figure(df, metric="MAE")
    assert "MAE" in mae.axes[1].get_ylabel()


# --------------------------------------------------------------------------------------------------------------------
# Kind, headline, ground-truth groups, the difference to the baseline
# --------------------------------------------------------------------------------------------------------------------


def _read_gt(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False)


def _gt_runs() -> list[Path]:
    return find_runs(RUNS_GT)[0]


def test_kind_column_and_row_blocks() -> None:
    df = build_leaderboard(RUNS_GT, order=ORDER)
    rows = list(zip(df["dataset"], df["label"], df["kind"]))
    assert rows == [
        ("mosi_utt", "baseline", "method"),  # 78.94 on test_nn_tav
        ("mosi_utt", "gear", "method"),  # 76.31
        ("synthetic", "gear", "method"),  # 28.81 on ood_tav
        ("synthetic", "jtt", "method"),  # 22.88
        ("synthetic", "baseline", "method"),  # 7.34 (its result.json has no "kind": method)
        ("synthetic", "erm_unbiased", "reference"),  # 85.88: higher than every method, never ranked with them
        ("synthetic", "oracle_groupdro", "oracle"),  # 62.15
    ]
    for dataset in ("mosi_utt", "synthetic"):
        ranked = df[(df["dataset"] == dataset) & (df["kind"] == "method")]["headline/mean"].tolist()
        assert ranked == sorted(ranked, reverse=True)
    assert _row(df, "erm_unbiased")["method"] == "baseline"  # the ceiling is the baseline method, kind reference


def test_headline_ties_are_ordered_by_label(gt_copy: Path) -> None:
    for run in [r for r in find_runs(gt_copy)[0] if r.name.startswith("gear-synthetic-")]:
        dst = run.parent / run.name.replace("gear-", "aaa_gear-")
        shutil.copytree(run, dst)
        _edit_result(dst, label="aaa_gear", config_hash="0123456789ab")
    df = build_leaderboard(gt_copy, order=ORDER)
    syn = df[df["dataset"] == "synthetic"]
    assert syn["label"].tolist()[:3] == ["aaa_gear", "gear", "jtt"]
    assert _row(df, "aaa_gear")["headline/mean"] == _row(df, "gear")["headline/mean"]


def test_kind_must_be_known_and_agree_within_a_row(gt_copy: Path) -> None:
    run = _complete_dir(gt_copy, "erm_unbiased", 1112)
    _edit_result(run, kind="method")
    with pytest.raises(ValueError, match="row label='erm_unbiased' dataset='synthetic' mixes kinds"):
        build_leaderboard(gt_copy)
    _edit_result(run, kind="ceiling")
    with pytest.raises(ValueError, match="run kind 'ceiling'"):
        build_leaderboard(gt_copy)
    _edit_result(run, kind="")  # empty = method, like an absent field
    with pytest.raises(ValueError, match="mixes kinds"):
        build_leaderboard(gt_copy)


def test_headline_set_rule() -> None:
    assert headline_set(["test", "ood_text", "ood_tav"]) == "ood_tav"
    assert headline_set(["test", "test_nn_text", "test_nn_tav"]) == "test_nn_tav"
    assert headline_set(["test", "x_tav", "ood_tav"]) == "ood_tav"  # ood_tav wins
    assert headline_set(["test", "b_tav", "a_tav"]) == "b_tav"  # the first in column order
    assert headline_set(["test", "ood_text", "tav"]) == ""


@pytest.mark.parametrize("root", [RUNS, RUNS_GT])
def test_headline_and_worst_group_repeat_their_cells(root: Path) -> None:
    df = build_leaderboard(root, order=ORDER)
    for _, row in df.iterrows():
        hset = row["headline_set"]
        for stat in STATS:
            expected = row[f"{hset}/Non0_acc_2/{stat}"] if hset else (0 if stat == "n" else math.nan)
            assert _same(row[f"headline/{stat}"], expected), (row["label"], stat)
            assert _same(row[f"worst_group/{stat}"], row[f"test/worst_group_acc2/{stat}"])
    gt = build_leaderboard(RUNS_GT)
    assert set(zip(gt["dataset"], gt["headline_set"])) == {("mosi_utt", "test_nn_tav"), ("synthetic", "ood_tav")}


def _reference_groups(preds: pd.DataFrame, name: str, min_size: int) -> dict[str, float]:
    """Plain loops and msa_metrics on the subsets (no code shared with the module)."""
    rows = preds[preds["set"] == name]
    if (rows["group"] == "").all():
        return dict.fromkeys(GROUP_METRICS, math.nan)

    def non0(subset: pd.DataFrame) -> float:
        if subset.empty or (subset["label"].astype(float) == 0).all():
            return math.nan
        return msa_metrics(subset["prediction"].astype(float), subset["label"].astype(float))["Non0_acc_2"]

    conflicting = [any(r[f"conflict_{m}"] == "1" for m in ("text", "audio", "vision")) for _, r in rows.iterrows()]
    mask = pd.Series(conflicting, index=rows.index)
    worst = math.nan
    for group in sorted(set(rows["group"])):
        members = rows[rows["group"] == group]
        if int((members["label"].astype(float) != 0).sum()) >= min_size:
            acc = non0(members)
            worst = acc if math.isnan(worst) else min(worst, acc)
    return {"aligned_acc2": non0(rows[~mask]), "conflicting_acc2": non0(rows[mask]), "worst_group_acc2": worst}


@pytest.mark.parametrize("min_size", [10, 1, 25])
def test_group_metrics_match_an_independent_computation(min_size: int) -> None:
    per_run: dict[tuple[str, str], list[dict[str, dict[str, float]]]] = {}
    for run in _gt_runs():
        result = json.loads((run / "result.json").read_text())
        got = run_group_metrics(run, result["test_sets"], min_group_size=min_size)
        preds = _read_gt(run)
        for name in result["test_sets"]:
            expected = _reference_groups(preds, name, min_size)
            for key in GROUP_METRICS:
                assert _same(got[name][key], expected[key]), (run.name, name, key)
        per_run.setdefault((result["label"], result["dataset"]), []).append(got)
    df = build_leaderboard(RUNS_GT, min_group_size=min_size)
    assert df.attrs["min_group_size"] == min_size
    for (label, dataset), runs in per_run.items():
        row = _row(df, label, dataset)
        for name in GT_SETS:
            for key in GROUP_METRICS:
                vals = [r[name][key] for r in runs if name in r and not math.isnan(r[name][key])]
                mean, std, n = _cell(vals)
                assert row[f"{name}/{key}/n"] == n, (label, name, key)
                assert _same(row[f"{name}/{key}/mean"], mean) and _same(row[f"{name}/{key}/std"], std)
                low, high = _ci(vals)
                assert _same(row[f"{name}/{key}/ci_low"], low) and _same(row[f"{name}/{key}/ci_high"], high)


def test_group_metrics_values_on_the_fixture() -> None:
    df = build_leaderboard(RUNS_GT)
    base = _row(df, "baseline")
    # a shortcut user: right on the aligned clips, much worse on the conflicting ones; no aligned clip in ood_tav
    assert base["test/aligned_acc2/mean"] == 100.0 and base["test/conflicting_acc2/mean"] < 70
    assert base["ood_tav/aligned_acc2/n"] == 0 and math.isnan(base["ood_tav/aligned_acc2/mean"])
    # every ood_tav clip conflicts: conflicting accuracy is the set's Non0 Acc-2
    assert base["ood_tav/conflicting_acc2/mean"] == base["ood_tav/Non0_acc_2/mean"]
    # worst group on test: every seed has a group of 10+ clips; the worst one is far below the aligned clips
    assert base["worst_group/n"] == 3 and base["worst_group/mean"] < base["test/aligned_acc2/mean"] - 30
    # real data and old run folders: no ground truth, every group cell n = 0
    for frame, dataset in ((df, "mosi_utt"), (build_leaderboard(RUNS), "synthetic")):
        sub = frame[frame["dataset"] == dataset]
        for col in [c for c in frame.columns if any(g in c for g in (*GROUP_METRICS, "worst_group/"))]:
            if col.endswith("/n"):
                assert (sub[col] == 0).all(), col
            else:
                assert sub[col].isna().all(), col


def test_worst_group_depends_on_min_group_size() -> None:
    default, small, huge = (build_leaderboard(RUNS_GT, min_group_size=k) for k in (10, 1, 1000))
    syn = default["dataset"] == "synthetic"
    # more groups enter the minimum, so it can only go down (per run, hence for the mean)
    assert (small.loc[syn, "test/worst_group_acc2/mean"] <= default.loc[syn, "test/worst_group_acc2/mean"]).all()
    assert (small.loc[syn, "test/worst_group_acc2/mean"] < default.loc[syn, "test/worst_group_acc2/mean"]).any()
    assert (huge["worst_group/n"] == 0).all() and (huge["test/aligned_acc2/n"] == default["test/aligned_acc2/n"]).all()
    with pytest.raises(ValueError, match="min_group_size"):
        build_leaderboard(RUNS_GT, min_group_size=0)


def test_group_metrics_always_come_from_predictions(gt_copy: Path) -> None:
    golden = build_leaderboard(RUNS_GT)
    group_cols = [c for c in golden.columns if any(g in c for g in GROUP_METRICS)]
    run = _complete_dir(gt_copy, "baseline", 1111)
    result = json.loads((run / "result.json").read_text())
    result["metrics"]["test"]["Non0_acc_2"] = 0.1  # result.json does not hold the group metrics
    (run / "result.json").write_text(json.dumps(result))
    pd.testing.assert_frame_equal(build_leaderboard(gt_copy)[group_cols], golden[group_cols])
    # flip every conflicting test prediction of that run: the group cells change without --recompute
    preds = _read_gt(run)
    conflicting = (preds["set"] == "test") & (preds["conflict_text"] == "1")
    preds.loc[conflicting, "prediction"] = [repr(-float(v)) for v in preds.loc[conflicting, "prediction"]]
    preds.to_csv(run / "predictions.csv", index=False)
    changed = _row(build_leaderboard(gt_copy), "baseline")
    assert changed["test/conflicting_acc2/mean"] != _row(golden, "baseline")["test/conflicting_acc2/mean"]
    assert changed["test/aligned_acc2/mean"] == _row(golden, "baseline")["test/aligned_acc2/mean"]


def test_malformed_ground_truth_raises() -> None:
    def frame(**cols: list[str]) -> pd.DataFrame:
        base = {"set": ["test"] * 2, "id": ["a", "b"], "prediction": [0.5, -0.5], "label": [1.0, -1.0]}
        return pd.DataFrame({**base, **cols})

    flags = {f"conflict_{m}": ["0", "1"] for m in ("text", "audio", "vision")}
    ok = group_metrics(frame(group=["+|t+", "-|t+"], **flags), ["test"], min_group_size=1)
    assert ok["test"] == {"aligned_acc2": 1.0, "conflicting_acc2": 1.0, "worst_group_acc2": 1.0}
    assert math.isnan(group_metrics(frame(), ["test"])["test"]["aligned_acc2"])  # no ground-truth columns
    with pytest.raises(ValueError, match="but not"):
        group_metrics(frame(group=["+|t+", "-|t+"]), ["test"])
    with pytest.raises(ValueError, match="conflict flags"):
        group_metrics(frame(group=["+|t+", "-|t+"], **{**flags, "conflict_audio": ["2", "0"]}), ["test"])
    with pytest.raises(ValueError, match="without a 'group'"):
        group_metrics(frame(group=["+|t+", ""], **flags), ["test"])
    with pytest.raises(ValueError, match="no rows for test set 'ood_tav'"):
        group_metrics(frame(group=["+|t+", "-|t+"], **flags), ["test", "ood_tav"])
    with pytest.raises(ValueError, match="min_group_size"):
        group_metrics(frame(), ["test"], min_group_size=0)


def test_headline_difference_against_the_baseline() -> None:
    df = build_leaderboard(RUNS_GT, order=ORDER)
    results = _results_by_row(RUNS_GT)
    for _, row in df.iterrows():
        label, dataset, hset = row["label"], row["dataset"], row["headline_set"]
        if label == "baseline":
            assert row["headline_diff_n"] == 0 and math.isnan(row["headline_diff"]) and not row["resolved"]
            assert math.isnan(row["p_better"])
            continue
        mine = {r["seed"]: r["metrics"][hset]["Non0_acc_2"] for r in results[(label, dataset)]}
        base = {r["seed"]: r["metrics"][hset]["Non0_acc_2"] for r in results[("baseline", dataset)]}
        seeds = sorted(set(mine) & set(base))
        diffs = [mine[s] - base[s] for s in seeds]
        assert row["headline_diff_n"] == len(seeds)
        assert row["headline_diff"] == round(100 * float(np.mean(diffs)), 2)
        low, high = _ci(diffs)
        assert (row["headline_diff_ci_low"], row["headline_diff_ci_high"]) == (low, high)
        wins = sum(1.0 if mine[s] > base[s] else 0.5 if mine[s] == base[s] else 0.0 for s in seeds)
        assert row["p_better"] == pytest.approx(wins / len(seeds))
        stats = paired_difference(mine, base)
        assert (
            row["resolved"] == stats["resolved"] == (len(seeds) >= 2 and (stats["ci_low"] > 0 or stats["ci_high"] < 0))
        )
    assert _row(df, "jtt")["headline_diff_n"] == 2  # jtt has two seeds
    assert _row(df, "erm_unbiased")["resolved"] and _row(df, "erm_unbiased")["headline_diff"] > 10
    gear_mosi = _row(df, "gear", "mosi_utt")
    assert not gear_mosi["resolved"] and gear_mosi["headline_diff_ci_low"] < 0 < gear_mosi["headline_diff_ci_high"]


def test_no_baseline_row_no_difference(gt_copy: Path) -> None:
    for run in [r for r in find_runs(gt_copy)[0] if r.name.startswith("baseline-synthetic-")]:
        shutil.rmtree(run)
    syn = build_leaderboard(gt_copy).query("dataset == 'synthetic'")
    assert (syn["headline_diff_n"] == 0).all() and syn["headline_diff"].isna().all() and not syn["resolved"].any()


def test_markdown_headline_tables() -> None:
    text = leaderboard_markdown(build_leaderboard(RUNS_GT, order=ORDER))
    mosi, synthetic = text.split("## synthetic")
    mosi = mosi[mosi.index("## mosi_utt") :]
    # headline first, mean ± std [95 % interval]; reference and oracle rows in a table of their own
    headline = synthetic[synthetic.index("### Headline") : synthetic.index("### Non0_acc_2")]
    assert "worst group (test)" in headline and "worst group" not in mosi.split("### Non0_acc_2")[0]
    ranked, apart = headline.split("Reference and oracle rows (not ranked):")
    assert [line.split(" | ")[0] for line in ranked.splitlines() if line.startswith("| ") and "---" not in line] == [
        "| label",
        "| gear",
        "| jtt",
        "| baseline",
    ]
    assert "| erm_unbiased | reference | 3 |" in apart and "| oracle_groupdro | oracle | 3 |" in apart
    assert "erm_unbiased" not in ranked
    assert "| gear | method | 3 | 93.83 ± 2.43 | 28.81 ± 2.39 [27.12, 32.20] | 75.76 ± 11.34 |" in ranked
    assert "+21.47 [18.65, 27.12] | 3 | 1.00 | resolved |" in ranked
    assert (
        "| gear | method | 2 | 75.67 ± 2.71 | 76.31 ± 2.63 [73.68, 78.95] | -2.63 [-10.52, 5.26] | 2 | 0.50 | "
        "not resolved |" in mosi
    )
    # group accuracies where the data has groups only
    assert "### Ground-truth groups: Non0_acc_2" in synthetic and "Ground-truth groups" not in mosi
    assert "| baseline | method | ood_tav | — |" in synthetic  # no aligned clip in ood_tav
    assert "at least 10 samples" in text
    assert "at least 3 samples" in leaderboard_markdown(build_leaderboard(RUNS_GT, min_group_size=3))


# --------------------------------------------------------------------------------------------------------------------
# The IID-vs-headline figure
# --------------------------------------------------------------------------------------------------------------------


def test_iid_vs_headline_points_are_the_seeds() -> None:
    from matplotlib.markers import MarkerStyle

    df = build_leaderboard(RUNS_GT, order=ORDER)
    fig = iid_vs_headline_figure(df)
    mosi_ax, syn_ax = fig.axes[:2]
    assert "mosi_utt" in mosi_ax.get_title() and "synthetic" in syn_ax.get_title()
    assert "ood_tav" in syn_ax.get_ylabel() and "test_nn_tav" in mosi_ax.get_ylabel()
    points = {c.get_label(): c for c in syn_ax.collections if isinstance(c, PathCollection)}
    assert list(points) == ["gear", "jtt", "baseline", "erm_unbiased (reference)", "oracle_groupdro (oracle)"]
    results = _results_by_row(RUNS_GT)
    for name, label in (("gear", "gear"), ("jtt", "jtt"), ("erm_unbiased (reference)", "erm_unbiased")):
        expected = [
            (100 * r["metrics"]["test"]["Non0_acc_2"], 100 * r["metrics"]["ood_tav"]["Non0_acc_2"])
            for r in results[(label, "synthetic")]
        ]
        np.testing.assert_allclose(points[name].get_offsets(), expected)
    # one colour per row, marker by kind
    colours = {tuple(c.get_facecolor()[0]) for c in points.values()}
    assert len(colours) == len(points)
    for name, marker in (("gear", "o"), ("erm_unbiased (reference)", "s"), ("oracle_groupdro (oracle)", "^")):
        style = MarkerStyle(marker)
        expected_path = style.get_path().transformed(style.get_transform())
        np.testing.assert_allclose(points[name].get_paths()[0].vertices, expected_path.vertices)
    lines = {line.get_label(): line for line in syn_ax.get_lines()}
    diagonal = lines["y = x"]
    np.testing.assert_array_equal(diagonal.get_xdata(), diagonal.get_ydata())
    (ceiling,) = [line for label, line in lines.items() if label.startswith("ceiling (erm_unbiased)")]
    assert list(ceiling.get_ydata()) == [_row(df, "erm_unbiased")["headline/mean"]] * 2
    assert not any(label.startswith("ceiling") for label in (ln.get_label() for ln in mosi_ax.get_lines()))


def test_iid_vs_headline_without_headline_or_records(tmp_path: Path) -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    fig = iid_vs_headline_figure(df)
    (ax,) = fig.axes  # mosi_utt has no headline set: one panel
    points = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}
    assert len(points["gear_noipw"].get_offsets()) == 2 and len(points["gear"].get_offsets()) == 0
    # a table without per-seed records (e.g. read back): one point per row at its means
    df.attrs.pop("per_seed")
    (ax,) = iid_vs_headline_figure(df).axes
    points = {c.get_label(): c for c in ax.collections if isinstance(c, PathCollection)}
    noipw = _row(df, "gear_noipw")
    np.testing.assert_allclose(points["gear_noipw"].get_offsets(), [[noipw["test/Non0_acc_2/mean"], 71.43]])
    empty = iid_vs_headline_figure(build_leaderboard(tmp_path))
    assert "No headline set" in empty.axes[0].texts[0].get_text()


# --------------------------------------------------------------------------------------------------------------------
# Weights & Biases
# --------------------------------------------------------------------------------------------------------------------


def test_wandb_disabled_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    assert log_to_wandb(build_leaderboard(RUNS), project="lb-test") is True
    assert wandb.run is None
    assert not (tmp_path / "wandb").exists()


def test_wandb_offline_writes_the_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    df = build_leaderboard(RUNS, order=ORDER)
    _, _, png, line = write_leaderboard(df, tmp_path / "out")
    assert log_to_wandb(df, project="lb-test", name="lb", plot=png, line_plot=line) is True
    assert wandb.run is None  # finished
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("run-*.wandb"))
    (table_file,) = (run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(df.columns)
    expected = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in df.values.tolist()]
    assert table["data"] == expected
    assert list((run_dir / "files" / "media" / "images").glob("leaderboard_plot_*.png"))
    assert list((run_dir / "files" / "media" / "images").glob("leaderboard_iid_vs_headline_*.png"))


def test_wandb_failure_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import wandb

    def broken_init(**kwargs: object) -> None:
        raise RuntimeError("no W&B today")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setattr(wandb, "init", broken_init)
    with caplog.at_level(logging.WARNING, logger="benchmarks.leaderboard"):
        assert log_to_wandb(build_leaderboard(RUNS)) is False
    assert "no W&B today" in caplog.text
    # the command still succeeds and writes its files
    assert cli_main(["leaderboard", str(RUNS), "--out", str(tmp_path / "out"), "--wandb"]) == 0
    assert (tmp_path / "out" / "leaderboard.csv").read_bytes() == EXPECTED_CSV.read_bytes()


def test_wandb_mode_defaults_to_offline_and_is_never_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    seen: list[str] = []

    def fake_init(**kwargs: object) -> None:
        seen.append(os.environ["WANDB_MODE"])
        assert kwargs["job_type"] == "leaderboard" and kwargs["project"] == "p"
        raise RuntimeError("stop here")

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    log_to_wandb(build_leaderboard(RUNS), project="p")
    monkeypatch.setenv("WANDB_MODE", "online")
    log_to_wandb(build_leaderboard(RUNS), project="p")
    assert seen == ["offline", "online"]


# --------------------------------------------------------------------------------------------------------------------
# Bias identification (docs/algorithms.md#bias-identification, issue 15 item 4)
# --------------------------------------------------------------------------------------------------------------------


def test_bias_id_auroc_reads_jtt_and_weighting_records() -> None:
    records = [{"epoch": e, "score": "w", "auroc": a} for e, a in [(0, 0.3), (1, 0.4), (2, 0.6), (3, 0.9)]]
    assert bias_id_auroc({"selected_epoch": 2, "diagnostics": {"bias_identification": records}}) == 0.6
    assert bias_id_auroc({"selected_epoch": 9, "diagnostics": {"bias_identification": records}}) == 0.9
    assert math.isnan(bias_id_auroc({"selected_epoch": 0, "diagnostics": {"bias_identification": records[1:]}}))
    assert bias_id_auroc({"diagnostics": {"identification": {"auroc": 0.98, "score": "error"}}}) == 0.98
    assert math.isnan(bias_id_auroc({"diagnostics": {}}))
    assert math.isnan(bias_id_auroc({}))


def test_leaderboard_aggregates_bias_identification(runs_copy: Path) -> None:
    values = {1111: 0.25, 1112: 0.75}
    for seed, auroc in values.items():
        run = _complete_dir(runs_copy, "gear", seed)
        selected = json.loads((run / "result.json").read_text())["selected_epoch"]
        _edit_result(run, diagnostics={"bias_identification": [{"epoch": selected, "score": "w", "auroc": auroc}]})
    df = build_leaderboard(runs_copy, order=ORDER)
    gear = df[df["label"] == "gear"].iloc[0]
    assert gear[f"{BIAS_ID}/mean"] == 50.0 and gear[f"{BIAS_ID}/n"] == 2
    assert (df[df["label"] != "gear"][f"{BIAS_ID}/n"] == 0).all()
    md = leaderboard_markdown(df)
    assert "Bias identification" in md and "| gear | " in md.split("Bias identification", 1)[1]
