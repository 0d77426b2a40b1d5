"""Ground truth of the synthetic generator (docs/design.md#ground-truth) and its scenarios: z, conflict flags,
groups, train_bias, the named scenario datasets, and the bitwise regression of scenario ``independent``."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch

from datamodules import DATASETS
from datamodules.datamodule import MSADataModule
from datamodules.schema import (
    GROUND_TRUTH_COLUMNS,
    MODALITIES,
    Batch,
    DataError,
    conflict_flags,
    ground_truth_columns,
    group_index,
    group_names_of,
    label_sign,
    sorted_group_names,
)
from datamodules.synthetic import SPURIOUS_POSITIVE, SyntheticConfig, _World, generate, ood_sets_of
from tests.conftest import tiny_synthetic

# --- bitwise regression of scenario ``independent`` -------------------------------------------------------------

# The arrays every split had before ground truth and scenarios existed (z is deliberately not hashed).
_HASHED_FIELDS = (
    "ids", "label", "text", "text_ids", "text_lengths", "audio", "audio_lengths", "vision", "vision_lengths", "raw_text"
)
# SHA-256 of generate(SMALL) and generate(CI) computed at commit 0c01d6a, before scenarios changed the generator.
SMALL_DIGEST = "5d51f4edeff66fb332a5875dd8fb697cf790c1218e722692998c9a783555f95a"
CI_DIGEST = "1125c4b5db1d8ac370467fe95cf2f43a17d2a4c04c71f5be63e1f5259528316f"
# config_hash(build_config([])) at the same commit: new source keys at their defaults must not move run folders.
DEFAULT_JOB_HASH = "e777f5072bb6"


def _small() -> SyntheticConfig:
    return SyntheticConfig(n_train=64, n_valid=32, n_test=32, n_ood=32)


def _ci() -> SyntheticConfig:
    """The CI sweep's synthetic data (benchmarks/sweeps/ci.yaml)."""
    return SyntheticConfig(
        n_train=640,
        n_valid=160,
        n_test=400,
        n_ood=400,
        dims={"text": 64, "audio": 5, "vision": 20},
        max_len={"text": 24, "audio": 24, "vision": 24},
    )


def _split_digest(h, name: str, split) -> None:
    h.update(f"split:{name}\n".encode())
    for f in _HASHED_FIELDS:
        arr = getattr(split, f)
        if arr is None:
            h.update(f"{f}:none\n".encode())
        elif arr.dtype.kind in "UO":
            h.update(f"{f}:str:{arr.shape}\n".encode())
            h.update("\x00".join(str(s) for s in arr.tolist()).encode("utf-8"))
        else:
            a = np.ascontiguousarray(arr)
            h.update(f"{f}:{a.dtype.str}:{a.shape}\n".encode())
            h.update(a.tobytes())


def bundle_digest(bundle) -> str:
    """SHA-256 over every array of every split (train, valid, test, OOD sets by name)."""
    h = hashlib.sha256()
    for name, split in [("train", bundle.train), ("valid", bundle.valid), ("test", bundle.test),
                        *sorted(bundle.extra_tests.items())]:
        _split_digest(h, name, split)
    return h.hexdigest()


def test_independent_scenario_is_bitwise_unchanged():
    assert bundle_digest(generate(_small())) == SMALL_DIGEST
    assert bundle_digest(generate(_ci())) == CI_DIGEST
    explicit = _small()
    explicit.scenario, explicit.train_bias = "independent", None
    assert bundle_digest(generate(explicit)) == SMALL_DIGEST


def test_new_source_keys_at_their_defaults_keep_the_run_folder():
    from benchmarks.config import build_config, config_hash

    assert config_hash(build_config([])) == DEFAULT_JOB_HASH
    same = ["synthetic.train_bias=null", "synthetic.single_modality=text", "synthetic.scenario=independent"]
    assert config_hash(build_config(same)) == DEFAULT_JOB_HASH
    assert config_hash(build_config(["synthetic.train_bias=0.5"])) != DEFAULT_JOB_HASH
    assert config_hash(build_config(["synthetic.scenario=shared"])) != DEFAULT_JOB_HASH


