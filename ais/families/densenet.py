"""The DenseNet family: torchvision DenseNet-121, -161, -169 and -201 with an n-output classifier.

Head ``gap``: DenseNet's own ReLU, global average pool and
``Linear(C, n_outputs)``. Explainable layers: every ``nn.Conv2d`` (units: its
output channels, the new features a dense layer adds), every transition
(``features.transition1``: units the channels of its pooled conv output) and
the final BatchNorm ``features.norm5`` (units: every feature map the network
concatenated, before the ReLU of the head). A dense block itself is not one:
its output is a concatenation of its input and its layers' features.
``auto``: ``features.norm5``. Pretrained tensors under ``features.`` must all
match.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.densenet import _Transition

from ais.families import register_family
from ais.families._torchvision import TorchvisionFamily


class DenseNetFamily(TorchvisionFamily):
    name = "densenet"
    archs = ("densenet121", "densenet161", "densenet169", "densenet201")
    backbone_prefix = "features."
    layer_kind = "nn.Conv2d, transition or features.norm5"
    block_types = (_Transition,)

    def is_block(self, name: str, module: nn.Module) -> bool:
        return isinstance(module, _Transition) or name == "features.norm5"


register_family(DenseNetFamily())
