"""Fusion of Δprediction and Δresidual into AIS scores, per image and per channel.

Input rows follow :data:`ais.tables.ABLATION_SCHEMA`: one row per (image,
channel) with ``delta_prediction`` (Δy = y_pred_ablated - y_pred) and
``delta_residual`` (Δerror = |y_pred_ablated - y_true| - |y_pred - y_true|).

Per row (:func:`fuse`):

- ``sign = sign(Δerror)``: +1 when removing the channel raises the error (the
  channel *helps*), -1 when it lowers the error (the channel *harms*), 0 when
  Δerror is 0 or null. Unlabelled images have null residuals, so their
  ``sign`` is 0 and their ``ais_score`` is **null** (not 0): they get no
  per-image score; the fusion stage gives every channel a data-set-level
  score (mean over labelled images) that explains unlabelled images instead.
- ``z = (|Δy| - mean) / std`` with the *population* standard deviation
  (ddof=0), over all rows (``scope="global"``, the seed's choice) or within
  each image (``scope="per_image"``); a population with std 0 gets z = 0.
- ``magnitude``: ``zscore`` -> z (the seed's), ``zscore_clipped`` -> max(z, 0),
  ``raw`` -> |Δy|.
- ``ais_score = sign * magnitude``.
- ``direction = -Δy``: how much the channel's presence raised the prediction
  (positive = raises realism).
- ``quadrant``: ``{helpful|harmful|neutral}-{raises|lowers|none}``: helpful
  when Δerror > 0, harmful when < 0, neutral when 0 or null; raises when
  Δy < 0 (removing the channel lowers the realism score, so it raised it),
  lowers when Δy > 0, none when Δy = 0.
- ``flipped``: the seed's z-score formula flips this row's direction
  (z < 0 and sign != 0: a below-average |Δy| turns a helpful channel into a
  negative score). It is computed from z whatever ``magnitude`` is chosen, so
  the output counts how many scores the seed's choice affects.

Classification (:mod:`ais.tasks.classification`): y is the explained class's
log-odds and the error the true class's cross-entropy; the same formulas hold
(``raises`` = towards the explained class), and :func:`quadrant_words` names
the quadrants in the task's words ("helpful, towards generated").
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

SCOPES = ("global", "per_image")
MAGNITUDES = ("zscore", "zscore_clipped", "raw")
HELPFULNESS = ("helpful", "harmful", "neutral")
DIRECTIONS = ("raises", "lowers", "none")
QUADRANTS = tuple(f"{h}-{d}" for h in HELPFULNESS for d in DIRECTIONS)

#: results/fusion/scores.parquet: one row per (image, channel).
FUSED_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("labelled", pa.bool_(), nullable=False),  # y_true not null
        pa.field("y_true", pa.float32(), nullable=True),
        pa.field("y_pred", pa.float32(), nullable=False),
        pa.field("delta_prediction", pa.float32(), nullable=False),  # Δy
        pa.field("delta_residual", pa.float32(), nullable=True),  # Δerror; null when unlabelled
        pa.field("abs_delta_prediction", pa.float64(), nullable=False),  # |Δy|
        pa.field("z", pa.float64(), nullable=False),  # z-score of |Δy| (scope, ddof=0)
        pa.field("magnitude", pa.float64(), nullable=False),  # z, max(z, 0) or |Δy|
        pa.field("sign", pa.int8(), nullable=False),  # sign(Δerror); 0 when 0 or null
        pa.field("ais_score", pa.float64(), nullable=True),  # sign * magnitude; null when unlabelled
        pa.field("direction", pa.float64(), nullable=False),  # -Δy; > 0: presence raises realism
        pa.field("quadrant", pa.string(), nullable=False),  # e.g. helpful-raises
        pa.field("flipped", pa.bool_(), nullable=False),  # z < 0 and sign != 0
    ]
)

#: results/fusion/channels.parquet: one row per channel (data-set level).
CHANNELS_SCHEMA = pa.schema(
    [
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("n_images", pa.int64(), nullable=False),  # images with a row for the channel
        pa.field("n_labelled", pa.int64(), nullable=False),  # of which labelled
        pa.field("mean_delta_prediction", pa.float64(), nullable=True),  # mean Δy, all images
        pa.field("mean_delta_prediction_lo", pa.float64(), nullable=True),  # bootstrap 2.5 %
        pa.field("mean_delta_prediction_hi", pa.float64(), nullable=True),  # bootstrap 97.5 %
        pa.field("mean_direction", pa.float64(), nullable=True),  # mean -Δy, all images
        pa.field("mean_delta_residual", pa.float64(), nullable=True),  # mean Δerror, labelled
        pa.field("mean_delta_residual_lo", pa.float64(), nullable=True),
        pa.field("mean_delta_residual_hi", pa.float64(), nullable=True),
        pa.field("mean_ais_score", pa.float64(), nullable=True),  # data-set-level AIS, labelled
        pa.field("mean_ais_score_lo", pa.float64(), nullable=True),
        pa.field("mean_ais_score_hi", pa.float64(), nullable=True),
        pa.field("fraction_helpful", pa.float64(), nullable=True),  # Δerror > 0 among labelled
        pa.field("n_flipped", pa.int64(), nullable=False),
    ]
)


def _sign(values: np.ndarray) -> np.ndarray:
    """sign(values) as int8, 0 for NaN."""
    return np.sign(np.nan_to_num(values, nan=0.0)).astype(np.int8)


def _zscore(values: pd.Series, groups: pd.Series | None) -> np.ndarray:
    """Population z-score (ddof=0) of ``values``, over all rows or within ``groups``; std 0 -> 0."""
    if groups is None:
        mean = values.mean()
        std = values.std(ddof=0)
    else:
        grouped = values.groupby(groups, sort=False)
        mean = grouped.transform("mean")
        std = grouped.transform("std", ddof=0)
    mean = np.asarray(mean, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (values.to_numpy(np.float64) - mean) / std
    return np.where(std > 0, z, 0.0)


def fuse(table: pd.DataFrame, scope: str = "global", magnitude: str = "zscore") -> pd.DataFrame:
    """Fuse ablation rows into AIS scores (see the module docstring for the definitions).

    ``table`` has the columns of :data:`ais.tables.ABLATION_SCHEMA`; the result
    has the columns of :data:`FUSED_SCHEMA`, rows in the input order.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown fusion scope {scope!r} (one of {', '.join(SCOPES)})")
    if magnitude not in MAGNITUDES:
        raise ValueError(f"unknown fusion magnitude {magnitude!r} (one of {', '.join(MAGNITUDES)})")
    missing = [c for c in ("image_id", "channel", "y_true", "y_pred", "delta_prediction", "delta_residual")
               if c not in table.columns]
    if missing:
        raise ValueError(f"ablation table lacks columns {missing}")

    dy = table["delta_prediction"].to_numpy(np.float64, na_value=np.nan)
    if np.isnan(dy).any():
        raise ValueError("delta_prediction has nulls; every ablated row needs a prediction")
    dres = table["delta_residual"].to_numpy(np.float64, na_value=np.nan)
    y_true = table["y_true"].to_numpy(np.float64, na_value=np.nan)

    abs_dy = pd.Series(np.abs(dy), index=table.index)
    z = _zscore(abs_dy, None if scope == "global" else table["image_id"])
    if magnitude == "zscore":
        mag = z
    elif magnitude == "zscore_clipped":
        mag = np.maximum(z, 0.0)
    else:
        mag = abs_dy.to_numpy()
    sign = _sign(dres)
    score = np.where(np.isnan(dres), np.nan, sign * mag + 0.0)  # + 0.0: no -0.0

    helpfulness = np.select([dres > 0, dres < 0], ["helpful", "harmful"], "neutral")
    direction = np.select([dy < 0, dy > 0], ["raises", "lowers"], "none")
    quadrant = np.char.add(np.char.add(helpfulness.astype(str), "-"), direction.astype(str))

    return pd.DataFrame(
        {
            "image_id": table["image_id"].astype(str).to_numpy(),
            "channel": table["channel"].to_numpy(np.int32),
            "labelled": ~np.isnan(y_true),
            "y_true": y_true.astype(np.float32),
            "y_pred": table["y_pred"].to_numpy(np.float32),
            "delta_prediction": dy.astype(np.float32),
            "delta_residual": dres.astype(np.float32),
            "abs_delta_prediction": abs_dy.to_numpy(),
            "z": z,
            "magnitude": mag,
            "sign": sign,
            "ais_score": score,
            "direction": -dy + 0.0,
            "quadrant": quadrant.astype(object),
            "flipped": (z < 0) & (sign != 0),
        }
    )


