"""λ grids chosen on IID valid with the chosen overrides recorded (`benchmarks.tuning`), the committed grid and
ablation sweeps, and the matched-baseline / ablation comparison (`benchmarks.compare`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.cli import main as cli_main
from benchmarks.compare import comparisons, comparisons_markdown, verdict
from benchmarks.leaderboard import build_leaderboard
from benchmarks.statistics import paired_difference
from benchmarks.sweep import expand, load_sweep
from benchmarks.tuning import choose_on_valid, grid_overrides, grid_table, record_choice
from methods import METHODS
from methods.metrics import METRIC_KEYS

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = ROOT / "benchmarks" / "sweeps"
RUNS = Path(__file__).parent / "fixtures" / "runs"
GRID = (0.1, 0.3, 0.5, 1.0)


def _grid_runs(root: Path) -> None:
    """Fake complete MMCI grid runs: valid MAE lowest at lambda_s=0.3, lambda_int=1.0."""
    for s in GRID:
        for i in GRID:
            label = f"mmci_s{s}_int{i}"
            for seed in (1111,):
                run = root / f"{label}-s{seed}"
                run.mkdir(parents=True)
                value = 0.5 + abs(s - 0.3) + abs(i - 1.0)
                (run / "result.json").write_text(json.dumps({
                    "method": "mmci", "label": label, "dataset": "synthetic_shared", "seed": seed,
                    "test_sets": ["test"], "metrics": {"test": dict.fromkeys(METRIC_KEYS, 0.9)},
                    "selection": {"key": "mae", "value": value},
                }))
                (run / "config.yaml").write_text(
                    f"model:\n  d: 64\n  lambda_s: {s}\n  lambda_int: {i}\n  optim:\n    accumulate: 1\n"
                )
                (run / "done").write_text("x")


def test_tune_records_the_chosen_overrides(tmp_path):
    _grid_runs(tmp_path / "runs")
    table = grid_table(tmp_path / "runs", "mmci_s")
    choice = choose_on_valid(table)
    assert choice["label"] == "mmci_s0.3_int1.0"
    assert grid_overrides(table, choice["label"]) == ["mmci.lambda_int=1.0", "mmci.lambda_s=0.3"]
    out = tmp_path / "tuning" / "mmci.json"
    record = record_choice(tmp_path / "runs", "mmci_s", None, out)
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))
    assert record["seeds"] == [1111] and record["split"] == "valid" and len(record["by_label"]) == 16
    assert cli_main(["tune", str(tmp_path / "runs"), "--prefix", "mmci_s", "--out", str(tmp_path / "c.json")]) == 0
    assert json.loads((tmp_path / "c.json").read_text())["overrides"] == record["overrides"]
    with pytest.raises(ValueError, match="variant 'nope' is not in the grid"):
        grid_overrides(table, "nope")


@pytest.mark.parametrize(("method", "first", "second", "first_values"), [
    ("mmci", "lambda_s", "lambda_int", GRID), ("camib", "lambda_bd", "lambda_iv", GRID),
    ("gear", "lambda_dis", "lambda_swap", (5, 10, 15, 30)),
])
def test_grid_sweeps_have_an_equal_budget_on_the_first_seed(method, first, second, first_values):
    """Each seed method gets the same 7 settings: each lambda over its values with the other at its default (the axes
    of the 4 x 4 grid through the default), on the first seed of the default scenario."""
    sweep = load_sweep(SWEEPS / f"{method}_grid.yaml")
    assert sweep.seeds == [1111] and sweep.datasets == ["synthetic_shared"] and sweep.methods == []
    jobs = expand(sweep)
    assert len(jobs) == 7 and {j.method for j in jobs} == {method}
    pairs = set()
    for job in jobs:
        values = dict(o.split("=", 1) for o in job.overrides if o.startswith(f"{method}."))
        pairs.add((float(values[f"{method}.{first}"]), float(values[f"{method}.{second}"])))
    defaults = METHODS[method].config_class()
    a, b = float(getattr(defaults, first)), float(getattr(defaults, second))
    assert pairs == {(float(x), b) for x in first_values} | {(a, y) for y in GRID}
    assert len({j.label for j in jobs}) == 7 and all(j.label.startswith(method + "_") for j in jobs)


def test_ablation_sweep_has_every_seed_method_its_ablations_and_matched_baselines():
    sweep = load_sweep(SWEEPS / "ablations.yaml")
    assert sweep.datasets == ["synthetic_shared"] and sweep.seeds == [1111, 1112, 1113]
    labels = {j.label for j in expand(sweep)}
    for method in ("gear", "mmci", "camib"):
        assert method in labels and METHODS[method].matched_baseline in labels
    assert {"mmci_legacy", "mmci_no_int", "camib_no_iv", "camib_no_bd", "camib_iv_pull_c", "camib_tf"} <= labels
    legacy = next(j for j in expand(sweep) if j.label == "mmci_legacy")
    assert {"mmci.readout=unsplit", "mmci.combine=linear", "mmci.shortcut_loss=const"} <= set(legacy.overrides)


def _board(headlines: dict[tuple[str, str], dict[int, float]], kinds: dict[str, str] | None = None) -> pd.DataFrame:
    """A leaderboard frame as `comparisons` reads it: one row per label, per-seed headlines in attrs."""
    kinds = kinds or {}
    method_of = {"mmci_no_int": "mmci", "mmci_legacy": "mmci", "gear_noipw": "gear"}
    board = pd.DataFrame([
        {"label": label, "method": method_of.get(label, label), "kind": kinds.get(label, "method"), "dataset": "d"}
        for label, _ in headlines
    ])
    board.attrs["per_seed"] = [
        {"label": label, "dataset": "d", "seed": seed, "headline": value}
        for (label, _), seeds in headlines.items() for seed, value in seeds.items()
    ]
    return board


def test_compare_pairs_each_row_with_its_matched_baseline_and_each_variant_with_its_method():
    h = {
        ("baseline", "d"): {1: 70.0, 2: 71.0, 3: 69.0},
        ("baseline_seq", "d"): {1: 74.0, 2: 75.0, 3: 73.0},
        ("mmci", "d"): {1: 77.0, 2: 76.0, 3: 78.0},
        ("mmci_no_int", "d"): {1: 77.5, 2: 75.0, 3: 78.0},
        ("mmci_legacy", "d"): {1: 70.0, 2: 71.0, 3: 72.0},
        ("oracle_groupdro", "d"): {1: 80.0, 2: 80.0, 3: 80.0},
    }
    frame = comparisons(_board(h, {"oracle_groupdro": "oracle"}))
    got = [(r.comparison, r.row, r.reference) for r in frame.itertuples()]
    assert got == [
        ("matched", "baseline_seq", "baseline"), ("matched", "mmci", "baseline_seq"),
        ("matched", "mmci_no_int", "baseline_seq"), ("matched", "mmci_legacy", "baseline_seq"),
        ("term", "mmci", "mmci_no_int"), ("term", "mmci", "mmci_legacy"),
    ], "oracle rows and the baseline itself are not compared"
    by = {(r.comparison, r.row, r.reference): r for r in frame.itertuples()}
    matched = by[("matched", "mmci", "baseline_seq")]
    assert matched.diff == pytest.approx(3.0) and matched.p_better == 1.0 and matched.row_headline == 77.0
    expected = paired_difference(h[("mmci", "d")], h[("mmci_no_int", "d")])
    no_int = by[("term", "mmci", "mmci_no_int")]
    assert no_int.diff == pytest.approx(expected["mean_diff"]) and no_int.ci_low == expected["ci_low"]
    assert not no_int.resolved and by[("term", "mmci", "mmci_legacy")].resolved
    markdown = comparisons_markdown(frame)
    assert "| mmci | mmci_no_int | 3 | 77.00 | 76.83 | +0.17 [" in markdown and "**not resolved** |" in markdown
    assert "| mmci | mmci_legacy | 3 | 77.00 | 71.00 | +6.00 [" in markdown and "| acts: full > |" in markdown
    with pytest.raises(ValueError, match="no per-seed records"):
        comparisons(pd.DataFrame())
    assert [verdict("term", d, r) for d, r in ((2.0, True), (-2.0, True), (2.0, False))] == [
        "acts: full >", "acts: full <", "**not resolved**"]
    assert [verdict("matched", d, True) for d in (1.0, -1.0)] == ["above", "below"]


def test_compare_on_the_leaderboard_fixture_and_the_cli(tmp_path, capsys):
    board = build_leaderboard(RUNS, order=list(METHODS))
    frame = comparisons(board)
    synthetic = frame[frame["dataset"] == "synthetic"]
    assert {(r.comparison, r.row, r.reference) for r in synthetic.itertuples()} == {
        ("matched", "gear", "baseline"), ("matched", "gear_noipw", "baseline"), ("term", "gear", "gear_noipw"),
    }
    assert cli_main(["compare", str(RUNS), "--out", str(tmp_path)]) == 0
    assert "# Matched baselines and ablations" in capsys.readouterr().out
    assert (tmp_path / "compare.md").read_text() == comparisons_markdown(frame)
    assert pd.read_csv(tmp_path / "compare.csv")["row"].tolist() == frame["row"].tolist()


def test_the_chosen_values_run_on_every_seed_of_the_ablation_sweep():
    """Each recorded choice (docs/results/tuning/<method>.json, `msabench tune --out`) is the variant
    ``<method>_tuned`` of the ablation sweep with exactly the chosen overrides, on every seed of that sweep; a choice
    that is the method's default needs no such row (the plain method row is it)."""
    records = sorted((ROOT / "docs" / "results" / "tuning").glob("*.json"))
    assert {p.stem for p in records} == {"mmci", "camib", "gear"}
    sweep = load_sweep(SWEEPS / "ablations.yaml")
    for path in records:
        record = json.loads(path.read_text())
        assert record["split"] == "valid" and record["seeds"] == [1111] and len(record["by_label"]) == 7
        defaults = METHODS[path.stem].config_class()
        chosen = {o.split("=", 1)[0].split(".", 1)[1]: float(o.split("=", 1)[1]) for o in record["overrides"]}
        variant = sweep.variants.get(f"{path.stem}_tuned")
        if all(float(getattr(defaults, key)) == value for key, value in chosen.items()):
            assert variant is None, f"{path.stem}'s choice is its default: no {path.stem}_tuned row is needed"
            continue
        assert variant is not None, f"ablations.yaml has no {path.stem}_tuned row for the choice in {path}"
        assert variant.method == path.stem and sorted(variant.overrides) == sorted(record["overrides"])
