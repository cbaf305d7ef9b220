"""The ResNet family: torchvision ResNets, ResNeXts and wide ResNets with an n-output ``fc``.

Head ``gap``: ResNet's own global average pool and ``fc``, replaced by
``Linear(C, n_outputs)``. Explainable layers: every ``nn.Conv2d`` (units:
its output channels) and every residual block (``layer4.2``: ``BasicBlock``
or ``Bottleneck``; units: the channels of the block's output, after the
addition of the identity and the ReLU). ``auto``: the last block
(``layer4.1`` in resnet18, ``layer4.2`` in resnet50). Pretrained tensors
under ``layer*`` must all match.
"""

from __future__ import annotations

from torchvision.models.resnet import BasicBlock, Bottleneck

from ais.families import register_family
from ais.families._torchvision import TorchvisionFamily


class ResNetFamily(TorchvisionFamily):
    name = "resnet"
    archs = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
             "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")
    backbone_prefix = "layer"
    layer_kind = "nn.Conv2d or residual block"
    block_types = (BasicBlock, Bottleneck)


register_family(ResNetFamily())
