"""Agreement between maps (saliency-benchmark metrics) and localisation of known regions.

Metrics follow the MIT/Tuebingen saliency benchmark definitions
(Bylinskii et al., "What do different evaluation metrics tell us about
saliency models?", 2019), with ``p`` the map being judged and ``q`` the
reference:

- :func:`cc`: Pearson correlation of the two maps (NaN if either is constant).
- :func:`sim`: histogram intersection ``sum min(P, Q)`` of the maps each
  normalised to sum 1 (1 = identical distributions, 0 = disjoint). The
  benchmark's code also min-max scales each map first; we do not, because
  both maps compared here are non-negative and their zero level means
  "no evidence" (negative values raise ``ValueError``; an all-zero map
  gives NaN for SIM and KLD).
- :func:`kld`: ``KL(Q || P) = sum Q * log(eps + Q / (P + eps))`` with P, Q
  normalised to sum 1 and ``eps = 2.2204e-16`` (MATLAB's eps, as in the
  benchmark): the information lost when the judged map ``p`` stands in for
  the reference ``q``; 0 = identical, larger = worse. Not symmetric.

:func:`compare` applies them to the AIS magnitude ``|ais|`` (judged) against
Grad-CAM (reference).

:func:`localization_auc` is the ROC AUC of a map's pixel values for telling
mask pixels from the rest (Mann-Whitney U / (n_pos n_neg) with average ranks
for ties: a tie between a mask and a non-mask pixel counts 1/2; NaN when the
mask is all False or all True). :func:`pooled_localization_auc` concatenates
the pixels of many images first: more stable (one ranking over all pixels,
small masks do not dominate) but sensitive to map scales differing between
images; :func:`localization_summary` reports both, and the mean of the
per-image AUCs is the headline number when maps are normalised per image.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import rankdata

EPS = float(np.finfo(np.float64).eps)  # 2.220446049250313e-16, MATLAB's eps


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).ravel()


def _as_distribution(a: np.ndarray, name: str) -> np.ndarray:
    a = _flat(a)
    if np.any(a < 0):
        raise ValueError(f"{name} has negative values; pass a magnitude (e.g. |map|)")
    total = a.sum()
    return a / total if total > 0 else np.full_like(a, np.nan)


def cc(p: np.ndarray, q: np.ndarray) -> float:
    """Pearson correlation of two maps of the same shape; NaN if either is constant."""
    p, q = _flat(p), _flat(q)
    p = p - p.mean()
    q = q - q.mean()
    denom = np.sqrt((p * p).sum() * (q * q).sum())
    return float((p * q).sum() / denom) if denom > 0 else float("nan")


def sim(p: np.ndarray, q: np.ndarray) -> float:
    """Histogram intersection of two non-negative maps normalised to sum 1, in [0, 1]."""
    return float(np.minimum(_as_distribution(p, "p"), _as_distribution(q, "q")).sum())


def kld(p: np.ndarray, q: np.ndarray, eps: float = EPS) -> float:
    """``KL(Q || P)`` of non-negative maps normalised to sum 1: ``sum Q log(eps + Q / (P + eps))``.

    ``p`` is the judged map, ``q`` the reference.
    """
    P = _as_distribution(p, "p")
    Q = _as_distribution(q, "q")
    return float((Q * np.log(eps + Q / (P + eps))).sum())


def compare(ais: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """CC, SIM and KLD of the AIS magnitude ``|ais|`` (judged) against ``reference`` (e.g. Grad-CAM)."""
    mag = np.abs(np.asarray(ais, dtype=np.float64))
    return {"cc": cc(mag, reference), "sim": sim(mag, reference), "kld": kld(mag, reference)}


def agreement_table(
    image_ids: Sequence[str],
    maps: Mapping[str, np.ndarray],
    judged: str = "ais",
    references: Iterable[str] = ("gradcam", "gradcampp"),
) -> pd.DataFrame:
    """One row per (image, reference): CC, SIM, KLD of ``|maps[judged]|`` against ``maps[reference]``.

    ``maps`` holds ``(N, H, W)`` arrays as returned by :func:`ais.methods.compute_maps`.
    """
    rows = []
    for ref in references:
        for i, image_id in enumerate(image_ids):
            rows.append({"image_id": image_id, "judged": judged, "reference": ref,
                         **compare(maps[judged][i], maps[ref][i])})
    return pd.DataFrame(rows, columns=["image_id", "judged", "reference", "cc", "sim", "kld"])


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores, method="average")
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def localization_auc(heat: np.ndarray, mask: np.ndarray) -> float:
    """ROC AUC of ``heat`` (H, W) for the pixels of ``mask`` (H, W) bool; NaN for an all-False/True mask."""
    heat = np.asarray(heat)
    mask = np.asarray(mask)
    if heat.shape != mask.shape:
        raise ValueError(f"map {heat.shape} and mask {mask.shape} differ in shape")
    return _auc(_flat(heat), mask.ravel())


def pooled_localization_auc(heats: Iterable[np.ndarray], masks: Iterable[np.ndarray]) -> float:
    """ROC AUC over the concatenated pixels of many (map, mask) pairs."""
    heats, masks = list(heats), list(masks)
    for h, m in zip(heats, masks):
        if np.shape(h) != np.shape(m):
            raise ValueError(f"map {np.shape(h)} and mask {np.shape(m)} differ in shape")
    if not heats:
        return float("nan")
    return _auc(np.concatenate([_flat(h) for h in heats]), np.concatenate([np.ravel(m) for m in masks]))


def localization_summary(heats: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> dict[str, float]:
    """Per-image AUCs summarised (mean, median, n) and the pooled AUC, together."""
    aucs = np.array([localization_auc(h, m) for h, m in zip(heats, masks)], dtype=np.float64)
    ok = aucs[np.isfinite(aucs)]
    return {
        "auc_mean": float(ok.mean()) if ok.size else float("nan"),
        "auc_median": float(np.median(ok)) if ok.size else float("nan"),
        "n_images": int(ok.size),
        "n_skipped": int(aucs.size - ok.size),
        "auc_pooled": pooled_localization_auc(heats, masks),
    }
