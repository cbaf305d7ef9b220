"""Regression metrics of the realism regressor, with bootstrap confidence intervals.

Correlations are scipy.stats': PLCC is ``pearsonr``, SRCC ``spearmanr``
(Pearson's r of average ranks; ties share their mean rank), KRCC
``kendalltau`` (tau-b, tie-corrected). Undefined values (fewer than two
pairs, a constant input) are NaN, never an exception or a warning. The
bootstrap computes a metric on many resamples at once (``axis=1``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import scipy.stats

ArrayLike = Sequence[float] | np.ndarray
Metric = Callable[[np.ndarray, np.ndarray], float]
RowMetric = Callable[[np.ndarray, np.ndarray], np.ndarray]  # one value per row of the (resamples, pairs) arrays


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y_true, dtype=np.float64).ravel()
    b = np.asarray(y_pred, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y_true has {a.size} values, y_pred {b.size}")
    return a, b


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error (NaN for no values)."""
    a, b = _pair(y_true, y_pred)
    return float(np.mean(np.abs(a - b))) if a.size else math.nan


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error (NaN for no values)."""
    a, b = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else math.nan


def pearson(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Pearson's linear correlation (PLCC), ``scipy.stats.pearsonr``; NaN for n < 2 or a constant input."""
    a, b = _pair(y_true, y_pred)
    return _correlation(scipy.stats.pearsonr, a, b)


def spearman(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Spearman's rank correlation (SRCC), ``scipy.stats.spearmanr``; NaN for n < 2 or a constant input."""
    a, b = _pair(y_true, y_pred)
    return _correlation(scipy.stats.spearmanr, a, b)


def kendall(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Kendall's tau-b (KRCC), ``scipy.stats.kendalltau``'s default; NaN for n < 2 or a constant input."""
    a, b = _pair(y_true, y_pred)
    return _correlation(scipy.stats.kendalltau, a, b)


def _correlation(fn: Callable, a: np.ndarray, b: np.ndarray) -> float:
    """``fn(a, b)``'s statistic clipped to [-1, 1]; NaN, and no warning, where it is undefined."""
    if not _defined(a[None], b[None])[0]:
        return math.nan
    with _quiet():
        return float(_clip(fn(a, b).statistic))


def _defined(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row of ``a`` and ``b``: at least two pairs and neither row constant (else a correlation is undefined)."""
    if a.shape[1] < 2:
        return np.zeros(len(a), dtype=bool)
    return ~(a == a[:, :1]).all(axis=1) & ~(b == b[:, :1]).all(axis=1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warning (scipy's near-constant input, NumPy's invalid values) leaks out of a metric."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def _clip(r: Any) -> Any:
    return np.clip(r, -1.0, 1.0)  # rounding can leave |r| a hair above 1; NaN stays NaN


METRICS: dict[str, Metric] = {"mae": mae, "rmse": rmse, "plcc": pearson, "srcc": spearman, "krcc": kendall}


# ---------------------------------------------------------------------------
# The same metrics over many resamples at once (rows), for the bootstrap


def _correlation_rows(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> RowMetric:
    """``fn`` per row, clipped to [-1, 1]; NaN, and no warning, for rows where it is undefined."""

    def rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.full(len(a), math.nan)
        ok = _defined(a, b)
        if ok.any():
            with _quiet():
                out[ok] = _clip(fn(a[ok], b[ok]))
        return out

    return rows


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return scipy.stats.pearsonr(a, b, axis=1).statistic


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # spearmanr's own definition (Pearson's r of average ranks), row by row; spearmanr of 2-D input is a matrix.
    return _pearson_rows(scipy.stats.rankdata(a, axis=1), scipy.stats.rankdata(b, axis=1))


def _kendall_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return scipy.stats.kendalltau(a, b, axis=1).statistic


_ROWS: dict[Metric, RowMetric] = {
    mae: lambda a, b: np.mean(np.abs(a - b), axis=1),
    rmse: lambda a, b: np.sqrt(np.mean((a - b) ** 2, axis=1)),
    pearson: _correlation_rows(_pearson_rows),
    spearman: _correlation_rows(_spearman_rows),
    kendall: _correlation_rows(_kendall_rows),
}
_BLOCK = 1 << 20  # values per block of resamples: bounds the memory of the bootstrap


def bootstrap_ci(
    metric: Metric, y_true: ArrayLike, y_pred: ArrayLike, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over ``n`` resamples of the pairs.

    The resamples depend on ``(seed, len(y_true))`` only, so every metric of
    one report sees the same resamples. Resamples where the metric is
    undefined (all tied) are left out; ``(nan, nan)`` when none is defined.
    The metrics of :data:`METRICS` are computed on blocks of resamples at
    once (the values of one call per resample, to rounding; much faster).
    """
    a, b = _pair(y_true, y_pred)
    if a.size < 2 or n < 1:
        return (math.nan, math.nan)
    stats = _resampled(metric, a, b, n, np.random.default_rng(seed))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi))


def _resampled(metric: Metric, a: np.ndarray, b: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``metric`` on ``n`` resamples of the pairs; resample ``i`` is the ``i``-th ``rng.integers(0, m, m)``."""
    rows = _ROWS.get(metric) or _one_by_one(metric)
    stats = np.empty(n)
    block = max(1, _BLOCK // a.size)
    for start in range(0, n, block):
        idx = np.stack([rng.integers(0, a.size, a.size) for _ in range(min(block, n - start))])
        stats[start: start + len(idx)] = rows(a[idx], b[idx])
    return stats


def _one_by_one(metric: Metric) -> RowMetric:
    """A metric without a row form, called once per row."""
    return lambda a, b: np.array([metric(x, y) for x, y in zip(a, b)], dtype=np.float64)


def regression_report(
    y_true: ArrayLike, y_pred: ArrayLike, n_boot: int = 1000, seed: int = 0
) -> dict[str, object]:
    """``{"mae"|"rmse"|"plcc"|"srcc"|"krcc": {"value": v, "ci95": [lo, hi]}, "n": n}``.

    Pairs with a missing (NaN) value are dropped first; ``n`` counts the rest.
    Undefined values are ``None`` so the report is valid JSON.
    """
    a, b = _pair(y_true, y_pred)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    report: dict[str, object] = {}
    for name, fn in METRICS.items():
        lo, hi = bootstrap_ci(fn, a, b, n=n_boot, seed=seed)
        value = fn(a, b) if a.size else math.nan
        report[name] = {"value": _none_if_nan(value), "ci95": [_none_if_nan(lo), _none_if_nan(hi)]}
    report["n"] = int(a.size)
    return report


def _none_if_nan(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
