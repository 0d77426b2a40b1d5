"""Faults during a job (issue 18): an error while training never leaves a visible, incomplete run folder, and a
W&B server that refuses or never answers never stops a job. Each case checks the run folders on disk and the
message, not timings (an upper bound only catches a hang)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from benchmarks.cli import main as cli_main
from benchmarks.config import build_config, run_dir_for, staging_dir
from benchmarks.leaderboard import find_runs
from benchmarks.sweep import Job, delete_incomplete, state
from methods.baseline import Baseline
from tests.conftest import TINY_JOB


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _visible(snapshot: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in snapshot.items() if not any(part.startswith(".") for part in Path(k).parts)}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A root holding one complete run (seed 5)."""
    root = tmp_path_factory.mktemp("runs")
    assert cli_main(["run", *TINY_JOB, f"output.root={root}", "seed=5"]) == 0
    return root


@pytest.fixture()
def root(finished, tmp_path) -> Path:
    copy = tmp_path / "runs"
    shutil.copytree(finished, copy)
    return copy


def _job(root: Path, seed: int, *extra: str) -> list[str]:
    return [*TINY_JOB, f"output.root={root}", f"seed={seed}", *extra]


def _fail_at_step(monkeypatch: pytest.MonkeyPatch, step: int, fault: Callable[[object], object]) -> None:
    """Baseline's training step ``step`` (1-based) calls ``fault(loss)`` and returns what it returns."""
    original = Baseline.training_step
    calls = []

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        calls.append(batch_idx)
        return fault(loss) if len(calls) == step else loss

    monkeypatch.setattr(Baseline, "training_step", training_step)


def _raise(exc: BaseException) -> Callable[[object], object]:
    def fault(loss):
        raise exc

    return fault


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        (_raise(RuntimeError("boom at step 2")), 2, "failed: RuntimeError: boom at step 2"),
        (lambda loss: loss * float("nan"), 2, "non-finite"),
        (_raise(KeyboardInterrupt()), 130, "was interrupted"),
    ],
    ids=["exception", "nan_loss", "ctrl_c"],
)
def test_a_failed_job_leaves_no_visible_folder(root, monkeypatch, capsys, fault, code, message):
    before = _snapshot(root)
    run_dir = run_dir_for(build_config(_job(root, 6)))
    sigint = signal.getsignal(signal.SIGINT)
    _fail_at_step(monkeypatch, 2, fault)
    assert cli_main(["run", *_job(root, 6)]) == code
    err = capsys.readouterr().err
    hidden = staging_dir(run_dir)
    assert message in err and str(hidden) in err and "no run folder was made" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not run_dir.exists(), "a failed job leaves no visible run folder"
    assert _visible(_snapshot(root)) == before, "the other runs are byte-identical"
    assert (hidden / "config.yaml").is_file() and (hidden / "logs").is_dir() and not (hidden / "done").exists()
    assert "Traceback" in (hidden / "error.txt").read_text()
    assert find_runs(root) == ([p.parent for p in root.rglob("done")], []), "hidden folders are never counted"
    assert signal.getsignal(signal.SIGINT) == sigint, "Ctrl+C works again after Lightning's graceful shutdown"


def test_a_relaunch_removes_the_failed_attempt_and_runs(root, monkeypatch, capsys):
    overrides = _job(root, 6)
    cfg = build_config(overrides)
    run_dir, hidden = run_dir_for(cfg), staging_dir(run_dir_for(cfg))
    job = Job("baseline", "baseline", "synthetic", 6, tuple(overrides), run_dir)
    _fail_at_step(monkeypatch, 2, _raise(ZeroDivisionError("step 2")))
    assert cli_main(["run", *overrides]) == 2
    assert hidden.is_dir() and state(job) == "incomplete"
    monkeypatch.undo()
    assert cli_main(["run", *overrides]) == 0
    assert (run_dir / "done").is_file() and not hidden.exists() and state(job) == "done"
    assert json.loads((run_dir / "result.json").read_text())["seed"] == 6
    _fail_at_step(monkeypatch, 2, _raise(ZeroDivisionError("again")))
    assert cli_main(["run", *overrides, "seed=7"]) == 2
    failed = Job("baseline", "baseline", "synthetic", 7, (), run_dir_for(build_config([*overrides, "seed=7"])))
    assert delete_incomplete([job, failed]) == [staging_dir(failed.run_dir)]
    assert state(failed) == "not launched" and state(job) == "done"


def test_a_failed_overwrite_keeps_the_complete_run(root, monkeypatch, capsys):
    (run_dir,) = [p.parent for p in root.rglob("done")]
    before = _snapshot(root)
    _fail_at_step(monkeypatch, 2, _raise(RuntimeError("boom while replacing")))
    assert cli_main(["run", *_job(root, 5), "output.overwrite=true"]) == 2
    err = capsys.readouterr().err
    assert "the complete run there is unchanged" in err and str(staging_dir(run_dir)) in err
    assert _visible(_snapshot(root)) == before


# --- W&B against a server that refuses connections or never answers ---


@pytest.fixture(params=["refuses", "never_answers"])
def dead_wandb_server(request, tmp_path, monkeypatch) -> Iterator[tuple[str, list[socket.socket]]]:
    """A local W&B "server" (nothing reaches the real network): a closed port, or a socket that accepts connections
    and never answers. Yields (kind, accepted connections)."""
    import wandb

    wandb.teardown()  # W&B reads its environment when it is set up: start from a clean slate
    accepted: list[socket.socket] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if request.param == "refuses":
        server.close()
    else:
        server.listen(16)

        def accept() -> None:
            while True:
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    return

        threading.Thread(target=accept, daemon=True).start()
    for key, value in {
        "WANDB_BASE_URL": f"http://127.0.0.1:{port}",
        "WANDB_API_KEY": "x" * 40,
        "WANDB_DIR": str(tmp_path / "wandb"),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        "WANDB_SILENT": "true",
        "WANDB_ERROR_REPORTING": "false",
    }.items():
        monkeypatch.setenv(key, value)
    yield request.param, accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_an_unreachable_wandb_server_never_stops_the_job(dead_wandb_server, tmp_path, monkeypatch, caplog):
    kind, accepted = dead_wandb_server
    if kind == "refuses":  # the environment asks for online mode ...
        monkeypatch.setenv("WANDB_MODE", "online")
        mode = []
    else:  # ... or the config does, over the test session's WANDB_MODE=disabled
        mode = ["wandb.mode=online"]
    overrides = [*TINY_JOB, f"output.root={tmp_path / 'runs'}", "trainer.max_epochs=1", "logger=[csv,wandb]",
                 "wandb.timeout_s=2", *mode]
    start = time.time()
    assert cli_main(["run", *overrides]) == 0
    assert time.time() - start < 120, "W&B must be bounded by wandb.timeout_s"
    run_dir = run_dir_for(build_config(overrides))
    assert (run_dir / "done").is_file() and json.loads((run_dir / "result.json").read_text())["metrics"]
    warnings = [r.getMessage() for r in caplog.records if "W&B skipped" in r.getMessage()]
    assert len(warnings) == 1 and run_dir.name in warnings[0] and "wandb.mode=online" in warnings[0]
    assert "\n" not in warnings[0] and "CSV logger only" in warnings[0]
    if kind == "refuses":
        assert "connection refused" in warnings[0]
    else:
        assert "deadline exceeded" in warnings[0] and accepted, "W&B reached the local server, nothing else"
    import wandb

    assert wandb.run is None
