"""Degenerate results flagged in plain words, so that they are not drawn as if they meant something.

Four checks (each a figure and, past its threshold, a warning):

- **collapsed predictions**: the spread (population sd) of the predictions is
  a small fraction of the targets' (:attr:`Thresholds.spread_ratio`): every
  map then explains a near-constant model.
- **blank or one-signed maps**: the share of images whose map of a method is
  zero everywhere (max |value| <= :attr:`Thresholds.zero`) and, for a signed
  method, of one sign everywhere (:attr:`Thresholds.image_share`); a zero map
  renders as a plain tile that reads as "nothing salient".
- **flipped scores**: the share of signed AIS scores whose sign the z-score
  flips (a below-average |Δy| turns a helpful unit into a negative score;
  :attr:`Thresholds.flipped`).
- **position effects** (:func:`position_effects`): the mean map of a method
  over the images, the mean over images of the correlation between the
  image's map and that mean map (how much of each map a fixed pattern
  explains), and the cell of a ``grid x grid`` partition where each image's
  map peaks (largest |value|): flagged when one cell holds the peak of most
  images (:attr:`Thresholds.peak_share`) or the mean map explains most of
  every map (:attr:`Thresholds.mean_map_cc`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ais.agreement import cc

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """When a figure becomes a warning."""

    spread_ratio: float = 0.1  # sd(predictions) / sd(targets) below this: collapsed
    zero: float = 1e-8  # max |map| at most this: a blank map
    image_share: float = 0.5  # share of images with a blank / one-signed map above this: flagged
    flipped: float = 0.25  # share of signed scores flipped by the z-score above this: flagged
    peak_share: float = 0.5  # share of images peaking in one grid cell at least this: flagged
    mean_map_cc: float = 0.9  # mean correlation of the images' maps with the mean map at least this: flagged
    grid: int = 4  # cells per side for the peak position
    min_images: int = 4  # position effects need at least this many images


def prediction_spread(y_pred: Any, y_true: Any) -> dict[str, float]:
    """``{"sd_pred", "sd_true", "ratio"}`` over the pairs where both are finite (population sd)."""
    p, t = np.asarray(y_pred, dtype=np.float64).ravel(), np.asarray(y_true, dtype=np.float64).ravel()
    ok = np.isfinite(p) & np.isfinite(t)
    sd_p, sd_t = (float(a[ok].std()) if ok.sum() >= 2 else float("nan") for a in (p, t))
    return {"sd_pred": sd_p, "sd_true": sd_t, "ratio": sd_p / sd_t if sd_t > 0 else float("nan")}


def blank_maps(maps: np.ndarray, signed: bool, zero: float = 1e-8) -> dict[str, float]:
    """Shares of images (maps ``(N, H, W)``) whose map is blank, or (signed) non-blank but of one sign everywhere."""
    m = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    blank = np.abs(m).max(axis=1, initial=0.0) <= zero if m.size else np.ones(len(m), dtype=bool)
    one_signed = ~blank & ((m.min(axis=1, initial=0.0) >= -zero) | (m.max(axis=1, initial=0.0) <= zero))
    n = max(len(m), 1)
    return {"blank": float(blank.sum() / n), "one_signed": float(one_signed.sum() / n) if signed else 0.0,
            "n_images": int(len(m))}


def position_effects(maps: np.ndarray, grid: int = 4, zero: float = 1e-8) -> dict[str, Any]:
    """The mean map's hold on maps ``(N, H, W)``: mean correlation with it, and where the maps peak.

    Returns ``{"mean_map" (H, W), "mean_map_cc" (mean over images of CC(map, mean map); blank maps
    left out), "peak_cell" ((row, col) of the ``grid x grid`` cell most images peak in), "peak_share"
    (its share of the non-blank images), "n_images"}``.
    """
    m = np.asarray(maps, dtype=np.float64)
    n, h, w = m.shape
    mean = m.mean(axis=0) if n else np.zeros((h, w))
    live = np.abs(m.reshape(n, -1)).max(axis=1, initial=0.0) > zero
    ccs = np.array([cc(m[i], mean) for i in np.flatnonzero(live)], dtype=np.float64)
    ccs = ccs[np.isfinite(ccs)]
    peaks = np.abs(m[live]).reshape(int(live.sum()), h * w).argmax(axis=1)  # no live map: no peaks
    cells = (peaks // w) * grid // h * grid + (peaks % w) * grid // w
    counts = np.bincount(cells, minlength=grid * grid)
    top = int(counts.argmax())
    return {
        "mean_map": mean,
        "mean_map_cc": float(ccs.mean()) if ccs.size else float("nan"),
        "peak_cell": (top // grid, top % grid),
        "peak_share": float(counts[top] / live.sum()) if live.any() else float("nan"),
        "n_images": int(live.sum()),
    }


def _map_flags(name: str, maps: np.ndarray, signed: bool, t: Thresholds) -> list[str]:
    flags = []
    b = blank_maps(maps, signed, t.zero)
    n = b["n_images"]
    if b["blank"] > t.image_share:
        flags.append(f"{name}: the map is zero everywhere for {round(b['blank'] * n)} of {n} images; its panels "
                     "show a plain tile, which means 'no signal', not 'nothing salient'.")
    if b["one_signed"] > t.image_share:
        flags.append(f"{name}: the signed map has one sign everywhere for {round(b['one_signed'] * n)} of {n} "
                     "images; its positive and negative parts do not separate regions there.")
    pos = position_effects(maps, t.grid, t.zero)
    if pos["n_images"] >= t.min_images and pos["peak_share"] >= t.peak_share:
        r, c = pos["peak_cell"]
        flags.append(f"{name}: the map peaks in the same cell (row {r + 1}, column {c + 1} of a {t.grid} x {t.grid} "
                     f"grid) for {round(pos['peak_share'] * pos['n_images'])} of {pos['n_images']} images: "
                     "a position effect, not image content.")
    if pos["n_images"] >= t.min_images and pos["mean_map_cc"] >= t.mean_map_cc:
        flags.append(f"{name}: the images' maps correlate {pos['mean_map_cc']:.2f} on average with their mean map: "
                     "a fixed pattern explains most of every map.")
    return flags


def degenerate_flags(
    y_pred: Any = None,
    y_true: Any = None,
    maps: Mapping[str, np.ndarray] | None = None,
    fraction_flipped: float | None = None,
    signed: Mapping[str, bool] | None = None,
    thresholds: Thresholds = Thresholds(),
) -> list[str]:
    """Plain-words warnings for whatever is degenerate; ``[]`` when nothing is.

    ``y_pred`` / ``y_true`` ``(N,)`` (labelled pairs); ``maps``: method or map
    name -> ``(N, H, W)`` maps of the images; ``signed``: which of them are
    signed (default: those with a negative value in any image);
    ``fraction_flipped``: the fusion summary's share of signed scores whose
    sign the z-score flips. Any argument left ``None`` is not checked.
    """
    t, flags = thresholds, []
    if y_pred is not None and y_true is not None:
        s = prediction_spread(y_pred, y_true)
        if np.isfinite(s["ratio"]) and s["ratio"] < t.spread_ratio:
            flags.append(f"The predictions have collapsed: their spread (sd {s['sd_pred']:.3g}) is "
                         f"{100 * s['ratio']:.1f} % of the targets' (sd {s['sd_true']:.3g}); every map explains "
                         "a near-constant model.")
    if fraction_flipped is not None and np.isfinite(fraction_flipped) and fraction_flipped > t.flipped:
        flags.append(f"{100 * fraction_flipped:.0f} % of the signed AIS scores have their sign flipped by the "
                     "z-score (a below-average |Δy| counts against the unit); consider fusion.magnitude: "
                     "zscore_clipped or raw.")
    for name, m in (maps or {}).items():
        m = np.asarray(m)
        is_signed = bool((m < 0).any()) if signed is None or name not in signed else bool(signed[name])
        flags += _map_flags(name, m, is_signed, t)
    for flag in flags:
        logger.warning("degenerate result: %s", flag)
    return flags
