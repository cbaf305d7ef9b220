"""Rule fuse_scores: all ablation shards fused into AIS scores, data-set-level channel scores and a summary.

Writes ``results/fusion/scores.parquet`` (:data:`ais.fusion.FUSED_SCHEMA`, one
row per image and unit), ``channels.parquet`` (:data:`ais.fusion.CHANNELS_SCHEMA`,
one row per unit, with bootstrap intervals) and ``summary.json`` (quadrant
counts, each quadrant in the task's words, flipped scores, split-half
reliability). The task is the one the shards were ablated for (their
metadata ``task_settings``; regression for older shards). Both tables carry the
provenance stamp plus ``ais_fusion`` (scope, magnitude, ddof); the channels
table also ``ais_summary``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ais import io
from ais.fusion import CHANNELS_SCHEMA, FUSED_SCHEMA, channel_table, fuse, summarize
from ais.stages import job, stamp
from ais.tables import ABLATION_SCHEMA
from ais.tasks import Task
from ais.tasks.classification import task_from_spec

logger = logging.getLogger(__name__)


def run(
    shard_paths: Sequence[str | os.PathLike],
    out_scores: str | os.PathLike,
    out_channels: str | os.PathLike,
    out_summary: str | os.PathLike | None = None,
    scope: str = "global",
    magnitude: str = "zscore",
    n_boot: int = 1000,
    seed: int = 0,
    n_splits: int = 20,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fuse the shards; write the scores, channels and (with ``out_summary``) summary; returns the summary."""
    frame = read_shards(shard_paths)
    logger.info("fusion: %d rows (%d images x %d channels) from %d shard(s); scope %s, magnitude %s",
                len(frame), frame["image_id"].nunique(), frame["channel"].nunique(), len(shard_paths), scope,
                magnitude)
    fused = fuse(frame, scope=scope, magnitude=magnitude)
    channels, reliability = channel_table(fused, n_boot=n_boot, seed=seed, n_splits=n_splits)
    words = shard_task(shard_paths).words
    summary = {**summarize(fused, reliability, scope, magnitude, (words.raises, words.lowers)),
               "n_boot": int(n_boot), "seed": int(seed)}
    logger.info("fusion: %d of %d signed scores flipped by the z-score (%s); split-half reliability of AIS %.3f",
                summary["n_flipped"], summary["n_signed"], magnitude, reliability["ais"]["spearman"])
    fusion_meta = {"scope": scope, "magnitude": magnitude, "zscore_ddof": 0, "n_boot": n_boot, "seed": seed}
    provenance = stamp(config)
    io.write_table(out_scores, pa.Table.from_pandas(fused, preserve_index=False), FUSED_SCHEMA,
                   {**provenance, "ais_fusion": fusion_meta})
    io.write_table(out_channels, pa.Table.from_pandas(channels, preserve_index=False), CHANNELS_SCHEMA,
                   {**provenance, "ais_fusion": fusion_meta, "ais_summary": summary})
    if out_summary is not None:
        io.write_json(out_summary, io.nan_to_none({**summary, **provenance}))
    return summary


def shard_task(shard_paths: Sequence[str | os.PathLike]) -> Task:
    """The task the first shard was ablated for (metadata ``task_settings``; regression when absent)."""
    settings = io.read_metadata(shard_paths[0]).get("task_settings") if shard_paths else None
    return task_from_spec(settings if isinstance(settings, dict) else {"task": "regression"})


def read_shards(shard_paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Read ablation shards (Parquet, :data:`ABLATION_SCHEMA`) into one frame sorted by (image, channel)."""
    paths = [os.fspath(p) for p in shard_paths]
    if not paths:
        raise ValueError("no ablation shards given")
    table = ds.dataset(paths, format="parquet", schema=ABLATION_SCHEMA).to_table()
    frame = table.to_pandas()
    dup = frame.duplicated(["image_id", "channel"])
    if dup.any():
        first = frame.loc[dup, ["image_id", "channel"]].iloc[0].tolist()
        raise ValueError(f"{int(dup.sum())} duplicate (image_id, channel) rows across shards, e.g. {first}")
    return frame.sort_values(["image_id", "channel"], kind="stable").reset_index(drop=True)


def main(smk: Any) -> None:
    with job(smk):
        fusion, seed = smk.params.fusion, smk.params.seed
        run(list(smk.input.shards), smk.output.scores, smk.output.channels, smk.output.summary,
            scope=fusion["scope"], magnitude=fusion["magnitude"], n_boot=fusion["bootstrap"], seed=seed,
            n_splits=fusion["reliability_splits"], config={"fusion": fusion, "seed": seed})
