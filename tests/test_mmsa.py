"""Tests for datamodules/mmsa.py: safe unpickling, MMSA's loading rules, the MMSA writer."""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from datamodules.mmsa import (
    RestrictedUnpickler,
    load_mmsa,
    safe_load_pickle,
    sha256_file,
    to_mmsa_dict,
    write_mmsa_pickle,
)
from datamodules.schema import DataError, DatasetBundle, SplitData

SIZES = {"train": 6, "valid": 4, "test": 5}
L_T, D_T, T_A, D_A, T_V, D_V = 7, 8, 9, 5, 11, 20
MMSA_KEYS = {
    "id",
    "raw_text",
    "text",
    "text_bert",
    "audio",
    "vision",
    "audio_lengths",
    "vision_lengths",
    "regression_labels",
    "classification_labels",
    "annotations",
}


def make_split(rng: np.random.Generator, n: int, prefix: str) -> SplitData:
    text_lengths = rng.integers(1, L_T + 1, size=n)
    text_ids = np.zeros((n, 3, L_T), dtype=np.int64)
    mask = np.arange(L_T)[None, :] < text_lengths[:, None]
    text_ids[:, 0] = np.where(mask, rng.integers(100, 30000, size=(n, L_T)), 0)
    text_ids[:, 1] = mask
    label = rng.uniform(-3, 3, size=n).astype(np.float32)
    label[0] = 0.0
    label[-1] = 3.0
    return SplitData(
        ids=np.array([f"{prefix}vid{i // 2}$_${i}" for i in range(n)]),
        label=label,
        text=rng.normal(size=(n, L_T, D_T)).astype(np.float32),
        text_ids=text_ids,
        text_lengths=text_lengths.astype(np.int64),
        audio=rng.normal(size=(n, T_A, D_A)).astype(np.float32),
        audio_lengths=rng.integers(1, T_A + 1, size=n).astype(np.int64),
        vision=rng.normal(size=(n, T_V, D_V)).astype(np.float32),
        vision_lengths=rng.integers(1, T_V + 1, size=n).astype(np.int64),
        raw_text=np.array([f"clip {prefix}{i} was really good" for i in range(n)]),
    )


@pytest.fixture
def bundle() -> DatasetBundle:
    rng = np.random.default_rng(0)
    return DatasetBundle(name="tiny", **{s: make_split(rng, n, s[:2]) for s, n in SIZES.items()})


@pytest.fixture
def raw(bundle: DatasetBundle) -> dict:
    """An MMSA-format dict to corrupt in tests."""
    return to_mmsa_dict(bundle)


def dump(obj: object, path: Path, protocol: int = 4) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


def assert_split_equal(a: SplitData, b: SplitData) -> None:
    for name in (
        "ids",
        "label",
        "text",
        "text_ids",
        "text_lengths",
        "audio",
        "audio_lengths",
        "vision",
        "vision_lengths",
        "raw_text",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)


# ---------------------------------------------------------------- round trip


def test_round_trip_equals_original(bundle: DatasetBundle, tmp_path: Path) -> None:
    path = tmp_path / "unaligned_50.pkl"
    write_mmsa_pickle(bundle, path)
    loaded = load_mmsa(path)
    for s in ("train", "valid", "test"):
        assert_split_equal(getattr(loaded, s), getattr(bundle, s))
    tr = loaded.train
    assert tr.text.dtype == np.float32 and tr.audio.dtype == np.float32 and tr.label.dtype == np.float32
    assert tr.text_ids.dtype == np.int64 and tr.audio_lengths.dtype == np.int64 and tr.text_lengths.dtype == np.int64
    assert tr.ids.dtype.kind == "U" and tr.raw_text.dtype.kind == "U"
    assert loaded.name == "unaligned_50"
    assert loaded.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.extra_tests == {}
    assert loaded.spec.dims == {"text": D_T, "audio": D_A, "vision": D_V}
    assert load_mmsa(path, name="mosi").name == "mosi"
    assert not [p for p in tmp_path.iterdir() if p.name != "unaligned_50.pkl"]  # no temp file left behind


