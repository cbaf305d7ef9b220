"""Schemas of the workflow's Parquet tables, defined once.

Every table is plain Parquet readable with pyarrow.dataset, pandas or DuckDB
without this package; the key-value metadata carries provenance.
"""

from __future__ import annotations

import pyarrow as pa

from ais.methods import get_method, list_methods

#: results/data/manifest.parquet: one row per usable image.
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # unique, safe as a file name
        pa.field("path", pa.string(), nullable=False),  # data.root joined with the sheet's path
        pa.field("y_true", pa.float64(), nullable=True),  # realism score, or class index (classification); null = unlabelled
        pa.field("split", pa.string(), nullable=False),  # train | val | test | unlabelled
        pa.field("width", pa.int32(), nullable=False),  # after EXIF orientation
        pa.field("height", pa.int32(), nullable=False),
        pa.field("sheet_row", pa.int64(), nullable=False),  # 1-based data row in the sheet
        pa.field("mask", pa.string(), nullable=True),  # ground-truth region masks (demo only)
        pa.field("label", pa.string(), nullable=True),  # classification: the class name of y_true; null otherwise
        pa.field("group", pa.string(), nullable=True),  # data.group_column's value; null when not given
    ]
)

#: results/ablation/shard-{i}.parquet: one row per (image, channel). Regression: y is the score, the residual
#: ``|y_pred - y_true|``. Classification: ``y_true`` the class index, ``y_pred`` / ``y_pred_ablated`` the explained
#: class's log-odds ``log p_k - log(1 - p_k)``, the residual the true class's cross-entropy ``-log p_y`` (> 0 change:
#: the unit was helpful).
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
        # Monte-Carlo dropout (ais.uncertainty; null where not sampled: no dropout in the head, or turned off)
        pa.field("mc_mean", pa.float64(), nullable=True),  # regression: mean prediction over the samples
        pa.field("mc_std", pa.float64(), nullable=True),  # regression: their standard deviation (ddof 0)
        pa.field("mc_entropy", pa.float64(), nullable=True),  # classification: predictive entropy (nats)
        pa.field("mc_mutual_information", pa.float64(), nullable=True),  # classification: entropy - mean entropy
        pa.field("group", pa.string(), nullable=True),  # the manifest's group (data.group_column); null when not given
    ]
)


def predictions_schema(n_classes: int = 0) -> pa.Schema:
    """:data:`PREDICTIONS_SCHEMA`; for a classifier of ``n_classes`` also ``pred_class`` and ``prob_0..prob_{K-1}``.

    Classification: ``y_true`` is the true class index, ``y_pred`` the probability of the explained class,
    ``pred_class`` the most probable class (int32), ``prob_k`` the probability of class ``k`` (``classes`` order).
    """
    if n_classes <= 0:
        return PREDICTIONS_SCHEMA
    extra = [pa.field("pred_class", pa.int32(), nullable=False)]
    extra += [pa.field(f"prob_{k}", pa.float64(), nullable=False) for k in range(n_classes)]
    return pa.schema([*PREDICTIONS_SCHEMA, *extra])

#: Localisation AUC columns of :data:`HEATMAP_SCHEMA` (and keys of localization.json), declared by the
#: map methods (:attr:`ais.methods.base.LayerMap.localization`), in method order:
#: ``{column: (map, part, mask)}``. ``part`` ``pos`` ranks pixels by the signed map (most positive
#: first: the positive map's order, its zeros ordered by the negative part), ``neg`` by the negated
#: map; ``pos_clipped`` / ``neg_clipped`` by max(map, 0) / max(-map, 0) alone (ties at 0);
#: ``all`` by the map as it is (Grad-CAM is >= 0).
LOCALIZATION_AUCS = {col: spec for m in list_methods() for col, spec in get_method(m).localization.items()}

#: Per-image statistics of a map declared by the methods (``image_stats``: ``{column: (map, function of the
#: (H, W) map)}``, e.g. the spatial attention's entropy): nullable columns of :data:`HEATMAP_SCHEMA`.
IMAGE_STATS = {col: spec for m in list_methods() for col, spec in getattr(get_method(m), "image_stats", {}).items()}

#: Agreement references of :data:`HEATMAP_SCHEMA`: ``{cc,sim,kld}_<reference>`` compare |AIS| with them.
AGREEMENT_REFERENCES = tuple(m for m in list_methods() if get_method(m).agreement_reference)

