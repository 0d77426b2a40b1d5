"""Bad input and faults never lose or falsify results (issue 18): each case asserts the exit code, a message that
names the culprit, and that the existing results are byte-identical afterwards."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import benchmarks.run as run_module
from benchmarks.cli import main as cli_main
from tests.conftest import TINY_JOB


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def complete(tmp_path_factory) -> tuple[Path, Path]:
    """A root with one complete run; returns (root, run folder)."""
    root = tmp_path_factory.mktemp("results")
    assert cli_main(["run", *TINY_JOB, f"output.root={root}", "seed=3"]) == 0
    (run,) = [p.parent for p in root.rglob("done")]
    return root, run


@pytest.fixture()
def results(complete, tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """A private copy of the complete root: (root, run folder, snapshot)."""
    import shutil

    root, run = complete
    copy = tmp_path / "results"
    shutil.copytree(root, copy)
    run_copy = copy / run.relative_to(root)
    return copy, run_copy, _snapshot(copy)


def _manifest(tmp_path: Path, content: object, raw: str | None = None) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(raw if raw is not None else json.dumps(content))
    return path


def _rerun_into(run: Path, *extra: str) -> int:
    return cli_main(["run", *TINY_JOB, "seed=3", f"output.dir={run}", "output.overwrite=true", *extra])


@pytest.mark.parametrize(
    ("content", "raw", "message"),
    [
        (None, None, "must be a JSON object, got NoneType"),
        ({"name": "ood_x", "ids": "a,b"}, None, "'ids' must be a list of sample-id strings, got str"),
        ({"name": "ood_x", "ids": []}, None, "'ids' is empty"),
        ({"name": "ood_avg", "ids": ["x"]}, None, "'name' 'ood_avg' is reserved"),
        ({"name": "test", "ids": ["x"]}, None, "'name' 'test' is reserved"),
        ({"name": "ood/x", "ids": ["x"]}, None, "'name' must be a plain identifier"),
        ({"name": 3, "ids": ["x"]}, None, "'name' must be a plain identifier"),
        ({"ids": ["x"]}, None, "manifest has no key 'name'"),
        ({"name": "ood_x", "ids": ["x"], "source_sha256": 5}, None, "'source_sha256' must be a string"),
        (None, "{not json", "cannot read split manifest"),
    ],
)
def test_overwrite_with_a_bad_manifest_keeps_the_complete_run(results, tmp_path, capsys, content, raw, message):
    root, run, before = results
    manifest = _manifest(tmp_path, content, raw)
    assert _rerun_into(run, f"data.manifests=[{manifest}]") == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and message in err
    assert _snapshot(root) == before


def test_missing_manifest_is_named(results, capsys):
    root, run, before = results
    assert _rerun_into(run, "data.manifests=[/nowhere/ood.json]") == 2
    assert "/nowhere/ood.json" in capsys.readouterr().err
    assert _snapshot(root) == before


def test_selection_start_beyond_budget_keeps_the_run(results, capsys):
    root, run, before = results
    assert _rerun_into(run, "method=gear") == 2
    assert "trainer.max_epochs=3" in capsys.readouterr().err
    assert _snapshot(root) == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["logger=[csv,wandbb]"], "logger[1] must be one of ['csv', 'wandb'], got 'wandbb' (closest: 'wandb')"),
        (["wandb.mode=onlin"], "wandb.mode must be one of ['', 'online', 'offline', 'disabled'], got 'onlin'"),
        (["wandb.timeout_s=0"], "wandb.timeout_s=0.0: expected a number of seconds > 0"),
        (["trainer.accelerator=tpu"], "trainer.accelerator must be one of ['cpu', 'gpu', 'cuda', 'mps', 'auto']"),
        (["trainer.precision=8"], "trainer.precision must be one of ['64-true', '32-true', '16-true', '16-mixed'"),
        (["trainer.limit_train_batches=0"], "trainer.limit_train_batches=0.0: expected a fraction"),
        (["seed=-1"], "seed=-1: expected an integer in [0, 4294967295]"),
        (["label=.hidden"], "label='.hidden': expected a plain name"),
        (["model.optim.lr=-1"], "full_key: model.optim.lr"),
        (["method=baselin"], "error: unknown method 'baselin' (did you mean 'baseline'?)"),
        (["dataset=synthetc"], "error: unknown dataset 'synthetc' (did you mean 'synthetic'?)"),
        (["synthetic.biass=0.8"], "Did you mean: 'bias'? full_key: source.biass"),
    ],
    ids=lambda v: v[0] if isinstance(v, list) else None,
)
def test_bad_job_settings_are_refused_before_any_folder(results, capsys, extra, message):
    """Settings that used to fail after the run folder existed (or silently hid it) are one line before it."""
    root, run, before = results
    assert _rerun_into(run, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert _snapshot(root) == before  # hidden folders included: none was made


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["methods: [baselin]"], "methods: unknown method 'baselin' (did you mean 'baseline'?)"),
        (["datasets: [synthetc]"], "datasets: unknown dataset 'synthetc' (did you mean 'synthetic'?)"),
        (["variants: {x: {method: gaer}}"], "variants.x.method: unknown method 'gaer' (did you mean 'gear'?)"),
        (["dataset_overrides: {synthetc: [synthetic.bias=0.8]}"], "dataset_overrides: unknown dataset 'synthetc'"),
        (["test_sets: {mosi_ut: [x.json]}"], "test_sets: unknown dataset 'mosi_ut' (did you mean 'mosi_utt'?)"),
        (["method_overrides: {gera: [gear.q=2]}"], "method_overrides: 'gera' is not a method the sweep runs"),
    ],
)
def test_sweep_sections_are_checked_before_any_job(results, tmp_path, capsys, lines, message):
    root, _, before = results
    sweep = tmp_path / "typo.yaml"
    methods = [] if lines[0].startswith("methods:") else ["methods: [baseline, gear]"]
    sweep.write_text("\n".join(["name: typo", f"root: {root}", *methods, *lines]) + "\n")
    assert cli_main(["sweep", "launch", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert str(sweep) in err and message in err
    assert _snapshot(root) == before


def test_a_sweep_file_that_is_not_yaml_is_one_line(results, tmp_path, capsys):
    root, _, before = results
    sweep = tmp_path / "broken.yaml"
    sweep.write_text("name: x\nmethods: [baseline\nmethods: [gear]\n")
    assert cli_main(["sweep", "launch", str(sweep)]) == 2
    err = capsys.readouterr().err
    assert f"sweep file {sweep} is not valid YAML" in err and "Traceback" not in err and err.count("\n") == 1
    assert _snapshot(root) == before


def _unstamped(run, text):
    """Replace result.json by ``text`` in a run whose ``done`` predates the SHA-256 line (older runs)."""
    (run / "result.json").write_text(text)
    (run / "done").write_text("2026-01-01T00:00:00+0000\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda run: _unstamped(run, '{"method": "base'), "result.json is not valid JSON"),
        (lambda run: _unstamped(run, "[1, 2]"), "result.json: expected a JSON object, got list"),
        (lambda run: (run / "done").write_text(""), "done is empty"),
        (lambda run: (run / "result.json").write_text((run / "result.json").read_text().replace("0.", "0.9", 1)),
         "result.json differs from the file the run wrote"),
    ],
)
def test_leaderboard_names_a_damaged_run_folder(results, capsys, damage, message):
    root, run, _ = results
    damage(run)
    before = _snapshot(root)
    assert cli_main(["leaderboard", str(root), "--out", str(root.parent / "board")]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and message in err
    assert _snapshot(root) == before


def test_damaged_epoch_records_leave_the_run_out_of_reselection(results, capsys):
    root, run, _ = results
    (run / "epochs.npz").write_bytes(b"PK\x03\x04 truncated")
    before = _snapshot(root)
    assert cli_main(["leaderboard", str(root), "--selection", "last", "--out", str(root.parent / "b")]) == 0
    assert "Left out (no per-epoch records" in (root.parent / "b" / "leaderboard.md").read_text()
    assert _snapshot(root) == before


@pytest.mark.parametrize("victim", ["config.yaml", "epochs.npz", "predictions.csv", "result.json", "done"])
def test_a_full_disk_at_any_write_leaves_no_done_and_the_old_run_intact(results, monkeypatch, capsys, victim):
    """ENOSPC raised at each write of a job in turn: the rerun fails with one line, its staging folder never
    becomes the run, and the complete run it was replacing is byte-identical."""
    root, run, before = results
    real = run_module.atomic_write_bytes, run_module.atomic_write_text

    def failing(writer):
        def write(path, data):
            if Path(path).name == victim:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return writer(path, data)

        return write

    monkeypatch.setattr(run_module, "atomic_write_bytes", failing(real[0]))
    monkeypatch.setattr(run_module, "atomic_write_text", failing(real[1]))
    assert _rerun_into(run, "seed=3") == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and victim in err
    visible = {k: v for k, v in _snapshot(root).items() if not any(p.startswith(".") for p in Path(k).parts)}
    assert visible == before  # the staging folder of the failed rerun is hidden and never counted


def test_a_new_run_on_a_full_disk_is_incomplete_for_the_leaderboard(tmp_path, monkeypatch, capsys):
    real = run_module.atomic_write_text

    def no_done(path, text):
        if Path(path).name == "done":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(run_module, "atomic_write_text", no_done)
    assert cli_main(["run", *TINY_JOB, f"output.root={tmp_path}", "seed=4"]) == 2
    assert not list(tmp_path.rglob("done"))
    assert cli_main(["leaderboard", str(tmp_path)]) == 1
    assert "no complete run folder" in capsys.readouterr().err


def test_prepare_accepts_overrides_after_out(tmp_path, capsys):
    out = tmp_path / "s.pkl"
    assert cli_main(["prepare", "synthetic", "--out", str(out), "n_train=64", "n_valid=16", "n_test=32"]) == 0
    assert out.is_file() and "train 64" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:  # argparse's own usage error
        cli_main(["prepare", "synthetic", "--out", str(out), "--bogus"])
    assert stop.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_workers_die_with_their_launcher(tmp_path):
    """A process that called die_with_parent() is terminated when its parent is killed (Linux)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux-only")
    pid_file = tmp_path / "child.pid"
    child = (
        "import os, signal, time; from benchmarks.workers import die_with_parent; assert die_with_parent(); "
        # Lightning replaces the SIGTERM handler while it trains: the worker must die anyway.
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    )
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(300)"
    proc = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(__file__).resolve().parent.parent)
    deadline = time.time() + 240  # the child imports torch: tens of seconds on a loaded 2-core machine
    while time.time() < deadline and not (pid_file.is_file() and pid_file.read_text()):
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(100):
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(child_pid, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def _npz_bytes(tmp_path: Path) -> bytes:
    import numpy as np

    path = tmp_path / "full.npz"
    np.savez_compressed(path, label=np.linspace(-3, 3, 4000), text=np.random.default_rng(0).normal(size=(4000, 8)))
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["truncated", "bitflip"])
def test_a_damaged_feature_file_is_one_line_naming_it(results, tmp_path, capsys, damage):
    root, _, before = results
    data = tmp_path / "data"
    (data / "mosi").mkdir(parents=True)
    raw = bytearray(_npz_bytes(tmp_path))
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw[len(raw) // 3] ^= 0xFF
    target = data / "mosi" / "bclstm_utterance.npz"
    target.write_bytes(bytes(raw))
    rc = cli_main(["run", "method=baseline", "dataset=mosi_utt", f"source.root={data}", f"output.root={root}"])
    err = capsys.readouterr().err
    assert rc == 2 and str(target) in err and "cannot read as a numpy .npz" in err and "Traceback" not in err
    assert _snapshot(root) == before


def test_an_empty_label_csv_is_named(tmp_path):
    from datamodules.schema import DataError
    from datamodules.transcripts import read_label_csv

    path = tmp_path / "label.csv"
    path.write_text("")
    with pytest.raises(DataError, match=f"{path}: cannot read as CSV"):
        read_label_csv(path)
