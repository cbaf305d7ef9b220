"""Metrics of the regressor and of the classifier, with bootstrap confidence intervals.

Correlations are scipy.stats': PLCC is ``pearsonr``, SRCC ``spearmanr``
(Pearson's r of average ranks; ties share their mean rank), KRCC
``kendalltau`` (tau-b, tie-corrected). Undefined values (fewer than two
pairs, a constant input) are NaN, never an exception or a warning. The
bootstrap computes a metric on many resamples at once (``axis=1``).

Classification metrics take the true class indices ``y`` ``(n,)`` and the
predicted probabilities ``P`` ``(n, K)`` (rows sum to 1); the predicted class
is ``argmax P`` (ties: the lowest index). Each is defined on many resamples
at once (``(r, n)`` and ``(r, n, K)``) and equals scikit-learn's on one; see
:func:`classification_report`.
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
    rows = _ROWS.get(metric) or getattr(metric, "rows", None) or _one_by_one(metric)
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


# ---------------------------------------------------------------------------
# Classification: y (n,) class indices, P (n, K) probabilities; row forms on (r, n) and (r, n, K)

#: Bins of the expected calibration error: equal-width bins ((b-1)/15, b/15] of the top-class
#: confidence, as Guo et al. 2017 (ICML), "On Calibration of Modern Neural Networks".
ECE_BINS = 15


class ClassMetric:
    """A classification metric: ``metric(y (n,), P (n, K)) -> float`` and its row form ``rows(Y, PP)``.

    ``rows`` takes resamples ``Y`` ``(r, n)`` and ``PP`` ``(r, n, K)`` and gives ``(r,)``; NaN
    where the metric is undefined on a resample (e.g. a class missing), which the bootstrap leaves out.
    """

    def __init__(self, name: str, rows: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
        self.name, self.rows = name, rows

    def __call__(self, y: np.ndarray, p: np.ndarray) -> float:
        y, p = _labels_probs(y, p)
        with _quiet():
            return float(self.rows(y[None], p[None])[0]) if y.size else math.nan

    def __repr__(self) -> str:
        return f"ClassMetric({self.name})"


def _labels_probs(y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``y`` as int64 ``(n,)`` and ``P`` as float64 ``(n, K)``, checked."""
    y = np.asarray(y).ravel()
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"expected probabilities ({y.size}, K), got {p.shape}")
    if y.size and (np.any(y != np.round(y)) or y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"class indices must be integers in [0, {p.shape[1]})")
    return y.astype(np.int64), p


