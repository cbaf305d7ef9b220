"""Targets: the one scalar per image that an explanation explains.

A target maps a model output ``(N, ...)`` to ``(N,)``. Ablation, the map
methods and the crops take a target; the task (:mod:`ais.tasks`) says which
one a run explains (a regressor's output unit, a class logit or probability).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "ClassLogOddsTarget", "ClassLogProbTarget", "ClassLogitTarget", "ClassProbabilityTarget", "NegatedTarget",
    "RegressionTarget", "Target",
]


class Target(Protocol):
    """Maps a model output ``(N, ...)`` to one scalar per image ``(N,)``."""

    def __call__(self, output: Tensor) -> Tensor: ...


class RegressionTarget:
    """Output unit ``index``: ``output[:, index]`` of an ``(N, K)`` output, ``(N,)``; a 1-D output as it is."""

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        if output.ndim == 1:
            return output
        return output.reshape(output.shape[0], -1)[:, self.index]

    def __repr__(self) -> str:
        return f"RegressionTarget({self.index})"


class ClassLogitTarget(RegressionTarget):
    """The logit of class ``index`` of a classifier's ``(N, n_classes)`` output, ``(N,)``."""

    def __repr__(self) -> str:
        return f"ClassLogitTarget({self.index})"


class ClassProbabilityTarget:
    """Softmax probability of class ``index`` for logits ``(N, n_classes)``, ``(N,)``."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        return torch.softmax(output.reshape(output.shape[0], -1), dim=1)[:, self.index]

    def __repr__(self) -> str:
        return f"ClassProbabilityTarget({self.index})"


class ClassLogOddsTarget:
    """Log-odds of class ``index`` for logits ``(N, K)``: ``log p_k - log(1 - p_k)``, ``(N,)``.

    Computed from the logits without forming a probability: ``z_k - logsumexp_{j != k} z_j``
    (two classes: ``z_k - z_other``), exact and finite for any finite logits, differentiable.
    """

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        z = output.reshape(output.shape[0], -1)
        mask = torch.zeros(z.shape[1], dtype=torch.bool, device=z.device)
        mask[self.index] = True
        return z[:, self.index] - torch.logsumexp(z.masked_fill(mask, float("-inf")), dim=1)

    def __repr__(self) -> str:
        return f"ClassLogOddsTarget({self.index})"


class ClassLogProbTarget:
    """Log-softmax of class ``index`` for logits ``(N, K)``, ``(N,)``: minus the cross-entropy of that class."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        return torch.log_softmax(output.reshape(output.shape[0], -1), dim=1)[:, self.index]

    def __repr__(self) -> str:
        return f"ClassLogProbTarget({self.index})"


class NegatedTarget:
    """``-target(output)``: explains what lowers the target (e.g. lowers realism)."""

    def __init__(self, target: Target | None = None) -> None:
        self.target = target if target is not None else RegressionTarget()

    def __call__(self, output: Tensor) -> Tensor:
        return -self.target(output)

    def __repr__(self) -> str:
        return f"NegatedTarget({self.target!r})"
