"""What exact ablation adds over gradients: exact Δy per unit against its first-order Taylor estimate.

Zeroing unit ``c`` of the layer output ``A`` (N, C, h, w) changes the target
``y`` by ``Δy_c = y(A with A_c = 0) - y(A)``. To first order,

    Δy_c ≈ -sum_{h,w} (∂y/∂A)_c · A_c

(the "gradient x activation summed over the unit" of Molchanov et al.'s
Taylor pruning criterion, with the sign of a removal). :func:`taylor_estimates`
computes it with autograd on the same tensor the ablation engine zeroes (the
layer's output, before any ReLU that follows), so the estimate and
``delta_prediction`` of the ablation table compare directly; it is exact
when the network is linear after the layer. :func:`taylor_correlation` is
the per-image Spearman correlation across units: near 1, the exact ablation
adds little over one backward pass; low, the network's non-linearity after
the layer matters.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ais.hooks import Hooks
from ais.metrics import pearson, spearman

logger = logging.getLogger(__name__)

TAYLOR_COLUMNS = ("image_id", "n_units", "taylor_spearman", "taylor_pearson")


def taylor_estimates(model: nn.Module, layer: str, images: Tensor, target: Any, batch_size: int = 16) -> np.ndarray:
    """First-order estimates of Δy for zeroing each unit of ``layer``: ``(N, C)`` float64.

    ``images`` ``(N, 3, H, W)``; ``target`` maps the model output to ``(N,)``
    (the task's :meth:`~ais.tasks.Task.target`). The model runs in eval mode
    (its modes are restored), no parameter's ``.grad`` is touched, the hook
    is removed in ``finally``.
    """
    module = model.get_submodule(layer)
    device = next(model.parameters()).device
    modes = {m: m.training for m in model.modules()}
    out = []
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(device)
            kept: dict[str, Tensor] = {}
            with Hooks() as hooks, torch.enable_grad():
                hooks.keep_output(module, kept, "A", require_grad=True)
                y = target(model(x))
                if y.shape != (len(x),):
                    raise ValueError(f"the target must map the output to ({len(x)},), got {tuple(y.shape)}")
                (grad,) = torch.autograd.grad(y.sum(), kept["A"])
            a = kept["A"].detach()
            out.append(-(grad * a).flatten(2).sum(-1).double().cpu().numpy())  # (B, C)
    finally:
        for m, training in modes.items():
            m.train(training)
    return np.concatenate(out) if out else np.empty((0, 0))


def taylor_correlation(delta: np.ndarray, taylor: np.ndarray) -> float:
    """Spearman correlation across units of the exact ``delta`` (C,) and the ``taylor`` estimate (C,); NaN if constant."""
    delta, taylor = np.asarray(delta, dtype=np.float64), np.asarray(taylor, dtype=np.float64)
    if delta.shape != taylor.shape:
        raise ValueError(f"delta {delta.shape} and taylor {taylor.shape} differ in shape")
    if delta.size < 3:
        return float("nan")
    return spearman(delta, taylor)


def taylor_table(ablation: pd.DataFrame, image_ids: Sequence[str], estimates: np.ndarray) -> pd.DataFrame:
    """Per image (:data:`TAYLOR_COLUMNS`): Spearman and Pearson of exact Δy and the estimate across units.

    ``ablation`` has ``image_id``, ``channel``, ``delta_prediction`` rows
    (:data:`ais.tables.ABLATION_SCHEMA`); ``estimates`` ``(N, C)`` are
    :func:`taylor_estimates` of ``image_ids`` in that order. An image without
    ablation rows is refused.
    """
    by_image = {k: g for k, g in ablation.groupby("image_id", sort=False)}
    rows = []
    for i, image_id in enumerate(image_ids):
        if image_id not in by_image:
            raise ValueError(f"image {image_id!r} has no ablation rows")
        g = by_image[image_id]
        ch = g["channel"].to_numpy(np.int64)
        delta, est = g["delta_prediction"].to_numpy(np.float64), estimates[i, ch]
        rows.append({"image_id": image_id, "n_units": int(len(ch)), "taylor_spearman": taylor_correlation(delta, est),
                     "taylor_pearson": pearson(delta, est) if len(ch) >= 3 else float("nan")})
    return pd.DataFrame(rows, columns=list(TAYLOR_COLUMNS))