# --- helpers ----------------------------------------------------------------------------------------------------


def test_group_and_conflict_helpers_by_hand():
    label = np.array([1.0, -0.2, 0.0, -3.0], dtype=np.float32)
    z = np.array([[1, -1, 1], [1, 0, -1], [0, 0, 0], [-1, -1, -1]], dtype=np.int8)
    np.testing.assert_array_equal(label_sign(label), [1, -1, 1, -1])
    np.testing.assert_array_equal(conflict_flags(label, z), [[0, 1, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]])
    assert group_names_of(label, z).tolist() == ["+|t+a-v+", "-|t+v-", "+|", "-|t-a-v-"]
    names = sorted_group_names([])
    assert names == ()
    names = ("+|", "+|t+a-v+", "-|t+v-", "-|t-a-v-")
    np.testing.assert_array_equal(group_index(group_names_of(label, z), names), [1, 2, 0, 3])
    with pytest.raises(ValueError, match="not among"):
        group_index(np.array(["+|t+"]), names)
    cols = ground_truth_columns(label, z)
    assert tuple(cols) == GROUND_TRUTH_COLUMNS
    assert cols["z_audio"].tolist() == ["-1", "0", "0", "-1"]
    assert cols["conflict_audio"].tolist() == ["1", "", "", "0"], "no shortcut -> empty conflict"
    assert cols["group"].tolist() == ["+|t+a-v+", "-|t+v-", "+|", "-|t-a-v-"]
    empty = ground_truth_columns(label, None)
    assert all(v.tolist() == [""] * 4 for v in empty.values()) and tuple(empty) == GROUND_TRUTH_COLUMNS


# --- what the generator records ---------------------------------------------------------------------------------


def _splits(bundle):
    return [("train", bundle.train), ("valid", bundle.valid), ("test", bundle.test), *bundle.extra_tests.items()]


def _agreement(split, k: int) -> float:
    """Share of samples whose z_m agrees with sign(y) (among all samples; z_m must be non-zero)."""
    return float(np.mean(split.z[:, k] == label_sign(split.label)))


def _text_sign(split) -> np.ndarray:
    return np.array([1 if any(w in SPURIOUS_POSITIVE for w in t.split()) else -1 for t in split.raw_text])


def _frame_sign(split, m: str, cfg: SyntheticConfig) -> np.ndarray:
    _, s = _World(cfg).directions[m]
    x, lengths = getattr(split, m), getattr(split, f"{m}_lengths")
    return np.sign((x.sum(1) / lengths[:, None]) @ s)


@pytest.mark.parametrize("scenario", ["independent", "shared", "single"])
def test_z_is_recorded_for_every_split_and_is_what_the_features_show(scenario):
    cfg = tiny_synthetic(scenario=scenario, n_train=400, shortcut_strength=3.0)
    b = generate(cfg)
    b.validate("test")
    for name, split in _splits(b):
        assert split.z is not None and split.z.dtype == np.int8 and split.z.shape == (len(split), 3), name
        carried = (0,) if scenario == "single" else (0, 1, 2)
        for k in range(3):
            assert np.all(split.z[:, k] != 0) if k in carried else np.all(split.z[:, k] == 0), (name, k)
        np.testing.assert_array_equal(_text_sign(split), split.z[:, 0])  # the spurious words are z_text exactly
        if scenario != "single":
            for k, m in ((1, "audio"), (2, "vision")):
                assert np.mean(_frame_sign(split, m, cfg) == split.z[:, k]) > 0.9, (name, m)


def test_modalities_without_a_shortcut_record_zero():
    b = generate(tiny_synthetic(shortcut_modalities=["vision"]))
    assert np.all(b.train.z[:, :2] == 0) and np.all(b.train.z[:, 2] != 0)
    text_only = generate(tiny_synthetic(modalities=["text"]))
    for _, split in _splits(text_only):
        assert split.z.shape[1] == 3 and np.all(split.z[:, 1:] == 0) and np.all(split.z[:, 0] != 0)