#: Methods whose per-image scale (the max |value| their map was divided by) is a column.
SCALE_COLUMNS = tuple(f"{m}_scale" for m in list_methods() if get_method(m).scale_column)

#: results/heatmaps/shard-{i}/figures.parquet and results/heatmaps/agreement.parquet: one row per image with maps.
HEATMAP_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("shard", pa.int32(), nullable=False),  # ablation shard = heatmap folder shard-{i}
        pa.field("split", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # the image file
        pa.field("file_stem", pa.string(), nullable=False),  # shard-{i}/maps/{file_stem}.npz, panels/{file_stem}.png
        pa.field("weights", pa.string(), nullable=False),  # AIS channel weights: image (own scores) | dataset
        pa.field("y_true", pa.float64(), nullable=True),  # null = unlabelled
        pa.field("y_pred", pa.float64(), nullable=False),
        pa.field("abs_error", pa.float64(), nullable=True),  # |y_pred - y_true|; classification: true class CE
        *[pa.field(name, pa.float64(), nullable=False) for name in SCALE_COLUMNS],  # max |raw map| divided by
        *[
            pa.field(f"{metric}_{ref}", pa.float64(), nullable=True)  # |AIS| (judged) vs reference
            for ref in AGREEMENT_REFERENCES for metric in ("cc", "sim", "kld")
        ],
        pa.field("has_mask", pa.bool_(), nullable=False),  # ground-truth masks (demo only)
        pa.field("raise_fraction", pa.float64(), nullable=True),  # pixels in a raise-realism region
        pa.field("lower_fraction", pa.float64(), nullable=True),  # pixels in a lower-realism region
        *[pa.field(name, pa.float64(), nullable=True) for name in LOCALIZATION_AUCS],
        *[pa.field(name, pa.float64(), nullable=True) for name in IMAGE_STATS],  # NaN: map not computed
    ]
)

#: results/report/top_channels.parquet: the crops that activate the top channels most, one row per crop.
TOP_CHANNELS_SCHEMA = pa.schema(
    [
        ("channel", pa.int32()), ("group", pa.string()),  # helpful | harmful (data-set-level AIS score)
        ("rank", pa.int32()), ("crop_rank", pa.int32()),  # channel's rank in its group; crop's, by activation
        ("image_id", pa.string()), ("path", pa.string()), ("peak_activation", pa.float32()),
        ("cell_row", pa.int32()), ("cell_col", pa.int32()),  # the peak's cell of the layer's grid
        ("top", pa.int32()), ("left", pa.int32()), ("side", pa.int32()),  # the crop, input pixels
    ]
)

#: results/validity/faithfulness.parquet (rule validity): RISE deletion / insertion, one row per
#: (image, map, sign); map ``random`` / ``uniform`` are the baselines (ais.validity.faithfulness).
FAITHFULNESS_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()), ("map", pa.string()), ("method", pa.string()),  # method: registry or baseline
        ("sign", pa.string()), ("steps", pa.int32()),  # sign: pos (most positive first) | neg
        ("deletion_auc", pa.float64()), ("insertion_auc", pa.float64()),  # normalised (see the module)
        ("deletion_gain", pa.float64()), ("insertion_gain", pa.float64()),  # > 0: better than the random map
        ("y_clean", pa.float64()), ("y_deletion_substrate", pa.float64()), ("y_insertion_substrate", pa.float64()),
        ("scale", pa.float64()),  # the curves' unit: std of the clean outputs over the evaluated images
        ("deletion_curve", pa.list_(pa.float64())), ("insertion_curve", pa.list_(pa.float64())),  # steps + 1 values
    ]
)

#: results/validity/sanity.parquet (rule validity): cascading randomisation, one row per (image, map, depth).
SANITY_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()), ("map", pa.string()), ("method", pa.string()),
        ("depth", pa.int32()), ("block", pa.string()), ("blocks", pa.int32()),  # blocks randomised from the output
        ("spearman", pa.float64()), ("spearman_abs", pa.float64()), ("ssim", pa.float64()),  # trained vs randomised
    ]
)

#: The manifest's split values; rows without a score are ``unlabelled``.
SPLITS = ("train", "val", "test", "unlabelled")
#: The splits of scored images (a sheet's split column, the seeded split).
LABELLED_SPLITS = SPLITS[:3]
