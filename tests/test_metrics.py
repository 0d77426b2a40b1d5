"""Tests for methods/metrics.py: MMSA parity, aggregation, an independent reference, online metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from methods.metrics import (
    METRIC_KEYS,
    SELECTION_MODES,
    OnlineMSAMetrics,
    aggregate,
    msa_metrics,
    report_cell,
    selection_value,
)

# MMSA parity fixture
Y = [-3.0, -1.4, 0.0, 0.0, 0.6, 1.2, 2.8, -0.2, 2.2, -2.6]
P = [-2.1, -0.4, 0.3, -0.2, 0.0, 1.6, 3.5, 0.4, 1.5, -2.5]
EXPECTED = {
    "Has0_acc_2": 0.8,
    "Has0_F1_score": 0.8,
    "Non0_acc_2": 0.75,
    "Non0_F1_score": 0.75,
    "Mult_acc_5": 0.7,
    "Mult_acc_7": 0.5,
    "MAE": 0.55,
    "Corr": 0.9495,
}


def reference_metrics(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Independent, MMSA-style reference written directly with sklearn / numpy (unrounded)."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    nz = np.array([i for i, e in enumerate(y) if e != 0])
    out = {
        "Has0_acc_2": accuracy_score(y >= 0, p >= 0),
        "Has0_F1_score": f1_score(y >= 0, p >= 0, average="weighted"),
        "Non0_acc_2": accuracy_score(y[nz] > 0, p[nz] > 0),
        "Non0_F1_score": f1_score(y[nz] > 0, p[nz] > 0, average="weighted"),
        "Mult_acc_5": np.sum(np.round(np.clip(p, -2, 2)) == np.round(np.clip(y, -2, 2))) / len(y),
        "Mult_acc_7": np.sum(np.round(np.clip(p, -3, 3)) == np.round(np.clip(y, -3, 3))) / len(y),
        "MAE": np.mean(np.absolute(p - y)),
        "Corr": np.corrcoef(p, y)[0][1],
    }
    return {k: float(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------------------------
# Parity fixture
# --------------------------------------------------------------------------------------------------------------------


def test_parity_fixture_rounded() -> None:
    got = msa_metrics(P, Y)
    assert tuple(got) == METRIC_KEYS
    assert got == EXPECTED  # exact after rounding to 4 decimals


def test_parity_fixture_unrounded() -> None:
    got = msa_metrics(P, Y, decimals=None)
    assert got["Corr"] == pytest.approx(0.949548, abs=1e-6)
    for key in METRIC_KEYS:
        if key != "Corr":
            assert got[key] == pytest.approx(EXPECTED[key], abs=1e-12)


def test_parity_fixture_details() -> None:
    """The fixture's edge cases: p = 0 (5th), ties to even (1.5 -> 2, -2.5 -> -2), clipping 3.5 -> 3."""
    p = np.asarray(P)
    y = np.asarray(Y)
    assert p[4] == 0.0 and y[4] > 0  # p = 0 with a positive label: right in Has0, wrong in Non0
    assert np.round(1.5) == 2.0 and np.round(-2.5) == -2.0
    # drop the p = 0 sample: Has0 loses a correct sample, Non0 loses a wrong one
    keep = np.arange(len(p)) != 4
    got = msa_metrics(p[keep], y[keep], decimals=None)
    assert got["Has0_acc_2"] == pytest.approx(7 / 9)
    assert got["Non0_acc_2"] == pytest.approx(6 / 7)


# --------------------------------------------------------------------------------------------------------------------
# p = 0, y = 0 conventions and degenerate inputs
# --------------------------------------------------------------------------------------------------------------------


