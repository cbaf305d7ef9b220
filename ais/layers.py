"""The one resolver of ``model.target_layer``: a module name, or ``auto`` for the default layer.

Training (what ``model.json`` records), ablation, the maps and the crops all
resolve the layer here, against the explainable layers of the model's family
(:meth:`ais.families.Family.explainable_layers`; without a family, every
``nn.Conv2d``).
"""

from __future__ import annotations

from typing import Sequence

from torch import nn


def conv_layers(model: nn.Module) -> list[str]:
    """Names (as in ``model.named_modules()``) of every ``nn.Conv2d``, in registration order."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def unit_channels(module: nn.Module) -> int | None:
    """The output channels (units) of ``module``: a conv's ``out_channels``, a norm's features, a Linear's outputs.

    For a block (a residual block, a ``Sequential``): those of the last conv,
    BatchNorm, LayerNorm or Linear it registers, which for torchvision's
    ResNet, RegNet, EfficientNet, MobileNet and ConvNeXt blocks is the width of
    the block's output. A module that declares ``units`` (a ViT's unit sites,
    :mod:`ais.families.vit`) has that many. ``None`` when it holds none of them.
    """
    if isinstance(getattr(module, "units", None), int):
        return int(module.units)
    found = None
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            found = m.out_channels
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            found = m.num_features
        elif isinstance(m, nn.LayerNorm):
            found = m.normalized_shape[-1]
        elif isinstance(m, nn.Linear):
            found = m.out_features
    return None if found is None else int(found)


def resolve_layer(
    model: nn.Module, name: str, layers: Sequence[str] | None = None, kind: str = "nn.Conv2d"
) -> str:
    """The module name of the layer to explain: ``name`` itself, or the last of ``layers`` for ``auto``.

    ``layers`` are the model's explainable layers (default: every Conv2d);
    ``kind`` says what they are, for the message. Raises ``ValueError``
    naming the key and listing the valid layers when ``name`` does not exist
    or is not explainable.
    """
    layers = conv_layers(model) if layers is None else list(layers)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no {kind} layer to explain")
    if name == "auto":
        return layers[-1]
    if name in layers:
        return name
    modules = dict(model.named_modules())
    what = (f"is a {type(modules[name]).__name__}, not an explainable layer ({kind})" if name in modules
            else "does not exist (not found)")
    raise ValueError(
        f"model.target_layer={name!r} {what} in {type(model).__name__}; use auto (= {layers[-1]}) "
        f"or one of its {kind} layers: {', '.join(layers)}"
    )
