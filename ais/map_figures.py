"""Per-image figures of the maps and their summaries: agreement, localisation, the gallery's choice.

- :func:`image_figures`: one image's agreement of |AIS| with each reference
  method (CC, SIM, KLD) and, where ground-truth masks exist (demo), the
  localisation AUCs that the methods declare (:data:`ais.tables.LOCALIZATION_AUCS`).
- :func:`localization_report`: ``localization.json``'s content from all images.
- :func:`gallery_selection`: the best-, median- and worst-predicted images.

**Localisation AUCs.** The fused AIS score is sign(Δerror) x magnitude, so
the AIS map's red marks what *helpful* channels see, not what raises
realism. Raise/lower-realism masks are therefore scored with the direction
map (channel weights -Δy: red raises the realism prediction):
``ais_pos_auc`` ranks pixels from the most positive (most realism-raising)
down against the raise masks -- the positive map's order, with the pixels it
leaves at 0 ordered by the negative part --, and ``ais_neg_auc`` from the
most negative down against the lower masks. ``ais_pos_clipped_auc`` /
``ais_neg_clipped_auc`` rank by the clipped parts alone (every pixel outside
the part ties at 0); ``ais_map_pos_auc`` / ``ais_map_neg_auc`` rank by the
AIS map itself, for transparency; ``gradcam_auc`` ranks by Grad-CAM (of the
realism output, so also "what raises it") against the raise masks.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from ais import agreement
from ais.tables import AGREEMENT_REFERENCES, IMAGE_STATS, LOCALIZATION_AUCS

GALLERY_GROUPS = ("best", "median", "worst")
UNLABELLED_GROUPS = ("highest", "median", "lowest")


def _part(heat: np.ndarray, part: str) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float64)
    if part == "pos":
        return heat
    if part == "neg":
        return -heat
    if part == "pos_clipped":
        return np.maximum(heat, 0.0)
    if part == "neg_clipped":
        return np.maximum(-heat, 0.0)
    if part == "all":
        return heat
    raise ValueError(f"unknown map part {part!r}")


def image_figures(maps: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per-image figures of one image's maps ``(H, W)``: agreement and (with masks) localisation AUCs.

    ``cc_<ref>``, ``sim_<ref>``, ``kld_<ref>``: :func:`ais.agreement.compare` of
    the AIS magnitude against the magnitude of each reference of
    :data:`ais.tables.AGREEMENT_REFERENCES`. With ``masks`` (``{"raise": bool
    (H, W), "lower": bool (H, W)}``): ``raise_fraction``, ``lower_fraction``
    and every AUC of :data:`ais.tables.LOCALIZATION_AUCS` (NaN where a mask is
    empty or full); without, those are NaN and ``has_mask`` is False. The
    methods' per-image statistics (:data:`ais.tables.IMAGE_STATS`, e.g. the
    spatial attention's entropy) need no mask. A figure whose map is absent
    from ``maps`` (a method not computed) is NaN.
    """
    out: dict[str, Any] = {}
    for ref in AGREEMENT_REFERENCES:  # NaN against a reference whose map was not computed
        # |reference|: a signed map (occlusion) is compared by magnitude, as |AIS| is; a no-op for CAMs (>= 0)
        compared = (agreement.compare(maps["ais"], np.abs(maps[ref])) if ref in maps
                    else dict.fromkeys(("cc", "sim", "kld")))
        for metric, value in compared.items():
            out[f"{metric}_{ref}"] = float("nan") if value is None else value
    out["has_mask"] = masks is not None
    out["raise_fraction"] = float(np.mean(masks["raise"])) if masks is not None else float("nan")
    out["lower_fraction"] = float(np.mean(masks["lower"])) if masks is not None else float("nan")
    for name, (key, part, mask) in LOCALIZATION_AUCS.items():  # NaN for a map not computed (optional methods)
        out[name] = (agreement.localization_auc(_part(maps[key], part), masks[mask])
                     if masks is not None and key in maps else float("nan"))
    for name, (key, stat) in IMAGE_STATS.items():  # the methods' per-image statistics (attention entropy)
        out[name] = float(stat(maps[key])) if key in maps else float("nan")
    return out


