"""The VGG family: torchvision VGGs with a regression (or n-output) head.

Two heads, both keeping VGG's submodules ``features``, ``avgpool`` and
``classifier`` (so names like ``features.28`` stay valid and
``VGG.forward`` works unchanged):

- ``classifier``: VGG's own classifier with its last layer replaced by
  ``Linear(4096, n_outputs)``;
- ``gap``: ``avgpool = AdaptiveAvgPool2d(1)`` and
  ``classifier = Sequential(Linear(C, n_outputs))`` with ``C`` the channels of
  the last convolution (global average pooling, then a linear read-out).

``head_dropout`` (``model.head_dropout``; Monte-Carlo dropout samples it):
``None`` keeps the head as above (``classifier`` has VGG's two
``Dropout(0.5)``, ``gap`` none); a number ``p`` gives the ``gap`` head a
``Dropout(p)`` before its Linear (named ``classifier.dropout``, so the
Linear stays ``classifier.0`` and checkpoints load either way: dropout has
no parameters) and sets the ``classifier`` head's dropouts to ``p``.

Pretrained weights: torchvision's weights API (``IMAGENET1K_V1``, downloaded
once into the torch cache, read with ``weights_only=True``) or a local file.
Explainable layers: every ``nn.Conv2d`` (``auto`` = the last one,
``features.28`` in vgg16).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torchvision
from torch import nn

from ais.families import register_family
from ais.families._torchvision import TorchvisionWeights
from ais.layers import conv_layers


class VGGFamily(TorchvisionWeights):
    name = "vgg"
    archs = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
    heads = ("classifier", "gap")
    backbone_prefix = "features."

    def build(self, arch: str, head: str, n_outputs: int = 1, head_dropout: float | None = None) -> nn.Module:
        """A randomly initialised VGG, without paying for layers the head discards."""
        if head not in self.heads:
            raise ValueError(f"model.head={head!r}: unknown head; choose one of {', '.join(self.heads)}")
        with torch.device("meta"):  # shapes only: VGG's 25088x4096 layer is never allocated for the gap head
            model = torchvision.models.get_model(arch, weights=None)
        if head == "classifier":
            model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, n_outputs, device="meta")
        else:
            channels = model.get_submodule(conv_layers(model)[-1]).out_channels
            model.avgpool = nn.AdaptiveAvgPool2d(1)
            model.classifier = nn.Sequential(nn.Linear(channels, n_outputs, device="meta"))
        model = model.to_empty(device="cpu")
        _init_vgg_(model)
        return self.set_head_dropout(model, head_dropout)

    def set_head_dropout(self, model: nn.Module, p: float | None) -> nn.Module:
        """Give the head dropout probability ``p`` (see the module docstring); ``None`` leaves it as built."""
        if p is None:
            return model
        if not 0 <= p < 1:
            raise ValueError(f"model.head_dropout={p}: must be in [0, 1)")
        dropouts = [m for m in model.classifier if isinstance(m, nn.Dropout)]
        if len(model.classifier) > 1 and dropouts:  # VGG's classifier (or a gap head given dropout before)
            for m in dropouts:
                m.p = float(p)
        elif p > 0:
            linear = model.classifier[-1]
            model.classifier = nn.Sequential(OrderedDict([("dropout", nn.Dropout(float(p))), ("0", linear)]))
        return model

    def output_layer(self, model: nn.Module) -> nn.Linear:
        last = model.classifier[-1]
        if not isinstance(last, nn.Linear):
            raise ValueError(f"the model's last layer is {last!r}, expected an nn.Linear")
        return last


def _init_vgg_(model: nn.Module) -> None:
    """torchvision's VGG initialisation scheme (deterministic given torch's global seed)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
            m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.constant_(m.bias, 0)


register_family(VGGFamily())
