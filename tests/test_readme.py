"""The generated blocks of README.md and docs/*.md (`benchmarks.readme_blocks`): current with their sources, placed
where the documentation says, and the block machinery refuses what it cannot place. The config reference
(`benchmarks.config_reference`) lists exactly the keys `msabench run --show-config` resolves."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from benchmarks.cli import main as cli_main
from benchmarks.cli import make_parser
from benchmarks.config import JobConfig, build_config
from benchmarks.config_reference import key_rows, value_text
from benchmarks.readme_blocks import (
    RESULTS_CSV,
    ROOT,
    SEEDS_CSV,
    block_names,
    current_documents,
    documents,
    markers,
    refresh,
    render_ablations,
    render_results,
    render_seed_count,
    render_selection,
    render_tuning,
    replace_block,
)
from datamodules import DATASETS, get_dataset
from methods import METHODS

# Where the documentation promises each generated block.
PLACES = {
    "README.md": {"results", "methods", "ablations", "mechanisms-headline"},
    "docs/results.md": {"results", "selection", "seed-count", "results-scenarios", "ablations", "tuning", "mechanisms"},
    "docs/protocol.md": {"ci-calibration"},
    "docs/cli.md": {"config-job", "config-model", "config-methods", "config-datasets", "config-sweep", "config-split"},
}


def test_every_generated_block_matches_its_source() -> None:
    stale = [str(path.relative_to(ROOT)) for path, text, fresh in current_documents() if text != fresh]
    assert not stale, f"generated blocks are stale in {stale}: run `msabench readme`"
    assert cli_main(["readme", "--check"]) == 0


@pytest.mark.parametrize("doc", sorted(PLACES))
def test_blocks_are_where_the_documentation_says(doc: str) -> None:
    path = ROOT / doc
    assert path in documents()
    assert PLACES[doc] <= set(block_names(path.read_text(encoding="utf-8"), doc))


def test_a_stale_block_fails_the_check(tmp_path: Path) -> None:
    begin, end = markers("results")
    doc = tmp_path / "page.md"
    doc.write_text(f"# Page\n\n{begin}\nold numbers\n{end}\n", encoding="utf-8")
    [(path, text, fresh)] = current_documents([doc])
    assert text != fresh and render_results(RESULTS_CSV) in fresh and "old numbers" not in fresh


def test_replace_block_rewrites_only_the_body_and_refuses_missing_or_repeated_markers() -> None:
    begin, end = markers("results")
    text = f"head\n{begin}\nold\n{end}\ntail\n"
    assert replace_block(text, "results", "new\n") == f"head\n{begin}\nnew\n{end}\ntail\n"
    with pytest.raises(ValueError, match="page.md: expected exactly one block"):
        replace_block("no markers", "results", "x\n", source="page.md")
    with pytest.raises(ValueError, match="expected exactly one block"):
        replace_block(text + text, "results", "x\n")


def test_unknown_blocks_are_refused_naming_the_file() -> None:
    begin, end = markers("no-such-block")
    with pytest.raises(ValueError, match=r"docs/x\.md: unknown generated block\(s\) \['no-such-block'\]"):
        refresh(f"{begin}\n{end}\n", "docs/x.md")
    begin, end = markers("config-method-no_such_method")
    with pytest.raises(ValueError, match="unknown generated block"):
        refresh(f"{begin}\n{end}\n", "docs/x.md")
    # prose that mentions a marker is not a block
    assert block_names("write `<!-- NAME:begin -->` markers", "doc") == []


def test_results_table_follows_the_csv(tmp_path: Path) -> None:
    frame = pd.read_csv(RESULTS_CSV)
    block = render_results(RESULTS_CSV)
    methods = frame[frame["kind"] == "method"].sort_values("headline/mean", ascending=False)["label"].tolist()
    rows = [line.split("|")[1].strip() for line in block.splitlines() if line.startswith("| ") and "row" not in line]
    assert rows[: len(methods)] == methods  # method rows ranked by the headline, reference / oracle rows after
    # a changed cell changes the block: nothing in it is typed by hand
    frame.loc[frame["label"] == "baseline", "headline/mean"] = 12.34
    changed = tmp_path / "leaderboard.csv"
    frame.to_csv(changed, index=False)
    assert "12.34" in render_results(changed) and "12.34" not in block
    with pytest.raises(ValueError, match="no column 'headline/mean'"):
        frame.drop(columns=["headline/mean"]).to_csv(changed, index=False)
        render_results(changed)


def test_selection_table_needs_leaderboards_with_selected_epochs(tmp_path: Path) -> None:
    old = tmp_path / "old.csv"
    pd.read_csv(RESULTS_CSV).drop(columns=["selected_epochs"]).to_csv(old, index=False)
    with pytest.raises(ValueError, match="no column 'selected_epochs'"):
        render_selection(old, old)


def test_ablation_table_puts_each_method_between_its_matched_baseline_and_its_ablations(tmp_path: Path) -> None:
    board = pd.DataFrame([
        {"label": label, "kind": "method", "dataset": "synthetic_shared", "headline_set": "ood_tav", "n_seeds": 3,
         "seeds": "1111;1112;1113", "headline/mean": mean, "headline/std": 1.0, "headline/ci_low": mean - 1,
         "headline/ci_high": mean + 1}
        for label, mean in (("baseline", 60.0), ("gear", 70.0), ("gear_noipw", 65.0), ("gear_noswap", 69.5))
    ])
    board.to_csv(tmp_path / "leaderboard.csv", index=False)
    compare = pd.DataFrame([
        {"dataset": "synthetic_shared", "comparison": kind, "row": row, "reference": ref, "n_pairs": 3,
         "row_headline": 0.0, "reference_headline": 0.0, "diff": diff, "ci_low": low, "ci_high": high,
         "p_better": p, "resolved": low > 0 or high < 0}
        for kind, row, ref, diff, low, high, p in (
            ("matched", "gear", "baseline", 10.0, 8.0, 12.0, 1.0),
            ("matched", "gear_noipw", "baseline", 5.0, 3.0, 7.0, 1.0),
            ("matched", "gear_noswap", "baseline", 9.5, -1.0, 20.0, 0.67),
            ("term", "gear", "gear_noipw", 5.0, 1.0, 9.0, 1.0),
            ("term", "gear", "gear_noswap", 0.5, -2.0, 3.0, 0.67),
        )
    ])
    compare.to_csv(tmp_path / "compare.csv", index=False)
    lines = [line for line in render_ablations(tmp_path).splitlines() if line.startswith("| ")][1:]
    assert [line.split(" | ")[0] for line in lines] == [
        "| baseline (matched baseline)", "| gear", "| gear_noipw", "| gear_noswap",
    ]
    assert lines[1].endswith("| 70.00 ± 1.00 [69.00, 71.00] | +10.00 [+8.00, +12.00] | 1.00 | — | — |")
    assert lines[2].endswith("| +5.00 [+3.00, +7.00] | 1.00 | +5.00 [+1.00, +9.00] | acts: full > |")
    assert lines[3].endswith("| +0.50 [-2.00, +3.00] | **not resolved** |")
    assert "* `gear`: above `baseline`; `gear_noipw` scores lower; not resolved: `gear_noswap`." in render_ablations(
        tmp_path
    )
    compare.drop(columns="resolved").to_csv(tmp_path / "compare.csv", index=False)
    with pytest.raises(ValueError, match="compare.csv: no column 'resolved'"):
        render_ablations(tmp_path)


def test_tuning_table_lists_each_recorded_choice(tmp_path: Path) -> None:
    import json

    with pytest.raises(ValueError, match="no tuning record"):
        render_tuning(tmp_path)
    record = {"prefix": "mmci_s", "seeds": [1111], "label": "mmci_s03_int10", "key": "mae", "valid": 0.5,
              "by_label": {"mmci_s03_int10": 0.5, "mmci_s01_int01": 0.9}, "overrides": ["mmci.lambda_s=0.3"]}
    (tmp_path / "mmci.json").write_text(json.dumps(record))
    table = render_tuning(tmp_path)
    row = "| `mmci` (mmci_s*) | 2 | 1111 | `mmci_s03_int10` | `mmci.lambda_s=0.3` | mae 0.5000 | 0.5000 – 0.9000 |"
    assert row in table
    del record["by_label"]
    (tmp_path / "mmci.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="mmci.json: no field 'by_label'"):
        render_tuning(tmp_path)


def test_seed_count_follows_the_seed_spread(tmp_path: Path) -> None:
    frame = pd.read_csv(SEEDS_CSV)
    std = float(frame.loc[frame["label"] == "baseline", "headline/std"].iloc[0])
    block = render_seed_count(SEEDS_CSV)
    assert f"| 3 | ±{1.96 * std / math.sqrt(3):.2f} |" in block
    frame.loc[frame["label"] == "baseline", "headline/std"] = 1.0
    changed = tmp_path / "leaderboard.csv"
    frame.to_csv(changed, index=False)
    assert f"| 3 | ±{1.96 / math.sqrt(3):.2f} |" in render_seed_count(changed)
    with pytest.raises(ValueError, match="no row 'gear'"):
        render_seed_count(SEEDS_CSV, row="gear")


def _flatten(node: object, prefix: str = "") -> dict[str, object]:
    if isinstance(node, dict) and node:
        out: dict[str, object] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.parametrize("method", list(METHODS))
def test_config_reference_lists_every_resolved_key_with_its_default(method: str) -> None:
    cfg = build_config([f"method={method}", "dataset=synthetic", "data.preset=false"])
    resolved = _flatten(OmegaConf.to_container(cfg, resolve=True))
    documented = {row.key: row.default for row in key_rows(JobConfig)}
    documented.update({f"model.{row.key}": row.default for row in key_rows(METHODS[method].config_class)})
    documented.update({f"source.{row.key}": row.default for row in key_rows(get_dataset("synthetic").config_class)})
    documented.update({"method": method, "data.preset": "false"})  # the overrides (no preset: model defaults apply)
    assert set(documented) == set(resolved)
    assert {key: value_text(value) for key, value in resolved.items()} == documented


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_config_reference_lists_every_dataset_key_with_its_default(dataset: str) -> None:
    cfg = build_config([f"dataset={dataset}"])
    resolved = _flatten(OmegaConf.to_container(cfg.source, resolve=True))
    documented = {row.key: row.default for row in key_rows(get_dataset(dataset).config_class)}
    assert {key: value_text(value) for key, value in resolved.items()} == documented


def test_cli_page_documents_every_subcommand() -> None:
    parser = make_parser()
    [sub] = [action for action in parser._actions if action.dest == "command"]
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in sub.choices if f"\n## msabench {name}\n" not in page]
    assert not missing, f"docs/cli.md has no section for `msabench {missing}`"
