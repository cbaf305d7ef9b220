"""Occlusion sensitivity: how much the explained output drops when a patch of the input is covered.

A ``window`` x ``window`` patch slides over the input with ``stride``
(Captum's positions: ``ceil((H - window) / stride) + 1`` per axis, the last
patch clipped at the border, so every pixel is covered). A covered patch is
replaced by the ``fill``: ``zero`` (the model input's zero; with ImageNet
normalisation that is the mean colour), ``mean`` (the image's mean per
colour channel) or ``blur`` (a Gaussian-blurred copy, ``sigma`` pixels). The
map is, per pixel, ``target(x) - target(x occluded)`` averaged over the
patches covering it: positive where covering the region lowers the output
(realism), negative where it raises it. Equal to Captum's ``Occlusion`` with
``sliding_window_shapes=(3, window, window)``, ``strides=(3, stride,
stride)`` and the same baseline (tests/test_occlusion.py).

All patch positions of a batch are evaluated in as few passes as the memory
budget allows: ``max_batch`` occluded copies per pass (``auto``: the
ablation engine's activation budget divided by a probe's largest activation).
Options come from the config's ``heatmaps.occlusion`` block. The method is
``optional``: a run computes it only with ``heatmaps.optional_methods:
[occlusion]`` (on two CPU cores it costs about 2 s per 64 px image with the
default 49 patch positions).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from ais.methods import register_method
from ais.methods.base import Capture, LayerMap, eval_mode, method_options

logger = logging.getLogger(__name__)

DEFAULTS = {"window": 16, "stride": 8, "fill": "mean", "sigma": 4.0, "max_batch": "auto"}
FILLS = ("zero", "mean", "blur")


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets of the patches along an axis of ``size`` pixels (Captum's: the last may be clipped).

    A window wider than the axis is clipped to it (one position).
    """
    if window < 1:
        raise ValueError(f"heatmaps.occlusion.window={window} must be >= 1")
    window = min(window, size)
    if stride < 1:
        raise ValueError(f"heatmaps.occlusion.stride={stride} must be >= 1")
    return [i * stride for i in range(math.ceil((size - window) / stride) + 1)]


def window_masks(height: int, width: int, window: int, stride: int, device: Any = None) -> Tensor:
    """The patches as float masks ``(P, H, W)`` (1 inside), row-major over the positions."""
    rows, cols = _axis_masks(height, window, stride, device), _axis_masks(width, window, stride, device)
    return (rows[:, None, :, None] * cols[None, :, None, :]).reshape(-1, height, width)


def _axis_masks(size: int, window: int, stride: int, device: Any) -> Tensor:
    starts = window_starts(size, window, stride)
    out = torch.zeros(len(starts), size, device=device)
    for i, s in enumerate(starts):
        out[i, s:s + window] = 1.0
    return out


def baseline(x: Tensor, fill: str, sigma: float = 4.0) -> Tensor:
    """What covers a patch, ``(N, 3, H, W)``: ``zero``, the image's ``mean`` per channel or a ``blur``red copy."""
    if fill == "zero":
        return torch.zeros_like(x)
    if fill == "mean":
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    if fill == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        k = 2 * math.ceil(3 * sigma) + 1
        k = min(k, (min(x.shape[-2:]) - 1) // 2 * 2 + 1)  # odd, smaller than the image (reflect padding)
        return gaussian_blur(x, [k, k], [sigma, sigma])
    raise ValueError(f"heatmaps.occlusion.fill={fill!r}: one of {', '.join(FILLS)}")


def occlusion(forward: Callable[[Tensor], Tensor], x: Tensor, masks: Tensor, fill_with: Tensor,
              max_batch: int) -> Tensor:
    """Occlusion map ``(N, H, W)`` of ``forward`` (``(M, 3, H, W)`` -> ``(M,)``) for ``masks`` ``(P, H, W)``.

    ``fill_with`` ``(N, 3, H, W)`` replaces the covered pixels. Occluded copies
    are evaluated ``max_batch`` at a time (whole patch positions per pass).
    """
    n = len(x)
    y0 = forward(x)  # (N,)
    total = torch.zeros(n, *x.shape[-2:], dtype=torch.float64, device=x.device)
    per_pass = max(1, max_batch // n)
    for start in range(0, len(masks), per_pass):
        m = masks[start:start + per_pass][:, None, None]  # (p, 1, 1, H, W)
        occluded = x[None] * (1 - m) + fill_with[None] * m  # (p, N, 3, H, W)
        y = forward(occluded.reshape(-1, *x.shape[1:])).reshape(len(m), n)  # (p, N)
        total += torch.einsum("pn,phw->nhw", (y0[None] - y).double(), m[:, 0, 0].double())
    return (total / masks.sum(dim=0).double()).to(x.dtype)


def auto_batch(model: nn.Module, x: Tensor, budget: int | None = None) -> int:
    """Occluded copies per pass: the activation budget over 3 x the largest activation of one image."""
    from ais.ablation.engine import DEFAULT_MEMORY_BUDGET

    largest = [0]

    def hook(m: nn.Module, inputs: tuple, output: Any) -> None:
        if isinstance(output, Tensor):
            largest[0] = max(largest[0], output[:1].numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return max(1, int((budget or DEFAULT_MEMORY_BUDGET) // (3 * max(largest[0], 1))))


class Occlusion(LayerMap):
    """Occlusion sensitivity of the explained output (signed; red: covering it lowers the output)."""

    name = "occlusion"
    title = "occlusion"
    signed = True
    optional = True  # a forward pass per patch position: listed in heatmaps.optional_methods to run
    localization = {"occlusion_pos_auc": ("occlusion", "pos", "raise"),
                    "occlusion_neg_auc": ("occlusion", "neg", "lower")}
    agreement_reference = True  # |AIS| against |occlusion| (NaN when occlusion is not computed)
    description = ("the drop of the output when a patch is covered, averaged over the patches "
                   "covering each pixel (red: covering it lowers the output)")

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        opt = method_options(inputs, "occlusion", DEFAULTS)
        x = cap.x
        masks = window_masks(x.shape[-2], x.shape[-1], int(opt["window"]), int(opt["stride"]), x.device)
        with eval_mode(self.model), torch.no_grad():
            per_pass = auto_batch(self.model, x) if opt["max_batch"] == "auto" else int(opt["max_batch"])
            heat = occlusion(lambda t: self.target(self.model(t)), x, masks,
                             baseline(x, opt["fill"], float(opt["sigma"])), per_pass)
        logger.debug("occlusion: %d patch positions x %d image(s), %d copies per pass", len(masks), len(x), per_pass)
        return {"occlusion": heat}


register_method(Occlusion)
