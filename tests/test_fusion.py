"""Fusion of Δprediction and Δresidual: hand-computed scores, channel table, shards and schemas."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ais.fusion import (
    CHANNELS_SCHEMA,
    FUSED_SCHEMA,
    QUADRANTS,
    channel_table,
    fuse,
    image_weights,
)
from ais.io import nan_to_none, read_metadata, write_table
from ais.stages import fuse_scores, stamp
from ais.tables import ABLATION_SCHEMA

# Two labelled images (a, b) and one unlabelled (u), two channels each.
#   |Δy| = [2, 1, 0, 3, 1, 2]: mean 1.5, population variance 5.5 / 6 = 11/12
S = np.sqrt(11 / 12)


def small_table() -> pd.DataFrame:
    y_true = [3.0, 3.0, 2.0, 2.0, None, None]
    dy = [-2.0, 1.0, 0.0, 3.0, -1.0, 2.0]
    dres = [1.0, -0.5, 0.0, 2.0, None, None]
    y_pred = [3.5, 3.5, 2.5, 2.5, 1.0, 1.0]
    return pd.DataFrame(
        {
            "image_id": ["a", "a", "b", "b", "u", "u"],
            "channel": np.array([0, 1, 0, 1, 0, 1], dtype=np.int32),
            "y_true": pd.array(y_true, dtype="Float32"),
            "y_pred": np.array(y_pred, dtype=np.float32),
            "y_pred_ablated": np.array(y_pred, dtype=np.float32) + np.array(dy, dtype=np.float32),
            "delta_prediction": np.array(dy, dtype=np.float32),
            "residual": pd.array([0.5, 0.5, 0.5, 0.5, None, None], dtype="Float32"),
            "residual_ablated": pd.array([1.5, 0.0, 0.5, 2.5, None, None], dtype="Float32"),
            "delta_residual": pd.array(dres, dtype="Float32"),
        }
    )


def test_global_zscore_signs_scores_quadrants_flips():
    f = fuse(small_table(), scope="global", magnitude="zscore")
    np.testing.assert_allclose(f["z"], np.array([0.5, -0.5, -1.5, 1.5, -0.5, 0.5]) / S)
    assert f["sign"].tolist() == [1, -1, 0, 1, 0, 0]
    # a1: harmful (sign -1) with z < 0 -> the seed's formula makes it positive: flipped
    np.testing.assert_allclose(f["ais_score"][:4], [0.5 / S, 0.5 / S, 0.0, 1.5 / S])
    assert f["ais_score"][4:].isna().all()  # unlabelled: no per-image score
    assert f["flipped"].tolist() == [False, True, False, False, False, False]
    assert f["quadrant"].tolist() == [
        "helpful-raises", "harmful-lowers", "neutral-none", "helpful-lowers", "neutral-raises", "neutral-lowers",
    ]
    np.testing.assert_allclose(f["direction"], [2.0, -1.0, 0.0, -3.0, 1.0, -2.0])
    assert f["labelled"].tolist() == [True, True, True, True, False, False]


def test_magnitudes():
    clipped = fuse(small_table(), magnitude="zscore_clipped")
    np.testing.assert_allclose(clipped["magnitude"], np.array([0.5, 0, 0, 1.5, 0, 0.5]) / S)
    np.testing.assert_allclose(clipped["ais_score"][:4], [0.5 / S, 0.0, 0.0, 1.5 / S])
    raw = fuse(small_table(), magnitude="raw")
    np.testing.assert_allclose(raw["ais_score"][:4], [2.0, -1.0, 0.0, 3.0])
    # flipped follows the seed's z whatever the magnitude
    assert raw["flipped"].tolist() == clipped["flipped"].tolist() == [False, True, False, False, False, False]


def test_per_image_scope():
    f = fuse(small_table(), scope="per_image")
    # each image: two values, population std = half their difference -> z = -1, +1
    np.testing.assert_allclose(f["z"], [1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(f["ais_score"][:4], [1.0, 1.0, 0.0, 1.0])
    assert f["flipped"].sum() == 1  # b0 has z < 0 but sign 0: not flipped


def test_zero_std_gives_zero_z():
    t = small_table()
    t.loc[t.image_id == "a", "delta_prediction"] = np.float32(1.0)
    f = fuse(t, scope="per_image")
    assert f.loc[f.image_id == "a", "z"].tolist() == [0.0, 0.0]
    g = fuse(t.assign(delta_prediction=np.float32(0.5)), scope="global")
    assert (g["z"] == 0).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="scope"):
        fuse(small_table(), scope="local")
    with pytest.raises(ValueError, match="magnitude"):
        fuse(small_table(), magnitude="log")


def test_channel_table_means():
    channels, _ = channel_table(fuse(small_table()), n_boot=200, seed=0)
    c0, c1 = channels.iloc[0], channels.iloc[1]
    assert c0.n_images == 3 and c0.n_labelled == 2
    assert c0.mean_delta_prediction == pytest.approx(-1.0)  # (-2 + 0 - 1) / 3
    assert c0.mean_direction == pytest.approx(1.0)
    assert c0.mean_delta_residual == pytest.approx(0.5)  # labelled only: (1 + 0) / 2
    assert c0.mean_ais_score == pytest.approx(0.25 / S)  # (0.5/S + 0) / 2
    assert c0.fraction_helpful == pytest.approx(0.5)
    assert c1.mean_delta_prediction == pytest.approx(2.0)
    assert c1.mean_ais_score == pytest.approx(1.0 / S)
    assert c1.n_flipped == 1 and c0.n_flipped == 0
    for name in ("mean_delta_prediction", "mean_delta_residual", "mean_ais_score"):
        assert (channels[f"{name}_lo"] <= channels[name] + 1e-12).all()
        assert (channels[name] <= channels[f"{name}_hi"] + 1e-12).all()


def random_table(n_images: int = 40, n_channels: int = 12, seed: int = 0, unlabelled: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    effect = np.linspace(-1, 1, n_channels)
    rows = []
    for i in range(n_images):
        labelled = i >= unlabelled
        y_true = float(rng.uniform(1, 5)) if labelled else None
        y_pred = (y_true if labelled else float(rng.uniform(1, 5))) + 1.0  # over-predicts: signs agree
        dy = -effect + rng.normal(scale=0.3, size=n_channels)
        for c in range(n_channels):
            res = abs(y_pred - y_true) if labelled else None
            res_abl = abs(y_pred + dy[c] - y_true) if labelled else None
            rows.append((f"img{i:03d}", c, y_true, y_pred, y_pred + dy[c], dy[c], res, res_abl,
                         None if res is None else res_abl - res))
    frame = pd.DataFrame(rows, columns=ABLATION_SCHEMA.names)
    return frame


def write_shards(table: pd.DataFrame, folder, n: int = 3) -> list:
    ids = sorted(table.image_id.unique())
    paths = []
    for k in range(n):
        part = table[table.image_id.isin(ids[k::n])]
        path = folder / f"shard-{k}.parquet"
        write_table(path, pa.Table.from_pandas(part, preserve_index=False), ABLATION_SCHEMA)
        paths.append(path)
    return paths


def test_fuse_shards_schemas_summary_and_metadata(tmp_path):
    table = small_table()
    shards = write_shards(table, tmp_path, n=2)
    scores_path, channels_path = tmp_path / "out" / "scores.parquet", tmp_path / "out" / "channels.parquet"
    summary = fuse_scores.run(shards, scores_path, channels_path, scope="global", magnitude="zscore", n_boot=100,
                              seed=3, config={"config_sha": "abc"})
    assert pq.read_schema(scores_path).equals(FUSED_SCHEMA, check_metadata=False)
    assert pq.read_schema(channels_path).equals(CHANNELS_SCHEMA, check_metadata=False)
    scores = pd.read_parquet(scores_path)
    expected = fuse(table)
    np.testing.assert_allclose(scores["ais_score"], expected["ais_score"])
    assert scores["quadrant"].tolist() == expected["quadrant"].tolist()

    assert summary["n_flipped"] == 1 and summary["n_signed"] == 3
    assert summary["quadrants"]["helpful-raises"] == 1 and summary["quadrants"]["neutral-none"] == 1
    assert set(summary["quadrants"]) == set(QUADRANTS) and sum(summary["quadrants"].values()) == 6
    assert summary["n_images"] == 3 and summary["n_labelled_images"] == 2
    meta = read_metadata(channels_path)
    assert meta["provenance"]["config"] == {"config_sha": "abc"}
    assert read_metadata(scores_path)["provenance"] == meta["provenance"]
    assert meta["ais_summary"]["n_flipped"] == 1
    assert meta["ais_fusion"] == {"scope": "global", "magnitude": "zscore", "zscore_ddof": 0, "n_boot": 100, "seed": 3}
    assert read_metadata(scores_path)["ais_fusion"]["scope"] == "global"


def test_fuse_shards_summary_json_is_strict_json(tmp_path):
    import json

    shards = write_shards(small_table(), tmp_path, n=2)
    out = tmp_path / "out"
    summary = fuse_scores.run(shards, out / "scores.parquet", out / "channels.parquet", n_boot=100, seed=3,
                              n_splits=4, config={"git_revision": "abc"}, out_summary=out / "summary.json")

    def no_nan(text):
        raise AssertionError(f"{text} in summary.json")

    loaded = json.loads((out / "summary.json").read_text(), parse_constant=no_nan)
    assert loaded["n_flipped"] == summary["n_flipped"] == 1 and loaded["scope"] == "global"
    assert loaded["quadrants"] == summary["quadrants"] and loaded["magnitude"] == "zscore"
    assert loaded["reliability"]["ais"]["n_splits"] == 4
    # two labelled images: one per half, fewer than 3 channels with values: no correlation -> null, not NaN
    assert loaded["reliability"]["ais"]["spearman"] is None
    assert loaded["provenance"] == json.loads(json.dumps(nan_to_none(stamp({"git_revision": "abc"})["provenance"])))
    assert loaded["provenance"]["config"] == {"git_revision": "abc"}


def test_duplicate_rows_across_shards_rejected(tmp_path):
    table = small_table()
    paths = []
    for k in range(2):
        path = tmp_path / f"shard-{k}.parquet"
        write_table(path, pa.Table.from_pandas(table, preserve_index=False), ABLATION_SCHEMA)
        paths.append(path)
    with pytest.raises(ValueError, match="duplicate"):
        fuse_scores.run(paths, tmp_path / "s.parquet", tmp_path / "c.parquet")


def test_reliability_deterministic_for_a_seed(tmp_path):
    shards = write_shards(random_table(), tmp_path)
    runs = [
        fuse_scores.run(shards, tmp_path / f"s{i}.parquet", tmp_path / f"c{i}.parquet", n_boot=200, seed=seed)
        for i, seed in enumerate([7, 7, 8])
    ]
    assert runs[0] == runs[1]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "c0.parquet"), pd.read_parquet(tmp_path / "c1.parquet"))
    rel = runs[0]["reliability"]["ais"]
    assert rel["n_images"] == 35 and rel["n_splits"] == 20  # labelled images only
    assert 0.5 < rel["spearman"] <= 1.0  # the channels have a real, shared effect
    assert rel["spearman_brown"] == pytest.approx(2 * rel["spearman"] / (1 + rel["spearman"]))
    assert runs[0]["reliability"]["direction"]["n_images"] == 40
    assert runs[2]["reliability"] != runs[0]["reliability"]
    c0 = pd.read_parquet(tmp_path / "c0.parquet")
    c2 = pd.read_parquet(tmp_path / "c2.parquet")
    assert not np.allclose(c0["mean_ais_score_lo"], c2["mean_ais_score_lo"])  # the seed drives the bootstrap
    np.testing.assert_allclose(c0["mean_ais_score"], c2["mean_ais_score"])


def test_image_weights_fall_back_to_dataset_scores():
    fused = fuse(small_table())
    channels, _ = channel_table(fused, n_boot=100)
    ais, direction = image_weights(fused, channels, ["b", "u", "new"], n_channels=3)
    assert ais.shape == direction.shape == (3, 3) and ais.dtype == np.float32
    np.testing.assert_allclose(ais[0], [0.0, 1.5 / S, 0.0], rtol=1e-6)  # own scores; channel 2 unknown -> 0
    np.testing.assert_allclose(ais[1], [0.25 / S, 1.0 / S, 0.0], rtol=1e-6)  # unlabelled: data-set level
    np.testing.assert_allclose(ais[2], ais[1])
    np.testing.assert_allclose(direction[1], [1.0, -2.0, 0.0])  # u was ablated: its own -Δy
    np.testing.assert_allclose(direction[2], [1.0, -2.0, 0.0])  # never ablated: mean -Δy
