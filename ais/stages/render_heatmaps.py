"""Rule render_heatmaps: one PNG panel per image of a shard, by colour lookup (:func:`ais.render.panel`).

Reads only the shard's figures table and map files (no model, no torch);
only the rendering options reach this stage, so changing one reruns
rendering only. The panels folder is replaced atomically.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Sequence

import pandas as pd

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
) -> int:
    """Write ``panels_dir/{file_stem}.png`` for every image of the figures table; return the number of panels."""
    table = pd.read_parquet(figures_path, columns=["image_id", "file_stem"])
    progress = Progress(len(table), "panels", logger)
    start = time.perf_counter()
    with io.atomic_dir(panels_dir) as tmp_dir:
        for n, rec in enumerate(table.itertuples(index=False), 1):
            data = read_image_maps(maps_dir, rec.file_stem, rec.image_id, str(figures_path))
            arr = render.panel(data["image"], data, alpha=alpha, harm_threshold=harm_threshold, keys=views)
            render.save_png(output_file(tmp_dir, rec.file_stem, ".png"), arr)
            progress.update(n)
    elapsed = time.perf_counter() - start
    logger.info("rendered %d panel(s) in %.2f s (%.1f images/s)", len(table), elapsed,
                len(table) / elapsed if elapsed > 0 else float("nan"))
    return len(table)


def main(smk: Any) -> None:
    with job(smk):
        render_opts = smk.params.render
        run(smk.input.figures, smk.input.maps, smk.output.panels, alpha=render_opts["alpha"],
            harm_threshold=render_opts["harm_threshold"], views=render_opts["views"])
