"""Job configs: run hashes pinned across refactors, hash markers on the fields, choice fields checked at build time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.config import build_config, config_hash, run_dir_for

PINS = json.loads((Path(__file__).parent / "fixtures" / "config_hashes.json").read_text())


@pytest.mark.parametrize("name", sorted(PINS["configs"]))
def test_run_hashes_of_representative_configs_never_move(name):
    """Hashes computed by the code before the hash markers moved onto the fields (main at 7e4968f): defaults of
    every method and dataset, hash-neutral knobs on and off their neutral value, non-semantic knobs changed."""
    pin = PINS["configs"][name]
    assert config_hash(build_config(pin["overrides"])) == pin["hash"]


def test_run_folders_of_the_committed_sweeps_never_move():
    """One job per (row, dataset) of every sweep in benchmarks/sweeps, as expanded before the change."""
    for job in PINS["sweep_jobs"]:
        assert run_dir_for(build_config(job["overrides"])).name == job["run_dir"], job["sweep"]
