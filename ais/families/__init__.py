"""Model families: one adapter per family says how to build, load and explain its models.

A :class:`Family` adapter builds a model for an architecture name with an
``n_outputs`` head, loads pretrained weights into it, lists the layers whose
units can be explained (:meth:`Family.explainable_layers`, resolved by
:func:`ais.layers.resolve_layer`), names its output ``Linear`` (the layer a
task folds its target encoding into), says which module's ReLU output is a
unit's post-activation, and turns a layer's output into ``(N, C, h, w)``
units by grid (:meth:`Family.to_grid`).

The registry follows torchvision's ``register_model``: :func:`register_family`
(a duplicate name or architecture is refused), :func:`get_family`,
:func:`family_for` (by architecture), :func:`list_archs`. Add a family: one
module with a :class:`Family` subclass and one :func:`register_family` call
(ARCHITECTURE.md).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ais.layers import conv_layers, resolve_layer, unit_channels
from ais.registry import Registry

__all__ = ["Family", "family_for", "get_family", "list_archs", "list_families", "register_family",
           "unregister_family"]


class Family:
    """Base adapter; the defaults fit plain CNNs (units: the output channels of an ``nn.Conv2d``)."""

    name: str = ""
    archs: tuple[str, ...] = ()
    heads: tuple[str, ...] = ("gap",)
    layer_kind: str = "nn.Conv2d"
    #: State-dict prefix of the backbone: pretrained tensors under it must all match.
    backbone_prefix: str = ""

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        """A randomly initialised model (torch's global generator: seed it first), CPU, training mode."""
        raise NotImplementedError

    def set_head_dropout(self, model: nn.Module, p: float | None) -> nn.Module:
        """Give the head dropout probability ``p`` (``model.head_dropout``); ``None`` leaves the model as built.

        Families whose adapter does not support it refuse any other value.
        """
        if p is None:
            return model
        from ais.errors import UserError

        raise UserError(f"model.head_dropout={p}: the {self.name} family has no head dropout; leave it null")

    def fetch_weights(self, arch: str, weights: str, progress: bool = False) -> tuple[dict[str, Tensor], str]:
        """The state dict named by ``weights`` (a local file by default) and where it came from."""
        from pathlib import Path

        from ais.config import WEIGHT_SUFFIXES
        from ais.models import read_state_dict

        path = Path(weights).expanduser()
        if path.exists() or path.suffix.lower() in WEIGHT_SUFFIXES:
            return read_state_dict(path), str(path)
        names = self.weight_names(arch)
        raise ValueError(
            f"model.weights={weights!r}: not 'none', not a pretrained weights name for {arch} "
            f"({', '.join(names) if names else 'none known'}), and no such file"
        )

    def weight_names(self, arch: str) -> list[str]:
        """Names of pretrained weights this family can fetch for ``arch`` (beside local files)."""
        return []

    def explainable_layers(self, model: nn.Module) -> list[str]:
        """Module names whose units can be ablated and mapped, in forward order."""
        return conv_layers(model)

    def resolve_layer(self, model: nn.Module, name: str) -> str:
        """``name`` checked against :meth:`explainable_layers`; ``auto``: the last of them."""
        return resolve_layer(model, name, self.explainable_layers(model), self.layer_kind)

    def n_units(self, model: nn.Module, layer: str) -> int:
        """Units of ``layer``: its output channels (:func:`ais.layers.unit_channels`; a conv's ``out_channels``)."""
        units = unit_channels(model.get_submodule(layer))
        if units is None:
            raise ValueError(f"{layer} ({type(model.get_submodule(layer)).__name__}) has no known output channels")
        return units

    def output_layer(self, model: nn.Module) -> nn.Linear:
        """The model's final ``nn.Linear``."""
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError(f"{type(model).__name__} has no nn.Linear output layer")
        return linears[-1]

    def activation_module(self, model: nn.Module, layer: str | nn.Module) -> nn.Module:
        """The module whose output, after ReLU, is ``layer``'s (a name or the module) post-activation.

        In the ``nn.Sequential`` holding ``layer``: the module right before the
        first ``nn.ReLU`` after it when only BatchNorm layers lie between
        (``layer`` itself, or its BatchNorm); otherwise ``layer``.
        """
        target = model.get_submodule(layer) if isinstance(layer, str) else layer
        for parent in model.modules():
            if not isinstance(parent, nn.Sequential):
                continue
            children = list(parent.children())
            for i, child in enumerate(children):
                if child is target:
                    return _before_relu(target, children[i + 1:])
        return target

    def to_grid(self, output: Tensor) -> Tensor:
        """A layer's output as ``(N, C, h, w)``: units by spatial grid (identity for CNNs)."""
        return output

    def grid_gradient(self, output: Tensor, grad: Tensor) -> Tensor:
        """The gradient ``grad`` with respect to ``output`` as one with respect to ``to_grid(output)``."""
        return self.to_grid(grad)

    def attention_modules(self, model: nn.Module) -> list[nn.Module]:
        """Modules whose outputs are attention weights ``(N, H, T, T)``, block by block (none for CNNs)."""
        return []


def _before_relu(layer: nn.Module, following: Sequence[nn.Module]) -> nn.Module:
    before = layer
    for nxt in following:
        if isinstance(nxt, nn.ReLU):
            return before
        if isinstance(nxt, nn.modules.batchnorm._BatchNorm):
            before = nxt
            continue
        break
    return layer


_FAMILIES: Registry[Family] = Registry("model family")
_ARCHS: Registry[Family] = Registry("architecture", key="model.arch")


def register_family(family: Family) -> Family:
    """Make ``family``'s architectures available to ``model.arch``; duplicates are refused."""
    taken = [arch for arch in family.archs if arch in _ARCHS]
    if taken:
        raise ValueError(f"architecture(s) {taken} already belong to family {_ARCHS.get(taken[0]).name!r}")
    _FAMILIES.register(family.name, family)
    for arch in family.archs:
        _ARCHS.register(arch, family)
    return family


def unregister_family(name: str) -> None:
    """Remove a family and its architectures (tests that register a toy family clean up with this)."""
    for arch in _FAMILIES.unregister(name).archs:
        _ARCHS.unregister(arch)


def get_family(name: str) -> Family:
    return _FAMILIES.get(name)


def family_for(arch: str) -> Family:
    """The family of architecture ``arch``; the error lists every registered architecture."""
    return _ARCHS.get(arch)


def list_families() -> list[str]:
    return _FAMILIES.names()


def list_archs() -> list[str]:
    """Every registered architecture, in registration order."""
    return _ARCHS.names()


# the built-in families (each module registers its own), in registration order: the schema's model.arch order
# isort: off
from ais.families import vgg as _vgg  # noqa: E402,F401
from ais.families import resnet as _resnet  # noqa: E402,F401
from ais.families import efficientnet as _efficientnet  # noqa: E402,F401
from ais.families import mobilenet as _mobilenet  # noqa: E402,F401
from ais.families import convnext as _convnext  # noqa: E402,F401
from ais.families import densenet as _densenet  # noqa: E402,F401
from ais.families import regnet as _regnet  # noqa: E402,F401
from ais.families import vit as _vit  # noqa: E402,F401
from ais.families import timm_vit as _timm_vit  # noqa: E402,F401
from ais.families import hf_vit as _hf_vit  # noqa: E402,F401
from ais.families import attention_cnn as _attention_cnn  # noqa: E402,F401
# isort: on