def test_independent_conflicts_per_modality_at_one_minus_bias():
    b = generate(tiny_synthetic(n_train=3000, n_ood=2000))
    flags = conflict_flags(b.train.label, b.train.z)
    assert np.all(np.abs(flags.mean(0) - 0.1) < 0.025)
    assert flags.all(1).mean() < 0.01, "conflict in all three at once is rare ((1 - bias)^3)"
    tav = b.extra_tests["ood_tav"]
    assert all(abs(_agreement(tav, k) - 0.5) < 0.05 for k in range(3))


def test_shared_scenario_one_confounder_per_clip():
    b = generate(tiny_synthetic(scenario="shared", n_train=3000, n_test=2000, n_ood=2000))
    assert b.name == "synthetic_shared" and set(b.extra_tests) == set(ood_sets_of(tiny_synthetic()))
    for split in (b.train, b.valid, b.test):
        assert np.all(split.z == split.z[:, :1]), "every shortcut modality shows the clip's one z"
        flags = conflict_flags(split.label, split.z)
        assert np.array_equal(flags.all(1), flags.any(1))
    flags = conflict_flags(b.train.label, b.train.z)
    assert abs(flags.all(1).mean() - 0.1) < 0.02, "a fraction 1 - bias conflicts in all modalities at once"
    assert set(b.train.groups.tolist()) == {"+|t+a+v+", "+|t-a-v-", "-|t+a+v+", "-|t-a-v-"}
    tav = b.extra_tests["ood_tav"]
    assert np.all(tav.z == tav.z[:, :1]) and abs(_agreement(tav, 0) - 0.5) < 0.05
    text = b.extra_tests["ood_text"]
    assert np.all(text.z[:, 1] == text.z[:, 2]), "the unbroken modalities keep the shared z"
    assert abs(_agreement(text, 0) - 0.5) < 0.05 and abs(_agreement(text, 1) - 0.9) < 0.03
    audio = b.extra_tests["ood_audio"]
    assert np.all(audio.z[:, 0] == audio.z[:, 2]) and abs(_agreement(audio, 1) - 0.5) < 0.05


def test_shared_reversed_and_partial_shortcut_modalities():
    b = generate(tiny_synthetic(scenario="shared", n_ood=2000, ood_mode="reversed"))
    assert abs(_agreement(b.extra_tests["ood_tav"], 0) - 0.1) < 0.03
    assert np.all(b.extra_tests["ood_tav"].z == b.extra_tests["ood_tav"].z[:, :1])
    # text and audio carry the shared z (vision none): ood_tav covers both, so one z at the OOD agreement
    two = generate(tiny_synthetic(scenario="shared", shortcut_modalities=["text", "audio"], n_ood=500))
    assert np.all(two.train.z[:, 2] == 0) and np.all(two.train.z[:, 0] == two.train.z[:, 1])
    assert np.all(two.extra_tests["ood_tav"].z[:, 0] == two.extra_tests["ood_tav"].z[:, 1])


def test_shared_is_the_same_world_as_independent():
    ind, sh = generate(tiny_synthetic()), generate(tiny_synthetic(scenario="shared"))
    for (name, a), (_, b) in zip(_splits(ind), _splits(sh)):
        for f in ("ids", "label", "audio_lengths", "vision_lengths", "text_lengths"):
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f"{name} {f}")
        same = a.z[:, 1] == b.z[:, 1]  # only the shortcut term differs, so clips with the same z are identical
        np.testing.assert_array_equal(a.audio[same], b.audio[same], err_msg=name)
        # a modality an OOD set breaks on its own draws its z as in ``independent``; elsewhere it shows the shared z
        assert same.all() if name == "ood_audio" else 0 < same.sum() < len(a), name


