"""Rule compute_heatmaps: the maps of every configured method and per-image figures for one shard.

For every image of ablation shard ``i``: the maps of
:func:`ais.methods.compute_maps` (AIS with the image's fused scores, or the
data-set-level channel scores for unlabelled images; direction; Grad-CAM;
Grad-CAM++; the primary map; saliency and input x gradient; whatever methods
are registered, the ``optional`` ones such as occlusion only when listed in
``heatmaps.optional_methods``; the ``heatmaps`` section also carries the
methods' options), saved with the image as the
model saw it to ``results/heatmaps/shard-{i}/maps/{file_stem}.npz`` (float16
maps, uint8 image), and ``figures.parquet`` (:data:`ais.tables.HEATMAP_SCHEMA`):
per image the agreement of |AIS| with the reference methods and, where
ground-truth masks exist (demo), the localisation AUCs
(:func:`ais.map_figures.image_figures`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ais import io
from ais.data import read_manifest
from ais.families import family_for
from ais.fusion import image_weights
from ais.logs import Progress
from ais.map_figures import image_figures
from ais.methods import compute_maps, configured_methods, map_keys
from ais.models import load_trained
from ais.pipeline import iter_batches, loader_workers
from ais.stages import job, pick_device, stamp
from ais.stages._heatmap_files import (
    image_stems,
    load_region_masks,
    output_file,
    write_figures,
)
from ais.tables import HEATMAP_SCHEMA, SCALE_COLUMNS
from ais.tasks.classification import task_from_spec

logger = logging.getLogger(__name__)


@dataclass
class _Shard:
    """The images of one shard and what their maps need."""

    index: int
    rows: pd.DataFrame  # manifest rows, in image-id order
    stems: list[str]
    y_pred: np.ndarray  # (N,) from the fused scores
    own: np.ndarray  # (N,) bool: the image has its own AIS scores (labelled, ablated)
    ais_weights: np.ndarray  # (N, C)
    direction_weights: np.ndarray  # (N, C)
    residual: np.ndarray | None = None  # (N,) classification: the true class's cross-entropy (NaN: unlabelled)


def run(
    ablation_shard: str | os.PathLike,
    scores_path: str | os.PathLike,
    channels_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    maps_dir: str | os.PathLike,
    figures_path: str | os.PathLike,
    shard: int,
    target_layer: str,
    batch_size: int = 8,
    config: Mapping[str, Any] | None = None,
    device: Any = None,
    workers: int = 0,
) -> pd.DataFrame:
    """Maps and per-image figures of one shard: ``maps_dir`` (replaced atomically) and ``figures_path``.

    ``workers`` processes decode the next images while the maps are computed (:mod:`ais.pipeline`).
    """
    device = pick_device(device)
    model, spec = load_trained(model_dir, device)
    family = family_for(spec["arch"])
    layer = family.resolve_layer(model, target_layer)
    data = _read_shard(ablation_shard, scores_path, channels_path, manifest_path, shard, family.n_units(model, layer))
    if spec.get("classes"):  # a classifier's error is the true class's cross-entropy, not |log-odds - class index|
        data.residual = _residuals(ablation_shard, data.rows["image_id"].tolist())
    size = int(spec["input_size"])
    logger.info("shard %d: maps of %d image(s), layer %s (%d channels), %d px, on %s",
                shard, len(data.rows), layer, data.ais_weights.shape[1], size, device)
    target = task_from_spec(spec).target()  # classification: the explained class's log-odds
    methods = configured_methods((config or {}).get("heatmaps", {}).get("optional_methods", ()))
    records = []
    progress = Progress(len(data.rows), f"shard {shard}: maps", logger)
    with io.atomic_dir(maps_dir) as tmp_dir:
        batches = iter_batches(data.rows, size, spec["normalization"], batch_size, workers=workers, device=device,
                               views=True)
        start = 0
        for x, views in batches:
            sl = slice(start, start + len(x))
            inputs = {"ais_weights": data.ais_weights[sl], "direction_weights": data.direction_weights[sl],
                      "options": (config or {}).get("heatmaps", {})}  # heatmaps.occlusion, heatmaps.gradients
            maps = compute_maps(model, layer, x, inputs, methods=methods, target=target, with_scales=True,
                                family=family)
            for j, image in enumerate(views):
                records.append(_save_image(tmp_dir, data, start + j, image, {k: v[j] for k, v in maps.items()}))
            start += len(x)
            progress.update(start)
    table = pd.DataFrame.from_records(records, columns=HEATMAP_SCHEMA.names)
    metadata = {**stamp(config), "shard": {"index": shard, "images": len(data.rows)}, "target_layer": layer,
                "model": {"weights_sha256": spec.get("weights_sha256"), "input_size": size}}
    write_figures(figures_path, table, metadata)
    logger.info("shard %d: wrote %d map file(s) to %s and %s", shard, len(table), maps_dir, figures_path)
    return table


def _read_shard(ablation_shard: str | os.PathLike, scores_path: str | os.PathLike, channels_path: str | os.PathLike,
                manifest_path: str | os.PathLike, shard: int, n_channels: int) -> _Shard:
    """The shard's images (from its ablation table), their manifest rows and channel weights, checked."""
    ids = pq.read_table(ablation_shard, columns=["image_id"]).column("image_id").to_pylist()
    image_ids = sorted(dict.fromkeys(ids))
    manifest = read_manifest(manifest_path).set_index("image_id")
    missing = [i for i in image_ids if i not in manifest.index]
    if missing:
        raise ValueError(f"{ablation_shard}: image ids not in {manifest_path}: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}; rerun ablation after intake")
    scores = _read_scores(scores_path, image_ids)
    channels = pd.read_parquet(channels_path)
    _check_scores(scores, channels, image_ids, n_channels, scores_path, ablation_shard)
    per_image = scores.groupby("image_id", sort=False).agg(
        y_pred=("y_pred", "first"), own=("ais_score", lambda s: s.notna().any()),
    ).reindex(image_ids)
    ais_w, dir_w = image_weights(scores, channels, image_ids, n_channels)
    return _Shard(shard, manifest.loc[image_ids].reset_index(), image_stems(image_ids),
                  per_image["y_pred"].to_numpy(np.float64), per_image["own"].to_numpy(bool), ais_w, dir_w)


