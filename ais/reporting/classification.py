"""The report of a classification run: curves, confusion matrix, reliability, the four outcome galleries.

Everything here reads ``predictions.parquet`` of a classification run
(``y_true`` the true class index, ``pred_class``, ``prob_0`` .. ``prob_{K-1}``
in ``data.classes`` order) and works on its labelled test rows. The
explained class (``explain.class``, default the last) is the *positive*
class: the ROC and precision-recall curves rank the test images by its
probability (one-vs-rest), a true positive is an image of that class
predicted as it, a false positive one of another class predicted as it,
and so on. With more than two classes every class gets its one-vs-rest
curve.

- :func:`roc_points`, :func:`pr_points`: the curves' points, as
  ``sklearn.metrics.roc_curve(drop_intermediate=False)`` and
  ``precision_recall_curve`` compute them (the tests compare);
- :func:`confusion`, :func:`reliability_bins`: the confusion matrix and the
  reliability diagram's bins (the explained class's probability, 10 equal
  bins, against the fraction of images of that class);
- :func:`outcome_selection`: the images of each outcome shown with their panels;
- :func:`classification_block` (``summary.json``'s ``classification``),
  :func:`draw_classification_figures`, :func:`classification_section` (the page);
- :func:`explained_class_localization`: ``explained_class_auc`` of
  ``localization.json`` from the per-image figures (demo masks).

Words come from the task (:class:`ais.tasks.TaskWords`) and the class names.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ais.reporting.markup import fmt, img, table
from ais.tasks import TaskWords

logger = logging.getLogger(__name__)

#: The outcome galleries, in the page's order: (key, title).
OUTCOMES = (("tp", "true positives"), ("fp", "false positives"), ("fn", "false negatives"), ("tn", "true negatives"))
#: Equal-width bins of the reliability diagram.
RELIABILITY_BINS = 10
#: Images shown per outcome gallery.
N_OUTCOME = 3


@dataclass(frozen=True)
class ClassSetup:
    """The classes in ``data.classes`` order and the explained (positive) class."""

    classes: tuple[str, ...]
    explained: str

    @property
    def index(self) -> int:
        return self.classes.index(self.explained)


def class_setup(config: Mapping[str, Any]) -> ClassSetup | None:
    """The classes and explained class of a classification run's config; ``None`` for another task."""
    if (config.get("model") or {}).get("task") != "classification":
        return None
    classes = tuple(str(c) for c in ((config.get("data") or {}).get("classes") or ()))
    if len(classes) < 2:
        raise ValueError(f"data.classes must name at least two classes for a classification report; got {classes}")
    explained = (config.get("explain") or {}).get("class") or classes[-1]
    if explained not in classes:
        raise ValueError(f"explain.class {explained!r} is not one of data.classes {list(classes)}")
    return ClassSetup(classes, str(explained))


def labelled_test(predictions: pd.DataFrame) -> pd.DataFrame:
    """The labelled test rows of ``predictions`` (``y_true`` not null)."""
    return predictions[(predictions["split"] == "test") & predictions["y_true"].notna()]


def probabilities(predictions: pd.DataFrame, n_classes: int) -> np.ndarray:
    """``prob_0`` .. ``prob_{K-1}`` as an ``(N, K)`` float64 array; a missing column is an error naming it."""
    names = [f"prob_{k}" for k in range(n_classes)]
    missing = [n for n in names if n not in predictions.columns]
    if missing:
        raise ValueError(f"predictions.parquet lacks {missing}: not the predictions of a {n_classes}-class model")
    return predictions[names].to_numpy(np.float64)


# --------------------------------------------------------------------------- curves and tables