def test_single_scenario():
    b = generate(tiny_synthetic(scenario="single"))
    assert set(b.extra_tests) == {"ood_text", "ood_tav"} and b.name == "synthetic_single"
    assert np.all(b.train.z[:, 1:] == 0)
    audio = generate(tiny_synthetic(scenario="single", single_modality="audio", n_ood=400))
    assert set(audio.extra_tests) == {"ood_audio", "ood_tav"}
    assert np.all(audio.test.z[:, [0, 2]] == 0) and np.all(audio.test.z[:, 1] != 0)
    assert abs(_agreement(audio.extra_tests["ood_audio"], 1) - 0.5) < 0.07
    with pytest.raises(ValueError, match="synthetic.shortcut_modalities") as err:
        generate(tiny_synthetic(scenario="single", shortcut_modalities=["audio"]))
    assert "synthetic.single_modality" in str(err.value) and "synthetic.shortcut_modalities" in str(err.value)
    with pytest.raises(ValueError, match="synthetic.single_modality"):
        generate(tiny_synthetic(single_modality="audio"))  # scenario independent
    with pytest.raises(ValueError, match="synthetic.single_modality"):
        generate(tiny_synthetic(scenario="single", single_modality="vision", modalities=["text", "audio"]))


def test_train_bias_changes_train_and_valid_only():
    base_cfg = tiny_synthetic(n_train=3000, n_valid=1000, n_test=1000, n_ood=100)
    base = generate(base_cfg)
    for scenario in ("independent", "shared"):
        b = generate(tiny_synthetic(n_train=3000, n_valid=1000, n_test=1000, n_ood=100, scenario=scenario,
                                    train_bias=0.5))
        for split in (b.train, b.valid):
            assert all(abs(_agreement(split, k) - 0.5) < 0.05 for k in range(3)), scenario
        assert all(abs(_agreement(b.test, k) - 0.9) < 0.03 for k in range(3)), scenario
        np.testing.assert_array_equal(b.train.label, base.train.label)
    ceiling = generate(dataclasses.replace(base_cfg, train_bias=0.5))
    tests_of = lambda bundle: [("test", bundle.test), *bundle.extra_tests.items()]  # noqa: E731
    for (name, a), (_, c) in zip(tests_of(base), tests_of(ceiling), strict=True):
        h1, h2 = hashlib.sha256(), hashlib.sha256()
        _split_digest(h1, name, a)
        _split_digest(h2, name, c)
        assert h1.hexdigest() == h2.hexdigest(), f"{name} is the same data for the ceiling row"
        np.testing.assert_array_equal(a.z, c.z)
    with pytest.raises(ValueError, match="synthetic.train_bias"):
        generate(tiny_synthetic(train_bias=1.5))


# --- SplitData / DatasetBundle contract ---------------------------------------------------------------------------


def test_split_data_keeps_and_checks_z(tiny_cfg):
    b = generate(tiny_cfg)
    sub = b.train.subset(np.array([5, 2]))
    np.testing.assert_array_equal(sub.z, b.train.z[[5, 2]])
    text_only = b.train.drop_modalities(["text"])
    assert text_only.z is b.train.z, "z describes the data, not the model input"
    with pytest.raises(DataError, match="'z' has shape"):
        dataclasses.replace(b.train, z=b.train.z[:, :2]).validate("x")
    bad = b.train.z.copy()
    bad[0, 0] = 2
    with pytest.raises(DataError, match="'z' has 1 values outside"):
        dataclasses.replace(b.train, z=bad).validate("x")
    b.valid = dataclasses.replace(b.valid, z=None)
    with pytest.raises(DataError, match="'z' is present in"):
        b.validate("x")


# --- datamodule and batches -------------------------------------------------------------------------------------


def _strip_z(bundle):
    return dataclasses.replace(
        bundle,
        train=dataclasses.replace(bundle.train, z=None),
        valid=dataclasses.replace(bundle.valid, z=None),
        test=dataclasses.replace(bundle.test, z=None),
        extra_tests={k: dataclasses.replace(v, z=None) for k, v in bundle.extra_tests.items()},
    )


