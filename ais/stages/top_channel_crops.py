"""Rule top_channel_crops: the image crops that activate the top channels most; a table and a montage.

Writes ``results/report/top_channels.parquet`` (:data:`ais.tables.TOP_CHANNELS_SCHEMA`,
one row per crop) and ``top_channels.png`` (:func:`ais.crops.montage`) over
the ablated split's images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

from ais import io
from ais.crops import channel_crops, montage
from ais.data import read_manifest, select_split
from ais.families import family_for
from ais.models import load_trained
from ais.pipeline import loader_workers
from ais.render import save_png
from ais.stages import job, pick_device, stamp
from ais.tables import TOP_CHANNELS_SCHEMA

logger = logging.getLogger(__name__)


def run(
    manifest_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    channels_path: str | os.PathLike,
    out_table: str | os.PathLike,
    out_png: str | os.PathLike,
    split: str,
    target_layer: str,
    k: int,
    n_crops: int,
    batch_size: int = 16,
    device: Any = None,
    config: Mapping[str, Any] | None = None,
    workers: int = 0,
) -> pd.DataFrame:
    """Crops of the ``k`` most helpful and most harmful channels over ``split``'s images; returns the table."""
    device = pick_device(device)
    model, spec = load_trained(model_dir, device)
    family = family_for(spec["arch"])
    layer = family.resolve_layer(model, target_layer)
    images = select_split(read_manifest(manifest_path), split)
    channels = pd.read_parquet(channels_path)
    size = int(spec["input_size"])
    _, crops = channel_crops(model, layer, images, channels, size, spec["normalization"], k, n_crops,
                             batch_size=batch_size, device=device, family=family, workers=workers)
    crops = crops.loc[:, TOP_CHANNELS_SCHEMA.names].reset_index(drop=True)
    io.write_table(out_table, pa.Table.from_pandas(crops, preserve_index=False), TOP_CHANNELS_SCHEMA,
                   metadata={**stamp(config), "target_layer": layer, "split": split})
    save_png(out_png, montage(crops, size))
    logger.info("top channel crops: %d channels, %d crops over %d %s images", crops["channel"].nunique(),
                len(crops), len(images), split)
    return crops


def main(smk: Any) -> None:
    with job(smk, gpu=True):
        params = smk.params
        run(smk.input.manifest, Path(smk.input.spec).parent, smk.input.channels, smk.output.table,
            smk.output.figure, split=params.split, target_layer=params.target_layer, k=params.report["top_channels"],
            n_crops=params.report["crops_per_channel"], config={"report": params.report, "split": params.split},
            workers=loader_workers(smk.threads))
