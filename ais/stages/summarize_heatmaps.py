"""Rule summarize_heatmaps: the per-shard figures gathered into agreement.parquet and localization.json.

For a classification model (``model.json``'s ``task``) localization.json also
holds ``explained_class_auc``: the direction map of the explained class
against the demo's mask of that class's evidence (generator artefacts for
``generated``; :func:`ais.reporting.classification.explained_class_localization`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow.dataset as ds

from ais import io
from ais.demo import CLASS_EVIDENCE
from ais.map_figures import localization_report
from ais.reporting.classification import explained_class_localization
from ais.stages import job, stamp
from ais.stages._heatmap_files import write_figures
from ais.tables import HEATMAP_SCHEMA

logger = logging.getLogger(__name__)


def run(
    figures_paths: Sequence[str | os.PathLike],
    out_table: str | os.PathLike,
    out_json: str | os.PathLike,
    config: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Gather the shards' figures (sorted by image id) and write both outputs; returns the localisation report.

    ``spec`` is ``model.json``'s content: for ``task: classification`` the
    report adds ``explained_class_auc`` of ``explained_class``.
    """
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
    if (spec or {}).get("task") == "classification":
        explained = spec.get("explained_class") or (spec.get("classes") or ["?"])[-1]  # default: the last class
        report |= explained_class_localization(table, str(explained), CLASS_EVIDENCE)
        logger.info("heatmaps: explained_class_auc %s (%s)", report["explained_class_auc"],
                    report["explained_class_localization"]["class"])
    io.write_json(out_json, io.nan_to_none({**report, **provenance}))
    logger.info("heatmaps: %d image(s), %d with masks; ais_pos_auc %s, ais_neg_auc %s, gradcam_auc %s%s",
                report["n_images"], report["n_images_with_masks"], report["ais_pos_auc"], report["ais_neg_auc"],
                report["gradcam_auc"], f" ({report['reason']})" if report["reason"] else "")
    return report


def main(smk: Any) -> None:
    with job(smk):
        spec = json.loads(Path(smk.input.spec).read_text(encoding="utf-8")) if "spec" in smk.input.keys() else None
        run(list(smk.input.figures), smk.output.table, smk.output.localization, spec=spec)
