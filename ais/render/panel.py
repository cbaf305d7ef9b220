"""Panels: the image and its registered views (:mod:`ais.views`) tiled left to right, with small titles."""

from __future__ import annotations

import functools
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ais.render.canvas import Canvas
from ais.views import DrawOptions, get_view, list_views

TITLE_HEIGHT = 14
GAP = 2


def views(image: np.ndarray, maps: Mapping[str, np.ndarray], alpha: float = 0.4,
          harm_threshold: float = 0.25, cmap: str = "jet",
          keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The views of one image whose maps are present, in panel order: ``{key: (H, W, 3) uint8}``.

    ``maps`` holds one image's maps ``(h, w)`` (:func:`ais.methods.compute_maps`'s
    keys); the registered views (:mod:`ais.views`) whose maps are present are
    drawn, in registration order; ``cmap`` is the sequential colormap of the
    ``unit`` views. ``keys`` limits the views drawn; the image is always included.
    """
    registered = list_views()
    if keys is not None:
        unknown = sorted(set(keys) - set(registered))
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; choose from {', '.join(registered)}")
    want = set(registered if keys is None else keys)
    canvas = Canvas(image, alpha)
    options = DrawOptions(harm_threshold=harm_threshold, cmap=cmap)
    out = {"image": canvas.image}
    for name in registered:
        view = get_view(name)
        if name in want and view.available(maps):
            out[name] = view.draw(canvas, maps, options)
    return out


def title(key: str, short: bool = False) -> str:
    """A tile's title: the view's (short) title; ``image`` for the image tile."""
    if key == "image":
        return "img" if short else "image"
    view = get_view(key)
    return view.short_title if short else view.title


@functools.lru_cache(maxsize=32)
def _title_band(tile_width: int, keys: tuple[str, ...]) -> np.ndarray:
    """White band ``(TITLE_HEIGHT, width, 3)`` with each view's title centred over its tile (cached).

    A title wider than its tile is replaced by its view's short title
    (``raises`` and ``lowers`` together, so that the pair reads alike).
    """
    width = len(keys) * tile_width + (len(keys) - 1) * GAP
    band = Image.new("RGB", (width, TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = ImageFont.load_default()

    def fits(key: str) -> bool:
        left, _, right, _ = draw.textbbox((0, 0), title(key), font=font)
        return right - left <= tile_width

    for i, key in enumerate(keys):
        pair = ("raises", "lowers") if key in ("raises", "lowers") else (key,)
        text = title(key, short=not all(fits(k) for k in pair))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = i * (tile_width + GAP) + (tile_width - (right - left)) // 2 - left
        y = (TITLE_HEIGHT - (bottom - top)) // 2 - top
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    arr = np.asarray(band).copy()
    arr.setflags(write=False)
    return arr


def panel(image: np.ndarray, maps: Mapping[str, np.ndarray], alpha: float = 0.4,
          harm_threshold: float = 0.25, cmap: str = "jet", titles: bool = True,
          keys: Sequence[str] | None = None) -> np.ndarray:
    """Views of one image tiled left to right with small titles: ``(TITLE_HEIGHT + H, W_total, 3)`` uint8.

    ``maps`` holds one image's maps (see :func:`views`; ``keys`` picks the
    views); tiles are separated by :data:`GAP` white pixels.
    """
    tiles = views(image, maps, alpha, harm_threshold, cmap, keys)
    keys = list(tiles)  # the image, then the views in panel order
    h, w = tiles["image"].shape[:2]
    width = len(keys) * w + (len(keys) - 1) * GAP
    top = TITLE_HEIGHT if titles else 0
    out = np.full((top + h, width, 3), 255, dtype=np.uint8)
    if titles:
        out[:top] = _title_band(w, tuple(keys))
    for i, key in enumerate(keys):
        x = i * (w + GAP)
        out[top:, x:x + w] = tiles[key]
    return out
