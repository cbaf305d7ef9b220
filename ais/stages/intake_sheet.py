"""Rule ``intake_sheet``: check the image sheet, write the manifest and the rejected rows.

The manifest (Parquet, :data:`ais.tables.MANIFEST_SCHEMA`) carries in its
key-value metadata the provenance record (key ``provenance``), the number of
images per split (``counts``), the number of rejected rows (``rejected``)
and what the split assignment did beyond the sheet's values (``split_notes``:
blank split cells assigned, a validation part carved out of ``train``; also
logged), and for classification (``data.label_column``) the class names
(``classes``; ``y_true`` is an index into them, ``label`` its name) and the
images per class and split (``class_counts``); ``rejected.csv`` lists each
rejected row with its reason.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import pandas as pd
import pyarrow as pa

from ais import io
from ais.data import SheetSpec, build_manifest
from ais.images import DEFAULT_MAX_PIXELS
from ais.stages import job, stamp
from ais.tables import MANIFEST_SCHEMA

logger = logging.getLogger(__name__)


def run(
    data_cfg: Mapping[str, Any],
    seed: int,
    manifest_path: str | os.PathLike,
    rejected_path: str | os.PathLike,
    sheet: str | os.PathLike | None = None,
    mask_column: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Intake as the workflow runs it: the config's ``data`` section in, manifest and rejected.csv out.

    ``sheet`` overrides ``data.sheet`` and its column settings (the demo's
    generated sheet: columns ``path`` and ``score``, paths relative to it),
    ``mask_column`` names a column of ground-truth masks. ``config`` is what
    the provenance records (default: ``{"data": data_cfg, "seed": seed}``).
    Returns the manifest.
    """
    spec = _sheet_spec(data_cfg, sheet, mask_column)
    manifest, rejected = build_manifest(
        spec, data_cfg["splits"], seed, data_cfg["on_bad_image"], data_cfg.get("max_image_pixels", DEFAULT_MAX_PIXELS)
    )
    if len(rejected):
        logger.warning("intake: %d row(s) rejected, listed in %s", len(rejected), rejected_path)
    for note in manifest.attrs.get("split_notes", []):
        logger.info("intake: %s", note)
    logger.info("intake: %d images, splits %s", len(manifest), manifest["split"].value_counts().to_dict())
    stamped = stamp({"data": data_cfg, "seed": seed} if config is None else config)
    if spec.label_column:
        stamped = {**stamped, **_class_facts(manifest, spec.classes or ())}
    _write(manifest, rejected, manifest_path, rejected_path, stamped)
    return manifest


def main(smk: Any) -> None:
    """The rule's job: ``input.sheet`` (read for the demo only), ``output.manifest``/``rejected``, ``params``."""
    demo = bool(smk.params.demo)
    with job(smk):
        run(
            smk.params.data, smk.params.seed, smk.output.manifest, smk.output.rejected,
            sheet=smk.input.sheet if demo else None,
            mask_column="mask" if demo else None,
            config={"data": smk.params.data, "seed": smk.params.seed},
        )


def _class_facts(manifest: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, Any]:
    """``classes`` and ``class_counts`` (images per class and split) of a classification manifest, logged."""
    counts = {c: {s: int(((manifest["y_true"] == k) & (manifest["split"] == s)).sum()) for s in ("train", "val", "test")}
              for k, c in enumerate(classes)}
    logger.info("intake: images per class and split %s", counts)
    return {"classes": list(classes), "class_counts": counts}


def _sheet_spec(data_cfg: Mapping[str, Any], sheet: str | os.PathLike | None, mask_column: str | None) -> SheetSpec:
    overrides: dict[str, Any] = {}
    if sheet is not None:
        overrides.update(sheet=str(sheet), root=None, image_column="path", score_column="score",
                         id_column=None, split_column=None)
    if mask_column:
        overrides["mask_column"] = mask_column
    return SheetSpec.from_config(data_cfg, **overrides)


def _write(
    manifest: pd.DataFrame, rejected: pd.DataFrame, manifest_path: str | os.PathLike,
    rejected_path: str | os.PathLike, stamped: Mapping[str, Any],
) -> None:
    """The manifest (Parquet, :data:`MANIFEST_SCHEMA`, stamped) and the rejected rows (CSV), atomically."""
    counts = manifest["split"].value_counts().to_dict()
    metadata = {
        **stamped,
        "counts": {k: int(v) for k, v in sorted(counts.items())},
        "rejected": int(len(rejected)),
        "split_notes": list(manifest.attrs.get("split_notes", [])),
    }
    table = pa.Table.from_pandas(manifest, preserve_index=False)
    io.write_table(manifest_path, table, schema=MANIFEST_SCHEMA, metadata=metadata)
    with io.atomic_path(rejected_path) as tmp:
        rejected.to_csv(tmp, index=False)
