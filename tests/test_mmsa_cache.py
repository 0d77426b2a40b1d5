"""The memory-mapped cache of MMSA pickles and the ``mosi`` / ``mosei`` registry entries."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.mmsa as mmsa
from datamodules import MMSAReleaseConfig, get_dataset, mmsa_release_path
from datamodules.datamodule import MSADataModule
from datamodules.mmsa import (
    atomic_directory,
    cached_sha256,
    load_mmsa,
    load_mmsa_cached,
    mmsa_cache_dir,
    sha256_file,
    write_mmsa_pickle,
)
from datamodules.schema import DatasetBundle
from tests.test_mmsa import SIZES, assert_split_equal, make_split


def tiny_bundle(seed: int = 0) -> DatasetBundle:
    rng = np.random.default_rng(seed)
    return DatasetBundle(name="tiny", **{s: make_split(rng, n, s[:2]) for s, n in SIZES.items()})


@pytest.fixture
def pickle_path(tmp_path: Path) -> Path:
    path = tmp_path / "unaligned_50.pkl"
    write_mmsa_pickle(tiny_bundle(), path)
    return path


def test_first_load_builds_later_loads_map_without_unpickling(pickle_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_mmsa_cached(pickle_path, cache_dir=cache, name="mosi")
    folder = mmsa_cache_dir(sha256_file(pickle_path), "error", cache)
    assert (folder / "meta.json").is_file() and (folder / "train.audio.npy").is_file()
    plain = load_mmsa(pickle_path)
    for s in ("train", "valid", "test"):
        assert_split_equal(getattr(first, s), getattr(plain, s))

    def refuse(*args, **kwargs):
        raise AssertionError("a cached load must not unpickle")

    monkeypatch.setattr(mmsa, "safe_load_pickle", refuse)
    monkeypatch.setattr(mmsa, "sha256_file", refuse)  # the stat-keyed SHA-256 memo is used instead
    second = load_mmsa_cached(pickle_path, cache_dir=cache, name="mosi")
    for s in ("train", "valid", "test"):
        assert_split_equal(getattr(second, s), getattr(plain, s))
    assert isinstance(second.train.audio, np.memmap) and isinstance(second.test.text_ids, np.memmap)
    assert second.train.audio.flags.writeable  # copy-on-write: writable, never written back
    assert second.name == "mosi" and second.source_sha256 == plain.source_sha256


def test_writes_to_mapped_arrays_never_reach_the_cache(pickle_path, tmp_path):
    cache = tmp_path / "cache"
    load_mmsa_cached(pickle_path, cache_dir=cache)
    b = load_mmsa_cached(pickle_path, cache_dir=cache)
    original = float(b.train.vision[0, 0, 0])
    b.train.vision[0, 0, 0] = 1e6
    assert float(load_mmsa_cached(pickle_path, cache_dir=cache).train.vision[0, 0, 0]) == original


def test_source_change_gives_a_new_cache(pickle_path, tmp_path):
    cache = tmp_path / "cache"
    before = load_mmsa_cached(pickle_path, cache_dir=cache)
    write_mmsa_pickle(tiny_bundle(seed=1), pickle_path)
    after = load_mmsa_cached(pickle_path, cache_dir=cache)
    assert after.source_sha256 == sha256_file(pickle_path) != before.source_sha256
    assert_split_equal(after.valid, load_mmsa(pickle_path).valid)
    assert len([p for p in (cache / "mmsa").iterdir() if not p.name.startswith(".")]) == 2
    assert mmsa_cache_dir(after.source_sha256, "zero", cache) != mmsa_cache_dir(after.source_sha256, "error", cache)


def test_sha256_memo_follows_the_file_stamp(pickle_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    calls = []
    real = mmsa.sha256_file
    monkeypatch.setattr(mmsa, "sha256_file", lambda p: calls.append(p) or real(p))
    digest = cached_sha256(pickle_path, cache)
    assert cached_sha256(pickle_path, cache) == digest and len(calls) == 1
    assert cached_sha256(pickle_path, cache, verify=True) == digest and len(calls) == 2
    write_mmsa_pickle(tiny_bundle(seed=2), pickle_path)
    assert cached_sha256(pickle_path, cache) == real(pickle_path) != digest and len(calls) == 3


def test_interrupted_build_is_never_read(pickle_path, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    saved = []
    real_save = np.save

    def crash_after_three(file, arr, **kwargs):
        if len(saved) == 3:
            raise OSError(28, "No space left on device")
        saved.append(file)
        real_save(file, arr, **kwargs)

    monkeypatch.setattr(mmsa.np, "save", crash_after_three)
    b = load_mmsa_cached(pickle_path, cache_dir=cache)  # an unwritable cache falls back to the unpickled arrays
    assert not isinstance(b.train.text, np.memmap)
    assert not list((cache / "mmsa").iterdir()), "neither a final nor a temporary folder may remain"
    monkeypatch.setattr(mmsa.np, "save", real_save)
    with pytest.raises(KeyboardInterrupt), atomic_directory(cache / "mmsa" / "x") as tmp:
        (tmp / "part.npy").write_bytes(b"partial")
        raise KeyboardInterrupt
    assert not (cache / "mmsa" / "x").exists() and not list((cache / "mmsa").iterdir())
    again = load_mmsa_cached(pickle_path, cache_dir=cache)
    assert isinstance(again.train.text, np.memmap)
    assert_split_equal(again.train, load_mmsa(pickle_path).train)


def test_killed_build_leftover_is_ignored_and_removed(pickle_path, tmp_path):
    cache = tmp_path / "cache"
    final = mmsa_cache_dir(sha256_file(pickle_path), "error", cache)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    leftover = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{int(dead.stdout)}-cafe0000"
    leftover.mkdir(parents=True)
    (leftover / "meta.json").write_text('{"format": 1}')
    b = load_mmsa_cached(pickle_path, cache_dir=cache)
    assert_split_equal(b.test, load_mmsa(pickle_path).test)
    assert final.is_dir() and not leftover.exists()


def test_truncated_cache_file_is_rebuilt(pickle_path, tmp_path, caplog):
    cache = tmp_path / "cache"
    load_mmsa_cached(pickle_path, cache_dir=cache)
    final = mmsa_cache_dir(sha256_file(pickle_path), "error", cache)
    data = (final / "train.vision.npy").read_bytes()
    (final / "train.vision.npy").write_bytes(data[: len(data) - 40])
    with caplog.at_level(logging.WARNING, logger="datamodules.mmsa"):
        b = load_mmsa_cached(pickle_path, cache_dir=cache)
    assert "rebuilding" in caplog.text
    assert_split_equal(b.train, load_mmsa(pickle_path).train)


def test_datamodule_tensors_share_memory_with_the_mapped_cache(pickle_path, tmp_path):
    cache = tmp_path / "cache"
    load_mmsa_cached(pickle_path, cache_dir=cache)
    b = load_mmsa_cached(pickle_path, cache_dir=cache)
    dm = MSADataModule(b, batch_size=4, seed=0)
    tensors = dm._tensor_split("train").tensors
    for key in ("text", "audio", "vision", "text_ids"):
        arr = getattr(b.train, key)
        assert tensors[key].data_ptr() == arr.__array_interface__["data"][0], f"{key} was copied"
    batch = next(iter(dm.train_dataloader()))
    assert batch.audio.shape == (4, *b.train.audio.shape[1:]) and batch.audio.dtype == torch.float32


def test_release_path_resolution_and_missing_file_message(tmp_path, monkeypatch):
    monkeypatch.delenv("MSABENCH_MOSI_PKL", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        get_dataset("mosi").load(MMSAReleaseConfig(root=str(tmp_path)))
    msg = str(err.value)
    expected = tmp_path / "mosi" / "unaligned_50.pkl"
    assert str(expected) in msg and "MSABENCH_MOSI_PKL" in msg and "mosi.path=" in msg and "sha256sum" in msg
    folder = tmp_path / "releases"
    folder.mkdir()
    write_mmsa_pickle(tiny_bundle(), folder / "aligned_50.pkl")
    monkeypatch.setenv("MSABENCH_MOSEI_PKL", str(folder))
    cfg = MMSAReleaseConfig(aligned=True, cache_dir=str(tmp_path / "cache"))
    assert mmsa_release_path("mosei", cfg) == folder / "aligned_50.pkl"
    b = get_dataset("mosei").load(cfg)
    assert b.name == "mosei" and len(b.train) == SIZES["train"] and isinstance(b.train.audio, np.memmap)
    monkeypatch.setenv("MSABENCH_MOSEI_PKL", str(folder / "aligned_50.pkl"))
    with pytest.raises(ValueError, match="mosei.aligned=false asks for unaligned_50.pkl"):
        mmsa_release_path("mosei", MMSAReleaseConfig())
    assert mmsa_release_path("mosi", MMSAReleaseConfig(path=str(folder), aligned=True)) == folder / "aligned_50.pkl"


def test_cli_missing_pickle_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    from benchmarks.cli import main

    monkeypatch.delenv("MSABENCH_MOSEI_PKL", raising=False)
    code = main(["run", "dataset=mosei", f"mosei.root={tmp_path}", f"output.root={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "MOSEI MMSA pickle not found at" in err and str(tmp_path / "mosei" / "unaligned_50.pkl") in err
