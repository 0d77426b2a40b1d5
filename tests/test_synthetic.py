"""The synthetic shortcut benchmark: shapes, determinism, label spread, planted shortcuts."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.synthetic import OOD_SETS, SPURIOUS_NEGATIVE, SPURIOUS_POSITIVE, SyntheticConfig, generate
from tests.conftest import tiny_synthetic


def _text_shortcut(split) -> np.ndarray:
    """+1 / -1 from the spurious words in raw_text (the text shortcut as planted)."""
    pos = np.array([any(w in SPURIOUS_POSITIVE for w in t.split()) for t in split.raw_text])
    neg = np.array([any(w in SPURIOUS_NEGATIVE for w in t.split()) for t in split.raw_text])
    assert not np.any(pos & neg), "a transcript carries both shortcut signs"
    assert np.all(pos | neg), "every transcript carries a spurious word"
    return np.where(pos, 1.0, -1.0)


def _frame_shortcut(split, modality: str, bundle_cfg: SyntheticConfig) -> np.ndarray:
    """Sign of the projection of the masked frame mean on the planted shortcut direction."""
    from datamodules.synthetic import _World

    _, s = _World(bundle_cfg).directions[modality]
    x, lengths = getattr(split, modality), getattr(split, f"{modality}_lengths")
    mean = x.sum(1) / lengths[:, None]
    return np.sign(mean @ s)


def _agreement(shortcut: np.ndarray, label: np.ndarray) -> float:
    return float(np.mean(shortcut == np.where(label >= 0, 1.0, -1.0)))


def test_default_sizes_and_shapes_are_mosi_like():
    cfg = SyntheticConfig(n_ood=10)
    b = generate(cfg)
    assert (len(b.train), len(b.valid), len(b.test)) == (1284, 229, 686)
    assert b.train.text.shape == (1284, 50, 768)
    assert b.train.text_ids.shape == (1284, 3, 50)
    assert b.train.audio.shape[2] == 5 and b.train.vision.shape[2] == 20
    assert set(b.extra_tests) == set(OOD_SETS)
    y = np.concatenate([b.train.label, b.valid.label, b.test.label])
    assert y.min() >= -3 and y.max() <= 3
    assert 1.2 < y.std() < 1.9 and abs(y.mean()) < 0.3
    assert np.mean(np.abs(y) <= 0.5) > 0.15, "many labels near 0"
    assert np.mean(np.abs(y) >= 2.5) > 0.02, "tails reach +/-3"
    assert len(np.unique(b.train.audio_lengths)) > 5, "variable sequence lengths"


def test_deterministic_for_a_seed_and_different_across_seeds(tiny_cfg):
    a, b = generate(tiny_cfg), generate(tiny_synthetic())
    for name in ("text", "audio", "vision", "label", "audio_lengths"):
        np.testing.assert_array_equal(getattr(a.train, name), getattr(b.train, name))
    assert a.test.raw_text.tolist() == b.test.raw_text.tolist()
    c = generate(tiny_synthetic(seed=1))
    assert not np.array_equal(a.train.label, c.train.label)


def test_split_streams_are_independent(tiny_cfg):
    a = generate(tiny_cfg)
    b = generate(tiny_synthetic(n_train=100))
    np.testing.assert_array_equal(a.test.audio, b.test.audio)
    np.testing.assert_array_equal(a.valid.label, b.valid.label)


def test_modality_subsets_see_the_same_data(tiny_cfg):
    full = generate(tiny_cfg)
    text_only = generate(tiny_synthetic(modalities=["text"]))
    assert text_only.train.modalities == ("text",)
    np.testing.assert_array_equal(full.train.text, text_only.train.text)
    assert set(text_only.extra_tests) == {"ood_text", "ood_tav"}


def test_planted_shortcuts_agree_with_bias_in_iid_and_break_in_ood():
    cfg = tiny_synthetic(n_train=2000, n_test=2000, n_ood=2000)
    b = generate(cfg)
    for split in (b.train, b.test):
        assert abs(_agreement(_text_shortcut(split), split.label) - 0.9) < 0.03
        for m in ("audio", "vision"):
            assert abs(_agreement(_frame_shortcut(split, m, cfg), split.label) - 0.9) < 0.04
    ood = b.extra_tests
    assert abs(_agreement(_text_shortcut(ood["ood_text"]), ood["ood_text"].label) - 0.5) < 0.05
    assert abs(_agreement(_frame_shortcut(ood["ood_text"], "audio", cfg), ood["ood_text"].label) - 0.9) < 0.04
    assert abs(_agreement(_frame_shortcut(ood["ood_vision"], "vision", cfg), ood["ood_vision"].label) - 0.5) < 0.06
    assert abs(_agreement(_text_shortcut(ood["ood_vision"]), ood["ood_vision"].label) - 0.9) < 0.03
    for m in ("audio", "vision"):
        assert abs(_agreement(_frame_shortcut(ood["ood_tav"], m, cfg), ood["ood_tav"].label) - 0.5) < 0.06


def test_reversed_mode_flips_the_shortcut():
    cfg = tiny_synthetic(n_ood=2000, ood_mode="reversed")
    b = generate(cfg)
    assert _agreement(_text_shortcut(b.extra_tests["ood_text"]), b.extra_tests["ood_text"].label) < 0.14


def test_raw_text_matches_token_ids(tiny_cfg):
    from datamodules.synthetic import VOCABULARY

    b = generate(tiny_cfg)
    for i in range(5):
        n = int(b.train.text_lengths[i])
        words = [VOCABULARY[k] for k in b.train.text_ids[i, 0, 1 : n - 1]]
        assert " ".join(words) == b.train.raw_text[i]
        assert b.train.text_ids[i, 1].sum() == n


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="synthetic.bias"):
        generate(tiny_synthetic(bias=1.5))
    with pytest.raises(ValueError, match="ood_mode"):
        generate(tiny_synthetic(ood_mode="flip"))


def test_mmsa_pickle_round_trip(tmp_path, tiny_cfg):
    import pickle

    from datamodules.mmsa import load_mmsa, write_mmsa_pickle

    b = generate(tiny_cfg)
    path = tmp_path / "unaligned_50.pkl"
    write_mmsa_pickle(b, path)
    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert set(raw) == {"train", "valid", "test"}
    expected = {"id", "raw_text", "text", "text_bert", "audio", "vision", "audio_lengths", "vision_lengths",
                "regression_labels", "classification_labels", "annotations"}
    assert set(raw["train"]) == expected
    assert raw["train"]["text_bert"].shape == (192, 3, 12)
    loaded = load_mmsa(path)
    for name in ("text", "text_ids", "text_lengths", "audio", "audio_lengths", "vision", "label"):
        np.testing.assert_array_equal(getattr(loaded.test, name), getattr(b.test, name))
    assert loaded.test.ids.tolist() == b.test.ids.tolist()
    assert loaded.source_sha256 and len(loaded.source_sha256) == 64