def _binary_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false and true positives at each distinct score, highest first, and those scores."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    if positive.shape != score.shape or positive.ndim != 1:
        raise ValueError(f"labels {positive.shape} and scores {score.shape} must be equal-length vectors")
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]  # the last row of each distinct score
    tps = np.cumsum(positive, dtype=np.float64)[last]
    fps = 1.0 + last - tps
    return fps, tps, score[last]


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)`` of ``score (N,)`` for ``positive (N,)`` bool, from (0, 0).

    Every distinct score is a threshold (``score >= t`` called positive); the
    first threshold is ``inf``. NaN rates where a class is absent.
    """
    fps, tps, thresholds = _binary_curve(positive, score)
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    with np.errstate(divide="ignore", invalid="ignore"):
        return fps / fps[-1], tps / tps[-1], np.r_[np.inf, thresholds]


def pr_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve ``(precision, recall, thresholds)``, recall decreasing, ending at (1, 0).

    ``thresholds`` (one fewer than the points) increase; precision is 0 where
    nothing is called positive; recall is 1 throughout without positives.
    """
    fps, tps, thresholds = _binary_curve(positive, score)
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called != 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def area(x: np.ndarray, y: np.ndarray) -> float | None:
    """Trapezoidal area under ``y(x)`` (``None`` when undefined)."""
    if len(x) < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float | None:
    """Step-wise average precision ``sum (R_n - R_{n+1}) P_n`` of :func:`pr_points`' output."""
    if len(recall) < 2 or not np.all(np.isfinite(recall)):
        return None
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(K, K)`` int64 counts: row = true class, column = predicted class."""
    t, p = np.asarray(y_true).astype(np.int64), np.asarray(y_pred).astype(np.int64)
    bad = (t < 0) | (t >= n_classes) | (p < 0) | (p >= n_classes)
    if bad.any():
        raise ValueError(f"class index out of 0..{n_classes - 1} at row {int(np.flatnonzero(bad)[0])}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def reliability_bins(positive: np.ndarray, prob: np.ndarray, n_bins: int = RELIABILITY_BINS) -> pd.DataFrame:
    """Per equal-width bin of ``prob (N,)`` in [0, 1]: ``lo``, ``hi``, ``n``, mean ``prob``, ``frequency`` of positives.

    Bin ``b`` holds ``lo <= p < hi`` (the last also ``p == 1``); empty bins
    have NaN means. ``gap`` weighted by ``n / N`` sums to the expected
    calibration error of the explained class's probability.
    """
    prob = np.asarray(prob, dtype=np.float64)
    positive = np.asarray(positive, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.floor(prob * n_bins).astype(np.int64), 0, n_bins - 1)
    n = np.bincount(which, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(which, prob, minlength=n_bins) / n
        frequency = np.bincount(which, positive, minlength=n_bins) / n
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "n": n.astype(np.int64), "prob": mean_prob,
                         "frequency": frequency, "gap": np.abs(mean_prob - frequency)})


def outcome_selection(test: pd.DataFrame, setup: ClassSetup, shown: Sequence[str] | None = None,
                      n: int = N_OUTCOME) -> dict[str, list[str]]:
    """Up to ``n`` image ids per outcome (``tp``, ``fp``, ``fn``, ``tn``) of the explained class.

    ``test`` holds ``image_id``, ``y_true``, ``pred_class`` and
    ``prob_<explained>``; with ``shown`` (images that have panels) only those
    are picked. Positives (tp, fp) are the most confident first (highest
    probability of the explained class), negatives (fn, tn) the lowest
    first, so the false ones are the most confidently wrong; ties by id.
    """
    rows = test if shown is None else test[test["image_id"].isin(list(shown))]
    truth = rows["y_true"].to_numpy(np.float64) == setup.index
    called = rows["pred_class"].to_numpy(np.int64) == setup.index
    prob = rows[f"prob_{setup.index}"].to_numpy(np.float64)
    out = {}
    for key, mask, descending in (("tp", truth & called, True), ("fp", ~truth & called, True),
                                  ("fn", truth & ~called, False), ("tn", ~truth & ~called, False)):
        part = pd.DataFrame({"image_id": rows["image_id"].to_numpy()[mask], "key": -prob[mask] if descending
                             else prob[mask]})
        out[key] = part.sort_values(["key", "image_id"], kind="mergesort")["image_id"].astype(str).head(n).tolist()
    return out


# --------------------------------------------------------------------------- summary.json


def classification_block(predictions: pd.DataFrame, setup: ClassSetup,
                         shown: Sequence[str] | None = None) -> dict[str, Any]:
    """``summary.json``'s ``classification``: per-class curves' areas, confusion matrix, reliability, outcomes.

    ``shown`` are the images with panels (the outcome galleries pick among them).
    """
    test = labelled_test(predictions)
    k = len(setup.classes)
    probs = probabilities(test, k)
    y = test["y_true"].to_numpy(np.float64).astype(np.int64)
    curves = {}
    for c in curve_classes(setup):
        positive = y == c
        fpr, tpr, _ = roc_points(positive, probs[:, c])
        precision, recall, _ = pr_points(positive, probs[:, c])
        curves[setup.classes[c]] = {"n_positive": int(positive.sum()), "n_negative": int((~positive).sum()),
                                    "roc_auc": area(fpr, tpr) if positive.any() and (~positive).any() else None,
                                    "average_precision": average_precision(precision, recall) if positive.any()
                                    else None}
    bins = reliability_bins(y == setup.index, probs[:, setup.index])
    shown_bins = bins[bins["n"] > 0]
    counts = outcome_selection(test, setup, None, n=len(test))
    return {
        "classes": list(setup.classes), "explained_class": setup.explained, "n_test": int(len(test)),
        "curves": curves,
        "confusion": {"rows": "true class", "columns": "predicted class",
                      "matrix": confusion(y, test["pred_class"].to_numpy(), k).tolist()},
        "reliability": {"of": f"probability of {setup.explained}", "n_bins": RELIABILITY_BINS,
                        "ece": float((shown_bins["gap"] * shown_bins["n"]).sum() / len(test)) if len(test) else None,
                        "bins": [{key: _plain(v) for key, v in row.items()} for row in bins.to_dict("records")]},
        "outcomes": {"counts": {key: len(ids) for key, ids in counts.items()},
                     "gallery": outcome_selection(test, setup, shown)},
    }


def curve_classes(setup: ClassSetup) -> list[int]:
    """The classes that get a one-vs-rest curve: the explained one for two classes, every class beyond."""
    return [setup.index] if len(setup.classes) == 2 else list(range(len(setup.classes)))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value


# --------------------------------------------------------------------------- figures


def draw_task_figures(predictions: pd.DataFrame, config: Mapping[str, Any], words: TaskWords) -> dict[str, bytes]:
    """The classification figures of a classification run's config (:func:`draw_classification_figures`); else none."""
    setup = class_setup(config)
    return {} if setup is None else draw_classification_figures(predictions, setup, words)


