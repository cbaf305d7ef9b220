"""Regression metrics: hand-computed values, scipy.stats as the oracle (ties included), degenerate inputs."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import scipy.stats

from ais.metrics import (
    METRICS,
    bootstrap_ci,
    kendall,
    mae,
    pearson,
    regression_report,
    rmse,
    spearman,
)


def test_hand_computed_values() -> None:
    y_true, y_pred = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    assert mae(y_true, y_pred) == pytest.approx(2 / 3)
    assert rmse(y_true, y_pred) == pytest.approx(math.sqrt(2 / 3))
    assert pearson(y_true, y_pred) == pytest.approx(0.5)
    assert spearman(y_true, y_pred) == pytest.approx(0.5)
    # 2 concordant pairs (1,2), (1,3); 1 discordant (2,3): (2 - 1) / 3
    assert kendall(y_true, y_pred) == pytest.approx(1 / 3)
    # tau-b with a tie in y_pred: concordant 2, discordant 0, ties in y only 1 pair
    # (2 - 0) / sqrt(3 * (3 - 1))
    assert kendall([1, 2, 3], [1, 2, 2]) == pytest.approx(2 / math.sqrt(6))


def _random_cases():
    rng = np.random.default_rng(12345)
    for n in (2, 3, 4, 7, 30, 200):
        for trial in range(6):
            if trial % 3 == 0:  # heavy ties in both
                a = rng.integers(0, 4, n).astype(float)
                b = a + rng.integers(0, 3, n)
            elif trial % 3 == 1:  # ties in one only, negative relation
                a = rng.normal(size=n)
                b = -np.round(a * 2) + rng.integers(0, 2, n)
            else:  # continuous
                a = rng.normal(size=n)
                b = 0.3 * a + rng.normal(size=n)
            yield n, trial, a, b


@pytest.mark.parametrize(("n", "trial", "a", "b"), list(_random_cases()))
def test_agrees_with_scipy(n: int, trial: int, a: np.ndarray, b: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant resamples; we compare NaN to NaN
        expected = {
            "plcc": scipy.stats.pearsonr(a, b)[0] if n >= 2 else math.nan,
            "srcc": scipy.stats.spearmanr(a, b)[0],
            "krcc": scipy.stats.kendalltau(a, b)[0],  # tau-b by default
        }
    got = {"plcc": pearson(a, b), "srcc": spearman(a, b), "krcc": kendall(a, b)}
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key
    assert mae(a, b) == pytest.approx(np.mean(np.abs(a - b)))
    assert rmse(a, b) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)))


@pytest.mark.parametrize("name", sorted(METRICS))
def test_bootstrap_over_all_resamples_at_once_matches_one_call_each(name: str) -> None:
    """The row-wise (vectorised) bootstrap of a metric gives the interval of calling it on each resample."""
    rng = np.random.default_rng(5)
    for a, b in [(rng.normal(size=90), rng.normal(size=90)), (rng.integers(0, 3, 7).astype(float), np.arange(7.0))]:
        fn = METRICS[name]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fast = bootstrap_ci(fn, a, b, n=300, seed=2)
        slow = bootstrap_ci(lambda x, y: fn(x, y), a, b, n=300, seed=2)  # not a known metric: one call each
        assert fast == pytest.approx(slow, abs=1e-12), name


def test_nan_inputs_give_nan() -> None:
    for name in ("plcc", "srcc", "krcc"):
        assert math.isnan(METRICS[name]([1.0, 2.0, math.nan], [1.0, 3.0, 2.0])), name


@pytest.mark.parametrize(
    ("y_true", "y_pred"),
    [([], []), ([1.0], [2.0]), ([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])],
)
def test_degenerate_inputs_give_nan_without_warnings(y_true, y_pred) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("plcc", "srcc", "krcc"):
            assert math.isnan(METRICS[name](y_true, y_pred)), name
        assert bootstrap_ci(kendall, y_true, y_pred, n=50)[0] is not None
        report = regression_report(y_true, y_pred, n_boot=100, seed=0)
    assert report["plcc"]["value"] is None
    json.dumps(report, allow_nan=False)  # undefined values are null, the report stays valid JSON


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="3 values"):
        mae([1, 2, 3], [1, 2])


def test_bootstrap_ci() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=80)
    b = a + 0.5 * rng.normal(size=80)
    lo, hi = bootstrap_ci(pearson, a, b, n=500, seed=7)
    assert lo < pearson(a, b) < hi
    assert 0.6 < lo < hi <= 1.0
    assert (lo, hi) == bootstrap_ci(pearson, a, b, n=500, seed=7)  # seeded
    assert (lo, hi) != bootstrap_ci(pearson, a, b, n=500, seed=8)
    assert bootstrap_ci(mae, a, a, n=100) == (0.0, 0.0)
    # The percentile interval of the resampled statistic, resamples drawn as documented.
    gen = np.random.default_rng(7)
    stats = []
    for _ in range(500):
        idx = gen.integers(0, 80, 80)
        stats.append(np.mean(np.abs(a[idx] - b[idx])))
    assert bootstrap_ci(mae, a, b, n=500, seed=7) == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))


def test_regression_report() -> None:
    rng = np.random.default_rng(4)
    a = rng.normal(size=40)
    b = a + rng.normal(size=40)
    a_missing = np.r_[a, np.nan]
    b_missing = np.r_[b, 1.0]
    report = regression_report(a_missing, b_missing, n_boot=200, seed=1)
    assert set(report) == {"mae", "rmse", "plcc", "srcc", "krcc", "n"}
    assert report["n"] == 40  # the pair with a missing score is dropped
    for name in ("mae", "rmse", "plcc", "srcc", "krcc"):
        value, (lo, hi) = report[name]["value"], report[name]["ci95"]
        assert value == pytest.approx(METRICS[name](a, b))
        assert lo <= hi
    json.dumps(report, allow_nan=False)
