"""The MobileNet family: torchvision MobileNet V2 and V3 (small, large) with an n-output classifier.

Head ``gap``: MobileNet's own pooled classifier with its last Linear
replaced by ``Linear(·, n_outputs)``. Explainable layers: every ``nn.Conv2d``
(units: its output channels) and every ``InvertedResidual`` block (units: the
channels of its output, after the projection and the residual addition).
``auto``: the last conv (``features.18.0`` in mobilenet_v2,
``features.12.0`` in mobilenet_v3_small); its post-activation is the output
of its ``Conv2dNormActivation``. Pretrained tensors under ``features.`` must
all match.
"""

from __future__ import annotations

from torchvision.models import mobilenetv2, mobilenetv3

from ais.families import register_family
from ais.families._torchvision import TorchvisionFamily


class MobileNetFamily(TorchvisionFamily):
    name = "mobilenet"
    archs = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large")
    backbone_prefix = "features."
    layer_kind = "nn.Conv2d or InvertedResidual block"
    block_types = (mobilenetv2.InvertedResidual, mobilenetv3.InvertedResidual)


register_family(MobileNetFamily())
