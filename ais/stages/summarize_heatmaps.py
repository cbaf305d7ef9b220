"""Rule summarize_heatmaps: the per-shard figures gathered into agreement.parquet and localization.json."""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import pyarrow.dataset as ds

from ais import io
from ais.map_figures import localization_report
from ais.stages import job, stamp
from ais.stages._heatmap_files import write_figures
from ais.tables import HEATMAP_SCHEMA

logger = logging.getLogger(__name__)


def run(
    figures_paths: Sequence[str | os.PathLike],
    out_table: str | os.PathLike,
    out_json: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Gather the shards' figures (sorted by image id) and write both outputs; returns the localisation report."""
    paths = [os.fspath(p) for p in figures_paths]
    if not paths:
        raise ValueError("no per-shard figures tables given")
    table = ds.dataset(paths, format="parquet", schema=HEATMAP_SCHEMA).to_table().to_pandas()
    dup = table["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"image {table.loc[dup, 'image_id'].iloc[0]!r} has maps in more than one shard")
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    provenance = stamp(config)
    write_figures(out_table, table, provenance)
    report = localization_report(table)
    io.write_json(out_json, io.nan_to_none({**report, **provenance}))
    logger.info("heatmaps: %d image(s), %d with masks; ais_pos_auc %s, ais_neg_auc %s, gradcam_auc %s%s",
                report["n_images"], report["n_images_with_masks"], report["ais_pos_auc"], report["ais_neg_auc"],
                report["gradcam_auc"], f" ({report['reason']})" if report["reason"] else "")
    return report


def main(smk: Any) -> None:
    with job(smk):
        run(list(smk.input.figures), smk.output.table, smk.output.localization)
