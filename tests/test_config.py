"""Job configs: run hashes pinned across refactors, hash markers on the fields, choice fields checked at build time."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal, Union, get_args, get_origin, get_type_hints

import pytest
import yaml

from benchmarks.cli import main
from benchmarks.config import ConfigChoiceError, JobConfig, build_config, config_hash, hash_markers, run_dir_for
from benchmarks.sweep import expand, load_sweep
from datamodules import DATASETS, DatasetEntry
from datamodules.fields import hash_neutral, non_semantic
from datamodules.synthetic import SyntheticConfig
from methods import METHODS
from methods.metrics import SELECTION_MODES, SelectionKey

PINS = json.loads((Path(__file__).parent / "fixtures" / "config_hashes.json").read_text())
BAD = "not_a_choice"


# ---------------------------------------------------------------------------------------------------------------------
# run hashes


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


def test_markers_on_the_fields_say_what_the_central_lists_said():
    never, neutral = hash_markers(build_config(["method=mmci", "dataset=mosi_text"]))
    assert sorted(never) == sorted(
        ["trainer.progress_bar", "logger", "wandb", "output", "source.cache_dir", "source.threads", "source.progress"]
    )
    job_neutral = {
        "kind": "",
        "data.train_label_noise": 0.0,
        "trainer.early_stop": True,
        "trainer.record_epochs": True,
        "trainer.strategy": "auto",
        "model.backbone.lstm_impl": "padded",
        "model.optim.impl": "foreach",
    }
    assert neutral == job_neutral
    never, neutral = hash_markers(build_config(["dataset=synthetic_shared"]))
    assert sorted(never) == ["logger", "output", "trainer.progress_bar", "wandb"]
    synthetic = {"source.scenario": "independent", "source.train_bias": None, "source.single_modality": "text"}
    assert neutral == {**job_neutral, **synthetic}
    never, _ = hash_markers(build_config(["dataset=mosi"]))
    assert {"source.cache", "source.cache_dir", "source.verify_hash"} <= set(never)


def _with_synthetic_knob(monkeypatch, knob: dataclasses.Field) -> None:
    """Register ``synthetic`` with one more generator field, as a later change would add it."""
    entry = DATASETS["synthetic"]
    extended = dataclasses.make_dataclass("ExtendedSynthetic", [("new_knob", float, knob)], bases=(SyntheticConfig,))
    monkeypatch.setitem(DATASETS, "synthetic", DatasetEntry(extended, entry.load, entry.description,
                                                            entry.method_preset, entry.has_ground_truth))


def test_a_knob_added_at_its_neutral_value_moves_no_run_folder(monkeypatch):
    default = PINS["configs"]["default"]["hash"]
    _with_synthetic_knob(monkeypatch, hash_neutral(0.0))
    assert config_hash(build_config([])) == default
    assert config_hash(build_config(["synthetic.new_knob=0.5"])) != default


def test_a_non_semantic_knob_never_moves_a_run_folder(monkeypatch):
    default = PINS["configs"]["default"]["hash"]
    _with_synthetic_knob(monkeypatch, non_semantic(4.0))
    assert config_hash(build_config(["synthetic.new_knob=8"])) == default


def test_an_unmarked_new_knob_moves_every_run_folder(monkeypatch):
    _with_synthetic_knob(monkeypatch, dataclasses.field(default=0.0))
    assert config_hash(build_config([])) != PINS["configs"]["default"]["hash"]


# ---------------------------------------------------------------------------------------------------------------------
# choice fields


def _choice_fields(cls: type, prefix: str = "") -> list[tuple[str, tuple, bool]]:
    """(dotted key, choices, whether it is a list of choices) of every Literal field of a config dataclass."""
    out = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if get_origin(hint) is Union:
            hint = next(a for a in get_args(hint) if a is not type(None))
        if get_origin(hint) is Literal:
            out.append((prefix + f.name, get_args(hint), False))
        elif get_origin(hint) is list and get_origin(get_args(hint)[0]) is Literal:
            out.append((prefix + f.name, get_args(get_args(hint)[0]), True))
        elif dataclasses.is_dataclass(hint):
            out.extend(_choice_fields(hint, f"{prefix}{f.name}."))
    return out


def _cases() -> list[tuple[list[str], str, str, tuple]]:
    """(selecting overrides, the key as the user writes it, the value given, choices) for every choice field of every
    registered method's config, every dataset's config and the job's own sections."""
    cases = []
    groups = [([f"method={m}"], m, cls.config_class) for m, cls in METHODS.items()]
    groups += [([f"dataset={d}"], d, entry.config_class) for d, entry in DATASETS.items()]
    groups += [([], "", JobConfig)]
    for select, alias, cls in groups:
        for key, choices, is_list in _choice_fields(cls):
            written = f"{alias}.{key}" if alias else key
            cases.append((select, written, f"[{BAD}]" if is_list else BAD, choices, is_list))
    return cases


