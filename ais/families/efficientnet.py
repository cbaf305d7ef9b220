"""The EfficientNet family: torchvision EfficientNet B0-B7 and V2 with an n-output classifier.

Head ``gap``: EfficientNet's own average pool, dropout and
``Linear(C, n_outputs)``. Explainable layers: every ``nn.Conv2d`` (units: its
output channels) and every ``MBConv`` / ``FusedMBConv`` block (units: the
channels of the block's output, after its projection and residual
addition). ``auto``: the last conv (``features.8.0`` in efficientnet_b0, the
1x1 conv to 1280 channels); its post-activation is the output of its
``Conv2dNormActivation`` (BatchNorm, SiLU). Pretrained tensors under
``features.`` must all match.
"""

from __future__ import annotations

from torchvision.models.efficientnet import FusedMBConv, MBConv

from ais.families import register_family
from ais.families._torchvision import TorchvisionFamily


class EfficientNetFamily(TorchvisionFamily):
    name = "efficientnet"
    archs = tuple(f"efficientnet_b{i}" for i in range(8)) + ("efficientnet_v2_s", "efficientnet_v2_m",
                                                             "efficientnet_v2_l")
    backbone_prefix = "features."
    layer_kind = "nn.Conv2d or MBConv block"
    block_types = (MBConv, FusedMBConv)


register_family(EfficientNetFamily())
