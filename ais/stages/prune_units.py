"""Rule prune_units: the pruning-generalisation test (:mod:`ais.validity.pruning`).

Units are ranked on the labelled images of ONE split (``validity.pruning.split``:
``val`` by default, or ``train``), which this stage ablates itself with the
exact engine (the workflow's ablation shards hold ``ablation.split``, by
default the test images, which must not take part in the ranking). The
labelled test images are held out: for every ``k`` of the grid the model runs
on them with the ``k`` most harmful, the ``k`` most helpful and ``k`` random
units zeroed, and the task's test metrics (with bootstrap intervals) are
written to ``results/validity/pruning.parquet`` (:data:`PRUNING_SCHEMA`).

Cost: one ablation of the ranking split (one engine pass per image) plus one
forward pass of the test images per distinct unit set,
``1 + len(k) * (2 + draws)`` at most.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from ais import io
from ais.data import read_manifest, select_split
from ais.errors import UserError
from ais.families import family_for
from ais.models import load_trained
from ais.pipeline import iter_batches
from ais.stages import job, pick_device, stamp
from ais.tasks.classification import task_from_spec
from ais.validity.pruning import k_grid, pruning_table, rank_units, ranking_scores, summarize_pruning

logger = logging.getLogger(__name__)

RANKING_SPLITS = ("train", "val")
HELD_OUT = "test"

PRUNING_SCHEMA = pa.schema(
    [
        pa.field("order", pa.string(), nullable=False),  # none | harmful | helpful | random
        pa.field("k", pa.int64(), nullable=False),  # units zeroed
        pa.field("fraction", pa.float64(), nullable=False),  # k / units of the layer
        pa.field("draw", pa.int64(), nullable=False),  # random draw (0 for the other orders)
        pa.field("metric", pa.string(), nullable=False),  # the task's test metric (srcc, mae, auc, ...)
        pa.field("value", pa.float64(), nullable=True),  # on the held-out test images
        pa.field("lo", pa.float64(), nullable=True),  # bootstrap 2.5 %
        pa.field("hi", pa.float64(), nullable=True),  # bootstrap 97.5 %
        pa.field("n_images", pa.int64(), nullable=False),  # held-out labelled images
    ]
)


def _labelled(manifest: Any, split: str, manifest_path: Any) -> Any:
    rows = select_split(manifest, split)
    rows = rows[rows["y_true"].notna()].reset_index(drop=True)
    if rows.empty:
        raise UserError(f"{manifest_path}: no labelled {split} image; the pruning test ranks units on "
                        f"validity.pruning.split and evaluates on the labelled test images")
    return rows


def _load_images(rows: Any, size: int, norm: str, batch_size: int) -> torch.Tensor:
    """The held-out images, decoded once ``(N, 3, size, size)`` float32 on the CPU (every unit set reuses them)."""
    batches = [x for (x,) in iter_batches(rows, size, norm, batch_size)]
    logger.info("held-out images: %d decoded (%.1f MB in memory)", len(rows), sum(x.numel() for x in batches) * 4e-6)
    return torch.cat(batches)


def run(
    manifest_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    target_layer: str = "auto",
    split: str = "val",
    k: str | Sequence[int] = "auto",
    draws: int = 3,
    score: str = "ais",
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    scope: str = "global",
    magnitude: str = "zscore",
    config: Mapping[str, Any] | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Rank the units on ``split``, prune on the test images; write the table; return its summary."""
    if split not in RANKING_SPLITS:
        raise UserError(f"validity.pruning.split must be one of {RANKING_SPLITS} (the test images are held out), "
                        f"got {split!r}")
    manifest = read_manifest(manifest_path)
    rank_rows, test_rows = _labelled(manifest, split, manifest_path), _labelled(manifest, HELD_OUT, manifest_path)
    device = pick_device(device)
    model, spec = load_trained(model_dir, device)
    task = task_from_spec(spec)  # a classifier with its classes and explained class
    layer = family_for(spec["arch"]).resolve_layer(model, target_layer)
    size, norm = int(spec["input_size"]), spec["normalization"]
    logger.info("pruning: ranking %d units of %s on %d labelled %s image(s) (score %s), held out: %d test image(s)",
                spec.get("target_channels", 0), layer, len(rank_rows), split, score, len(test_rows))
    batches = iter_batches(rank_rows, size, norm, batch_size, ("image_id", "y_true"), device=device)
    channels, n_units = ranking_scores(model, layer, batches, len(rank_rows), task, scope, magnitude, device)
    ranking = rank_units(channels, n_units, score)
    ks = k_grid(n_units, k)
    images = _load_images(test_rows, size, norm, batch_size)
    table = pruning_table(model, layer, images, test_rows["y_true"].to_numpy(np.float64), task, ranking, ks,
                          draws=draws, n_boot=n_boot, seed=seed, batch_size=batch_size)
    summary = summarize_pruning(table)
    metadata = {
        **stamp(config),
        "ais_pruning": {"ranking_split": split, "held_out": HELD_OUT, "n_ranking_images": len(rank_rows),
                        "n_test_images": len(test_rows), "score": score, "k": ks, "draws": draws, "seed": seed,
                        "n_boot": n_boot, "target_layer": layer, "n_units": n_units,
                        "weights_sha256": spec.get("weights_sha256"), "task": task.name,
                        "harmful_order": ranking["harmful"].tolist(), "helpful_order": ranking["helpful"].tolist()},
        "ais_summary": io.nan_to_none(summary),
    }
    io.write_table(out_path, pa.Table.from_pandas(table, preserve_index=False), PRUNING_SCHEMA, metadata)
    _log_headline(summary)
    return summary


def _log_headline(summary: Mapping[str, Any]) -> None:
    """One line per metric: the unpruned value and the value after removing the smallest k of each order."""
    for metric, entry in summary.items():
        first = {o: (entry[o][0]["value"] if entry[o] else None) for o in ("harmful", "helpful", "random")}
        k = entry["harmful"][0]["k"] if entry["harmful"] else 0
        logger.info("pruning %s: unpruned %s; k=%d harmful %s, helpful %s, random (mean) %s",
                    metric, entry["baseline"], k, first["harmful"], first["helpful"], first["random"])


def main(smk: Any) -> None:
    with job(smk, gpu=True):
        p = smk.params
        pruning = p.pruning
        run(
            manifest_path=smk.input.manifest,
            model_dir=Path(smk.input.spec).parent,
            out_path=smk.output[0],
            target_layer=p.target_layer,
            split=pruning["split"],
            k=pruning["k"],
            draws=pruning["draws"],
            score=pruning["score"],
            n_boot=p.bootstrap if pruning["bootstrap"] is None else pruning["bootstrap"],
            seed=p.seed,
            batch_size=pruning["batch_size"],
            scope=p.fusion["scope"],
            magnitude=p.fusion["magnitude"],
            config={"validity": {"pruning": pruning}, "train": {"bootstrap": p.bootstrap}, "fusion": p.fusion,
                    "target_layer": p.target_layer, "seed": p.seed},
        )