CASES = _cases()


def test_the_walk_finds_the_choice_fields():
    keys = {key for _, key, _, _, _ in CASES}
    expected = {"gear.gmae", "gear.weight", "lff.gmae", "rubi.mask", "mmci.stratify", "camib.iv.instrument",
                "baseline.backbone.lstm_impl", "baseline.backbone.text.mode", "clue.optim.impl", "synthetic.scenario",
                "synthetic_single.single_modality", "synthetic.modalities", "mosi.nonfinite", "mosi_utt.valid_from",
                "mosi_text.labels", "trainer.precision", "trainer.accelerator", "selection.key", "kind", "logger",
                "data.modalities"}
    assert expected <= keys, expected - keys


@pytest.mark.parametrize(("select", "key", "value", "choices", "is_list"), CASES, ids=[c[1] for c in CASES])
def test_a_bad_choice_is_refused_when_the_config_is_built(select, key, value, choices, is_list):
    with pytest.raises(ConfigChoiceError) as info:
        build_config([*select, f"{key}={value}"])
    message = str(info.value)
    named = f"{key}[0]" if is_list else key
    assert message.startswith(f"{named} must be one of {list(choices)}, got '{BAD}' (closest: ")
    assert "\n" not in message


def test_free_text_fields_are_the_only_plain_strings():
    """A new string field whose code compares it with fixed words must be a Literal; only these are free text."""
    free = {"encoder", "path", "root", "cache_dir", "method", "dataset", "label", "sweep", "dir", "project", "entity",
            "group"}
    plain = set()

    def walk(cls: type) -> None:
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is str:
                plain.add(f.name)
            elif dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name])

    for cls in [JobConfig, *(m.config_class for m in METHODS.values()), *(d.config_class for d in DATASETS.values())]:
        walk(cls)
    assert plain <= free, plain - free


def test_selection_keys_and_their_directions_agree():
    assert tuple(SELECTION_MODES) == get_args(SelectionKey)


def test_cli_run_refuses_a_bad_choice_in_one_line(capsys):
    assert main(["run", "--show-config", "method=gear", "gear.gmae=tahn"]) == 2
    err = capsys.readouterr().err
    assert err == ("msabench run: error: gear.gmae must be one of ['tanh', 'sigmoid', 'exp', 'cauchy', 'none'], "
                   "got 'tahn' (closest: 'tanh')\n")


def _sweep(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "root": str(tmp_path / "runs"), "methods": ["gear"],
                                    "datasets": ["synthetic"], "seeds": [1], **spec}))
    return path


def test_sweep_planning_refuses_a_bad_choice_in_one_line(tmp_path, capsys):
    path = _sweep(tmp_path, method_overrides={"gear": ["gear.gmae=tahn"]})
    with pytest.raises(ConfigChoiceError, match=r"gear\.gmae must be one of .*, got 'tahn' \(closest: 'tanh'\)"):
        expand(load_sweep(path))
    assert main(["sweep", "status", str(path)]) == 2
    err = capsys.readouterr().err
    assert "gear.gmae must be one of" in err and "(closest: 'tanh')" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


def test_sweep_file_choices_are_refused_naming_the_file(tmp_path):
    path = _sweep(tmp_path, launcher={"name": "locall"})
    with pytest.raises(ConfigChoiceError, match=rf"{path}: launcher.name must be one of .* \(closest: 'local'\)"):
        load_sweep(path)
    path = _sweep(tmp_path, variants={"ceiling": {"method": "baseline", "kind": "ceiling"}})
    with pytest.raises(ConfigChoiceError, match=r"variants.ceiling.kind must be one of \['', 'method'"):
        load_sweep(path)


def test_split_builder_choices_are_refused_naming_the_split_key(capsys):
    assert main(["splits", "build", "--show-config", "split.av.descriptor=meen"]) == 2
    assert "split.av.descriptor must be one of ['masked_mean', 'mean', 'mean_std'], got 'meen' (closest: 'mean')" \
        in capsys.readouterr().err


def test_prepare_refuses_a_bad_choice_before_writing(tmp_path, capsys):
    out = tmp_path / "x.pkl"
    assert main(["prepare", "synthetic", "--out", str(out), "synthetic.ood_mode=revresed"]) == 2
    assert "synthetic.ood_mode must be one of ['random', 'reversed'], got 'revresed' (closest: 'reversed')" \
        in capsys.readouterr().err
    assert not out.exists()