# --------------------------------------------------------------------------- data-set level


def _matrix(fused: pd.DataFrame, column: str, images: pd.Index, channels: pd.Index) -> np.ndarray:
    """(n_images, n_channels) float64 matrix of ``column``; NaN where null or missing."""
    wide = fused.pivot(index="image_id", columns="channel", values=column)
    return wide.reindex(index=images, columns=channels).to_numpy(np.float64, na_value=np.nan)


def _nanmean(x: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def bootstrap_means(
    matrices: Mapping[str, np.ndarray], n_boot: int, rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Percentile 95 % intervals of column means, resampling images (rows) with replacement.

    Every matrix is ``(n_images, n_channels)`` with NaN for missing values
    (e.g. Δerror of unlabelled images); one resample of the images is shared by
    all matrices, and each mean is taken over the non-NaN rows of the resample
    (NaN when it has none). Returns ``{name: (lo (C,), hi (C,))}``.
    """
    n_images = next(iter(matrices.values())).shape[0]
    if n_images == 0 or n_boot <= 0:
        return {k: (np.full(m.shape[1], np.nan), np.full(m.shape[1], np.nan)) for k, m in matrices.items()}
    idx = rng.integers(0, n_images, size=(n_boot, n_images))
    flat = (idx + np.arange(n_boot)[:, None] * n_images).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_images).reshape(n_boot, n_images).astype(np.float64)
    out = {}
    for name, m in matrices.items():
        present = ~np.isnan(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            means = (counts @ np.where(present, m, 0.0)) / (counts @ present.astype(np.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lo, hi = np.nanpercentile(means, [2.5, 97.5], axis=0)
        out[name] = (lo, hi)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def split_half_reliability(scores: np.ndarray, n_splits: int, rng: np.random.Generator) -> dict[str, Any]:
    """Split-half reliability of channel means of ``scores`` (n_images, n_channels).

    Each of ``n_splits`` random splits halves the images (rows with any non-NaN
    value); the Spearman correlation across channels between the two halves'
    channel means is averaged over the splits (``spearman``), and the
    Spearman-Brown prophecy ``2r / (1 + r)`` of that mean estimates the
    reliability of the means over all images (``spearman_brown``).
    """
    rows = np.flatnonzero(~np.all(np.isnan(scores), axis=1))
    rs = []
    if rows.size >= 2:
        for _ in range(n_splits):
            perm = rng.permutation(rows)
            half = perm.size // 2
            rs.append(_spearman(_nanmean(scores[perm[:half]]), _nanmean(scores[perm[half:]])))
    rs_arr = np.asarray(rs, dtype=np.float64)
    finite = rs_arr[np.isfinite(rs_arr)]
    r = float(finite.mean()) if finite.size else float("nan")
    return {
        "n_images": int(rows.size),
        "n_splits": int(n_splits),
        "spearman": r,
        "spearman_sd": float(finite.std(ddof=0)) if finite.size else float("nan"),
        "spearman_brown": float(2 * r / (1 + r)) if np.isfinite(r) and r != -1 else float("nan"),
    }


def channel_table(
    fused: pd.DataFrame, n_boot: int = 1000, seed: int = 0, n_splits: int = 20
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Data-set-level channel scores with bootstrap intervals, and the split-half reliability.

    ``mean_delta_prediction`` / ``mean_direction`` average over all images;
    ``mean_delta_residual``, ``mean_ais_score`` (the data-set-level AIS score
    that explains unlabelled images) and ``fraction_helpful`` over labelled
    images. Intervals resample images (seeded by ``seed``); the reliability
    splits use an independent stream of the same seed. Returns the table
    (columns of :data:`CHANNELS_SCHEMA`) and ``{"ais": ..., "direction": ...}``
    reliabilities (see :func:`split_half_reliability`).
    """
    images = pd.Index(sorted(fused["image_id"].unique()), name="image_id")
    channels = pd.Index(sorted(fused["channel"].unique()), name="channel")
    dy = _matrix(fused, "delta_prediction", images, channels)
    dres = _matrix(fused, "delta_residual", images, channels)
    ais = _matrix(fused, "ais_score", images, channels)

    boot = bootstrap_means(
        {"dy": dy, "dres": dres, "ais": ais}, n_boot, np.random.default_rng([seed, 1])
    )
    mean_dy = _nanmean(dy)
    grouped = fused.groupby("channel", sort=True)
    with np.errstate(invalid="ignore"):
        frac_helpful = np.sum(dres > 0, axis=0) / np.sum(~np.isnan(dres), axis=0)
    table = pd.DataFrame(
        {
            "channel": channels.to_numpy(np.int32),
            "n_images": np.sum(~np.isnan(dy), axis=0).astype(np.int64),
            "n_labelled": grouped["labelled"].sum().reindex(channels).to_numpy(np.int64),
            "mean_delta_prediction": mean_dy,
            "mean_delta_prediction_lo": boot["dy"][0],
            "mean_delta_prediction_hi": boot["dy"][1],
            "mean_direction": -mean_dy,
            "mean_delta_residual": _nanmean(dres),
            "mean_delta_residual_lo": boot["dres"][0],
            "mean_delta_residual_hi": boot["dres"][1],
            "mean_ais_score": _nanmean(ais),
            "mean_ais_score_lo": boot["ais"][0],
            "mean_ais_score_hi": boot["ais"][1],
            "fraction_helpful": frac_helpful,
            "n_flipped": grouped["flipped"].sum().reindex(channels).to_numpy(np.int64),
        }
    )
    rng = np.random.default_rng([seed, 2])
    reliability = {
        "ais": split_half_reliability(ais, n_splits, rng),
        "direction": split_half_reliability(-dy, n_splits, rng),
    }
    return table, reliability


def quadrant_words(raises: str, lowers: str) -> dict[str, str]:
    """Each quadrant in a task's words (:class:`ais.tasks.TaskWords` ``raises`` / ``lowers``).

    ``helpful-raises`` -> ``"helpful, raises realism"`` (regression) or ``"helpful, towards generated"``.
    """
    direction = {"raises": raises, "lowers": lowers, "none": "no change"}
    return {f"{h}-{d}": f"{h}, {direction[d]}" for h in HELPFULNESS for d in DIRECTIONS}


def summarize(fused: pd.DataFrame, reliability: Mapping[str, Any], scope: str, magnitude: str,
              words: tuple[str, str] | None = None) -> dict[str, Any]:
    """Counts per quadrant, flipped scores and the reliabilities, as plain JSON-able values.

    ``words``: the task's ``(raises, lowers)``; then ``quadrant_words`` names each quadrant in them.
    """
    counts = fused["quadrant"].value_counts()
    signed = int((fused["sign"] != 0).sum())
    n_flipped = int(fused["flipped"].sum())
    return {
        "scope": scope,
        "magnitude": magnitude,
        "zscore_ddof": 0,
        "n_rows": int(len(fused)),
        "n_images": int(fused["image_id"].nunique()),
        "n_labelled_images": int(fused.loc[fused["labelled"], "image_id"].nunique()),
        "n_channels": int(fused["channel"].nunique()),
        "quadrants": {q: int(counts.get(q, 0)) for q in QUADRANTS},
        "n_signed": signed,
        "n_flipped": n_flipped,
        "fraction_flipped": n_flipped / signed if signed else float("nan"),
        "reliability": dict(reliability),
        **({"quadrant_words": quadrant_words(*words)} if words is not None else {}),
    }


def image_weights(
    scores: pd.DataFrame,
    channels: pd.DataFrame,
    image_ids: Iterable[str],
    n_channels: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Channel weights for :func:`ais.methods.compute_maps`: ``(ais (N, C), direction (N, C))`` float32.

    ``ais``: the image's own ``ais_score`` where it has one (labelled, ablated
    images), else the channel's data-set-level ``mean_ais_score``.
    ``direction``: the image's own -Δy where it was ablated, else the
    channel's ``mean_direction``. Channels absent everywhere get 0.
    """
    ids = list(image_ids)
    dataset_ais = np.zeros(n_channels, dtype=np.float64)
    dataset_dir = np.zeros(n_channels, dtype=np.float64)
    ch = channels["channel"].to_numpy(np.int64)
    dataset_ais[ch] = np.nan_to_num(channels["mean_ais_score"].to_numpy(np.float64, na_value=np.nan))
    dataset_dir[ch] = np.nan_to_num(channels["mean_direction"].to_numpy(np.float64, na_value=np.nan))
    ais = np.tile(dataset_ais, (len(ids), 1))
    direction = np.tile(dataset_dir, (len(ids), 1))
    row_of = {image_id: i for i, image_id in enumerate(ids)}
    sub = scores[scores["image_id"].isin(row_of)]
    rows = sub["image_id"].map(row_of).to_numpy(np.int64)
    cols = sub["channel"].to_numpy(np.int64)
    own_ais = sub["ais_score"].to_numpy(np.float64, na_value=np.nan)
    has = ~np.isnan(own_ais)
    ais[rows[has], cols[has]] = own_ais[has]
    direction[rows, cols] = sub["direction"].to_numpy(np.float64)
    return ais.astype(np.float32), direction.astype(np.float32)
