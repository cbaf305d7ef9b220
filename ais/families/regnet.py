"""The RegNet family: torchvision RegNetX and RegNetY with an n-output ``fc``.

Head ``gap``: RegNet's own global average pool and ``Linear(C, n_outputs)``.
Explainable layers: every ``nn.Conv2d`` (units: its output channels) and
every ``ResBottleneckBlock`` (``trunk_output.block4.block4-0``; units: the
channels of the block's output, after the residual addition and the ReLU).
``auto``: the last block. Pretrained tensors under ``trunk_output.`` must
all match.
"""

from __future__ import annotations

from torchvision.models.regnet import ResBottleneckBlock

from ais.families import register_family
from ais.families._torchvision import TorchvisionFamily


class RegNetFamily(TorchvisionFamily):
    name = "regnet"
    archs = tuple(f"regnet_{kind}_{size}" for kind in ("x", "y")
                  for size in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf", "32gf")) + ("regnet_y_128gf",)
    backbone_prefix = "trunk_output."
    layer_kind = "nn.Conv2d or ResBottleneckBlock"
    block_types = (ResBottleneckBlock,)


register_family(RegNetFamily())
