"""`msabench data fetch | list` and the data root: building the real-data files from pinned upstream files.

The build from the shared upstream mirror is compared with the shared data (skipped when it is absent); the
failure modes run on a tiny fake mirror with its own catalog, so they need neither the data nor a network.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main
from benchmarks.datafetch import (
    LOCK_FILE,
    MOSEI_FOLDS,
    MOSEI_LABEL,
    RECIPES,
    Catalog,
    FetchError,
    Source,
    expand_names,
    fetch,
    format_listing,
    list_data,
    pinned_catalog,
)
from datamodules.dataroot import DATA_ENV, data_root, resolve_data_root, user_dir
from datamodules.transcripts import read_label_csv
from tests.conftest import SHARED_DATA

UPSTREAM = SHARED_DATA / "upstream"
TEXT_FILES = [
    "mosi/label.csv",
    "mosi/CMU_MOSI_Opinion_Labels.csd",
    "mosi/std_folds.json",
    "mosei/label.csv",
    "mosei/std_folds.json",
]
NPZ = "mosi/bclstm_utterance.npz"

FAKE_LABEL = (
    b"video_id,clip_id,text,label,mode\n"
    b"vidA,1,GOOD FILM,1.5,train\n"
    b"vidA,2,BAD FILM,-2.0,train\n"
    b"-vidB,3_5,\"so, fine\",0.0,valid\n"
    b"123,7,MEH,-0.4,test\n"
)
FAKE_FOLDS = b"standard_train_fold=['vidA']\n\nstandard_valid_fold=['-vidB']\nstandard_test_fold=['123']\n"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(key: str, data: bytes) -> Source:
    owner, repo, path = key.split("/", 2)
    url = f"https://raw.githubusercontent.com/{owner}/{repo}/{'0' * 40}/{path}"
    return Source(owner, repo, "0" * 40, path, url, _sha(data), len(data), "MIT")


@pytest.fixture
def fake(tmp_path: Path) -> tuple[Path, Catalog, Path]:
    """A mirror holding a tiny MOSEI label.csv and fold file, its catalog, and an empty data root."""
    mirror = tmp_path / "mirror"
    for key, data in ((MOSEI_LABEL, FAKE_LABEL), (MOSEI_FOLDS, FAKE_FOLDS)):
        (mirror / key).parent.mkdir(parents=True, exist_ok=True)
        (mirror / key).write_bytes(data)
    catalog = Catalog({k: _source(k, d) for k, d in ((MOSEI_LABEL, FAKE_LABEL), (MOSEI_FOLDS, FAKE_FOLDS))}, {})
    return mirror, catalog, tmp_path / "root"


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# the real build, from the shared upstream mirror


@pytest.mark.skipif(not (UPSTREAM / "SOURCES.json").is_file(), reason=f"upstream mirror absent: {UPSTREAM}")
def test_build_from_the_upstream_mirror_reproduces_the_shared_data(tmp_path, capsys):
    """Every file is built from the mirror into a fresh root and compared with the shared data.

    The CSV, JSON and .csd files must be byte-identical. The .npz is compared key by key (dtype, shape and every
    value): its bytes are zlib-compressed, and another zlib build may compress the same arrays differently, which
    is why the build record (not a fixed checksum) verifies it.
    """
    root = tmp_path / "data"
    assert main(["data", "fetch", "all", "--from", str(UPSTREAM), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 file(s) built, 0 kept" in out and "not ready" not in out and out.count("verified") == 6
    for rel in TEXT_FILES:
        assert (root / rel).read_bytes() == (SHARED_DATA / rel).read_bytes(), rel
    with np.load(root / NPZ, allow_pickle=False) as built, np.load(SHARED_DATA / NPZ, allow_pickle=False) as ref:
        assert built.files == ref.files
        for key in ref.files:
            assert built[key].dtype == ref[key].dtype and np.array_equal(built[key], ref[key]), key
    lock = json.loads((root / LOCK_FILE).read_text())
    assert sorted(lock["files"]) == sorted([*TEXT_FILES, NPZ])
    pinned = pinned_catalog().sources
    for rel, entry in lock["files"].items():
        assert entry["sha256"] == _sha((root / rel).read_bytes())
        assert [s["file"] for s in entry["sources"]] == list(RECIPES[rel].sources)
        assert all(s["sha256"] == pinned[s["file"]].sha256 for s in entry["sources"])
    assert _files(root) == sorted([*TEXT_FILES, NPZ, LOCK_FILE]), "no temporary file left behind"


def test_pinned_catalog_matches_the_upstream_readme_list():
    catalog = pinned_catalog()
    needed = {k for r in RECIPES.values() for k in r.sources}
    assert set(catalog.sources) == needed, "every pinned file is used, and every used file is pinned"
    for s in catalog.sources.values():
        assert s.url == f"https://raw.githubusercontent.com/{s.owner}/{s.repo}/{s.commit}/{s.path}"
        assert len(s.commit) == 40 and len(s.sha256) == 64 and s.bytes > 0 and s.license
    assert set(catalog.reference) == set(RECIPES)
    if (UPSTREAM / "SOURCES.json").is_file():
        listed = json.loads((UPSTREAM / "SOURCES.json").read_text())
        shared = {f"{e['owner']}/{e['repo']}/{e['path']}": e for e in listed}
        for key, s in catalog.sources.items():
            assert (s.commit, s.sha256, s.bytes, s.url, s.license) == tuple(
                shared[key][f] for f in ("commit", "sha256", "bytes", "url", "license")
            )


# ------------------------------------------------------------------------------------------------
# a tiny fake mirror


def test_fetch_from_a_mirror_builds_records_and_keeps(fake):
    mirror, catalog, root = fake
    logs: list[str] = []
    where, built = fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=logs.append)
    assert where.path == root and where.origin == "config" and [b.action for b in built] == ["built", "built"]
    assert (root / "mosei" / "label.csv").read_bytes() == FAKE_LABEL
    frame = read_label_csv(root / "mosei" / "label.csv")
    assert frame["id"].tolist() == ["vidA$_$1", "vidA$_$2", "-vidB$_$3_5", "123$_$7"]
    folds = json.loads((root / "mosei" / "std_folds.json").read_text())
    assert folds == {"train": ["vidA"], "valid": ["-vidB"], "test": ["123"]}
    assert any("sha256 ok" in line for line in logs) and any(line.startswith("wrote ") for line in logs)
    lock = json.loads((root / LOCK_FILE).read_text())
    assert lock["files"]["mosei/label.csv"]["sources"][0]["sha256"] == _sha(FAKE_LABEL)

    # verified files are kept without --force: the mirror is not even read
    before = {p: (root / p).stat().st_mtime_ns for p in ("mosei/label.csv", "mosei/std_folds.json")}
    (mirror / MOSEI_LABEL).unlink()
    logs.clear()
    _, again = fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=logs.append)
    assert [b.action for b in again] == ["kept", "kept"] and all("kept" in line for line in logs)
    assert before == {p: (root / p).stat().st_mtime_ns for p in before}
    # --force rebuilds them, so it needs the sources again
    with pytest.raises(FetchError, match="missing from the mirror"):
        fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, force=True, progress=False, log=logs.append)
    (mirror / MOSEI_LABEL).write_bytes(FAKE_LABEL)
    _, forced = fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, force=True, progress=False,
                      log=logs.append)
    assert [b.action for b in forced] == ["built", "built"]


def test_a_changed_file_is_reported_and_rebuilt(fake):
    mirror, catalog, root = fake
    fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=lambda _: None)
    (root / "mosei" / "label.csv").write_bytes(FAKE_LABEL.replace(b"1.5", b"2.5"))
    where, states = list_data(root, catalog=catalog)
    label, folds = states["mosei_text"]
    assert (label.status, folds.status) == ("changed", "verified")
    assert _sha(FAKE_LABEL) in label.detail and "not ready: run `msabench data fetch mosei_text --root" in (
        format_listing(where, states)
    )
    logs: list[str] = []
    _, built = fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=logs.append)
    assert [b.action for b in built] == ["built", "kept"] and any("changed" in line for line in logs)
    assert (root / "mosei" / "label.csv").read_bytes() == FAKE_LABEL


def test_a_file_built_from_other_pins_is_stale_and_rebuilt(fake):
    mirror, catalog, root = fake
    fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=lambda _: None)
    newer = FAKE_FOLDS + b"standard_extra_fold=['x']\n"
    (mirror / MOSEI_FOLDS).write_bytes(newer)
    repinned = Catalog({**catalog.sources, MOSEI_FOLDS: _source(MOSEI_FOLDS, newer)}, {})
    label, folds = list_data(root, catalog=repinned)[1]["mosei_text"]
    assert (label.status, folds.status) == ("verified", "stale")
    _, built = fetch(["mosei_text"], root, mirror=mirror, catalog=repinned, progress=False, log=lambda _: None)
    assert [b.action for b in built] == ["kept", "built"]
    assert [s.status for s in list_data(root, catalog=repinned)[1]["mosei_text"]] == ["verified", "verified"]


def test_sha_mismatch_names_the_file_and_both_hashes_and_writes_nothing(fake):
    mirror, catalog, root = fake
    tampered = FAKE_FOLDS + b"# edited\n"
    (mirror / MOSEI_FOLDS).write_bytes(tampered)
    with pytest.raises(FetchError) as err:
        fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=lambda _: None)
    msg = str(err.value)
    assert str(mirror / MOSEI_FOLDS) in msg and _sha(tampered) in msg and _sha(FAKE_FOLDS) in msg
    assert "nothing was written" in msg and _files(root) == []


def test_missing_mirror_file_names_the_path_and_url(fake):
    mirror, catalog, root = fake
    (mirror / MOSEI_LABEL).unlink()
    with pytest.raises(FetchError) as err:
        fetch(["mosei_text"], root, mirror=mirror, catalog=catalog, progress=False, log=lambda _: None)
    msg = str(err.value)
    assert str(mirror / MOSEI_LABEL) in msg and catalog.sources[MOSEI_LABEL].url in msg and _files(root) == []
    with pytest.raises(FetchError, match="not a folder"):
        fetch(["mosei_text"], root, mirror=mirror / "nowhere", catalog=catalog, progress=False)


def test_offline_error_names_the_url_and_the_manual_step(fake, monkeypatch):
    _, catalog, root = fake

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FetchError) as err:
        fetch(["mosei_text"], root, catalog=catalog, progress=False, log=lambda _: None)
    msg = str(err.value)
    first = catalog.sources[MOSEI_LABEL]
    assert f"cannot download {first.url}" in msg and "Temporary failure in name resolution" in msg
    assert f"DIR/{MOSEI_LABEL}" in msg and f"msabench data fetch mosei_text --root {root} --from DIR" in msg
    assert _files(root) == []
    assert main(["data", "fetch", "mosei_text", "--root", str(root)]) == 2, "the CLI: one line, exit 2"


def test_download_reads_the_pinned_url(fake, monkeypatch):
    mirror, catalog, root = fake
    asked: list[str] = []

    def serve(request, timeout):
        asked.append(request.full_url)
        key = next(k for k, s in catalog.sources.items() if s.url == request.full_url)
        return io.BytesIO((mirror / key).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    _, built = fetch(["mosei_text"], root, catalog=catalog, progress=False, log=lambda _: None)
    assert sorted(asked) == sorted(s.url for s in catalog.sources.values())
    assert [b.action for b in built] == ["built", "built"]


def test_an_exact_output_differing_from_the_reference_is_refused(fake):
    mirror, catalog, root = fake
    wrong = Catalog(catalog.sources, {"mosei/std_folds.json": "0" * 64})
    with pytest.raises(FetchError, match=r"mosei/std_folds.json: .* expected 0{64} \(the reference build\)"):
        fetch(["mosei_text"], root, mirror=mirror, catalog=wrong, progress=False, log=lambda _: None)
    assert _files(root) == []


def test_names_and_the_cli_list(tmp_path, capsys):
    assert expand_names(["all", "mosi_text"]) == ["mosi_utt", "mosi_text", "mosei_text"]
    with pytest.raises(ValueError, match="unknown data set 'mosi'; expected one of"):
        expand_names(["mosi"])
    assert main(["data", "list", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"data root: {tmp_path} (set by --root)")
    assert f"mosi_utt: not ready: run `msabench data fetch mosi_utt --root {tmp_path}`" in out
    assert "mosi/bclstm_utterance.npz" in out and out.count("missing") == 6 and "build record: none yet" in out


def test_list_verifies_against_the_reference_without_a_build_record(tmp_path):
    """A copy of the shared data (no SOURCES.lock.json) verifies by the reference SHA-256; an edit does not."""
    catalog = pinned_catalog()
    folds = tmp_path / "mosei" / "std_folds.json"
    folds.parent.mkdir(parents=True)
    data = json.dumps({"train": ["a"], "valid": ["b"], "test": ["c"]}, indent=0).encode()
    folds.write_bytes(data)
    state = {s.output: s for s in list_data(tmp_path, catalog=Catalog(catalog.sources, {**catalog.reference,
                                                                      "mosei/std_folds.json": _sha(data)}))[1][
        "mosei_text"]}
    assert state["mosei/std_folds.json"].status == "verified" and "reference" in state["mosei/std_folds.json"].detail
    assert state["mosei/label.csv"].status == "missing"
    assert list_data(tmp_path)[1]["mosei_text"][1].status == "unverified"


# ------------------------------------------------------------------------------------------------
# the data root


def test_data_root_order_config_then_environment_then_user_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_data_root(str(tmp_path / "cfg"), field="mosi_utt.root") == (
        tmp_path / "cfg", "config", "set by mosi_utt.root"
    )
    assert resolve_data_root().path == tmp_path / "env" and resolve_data_root().origin == "env"
    monkeypatch.setenv(DATA_ENV, "")
    assert resolve_data_root().origin == "user" and data_root() == user_dir()
    monkeypatch.delenv(DATA_ENV)
    assert data_root() == tmp_path / "xdg" / "msa-debias-bench"
    assert "shared" not in str(data_root())
