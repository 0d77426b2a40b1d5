"""Tests for benchmarks/leaderboard.py on the static run folders in tests/fixtures/runs.

Fixture rows (tests/fixtures/runs/default): ``baseline`` and ``gear`` on ``synthetic`` (seeds 1111-1113, sets
``test`` + ``ood_text``; gear s1113 has only ``test``; no ``label`` field, so the label is the method), the variant
``gear_noipw`` of ``gear`` on ``synthetic`` (seeds 1111-1112, ``test`` + the 4 synthetic OOD sets) and ``baseline``
on ``mosi_utt`` (manifest-named OOD sets: s1111 ``test_nn_text`` + ``test_nn_audio``, s1112 only ``test_nn_text``),
plus one incomplete folder (no ``done``).
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
from matplotlib.container import BarContainer

from benchmarks.cli import main as cli_main
from benchmarks.leaderboard import (
    CONVENTION,
    ID_COLUMNS,
    build_leaderboard,
    find_runs,
    leaderboard_figure,
    leaderboard_markdown,
    load_run,
    log_to_wandb,
    write_leaderboard,
)
from methods import METHODS
from methods.metrics import METRIC_KEYS, msa_metrics

FIXTURES = Path(__file__).parent / "fixtures"
RUNS = FIXTURES / "runs"
EXPECTED_CSV = FIXTURES / "leaderboard_expected.csv"
EXPECTED_MD = FIXTURES / "leaderboard_expected.md"
N_COMPLETE, N_INCOMPLETE = 10, 1
ORDER = list(METHODS)  # what the CLI passes
SETS = ["test", "test_nn_text", "test_nn_audio", "ood_text", "ood_audio", "ood_vision", "ood_tav"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runs_copy(tmp_path: Path) -> Path:
    """A writable copy of the fixture runs (the committed fixtures are never modified)."""
    dst = tmp_path / "runs"
    shutil.copytree(RUNS, dst)
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


def _same(got: float, expected: float) -> bool:
    return (math.isnan(got) and math.isnan(expected)) or got == expected


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


@pytest.mark.parametrize("name", ["ood_avg", "gap", "a/b"])
def test_load_run_rejects_set_names_that_clash_with_columns(runs_copy: Path, name: str) -> None:
    run = _complete_dir(runs_copy, "gear", 1113)
    result = json.loads((run / "result.json").read_text())
    _edit_result(run, test_sets=["test", name], metrics={"test": result["metrics"]["test"], name: {}})
    with pytest.raises(ValueError, match="clash with the leaderboard's columns"):
        load_run(run)


# --------------------------------------------------------------------------------------------------------------------
# Golden files
# --------------------------------------------------------------------------------------------------------------------


def test_leaderboard_files_match_expected_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    csv_path, md_path, png_path = write_leaderboard(build_leaderboard(RUNS, order=ORDER), out)
    assert (csv_path, md_path, png_path) == (out / "leaderboard.csv", out / "leaderboard.md", out / "leaderboard.png")
    assert csv_path.read_bytes() == EXPECTED_CSV.read_bytes()
    assert md_path.read_bytes() == EXPECTED_MD.read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.md", "leaderboard.png"]  # no temps
    # writing again is byte-identical (and replaces in place)
    png_bytes = png_path.read_bytes()
    write_leaderboard(build_leaderboard(RUNS, order=ORDER), out)
    assert csv_path.read_bytes() == EXPECTED_CSV.read_bytes() and md_path.read_bytes() == EXPECTED_MD.read_bytes()
    assert png_path.read_bytes() == png_bytes
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv", "leaderboard.md", "leaderboard.png"]


def test_cli_writes_the_expected_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["leaderboard", str(RUNS), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "leaderboard.csv").read_bytes() == EXPECTED_CSV.read_bytes()
    assert (tmp_path / "leaderboard.md").read_bytes() == EXPECTED_MD.read_bytes()
    assert (tmp_path / "leaderboard.png").read_bytes().startswith(PNG_MAGIC)
    out = capsys.readouterr().out
    assert "## synthetic" in out and "leaderboard.png" in out and "10 complete runs, 1 incomplete" in out


# --------------------------------------------------------------------------------------------------------------------
# Columns, rows, labels
# --------------------------------------------------------------------------------------------------------------------


def test_leaderboard_columns() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    assert ID_COLUMNS == ("method", "label", "dataset", "n_seeds", "seeds", "ood_sets")
    assert list(df.columns[:6]) == list(ID_COLUMNS)
    # test first, then OOD sets in order of appearance over runs sorted by (dataset, label, seed), then the derived
    blocks = [*SETS, "ood_avg", "gap"]
    assert list(df.columns[6:]) == [f"{s}/{m}/{x}" for s in blocks for m in METRIC_KEYS for x in ("mean", "std", "n")]
    # row order does not change the columns
    assert list(build_leaderboard(RUNS, order=["gear"]).columns) == list(df.columns)


def test_label_rows_and_registry_order() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    assert list(zip(df["method"], df["label"], df["dataset"])) == [
        ("baseline", "baseline", "mosi_utt"),
        ("baseline", "baseline", "synthetic"),
        ("gear", "gear", "synthetic"),  # runs without a "label" field: the label is the method
        ("gear", "gear_noipw", "synthetic"),  # a variant: its own row, right after its method's plain row
    ]
    assert df["seeds"].tolist() == ["1111;1112", "1111;1112;1113", "1111;1112;1113", "1111;1112"]
    assert df["n_seeds"].tolist() == [2, 3, 3, 2]
    assert df["ood_sets"].tolist() == [
        "test_nn_text;test_nn_audio[1/2]",  # s1112 has no test_nn_audio
        "ood_text",
        "ood_text",
        "ood_text;ood_audio;ood_vision;ood_tav",
    ]
    gear = _row(df, "gear")
    assert gear["test/MAE/n"] == 3 and gear["ood_text/MAE/n"] == 2  # gear s1113 has no ood_text: its own n
    assert gear["ood_audio/MAE/n"] == 0 and math.isnan(gear["ood_audio/MAE/mean"])  # a set the row lacks
    base = _row(df, "baseline")
    assert math.isnan(base["ood_text/Corr/mean"]) and base["ood_text/Corr/n"] == 3  # NaN propagates
    assert math.isnan(base["ood_avg/Corr/mean"]) and math.isnan(base["gap/Corr/mean"])  # ... into the derived cells


def test_order_is_respected() -> None:
    labels = lambda order: build_leaderboard(RUNS, order=order)["label"].tolist()  # noqa: E731
    assert labels(["gear"]) == ["gear", "gear_noipw", "baseline", "baseline"]
    assert labels(["gear", "baseline"]) == ["gear", "gear_noipw", "baseline", "baseline"]
    assert labels(["unknown"]) == labels(None) == ["baseline", "baseline", "gear", "gear_noipw"]


def test_variants_follow_the_plain_row_alphabetically(runs_copy: Path) -> None:
    """Plain method row first, then its variants alphabetically, even a variant whose label sorts before it."""
    for new_label, seed in (("a_gear", 1111), ("gear_aggmin", 1112)):
        src = _complete_dir(runs_copy, "gear_noipw", seed)
        dst = src.parent / src.name.replace("gear_noipw", new_label)
        shutil.copytree(src, dst)
        _edit_result(dst, label=new_label, config_hash="0123456789ab")
    df = build_leaderboard(runs_copy, order=ORDER)
    assert df["label"].tolist() == ["baseline", "baseline", "gear", "a_gear", "gear_aggmin", "gear_noipw"]
    assert df["method"].tolist() == ["baseline", "baseline", "gear", "gear", "gear", "gear"]
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


def test_set_cells_match_an_independent_computation() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    for (label, dataset), results in _results_by_row(RUNS).items():
        row = _row(df, label, dataset)
        for name in SETS:
            for key in METRIC_KEYS:
                mean, std, n = _cell([r["metrics"][name][key] for r in results if name in r["metrics"]])
                assert row[f"{name}/{key}/n"] == n, (label, name, key)
                assert _same(row[f"{name}/{key}/mean"], mean) and _same(row[f"{name}/{key}/std"], std)


def test_ood_avg_and_gap_cells_match_an_independent_computation() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    for (label, dataset), results in _results_by_row(RUNS).items():
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


def test_ood_avg_is_per_seed_then_aggregated() -> None:
    """METHODS §1.2: average a seed's OOD sets first, then aggregate over seeds; the pooled std is not it."""
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


