"""Gradient importance: the gradient of the explained output with respect to the input pixels.

Two maps from one forward and backward pass over the input batch:

- ``saliency``: ``max_c |d target / d x_c|`` over the colour channels
  (Simonyan et al. 2014; Captum's ``Saliency(abs=True)`` then the max over
  channels), on [0, 1] after scaling;
- ``input_x_gradient``: ``sum_c x_c * d target / d x_c`` (Captum's
  ``InputXGradient`` summed over channels), signed: red where the pixel's
  value pushes the output up.

With ``heatmaps.gradients.smoothgrad_samples`` > 0 both are SmoothGrad'ed
(Smilkov et al. 2017): the per-channel attributions are averaged over that
many noisy copies ``x + N(0, (noise * (max x - min x))^2)`` (per image;
noise drawn from a generator seeded with ``seed``) before the channel max /
sum, as Captum's ``NoiseTunnel(..., nt_type="smoothgrad")``.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from ais.methods import register_method
from ais.methods.base import Capture, LayerMap, eval_mode, method_options

DEFAULTS = {"smoothgrad_samples": 0, "noise": 0.15, "seed": 0}


def smoothgrad_noise(x: Tensor, n_samples: int, noise: float, seed: int) -> Tensor:
    """``n_samples`` noisy copies of ``x`` (N, 3, H, W) as ``(S, N, 3, H, W)``; sd ``noise x (max - min)`` per image."""
    g = torch.Generator(device=x.device)
    g.manual_seed(int(seed))
    span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3)))[:, None, None, None]  # (N, 1, 1, 1)
    eps = torch.randn((n_samples, *x.shape), generator=g, device=x.device, dtype=x.dtype)
    return x[None] + eps * (noise * span)


class GradientImportance(LayerMap):
    """Saliency and input x gradient of the explained output."""

    name = "saliency"
    title = "saliency"
    signed = False
    outputs = ("saliency", "input_x_gradient")
    localization = {"saliency_auc": ("saliency", "all", "raise"),
                    "input_x_gradient_pos_auc": ("input_x_gradient", "pos", "raise"),
                    "input_x_gradient_neg_auc": ("input_x_gradient", "neg", "lower")}
    agreement_reference = True
    description = "|d output / d pixel| (max over colour channels) and input x gradient (signed), on their own scales"

    def input_gradient(self, x: Tensor) -> Tensor:
        """``d target / d x`` ``(N, 3, H, W)`` in eval mode (no parameter ``.grad`` touched)."""
        x = x.detach().clone().requires_grad_(True)
        with eval_mode(self.model), torch.enable_grad():
            scalar = self.target(self.model(x))
            (grad,) = torch.autograd.grad(scalar.sum(), x)
        return grad

    def attributions(self, x: Tensor, opt: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Per-channel ``(|grad|, x * grad)``, each ``(N, 3, H, W)``, SmoothGrad-averaged when asked."""
        n_samples = int(opt["smoothgrad_samples"])
        if n_samples <= 0:
            grad = self.input_gradient(x)
            return grad.abs(), x * grad
        abs_sum, ixg_sum = torch.zeros_like(x), torch.zeros_like(x)
        for noisy in smoothgrad_noise(x, n_samples, float(opt["noise"]), int(opt["seed"])):
            grad = self.input_gradient(noisy)
            abs_sum += grad.abs()
            ixg_sum += noisy * grad
        return abs_sum / n_samples, ixg_sum / n_samples

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        opt = method_options(inputs, "gradients", DEFAULTS)
        absolute, ixg = self.attributions(cap.x, opt)
        return {"saliency": absolute.amax(dim=1), "input_x_gradient": ixg.sum(dim=1)}


register_method(GradientImportance)
