"""The README's generated blocks (`benchmarks.readme_blocks`): current with the committed files, and the block
machinery refuses what it cannot place."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.cli import main as cli_main
from benchmarks.readme_blocks import (
    RESULTS_CSV,
    current_readme,
    markers,
    render_results,
    render_selection,
    replace_block,
)


def test_readme_blocks_match_the_committed_files() -> None:
    text, fresh = current_readme()
    assert text == fresh, "README's generated blocks are stale: run `msabench readme`"
    assert cli_main(["readme", "--check"]) == 0


def test_replace_block_rewrites_only_the_body_and_refuses_missing_or_repeated_markers() -> None:
    begin, end = markers("results")
    text = f"head\n{begin}\nold\n{end}\ntail\n"
    assert replace_block(text, "results", "new\n") == f"head\n{begin}\nnew\n{end}\ntail\n"
    with pytest.raises(ValueError, match="README: expected exactly one block"):
        replace_block("no markers", "results", "x\n")
    with pytest.raises(ValueError, match="expected exactly one block"):
        replace_block(text + text, "results", "x\n")


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
