"""Regression metrics of the realism regressor, with bootstrap confidence intervals.

NumPy only. Correlations follow scipy.stats: PLCC is Pearson's r, SRCC is
Pearson's r of average ranks (ties share their mean rank), KRCC is Kendall's
tau-b (tie-corrected), computed in O(n log n). Undefined values (fewer than two
pairs, a constant input) are NaN, never an exception.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

ArrayLike = Sequence[float] | np.ndarray
Metric = Callable[[np.ndarray, np.ndarray], float]


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
    """Pearson's linear correlation (PLCC); NaN for n < 2 or a constant input."""
    a, b = _pair(y_true, y_pred)
    return _pearson(a, b)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return math.nan
    if (a == a[0]).all() or (b == b[0]).all():  # constant input: correlation undefined (as scipy)
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    na, nb = np.sqrt(np.dot(da, da)), np.sqrt(np.dot(db, db))
    if na == 0 or nb == 0:
        return math.nan
    r = float(np.dot(da / na, db / nb))
    return max(-1.0, min(1.0, r))


def rankdata(a: ArrayLike) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their ranks), as ``scipy.stats.rankdata``."""
    a = np.asarray(a).ravel()
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty(sorter.size, dtype=np.intp)
    inv[sorter] = np.arange(sorter.size, dtype=np.intp)
    s = a[sorter]
    obs = np.r_[True, s[1:] != s[:-1]]
    dense = obs.cumsum()[inv]
    count = np.r_[np.nonzero(obs)[0], len(obs)]
    return 0.5 * (count[dense] + count[dense - 1] + 1)


def spearman(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Spearman's rank correlation (SRCC); NaN for n < 2 or a constant input."""
    a, b = _pair(y_true, y_pred)
    if a.size < 2:
        return math.nan
    return _pearson(rankdata(a), rankdata(b))


def _dense_rank(a: np.ndarray) -> np.ndarray:
    return np.unique(a, return_inverse=True)[1].ravel().astype(np.int64)


def _tie_pairs(codes: np.ndarray) -> int:
    counts = np.bincount(codes)
    return int((counts * (counts - 1) // 2).sum())


def _count_inversions(v: np.ndarray) -> int:
    """Number of pairs i < j with v[i] > v[j], for non-negative integers ``v``, in O(n log^2 n).

    Each inverted pair is counted at the highest bit where its values differ:
    among elements that agree on the bits above ``b``, count the ones with
    bit ``b`` set that precede each element with bit ``b`` clear.
    """
    n = v.size
    if n < 2:
        return 0
    total = 0
    positions = np.arange(n)
    for b in range(int(v.max()).bit_length()):
        prefix = v >> (b + 1)
        bit = (v >> b) & 1
        order = np.argsort(prefix, kind="stable")  # groups by prefix, index order inside a group
        p, bt = prefix[order], bit[order]
        ones = np.cumsum(bt)
        start = np.maximum.accumulate(np.where(np.r_[True, p[1:] != p[:-1]], positions, 0))
        before = ones - bt - (ones[start] - bt[start])  # ones earlier in the same group
        total += int(before[bt == 0].sum())
    return total


def kendall(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Kendall's tau-b (KRCC), as ``scipy.stats.kendalltau``'s default; NaN for n < 2 or a constant input."""
    a, b = _pair(y_true, y_pred)
    n = a.size
    if n < 2:
        return math.nan
    x, y = _dense_rank(a), _dense_rank(b)
    order = np.lexsort((y, x))  # by x, then y
    x, y = x[order], y[order]
    tot = n * (n - 1) // 2
    xtie = _tie_pairs(x)
    ytie = _tie_pairs(y)
    ntie = _tie_pairs(x * (int(y.max()) + 1) + y)  # pairs tied in both
    if xtie == tot or ytie == tot:
        return math.nan
    dis = _count_inversions(y)  # x-tied pairs are sorted by y, so never counted
    con_minus_dis = tot - xtie - ytie + ntie - 2 * dis
    tau = con_minus_dis / math.sqrt(tot - xtie) / math.sqrt(tot - ytie)
    return max(-1.0, min(1.0, float(tau)))


METRICS: dict[str, Metric] = {"mae": mae, "rmse": rmse, "plcc": pearson, "srcc": spearman, "krcc": kendall}


def bootstrap_ci(
    metric: Metric, y_true: ArrayLike, y_pred: ArrayLike, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` over ``n`` resamples of the pairs.

    The resamples depend on ``(seed, len(y_true))`` only, so every metric of
    one report sees the same resamples. Resamples where the metric is
    undefined (all tied) are left out; ``(nan, nan)`` when none is defined.
    """
    a, b = _pair(y_true, y_pred)
    if a.size < 2 or n < 1:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    stats = np.empty(n)
    for i in range(n):
        idx = rng.integers(0, a.size, a.size)
        stats[i] = metric(a[idx], b[idx])
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi))


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