def test_batches_carry_z_and_consistent_group_indices(tiny_cfg):
    b = generate(tiny_cfg)
    dm = MSADataModule(b, batch_size=50, seed=1, modalities=["text", "audio"])
    all_groups = set()
    for _, split in _splits(b):
        all_groups |= set(split.groups.tolist())
    assert dm.group_names == tuple(sorted(all_groups)) and dm.has_ground_truth
    counts = dm.train_group_counts()
    assert counts.dtype == np.int64 and counts.shape == (len(dm.group_names),) and counts.sum() == len(b.train)
    for name, g in zip(dm.group_names, counts):
        assert g == int(np.sum(b.train.groups == name))
    loaders = {"train": dm.train_dataloader(), "valid": dm.val_dataloader(),
               **dict(zip(dm.test_set_names, dm.test_dataloader()))}
    splits = {"train": b.train, "valid": b.valid, "test": b.test, **b.extra_tests}
    for set_name, loader in loaders.items():
        batch = next(iter(loader))
        idx = batch.index.numpy()
        assert batch.z.dtype == torch.float32 and batch.z.shape == (len(batch), 3)
        assert batch.group.dtype == torch.long and batch.group.shape == (len(batch),)
        np.testing.assert_array_equal(batch.z.numpy(), splits[set_name].z[idx])
        names = [dm.group_names[g] for g in batch.group.tolist()]
        assert names == splits[set_name].groups[idx].tolist(), set_name
        assert batch.vision is None and batch.z.shape[1] == 3
    one = Batch.from_split(b.train, np.arange(10), dm.group_names)
    assert [dm.group_names[g] for g in one.group.tolist()] == b.train.groups[:10].tolist()
    assert Batch.from_split(b.train, np.arange(10)).group is not None


def test_real_data_has_no_ground_truth_fields(tiny_cfg):
    real = _strip_z(generate(tiny_cfg))
    real.validate("real")
    dm = MSADataModule(real)
    assert dm.group_names == () and not dm.has_ground_truth
    counts = dm.train_group_counts()
    assert counts.dtype == np.int64 and counts.shape == (0,)
    batch = next(iter(dm.train_dataloader()))
    assert batch.z is None and batch.group is None
    assert Batch.from_split(real.train, np.arange(4)).z is None
    assert all(v.tolist() == [""] * 3 for v in dm.ground_truth_of("test", np.arange(3)).values())


def test_manifest_subsets_keep_ground_truth(tmp_path, tiny_cfg):
    import json

    b = generate(tiny_cfg)
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"name": "picked", "ids": b.test.ids[[4, 1]].tolist()}))
    dm = MSADataModule(b, manifests=[path])
    np.testing.assert_array_equal(dm.test_splits["picked"].z, b.test.z[[4, 1]])
    assert dm.ground_truth_of("picked")["group"].tolist() == b.test.groups[[4, 1]].tolist()


# --- named datasets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["shared", "independent", "single"])
def test_named_scenario_datasets(scenario):
    from benchmarks.config import build_config, to_object

    name = f"synthetic_{scenario}"
    assert name in DATASETS
    cfg = build_config([f"dataset={name}", f"{name}.bias=0.8"])
    assert cfg.source.scenario == scenario and cfg.source.bias == 0.8
    assert cfg.model.backbone.text.dropout == 0.3, "the MOSI preset of synthetic applies"
    source = to_object(cfg.source)
    assert isinstance(source, SyntheticConfig) and source.scenario == scenario


def test_unknown_scenario_is_an_error_naming_the_key(tmp_path, capsys):
    from benchmarks.cli import main
    from benchmarks.config import build_config, to_object

    with pytest.raises(ValueError, match=r"synthetic\.scenario must be one of \['independent', 'shared', 'single'\]"):
        to_object(build_config(["synthetic.scenario=nope"]).source)
    with pytest.raises(ValueError, match="synthetic.scenario"):
        generate(tiny_synthetic(scenario="nope"))
    assert main(["run", "synthetic.scenario=nope", f"output.root={tmp_path}"]) == 2
    assert "synthetic.scenario" in capsys.readouterr().err


def test_every_modality_is_named_in_the_columns():
    assert GROUND_TRUTH_COLUMNS == tuple(f"z_{m}" for m in MODALITIES) + tuple(
        f"conflict_{m}" for m in MODALITIES
    ) + ("group",)
