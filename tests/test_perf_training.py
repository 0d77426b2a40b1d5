"""`make perf`'s training throughput script: its table on the smallest settings, and its device option."""

from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import perf_training


def _main(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["perf_training", *args])
    perf_training.main()


def test_prints_throughput_epoch_seconds_and_fetch_share(tmp_path, monkeypatch, capsys):
    _main(monkeypatch, "--methods", "baseline", "--data", "synthetic", "--epochs", "2", "--batches", "2",
          "--workdir", str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("training throughput, 1 torch thread, default batch size;")
    assert out[1].split() == ["data", "method", "samples/s", "epoch", "s", "fetch", "%"]
    data, method, samples_s, epoch_s, fetch = out[2].split()
    assert (data, method) == ("synthetic", "baseline")
    assert float(samples_s) > 0 and float(epoch_s) > 0 and 0 <= float(fetch.rstrip("%")) <= 100
    assert len(out) == 3, "Lightning's banner lines stay out of the table"


def test_records_option_scores_the_test_sets_every_epoch(tmp_path, monkeypatch, capsys):
    from methods.base import MSAMethod

    epochs: list[int] = []
    original = MSAMethod._record_epoch

    def counted(self, *args):
        epochs.append(self.current_epoch)
        return original(self, *args)

    monkeypatch.setattr(MSAMethod, "_record_epoch", counted)
    _main(monkeypatch, "--methods", "baseline", "--data", "synthetic", "--epochs", "2", "--batches", "2", "--records",
          "--workdir", str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("training throughput, 1 torch thread, default batch size, per-epoch records;")
    assert epochs == [0, 1]
    assert len(out) == 3 and float(out[2].split()[3]) > 0


def test_gpu_option_needs_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        _main(monkeypatch, "--accelerator", "gpu", "--methods", "baseline")
    assert stop.value.code == 2
    assert "--accelerator gpu: torch" in capsys.readouterr().err
