"""OOD split builder: manifests (deterministic, loadable), validity on the synthetic benchmark, the
`msabench splits` CLI (user paths, never the package), provenance, and the committed real-data manifests
(skipped without the real data)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from datamodules.datamodule import MSADataModule
from datamodules.schema import DataError
from datamodules.synthetic import generate
from ood_splits.builder import (
    MANIFEST_ROOT,
    SAConfig,
    SplitBuildError,
    SplitConfig,
    build_manifest,
    dumps,
    git_commit,
    load_dataset,
    manifest_path,
    sha256_lines,
    write_manifest,
)
from ood_splits.report import analyse, report
from ood_splits.vocab import VocabularyError, stop_words_sha256
from tests.conftest import SHARED_DATA, TINY_JOB, tiny_synthetic

FAST = SAConfig(outer=60, n0=60, chains=2)


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_synthetic()
    return generate(cfg), dataclasses.asdict(cfg)


def build(bundle, config, **split):
    cfg = SplitConfig(sa=split.pop("sa", FAST), **split)
    manifest, result, vocab = build_manifest(bundle, cfg, dataset="synthetic", dataset_config=config, commit="test")
    return manifest, result, vocab


def test_manifest_is_byte_identical_for_the_same_seed_and_differs_for_another(tiny, tmp_path):
    bundle, config = tiny
    first, _, _ = build(bundle, config, seed=3)
    second, _, _ = build(bundle, config, seed=3)
    path_a = write_manifest(first, tmp_path / "a" / "m.json")
    path_b = write_manifest(second, tmp_path / "b" / "m.json")
    assert path_a.read_bytes() == path_b.read_bytes()
    other, _, _ = build(bundle, config, seed=4)
    assert other["ids"] != first["ids"]
    assert dumps(other) != dumps(first)
    assert not list((tmp_path / "a").glob(".*tmp"))  # atomic write leaves no temporary file


def test_manifest_contents(tiny):
    bundle, config = tiny
    manifest, result, vocab = build(bundle, config)
    test_ids = bundle.test.ids.tolist()
    assert manifest["name"] == "test_nn_text" and manifest["protocol"] == "gear_subset"
    assert manifest["dataset"] == "synthetic" and manifest["seed"] == 0
    position = {i: k for k, i in enumerate(test_ids)}
    rows = [position[i] for i in manifest["ids"]]
    assert rows == sorted(rows) and len(set(rows)) == len(rows)  # source order, no duplicates
    assert len(rows) == round(0.47 * len(test_ids)) == manifest["params"]["n_sel"]
    assert manifest["test_ids_sha256"] == sha256_lines(test_ids)
    assert manifest["source_sha256_of"] == "dataset_config" and len(manifest["source_sha256"]) == 64
    text = manifest["params"]["vocabulary"]["parts"]["text"]
    assert text["stop_words_sha256"] == stop_words_sha256() and text["min_count"] == 10
    assert list(text["counts"]) == vocab.entries and all(c > 10 for c in text["counts"].values())
    obj = manifest["objective"]
    assert obj["final"] == min(c["final"] for c in obj["chains"]) == result.best.final
    assert obj["initial"] == obj["chains"][obj["chosen_chain"]]["initial"]
    assert len(obj["chains"]) == 2 and all(len(c["trace"]) == 60 for c in obj["chains"])
    assert manifest["params"]["split_config"]["sa"]["chains"] == 2
    assert manifest["created_by"] == {"suite": manifest["created_by"]["suite"], "git_commit": "test"}
    assert "label" not in dumps(manifest).lower().replace("label_mode", "")  # ids only: no labels


def test_manifest_loads_in_the_datamodule(tiny, tmp_path):
    bundle, config = tiny
    manifest, _, _ = build(bundle, config, modality="tav")
    path = write_manifest(manifest, manifest_path(tmp_path, "synthetic", manifest["name"]))
    assert path == tmp_path / "synthetic" / "test_nn_tav.json"
    dm = MSADataModule(bundle, manifests=[path])
    assert "test_nn_tav" in dm.test_set_names and "ood_tav" in dm.test_set_names
    assert dm.ids_of("test_nn_tav").tolist() == manifest["ids"]
    batch = next(iter(dm.test_dataloader()[dm.test_set_names.index("test_nn_tav")]))
    assert batch.audio is not None and len(batch) == min(len(manifest["ids"]), 256)


def test_bad_inputs_each_give_one_clear_error(tiny, tmp_path):
    bundle, config = tiny
    with pytest.raises(VocabularyError, match="empty text vocabulary"):
        build(bundle, config, text=dataclasses.replace(SplitConfig().text, min_count=10_000))
    with pytest.raises(SplitBuildError, match=r"subset size 96 \(from split.n_sel=96\) is out of range"):
        build(bundle, config, n_sel=96)
    with pytest.raises(SplitBuildError, match="split.fraction=1.0"):
        build(bundle, config, fraction=1.0)
    with pytest.raises(SplitBuildError, match="split.modality='smell'"):
        build(bundle, config, modality="smell")
    manifest, _, _ = build(bundle, config)
    unknown = dict(manifest, ids=manifest["ids"][:-1] + ["syn_test_v999$_$1"])
    with pytest.raises(DataError, match="not in the test split"):
        MSADataModule(bundle, manifests=[write_manifest(unknown, tmp_path / "unknown.json")])
    other = dataclasses.replace(bundle, source_sha256="f" * 64)
    with pytest.raises(DataError, match="source_sha256"):
        MSADataModule(other, manifests=[write_manifest(manifest, tmp_path / "m.json")])


def test_text_split_balances_words_far_below_random(tiny, tmp_path):
    bundle, config = tiny
    manifest, _, _ = build(bundle, config)
    obj = manifest["objective"]
    assert obj["final"] < obj["random_baseline"]["mean"] - 4 * obj["random_baseline"]["std"]
    stats = analyse(manifest, bundle, tmp_path / "m.json", {})
    corr = stats["vocabulary"]["mean_abs_r_top"]
    assert corr["ood"] < 0.7 * corr["test"]  # the train-learned word -> label correlation shrinks
    rate = stats["vocabulary"]["mean_abs_neg_rate_minus_half"]
    assert rate["ood"] < 0.6 * rate["test"]


def test_text_split_removes_the_planted_text_shortcut(tmp_path):
    """Only the planted spurious words carry label information here (no sentiment words), and the
    shortcut is weak enough (bias 0.75) that a balanced 47 % subset exists."""
    cfg = tiny_synthetic(n_test=120, modalities=["text"], bias=0.75)
    cfg.strength = {**cfg.strength, "text": 0.0}
    bundle = generate(cfg)
    manifest, _, _ = build_manifest(
        bundle, SplitConfig(sa=SAConfig(outer=100, chains=2)), dataset="synthetic", dataset_config={}, commit="t"
    )
    shortcut = analyse(manifest, bundle, tmp_path / "m.json", {})["synthetic_text_shortcut"]
    assert shortcut["agreement_test"] > 0.7
    assert abs(shortcut["agreement_ood"] - 0.5) < 0.4 * abs(shortcut["agreement_test"] - 0.5)
    assert abs(shortcut["agreement_random_mean"] - shortcut["agreement_test"]) < 0.05


def test_audio_vision_words_and_report_files(tiny, tmp_path):
    bundle, config = tiny
    paths = []
    for modality in ("audio", "vision"):
        manifest, _, vocab = build(bundle, config, modality=modality)
        assert len(vocab) == 10 and vocab.info["fit_on"] == "train"
        assert manifest["objective"]["final"] < manifest["objective"]["random_baseline"]["mean"]
        paths.append(write_manifest(manifest, manifest_path(tmp_path, "synthetic", manifest["name"])))
    results = report(paths, bundles={"synthetic": bundle})
    for path in paths:
        stem = path.name.removesuffix(".json")
        for ext in ("md", "json", "png"):
            assert (path.parent / "reports" / f"{stem}.report.{ext}").stat().st_size > 0
        saved = json.loads((path.parent / "reports" / f"{stem}.report.json").read_text())
        assert saved["size"]["n_sel"] == 45 and saved["videos"]["test"] == 4
        assert saved["objective"]["recomputed"] == pytest.approx(saved["objective"]["final"], abs=1e-9)
    ids = [set(json.loads(p.read_text())["ids"]) for p in paths]
    jaccard = len(ids[0] & ids[1]) / len(ids[0] | ids[1])
    assert results[0]["jaccard"] == {"test_nn_vision": pytest.approx(jaccard)}
    assert "## Labels" in (tmp_path / "synthetic" / "reports" / "test_nn_audio.report.md").read_text()
    manifests = sorted(p.name for p in (tmp_path / "synthetic").glob("*.json"))
    assert manifests == ["test_nn_audio.json", "test_nn_vision.json"]


def test_cli_splits_build_and_report(tmp_path, capsys):
    from benchmarks.cli import main

    data = [o for o in TINY_JOB if o.startswith("synthetic.")]
    sa = ["split.sa.outer=20", "split.sa.n0=20", "split.sa.chains=2", "split.av.k=4"]
    rc = main(["splits", "build", "dataset=synthetic", *data, *sa, "--modality", "text", "tav", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    text, tav = tmp_path / "synthetic" / "test_nn_text.json", tmp_path / "synthetic" / "test_nn_tav.json"
    assert f"{text}: 45 of 96 test samples" in out and tav.exists()
    assert json.loads(tav.read_text())["params"]["vocabulary"]["parts"]["audio"]["k"] == 4
    assert main(["splits", "report", str(text), str(tav)]) == 0
    out = capsys.readouterr().out
    assert "synthetic/test_nn_text: 45 of 96" in out and "text-shortcut agreement" in out
    assert (tmp_path / "synthetic" / "reports" / "test_nn_tav.report.png").exists()
    assert main(["splits", "build", "dataset=synthetic", "trainer.max_epochs=1", "--out", str(tmp_path)]) == 2
    assert "not a split or dataset key" in capsys.readouterr().err


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_cli_splits_write_to_the_user_folder_never_the_package(tmp_path, monkeypatch, capsys):
    """Without --out a build goes to the per-user manifest folder; a report of a committed (package) manifest
    goes there too; the package's manifests are untouched."""
    import ood_splits.builder as builder
    from benchmarks.cli import main

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    user = tmp_path / "xdg" / "msa-debias-bench" / "manifests"
    assert builder.user_manifest_root() == user
    before = _tree(MANIFEST_ROOT)
    data = [o for o in TINY_JOB if o.startswith("synthetic.")]
    sa = ["split.sa.outer=20", "split.sa.n0=20", "split.sa.chains=2"]
    assert main(["splits", "build", "dataset=synthetic", *data, *sa, "--report"]) == 0
    built = user / "synthetic" / "test_nn_text.json"
    assert f"{built}: 45 of 96" in capsys.readouterr().out
    assert (user / "synthetic" / "reports" / "test_nn_text.report.md").is_file()

    package = tmp_path / "package_manifests"  # stands in for the installed ood_splits/manifests
    monkeypatch.setattr(builder, "MANIFEST_ROOT", package)
    committed = package / "synthetic" / "test_nn_other.json"
    committed.parent.mkdir(parents=True)
    shutil.copy(built, committed)
    assert builder.is_package_manifest(committed) and not builder.is_package_manifest(built)
    assert main(["splits", "report", str(committed)]) == 0
    assert (user / "synthetic" / "reports" / "test_nn_other.report.json").is_file()
    assert not (package / "synthetic" / "reports").exists()
    assert _tree(MANIFEST_ROOT) == before


