"""What the helpfulness sign reduces to (regression).

With the residual ``r = |y_pred - y_true|`` and ``s = sign(y_pred - y_true)``,
ablating a unit moves the prediction by ``Δy``; whenever ``|Δy| < r`` the
ablated prediction stays on the same side of the truth, so

    Δerror = |y_pred + Δy - y_true| - |y_pred - y_true| = s · Δy    exactly.

Then "helpful" (Δerror > 0) only means "the unit pushes the prediction toward
the true score", and the AIS channel weight ``sign(Δerror) · z`` is
``sign(y_true - y_pred) · sign(direction) · z`` with ``direction = -Δy``: the
AIS map is the direction map times the sign of the image's error
(:func:`error_sign`), up to the z-score's affine change of magnitudes.

:func:`sign_reduction` measures, per image, the share of labelled (image,
unit) pairs where the condition holds and checks the identity on the table's
own numbers; :func:`map_product_correlation` compares the AIS map with the
product. For another task (classification: the error is a cross-entropy) the
identity is not this one and the fractions say nothing.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from ais.agreement import cc

logger = logging.getLogger(__name__)

REQUIRED = ("image_id", "y_true", "y_pred", "delta_prediction", "delta_residual")
SIGN_COLUMNS = ("image_id", "n_pairs", "n_holds", "fraction_holds", "n_identity", "max_identity_error",
                "fraction_sign_agrees")


def error_sign(y_pred: Any, y_true: Any) -> np.ndarray:
    """``sign(y_true - y_pred)``: +1 where the model under-predicts; the factor that turns direction into AIS."""
    return np.sign(np.asarray(y_true, dtype=np.float64) - np.asarray(y_pred, dtype=np.float64))


def _pairs(table: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(f"the ablation table lacks column(s) {', '.join(missing)}")
    f = {c: table[c].to_numpy(np.float64, na_value=np.nan) for c in REQUIRED[1:]}
    labelled = ~(np.isnan(f["y_true"]) | np.isnan(f["delta_residual"]))
    residual = np.abs(f["y_pred"] - f["y_true"])
    s = np.sign(f["y_pred"] - f["y_true"])
    dy, dres = f["delta_prediction"], f["delta_residual"]
    holds = labelled & (np.abs(dy) < residual)
    gap = np.abs(dres - s * dy)
    tol = 1e-5 * (1.0 + np.abs(f["y_pred"]) + np.abs(f["y_true"]))  # float32 tables: rounding of |.| differences
    signed = labelled & (dres != 0)
    return pd.DataFrame({
        "image_id": table["image_id"].astype(str).to_numpy(), "labelled": labelled, "holds": holds,
        "identity": holds & (gap <= tol), "gap": np.where(holds, gap, np.nan), "signed": signed,
        "agrees": signed & (np.sign(dres) == s * np.sign(dy)),
    })


def sign_reduction(ablation_table: pd.DataFrame) -> pd.DataFrame:
    """Per image (:data:`SIGN_COLUMNS`): labelled pairs, pairs with ``|Δy| < |y_pred - y_true|``, their fraction,
    how many of them satisfy ``Δerror = sign(y_pred - y_true) · Δy`` on the table's numbers (and the largest
    deviation), and the fraction of signed pairs whose helpfulness equals "pushes toward the true score".

    ``ablation_table``: rows of :data:`ais.tables.ABLATION_SCHEMA` (or the fused scores). Unlabelled images
    have ``n_pairs`` 0 and NaN fractions.
    """
    pairs = _pairs(ablation_table)
    g = pairs.groupby("image_id", sort=True)
    out = pd.DataFrame({
        "n_pairs": g["labelled"].sum(), "n_holds": g["holds"].sum(), "n_identity": g["identity"].sum(),
        "max_identity_error": g["gap"].max(), "n_signed": g["signed"].sum(), "n_agrees": g["agrees"].sum(),
    }).reset_index()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["fraction_holds"] = out["n_holds"] / out["n_pairs"].where(out["n_pairs"] > 0)
        out["fraction_sign_agrees"] = out["n_agrees"] / out["n_signed"].where(out["n_signed"] > 0)
    for col in ("n_pairs", "n_holds", "n_identity"):
        out[col] = out[col].astype(np.int64)
    return out[list(SIGN_COLUMNS)]


def sign_summary(per_image: pd.DataFrame) -> dict[str, Any]:
    """The run's figures and one plain-words sentence from :func:`sign_reduction`'s table."""
    n_pairs, n_holds = int(per_image["n_pairs"].sum()), int(per_image["n_holds"].sum())
    labelled = per_image[per_image["n_pairs"] > 0]
    pooled = n_holds / n_pairs if n_pairs else float("nan")
    out = {
        "n_images": int(len(labelled)), "n_pairs": n_pairs, "n_holds": n_holds, "fraction_holds": pooled,
        "fraction_holds_min_image": float(labelled["fraction_holds"].min()) if len(labelled) else float("nan"),
        "n_identity": int(per_image["n_identity"].sum()),
    }
    if not n_pairs:
        out["sentence"] = "No labelled image was ablated: the helpfulness sign could not be checked."
        return out
    out["sentence"] = (
        f"For {100 * pooled:.1f} % of the {n_pairs} labelled image-unit pairs, removing the unit moved the "
        "prediction by less than the image's error, so there Δerror = sign(y_pred − y_true) · Δy exactly: "
        "'helpful' only means 'pushes the prediction toward the true score', and the AIS map is the direction "
        "map times the sign of the image's error."
    )
    return out


def map_product_correlation(ais_map: np.ndarray, direction_map: np.ndarray, error_sign: float) -> float:
    """Pearson correlation over pixels of ``ais_map`` (H, W) and ``error_sign * direction_map`` (H, W).

    ``error_sign``: :func:`error_sign` of the image (``sign(y_true - y_pred)``). NaN when either map is
    constant or the sign is 0 (a perfect prediction).
    """
    if np.shape(ais_map) != np.shape(direction_map):
        raise ValueError(f"maps differ in shape: {np.shape(ais_map)} and {np.shape(direction_map)}")
    if not error_sign:
        return float("nan")
    return cc(ais_map, float(np.sign(error_sign)) * np.asarray(direction_map, dtype=np.float64))


def map_product_correlations(ais: np.ndarray, direction: np.ndarray, y_pred: Any, y_true: Any) -> np.ndarray:
    """:func:`map_product_correlation` of every image: maps ``(N, H, W)``, predictions and truths ``(N,)``; ``(N,)``."""
    signs = error_sign(y_pred, y_true)
    return np.array([map_product_correlation(a, d, s) if np.isfinite(s) else np.nan
                     for a, d, s in zip(ais, direction, signs)], dtype=np.float64)