def draw_classification_figures(predictions: pd.DataFrame, setup: ClassSetup, words: TaskWords) -> dict[str, bytes]:
    """``class_roc``, ``class_pr``, ``class_confusion``, ``class_reliability`` of the labelled test rows (PNG bytes)."""
    test = labelled_test(predictions)
    probs = probabilities(test, len(setup.classes))
    y = test["y_true"].to_numpy(np.float64).astype(np.int64)
    matrix = confusion(y, test["pred_class"].to_numpy(), len(setup.classes))
    return {"class_roc": _figure_curves(y, probs, setup, "roc"), "class_pr": _figure_curves(y, probs, setup, "pr"),
            "class_confusion": _figure_confusion(matrix, setup, words),
            "class_reliability": _figure_reliability(reliability_bins(y == setup.index, probs[:, setup.index]),
                                                     setup)}


def _figure_curves(y: np.ndarray, probs: np.ndarray, setup: ClassSetup, kind: str) -> bytes:
    from ais.reporting.figures import _figure, _png

    fig = _figure(4.0, 3.8)
    ax = fig.add_subplot()
    for c in curve_classes(setup):
        positive, name = y == c, setup.classes[c]
        if not positive.any() or (kind == "roc" and positive.all()):
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_points(positive, probs[:, c])
            ax.plot(fpr, tpr, lw=1.4, drawstyle="steps-post", label=f"{name} (AUC {area(fpr, tpr):.3f})")
        else:
            precision, recall, _ = pr_points(positive, probs[:, c])
            ax.plot(recall, precision, lw=1.4, drawstyle="steps-pre",
                    label=f"{name} (AP {average_precision(precision, recall):.3f}; base rate {positive.mean():.2f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
        ax.set_xlabel("false positive rate (other classes called the class)")
        ax.set_ylabel("true positive rate (recall)")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(("ROC" if kind == "roc" else "precision-recall") + f", test split ({len(y)} images)", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="lower right" if kind == "roc" else "lower left")
    return _png(fig)


def _figure_confusion(matrix: np.ndarray, setup: ClassSetup, words: TaskWords) -> bytes:
    from ais.reporting.figures import _figure, _png

    k = len(setup.classes)
    fig = _figure(1.4 + 0.9 * k, 1.1 + 0.8 * k)
    ax = fig.add_subplot()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), setup.classes, fontsize=8)
    ax.set_yticks(range(k), setup.classes, fontsize=8)
    ax.set_xlabel("predicted class (highest probability)", fontsize=8)
    ax.set_ylabel(words.true, fontsize=8)
    return _png(fig)


