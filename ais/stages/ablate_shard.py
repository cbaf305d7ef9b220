"""Rule ablate_shard: every unit of the target layer ablated for the images of one shard.

Writes ``results/ablation/shard-{i}.parquet`` (:data:`ais.tables.ABLATION_SCHEMA`),
one row per (image, unit). The shard holds the images of shard ``shard`` of
``n_shards`` of ``split`` (:func:`ais.data.shard_rows`); an empty shard is
an empty table with the same schema. Its key-value metadata carries the
provenance stamp, the shard, the model's weights hash, the task (with a
classifier's classes and explained class: ``task_settings``), the resolved
target layer and the engine's settings. Classification: ``y_pred`` is the
explained class's log-odds and ``residual`` the true class's cross-entropy;
with more than two classes the images of a class other than the explained
one are ablated a second time, with their class's cross-entropy as the target
(:class:`ais.ablation.table.ResidualEngines`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

from ais import io
from ais.ablation import ChannelAblation, ablate_batches
from ais.data import read_manifest, shard_rows
from ais.families import family_for
from ais.models import load_trained
from ais.pipeline import iter_batches, loader_workers
from ais.stages import job, pick_device, stamp
from ais.tables import ABLATION_SCHEMA
from ais.tasks.classification import task_from_spec

logger = logging.getLogger(__name__)


def run(
    manifest_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    shard: int,
    n_shards: int,
    split: str,
    target_layer: str,
    batch_size: int = 8,
    channel_batch: int | str = "auto",
    config: Mapping[str, Any] | None = None,
    device: Any = None,
    workers: int = 0,
) -> pa.Table:
    """Ablate the shard's images with the trained model in ``model_dir``; write and return the table.

    ``workers`` processes decode the next images while the engine runs (:mod:`ais.pipeline`).
    """
    device = pick_device(device)
    rows = shard_rows(read_manifest(manifest_path), split, n_shards, shard)
    model, spec = load_trained(model_dir)
    task = task_from_spec(spec)
    layer = family_for(spec["arch"]).resolve_layer(model, target_layer)
    logger.info("shard %d/%d: %d %s image(s), layer %s, model %s", shard, n_shards, len(rows), split, layer,
                spec.get("weights_sha256", "?")[:12])
    size, norm = int(spec["input_size"]), spec["normalization"]
    batches = iter_batches(rows, size, norm, batch_size, ("image_id", "y_true"), workers=workers, device=device)
    with ChannelAblation(model, layer, task.target(), channel_batch=channel_batch, device=device) as engine:
        table = ablate_batches(engine, batches, len(rows), task.error, getattr(task, "residual_target", None))
        engine_info = {**engine.describe(), "size": size, "normalization": norm, "batch_size": batch_size}
    metadata = {
        **stamp(config),
        "shard": {"index": shard, "of": n_shards, "split": split, "images": len(rows)},
        "model": {"weights_sha256": spec.get("weights_sha256"), "arch": spec.get("arch"), "head": spec.get("head"),
                  "task": task.name},
        "task_settings": task.settings() if hasattr(task, "settings") else {"task": task.name},
        "target_layer": layer,
        "ablation": engine_info,
    }
    io.write_table(out_path, table, schema=ABLATION_SCHEMA, metadata=metadata)
    logger.info("shard %d: wrote %d rows to %s", shard, table.num_rows, out_path)
    return table


def main(smk: Any) -> None:
    with job(smk, gpu=True):
        params = smk.params
        run(
            manifest_path=smk.input.manifest,
            model_dir=Path(smk.input.spec).parent,
            out_path=smk.output[0],
            shard=int(smk.wildcards.shard),
            n_shards=params.ablation["shards"],
            split=params.ablation["split"],
            target_layer=params.target_layer,
            batch_size=params.ablation["batch_size"],
            channel_batch=params.ablation["channel_batch"],
            config={"ablation": params.ablation, "target_layer": params.target_layer, "seed": params.seed},
            workers=loader_workers(smk.threads),
        )
