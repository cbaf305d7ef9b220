"""End-to-end: the real workflow on a tiny configuration in a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import TINY
from PIL import Image

from ais.config import load_config
from ais.fusion import CHANNELS_SCHEMA, FUSED_SCHEMA
from ais.io import read_maps as load_maps
from ais.methods import configured_methods, map_keys
from ais.tables import (
    ABLATION_SCHEMA,
    HEATMAP_SCHEMA,
    LOCALIZATION_AUCS,
    TOP_CHANNELS_SCHEMA,
)

# the map arrays every map file of a default (VGG) run holds: the attention CNN's own map does not apply to VGG
MAP_KEYS = tuple(k for k in map_keys(configured_methods()) if k != "spatial_attention")
VIEWS = load_config(TINY)["heatmaps"]["views"]  # the tiny run's panel views (the schema's default)


@pytest.fixture
def tiny_run(tiny_workflow: Path) -> Path:
    """The suite's shared tiny run (conftest ``tiny_workflow``): these tests only read its outputs."""
    return tiny_workflow


def test_outputs_exist_and_agree(tiny_run: Path):
    results = tiny_run / "results"
    manifest = pd.read_parquet(results / "data" / "manifest.parquet")
    assert len(manifest) == 24 and set(manifest["split"]) == {"train", "val", "test"}
    metrics = json.loads((results / "model" / "metrics.json").read_text())
    assert metrics["test"]["n"] == (manifest["split"] == "test").sum()
    shards = ds.dataset([str(results / "ablation" / f"shard-{i}.parquet") for i in range(2)], format="parquet")
    table = shards.to_table()
    assert table.schema.remove_metadata().equals(ABLATION_SCHEMA)
    test_ids = sorted(manifest.loc[manifest["split"] == "test", "image_id"])
    df = table.to_pandas()
    assert sorted(df["image_id"].unique()) == test_ids
    spec = json.loads((results / "model" / "model.json").read_text())
    assert (df.groupby("image_id")["channel"].nunique() == spec["target_channels"]).all()
    for log in ["data/manifest.log", "model/finetune_model.log", "ablation/shard-0.log"]:
        assert (results / "logs" / log).stat().st_size > 0, log


def test_fusion_outputs(tiny_run: Path):
    results = tiny_run / "results"
    assert pq.read_schema(results / "fusion" / "scores.parquet").equals(FUSED_SCHEMA, check_metadata=False)
    assert pq.read_schema(results / "fusion" / "channels.parquet").equals(CHANNELS_SCHEMA, check_metadata=False)
    scores = pd.read_parquet(results / "fusion" / "scores.parquet")
    channels = pd.read_parquet(results / "fusion" / "channels.parquet")
    shards = ds.dataset([str(results / "ablation" / f"shard-{i}.parquet") for i in range(2)]).to_table()
    assert len(scores) == shards.num_rows and len(channels) == scores["channel"].nunique()
    summary = json.loads((results / "fusion" / "summary.json").read_text(), parse_constant=_no_nan)
    assert summary["scope"] == "global" and summary["magnitude"] == "zscore"
    assert summary["n_flipped"] == int(scores["flipped"].sum())
    assert sum(summary["quadrants"].values()) == len(scores)
    assert set(summary["reliability"]) == {"ais", "direction"}
    assert summary["provenance"]["config"]["fusion"]["bootstrap"] == 100
    assert (results / "benchmarks" / "fusion" / "fuse_scores.tsv").exists()


