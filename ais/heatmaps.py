"""Channel-weighted heatmaps of the target conv layer: AIS, Grad-CAM and Grad-CAM++.

One base class, :class:`LayerMap`, owns the passes and the hooks; a subclass
only says how the channel weights are computed and which activation they
weigh:

===================  ===================================  ==========  ===========
class                channel weights ``w`` (N, C)         activation  ReLU of map
===================  ===================================  ==========  ===========
:class:`AISMap`      given (fused AIS scores, -Δy, ...)   post-ReLU   no (signed)
:class:`GradCAM`     spatial mean of d target / d A       conv out    yes
:class:`GradCAMPlusPlus`  closed-form Grad-CAM++ weights  conv out    yes
===================  ===================================  ==========  ===========

**Which activation.** The ablation removes channels of the target conv; what
a channel *shows* is its post-activation map, so AIS weighs
``relu(pre)`` where ``pre`` is the output of the module right before the ReLU
that follows the conv in its parent ``nn.Sequential``: the conv itself for
``vgg*``, its BatchNorm for ``vgg*_bn`` (``relu(bn(conv(x)))``). When no ReLU
follows (after an optional BatchNorm), ``pre`` is the conv output.
Grad-CAM and Grad-CAM++ use the conv's own output ``A`` and the gradient of
the target with respect to it, as Captum's ``LayerGradCam`` on the conv does.

**In-place ReLUs.** torchvision's VGG uses ``ReLU(inplace=True)``. Each
forward hook keeps the module's output and *returns a clone* to the rest of
the network, so the in-place ReLU overwrites the clone, never the kept tensor
(the same trick as Captum's ``forward_hook_with_return``). Gradients are taken
with ``torch.autograd.grad`` with respect to the kept tensor, so no backward
hooks are needed and no parameter ``.grad`` is touched.

**The model is left as it was.** Hooks are removed in ``finally``; the model
runs in eval mode (dropout off, BatchNorm running statistics, so images do
not interact) and every module's training flag is restored afterwards.

Maps are resized to the input size with bilinear interpolation
(``align_corners=False``); :meth:`LayerMap.__call__` divides each map by its
maximum absolute value (sign kept, an all-zero map stays zero), never by a
min-max range.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ais.io import atomic_path

#: Maps a model output (N, K) to one scalar per image (N,).
Target = Callable[[Tensor], Tensor]


class RegressionTarget:
    """Target of a regressor: ``output[:, index]`` of an ``(N, K)`` output, shape ``(N,)``."""

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def __call__(self, output: Tensor) -> Tensor:
        return output.reshape(output.shape[0], -1)[:, self.index]

    def __repr__(self) -> str:
        return f"RegressionTarget({self.index})"


class NegatedTarget:
    """``-target(output)``: explains what lowers the target (e.g. lowers realism)."""

    def __init__(self, target: Target | None = None) -> None:
        self.target = target or RegressionTarget()

    def __call__(self, output: Tensor) -> Tensor:
        return -self.target(output)


def resolve_layer(model: nn.Module, layer: nn.Module | str) -> nn.Module:
    """The module ``layer`` of ``model``, given as a module or a name (``features.28``)."""
    if isinstance(layer, str):
        return model.get_submodule(layer)
    if not any(m is layer for m in model.modules()):
        raise ValueError(f"{layer!r} is not a submodule of the model")
    return layer


def activation_module(model: nn.Module, layer: nn.Module) -> nn.Module:
    """The module whose output, after ReLU, is ``layer``'s post-activation.

    In the ``nn.Sequential`` holding ``layer``: the module right before the
    first ``nn.ReLU`` after ``layer`` when only BatchNorm layers lie between
    (``layer`` itself, or its BatchNorm); otherwise ``layer``.
    """
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.children())
        for i, child in enumerate(children):
            if child is not layer:
                continue
            before = layer
            for nxt in children[i + 1:]:
                if isinstance(nxt, nn.ReLU):
                    return before
                if isinstance(nxt, nn.modules.batchnorm._BatchNorm):
                    before = nxt
                    continue
                break
            return layer
    return layer


@dataclass
class Capture:
    """What one pass over a batch recorded (all detached).

    ``output`` (N, K): model output. ``conv`` (N, C, h, w): the target conv's
    output. ``activation`` (N, C, h, w): its post-ReLU activation (see the
    module docstring). ``grad`` (N, C, h, w): d target_n / d conv_n, or None
    when no gradient was asked for.
    """

    output: Tensor
    conv: Tensor
    activation: Tensor
    grad: Tensor | None


class _OutputHooks:
    """Forward hooks that keep each module's output and hand a clone on.

    A context manager: hooks are registered on entry and removed on exit,
    whatever happens in between.
    """

    def __init__(self, modules: list[nn.Module], require_grad: bool = False) -> None:
        self.modules = list(dict.fromkeys(modules))  # unique, in order
        self.require_grad = require_grad
        self.outputs: dict[int, Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        if self.require_grad and not output.requires_grad:
            output.requires_grad_(True)  # a leaf here: nothing upstream needs gradients
        self.outputs[id(module)] = output
        return output.clone()  # what an in-place ReLU downstream may overwrite

    def __enter__(self) -> "_OutputHooks":
        try:
            for m in self.modules:
                self._handles.append(m.register_forward_hook(self._hook))
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __getitem__(self, module: nn.Module) -> Tensor:
        return self.outputs[id(module)]


class LayerMap:
    """Base class: ``sum_c w_c * A_c`` over the channels of one conv layer.

    Subclasses set :attr:`uses_gradients`, :attr:`source` (``"activation"``
    for post-ReLU activations, ``"conv"`` for the conv output), :attr:`relu`
    (ReLU of the summed map) and implement :meth:`channel_weights`.
    """

    uses_gradients: bool = False
    source: str = "activation"
    relu: bool = False

    def __init__(self, model: nn.Module, target_layer: nn.Module | str, target: Target | None = None) -> None:
        self.model = model
        self.layer = resolve_layer(model, target_layer)
        if not isinstance(self.layer, nn.Conv2d):
            raise TypeError(f"target layer must be an nn.Conv2d, got {type(self.layer).__name__}")
        self.pre_activation = activation_module(model, self.layer)
        self.target: Target = target or RegressionTarget()

    # -- passes ---------------------------------------------------------------

    def capture(self, x: Tensor, gradients: bool | None = None) -> Capture:
        """Run the model on ``x`` (N, 3, H, W) with hooks; gradients if ``gradients`` (default: the class's need)."""
        gradients = self.uses_gradients if gradients is None else gradients
        modes = {m: m.training for m in self.model.modules()}
        hooks = _OutputHooks([self.layer, self.pre_activation], require_grad=gradients)
        try:
            self.model.eval()
            with hooks, torch.set_grad_enabled(gradients):
                output = self.model(x)
                conv = hooks[self.layer]
                grad = None
                if gradients:
                    scalar = self.target(output)
                    if scalar.shape != (x.shape[0],):
                        raise ValueError(f"target must map the output to shape (N,), got {tuple(scalar.shape)}")
                    (grad,) = torch.autograd.grad(scalar.sum(), conv)
                activation = F.relu(hooks[self.pre_activation].detach())
            return Capture(output=output.detach(), conv=conv.detach(), activation=activation, grad=grad)
        finally:
            hooks.release()
            for m, training in modes.items():
                m.train(training)

    # -- what a subclass says -------------------------------------------------

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        """Channel weights ``(N, C)`` for the captured batch."""
        raise NotImplementedError

    # -- maps -----------------------------------------------------------------

    def layer_map(self, cap: Capture, channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Unnormalised map at the layer's resolution, ``(N, h, w)``."""
        acts = cap.activation if self.source == "activation" else cap.conv
        if channel_weights is not None:
            channel_weights = _as_weights(channel_weights, acts)
        w = self.channel_weights(cap, channel_weights)
        m = torch.einsum("nc,nchw->nhw", w.to(acts.dtype), acts)
        return F.relu(m) if self.relu else m

    def map_from(
        self, cap: Capture, size: tuple[int, int], channel_weights: Tensor | np.ndarray | None = None
    ) -> Tensor:
        """Unnormalised map resized to ``size`` = (H, W), ``(N, H, W)``."""
        return upsample(self.layer_map(cap, channel_weights), size)

    def attribute(self, x: Tensor, channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Unnormalised map of ``x`` (N, 3, H, W) at the input size, ``(N, H, W)``."""
        return self.map_from(self.capture(x), tuple(x.shape[-2:]), channel_weights)

    def __call__(self, x: Tensor, channel_weights: Tensor | np.ndarray | None = None) -> Tensor:
        """Map of ``x`` (N, 3, H, W) divided by its max |value| per image, ``(N, H, W)`` in [-1, 1]."""
        return normalize_max_abs(self.attribute(x, channel_weights))


class AISMap(LayerMap):
    """``sum_c w_c * ReLU(A_c)`` with given channel weights ``(N, C)`` or ``(C,)``, signed.

    With the fused AIS scores as weights, red (> 0) marks what helpful
    channels see and blue (< 0) what harmful ones see; with ``-Δy`` as
    weights, red marks what raises the realism score.
    """

    source = "activation"
    relu = False

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        if channel_weights is None:
            raise TypeError("AISMap needs channel_weights (N, C) or (C,)")
        return channel_weights


class GradCAM(LayerMap):
    """Grad-CAM: ``ReLU(sum_c mean_ij(dT/dA_cij) * A_c)`` with ``A`` the conv output.

    Equals Captum's ``LayerGradCam(model, conv).attribute(x, target,
    relu_attributions=True)`` followed by ``LayerAttribution.interpolate(...,
    "bilinear")`` (:meth:`attribute`); ``__call__`` divides by the max.
    """

    uses_gradients = True
    source = "conv"
    relu = True

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        return cap.grad.mean(dim=(2, 3))


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ with the closed-form weights of pytorch-grad-cam's ``GradCAMPlusPlus``.

    ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3 + 1e-6)`` (0 where g = 0) and
    ``w_c = sum_ij(alpha * ReLU(g))``, with ``g`` = dT/dA. The closed form
    assumes the target is the exponential of the score; like pytorch-grad-cam
    we apply it as-is to the regression output (the usual practice), with
    ``A`` the conv output as for :class:`GradCAM`.
    """

    eps = 1e-6

    def channel_weights(self, cap: Capture, channel_weights: Tensor | None = None) -> Tensor:
        g = cap.grad
        g2 = g * g
        g3 = g2 * g
        sum_a = cap.conv.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * F.relu(g)).sum(dim=(2, 3))


def _as_weights(w: Tensor | np.ndarray, acts: Tensor) -> Tensor:
    """Channel weights as ``(N, C)`` on the activations' device."""
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


def compute_maps(
    model: nn.Module,
    target_layer: nn.Module | str,
    x: Tensor,
    ais_weights: Tensor | np.ndarray,
    direction_weights: Tensor | np.ndarray,
    target: Target | None = None,
    with_scales: bool = False,
) -> dict[str, np.ndarray]:
    """All maps of a batch from one forward and one backward pass, float32 ``(N, H, W)``.

    - ``ais``: :class:`AISMap` with ``ais_weights`` (N, C): the image's fused
      AIS scores (data-set-level scores for unlabelled images, see
      :func:`ais.fusion.image_weights`). Red: helpful channels, blue: harmful.
    - ``helpful`` / ``harmful``: the same with only the positive / negative
      weights, divided by one shared scale (max |value| of either), so
      ``helpful`` is in [0, 1] and ``harmful`` in [-1, 0].
    - ``direction``: :class:`AISMap` with ``direction_weights`` = -Δy per
      channel (how much the channel's presence raised the prediction):
      red raises realism, blue lowers it.
    - ``gradcam``, ``gradcampp``: Grad-CAM and Grad-CAM++ of ``target``
      (default: output[:, 0]), in [0, 1].

    Every map is divided by its own max |value| per image. With
    ``with_scales`` the divisors are added as ``<name>_scale`` arrays ``(N,)``.
    """
    size = tuple(x.shape[-2:])
    ais_map = AISMap(model, target_layer)
    cam = GradCAM(model, target_layer, target)
    campp = GradCAMPlusPlus(model, target_layer, target)
    cap = cam.capture(x)

    w = _as_weights(ais_weights, cap.activation)
    raw = {
        "ais": ais_map.map_from(cap, size, w),
        "helpful": ais_map.map_from(cap, size, w.clamp(min=0)),
        "harmful": ais_map.map_from(cap, size, w.clamp(max=0)),
        "direction": ais_map.map_from(cap, size, direction_weights),
        "gradcam": cam.map_from(cap, size),
        "gradcampp": campp.map_from(cap, size),
    }
    scales = {name: max_abs(m) for name, m in raw.items()}
    shared = torch.maximum(scales["helpful"], scales["harmful"])
    scales["helpful"] = scales["harmful"] = shared
    out: dict[str, np.ndarray] = {}
    for name, m in raw.items():
        out[name] = normalize_max_abs(m, scales[name]).float().cpu().numpy()
        if with_scales:
            out[f"{name}_scale"] = scales[name].float().cpu().numpy()
    return out


def save_maps(path: str | os.PathLike, maps: Mapping[str, np.ndarray]) -> None:
    """Save maps to a compressed ``.npz`` atomically; floating arrays as float16.

    float16 keeps ~3 significant digits, ample for maps in [-1, 1]; other
    arrays (e.g. ``image_id`` strings) are stored as they are.
    """
    arrays = {}
    for name, arr in maps.items():
        arr = np.asarray(arr)
        arrays[name] = arr.astype(np.float16) if np.issubdtype(arr.dtype, np.floating) else arr
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def load_maps(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read maps saved by :func:`save_maps`; floating arrays as float32."""
    with np.load(path, allow_pickle=False) as data:
        return {
            k: data[k].astype(np.float32) if np.issubdtype(data[k].dtype, np.floating) else data[k]
            for k in data.files
        }
