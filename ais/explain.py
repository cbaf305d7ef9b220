"""Explain new, unlabelled images with a finished run, exactly as the workflow explains its unlabelled images.

For a batch of images (``(N, 3, S, S)``, decoded and normalised as in training),
:class:`Explainer` computes what the workflow computes for an unlabelled image
of the sheet with ``ablation.split: all``:

1. **Prediction**: the task's prediction (:meth:`ais.tasks.Task.predictions`) of
   one plain forward pass; for a classifier (a task with ``probabilities(output)
   -> (N, K)``) also the class probabilities, the predicted class and its
   probability (``confidence``).
2. **Monte-Carlo uncertainty** when the model has dropout
   (:func:`ais.uncertainty.mc_samples`, batch ``b`` seeded with ``seed + b``,
   as :func:`ais.uncertainty.mc_predict`; summaries by :func:`ais.uncertainty.summarize`).
3. **Channel weights**: every unit of the target layer ablated for the image
   (:class:`ais.ablation.ChannelAblation`, the ablation stage's engine) and its
   rows fused (:func:`ais.fusion.fuse`, the run's ``fusion`` settings), so the
   direction weights are the image's own exact -Δy; the AIS weights are the
   data-set-level ``mean_ais_score`` of the run's ``channels.parquet`` (an
   unlabelled image has no Δerror): both from :func:`ais.fusion.image_weights`,
   as the heatmaps stage does.
4. **Maps**: every configured method (:func:`ais.methods.compute_maps`, the
   run's ``heatmaps`` options), with their scales; per image the agreement of
   |AIS| with the reference methods (:func:`ais.map_figures.image_figures`).

This module computes on tensors and tables; reading the run and writing the
per-image files is :mod:`ais.stages.explain`'s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch import Tensor, nn

from ais import uncertainty
from ais.ablation import ChannelAblation, ablation_table
from ais.fusion import fuse, image_weights
from ais.map_figures import image_figures
from ais.methods import compute_maps, configured_methods, map_keys
from ais.tables import AGREEMENT_REFERENCES, SCALE_COLUMNS

logger = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """What explaining needs from a finished run (read by :func:`ais.stages.explain.load_run`).

    ``model`` is in eval mode on ``device``; ``layer`` the resolved target
    layer (``n_units`` units); ``channels`` the run's data-set-level channel
    scores (:data:`ais.fusion.CHANNELS_SCHEMA`); ``config`` the run's validated
    config (its ``fusion``, ``heatmaps``, ``ablation`` and ``uncertainty``
    sections are used); ``class_names`` those of a classifier (empty otherwise).
    """

    model: nn.Module
    spec: Mapping[str, Any]
    family: Any
    layer: str
    n_units: int
    task: Any
    channels: pd.DataFrame
    config: Mapping[str, Any]
    device: torch.device
    class_names: Sequence[str] = ()

    @property
    def is_classifier(self) -> bool:
        return callable(getattr(self.task, "probabilities", None))

    @property
    def methods(self) -> list[str]:
        return configured_methods(self.config.get("heatmaps", {}).get("optional_methods", ()))


@dataclass
class Explained:
    """One batch's results: ``N`` images."""

    image_ids: list[str]
    prediction: np.ndarray  # (N,) float64: the task's prediction
    probabilities: np.ndarray | None  # (N, K) class probabilities (classifiers)
    mc: dict[str, np.ndarray] = field(default_factory=dict)  # mc_* (N,) or (N, K)
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # {map: (N, H, W), <map>_scale: (N,)}
    ais_weights: np.ndarray | None = None  # (N, C)
    direction_weights: np.ndarray | None = None  # (N, C)


class Explainer:
    """Explains batches of images with a loaded run; use as a context manager (it holds the ablation engine).

    ``mc_samples``: Monte-Carlo dropout samples per image (0: none; a model
    without dropout is never sampled, see :attr:`uncertainty`); ``seed``: the
    first batch's seed.
    """

    def __init__(self, run: LoadedRun, mc_samples: int = 0, seed: int = 0) -> None:
        self.run = run
        self.mc_samples = int(mc_samples)
        self.seed = int(seed)
        self.uncertainty = uncertainty.status(run.model, self.mc_samples)
        ablation = run.config.get("ablation", {})
        self.engine = ChannelAblation(run.model, run.layer, run.task.target(),
                                      channel_batch=ablation.get("channel_batch", "auto"), device=run.device)
        self._batches = 0

    def __enter__(self) -> "Explainer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.close()

    def explain(self, x: Tensor, image_ids: Sequence[str]) -> Explained:
        """Predictions, uncertainty, channel weights and maps of a batch ``x`` (N, 3, S, S) on the run's device."""
        run, ids = self.run, [str(i) for i in image_ids]
        with torch.inference_mode():
            output = run.model(x)  # (N, K)
        probabilities = run.task.probabilities(output).double().cpu().numpy() if run.is_classifier else None
        out = Explained(ids, run.task.predictions(output).double().cpu().numpy(), probabilities)
        if self.uncertainty["status"] == "sampled":
            out.mc = self._mc(x)
        y_pred, y_abl = self.engine(x)  # (N,), (N, C): the explained target, unablated and per unit zeroed
        out.ais_weights, out.direction_weights = channel_weights(run, ids, y_pred, y_abl)
        inputs = {"ais_weights": out.ais_weights, "direction_weights": out.direction_weights,
                  "options": run.config.get("heatmaps", {})}
        out.maps = compute_maps(run.model, run.layer, x, inputs, methods=run.methods, target=run.task.target(),
                                with_scales=True, family=run.family)
        self._batches += 1
        return out

    def _mc(self, x: Tensor) -> dict[str, np.ndarray]:
        """Monte-Carlo dropout summaries of the batch (seed ``seed + batch index``)."""
        run = self.run
        raw = uncertainty.mc_samples(run.model, x, self.mc_samples, self.seed + self._batches)  # (S, N, K)
        flat = raw.reshape(-1, *raw.shape[2:])
        if run.is_classifier:
            p = run.task.probabilities(flat).double().cpu().numpy()
            return uncertainty.summarize(p.reshape(self.mc_samples, len(x), -1), "classification")
        y = run.task.predictions(flat).double().cpu().numpy()
        return uncertainty.summarize(y.reshape(self.mc_samples, len(x)), "regression")


