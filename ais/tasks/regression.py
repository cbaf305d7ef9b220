"""The regression task: a realism score per image (the seed's task).

Targets are standardised with the training mean and standard deviation;
the loss is the MSE on that scale; before the model is saved the affine map
is folded into the output ``Linear``, so the stored model's raw output *is*
the predicted score. The error ablation records is the absolute residual
``|y_pred - y_true|``; the explained target is output unit 0.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ais.metrics import mae, regression_report, spearman
from ais.targets import RegressionTarget, Target
from ais.tasks import TaskWords, register_task

logger = logging.getLogger(__name__)


class RegressionTask:
    """One output, MSE on standardised scores, ``residual = |y_pred - y_true|``."""

    name = "regression"
    n_outputs = 1
    selection = "lowest validation loss (MSE on standardised targets)"
    epoch_metrics = ("val_mae", "val_srcc")
    loss_label = "MSE (standardised scores)"
    words = TaskWords(score="realism score", raises="raises realism", lowers="lowers realism",
                      predicted="predicted realism", true="true realism")

    def fit_encoding(self, y_train: np.ndarray) -> dict[str, float]:
        """``{"target_mean", "target_std"}`` of the training scores (std 1 when they are all equal)."""
        mu, sd = float(y_train.mean()), float(y_train.std())
        if not sd > 0:
            logger.warning("all training scores equal %.4g; standardising with scale 1", mu)
            sd = 1.0
        return {"target_mean": mu, "target_std": sd}

    def encode(self, y: np.ndarray, encoding: Mapping[str, float]) -> np.ndarray:
        return (y - encoding["target_mean"]) / encoding["target_std"]

    def loss(self, output: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(output.reshape(-1).float(), y)

    def val_loss(self, raw: np.ndarray, y_encoded: np.ndarray) -> float:
        return float(np.mean((raw - y_encoded) ** 2))

    def decode(self, raw: np.ndarray, encoding: Mapping[str, float]) -> np.ndarray:
        return encoding["target_mean"] + encoding["target_std"] * raw

    def epoch_scores(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        return {"val_mae": mae(y_true, y_pred), "val_srcc": spearman(y_true, y_pred)}

    def fold(self, output_layer: nn.Linear, encoding: Mapping[str, float]) -> None:
        """Make the output layer emit scores on the training scale (in place)."""
        with torch.no_grad():
            output_layer.weight.mul_(encoding["target_std"])
            output_layer.bias.mul_(encoding["target_std"]).add_(encoding["target_mean"])

    def predictions(self, output: Tensor) -> Tensor:
        """The predicted score ``(N,)`` of a raw output ``(N, 1)``."""
        return output.reshape(-1)

    def test_metrics(self, y_true: np.ndarray, y_pred: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
        return regression_report(y_true, y_pred, n_boot, seed)

    def target(self) -> Target:
        return RegressionTarget(0)

    def error(self, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
        """The residual ``|y_pred - y_true|`` (NaN where unlabelled)."""
        return np.abs(y_pred - y_true)


register_task(RegressionTask())
