"""Views: how maps are drawn in panels and the gallery, a registry of small declarations.

A :class:`View` declares its name, title (and a short title for narrow
tiles), its colour scale (which also picks the gallery's colour bar), the
map arrays it needs, a one-line description (report captions) and a
``draw(canvas, maps, options)`` function returning an ``(H, W, 3)`` uint8
tile. :func:`ais.render.views` draws the registered views whose maps are
present, in registration order (the panel order).

Colour scales: ``signed`` (bwr on [-1, 1], white at 0), ``positive`` (the
upper half of bwr on [0, 1]), ``negative`` (the lower half on [-1, 0]),
``unit`` (a sequential map on [0, 1], Grad-CAM) and ``dual`` (the 2-D key of
the dual view).

The built-in views: ``ais`` (red helpful, blue harmful), ``direction`` (red
raises the output, blue lowers it), ``raises`` / ``lowers`` (the positive
and the negative part of the direction map), ``dual`` (hue and strength from
the direction map, saturation from helpfulness ``h`` = the AIS map: the
colour is mixed with its own grey level in proportion ``(1 + h) / 2``, so
helpful evidence is vivid, neutral half-saturated and harmful evidence
grey), ``primary`` (the seed's primary map: helpful channels only,
weighted by -Δy, red raises the output and blue lowers it, with the harmful
regions, harmful map <= -``harm_threshold``, outlined in grey by a
morphological edge), ``helpful`` (the former primary view: the helpful part
of the AIS map, white to red, with the same outline), ``gradcam`` /
``gradcampp`` (sequential, [0, 1]), ``saliency`` (|gradient|, sequential),
``input_x_gradient`` (signed), ``occlusion`` (signed: red where covering
the region lowers the output) and, for Vision Transformers only,
``attention`` and ``rollout`` (sequential, [0, 1]).

Add a view: one :func:`register_view` call (ARCHITECTURE.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ais.registry import Registry

__all__ = ["SCALES", "View", "get_view", "list_views", "register_view", "unregister_view"]

SCALES = ("signed", "positive", "negative", "unit", "dual")


@dataclass(frozen=True)
class DrawOptions:
    """Rendering options every view may read."""

    harm_threshold: float = 0.25
    cmap: str = "jet"  # the sequential colormap of ``unit`` views


@dataclass(frozen=True)
class View:
    name: str
    title: str
    short_title: str
    scale: str
    needs: tuple[str, ...]
    draw: Callable[[Any, Mapping[str, np.ndarray], DrawOptions], np.ndarray]
    description: str = ""

    def available(self, maps: Mapping[str, np.ndarray]) -> bool:
        return all(k in maps for k in self.needs)


_VIEWS: Registry[View] = Registry("view", key="heatmaps.views")


def register_view(view: View) -> View:
    """Register ``view`` (after the existing ones in panel order); a duplicate name is refused."""
    if view.scale not in SCALES:
        raise ValueError(f"view {view.name!r}: unknown colour scale {view.scale!r}; one of {', '.join(SCALES)}")
    if view.name == "image":
        raise ValueError("'image' is the image tile, not a view name")
    return _VIEWS.register(view.name, view)


def unregister_view(name: str) -> None:
    _VIEWS.unregister(name)


def get_view(name: str) -> View:
    return _VIEWS.get(name)


def list_views() -> list[str]:
    """Registered view names in panel order (the image tile comes first and is not a view)."""
    return _VIEWS.names()


def _raises(canvas: Any, maps: Mapping[str, np.ndarray], opt: DrawOptions) -> np.ndarray:
    return canvas.overlay(np.maximum(canvas.resize(maps["direction"]), 0.0))


def _lowers(canvas: Any, maps: Mapping[str, np.ndarray], opt: DrawOptions) -> np.ndarray:
    return canvas.overlay(np.minimum(canvas.resize(maps["direction"]), 0.0))


def _helpful(canvas: Any, maps: Mapping[str, np.ndarray], opt: DrawOptions) -> np.ndarray:
    if "helpful" in maps and "harmful" in maps:
        return canvas.primary(maps["helpful"], maps["harmful"], opt.harm_threshold)
    return canvas.primary(maps["ais"], np.minimum(maps["ais"], 0.0), opt.harm_threshold)


def _primary(canvas: Any, maps: Mapping[str, np.ndarray], opt: DrawOptions) -> np.ndarray:
    """The signed primary map (bwr) with the harmful regions outlined in grey."""
    from ais.render.canvas import OUTLINE_GREY, outline

    out = canvas.overlay(maps["primary"])
    harmful = maps["harmful"] if "harmful" in maps else np.minimum(maps["ais"], 0.0)
    out[outline(canvas.resize(harmful) <= -opt.harm_threshold)] = OUTLINE_GREY
    return out


for _view in (
    View("ais", "AIS", "AIS", "signed", ("ais",), lambda c, m, o: c.overlay(m["ais"]),
         "the AIS map (red: helpful channels, blue: harmful)"),
    View("direction", "direction", "dir", "signed", ("direction",), lambda c, m, o: c.overlay(m["direction"]),
         "the direction map (red raises the output, blue lowers it)"),
    View("raises", "raises realism", "raises", "positive", ("direction",), _raises,
         "the positive part of the direction map: what raises the output"),
    View("lowers", "lowers realism", "lowers", "negative", ("direction",), _lowers,
         "the negative part of the direction map: what lowers the output"),
    View("dual", "dual", "dual", "dual", ("direction", "ais"), lambda c, m, o: c.dual(m["direction"], m["ais"]),
         "hue and strength from the direction map, saturation from helpfulness (the AIS map)"),
    View("primary", "primary", "prim", "signed", ("primary", "ais"), _primary,
         "helpful channels only, weighted by −Δy (red raises the output, blue lowers it), "
         "harmful regions outlined in grey"),
    View("helpful", "helpful", "help", "positive", ("ais",), _helpful,
         "the helpful part of the AIS map (white to red), harmful regions outlined in grey"),
    View("gradcam", "Grad-CAM", "GC", "unit", ("gradcam",), lambda c, m, o: c.overlay(m["gradcam"], o.cmap),
         "Grad-CAM on its own [0, 1] scale"),
    View("gradcampp", "Grad-CAM++", "GC++", "unit", ("gradcampp",),
         lambda c, m, o: c.overlay(m["gradcampp"], o.cmap), "Grad-CAM++ on its own [0, 1] scale"),
    View("saliency", "saliency", "sal", "unit", ("saliency",), lambda c, m, o: c.overlay(m["saliency"], o.cmap),
         "|d output / d pixel|, max over colour channels, on its own [0, 1] scale"),
    View("input_x_gradient", "input × gradient", "IxG", "signed", ("input_x_gradient",),
         lambda c, m, o: c.overlay(m["input_x_gradient"]), "input × gradient summed over colour channels (signed)"),
    View("occlusion", "occlusion", "occ", "signed", ("occlusion",), lambda c, m, o: c.overlay(m["occlusion"]),
         "occlusion sensitivity (red: covering the region lowers the output, blue: raises it)"),
    View("attention", "class-token attention", "attn", "unit", ("attention",),
         lambda c, m, o: c.overlay(m["attention"], o.cmap),
         "a ViT's last-block attention from the class token to each patch, averaged over heads"),
    View("rollout", "attention rollout", "roll", "unit", ("rollout",), lambda c, m, o: c.overlay(m["rollout"], o.cmap),
         "a ViT's attention rollout (Abnar & Zuidema 2020): how much of the class token flows from each patch"),
    View("spatial_attention", "spatial attention", "s-att", "unit", ("spatial_attention",),
         lambda c, m, o: c.overlay(m["spatial_attention"], o.cmap),
         "the attention CNN's own spatial attention weights (sigmoid, [0, 1]) on its own scale"),
):
    register_view(_view)
