"""What every layer map shares: one pass with hooks, channel weights times activations, resizing, scaling.

:class:`LayerMap` owns the forward (and, when asked, backward) pass and the
hooks (through :class:`ais.hooks.Hooks`); a method subclass only says how the
channel weights are computed (:meth:`LayerMap.channel_weights`) and which
activation they weigh (:attr:`LayerMap.source`), as pytorch-grad-cam's
``BaseCAM`` / ``get_cam_weights``.

**Which activation.** A unit *shows* its post-activation map: ``relu(pre)``
where ``pre`` is the output of the module right before the ReLU that follows
the layer (:meth:`ais.families.Family.activation_module`: the conv itself for
``vgg*``, its BatchNorm for ``vgg*_bn``). Grad-CAM and Grad-CAM++ use the
layer's own output ``A`` and the gradient of the target with respect to it,
as Captum's ``LayerGradCam`` does.

**In-place ReLUs.** torchvision's VGG uses ``ReLU(inplace=True)``; the hooks
keep each output and hand a clone on, so the in-place ReLU overwrites the
clone, never the kept tensor. Gradients are taken with
``torch.autograd.grad`` with respect to the kept tensor: no backward hooks,
no parameter ``.grad`` touched.

**The model is left as it was.** Hooks are removed in ``finally``; the model
runs in eval mode and every module's training flag is restored afterwards.

Maps are resized to the input size with bilinear interpolation
(``align_corners=False``) and divided by their maximum absolute value (sign
kept, an all-zero map stays zero), never by a min-max range.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ais.hooks import Hooks
from ais.targets import RegressionTarget, Target


@dataclass
class Capture:
    """What one pass over a batch recorded (all detached).

    ``output`` (N, K): model output. ``conv`` (N, C, h, w): the layer's
    output. ``activation`` (N, C, h, w): its post-ReLU activation.
    ``grad`` (N, C, h, w): d target_n / d conv_n, or None when no gradient
    was asked for. ``x`` (N, 3, H, W): the input batch, for methods that run
    the model themselves (occlusion, input gradients). A ViT's token outputs
    are on the patch grid (:meth:`ais.families.Family.to_grid`).
    ``attention``: the attention weights ``(N, heads, T, T)`` of each block
    (:meth:`ais.families.Family.attention_modules`) when asked for, else None.
    """

    output: Tensor
    conv: Tensor
    activation: Tensor
    grad: Tensor | None
    x: Tensor | None = None
    attention: list[Tensor] | None = None


class LayerMap:
    """Base class of the map methods: ``sum_c w_c * A_c`` over the units of one layer.

    Class attributes a method declares (the registry, :mod:`ais.methods`,
    reads them): ``name``, ``title``, ``signed`` (values in [-1, 1] rather
    than [0, 1]), ``needs`` (``"gradients"``, ``"ablation"``: the fused
    scores), ``outputs`` (the map arrays it writes; default its name),
    ``scale_column`` (its max |value| is a column of the figures table),
    ``localization`` (``{column: (map, part, mask)}`` AUCs it is scored by on
    masks), ``agreement_reference`` (|AIS| is compared with its magnitude) and
    ``description`` (one sentence for the report), ``optional`` (costly:
    computed only when listed in ``heatmaps.optional_methods``; its maps,
    figures and views are absent otherwise). How it computes:
    ``source`` (``"activation"``: post-ReLU, ``"conv"``: the layer output),
    ``relu`` (ReLU of the summed map) and :meth:`channel_weights`.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    signed: ClassVar[bool] = True
    needs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ()
    scale_column: ClassVar[bool] = False
    localization: ClassVar[Mapping[str, tuple[str, str, str]]] = {}
    agreement_reference: ClassVar[bool] = False
    description: ClassVar[str] = ""
    optional: ClassVar[bool] = False
    source: ClassVar[str] = "activation"
    relu: ClassVar[bool] = False

    def __init__(self, model: nn.Module, target_layer: nn.Module | str, target: Target | None = None,
                 family: Any = None) -> None:
        from ais.families import Family

        self.model = model
        self.layer = _submodule(model, target_layer)
        family = family or Family()  # without a family: plain-CNN defaults, every nn.Conv2d
        self.family = family
        explainable = set(family.explainable_layers(model))
        if not any(m is self.layer and name in explainable for name, m in model.named_modules()):
            raise TypeError(f"target layer must be an explainable layer of the model ({family.layer_kind}), "
                            f"got {type(self.layer).__name__}")
        self.pre_activation = family.activation_module(model, self.layer)
        self.target: Target = target if target is not None else RegressionTarget()

    @property
    def uses_gradients(self) -> bool:
        return "gradients" in self.needs

    def not_applicable(self) -> str:
        """Why this method does not apply to the model (it then writes no map), or ``""``."""
        return ""

    @classmethod
    def map_names(cls) -> tuple[str, ...]:
        """The map arrays this method writes."""
        return cls.outputs or (cls.name,)

    # -- passes ---------------------------------------------------------------

    def capture(self, x: Tensor, gradients: bool | None = None, attention: bool | None = None) -> Capture:
        """Run the model on ``x`` (N, 3, H, W) with hooks; gradients if ``gradients``, attention weights if
        ``attention`` (defaults: the method's needs)."""
        gradients = self.uses_gradients if gradients is None else gradients
        attention = "attention" in self.needs if attention is None else attention
        modes = {m: m.training for m in self.model.modules()}
        kept: dict[Any, Tensor] = {}
        hooks = Hooks()
        try:
            self.model.eval()
            hooks.keep_output(self.layer, kept, "conv", require_grad=gradients)
            if self.pre_activation is not self.layer:
                hooks.keep_output(self.pre_activation, kept, "pre")
            probs = self.family.attention_modules(self.model) if attention else []
            for i, module in enumerate(probs):
                hooks.keep_output(module, kept, ("attention", i))
            with torch.set_grad_enabled(gradients):
                output = self.model(x)
                conv = kept["conv"]
                grad = self._gradient(output, conv, len(x)) if gradients else None
            grid = self.family.to_grid
            return Capture(output=output.detach(), conv=grid(conv.detach()),
                           activation=F.relu(grid(kept.get("pre", conv).detach())),
                           grad=None if grad is None else self.family.grid_gradient(conv.detach(), grad), x=x.detach(),
                           attention=[kept[("attention", i)].detach() for i in range(len(probs))] if attention else None)
        finally:
            hooks.remove()
            for m, training in modes.items():
                m.train(training)

    def _gradient(self, output: Tensor, conv: Tensor, n: int) -> Tensor:
        scalar = self.target(output)
        if scalar.shape != (n,):
            raise ValueError(f"target must map the output to shape (N,), got {tuple(scalar.shape)}")
        (grad,) = torch.autograd.grad(scalar.sum(), conv)
        return grad

    # -- what a method says ---------------------------------------------------

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        """Channel weights ``(N, C)`` for the captured batch."""
        raise NotImplementedError

    def raw_maps(self, cap: Capture, size: tuple[int, int], inputs: Mapping[str, Any]) -> dict[str, Tensor]:
        """Unnormalised maps ``{name: (N, H, W)}`` from a capture (``inputs``: what ``needs`` asked for)."""
        return {self.name: self.map_from(cap, size)}

    def scales(self, raw: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The divisor ``(N,)`` of each of this method's raw maps (default: its own max |value|)."""
        return {name: max_abs(raw[name]) for name in self.map_names()}

    # -- maps -----------------------------------------------------------------

    def layer_map(self, cap: Capture, channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Unnormalised map at the layer's resolution, ``(N, h, w)``."""
        acts = cap.activation if self.source == "activation" else cap.conv
        if channel_weights is not None:
            channel_weights = as_weights(channel_weights, acts)
        w = self.channel_weights(cap, channel_weights)
        m = torch.einsum("nc,nchw->nhw", w.to(acts.dtype), acts)
        return F.relu(m) if self.relu else m

    def map_from(self, cap: Capture, size: tuple[int, int], channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Unnormalised map resized to ``size`` = (H, W), ``(N, H, W)``."""
        return upsample(self.layer_map(cap, channel_weights), size)

    def attribute(self, x: Tensor, channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Unnormalised map of ``x`` (N, 3, H, W) at the input size, ``(N, H, W)``."""
        return self.map_from(self.capture(x), tuple(x.shape[-2:]), channel_weights)

    def __call__(self, x: Tensor, channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Map of ``x`` (N, 3, H, W) divided by its max |value| per image, ``(N, H, W)`` in [-1, 1]."""
        return normalize_max_abs(self.attribute(x, channel_weights))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode inside the block; every module's training flag restored afterwards."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        yield model
    finally:
        for m, training in modes.items():
            m.train(training)


def method_options(inputs: Mapping[str, Any], key: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A method's options: ``defaults`` updated by ``inputs["options"][key]`` (the config's block); unknown keys refused."""
    given = dict((inputs.get("options") or {}).get(key) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"heatmaps.{key}: unknown option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


def _submodule(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    if isinstance(layer, str):
        return model.get_submodule(layer)
    if not any(m is layer for m in model.modules()):
        raise ValueError(f"{layer!r} is not a submodule of the model")
    return layer


def as_weights(w: Tensor | np.ndarray, acts: Tensor) -> Tensor:
    """Channel weights as ``(N, C)`` on the activations' device (``(C,)`` is broadcast)."""
    w = torch.as_tensor(np.asarray(w) if not isinstance(w, Tensor) else w, device=acts.device)
    n, c = acts.shape[:2]
    if w.ndim == 1:
        w = w.expand(n, -1)
    if tuple(w.shape) != (n, c):
        raise ValueError(f"channel weights must have shape ({n}, {c}) or ({c},), got {tuple(w.shape)}")
    return w


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (align_corners=False) of ``(N, h, w)`` maps to ``(N, *size)``."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def max_abs(maps: Tensor) -> Tensor:
    """Per-map maximum absolute value of ``(N, H, W)`` maps, ``(N,)``."""
    return maps.abs().amax(dim=(-2, -1))


def normalize_max_abs(maps: Tensor, scale: Tensor | None = None) -> Tensor:
    """Divide each ``(N, H, W)`` map by ``scale`` (default its max |value|); sign kept, zero maps stay zero."""
    scale = max_abs(maps) if scale is None else scale
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return maps / scale[:, None, None]
