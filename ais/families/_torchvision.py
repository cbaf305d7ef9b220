"""What the torchvision CNN families share: building with an n-output head, weights, layers in forward order.

:class:`TorchvisionFamily` builds ``torchvision.models.get_model(arch,
num_classes=n_outputs)``: the architecture's own pooled head, its last
``nn.Linear`` with ``n_outputs`` outputs (head ``gap``), initialised by
torchvision's scheme from torch's global generator. Pretrained weights:
torchvision's weights API (``IMAGENET1K_V1``, ``DEFAULT``, downloaded once
into the torch cache, read with ``weights_only=True``) or a local file; the
ImageNet classifier's last layer does not fit and stays fresh.

Explainable layers: every ``nn.Conv2d`` and every block the family names
(:attr:`TorchvisionFamily.block_types`), in the order their outputs are
computed (a block after the convs inside it), so ``auto``, the last of them,
is the last block or conv before the head. A unit is one output channel of
the layer (:func:`ais.layers.unit_channels`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from ais.families import Family


def post_order(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of every submodule, each after its own submodules (the order outputs are computed)."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        yield from post_order(child, full)
        yield full, child


class TorchvisionWeights(Family):
    """Pretrained weights from torchvision's weights API (read with ``weights_only=True``) or a local file."""

    def fetch_weights(self, arch: str, weights: str, progress: bool = False) -> tuple[dict[str, Tensor], str]:
        """A torchvision weights name (``IMAGENET1K_V1``, ``DEFAULT``) or a local state-dict file."""
        enum = torchvision.models.get_model_weights(arch)
        if weights in enum.__members__ and not Path(weights).expanduser().exists():
            member = enum[weights]
            # weights_only=True: torchvision's default download path would unpickle arbitrary objects.
            state_dict = member.get_state_dict(progress=progress, check_hash=True, weights_only=True)
            return state_dict, f"torchvision {member!r} ({member.url})"
        return super().fetch_weights(arch, weights, progress)

    def weight_names(self, arch: str) -> list[str]:
        try:
            return list(torchvision.models.get_model_weights(arch).__members__)
        except (ValueError, KeyError):
            return []


class TorchvisionFamily(TorchvisionWeights):
    """A torchvision classification CNN with its own pooled head, the last Linear with ``n_outputs``."""

    heads = ("gap",)
    layer_kind = "nn.Conv2d or block"
    #: Modules (beside every nn.Conv2d) whose output channels are units.
    block_types: tuple[type[nn.Module], ...] = ()

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        """A randomly initialised ``arch`` (torch's global generator: seed it first), CPU, training mode."""
        if head not in self.heads:
            raise ValueError(f"model.head={head!r}: unknown head for {arch}; choose one of {', '.join(self.heads)}")
        if arch not in self.archs:
            raise ValueError(f"model.arch={arch!r} is not a {self.name} architecture ({', '.join(self.archs)})")
        return torchvision.models.get_model(arch, weights=None, num_classes=n_outputs)

    def is_block(self, name: str, module: nn.Module) -> bool:
        """Whether ``module`` (named ``name``) is an explainable block of this family."""
        return isinstance(module, self.block_types)

    def explainable_layers(self, model: nn.Module) -> list[str]:
        """Every ``nn.Conv2d`` and block, in the order their outputs are computed."""
        return [n for n, m in post_order(model) if isinstance(m, nn.Conv2d) or self.is_block(n, m)]

    def activation_module(self, model: nn.Module, layer: str | nn.Module) -> nn.Module:
        """The module whose output, after ReLU, is ``layer``'s post-activation.

        A block: the block itself (its output is what the next block reads).
        A conv that opens a ``Conv2dNormActivation``: that module (conv, norm
        and activation; ReLU then keeps the positive part of a SiLU or
        Hardswish). A conv followed by its BatchNorm (ResNet's ``conv1`` and
        ``bn1``, a downsample): the BatchNorm. Otherwise the conv itself.
        """
        target = model.get_submodule(layer) if isinstance(layer, str) else layer
        if not isinstance(target, nn.Conv2d):
            return target
        for parent in model.modules():
            children = list(parent.children())
            for i, child in enumerate(children):
                if child is not target:
                    continue
                if isinstance(parent, Conv2dNormActivation) and i == 0:
                    return parent
                if i + 1 < len(children) and isinstance(children[i + 1], nn.modules.batchnorm._BatchNorm):
                    return children[i + 1]
                return target
        return target
