"""Localisation beside the AUC: the pointing game and relevance-mass accuracy on ground-truth masks.

- :func:`pointing_game` (Zhang et al., "Top-down neural attention by
  excitation backprop", 2016/2018): a hit when the map's maximum falls in
  the mask (optionally within ``tolerance`` pixels of it; Zhang et al. use
  15 px on full-size images). With several pixels at the maximum, all of
  them must lie in the (dilated) mask, so a constant map hits only when the
  mask covers the whole image: ties never win by accident.
- :func:`relevance_mass` (Arras et al., "CLEVR-XAI", 2022): the share of the
  map's positive relevance that falls inside the mask, ``sum max(map, 0)[mask]
  / sum max(map, 0)``; 1 = all relevance in the region. Pass ``-map`` to score
  the negative part of a signed map.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

logger = logging.getLogger(__name__)


def _checked(heat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat = np.asarray(heat, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if heat.shape != mask.shape or heat.ndim != 2:
        raise ValueError(f"map {heat.shape} and mask {mask.shape} must be the same (H, W)")
    return heat, mask


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` (H, W) grown by ``radius`` pixels (Euclidean disc)."""
    if radius <= 0:
        return mask
    from scipy.ndimage import binary_dilation

    r = np.arange(-radius, radius + 1)
    disc = (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2
    return binary_dilation(mask, structure=disc)


def pointing_game(heat: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """Whether the maximum of ``heat`` (H, W) lies in ``mask`` (H, W) bool, grown by ``tolerance`` px.

    Every pixel at the maximum must be inside. Raises ``ValueError`` for
    different shapes or an all-False mask (nothing to point at).
    """
    heat, mask = _checked(heat, mask)
    if not mask.any():
        raise ValueError("the mask is empty: the pointing game needs a region")
    if not np.isfinite(heat).all():
        raise ValueError("the map has NaN or infinite values")
    peaks = heat == heat.max()
    return bool(dilate(mask, tolerance)[peaks].all())


def relevance_mass(heat: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive part of ``heat`` inside ``mask``; NaN without positive relevance or mask pixels."""
    heat, mask = _checked(heat, mask)
    pos = np.maximum(np.nan_to_num(heat, nan=0.0), 0.0)
    total = pos.sum()
    if not total > 0 or not mask.any():
        return float("nan")
    return float(pos[mask].sum() / total)


def localisation_summary(heats: Sequence[np.ndarray], masks: Sequence[np.ndarray], tolerance: int = 0) -> dict:
    """Pointing-game hit rate and mean relevance mass over images with a non-empty mask.

    Returns ``{"pointing_game", "relevance_mass", "n_images", "n_skipped"}``:
    images with an empty mask are skipped (and counted); the relevance mass
    averages the images where it is defined.
    """
    if len(heats) != len(masks):
        raise ValueError(f"{len(heats)} maps but {len(masks)} masks")
    hits, masses, skipped = [], [], 0
    for heat, mask in zip(heats, masks):
        if not np.asarray(mask, dtype=bool).any():
            skipped += 1
            continue
        hits.append(pointing_game(heat, mask, tolerance))
        masses.append(relevance_mass(heat, mask))
    mass = np.asarray(masses, dtype=np.float64)
    mass = mass[np.isfinite(mass)]
    return {
        "pointing_game": float(np.mean(hits)) if hits else float("nan"),
        "relevance_mass": float(mass.mean()) if mass.size else float("nan"),
        "n_images": len(hits),
        "n_skipped": skipped,
    }
