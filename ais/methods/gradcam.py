"""Grad-CAM: ``ReLU(sum_c mean_ij(dT/dA_cij) * A_c)`` with ``A`` the layer's output."""

from __future__ import annotations

from torch import Tensor

from ais.methods import register_method
from ais.methods.base import Capture, LayerMap


class GradCAM(LayerMap):
    """Grad-CAM of the target.

    Equals Captum's ``LayerGradCam(model, conv).attribute(x, target,
    relu_attributions=True)`` followed by ``LayerAttribution.interpolate(...,
    "bilinear")`` (:meth:`attribute`); ``__call__`` divides by the max.
    """

    name = "gradcam"
    title = "Grad-CAM"
    signed = False
    needs = ("gradients",)
    scale_column = True
    localization = {"gradcam_auc": ("gradcam", "all", "raise"), "gradcam_lower_auc": ("gradcam", "all", "lower")}
    agreement_reference = True
    description = "gradient-weighted activations of the explained output, on its own [0, 1] scale"
    source = "conv"
    relu = True

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        return cap.grad.mean(dim=(2, 3))


register_method(GradCAM)
