"""The classification task: a class per image (e.g. real / generated), explained for one class.

The model emits ``K`` logits, one per class of ``data.classes`` (in that order);
the loss is the cross-entropy (optionally class-weighted, ``train.class_weights``),
the best epoch the one with the lowest validation cross-entropy (weighted as
the training loss). Predictions are the softmax probabilities ``(N, K)``; there
is no target encoding to fold. The explained target (ablation, the CAMs, the
maps) is the explained class's log-odds ``log p_k - log(1 - p_k)``
(:class:`ais.targets.ClassLogOddsTarget`), and the error ablation records is
the cross-entropy of the true class, ``-log p_y``.

A task needs its classes, so the registered instance is a template (two
classes ``class 0``/``class 1``): :meth:`ClassificationTask.configure` returns
the configured task, and :func:`task_from_spec` / :func:`task_from_config`
rebuild the same task from ``model.json`` or a validated config in every stage.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ais.metrics import accuracy, classification_report, roc_auc
from ais.targets import ClassLogOddsTarget, ClassLogProbTarget, NegatedTarget, Target
from ais.tasks import Task, TaskWords, get_task, register_task

logger = logging.getLogger(__name__)

ClassWeights = None | str | Sequence[float]


def class_words(classes: Sequence[str], explained: str) -> TaskWords:
    """``towards <explained>`` / ``towards <the others>`` (three others at most named, else "the other classes")."""
    others = [c for c in classes if c != explained]
    other = " or ".join(others) if len(others) <= 3 else "the other classes"
    return TaskWords(score="class", raises=f"towards {explained}", lowers=f"towards {other}",
                     predicted=f"P({explained})", true="true class")


def balanced_weights(y_train: np.ndarray, n_classes: int) -> list[float]:
    """scikit-learn's ``balanced`` weights, ``n / (K * n_k)``, of the training labels (a class without images: 0)."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=n_classes).astype(np.float64)
    return [float(len(y_train) / (n_classes * c)) if c > 0 else 0.0 for c in counts]


