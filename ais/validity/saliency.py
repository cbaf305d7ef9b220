"""Agreement of a map with an external saliency map or human fixations (the saliency-benchmark metrics).

Definitions follow the MIT/Tuebingen saliency benchmark (Bylinskii et al.,
"What do different evaluation metrics tell us about saliency models?", 2019)
as implemented in pysaliency (``pysaliency/metrics.py``,
``saliency_map_models.py``, ``roc.py``); ``p`` is the judged map, ``q`` the
external (reference) map, fixations are pixel positions ``(ys, xs)``, a
position repeated once per fixation:

- CC, SIM, KLD: :func:`ais.agreement.cc`, :func:`~ais.agreement.sim`,
  :func:`~ais.agreement.kld` (KLD is pysaliency's ``MIT_KLDiv``: ``sum Q
  log(eps + Q / (P + eps))``). They differ from pysaliency only on degenerate
  input: a constant map gives CC NaN (pysaliency: 0), an all-zero map gives
  SIM and KLD NaN (pysaliency: a uniform map), a negative map is refused
  (pysaliency shifts it to a minimum of 0).
- :func:`nss`: mean over fixations of ``(p - mean(p)) / std(p)`` (population
  std); NaN for a constant map (pysaliency: 0). :func:`nss_density`: its
  expectation for fixations drawn from a density ``q``, ``sum Q (p -
  mean) / std``.
- :func:`auc_judd`: pysaliency's ``AUC_Judd`` without its 1e-7 jitter
  (ties are kept): positives are the map at the fixations, negatives the map
  at every unfixated pixel; thresholds at the positives' values; the ROC
  curve's trapezoidal area.
- :func:`shuffled_auc`: pysaliency's ``sAUC``: negatives are the map at the
  other images' fixations (which removes the centre bias shared by all
  images); the area with every value as threshold, i.e. the Mann-Whitney
  statistic with ties counted 1/2, averaged over this image's fixations.

:func:`read_external_map` / :func:`read_fixations` load a map file (PNG of
any mode, or a 2-D ``.npy``) at any size onto the judged maps' grid.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from ais.agreement import cc, kld, sim

logger = logging.getLogger(__name__)

__all__ = ["auc_judd", "cc", "kld", "map_parts", "nss", "nss_density", "read_external_map", "read_fixations",
           "shuffled_auc", "sim"]

Fixations = tuple[np.ndarray, np.ndarray]  # (ys, xs) int arrays, one entry per fixation
SUFFIXES = (".npy", ".png")


def _zscored(p: np.ndarray) -> np.ndarray | None:
    p = np.asarray(p, dtype=np.float64)
    std = p.std()
    return (p - p.mean()) / std if std > 0 else None


def _values(p: np.ndarray, fixations: Fixations) -> np.ndarray:
    ys, xs = (np.asarray(a, dtype=np.int64) for a in fixations)
    h, w = np.shape(p)
    if ys.shape != xs.shape or (ys.size and (ys.min() < 0 or xs.min() < 0 or ys.max() >= h or xs.max() >= w)):
        raise ValueError(f"fixations must be (ys, xs) of equal length inside the {h}x{w} map")
    return np.asarray(p, dtype=np.float64)[ys, xs]


def nss(p: np.ndarray, fixations: Fixations) -> float:
    """Normalised scanpath saliency of map ``p`` (H, W) at ``fixations`` ``(ys, xs)``; NaN if constant or none."""
    z = _zscored(p)
    if z is None or len(fixations[0]) == 0:
        return float("nan")
    return float(_values(z, fixations).mean())


def nss_density(p: np.ndarray, q: np.ndarray) -> float:
    """The NSS expected for fixations drawn from the density ``q`` (H, W, >= 0): ``sum Q z(p)``."""
    z = _zscored(p)
    q = np.asarray(q, dtype=np.float64)
    if z is None or q.shape != z.shape or not q.sum() > 0:
        return float("nan")
    return float((z * q).sum() / q.sum())


def auc_judd(p: np.ndarray, fixations: Fixations) -> float:
    """AUC-Judd of map ``p`` (H, W) for ``fixations``: thresholds at the fixated values, negatives = unfixated pixels.

    NaN without fixations or without unfixated pixels.
    """
    p = np.asarray(p, dtype=np.float64)
    positives = _values(p, fixations)
    fixated = np.zeros(p.shape, dtype=bool)
    fixated[np.asarray(fixations[0], dtype=np.int64), np.asarray(fixations[1], dtype=np.int64)] = True
    negatives = p[~fixated]
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    top = max(positives.max(), negatives.max()) + 1
    bottom = min(positives.min(), negatives.min())
    thresholds = np.concatenate([[top], np.sort(positives)[::-1], [bottom]])
    pos, neg = np.sort(positives), np.sort(negatives)
    tpr = np.concatenate([[0.0], (pos.size - np.searchsorted(pos, thresholds, side="left")) / pos.size])
    fpr = np.concatenate([[0.0], (neg.size - np.searchsorted(neg, thresholds, side="left")) / neg.size])
    return float(np.trapezoid(tpr, fpr))


def shuffled_auc(p: np.ndarray, fixations: Fixations, other: Fixations) -> float:
    """Shuffled AUC: this image's fixated values against the map at ``other`` images' fixations (ties 1/2).

    NaN when either set is empty.
    """
    positives = _values(p, fixations)
    negatives = np.sort(_values(p, other))
    if positives.size == 0 or negatives.size == 0:
        return float("nan")
    below = np.searchsorted(negatives, positives, side="left")
    ties = np.searchsorted(negatives, positives, side="right") - below
    return float(((below + 0.5 * ties) / negatives.size).mean())


def map_parts(heat: np.ndarray, signed: bool) -> dict[str, np.ndarray]:
    """The non-negative maps a map is judged by: ``all`` (unsigned), or ``abs``, ``pos``, ``neg`` (signed)."""
    heat = np.asarray(heat, dtype=np.float64)
    if not signed:
        return {"all": np.maximum(heat, 0.0)}
    return {"abs": np.abs(heat), "pos": np.maximum(heat, 0.0), "neg": np.maximum(-heat, 0.0)}


def find_map(folder: str | os.PathLike, image_id: str, stem: str) -> tuple[Path | None, str]:
    """The file of ``image_id`` in ``folder`` (``<id>`` or ``<file stem>`` + ``.npy`` / ``.png``) and why not.

    Returns ``(path, "")``, or ``(None, reason)`` when there is none or more than one.
    """
    folder = Path(folder)
    names = dict.fromkeys(f"{name}{suffix}" for name in (image_id, stem) for suffix in SUFFIXES)
    found = []
    for name in names:
        path = folder / name
        if path.is_file() and folder.resolve() in path.resolve().parents:
            found.append(path)
    if not found:
        return None, f"no {' or '.join(names)} in {folder}"
    if len(found) > 1:
        return None, f"ambiguous: {', '.join(p.name for p in found)} all exist in {folder}"
    return found[0], ""


def read_array(path: str | os.PathLike) -> np.ndarray:
    """A map file as a 2-D float64 array at its own size (PNG: luminance; NPY: 2-D, or (H, W, 1)).

    Raises ``ValueError`` naming the file when it cannot be read, is not 2-D,
    or holds non-finite or negative values.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im if im.mode.startswith("I") or im.mode == "F" else im.convert("L"))
    except Exception as exc:  # noqa: BLE001 (any decoding error: named and listed, never skipped)
        raise ValueError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from exc
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or min(arr.shape) < 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{path}: expected a 2-D numeric map, got shape {arr.shape} of {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: has NaN or infinite values")
    if (arr < 0).any():
        raise ValueError(f"{path}: has negative values; a saliency map or density must be >= 0")
    return arr


def resize_map(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``arr`` (h, w) resized to ``size`` = (H, W) with PIL's antialiased bilinear filter, float64."""
    if arr.shape == tuple(size):
        return arr
    from PIL import Image

    im = Image.fromarray(arr.astype(np.float32), mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.maximum(np.asarray(im, dtype=np.float64), 0.0)


def read_external_map(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """The external map at ``path`` on the grid ``size`` = (H, W) (:func:`read_array`, :func:`resize_map`)."""
    return resize_map(read_array(path), size)


def is_binary(arr: np.ndarray) -> bool:
    """True when ``arr`` holds only 0 and one other value, both present (a fixation map, not a density)."""
    values = np.unique(arr)
    return values.size == 2 and values[0] == 0


def points_on_grid(counts: np.ndarray, size: tuple[int, int]) -> Fixations:
    """Fixations ``(ys, xs)`` on the grid ``size`` from a fixation map (h, w): each non-zero pixel once per count.

    Integer counts repeat the pixel; other non-zero values count once. A
    pixel's centre ``(r + 0.5) * H / h`` is floored onto the grid.
    """
    counts = np.asarray(counts)
    rows, cols = np.nonzero(counts)
    values = counts[rows, cols]
    integral = np.all(values == np.round(values)) and values.max(initial=0) > 1
    repeat = values.astype(np.int64) if integral else np.ones(rows.size, dtype=np.int64)
    h, w = counts.shape
    ys = np.minimum(((rows + 0.5) * size[0] / h).astype(np.int64), size[0] - 1)
    xs = np.minimum(((cols + 0.5) * size[1] / w).astype(np.int64), size[1] - 1)
    return np.repeat(ys, repeat), np.repeat(xs, repeat)


def read_fixations(path: str | os.PathLike, size: tuple[int, int]) -> Fixations:
    """The fixations of a binary (or count) fixation map file on the grid ``size``; ``ValueError`` if it has none."""
    arr = read_array(path)
    if not (arr > 0).any():
        raise ValueError(f"{path}: has no fixation (no non-zero pixel)")
    return points_on_grid(arr, size)


def agreement(p: np.ndarray, q: np.ndarray, fixations: Fixations | None, other: Fixations | None) -> dict[str, float]:
    """CC, SIM, KLD of ``p`` against ``q``; NSS (on points, else density-weighted), AUC-Judd and sAUC on points."""
    with np.errstate(all="ignore"):
        out = {"cc": cc(p, q), "sim": sim(p, q), "kld": kld(p, q)}
    if fixations is None:
        return {**out, "nss": nss_density(p, q), "auc_judd": float("nan"), "sauc": float("nan")}
    out.update(nss=nss(p, fixations), auc_judd=auc_judd(p, fixations))
    out["sauc"] = shuffled_auc(p, fixations, other) if other is not None else float("nan")
    return out


def other_fixations(points: Mapping[str, Fixations], image_id: str) -> Fixations | None:
    """Every other image's fixations, concatenated (the negatives of the shuffled AUC); None if there are none."""
    rest = [f for k, f in points.items() if k != image_id and len(f[0])]
    if not rest:
        return None
    return np.concatenate([f[0] for f in rest]), np.concatenate([f[1] for f in rest])