def _residuals(ablation_shard: str | os.PathLike, image_ids: Sequence[str]) -> np.ndarray:
    """Each image's ``residual`` (the error the ablation table records) ``(N,)``, in ``image_ids`` order."""
    table = pq.read_table(ablation_shard, columns=["image_id", "residual"]).to_pandas()
    return table.groupby("image_id", sort=False)["residual"].first().reindex(image_ids).to_numpy(np.float64)


def _read_scores(scores_path: str | os.PathLike, image_ids: Sequence[str]) -> pd.DataFrame:
    columns = ["image_id", "channel", "y_pred", "ais_score", "direction"]
    table = ds.dataset(os.fspath(scores_path), format="parquet").to_table(
        columns=columns, filter=pc.field("image_id").isin(pa.array(list(image_ids), pa.string()))
    )
    return table.to_pandas()


def _check_scores(scores: pd.DataFrame, channels: pd.DataFrame, image_ids: Sequence[str], n_channels: int,
                  scores_path: Any, ablation_shard: Any) -> None:
    top = int(max(scores["channel"].max() if len(scores) else -1, channels["channel"].max() if len(channels) else -1))
    if top >= n_channels:
        raise ValueError(f"{scores_path}: channel {top} but the layer has {n_channels} channels; "
                         "the fusion outputs come from another model or target layer")
    absent = sorted(set(image_ids) - set(scores["image_id"]))
    if absent:
        raise ValueError(f"{scores_path}: no fused scores for image(s) {absent[:5]} of {ablation_shard}; rerun fusion")


def _save_image(folder: Path, data: _Shard, i: int, image: np.ndarray, maps: Mapping[str, np.ndarray]) -> dict:
    """Write image ``i``'s maps file; return its row of the figures table."""
    rec = data.rows.iloc[i]
    one = {k: maps[k] for k in map_keys() if k in maps}  # the configured methods' maps (heatmaps.methods)
    masks = None
    if isinstance(rec["mask"], str) and rec["mask"]:
        masks = load_region_masks(rec["mask"], one["ais"].shape, rec["image_id"])
    io.write_maps(output_file(folder, data.stems[i], ".npz"), {**one, "image": image, "image_id": np.array(rec["image_id"])})
    y_true = float(rec["y_true"]) if pd.notna(rec["y_true"]) else np.nan
    y_pred = float(data.y_pred[i])
    error = abs(y_pred - y_true) if data.residual is None else float(data.residual[i])
    return {
        "image_id": rec["image_id"], "shard": data.index, "split": rec["split"], "path": rec["path"],
        "file_stem": data.stems[i], "weights": "image" if data.own[i] else "dataset",
        "y_true": y_true, "y_pred": y_pred, "abs_error": error if pd.notna(y_true) else np.nan,
        **{col: float(maps[col]) for col in SCALE_COLUMNS},
        **image_figures(one, masks),
    }


def main(smk: Any) -> None:
    with job(smk, gpu=True):
        params, inp, out = smk.params, smk.input, smk.output
        run(
            ablation_shard=inp.shard, scores_path=inp.scores, channels_path=inp.channels,
            manifest_path=inp.manifest, model_dir=Path(inp.spec).parent, maps_dir=out.maps,
            figures_path=out.figures, shard=int(smk.wildcards.shard), target_layer=params.target_layer,
            batch_size=params.heatmaps["batch_size"],
            config={"heatmaps": params.heatmaps, "target_layer": params.target_layer},
            workers=loader_workers(smk.threads),
        )
