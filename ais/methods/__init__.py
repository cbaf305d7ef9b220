"""Explanation methods: a registry of map methods, each one small file.

A method is a :class:`ais.methods.base.LayerMap` subclass that declares its
name, whether it is signed, what it needs (``"ablation"``: the fused unit
scores, ``"gradients"``), the map arrays it writes, the localisation AUCs it
is scored by and whether |AIS| is compared with it; it computes ``(N, H, W)``
maps from the one shared capture (:meth:`LayerMap.raw_maps`).
:func:`compute_maps` runs the configured methods over a batch with one
forward pass (and one backward pass when any method needs gradients).

Methods that are not CAMs run the model on the input batch themselves
(``Capture.x``): gradient importance (:mod:`~ais.methods.gradients`) and
occlusion (:mod:`~ais.methods.occlusion`, ``optional``: computed only when
listed, :func:`configured_methods`); their options come in
``inputs["options"]``.

Add a method: one module with a ``LayerMap`` subclass and one
:func:`register_method` call (ARCHITECTURE.md).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
from torch import Tensor, nn

from ais.registry import Registry

if TYPE_CHECKING:
    from ais.methods.base import LayerMap
    from ais.targets import Target

__all__ = ["compute_maps", "configured_methods", "get_method", "list_methods", "map_keys", "register_method", "unregister_method"]

logger = logging.getLogger(__name__)

_METHODS: Registry[type["LayerMap"]] = Registry("map method")


def register_method(cls: type["LayerMap"]) -> type["LayerMap"]:
    """Register a method class under ``cls.name``; a duplicate name is refused."""
    return _METHODS.register(cls.name, cls)


def unregister_method(name: str) -> None:
    _METHODS.unregister(name)


def get_method(name: str) -> type["LayerMap"]:
    return _METHODS.get(name)


def list_methods() -> list[str]:
    """Registered method names, in registration order (the order of their maps and columns)."""
    return _METHODS.names()


def configured_methods(optional: Sequence[str] = ()) -> list[str]:
    """The methods a run computes: every registered one, the costly ``optional`` ones only when listed.

    ``optional`` is the config's ``heatmaps.optional_methods``; a name that is
    not an optional method is refused.
    """
    known = [m for m in list_methods() if get_method(m).optional]
    unknown = sorted(set(optional) - set(known))
    if unknown:
        raise ValueError(f"heatmaps.optional_methods: {unknown} are not optional methods; known: {known}")
    return [m for m in list_methods() if not get_method(m).optional or m in optional]


def map_keys(methods: Sequence[str] | None = None) -> tuple[str, ...]:
    """The map arrays the methods write, in method order."""
    return tuple(k for m in (methods or list_methods()) for k in get_method(m).map_names())


def compute_maps(
    model: nn.Module,
    target_layer: nn.Module | str,
    x: Tensor,
    inputs: Mapping[str, Any] | None = None,
    methods: Sequence[str] | None = None,
    target: "Target | None" = None,
    with_scales: bool = False,
    family: Any = None,
) -> dict[str, np.ndarray]:
    """The maps of ``methods`` (default: all registered) for a batch ``x`` (N, 3, H, W), float32 ``(N, H, W)``.

    One capture serves every method. ``inputs`` holds what the methods need
    beyond the model: ``ais_weights`` (N, C), the image's fused AIS scores
    (data-set-level scores for unlabelled images), and ``direction_weights``
    (N, C), -Δy per channel, and ``options``: the config's ``heatmaps`` section, whose
    blocks (``occlusion``, ``gradients``) hold the options of the methods that
    run the model on ``x`` themselves. Every map is divided by its method's scale per
    image (:meth:`LayerMap.scales`: its own max |value|; AIS's ``helpful`` and
    ``harmful`` share one). With ``with_scales`` the divisors are added as
    ``<map>_scale`` arrays ``(N,)``.
    """
    from ais.methods.base import normalize_max_abs

    instances = [get_method(m)(model, target_layer, target, family) for m in (methods or list_methods())]
    instances = [m for m in instances if not _not_applicable(m)] or instances[:1]  # the first one captures
    needs_grad = any(m.uses_gradients for m in instances)
    cap = instances[0].capture(x, gradients=needs_grad, attention=any("attention" in m.needs for m in instances))
    size = tuple(x.shape[-2:])
    out: dict[str, np.ndarray] = {}
    for method in instances:
        if method.not_applicable():
            continue
        raw = method.raw_maps(cap, size, inputs or {})
        for name, scale in method.scales(raw).items():
            out[name] = normalize_max_abs(raw[name], scale).float().cpu().numpy()
            if with_scales:
                out[f"{name}_scale"] = scale.float().cpu().numpy()
    return out


_SAID: set[tuple[str, str]] = set()


def _not_applicable(method: "LayerMap") -> str:
    """Why ``method`` does not apply to its model (logged once per method and model class), or ``""``."""
    why = method.not_applicable()
    key = (method.name, type(method.model).__name__)
    if why and key not in _SAID:
        _SAID.add(key)
        logger.info("%s: no map (%s)", method.name, why)
    return why


# registration order is the order of the maps and columns
# isort: off
from ais.methods import ais_map, direction, gradcam, gradcampp  # noqa: E402,F401  (register the built-ins)
from ais.methods import primary, gradients, occlusion  # noqa: E402,F401
from ais.methods import attention, rollout  # noqa: E402,F401
from ais.methods import attention_map  # noqa: E402,F401
# isort: on
