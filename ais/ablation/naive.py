"""The obvious reference the engine is tested against: zero a channel's weights, run the model, restore."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ais.ablation.engine import require_eval
from ais.layers import resolve_layer
from ais.targets import RegressionTarget, Target


def naive_ablation(
    model: nn.Module,
    target_layer: str,
    x: Tensor,
    target: Target | None = None,
    channels: Sequence[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """The obvious reference: for each channel zero the conv's ``weight[c]`` and
    ``bias[c]``, run the full model, restore them (in ``finally``).

    Returns ``y_pred`` ``(N,)`` and ``y_ablated`` ``(N, K)`` on the CPU. Slow
    (``K + 1`` full forward passes); for tests and benchmarks.
    """
    require_eval(model)
    target = RegressionTarget() if target is None else target
    conv: nn.Conv2d = model.get_submodule(resolve_layer(model, target_layer))
    chans = range(conv.out_channels) if channels is None else [int(c) for c in channels]
    x = x.to(conv.weight.device, torch.float32)
    with torch.no_grad():
        y_pred = target(model(x))
        cols = []
        for c in chans:
            saved_w = conv.weight[c].clone()
            saved_b = None if conv.bias is None else conv.bias[c].clone()
            try:
                conv.weight[c] = 0
                if conv.bias is not None:
                    conv.bias[c] = 0
                cols.append(target(model(x)))
            finally:
                conv.weight[c] = saved_w
                if saved_b is not None:
                    conv.bias[c] = saved_b
    y_abl = torch.stack(cols, dim=1) if cols else y_pred.new_empty(len(x), 0)
    return y_pred.float().cpu(), y_abl.float().cpu()
