"""The ConvNeXt family: torchvision ConvNeXt tiny, small, base and large with an n-output classifier.

Head ``gap``: ConvNeXt's own average pool, ``LayerNorm2d`` and
``Linear(C, n_outputs)``. Explainable layers: every ``nn.Conv2d`` (units: its
output channels) and every ``CNBlock`` (``features.7.2``; units: the
channels of the block's output, the input plus the layer-scaled residual).
``auto``: the last block. The LayerNorm of the head mixes channels, so the
ablation engine takes its ``tail`` path (the head alone on each ablated
copy). Pretrained tensors under ``features.`` must all match.
"""

from __future__ import annotations

from torchvision.models.convnext import CNBlock

from ais.families import register_family
from ais.families._torchvision import TorchvisionFamily


class ConvNeXtFamily(TorchvisionFamily):
    name = "convnext"
    archs = ("convnext_tiny", "convnext_small", "convnext_base", "convnext_large")
    backbone_prefix = "features."
    layer_kind = "nn.Conv2d or CNBlock"
    block_types = (CNBlock,)


register_family(ConvNeXtFamily())