def test_recompute_gives_the_same_table(tmp_path: Path) -> None:
    saved, recomputed = build_leaderboard(RUNS, order=ORDER), build_leaderboard(RUNS, order=ORDER, recompute=True)
    pd.testing.assert_frame_equal(saved, recomputed)
    csv_path, _, _ = write_leaderboard(recomputed, tmp_path)
    assert csv_path.read_bytes() == EXPECTED_CSV.read_bytes()


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
    header = "| label | seeds | IID (test) | ood_text | ood_audio | ood_vision | ood_tav | OOD avg | gap |"
    assert synthetic.count(header) == 2 and "test_nn_text" not in synthetic.split("OOD avg over")[0]
    # a row lacking a set shows "—"; a cell from fewer seeds than the row shows its count
    assert "| gear | 3 | 91.67 ± 5.89 | 78.57 ± 7.14 (2) | — | — | — | 78.57 ± 7.14 (2) | 8.93 ± 7.14 (2) |" in text
    assert "| gear_noipw | 2 | 93.75 ± 6.25 | 71.43 ± 0.00 |" in text and "82.14 ± 3.57 | 11.61 ± 2.68 |" in text
    noipw_sets = "gear_noipw: ood_text, ood_audio, ood_vision, ood_tav."
    assert f"OOD avg over: baseline: ood_text; gear: ood_text; {noipw_sets}" in text
    assert "OOD avg over: test_nn_text, test_nn_audio[1/2] (every row)." in text


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
    assert "| rubi | 1 | 97.84 ± 0.00 | — | — | — | — | — | — |" in text
    assert "| baseline | 3 | 94.61 ± 0.24 | nan ± nan |" in text  # baseline's NaN Corr is reported, not hidden
    assert "rubi: none" in text
    with pytest.raises(ValueError, match="unknown metric"):
        leaderboard_markdown(df, metrics=("Acc2",))