def _counts(Y: np.ndarray, PP: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: true positives, predicted positives and support of class ``j``."""
    pred = PP.argmax(axis=-1) == j
    true = Y == j
    return (pred & true).sum(axis=1), pred.sum(axis=1), true.sum(axis=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, NaN where ``den`` is 0 (precision with nothing predicted, recall of an absent class)."""
    with _quiet():
        return np.where(den > 0, num / np.where(den > 0, den, 1), math.nan)


def _accuracy_rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
    return (PP.argmax(axis=-1) == Y).mean(axis=1)


def _precision_rows(j: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
        tp, pp, _ = _counts(Y, PP, j)
        return _ratio(tp, pp)
    return rows


def _recall_rows(j: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
        tp, _, sup = _counts(Y, PP, j)
        return _ratio(tp, sup)
    return rows


def _f1_rows(j: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    def rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
        tp, pp, sup = _counts(Y, PP, j)
        return _ratio(2 * tp, pp + sup)  # 2 tp / (2 tp + fp + fn)
    return rows


def _balanced_accuracy_rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
    """Mean recall over the classes present in the row's ``Y`` (scikit-learn's definition)."""
    recalls = np.stack([_recall_rows(j)(Y, PP) for j in range(PP.shape[-1])], axis=1)
    with _quiet():
        return np.nanmean(recalls, axis=1)


def _auc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC-AUC per row (Mann-Whitney U with mid-ranks for ties); NaN without a positive or a negative."""
    ranks = scipy.stats.rankdata(scores, axis=1)
    n_pos = positive.sum(axis=1)
    n_neg = positive.shape[1] - n_pos
    u = (ranks * positive).sum(axis=1) - n_pos * (n_pos + 1) / 2
    return _ratio(u, n_pos * n_neg)


def _roc_auc_rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
    """Two classes: the AUC of class 1's probability; more: the macro mean of one-vs-rest AUCs (NaN if any is)."""
    k = PP.shape[-1]
    if k == 2:
        return _auc_rows(PP[..., 1], Y == 1)
    return np.mean([_auc_rows(PP[..., j], Y == j) for j in range(k)], axis=0)


def _ap_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Average precision per row, scikit-learn's step-wise sum: ``sum_n (R_n - R_{n-1}) P_n`` over thresholds.

    Every positive contributes ``precision / n_pos`` at the end of its group of tied scores. NaN without a positive.
    """
    order = np.argsort(-scores, axis=1, kind="stable")
    s = np.take_along_axis(scores, order, axis=1)
    pos = np.take_along_axis(positive, order, axis=1)
    n = s.shape[1]
    precision = np.cumsum(pos, axis=1) / np.arange(1, n + 1)
    last = np.ones_like(pos, dtype=bool)
    last[:, :-1] = s[:, :-1] != s[:, 1:]
    idx = np.where(last, np.arange(n), n - 1)
    group_end = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]  # last index of each position's tie group
    return _ratio((pos * np.take_along_axis(precision, group_end, axis=1)).sum(axis=1), pos.sum(axis=1))


def _average_precision_rows(positive_class: int | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """AP of ``positive_class``'s probability, or (``None``) the macro mean of one-vs-rest APs."""
    def rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
        if positive_class is not None:
            return _ap_rows(PP[..., positive_class], Y == positive_class)
        return np.mean([_ap_rows(PP[..., j], Y == j) for j in range(PP.shape[-1])], axis=0)
    return rows


def _log_loss_rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
    """Mean ``-log p_true`` (probabilities clipped below at float64's epsilon, as scikit-learn)."""
    p_true = np.take_along_axis(PP, Y[..., None], axis=-1)[..., 0]
    return -np.log(np.clip(p_true, np.finfo(np.float64).eps, 1.0)).mean(axis=1)


def _ece_rows(Y: np.ndarray, PP: np.ndarray) -> np.ndarray:
    """Expected calibration error: ``sum_b n_b / n |accuracy_b - confidence_b|`` over :data:`ECE_BINS` bins.

    Bin ``b`` (1-based) holds the top-class confidences in ``((b-1)/15, b/15]`` (a confidence of 0 in bin 1).
    """
    r, n = Y.shape
    conf = PP.max(axis=-1)
    gap = (PP.argmax(axis=-1) == Y) - conf  # per image: correct - confidence
    bins = np.clip(np.ceil(conf * ECE_BINS).astype(np.int64) - 1, 0, ECE_BINS - 1)
    flat = (np.arange(r)[:, None] * ECE_BINS + bins).ravel()
    per_bin = np.bincount(flat, weights=gap.ravel(), minlength=r * ECE_BINS).reshape(r, ECE_BINS)
    return np.abs(per_bin).sum(axis=1) / n


accuracy = ClassMetric("accuracy", _accuracy_rows)
balanced_accuracy = ClassMetric("balanced_accuracy", _balanced_accuracy_rows)
roc_auc = ClassMetric("roc_auc", _roc_auc_rows)
log_loss = ClassMetric("log_loss", _log_loss_rows)
expected_calibration_error = ClassMetric("ece", _ece_rows)


def precision(j: int) -> ClassMetric:
    """Precision of class ``j`` (NaN when nothing is predicted as ``j``)."""
    return ClassMetric(f"precision_{j}", _precision_rows(j))


def recall(j: int) -> ClassMetric:
    """Recall of class ``j`` (NaN when ``j`` is absent)."""
    return ClassMetric(f"recall_{j}", _recall_rows(j))


def f1(j: int) -> ClassMetric:
    """F1 of class ``j``, ``2 tp / (2 tp + fp + fn)`` (NaN when ``j`` is neither present nor predicted)."""
    return ClassMetric(f"f1_{j}", _f1_rows(j))


def average_precision(positive_class: int | None = None) -> ClassMetric:
    """AP of ``positive_class`` (binary), or ``None``: the macro mean over classes one-vs-rest."""
    return ClassMetric(f"average_precision_{positive_class}", _average_precision_rows(positive_class))


def confusion_matrix(y: ArrayLike, p: ArrayLike) -> np.ndarray:
    """Counts ``(K, K)``: row = true class, column = predicted class."""
    y, p = _labels_probs(y, p)
    k = p.shape[1]
    return np.bincount(y * k + p.argmax(axis=1), minlength=k * k).reshape(k, k)


def class_bootstrap_ci(
    metric: ClassMetric, y: ArrayLike, p: ArrayLike, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, int]:
    """Percentile interval of ``metric`` over ``n`` resamples of the images: ``(lo, hi, resamples kept)``.

    The resamples are :func:`bootstrap_ci`'s (they depend on ``(seed, n images)`` only). A resample on
    which the metric is undefined (a class it needs is missing: per-class recall, AUC, AP) is left out
    and not counted; ``(nan, nan, 0)`` when none is defined.
    """
    y, p = _labels_probs(y, p)
    if y.size < 2 or n < 1:
        return (math.nan, math.nan, 0)
    with _quiet():
        stats = _resampled(metric, y, p, n, np.random.default_rng(seed))
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return (math.nan, math.nan, 0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(stats, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi), int(stats.size))


def _with_ci(metric: ClassMetric, y: np.ndarray, p: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi, kept = class_bootstrap_ci(metric, y, p, n_boot, seed)
    return {"value": _none_if_nan(metric(y, p)), "ci95": [_none_if_nan(lo), _none_if_nan(hi)],
            "resamples": kept}


def classification_report(
    y_true: ArrayLike, probs: ArrayLike, classes: Sequence[str], explained: int, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Every classification metric with its bootstrap 95 % interval (``{"value", "ci95", "resamples"}``).

    Top level: ``accuracy``, ``balanced_accuracy``, ``roc_auc`` (two classes: of class 1, the same as of the
    other; more: one-vs-rest macro), ``average_precision`` (two classes: with the ``explained`` class as the
    positive one; more: one-vs-rest macro), ``log_loss``, ``ece``; ``per_class`` (precision, recall, F1,
    support per class name), ``confusion_matrix`` (rows true, columns predicted, in ``classes`` order),
    ``n``. Rows with a NaN label are dropped first. Undefined values are ``None``.
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).reshape(len(y), len(classes))
    keep = np.isfinite(y)
    y, p = y[keep].astype(np.int64), p[keep]
    positive = explained if len(classes) == 2 else None
    report: dict[str, Any] = {
        name: _with_ci(m, y, p, n_boot, seed) for name, m in (
            ("accuracy", accuracy), ("balanced_accuracy", balanced_accuracy), ("roc_auc", roc_auc),
            ("average_precision", average_precision(positive)), ("log_loss", log_loss),
            ("ece", expected_calibration_error))
    }
    report["per_class"] = {
        str(c): {"precision": _with_ci(precision(j), y, p, n_boot, seed), "recall": _with_ci(recall(j), y, p, n_boot, seed),
                 "f1": _with_ci(f1(j), y, p, n_boot, seed), "support": int((y == j).sum())}
        for j, c in enumerate(classes)
    }
    report["confusion_matrix"] = {"classes": [str(c) for c in classes],
                                  "counts": confusion_matrix(y, p).tolist() if y.size else []}
    report["n"] = int(y.size)
    report["ece_bins"] = ECE_BINS
    report["average_precision_positive"] = str(classes[positive]) if positive is not None else "macro (one-vs-rest)"
    return report