def _figure_reliability(bins: pd.DataFrame, setup: ClassSetup) -> bytes:
    from ais.reporting.figures import _figure, _png

    fig = _figure(4.0, 3.8)
    ax = fig.add_subplot()
    full = bins[bins["n"] > 0]
    ax.plot([0, 1], [0, 1], color="#999999", lw=0.8, ls="--")
    ax.bar(full["lo"], full["frequency"], width=full["hi"] - full["lo"], align="edge", color="#4393c3",
           edgecolor="white", label="fraction of the class per bin")
    ax.plot(full["prob"], full["frequency"], "o", color="#b2182b", ms=4, label="mean predicted probability")
    for row in full.itertuples():
        ax.text((row.lo + row.hi) / 2, min(row.frequency + 0.03, 0.97), str(row.n), ha="center", fontsize=6)
    ece = float((full["gap"] * full["n"]).sum() / max(int(full["n"].sum()), 1))
    ax.set_title(f"reliability of P({setup.explained}), ECE {ece:.3f}", fontsize=9)
    ax.set_xlabel(f"predicted probability of {setup.explained}")
    ax.set_ylabel(f"fraction that are {setup.explained}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return _png(fig)


# --------------------------------------------------------------------------- page


def classification_section(block: Mapping[str, Any] | None, figures: Mapping[str, bytes],
                           outcome_panels: Mapping[str, Sequence[tuple[str, bytes]]],
                           words: TaskWords) -> list[str]:
    """The page's section of a classification run (nothing for another task)."""
    if not block:
        return []
    explained, classes = block["explained_class"], block["classes"]
    others = ", ".join(c for c in classes if c != explained)
    parts = ['<h2 id="classification">Classification: curves, confusion, calibration</h2>',
             f"<p>Test split, {fmt(block['n_test'])} labelled images. The explained class <b>{fmt(explained)}</b> "
             f"is the positive class ({fmt(others)}: negative); curves rank the images by its predicted "
             "probability (one-vs-rest for every class when there are more than two).</p>",
             table(["class", "positives", "negatives", "ROC-AUC", "average precision"],
                   [[name, c["n_positive"], c["n_negative"], c["roc_auc"], c["average_precision"]]
                    for name, c in block["curves"].items()])]
    for key, alt, caption in (("class_roc", "ROC curve", "ROC curve of the test split; dashed: chance."),
                              ("class_pr", "precision-recall curve", "Precision against recall of the test split."),
                              ("class_confusion", "confusion matrix", f"Rows: {words.true}; columns: the predicted class; "
                               "count and share of the row."),
                              ("class_reliability", "reliability diagram",
                               f"{words.predicted}, the predicted probability of {explained} (10 equal bins, "
                               "count above each bar), "
                               f"against the fraction of {explained} images; dashed: perfect calibration.")):
        if key in figures:
            parts.append(img(figures[key], alt, caption))
    if block.get("explained_class_auc") is not None:
        parts.append(f"<p>Localisation of the explained class (<code>explained_class_auc</code>, the direction map "
                     f"of {fmt(explained)} against the regions carrying its evidence on the demo's masks): "
                     f"{fmt(block['explained_class_auc'])}.</p>")
    counts = block["outcomes"]["counts"]
    parts.append(table(["outcome", "images"], [[title, counts.get(key, 0)] for key, title in OUTCOMES]))
    for key, title in OUTCOMES:
        shown = outcome_panels.get(key, [])
        what = _outcome_words(key, explained, others)
        parts.append(f"<h3>{html.escape(title)} ({html.escape(what)})</h3>")
        parts += ([img(png, f"{title}: {image_id}", f"{title}: {image_id}") for image_id, png in shown]
                  or ["<p class=\"muted\">None among the images with panels.</p>"])
    return parts


def _outcome_words(key: str, explained: str, others: str) -> str:
    return {"tp": f"{explained}, predicted {explained}; most confident first",
            "fp": f"{others}, predicted {explained}; most confident first",
            "fn": f"{explained}, predicted {others}; least probable first",
            "tn": f"{others}, predicted {others}; least probable first"}[key]


# --------------------------------------------------------------------------- localisation


def explained_class_localization(table_: pd.DataFrame, explained: str,
                                 evidence: Mapping[str, str]) -> dict[str, Any]:
    """``explained_class_auc``: how well the direction map finds the regions carrying the explained class.

    ``table_`` is the gathered per-image figures (:data:`ais.tables.HEATMAP_SCHEMA`),
    ``evidence`` maps a class to the mask union carrying its evidence (the
    demo's :data:`ais.demo.CLASS_EVIDENCE`: ``generated`` -> ``lower``). The
    direction map is red where a unit raises the explained class's log-odds,
    so its pixels, most positive first, are scored against that mask: the
    per-image AUC is the direction map's ``pos`` column for that mask, or 1
    minus its ``neg`` column (exact: the AUC of ``-x`` is ``1 -`` that of
    ``x`` with tied ranks averaged). The value is the mean over images whose
    mask has both classes; ``None`` with a ``reason`` otherwise.
    """
    from ais.tables import LOCALIZATION_AUCS

    mask = evidence.get(explained)
    out: dict[str, Any] = {"class": explained, "map": "direction", "part": "pos", "mask": mask,
                           "aggregate": "mean of per-image ROC AUCs (images whose mask has both classes)"}
    column = next(((col, part) for col, (key, part, m) in LOCALIZATION_AUCS.items()
                   if key == "direction" and m == mask and part in ("pos", "neg")), None)
    if mask is None or column is None:
        reason = (f"no ground-truth mask is known for class {explained!r}" if mask is None
                  else f"no direction-map AUC against the {mask!r} mask")
        return {"explained_class_auc": None, "explained_class_localization": out | {"reason": reason}}
    col, part = column
    rows = table_[table_["has_mask"]] if len(table_) else table_
    values = rows[col].to_numpy(np.float64, na_value=np.nan) if len(rows) else np.empty(0)
    values = values[np.isfinite(values)]
    values = values if part == "pos" else 1.0 - values
    out |= {"from_column": col if part == "pos" else f"1 - {col}", "n_images": int(values.size),
            "median": float(np.median(values)) if values.size else None,
            "reason": None if values.size else "no image with maps has a mask with both classes"}
    return {"explained_class_auc": float(values.mean()) if values.size else None,
            "explained_class_localization": out}
