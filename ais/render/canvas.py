"""Blending maps onto an image: resize (bilinear), colour lookup, ``(1 - alpha) * image + alpha * colour``.

Nothing is rescaled per image here: maps arrive already divided by their max
|value| (:func:`ais.methods.compute_maps`), and values outside the range are
clipped. A :class:`Canvas` holds one image and one alpha; every view of a
panel blends onto its precomputed base.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ais.render.colours import _dual_tables, _index, _scaled_lut, signed_index

OUTLINE_GREY = (128, 128, 128)


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map ``(h, w)`` to ``size`` = (H, W), float32."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape == tuple(size):
        return heat
    im = Image.fromarray(heat, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def _base(image: np.ndarray, alpha: float) -> np.ndarray:
    """The image term of a blend, ``(1 - alpha) * image + 0.5`` (0.5: round on the uint8 cast), float32."""
    base = image.astype(np.float32)
    base *= np.float32(1.0 - alpha)
    base += np.float32(0.5)
    return base


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour``, both ``(H, W, 3)`` uint8, rounded to uint8."""
    out = _base(image, alpha)
    out += np.asarray(colour, dtype=np.float32) * np.float32(alpha)
    return out.astype(np.uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


class Canvas:
    """One image and one alpha; every view of a panel blends onto the same precomputed base."""

    def __init__(self, image: np.ndarray, alpha: float) -> None:
        self.image = _check_image(image)
        self.size = self.image.shape[:2]
        self.alpha = float(alpha)
        self.base = _base(self.image, self.alpha)

    def resize(self, heat: np.ndarray) -> np.ndarray:
        return resize_map(heat, self.size)

    def overlay(self, heat: np.ndarray, cmap: str = "bwr") -> np.ndarray:
        colour = np.take(_scaled_lut(cmap, self.alpha), _index(self.resize(heat), cmap), axis=0)
        colour += self.base
        return colour.astype(np.uint8)

    def dual(self, direction: np.ndarray, helpfulness: np.ndarray) -> np.ndarray:
        idx = signed_index(self.resize(direction))
        grey, chroma = _dual_tables(self.alpha)
        sat = np.clip(self.resize(helpfulness), -1.0, 1.0)
        sat += 1.0
        sat *= 0.5
        out = np.take(chroma, idx, axis=0)
        out *= sat[..., None]
        out += np.take(grey, idx)[..., None]
        out += self.base
        return out.astype(np.uint8)

    def primary(self, helpful: np.ndarray, harmful: np.ndarray, harm_threshold: float) -> np.ndarray:
        out = self.overlay(np.maximum(self.resize(helpful), 0.0))
        edge = outline(self.resize(harmful) <= -harm_threshold)
        out[edge] = OUTLINE_GREY
        return out


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4, cmap: str = "bwr") -> np.ndarray:
    """Signed heat ``(h, w)`` in [-1, 1] over ``image`` (H, W, 3) uint8 -> (H, W, 3) uint8.

    With a sequential ``cmap`` (not ``bwr``) the heat is read on [0, 1].
    """
    return Canvas(image, alpha).overlay(heat, cmap)


def overlay_positive(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Positive part only (white to red, the upper half of ``bwr``); negative values show as 0."""
    return overlay(image, np.maximum(np.asarray(heat, dtype=np.float32), 0.0), alpha)


def overlay_negative(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Negative part only (white to blue, the lower half of ``bwr``); positive values show as 0."""
    return overlay(image, np.minimum(np.asarray(heat, dtype=np.float32), 0.0), alpha)


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Unsigned map ``(h, w)`` in [0, 1] (Grad-CAM) with a sequential colormap."""
    return overlay(image, cam, alpha, cmap)


def dual(image: np.ndarray, direction: np.ndarray, helpfulness: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Dual encoding: hue and strength from ``direction``, saturation from ``helpfulness`` (both [-1, 1]).

    The ``bwr`` colour of the direction is mixed with its own grey level
    (0.299 R + 0.587 G + 0.114 B) in proportion ``(1 + helpfulness) / 2``.
    """
    return Canvas(image, alpha).dual(direction, helpfulness)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, mode="edge")
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def outline(mask: np.ndarray) -> np.ndarray:
    """Morphological edge of a bool mask: dilation minus erosion (3x3 cross), 2 px wide."""
    mask = np.asarray(mask, dtype=bool)
    return _dilate(mask) & _dilate(~mask)


def primary(
    image: np.ndarray,
    helpful: np.ndarray,
    harmful: np.ndarray,
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
) -> np.ndarray:
    """Helpful-only map (white to red) with regions where ``harmful <= -harm_threshold`` outlined in grey."""
    return Canvas(image, alpha).primary(helpful, harmful, harm_threshold)


def upsample(image: np.ndarray, min_side: int) -> np.ndarray:
    """``image`` (H, W, 3) enlarged by the smallest whole factor that makes its shorter side >= ``min_side``.

    Nearest neighbour (each pixel becomes a ``k`` x ``k`` block), so the
    pixels the model saw stay visible; an image already large enough is
    returned as it is. The maps drawn over it are resized to its new size
    by the :class:`Canvas`, bilinearly, as for any image.
    """
    image = _check_image(image)
    side = min(image.shape[:2])
    factor = -(-int(min_side) // side) if side < min_side else 1
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
