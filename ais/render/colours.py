"""Colour lookup tables sampled once from matplotlib colormaps, and map values -> table indices.

Signed maps in [-1, 1] use ``bwr`` through a ``TwoSlopeNorm`` centred at 0 on
[-1, 1] (on a symmetric range the linear map ``(v + 1) / 2``): -1 -> blue
(0, 0, 255), 0 -> white, +1 -> red (255, 0, 0). The table has
:data:`SIGNED_LUT_SIZE` = 257 entries, an odd number so that 0 falls exactly
on the white centre entry (with 256 entries no entry is white). Unsigned maps
in [0, 1] (Grad-CAM) use a 256-entry sequential table (``jet`` by default).
"""

from __future__ import annotations

import functools

import numpy as np

SIGNED_LUT_SIZE = 257
SEQUENTIAL_LUT_SIZE = 256


@functools.lru_cache(maxsize=None)
def lut(name: str = "bwr", size: int | None = None) -> np.ndarray:
    """``(size, 3)`` uint8 colours of matplotlib colormap ``name`` at ``size`` evenly spaced points.

    ``size`` defaults to :data:`SIGNED_LUT_SIZE` for ``bwr`` and
    :data:`SEQUENTIAL_LUT_SIZE` otherwise. The colormap is resampled from its
    definition (not from its own 256-entry table), so ``lut("bwr")[128]`` is
    exactly white.
    """
    import matplotlib

    if size is None:
        size = SIGNED_LUT_SIZE if name == "bwr" else SEQUENTIAL_LUT_SIZE
    cmap = matplotlib.colormaps[name].resampled(size)
    rgba = cmap(np.arange(size))  # integer input indexes the resampled table directly
    table = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    table.setflags(write=False)
    return table


def signed_index(values: np.ndarray, size: int = SIGNED_LUT_SIZE) -> np.ndarray:
    """LUT indices of values in [-1, 1] (TwoSlopeNorm(vcenter=0, vmin=-1, vmax=1)); clipped, NaN as 0."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float32), -1.0, 1.0), copy=False)  # NaN -> 0
    return np.rint((v + 1.0) * (0.5 * (size - 1))).astype(np.intp)


def unsigned_index(values: np.ndarray, size: int = SEQUENTIAL_LUT_SIZE) -> np.ndarray:
    """LUT indices of values in [0, 1]; clipped, NaN as 0."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0), copy=False)  # NaN -> 0
    return np.rint(v * (size - 1)).astype(np.intp)


def colorize(values: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of a map: signed [-1, 1] for ``bwr``, [0, 1] for others."""
    return np.take(lut(cmap), _index(values, cmap), axis=0)


def _index(values: np.ndarray, cmap: str) -> np.ndarray:
    size = SIGNED_LUT_SIZE if cmap == "bwr" else len(lut(cmap))
    return signed_index(values, size) if cmap == "bwr" else unsigned_index(values, size)


@functools.lru_cache(maxsize=64)
def _scaled_lut(cmap: str, alpha: float) -> np.ndarray:
    """``alpha * lut(cmap)`` as float32, the colour term of a blend."""
    return lut(cmap).astype(np.float32) * np.float32(alpha)


@functools.lru_cache(maxsize=8)
def _dual_tables(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per ``bwr`` entry: ``alpha * grey`` (257,) and ``alpha * (colour - grey)`` (257, 3), float32."""
    colour = lut("bwr").astype(np.float32)
    grey = colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return grey * np.float32(alpha), (colour - grey[:, None]) * np.float32(alpha)
