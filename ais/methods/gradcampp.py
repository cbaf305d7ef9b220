"""Grad-CAM++ with the closed-form weights of pytorch-grad-cam's ``GradCAMPlusPlus``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ais.methods import register_method
from ais.methods.base import Capture
from ais.methods.gradcam import GradCAM


class GradCAMPlusPlus(GradCAM):
    """``alpha = g^2 / (2 g^2 + sum_ij(A) g^3 + 1e-6)`` (0 where g = 0), ``w_c = sum_ij(alpha * ReLU(g))``.

    ``g`` = dT/dA. The closed form assumes the target is the exponential of
    the score; like pytorch-grad-cam we apply it as-is to the regression
    output (the usual practice), with ``A`` the layer output as for Grad-CAM.
    """

    name = "gradcampp"
    title = "Grad-CAM++"
    scale_column = False
    localization = {"gradcampp_auc": ("gradcampp", "all", "raise")}
    description = "Grad-CAM with higher-order gradient weights, on its own [0, 1] scale"
    eps = 1e-6

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        g = cap.grad
        g2 = g * g
        g3 = g2 * g
        sum_a = cap.conv.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(g)).sum(dim=(2, 3))


register_method(GradCAMPlusPlus)
