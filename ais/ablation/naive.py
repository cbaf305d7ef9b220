"""The obvious reference the engine is tested against: zero one unit, run the whole model, restore."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ais.ablation.engine import _resolve, require_eval
from ais.hooks import Hooks
from ais.layers import unit_channels
from ais.targets import RegressionTarget, Target


def naive_ablation(
    model: nn.Module,
    target_layer: str,
    x: Tensor,
    target: Target | None = None,
    channels: Sequence[int] | None = None,
    family: Any = None,
) -> tuple[Tensor, Tensor]:
    """The obvious reference: one full forward pass per channel, with that channel zeroed.

    For an ``nn.Conv2d`` the conv's ``weight[c]`` and ``bias[c]`` are set to
    zero and restored (in ``finally``); for any other layer (a residual
    block, a BatchNorm) a forward hook returns the layer's output with
    channel ``c`` zeroed. ``target_layer`` is resolved as the engine resolves
    it (by ``family`` when given). A ViT's unit site (:mod:`ais.families.vit`,
    units on axis 1) gets MLP neuron ``c`` zeroed at every token, or head
    ``c``'s output before the out-projection. Returns ``y_pred`` ``(N,)`` and
    ``y_ablated`` ``(N, K)`` on the CPU. Slow (``K + 1`` full forward
    passes); for tests and benchmarks. ``x`` is cast to the model's dtype.
    """
    require_eval(model)
    target = RegressionTarget() if target is None else target
    layer = model.get_submodule(_resolve(model, target_layer, family))
    chans = range(unit_channels(layer)) if channels is None else [int(c) for c in channels]
    param = next(model.parameters())
    x = x.to(param.device, param.dtype if param.is_floating_point() else torch.float32)
    zero = _zero_conv_channel if isinstance(layer, nn.Conv2d) else _zero_output_channel
    with torch.no_grad():
        y_pred = target(model(x))
        cols = [zero(model, layer, c, lambda: target(model(x))) for c in chans]
    y_abl = torch.stack(cols, dim=1) if cols else y_pred.new_empty(len(x), 0)
    return y_pred.float().cpu(), y_abl.float().cpu()


def _zero_conv_channel(model: nn.Module, conv: nn.Conv2d, c: int, run: Any) -> Tensor:
    """``run()`` with ``conv.weight[c]`` and ``conv.bias[c]`` zeroed, restored afterwards."""
    saved_w = conv.weight[c].clone()
    saved_b = None if conv.bias is None else conv.bias[c].clone()
    try:
        conv.weight[c] = 0
        if conv.bias is not None:
            conv.bias[c] = 0
        return run()
    finally:
        conv.weight[c] = saved_w
        if saved_b is not None:
            conv.bias[c] = saved_b


def _zero_output_channel(model: nn.Module, layer: nn.Module, c: int, run: Any) -> Tensor:
    """``run()`` with channel ``c`` of ``layer``'s output set to zero by a forward hook (removed afterwards)."""

    def hook(m: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        output = output.clone()
        output[:, c] = 0
        return output

    with Hooks() as hooks:
        hooks.add(layer, hook)
        return run()