def channel_weights(run: LoadedRun, image_ids: Sequence[str], y_pred: Tensor | np.ndarray,
                    y_ablated: Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ais (N, C), direction (N, C))`` float32 of unlabelled images from their ablation ``(N,)``, ``(N, C)``.

    The ablation rows (:func:`ais.ablation.ablation_table`, no truth) are
    fused with the run's settings (:func:`ais.fusion.fuse`) and weighted by
    :func:`ais.fusion.image_weights` against the run's channel scores: the
    path an unlabelled, ablated image of the workflow takes.
    """
    fusion = run.config.get("fusion", {})
    table = ablation_table(list(image_ids), [None] * len(image_ids), y_pred, y_ablated, error=run.task.error)
    fused = fuse(table.to_pandas(), scope=fusion.get("scope", "global"), magnitude=fusion.get("magnitude", "zscore"))
    return image_weights(fused, run.channels, image_ids, run.n_units)


def image_maps(batch: Explained, j: int) -> dict[str, np.ndarray]:
    """Image ``j``'s maps ``(H, W)`` of the computed methods (the keys of the workflow's map files)."""
    return {k: batch.maps[k][j] for k in map_keys() if k in batch.maps}


def image_row(batch: Explained, j: int, class_names: Sequence[str]) -> dict[str, Any]:
    """Image ``j``'s row of the explanation table (see :func:`table_schema`), without the file columns."""
    row: dict[str, Any] = {"prediction": float(batch.prediction[j])}
    if batch.probabilities is not None:
        p = batch.probabilities[j]
        row.update(predicted_class=class_names[int(np.argmax(p))], confidence=float(np.max(p)),
                   **{f"p_{c}": float(v) for c, v in zip(class_names, p)})
    for name, values in batch.mc.items():
        if name == "mc_mean_probability":
            row.update({f"mc_p_{c}": float(v) for c, v in zip(class_names, values[j])})
        else:
            row[name] = float(values[j])
    row["weights"] = "dataset"  # AIS weights: the data-set-level scores (an unlabelled image has no own)
    row.update({col: float(batch.maps[col][j]) for col in SCALE_COLUMNS if col in batch.maps})
    figures = image_figures(image_maps(batch, j))
    row.update({k: v for k, v in figures.items() if k.split("_", 1)[0] in ("cc", "sim", "kld")})
    return row


def table_schema(run: LoadedRun, sampled: bool) -> pa.Schema:
    """The explanation table's columns: the image, prediction, [classes], [Monte-Carlo], scales, agreement.

    ``image_id``, ``path`` (as given), ``file_stem`` (``maps/{file_stem}.npz``,
    ``panels/{file_stem}.png``), ``width`` / ``height`` (after EXIF
    orientation), ``prediction``; for classifiers ``predicted_class``,
    ``confidence`` and ``p_<class>``; with Monte-Carlo dropout ``mc_mean`` and
    ``mc_std`` (regression) or ``mc_entropy``, ``mc_mutual_information`` and
    ``mc_p_<class>`` (classification); ``weights`` (``dataset``); the
    methods' scales and |AIS|'s agreement with each reference.
    """
    f64 = pa.float64()
    fields = [pa.field("image_id", pa.string(), False), pa.field("path", pa.string(), False),
              pa.field("file_stem", pa.string(), False), pa.field("width", pa.int32(), False),
              pa.field("height", pa.int32(), False), pa.field("prediction", f64, False)]
    names = list(run.class_names)
    if run.is_classifier:
        fields += [pa.field("predicted_class", pa.string(), False), pa.field("confidence", f64, False),
                   *[pa.field(f"p_{c}", f64, False) for c in names]]
    if sampled:
        mc = (["mc_entropy", "mc_mutual_information", *[f"mc_p_{c}" for c in names]] if run.is_classifier
              else ["mc_mean", "mc_std"])
        fields += [pa.field(n, f64, False) for n in mc]
    fields.append(pa.field("weights", pa.string(), False))
    computed = set(map_keys(run.methods))
    fields += [pa.field(c, f64, False) for c in SCALE_COLUMNS if c.removesuffix("_scale") in computed]
    fields += [pa.field(f"{m}_{ref}", f64, True) for ref in AGREEMENT_REFERENCES for m in ("cc", "sim", "kld")]
    return pa.schema(fields)
