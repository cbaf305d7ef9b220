"""Ablation results as the :data:`ais.tables.ABLATION_SCHEMA` table, one row per (image, unit).

The residual is the task's error (:meth:`ais.tasks.Task.error`) of the target
values the engine returns. Where the target alone does not determine it (a
classifier of more than two classes explaining class ``k``: the cross-entropy
of an image of another class ``y`` depends on more than class ``k``'s
log-odds), the task's ``residual_target(y)`` gives it directly: those images
are ablated once more with that target (:class:`ResidualEngines`), one engine
per true class, so each image costs at most two engine calls.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor

from ais.ablation.engine import ChannelAblation
from ais.logs import PROGRESS_EVERY, Progress
from ais.tables import ABLATION_SCHEMA
from ais.targets import Target

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
    residuals: tuple[np.ndarray, np.ndarray] | None = None,
) -> pa.Table:
    """One row per (image, channel), image-major, conforming to :data:`ABLATION_SCHEMA`.

    ``y_pred`` is ``(N,)``, ``y_ablated`` ``(N, K)`` (``channels`` names its
    columns; default ``0..K-1``). ``error(y_pred, y_true)`` is the task's
    error (:meth:`ais.tasks.Task.error`; default the regression residual
    ``|y_pred - y_true|``): ``residual`` and ``residual_ablated`` are it
    before and after the ablation. A ``y_true`` of ``None`` or NaN
    (unlabelled image) gives null ``y_true`` and residual columns. All
    values float32. ``residuals``: ``(residual (N,), residual_ablated (N, K))``
    computed by the caller (:class:`ResidualEngines`), used instead of ``error``.
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
    if residuals is None:
        residual, residual_ablated = error(yp, yt), error(ya, yt)
    else:
        residual = np.repeat(np.asarray(residuals[0], dtype=np.float32).reshape(n), k)
        residual_ablated = np.asarray(residuals[1], dtype=np.float32).reshape(-1)
        if residual_ablated.shape != (n * k,):
            raise ValueError(f"residuals must be ({n},) and ({n}, {k})")

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


def _truth(y_true: Sequence[float | None] | np.ndarray) -> np.ndarray:
    return np.array([np.nan if pd.isna(v) else float(v) for v in y_true], dtype=np.float64)


class ResidualEngines:
    """The residuals of a batch where the task's error of the target values is NaN for a labelled image.

    ``residual_target(y)`` is the task's target whose value *is* the residual of an image whose truth is
    ``y`` (a classifier: the cross-entropy of class ``y``); one :class:`ChannelAblation` per truth value,
    built on first use with the main engine's model, layer, path and batch settings.
    """

    def __init__(self, engine: ChannelAblation, residual_target: Callable[[int], Target]) -> None:
        self.engine, self.residual_target = engine, residual_target
        self.engines: dict[int, ChannelAblation] = {}

    def _engine(self, label: int) -> ChannelAblation:
        if label not in self.engines:
            e = self.engine
            self.engines[label] = ChannelAblation(e.model, e.layer_name, self.residual_target(label), e.channel_batch,
                                                  e.device, e.path, e.memory_budget)
        return self.engines[label]

    def __call__(self, x: Tensor, y_true: Sequence[float | None], y_pred: Tensor, y_abl: Tensor,
                 error: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(residual (N,), residual_ablated (N, K))`` float64: the task's error, completed by the extra engines."""
        truth = _truth(y_true)
        residual = np.asarray(error(np.asarray(y_pred, np.float64), truth), dtype=np.float64)
        residual_ablated = np.asarray(error(np.asarray(y_abl, np.float64), truth[:, None]), dtype=np.float64)
        missing = np.isfinite(truth) & np.isnan(residual)
        for label in np.unique(truth[missing]).astype(int):
            rows = np.flatnonzero(missing & (truth == label))
            r, r_abl = self._engine(int(label))(x[torch.as_tensor(rows, device=x.device)])
            residual[rows], residual_ablated[rows] = r.double().numpy(), r_abl.double().numpy()
        return residual, residual_ablated

    def describe(self) -> dict[str, object]:
        return {"residual_engines": {str(k): repr(e.target) for k, e in sorted(self.engines.items())}}

    def close(self) -> None:
        for e in self.engines.values():
            e.close()


def ablate_batches(
    engine: ChannelAblation,
    batches: Iterable[tuple[Tensor, Sequence[str], Sequence[float | None]]],
    n_images: int,
    error: Callable[[np.ndarray, np.ndarray], np.ndarray] = _regression_error,
    residual_target: Callable[[int], Target] | None = None,
) -> pa.Table:
    """Every unit of the engine's layer for each batch ``(x (B, 3, H, W), image_ids, y_true)``.

    Returns the :data:`ABLATION_SCHEMA` table of all batches in order;
    progress lines (images done, rate, ETA) go to this module's logger.
    ``residual_target``: the task's (classification), for the residuals
    ``error`` leaves NaN (:class:`ResidualEngines`).
    """
    logger.info("ablating %d channels of %s for %d images on %s (%s path)",
                engine.n_channels, engine.layer_name, n_images, engine.device, engine.path)
    progress = Progress(n_images, "images", logger, every=PROGRESS_EVERY)  # a line per batch flooded large runs
    extra = ResidualEngines(engine, residual_target) if residual_target is not None else None
    tables, done = [], 0
    try:
        for x, image_ids, y_true in batches:
            y_pred, y_abl = engine(x)
            residuals = extra(x, y_true, y_pred, y_abl, error) if extra is not None else None
            tables.append(ablation_table(image_ids, y_true, y_pred, y_abl, error=error, residuals=residuals))
            done += len(image_ids)
            progress.update(done)
    finally:
        if extra is not None:
            extra.close()
    return pa.concat_tables(tables) if tables else ABLATION_SCHEMA.empty_table()