def test_zero_prediction_conventions() -> None:
    # p = 0 is non-negative in Has0 ...
    assert msa_metrics([0.0, 0.0], [1.0, 2.0])["Has0_acc_2"] == 1.0
    assert msa_metrics([0.0, 0.0], [-1.0, -2.0])["Has0_acc_2"] == 0.0
    # ... and negative in Non0
    assert msa_metrics([0.0, 0.0], [1.0, 2.0])["Non0_acc_2"] == 0.0
    assert msa_metrics([0.0, 0.0], [-1.0, -2.0])["Non0_acc_2"] == 1.0
    # y = 0 is non-negative in Has0 and excluded from Non0
    got = msa_metrics([0.5, -1.0, 1.0], [0.0, -1.0, 1.0], decimals=None)
    assert got["Has0_acc_2"] == 1.0
    assert got["Non0_acc_2"] == 1.0
    got = msa_metrics([-0.5, -1.0, 1.0], [0.0, -1.0, 1.0], decimals=None)
    assert got["Has0_acc_2"] == pytest.approx(2 / 3)
    assert got["Non0_acc_2"] == 1.0


def test_all_zero_labels_give_nan_non0() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = msa_metrics([0.3, -0.2, 0.0], [0.0, 0.0, 0.0])
    assert math.isnan(got["Non0_acc_2"]) and math.isnan(got["Non0_F1_score"])
    assert math.isnan(got["Corr"])  # constant labels
    assert got["Has0_acc_2"] == pytest.approx(0.6667)