def test_to_mmsa_dict_layout(bundle: DatasetBundle) -> None:
    d = to_mmsa_dict(bundle)
    assert set(d) == {"train", "valid", "test"}
    tr = d["train"]
    assert set(tr) == MMSA_KEYS
    n = SIZES["train"]
    assert tr["text_bert"].dtype == np.float32 and tr["text_bert"].shape == (n, 3, L_T)
    assert tr["text"].shape == (n, L_T, D_T) and tr["audio"].shape == (n, T_A, D_A)
    assert tr["vision"].shape == (n, T_V, D_V) and tr["regression_labels"].dtype == np.float32
    assert tr["id"].dtype == object and isinstance(tr["id"][0], str)
    y = bundle.train.label
    np.testing.assert_array_equal(tr["classification_labels"], np.where(y < 0, 0, np.where(y == 0, 1, 2)))
    assert tr["classification_labels"][0] == 1  # label 0.0 -> neutral
    assert tr["annotations"][0] == "Neutral" and tr["annotations"][-1] == "Positive"
    neg = int(np.flatnonzero(y < 0)[0])
    assert tr["annotations"][neg] == "Negative" and tr["classification_labels"][neg] == 0


def test_synthesised_text_bert_from_lengths(bundle: DatasetBundle, tmp_path: Path) -> None:
    split = bundle.train
    split.text_ids = None
    d = to_mmsa_dict({"train": split})["train"]
    bert = d["text_bert"]
    np.testing.assert_array_equal(bert[:, 1].sum(axis=1), split.text_lengths)
    assert not bert[:, 0].any() and not bert[:, 2].any()
    bundle.valid.text_ids = bundle.test.text_ids = None
    write_mmsa_pickle(bundle, tmp_path / "x.pkl")
    np.testing.assert_array_equal(load_mmsa(tmp_path / "x.pkl").train.text_lengths, split.text_lengths)


def test_write_is_atomic(bundle: DatasetBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "aligned_50.pkl"
    path.write_bytes(b"old content")

    def boom(fd: int) -> None:  # the whole pickle is in the temporary file, not yet on disk: crash
        raise RuntimeError("crash while writing")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(RuntimeError, match="crash"):
        write_mmsa_pickle(bundle, path)
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["aligned_50.pkl"]


def test_sha256_file(tmp_path: Path) -> None:
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=64) == hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- safe unpickling


class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_SystemPayload, _ExecPayload])
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_refused_and_never_runs(tmp_path: Path, raw: dict, payload: type, protocol: int) -> None:
    marker = tmp_path / "pwned"
    raw["valid"]["annotations"] = payload(marker)  # hidden deep inside an otherwise valid file
    path = dump(raw, tmp_path / "evil.pkl", protocol)
    with pytest.raises(DataError) as err:
        load_mmsa(path)
    msg = str(err.value)
    assert str(path) in msg and "refused" in msg
    assert ("system" in msg) if payload is _SystemPayload else ("exec'" in msg)  # __builtin__.exec under protocol 2
    assert not marker.exists()


def test_exec_payload_is_live_without_the_guard(tmp_path: Path) -> None:
    """The payload used above does run under plain pickle, so its absence above is the guard's doing."""
    marker = tmp_path / "pwned"
    data = pickle.dumps(_ExecPayload(marker))
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(DataError, match="builtins.exec"):
        safe_load_pickle(dump(_ExecPayload(marker), tmp_path / "e.pkl"))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_restricted_unpickler_admits_numpy_and_containers(tmp_path: Path, protocol: int) -> None:
    obj = {
        "f": np.arange(12, dtype=np.float32).reshape(2, 3, 2),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "i": np.arange(4),
        "u": np.array(["a$_$1", "bé$_$2"]),
        "o": np.array(["x", "yy"], dtype=object),
        "scalars": (np.float32(1.5), np.int64(3), 2.0, None, True, b"\x00\xff"),
        "list": [1, [2, 3], {"k": "v"}],
    }
    back = safe_load_pickle(dump(obj, tmp_path / "ok.pkl", protocol))
    for key in ("f", "fortran", "i", "u", "o"):
        np.testing.assert_array_equal(back[key], obj[key])
        assert back[key].dtype == obj[key].dtype
    assert back["scalars"] == obj["scalars"] and back["list"] == obj["list"]


