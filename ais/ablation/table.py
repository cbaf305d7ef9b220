"""Ablation results as the :data:`ais.tables.ABLATION_SCHEMA` table, one row per (image, unit)."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from torch import Tensor

from ais.ablation.engine import ChannelAblation
from ais.logs import PROGRESS_EVERY, Progress
from ais.tables import ABLATION_SCHEMA

logger = logging.getLogger(__name__)


def _regression_error(y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    return np.abs(y_pred - y_true)


def ablation_table(
    image_ids: Sequence[str],
    y_true: Sequence[float | None] | np.ndarray,
    y_pred: Tensor | np.ndarray,
    y_ablated: Tensor | np.ndarray,
    channels: Sequence[int] | None = None,
    error: Callable[[np.ndarray, np.ndarray], np.ndarray] = _regression_error,
) -> pa.Table:
    """One row per (image, channel), image-major, conforming to :data:`ABLATION_SCHEMA`.

    ``y_pred`` is ``(N,)``, ``y_ablated`` ``(N, K)`` (``channels`` names its
    columns; default ``0..K-1``). ``error(y_pred, y_true)`` is the task's
    error (:meth:`ais.tasks.Task.error`; default the regression residual
    ``|y_pred - y_true|``): ``residual`` and ``residual_ablated`` are it
    before and after the ablation. A ``y_true`` of ``None`` or NaN
    (unlabelled image) gives null ``y_true`` and residual columns. All
    values float32.
    """
    y_pred = np.asarray(y_pred, dtype=np.float32).reshape(-1)
    y_abl = np.asarray(y_ablated, dtype=np.float32)
    n = len(image_ids)
    if y_abl.ndim != 2 or y_abl.shape[0] != n or y_pred.shape != (n,):
        raise ValueError(f"expected y_pred ({n},) and y_ablated ({n}, K); got {y_pred.shape} and {y_abl.shape}")
    k = y_abl.shape[1]
    chans = np.arange(k, dtype=np.int32) if channels is None else np.asarray(channels, dtype=np.int32)
    if chans.shape != (k,):
        raise ValueError(f"channels must have {k} entries, got {chans.shape}")
    truth = np.array([np.nan if pd.isna(v) else float(v) for v in y_true], dtype=np.float64).astype(np.float32)
    if truth.shape != (n,):
        raise ValueError(f"y_true must have {n} entries, got {truth.shape}")

    yp, ya, yt = np.repeat(y_pred, k), y_abl.reshape(-1), np.repeat(truth, k)
    unlabelled = np.isnan(yt)
    residual, residual_ablated = error(yp, yt), error(ya, yt)

    def col(values: np.ndarray, nullable: bool = False) -> pa.Array:
        return pa.array(values, type=pa.float32(), mask=unlabelled if nullable else None)

    columns = {
        "image_id": pa.array(np.repeat(np.asarray(list(image_ids), dtype=object), k), type=pa.string()),
        "channel": pa.array(np.tile(chans, n), type=pa.int32()),
        "y_true": col(yt, nullable=True),
        "y_pred": col(yp),
        "y_pred_ablated": col(ya),
        "delta_prediction": col(ya - yp),
        "residual": col(residual, nullable=True),
        "residual_ablated": col(residual_ablated, nullable=True),
        "delta_residual": col(residual_ablated - residual, nullable=True),
    }
    return pa.Table.from_pydict(columns, schema=ABLATION_SCHEMA)


def ablate_batches(
    engine: ChannelAblation,
    batches: Iterable[tuple[Tensor, Sequence[str], Sequence[float | None]]],
    n_images: int,
    error: Callable[[np.ndarray, np.ndarray], np.ndarray] = _regression_error,
) -> pa.Table:
    """Every unit of the engine's layer for each batch ``(x (B, 3, H, W), image_ids, y_true)``.

    Returns the :data:`ABLATION_SCHEMA` table of all batches in order;
    progress lines (images done, rate, ETA) go to this module's logger.
    """
    logger.info("ablating %d channels of %s for %d images on %s (%s path)",
                engine.n_channels, engine.layer_name, n_images, engine.device, engine.path)
    progress = Progress(n_images, "images", logger, every=PROGRESS_EVERY)  # a line per batch flooded large runs
    tables, done = [], 0
    for x, image_ids, y_true in batches:
        y_pred, y_abl = engine(x)
        tables.append(ablation_table(image_ids, y_true, y_pred, y_abl, error=error))
        done += len(image_ids)
        progress.update(done)
    return pa.concat_tables(tables) if tables else ABLATION_SCHEMA.empty_table()