def test_empty_root(tmp_path: Path) -> None:
    df = build_leaderboard(tmp_path)
    assert df.empty and list(df.columns[:6]) == list(ID_COLUMNS)
    derived = [f"{s}/{m}/{x}" for s in ("ood_avg", "gap") for m in METRIC_KEYS for x in ("mean", "std", "n")]
    assert list(df.columns[6:]) == derived
    csv_path, md_path, png_path = write_leaderboard(df, tmp_path / "out")
    assert csv_path.read_text().splitlines() == [",".join(df.columns)]
    assert "No complete runs." in md_path.read_text(encoding="utf-8")
    assert png_path.read_bytes().startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------------------------------


def test_png_is_written(tmp_path: Path) -> None:
    _, _, png_path = write_leaderboard(build_leaderboard(RUNS), tmp_path)
    data = png_path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    with pytest.raises(ValueError, match="unknown metric"):
        write_leaderboard(build_leaderboard(RUNS), tmp_path / "bad", plot_metric="acc")


def test_figure_bars_are_the_table_cells() -> None:
    df = build_leaderboard(RUNS, order=ORDER)
    fig = leaderboard_figure(df)
    mosi_ax, syn_ax = fig.axes
    assert "mosi_utt" in mosi_ax.get_title() and "synthetic" in syn_ax.get_title()
    assert [t.get_text() for t in syn_ax.get_xticklabels()] == ["baseline", "gear", "gear_noipw"]
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
    mae = leaderboard_figure(df, metric="MAE")
    assert "MAE" in mae.axes[1].get_ylabel()


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
    _, _, png = write_leaderboard(df, tmp_path / "out")
    assert log_to_wandb(df, project="lb-test", name="lb", plot=png) is True
    assert wandb.run is None  # finished
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run_dir.glob("run-*.wandb"))
    (table_file,) = (run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == list(df.columns)
    expected = [[None if isinstance(v, float) and math.isnan(v) else v for v in row] for row in df.values.tolist()]
    assert table["data"] == expected
    assert list((run_dir / "files" / "media" / "images").glob("leaderboard_plot_*.png"))


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
