"""Tasks: what the model predicts and what "error" and "explained" mean, as one object per task.

A task owns, for every stage: the training loss and how targets are encoded
for it (and the encoding folded back into the output layer), the epoch and
selection metrics, the test metrics, the error whose change ablation
records (``residual``), the target that ablation and the CAMs explain, and
the words used in tables, panels and the report. ``model.task`` names it;
``model.json`` stores it.

Add a task: one module defining a class with the attributes and methods of
:class:`Task`, and one :func:`register_task` call (see ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol

import numpy as np
from torch import Tensor, nn

from ais.registry import Registry
from ais.targets import Target

__all__ = ["Task", "TaskWords", "get_task", "list_tasks", "register_task", "unregister_task"]


@dataclass(frozen=True)
class TaskWords:
    """The words a task's outputs use."""

    score: str  # what y is: "realism score"
    raises: str  # a unit whose presence raises the explained output: "raises realism"
    lowers: str  # ... lowers it: "lowers realism"
    predicted: str  # axis label of predictions: "predicted realism"
    true: str  # axis label of the truth: "true realism"


class Task(Protocol):
    """What :mod:`ais.training`, :mod:`ais.ablation`, the maps and the report need from a task."""

    name: str
    n_outputs: int
    selection: str  # how the best epoch is chosen, in words
    epoch_metrics: tuple[str, ...]  # history columns after val_loss
    words: TaskWords

    def fit_encoding(self, y_train: np.ndarray) -> dict[str, float]: ...
    def encode(self, y: np.ndarray, encoding: Mapping[str, float]) -> np.ndarray: ...
    def loss(self, output: Tensor, y: Tensor) -> Tensor: ...
    def val_loss(self, raw: np.ndarray, y_encoded: np.ndarray) -> float: ...
    def decode(self, raw: np.ndarray, encoding: Mapping[str, float]) -> np.ndarray: ...
    def epoch_scores(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]: ...
    def fold(self, output_layer: nn.Linear, encoding: Mapping[str, float]) -> None: ...
    def predictions(self, output: Tensor) -> Tensor: ...
    def test_metrics(self, y_true: np.ndarray, y_pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]: ...
    def target(self) -> Target: ...
    def error(self, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray: ...


_TASKS: Registry[Task] = Registry("task", key="model.task")


def register_task(task: Task) -> Task:
    """Make ``task`` available as ``model.task: <task.name>``; a second task of the same name is refused."""
    return _TASKS.register(task.name, task)


def unregister_task(name: str) -> None:
    _TASKS.unregister(name)


def get_task(name: str) -> Task:
    """The task registered as ``name``; the error lists the registered tasks."""
    return _TASKS.get(name)


def list_tasks() -> list[str]:
    return _TASKS.names()


from ais.tasks import regression as _regression  # noqa: E402,F401  (registers the built-in task)
from ais.tasks import classification as _classification  # noqa: E402,F401  (registers the classification task)