def test_numpy1_pickles_load(raw: dict, bundle: DatasetBundle, tmp_path: Path) -> None:
    """Released MMSA pickles were written by numpy 1.x, which names numpy.core.multiarray."""
    data = pickle.dumps(raw, protocol=2)
    assert b"numpy._core.multiarray" in data
    path = tmp_path / "np1.pkl"
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    b = load_mmsa(path)
    assert_split_equal(b.valid, bundle.valid)


def test_restricted_unpickler_refuses_other_classes(tmp_path: Path) -> None:
    import collections

    path = dump({"x": collections.OrderedDict(a=1)}, tmp_path / "od.pkl")
    with open(path, "rb") as f, pytest.raises(DataError, match=r"collections\.OrderedDict"):
        RestrictedUnpickler(f, path=path).load()


# ---------------------------------------------------------------- clear errors


def test_truncated_file_is_a_data_error(raw: dict, tmp_path: Path) -> None:
    path = dump(raw, tmp_path / "trunc.pkl")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as err:
        load_mmsa(path)
    assert str(path) in str(err.value)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="trunc.pkl"):
        load_mmsa(path)
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataError, match="trunc.pkl"):
        load_mmsa(path)
    with pytest.raises(DataError, match="missing.pkl"):
        load_mmsa(tmp_path / "missing.pkl")


@pytest.mark.parametrize("key", ["regression_labels", "id"])
def test_missing_key(raw: dict, tmp_path: Path, key: str) -> None:
    del raw["valid"][key]
    path = dump(raw, tmp_path / "m.pkl")
    with pytest.raises(DataError) as err:
        load_mmsa(path)
    msg = str(err.value)
    assert f"'{key}'" in msg and "split valid" in msg and str(path) in msg


def test_missing_lengths_default_to_full_length(raw: dict, tmp_path: Path, caplog) -> None:
    del raw["valid"]["audio_lengths"]
    with caplog.at_level("WARNING"):
        b = load_mmsa(dump(raw, tmp_path / "nolen.pkl"))
    assert np.all(b.valid.audio_lengths == b.valid.audio.shape[1])
    assert "audio_lengths" in caplog.text and "split valid" in caplog.text


def test_missing_split(raw: dict, tmp_path: Path) -> None:
    del raw["test"]
    with pytest.raises(DataError, match=r"missing split key\(s\) \['test'\]"):
        load_mmsa(dump(raw, tmp_path / "s.pkl"))


def test_no_modality(raw: dict, tmp_path: Path) -> None:
    for key in ("text", "text_bert", "audio", "vision"):
        del raw["train"][key]
    with pytest.raises(DataError, match=r"split train.*no modality"):
        load_mmsa(dump(raw, tmp_path / "n.pkl"))


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("audio", lambda a: a[:, :, 0]),  # rank 2
        ("vision", lambda a: a[:-1]),  # wrong N
        ("text_bert", lambda a: a[:, :2]),  # (N, 2, L)
        ("text_bert", lambda a: a[:, :, :-1]),  # L differs from text
        ("regression_labels", lambda a: np.stack([a, a], axis=1)),
        ("audio_lengths", lambda a: a[:-1]),
    ],
)
def test_wrong_shape(raw: dict, tmp_path: Path, key: str, bad) -> None:
    raw["test"][key] = bad(raw["test"][key])
    with pytest.raises(DataError) as err:
        load_mmsa(dump(raw, tmp_path / "shape.pkl"))
    msg = str(err.value)
    assert f"'{key}'" in msg and "split test" in msg and "expected" in msg