class ClassificationTask:
    """``K`` logits, cross-entropy; explains the log-odds of one class; ``residual`` = cross-entropy of the true class."""

    name = "classification"
    selection = "lowest validation loss (cross-entropy, weighted as in training)"
    epoch_metrics = ("val_accuracy", "val_roc_auc")
    loss_label = "cross-entropy"

    def __init__(self, classes: Sequence[str] = ("class 0", "class 1"), explained: str | None = None,
                 class_weights: Sequence[float] | None = None) -> None:
        self.classes = tuple(str(c) for c in classes)
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classification needs at least two distinct classes, got {list(self.classes)}")
        self.explained = self.classes[-1] if explained is None else str(explained)
        if self.explained not in self.classes:
            raise ValueError(f"explained class {self.explained!r} is not one of {list(self.classes)}")
        self.explained_index = self.classes.index(self.explained)
        if class_weights is not None and (len(class_weights) != len(self.classes)
                                          or not all(math.isfinite(w) and w >= 0 for w in class_weights)):
            raise ValueError(f"class weights must be {len(self.classes)} non-negative numbers, got {class_weights}")
        self.class_weights = None if class_weights is None else tuple(float(w) for w in class_weights)
        self.n_outputs = len(self.classes)
        self.words = class_words(self.classes, self.explained)

    def configure(self, classes: Sequence[str], explained: str | None = None,
                  class_weights: Sequence[float] | None = None) -> "ClassificationTask":
        """A task for ``classes`` explaining ``explained`` (default: the last class); this one is unchanged."""
        return ClassificationTask(classes, explained, class_weights)

    @property
    def class_names(self) -> list[str]:
        """The class names in output order (as the ONNX export and ``ais explain`` read them)."""
        return list(self.classes)

    def settings(self) -> dict[str, Any]:
        """What ``model.json`` stores to rebuild this task (:func:`task_from_spec`)."""
        return {"task": self.name, "classes": list(self.classes), "explained_class": self.explained,
                "explained_index": self.explained_index,
                "class_weights": None if self.class_weights is None else list(self.class_weights)}

    def fit_encoding(self, y_train: np.ndarray) -> dict[str, float]:
        return {}  # class indices are the targets; nothing to fit or fold

    def encode(self, y: np.ndarray, encoding: Mapping[str, float]) -> np.ndarray:
        """The class indices as they are; refused unless integers in ``[0, K)``."""
        y = np.asarray(y, dtype=np.float64)
        if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or y.min() < 0
                       or y.max() >= self.n_outputs):
            raise ValueError(f"class labels must be indices in [0, {self.n_outputs}) of {list(self.classes)}")
        return y

    def _weight(self, device: torch.device) -> Tensor | None:
        return None if self.class_weights is None else torch.tensor(self.class_weights, device=device)

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy of logits ``(N, K)`` and class indices ``(N,)`` (weighted mean with class weights)."""
        return F.cross_entropy(output.reshape(len(y), -1).float(), y.long(), weight=self._weight(output.device))

    def val_loss(self, raw: np.ndarray, y_encoded: np.ndarray) -> float:
        logits = torch.tensor(np.asarray(raw, dtype=np.float64)).reshape(len(y_encoded), -1)
        weight = None if self.class_weights is None else torch.tensor(self.class_weights, dtype=torch.float64)
        y = torch.tensor(np.asarray(y_encoded, dtype=np.int64))
        return float(F.cross_entropy(logits, y, weight=weight))

    def decode(self, raw: np.ndarray, encoding: Mapping[str, float]) -> np.ndarray:
        """Softmax probabilities ``(N, K)`` of raw logits ``(N, K)``."""
        logits = torch.tensor(np.asarray(raw, dtype=np.float64)).reshape(len(raw), -1)
        return torch.softmax(logits, dim=1).numpy()

    def epoch_scores(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        """Validation accuracy and ROC-AUC (NaN when a class is missing from val) of probabilities ``(N, K)``."""
        return {"val_accuracy": accuracy(y_true, y_pred), "val_roc_auc": roc_auc(y_true, y_pred)}

    def fold(self, output_layer: nn.Linear, encoding: Mapping[str, float]) -> None:
        pass  # the logits are the stored model's output

    def predictions(self, output: Tensor) -> Tensor:
        """Softmax probabilities ``(N, K)`` of logits ``(N, K)``."""
        return torch.softmax(output.reshape(output.shape[0], -1).float(), dim=1)

    def test_metrics(self, y_true: np.ndarray, y_pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
        """:func:`ais.metrics.classification_report` of probabilities ``(n, K)``, plus the class names."""
        report = classification_report(y_true, np.asarray(y_pred).reshape(len(y_true), -1), self.classes,
                                       self.explained_index, n_boot, seed)
        return {**report, "classes": list(self.classes), "explained_class": self.explained}

    def target(self) -> Target:
        return ClassLogOddsTarget(self.explained_index)

    def error(self, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
        """Cross-entropy of the true class from the explained class's log-odds ``y_pred``, where they determine it.

        ``-log p_k = softplus(-L)`` for an image of the explained class ``k``; with two classes
        ``-log(1 - p_k) = softplus(L)`` for the other. With more classes the others' cross-entropy is not a
        function of ``L``: NaN there, and ablation asks :meth:`residual_target` for it.
        """
        L, y = np.broadcast_arrays(np.asarray(y_pred, dtype=np.float64), np.asarray(y_true, dtype=np.float64))
        out = np.full(L.shape, np.nan)
        own = y == self.explained_index
        out[own] = np.logaddexp(0.0, -L[own])
        if self.n_outputs == 2:
            other = np.isfinite(y) & ~own
            out[other] = np.logaddexp(0.0, L[other])
        return out

    def residual_target(self, label: int) -> Target:
        """The cross-entropy of class ``label``, ``-log_softmax(z)[label]``: the residual where :meth:`error` is NaN."""
        return NegatedTarget(ClassLogProbTarget(int(label)))


def task_from_spec(spec: Mapping[str, Any]) -> Task:
    """The task ``model.json``'s ``spec`` names, configured as it was trained (classes, explained class, weights)."""
    task = get_task(str(spec.get("task", "regression")))
    if hasattr(task, "configure") and spec.get("classes"):
        return task.configure(spec["classes"], spec.get("explained_class"), spec.get("class_weights"))
    return task


def task_from_config(cfg: Mapping[str, Any]) -> Task:
    """The task a validated config names (``model.task``, ``data.classes``, ``explain.class``); no class weights."""
    task = get_task(str((cfg.get("model") or {}).get("task", "regression")))
    classes = (cfg.get("data") or {}).get("classes")
    if hasattr(task, "configure") and classes:
        return task.configure(classes, ((cfg.get("explain") or {}).get("class")))
    return task


def resolve_class_weights(setting: ClassWeights, y_train: np.ndarray, n_classes: int) -> list[float] | None:
    """``train.class_weights`` as numbers: null (none), ``balanced`` (:func:`balanced_weights`) or the list given."""
    if setting is None:
        return None
    if setting == "balanced":
        return balanced_weights(y_train, n_classes)
    weights = [float(w) for w in setting]
    if len(weights) != n_classes:
        raise ValueError(f"train.class_weights has {len(weights)} numbers; give one per class ({n_classes})")
    return weights


register_task(ClassificationTask())
