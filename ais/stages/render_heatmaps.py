"""Rule render_heatmaps: one PNG panel per image of a shard, by colour lookup (:func:`ais.render.standalone_panel`).

Reads the shard's figures table and map files, and for the panels'
captions the manifest (ids, sizes), the predictions and the model's spec
(a classifier's classes); no model, no torch. Only the rendering options
reach this stage, so changing one reruns rendering only. The panels folder
is replaced atomically.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow.parquet as pq

from ais import io, render
from ais.logs import Progress
from ais.stages import job
from ais.stages._heatmap_files import output_file, read_image_maps

logger = logging.getLogger(__name__)


def run(
    figures_path: str | os.PathLike,
    maps_dir: str | os.PathLike,
    panels_dir: str | os.PathLike,
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
    views: Sequence[str] | None = None,
    manifest: str | os.PathLike | None = None,
    predictions: str | os.PathLike | None = None,
    spec: str | os.PathLike | None = None,
) -> int:
    """Write ``panels_dir/{file_stem}.png`` for every image of the figures table; return the number of panels.

    Each panel stands on its own (:func:`ais.render.standalone_panel`): its
    caption gives the image id (the prefix every manifest id shares
    dropped), split, true and predicted values (a classifier's classes from
    ``predictions`` and ``spec``) and, from the ``manifest``'s sizes, whether
    the model saw a stretched square.
    """
    table = pd.read_parquet(figures_path)
    info = _caption_info(table, manifest, predictions, spec)
    progress = Progress(len(table), "panels", logger)
    start = time.perf_counter()
    with io.atomic_dir(panels_dir) as tmp_dir:
        for n, rec in enumerate(table.itertuples(index=False), 1):
            data = read_image_maps(maps_dir, rec.file_stem, rec.image_id, str(figures_path))
            text = info(rec, data["image"].shape[0])
            arr = render.standalone_panel(data["image"], data, text, alpha=alpha, harm_threshold=harm_threshold,
                                          keys=views)
            render.save_png(output_file(tmp_dir, rec.file_stem, ".png"), arr)
            progress.update(n)
    elapsed = time.perf_counter() - start
    logger.info("rendered %d panel(s) in %.2f s (%.1f images/s)", len(table), elapsed,
                len(table) / elapsed if elapsed > 0 else float("nan"))
    return len(table)


def _caption_info(table: pd.DataFrame, manifest: Any, predictions: Any, spec: Any) -> Any:
    """``info(record, input_size) -> Caption`` for the figures table's rows (the optional files where given)."""
    ids = pd.read_parquet(manifest, columns=["image_id", "width", "height"]) if manifest else None
    short = dict(zip((ids if ids is not None else table)["image_id"],
                     render.short_ids((ids if ids is not None else table)["image_id"].astype(str).tolist())))
    sizes = dict(zip(ids["image_id"], zip(ids["width"], ids["height"]))) if ids is not None else {}
    model = json.loads(Path(spec).read_text(encoding="utf-8")) if spec else {}
    classes = model.get("classes")
    pred_class: dict[str, int] = {}
    if classes and predictions and "pred_class" in pq.read_schema(predictions).names:
        pred = pd.read_parquet(predictions, columns=["image_id", "pred_class"])
        pred_class = dict(zip(pred["image_id"], pred["pred_class"].astype(int)))

    def info(rec: Any, input_size: int) -> render.Caption:
        return render.caption(short.get(rec.image_id, rec.image_id), rec.split, rec.y_true, rec.y_pred,
                              classes=classes, explained=model.get("explained_class"),
                              pred_class=pred_class.get(rec.image_id), size=sizes.get(rec.image_id),
                              input_size=input_size)

    return info


def main(smk: Any) -> None:
    with job(smk):
        render_opts = smk.params.render
        run(smk.input.figures, smk.input.maps, smk.output.panels, alpha=render_opts["alpha"],
            harm_threshold=render_opts["harm_threshold"], views=render_opts["views"], manifest=smk.input.manifest,
            predictions=smk.input.predictions, spec=smk.input.spec)
