"""OODManifest: one manifest type with one validation for the datamodule, the split builder and the split report; a
manifest recorded for one dataset configuration is refused for another, naming the keys that change the data."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from benchmarks.config import build_config, to_object
from benchmarks.run import build_datamodule
from datamodules.datamodule import MSADataModule
from datamodules.manifest import OODManifest
from datamodules.schema import DataError
from datamodules.synthetic import generate
from datamodules.utterance import UTTERANCE_FILE, UtteranceConfig
from ood_splits.builder import MANIFEST_ROOT, SplitBuildError, SplitConfig, check_config, write_manifest
from ood_splits.report import read_manifest
from tests.conftest import SHARED_DATA, TINY_JOB, tiny_synthetic

COMMITTED = sorted(MANIFEST_ROOT.glob("*/*.json"))


def _write(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"name": "x", "ids": ["a"], "sead": 1}, r"unknown manifest key\(s\) \['sead'\]"),
        ({"name": "x", "ids": ["a"], "seed": "1"}, "'seed' must be an integer, got str"),
        ({"name": "x", "ids": ["a"], "seed": True}, "'seed' must be an integer, got bool"),
        ({"name": "x", "ids": ["a"], "dataset": 3}, "'dataset' must be a string, got int"),
        ({"name": "x", "ids": ["a"], "params": []}, "'params' must be a JSON object, got list"),
        ({"name": "x", "ids": ["a"], "params": {"dataset_config": "mosi"}}, "'params.dataset_config' must be a JSON"),
        ({"name": "x", "ids": ["a", 2]}, "'ids' must be a list of sample-id strings"),
        ({"name": "x", "ids": ["a", "a"]}, "1 duplicate ids"),
        ({"name": "worst_group", "ids": ["a"]}, "'name' 'worst_group' is reserved"),
        ({"name": "2x", "ids": ["a"]}, "'name' must be a plain identifier"),
    ],
)
def test_every_field_is_validated_naming_the_file_and_key(tmp_path, content, message):
    path = _write(tmp_path / "m.json", content)
    with pytest.raises(DataError, match=message) as info:
        OODManifest.load(path)
    assert str(path) in str(info.value)


def test_the_report_and_the_builder_use_the_same_validation(tmp_path):
    hand_made = _write(tmp_path / "m.json", {"name": "x", "ids": ["a"]})
    assert OODManifest.load(hand_made).name == "x"
    with pytest.raises(DataError, match="no key 'dataset'; was it written by `msabench splits build`"):
        read_manifest(hand_made)
    reserved = _write(tmp_path / "r.json", {**json.loads(COMMITTED[0].read_text()), "name": "test"})
    with pytest.raises(DataError, match="'name' 'test' is reserved"):
        read_manifest(reserved)
    with pytest.raises(DataError, match="'name' 'test' is reserved"):
        write_manifest(json.loads(reserved.read_text()), tmp_path / "w.json")
    assert not (tmp_path / "w.json").exists()
    with pytest.raises(SplitBuildError, match="split.name: 'name' 'valid' is reserved"):
        check_config(SplitConfig(name="valid"))


@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.name}/{p.stem}" for p in COMMITTED])
def test_committed_manifests_match_the_default_config_of_their_dataset(path):
    manifest = OODManifest.load(path, built=True)
    default = to_object(build_config([f"dataset={manifest.dataset}"]).source)
    assert manifest.config_differences(default) == []


def test_only_keys_that_change_the_data_are_compared():
    manifest = OODManifest.load(MANIFEST_ROOT / "mosi_utt" / "test_nn_text.json")
    assert manifest.config_differences(UtteranceConfig(root="/elsewhere")) == []
    assert manifest.config_differences(UtteranceConfig(valid_seed=3, valid_from="train")) == [
        "valid_seed: manifest 0, here 3",
        "valid_from: manifest 'test', here 'train'",
    ]
    synthetic = OODManifest.load(MANIFEST_ROOT / "synthetic" / "test_nn_text.json")
    assert "scenario" not in synthetic.dataset_config, "built before the scenario knob existed"
    shared = to_object(build_config(["dataset=synthetic_shared"]).source)
    assert synthetic.config_differences(shared) == ["scenario: manifest 'independent', here 'shared'"]


def _synthetic_manifest(tmp_path: Path, **fields) -> tuple[Path, object]:
    """A manifest over the tiny synthetic test split, recording that generator configuration."""
    cfg = tiny_synthetic(**fields)
    ids = generate(cfg).test.ids[:5].tolist()
    record = {"name": "ood_x", "dataset": "synthetic", "ids": ids,
              "params": {"dataset_config": dataclasses.asdict(cfg)}}
    return _write(tmp_path / "ood_x.json", record), cfg


def test_a_synthetic_manifest_is_refused_for_another_generator_configuration(tmp_path, caplog):
    path, built_for = _synthetic_manifest(tmp_path, bias=0.75)
    other = tiny_synthetic(bias=0.8, seed=3)
    bundle = generate(other)
    assert set(json.loads(path.read_text())["ids"]) <= set(bundle.test.ids), "the ids alone would resolve"
    with pytest.raises(DataError, match=r"ood_x.json: built for another synthetic configuration "
                                        r"\(seed: manifest 0, here 3; bias: manifest 0.75, here 0.8\)") as info:
        MSADataModule(bundle, manifests=[path], source_config=other)
    assert "allow_source_mismatch" in str(info.value)
    assert "ood_x" in MSADataModule(generate(built_for), manifests=[path], source_config=built_for).test_set_names
    with caplog.at_level(logging.WARNING, logger="datamodules.datamodule"):
        dm = MSADataModule(bundle, manifests=[path], source_config=other, allow_source_mismatch=True)
    assert "ood_x" in dm.test_set_names and "bias: manifest 0.75" in caplog.text


def test_the_job_passes_its_dataset_config_to_the_manifest_check(tmp_path):
    job = build_config(TINY_JOB)
    cfg = to_object(job.source)
    ids = generate(cfg).test.ids[:5].tolist()
    record = {"name": "ood_x", "dataset": "synthetic", "ids": ids,
              "params": {"dataset_config": OmegaConf.to_container(job.source)}}
    path = _write(tmp_path / "ood_x.json", record)
    assert "ood_x" in build_datamodule(build_config([*TINY_JOB, f"data.manifests=[{path}]"])).test_set_names
    with pytest.raises(DataError, match=r"built for another synthetic configuration \(bias: manifest 0.9, here 0.7\)"):
        build_datamodule(build_config([*TINY_JOB, "synthetic.bias=0.7", f"data.manifests=[{path}]"]))


@pytest.mark.skipif(not (SHARED_DATA / "mosi" / UTTERANCE_FILE).is_file(), reason="MOSI utterance features absent")
def test_committed_mosi_utt_manifests_load_in_a_default_job():
    paths = sorted(str(p) for p in (MANIFEST_ROOT / "mosi_utt").glob("*.json"))
    dm = build_datamodule(build_config(["dataset=mosi_utt", f"data.manifests=[{','.join(paths)}]"]))
    assert dm.test_set_names == ["test", "test_nn_audio", "test_nn_tav", "test_nn_text", "test_nn_vision"]