@pytest.mark.parametrize(
    "p, y",
    [
        ([0.5, 0.5, 0.5, 0.5], [-1.0, 0.0, 2.0, 3.0]),  # constant predictions
        ([-1.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]),  # constant labels
        ([1.0], [2.0]),  # a single sample
    ],
)
def test_constant_vector_gives_nan_corr_without_warnings(p: list[float], y: list[float]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning / UndefinedMetricWarning spam
        got = msa_metrics(p, y)
        unrounded = msa_metrics(p, y, decimals=None)
    assert math.isnan(got["Corr"]) and math.isnan(unrounded["Corr"])
    assert got["Corr"] != 0


def test_single_class_does_not_warn() -> None:
    """One class in the truth, both in the predictions: sklearn would warn; we must not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = msa_metrics([1.0, -1.0, 2.0], [1.0, 2.0, 3.0], decimals=None)
    assert got["Has0_acc_2"] == pytest.approx(2 / 3)
    assert got["Has0_F1_score"] == pytest.approx(0.8)  # only class 1 has support: F1_1 = 2*2/(2*2+0+1)


@pytest.mark.parametrize(
    "p, y, match",
    [
        ([1.0, 2.0], [1.0], "same length"),
        ([], [], "at least one"),
        ([1.0, float("nan")], [1.0, 2.0], "pred contains 1 non-finite"),
        ([1.0, 2.0], [float("inf"), 2.0], "label contains 1 non-finite"),
        (["a", "b"], [1.0, 2.0], "numeric"),
    ],
)
def test_invalid_inputs_raise(p: list, y: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        msa_metrics(p, y)


# --------------------------------------------------------------------------------------------------------------------
# Against an independent reference on random arrays
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 6, 7])
def test_matches_independent_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    # labels on MOSI's 1/3 grid plus continuous values; exact zeros; beyond +-3 in predictions
    y = np.round(rng.uniform(-3, 3, n) * 3) / 3
    y[rng.random(n) < 0.15] = 0.0
    y[: min(3, n)] = [-3.0, 3.0, 0.0][: min(3, n)]
    p = y + rng.normal(0, 1.2, n)
    p[rng.choice(n, size=6, replace=False)] = rng.integers(-4, 4, 6) + 0.5  # half-to-even ties
    p[rng.choice(n, size=4, replace=False)] *= 3.0  # some beyond +-3
    p[rng.choice(n, size=max(2, n // 10), replace=False)] = 0.0  # exact zero predictions
    p[0] = 4.2
    assert (y == 0).any() and (p == 0).any() and (np.abs(p) > 3).any()

    ref = reference_metrics(p, y)
    got = msa_metrics(p, y, decimals=None)
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    rounded = msa_metrics(p, y)
    for key in METRIC_KEYS:
        assert rounded[key] == float(np.round(ref[key], 4)), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_accepts_tensors(dtype: torch.dtype) -> None:
    pt = torch.tensor(P, dtype=dtype)
    yt = torch.tensor(Y, dtype=dtype)
    got = msa_metrics(pt, yt, decimals=None)
    ref = reference_metrics(pt.to(torch.float64).numpy(), yt.to(torch.float64).numpy())
    for key in METRIC_KEYS:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    if dtype == torch.float64:
        assert msa_metrics(pt, yt) == EXPECTED


def test_accepts_numpy_and_2d_inputs() -> None:
    assert msa_metrics(np.asarray(P, dtype=np.float32).reshape(-1, 1), np.asarray(Y).reshape(-1, 1)) == EXPECTED
    assert msa_metrics(torch.tensor(P).reshape(10, 1), torch.tensor(Y)) == EXPECTED


# --------------------------------------------------------------------------------------------------------------------
# Aggregation and selection
# --------------------------------------------------------------------------------------------------------------------


def test_aggregation_fixture() -> None:
    mean, std, n = aggregate([0.8, 0.75, 0.7])
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.0408248, abs=1e-7) and n == 3
    assert report_cell([0.8, 0.75, 0.7]) == (75.00, 4.08, 3)
    # ddof = 1 would give 5.00 -- we do not use it
    assert round(100 * float(np.std([0.8, 0.75, 0.7], ddof=1)), 2) == 5.00
    assert report_cell([0.8, 0.75, 0.7])[1] != 5.00


def test_aggregation_edge_cases() -> None:
    assert report_cell([0.5484]) == (54.84, 0.0, 1)
    mean, std, n = aggregate([0.8, float("nan")])
    assert math.isnan(mean) and math.isnan(std) and n == 2  # NaN propagates
    mean, std, n = aggregate([])
    assert math.isnan(mean) and math.isnan(std) and n == 0
    assert str(report_cell([-0.00001, 0.00001])[0]) == "0.0"  # never "-0.0"


def test_selection_value() -> None:
    metrics = msa_metrics(P, Y)
    assert selection_value(metrics, "mae") == 0.55
    assert selection_value(metrics, "acc2_mean") == pytest.approx((0.8 + 0.75) / 2)
    assert SELECTION_MODES == {"mae": "min", "acc2_mean": "max"}
    with pytest.raises(ValueError, match="acc2_mean.*mae"):
        selection_value(metrics, "corr")


# --------------------------------------------------------------------------------------------------------------------
# Online torchmetrics (logging only)
# --------------------------------------------------------------------------------------------------------------------


def test_online_metrics_agree_with_msa_metrics() -> None:
    rng = np.random.default_rng(11)
    y = np.round(rng.uniform(-3, 3, 257) * 3) / 3
    y[:40] = 0.0  # first batch: many zero labels
    p = y + rng.normal(0, 1, 257)
    p[::17] = 0.0
    ref = msa_metrics(p, y, decimals=None)

    online = OnlineMSAMetrics(prefix="valid/")
    for start in range(0, len(y), 32):
        online.update(torch.tensor(p[start : start + 32]), torch.tensor(y[start : start + 32]))
    out = {k: float(v) for k, v in online.compute().items()}
    assert set(out) == {"valid/MAE", "valid/Has0_acc_2", "valid/Non0_acc_2"}
    assert out["valid/MAE"] == pytest.approx(ref["MAE"], abs=1e-5)
    assert out["valid/Has0_acc_2"] == pytest.approx(ref["Has0_acc_2"], abs=1e-6)
    assert out["valid/Non0_acc_2"] == pytest.approx(ref["Non0_acc_2"], abs=1e-6)


def test_online_metrics_not_merged_into_one_compute_group() -> None:
    """A first batch without zeros makes Has0 and Non0 states equal; they must still diverge later."""
    online = OnlineMSAMetrics()
    online.update(torch.tensor([1.0, -1.0]), torch.tensor([1.0, -1.0]))
    online.update(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]))  # p = 0, y = 0
    out = {k: float(v) for k, v in online.compute().items()}
    assert out["Has0_acc_2"] == pytest.approx(4 / 4)
    assert out["Non0_acc_2"] == pytest.approx(2 / 3)