def test_git_commit_is_the_working_directory_checkout_or_null(tmp_path, monkeypatch):
    """Provenance is the checkout the user runs in; outside one it is None (JSON null), even though the package
    itself may lie in a checkout."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    (tmp_path / "plain").mkdir()
    monkeypatch.chdir(tmp_path / "plain")
    assert git_commit() is None
    repo = Path(__file__).resolve().parents[1]
    if (repo / ".git").exists():
        monkeypatch.delenv("GIT_CEILING_DIRECTORIES")
        monkeypatch.chdir(repo)
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", git_commit() or "")


# ------------------------------------------------------------------------------------------------
# committed real-data manifests


REAL = [
    ("mosi_text", "test_nn_text", 686),
    ("mosi_utt", "test_nn_text", 618),
    ("mosi_utt", "test_nn_audio", 618),
    ("mosi_utt", "test_nn_vision", 618),
    ("mosi_utt", "test_nn_tav", 618),
    pytest.param("mosei_text", "test_nn_text", 4653, marks=pytest.mark.slow),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data absent: {SHARED_DATA}")
@pytest.mark.parametrize("dataset, name, n_test", REAL)
def test_committed_real_manifest_loads(dataset, name, n_test):
    path = manifest_path(MANIFEST_ROOT, dataset, name)
    manifest = json.loads(Path(path).read_text())
    bundle = load_dataset(dataset, manifest["params"]["dataset_config"])
    assert len(bundle.test) == n_test == manifest["params"]["n_source"]
    assert manifest["source_sha256"] == bundle.source_sha256
    assert manifest["test_ids_sha256"] == sha256_lines(bundle.test.ids.tolist())
    dm = MSADataModule(bundle, manifests=[path])
    assert len(dm.ids_of(name)) == manifest["params"]["n_sel"] == round(0.47 * n_test)
    obj = manifest["objective"]
    assert obj["final"] < obj["random_baseline"]["mean"] - 3 * obj["random_baseline"]["std"]
    assert np.isfinite(obj["initial"]) and "label" not in manifest["ids"][0]