def test_lengths_longer_than_sequence(raw: dict, tmp_path: Path) -> None:
    raw["train"]["vision_lengths"][2] = T_V + 3
    with pytest.raises(DataError) as err:
        load_mmsa(dump(raw, tmp_path / "len.pkl"))
    msg = str(err.value)
    assert "'vision_lengths'" in msg and "split train" in msg and f"max {T_V + 3}" in msg and f"T={T_V}" in msg


def test_zero_lengths_clamped_to_one(raw: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw["train"]["audio_lengths"][[0, 3]] = 0
    raw["valid"]["text_bert"][1, 1] = 0  # all-zero attention mask
    with caplog.at_level(logging.WARNING, logger="datamodules.mmsa"):
        b = load_mmsa(dump(raw, tmp_path / "zero.pkl"))
    assert b.train.audio_lengths[0] == 1 and b.train.audio_lengths[3] == 1
    np.testing.assert_array_equal(b.train.audio_lengths[[1, 2, 4, 5]], raw["train"]["audio_lengths"][[1, 2, 4, 5]])
    assert b.valid.text_lengths[1] == 1
    assert "clamped 2 lengths" in caplog.text and "'audio_lengths'" in caplog.text


@pytest.mark.parametrize("value", [3.2, -3.5, np.nan])
def test_labels_outside_range(raw: dict, tmp_path: Path, value: float) -> None:
    raw["valid"]["regression_labels"][1] = value
    raw["valid"].pop("classification_labels")
    with pytest.raises(DataError) as err:
        load_mmsa(dump(raw, tmp_path / "lab.pkl"))
    msg = str(err.value)
    assert "'regression_labels'" in msg and "split valid" in msg


def test_classification_labels_must_agree(raw: dict, tmp_path: Path) -> None:
    y = raw["train"]["regression_labels"]
    i = int(np.flatnonzero(y < 0)[0])
    raw["train"]["classification_labels"][i] = 2
    with pytest.raises(DataError, match="'classification_labels' disagrees"):
        load_mmsa(dump(raw, tmp_path / "cls.pkl"))


def test_duplicate_ids(raw: dict, tmp_path: Path) -> None:
    raw["test"]["id"][1] = raw["test"]["id"][0]
    with pytest.raises(DataError, match=r"split test.*'id' has 1 duplicated"):
        load_mmsa(dump(raw, tmp_path / "dup.pkl"))


def test_modalities_must_match_across_splits(raw: dict, tmp_path: Path) -> None:
    del raw["valid"]["vision"], raw["valid"]["vision_lengths"]
    with pytest.raises(DataError, match="split valid"):
        load_mmsa(dump(raw, tmp_path / "mod.pkl"))


def test_bad_nonfinite_mode(raw: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nonfinite"):
        load_mmsa(dump(raw, tmp_path / "x.pkl"), nonfinite="ignore")


# ---------------------------------------------------------------- non-finite rules


def test_neg_inf_in_audio_becomes_zero(raw: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw["train"]["audio"][0, 1, 2] = -np.inf
    raw["train"]["audio"][3, 0, :] = -np.inf
    with caplog.at_level(logging.INFO, logger="datamodules.mmsa"):
        b = load_mmsa(dump(raw, tmp_path / "inf.pkl"))
    assert b.train.audio[0, 1, 2] == 0 and not b.train.audio[3, 0].any()
    assert np.isfinite(b.train.audio).all()
    assert b.train.audio[0, 1, 1] == raw["train"]["audio"][0, 1, 1]  # neighbours untouched
    assert f"replaced {1 + D_A} -inf" in caplog.text


def test_neg_inf_outside_audio_is_an_error(raw: dict, tmp_path: Path) -> None:
    raw["train"]["vision"][0, 0, 0] = -np.inf
    with pytest.raises(DataError, match=r"split train.*'vision' has 1 non-finite"):
        load_mmsa(dump(raw, tmp_path / "vinf.pkl"))


def test_nan_in_vision(raw: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw["test"]["vision"][2, 4, :3] = np.nan
    path = dump(raw, tmp_path / "nan.pkl")
    with pytest.raises(DataError) as err:
        load_mmsa(path)
    msg = str(err.value)
    assert str(path) in msg and "split test" in msg and "'vision'" in msg and "3 non-finite" in msg
    with caplog.at_level(logging.WARNING, logger="datamodules.mmsa"):
        b = load_mmsa(path, nonfinite="zero")
    assert not b.test.vision[2, 4, :3].any() and np.isfinite(b.test.vision).all()
    assert "replaced 3 non-finite" in caplog.text


# ---------------------------------------------------------------- modality subsets and input forms


@pytest.mark.parametrize(
    ("drop", "expected"),
    [
        (("audio", "audio_lengths", "vision", "vision_lengths"), ("text",)),  # text only
        (("text", "text_bert", "vision", "vision_lengths"), ("audio",)),  # audio only
        (("text", "audio", "audio_lengths"), ("text", "vision")),  # token ids + vision
    ],
)
def test_modality_subsets_load(raw: dict, tmp_path: Path, drop: tuple, expected: tuple) -> None:
    for split in raw.values():
        for key in drop:
            del split[key]
    b = load_mmsa(dump(raw, tmp_path / "sub.pkl"))
    assert b.train.modalities == expected and b.test.modalities == expected
    if "text" not in drop and "text_bert" in drop:
        assert b.train.text_ids is None
    if "text" in drop and "text_bert" not in drop:
        assert b.spec.text_input == "ids" and b.train.text is None and b.train.text_ids.shape[1:] == (3, L_T)


def test_object_and_list_inputs_load(raw: dict, bundle: DatasetBundle, tmp_path: Path) -> None:
    tr = raw["train"]
    assert tr["id"].dtype == object  # writer uses object arrays of str, as released pickles do
    tr["raw_text"] = list(tr["raw_text"])
    tr["audio_lengths"] = [int(x) for x in tr["audio_lengths"]]
    tr["regression_labels"] = [float(x) for x in tr["regression_labels"]]
    raw["valid"]["id"] = np.array([s.encode() for s in raw["valid"]["id"]], dtype=object)  # bytes ids
    raw["test"]["id"] = np.array(list(raw["test"]["id"]))  # '<U' array
    b = load_mmsa(dump(raw, tmp_path / "obj.pkl"))
    for s in ("train", "valid", "test"):
        got, want = getattr(b, s), getattr(bundle, s)
        assert got.ids.dtype.kind == "U"
        assert got.ids.tolist() == want.ids.tolist()
    assert b.train.raw_text.tolist() == bundle.train.raw_text.tolist()
    assert b.train.audio_lengths.dtype == np.int64
    np.testing.assert_array_equal(b.train.audio_lengths, bundle.train.audio_lengths)


def test_non_string_ids_rejected(raw: dict, tmp_path: Path) -> None:
    raw["train"]["id"] = np.arange(SIZES["train"], dtype=object)
    with pytest.raises(DataError, match=r"split train.*'id' element 0 is a int"):
        load_mmsa(dump(raw, tmp_path / "ids.pkl"))


def test_float64_features_are_cast(raw: dict, tmp_path: Path) -> None:
    raw["valid"]["audio"] = raw["valid"]["audio"].astype(np.float64)
    raw["valid"]["vision_lengths"] = raw["valid"]["vision_lengths"].astype(np.float64)
    b = load_mmsa(dump(raw, tmp_path / "f64.pkl"))
    assert b.valid.audio.dtype == np.float32 and b.valid.vision_lengths.dtype == np.int64
