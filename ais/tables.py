"""Schemas of the workflow's Parquet tables, defined once.

Every table is plain Parquet readable with pyarrow.dataset, pandas or DuckDB
without this package; the key-value metadata carries provenance.
"""

from __future__ import annotations

import pyarrow as pa

#: results/data/manifest.parquet: one row per usable image.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # unique, safe as a file name
        pa.field("path", pa.string(), nullable=False),  # data.root joined with the sheet's path
        pa.field("y_true", pa.float64(), nullable=True),  # realism score; null = unlabelled
        pa.field("split", pa.string(), nullable=False),  # train | val | test | unlabelled
        pa.field("width", pa.int32(), nullable=False),  # after EXIF orientation
        pa.field("height", pa.int32(), nullable=False),
        pa.field("sheet_row", pa.int64(), nullable=False),  # 1-based data row in the sheet
        pa.field("mask", pa.string(), nullable=True),  # ground-truth region masks (demo only)
    ]
)

#: results/ablation/shard-{i}.parquet: one row per (image, channel).
ABLATION_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("channel", pa.int32(), nullable=False),
        pa.field("y_true", pa.float32(), nullable=True),
        pa.field("y_pred", pa.float32(), nullable=False),
        pa.field("y_pred_ablated", pa.float32(), nullable=False),
        pa.field("delta_prediction", pa.float32(), nullable=False),  # y_pred_ablated - y_pred
        pa.field("residual", pa.float32(), nullable=True),  # |y_pred - y_true|
        pa.field("residual_ablated", pa.float32(), nullable=True),  # |y_pred_ablated - y_true|
        pa.field("delta_residual", pa.float32(), nullable=True),  # residual_ablated - residual
    ]
)

#: results/model/predictions.parquet: one row per image of the manifest.
PREDICTIONS_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("y_true", pa.float64(), nullable=True),
        pa.field("y_pred", pa.float64(), nullable=False),
    ]
)

SPLITS = ("train", "val", "test", "unlabelled")