def test_heatmap_outputs(tiny_run: Path):
    results = tiny_run / "results"
    manifest = pd.read_parquet(results / "data" / "manifest.parquet")
    test_ids = sorted(manifest.loc[manifest["split"] == "test", "image_id"])
    table = pq.read_table(results / "heatmaps" / "agreement.parquet")
    assert table.schema.remove_metadata().equals(HEATMAP_SCHEMA)
    agreement = table.to_pandas()
    assert agreement["image_id"].tolist() == test_ids
    assert agreement["has_mask"].all() and (agreement["weights"] == "image").all()
    assert agreement["cc_gradcam"].between(-1, 1).all() and agreement["sim_gradcam"].between(0, 1).all()
    for name in LOCALIZATION_AUCS:
        values = agreement[name].dropna()
        assert values.between(0, 1).all(), name
    assert agreement["ais_pos_auc"].notna().any()

    for i in range(2):
        shard_ids = sorted(pd.read_parquet(results / "ablation" / f"shard-{i}.parquet")["image_id"].unique())
        figures = pd.read_parquet(results / "heatmaps" / f"shard-{i}" / "figures.parquet")
        assert figures["image_id"].tolist() == shard_ids
        for rec in figures.itertuples():
            maps = load_maps(results / "heatmaps" / f"shard-{i}" / "maps" / f"{rec.file_stem}.npz")
            assert str(maps["image_id"]) == rec.image_id
            assert maps["image"].shape == (32, 32, 3) and maps["image"].dtype == np.uint8
            peak = {key: float(np.abs(maps[key]).max()) for key in MAP_KEYS}
            assert all(maps[key].shape == (32, 32) for key in MAP_KEYS)
            assert all(0.99 < peak[key] <= 1.0 for key in ("ais", "direction", "gradcam", "gradcampp")), peak
            assert 0.99 < max(peak["helpful"], peak["harmful"]) <= 1.0  # one shared scale
            assert maps["gradcam"].min() >= 0 and maps["helpful"].min() >= 0 and maps["harmful"].max() <= 0
            with Image.open(results / "heatmaps" / f"shard-{i}" / "panels" / f"{rec.file_stem}.png") as im:
                # the image and every configured view with a map: a VGG run has no attention, rollout or spatial attention
                tiles = 1 + len([v for v in VIEWS if v not in ("attention", "rollout", "spatial_attention")])
                side = 32 * 5  # 32 px tiles enlarged by the smallest whole factor reaching 160 px
                assert im.mode == "RGB" and im.width == tiles * side + (tiles - 1) * 2
                assert im.height > side + 14  # caption above, colour bars below the tiles
        for what in ("maps", "panels"):
            assert (results / "benchmarks" / "heatmaps" / f"shard-{i}" / f"{what}.tsv").exists()
            assert (results / "logs" / "heatmaps" / f"shard-{i}" / f"{what}.log").stat().st_size > 0

    loc = json.loads((results / "heatmaps" / "localization.json").read_text(), parse_constant=_no_nan)
    for key in ("ais_pos_auc", "ais_neg_auc", "gradcam_auc", "ais_map_pos_auc", "ais_map_neg_auc"):
        assert loc[key] is None or 0 <= loc[key] <= 1, key
        assert loc[key] == pytest.approx(agreement[key].mean(), nan_ok=True)
    assert loc["n_images"] == len(test_ids) == loc["n_images_with_masks"] and loc["reason"] is None
    with Image.open(results / "heatmaps" / "gallery.png") as im:
        assert im.width > 500


def test_top_channels_table(tiny_run: Path):
    table = pq.read_table(tiny_run / "results" / "report" / "top_channels.parquet")
    assert table.schema.remove_metadata().equals(TOP_CHANNELS_SCHEMA)
    crops = table.to_pandas()
    assert set(crops["group"]) <= {"helpful", "harmful"} and (crops["crop_rank"] >= 1).all()


def test_every_file_is_written_under_results(tiny_run: Path):
    outside = [p.relative_to(tiny_run) for p in tiny_run.rglob("*")
               if p.is_file() and p.parts[len(tiny_run.parts)] not in ("results", ".snakemake")]
    assert [str(p) for p in outside] == ["config.yaml"]
    leftovers = [p for p in (tiny_run / "results").rglob("*") if ".tmp." in p.name]
    assert leftovers == []


def _no_nan(text: str):
    raise AssertionError(f"{text} in JSON output")