def _stats(values: pd.Series) -> dict[str, Any]:
    v = values.to_numpy(np.float64, na_value=np.nan)
    ok = v[np.isfinite(v)]
    return {
        "mean": float(ok.mean()) if ok.size else None,
        "median": float(np.median(ok)) if ok.size else None,
        "n_images": int(ok.size),
        "n_skipped": int(v.size - ok.size),
    }


def localization_report(table: pd.DataFrame) -> dict[str, Any]:
    """``localization.json``'s content from the gathered per-image table (:data:`ais.tables.HEATMAP_SCHEMA`).

    Headline values (``ais_pos_auc``, ``ais_neg_auc``, ``gradcam_auc`` and the
    other :data:`ais.tables.LOCALIZATION_AUCS`) are means of the per-image
    AUCs over the images whose mask has both classes; null, with ``reason``,
    when no image has masks (real data). ``image_stats``: mean, median and
    counts of each :data:`ais.tables.IMAGE_STATS` column over all images.
    """
    with_masks = table[table["has_mask"]] if len(table) else table
    out: dict[str, Any] = {
        "n_images": int(len(table)),
        "n_images_with_masks": int(len(with_masks)),
        "aggregate": "mean of per-image ROC AUCs (images whose mask has both classes)",
        "maps": {
            name: {"map": key, "part": part, "mask": mask}
            for name, (key, part, mask) in LOCALIZATION_AUCS.items()
        },
    }
    if len(with_masks) == 0:
        out["reason"] = ("no ground-truth region masks: only the demo data set has them"
                         if len(table) else "no images with heatmaps")
    else:
        out["reason"] = None
    per_key = {}
    for name in LOCALIZATION_AUCS:
        stats = _stats(with_masks[name]) if len(with_masks) else {"mean": None, "median": None,
                                                                   "n_images": 0, "n_skipped": 0}
        per_key[name] = stats
        out[name] = stats["mean"]
    out["per_key"] = per_key
    out["image_stats"] = {name: _stats(table[name]) if len(table) else None for name in IMAGE_STATS}
    out["agreement"] = {
        ref: {metric: _stats(table[f"{metric}_{ref}"]) if len(table) else None for metric in ("cc", "sim", "kld")}
        for ref in AGREEMENT_REFERENCES
    }
    out["weights"] = {k: int(v) for k, v in table["weights"].value_counts().sort_index().items()} if len(table) else {}
    return out


def gallery_selection(table: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """``[(group, image_id)]``: the ``n`` best-, median- and worst-predicted images, no image twice.

    Labelled images are ranked by ``abs_error`` (ties by image id): ``best``
    are the ``n`` smallest errors, ``worst`` the ``n`` largest (largest first),
    ``median`` the ``n`` in the middle of what is left. Without labelled
    images, by ``y_pred``: ``highest``, ``median``, ``lowest`` predicted
    realism. With fewer than ``3 n`` images the later groups get fewer.
    """
    if n <= 0 or len(table) == 0:
        return []
    labelled = table[table["abs_error"].notna()]
    if len(labelled):
        order = labelled.sort_values(["abs_error", "image_id"], kind="stable")["image_id"].tolist()
        names = GALLERY_GROUPS
    else:
        order = table.sort_values(["y_pred", "image_id"], ascending=[False, True], kind="stable")["image_id"].tolist()
        names = UNLABELLED_GROUPS
    k = len(order)
    first = order[:min(n, k)]
    last = order[max(k - n, len(first)):][::-1]
    middle = order[len(first):k - len(last)]
    begin = max(0, (len(middle) - n) // 2)
    centre = middle[begin:begin + n]
    return ([(names[0], i) for i in first] + [(names[1], i) for i in centre] + [(names[2], i) for i in last])
