"""The heatmap stages: safe file names, per-image figures by hand, gallery choice, gathering, panels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ais import agreement, map_figures
from ais.data import file_stem
from ais.images import model_view
from ais.io import atomic_dir, nan_to_none, write_maps
from ais.stages import _heatmap_files as hf
from ais.stages import plot_gallery, render_heatmaps, stamp, summarize_heatmaps
from ais.tables import HEATMAP_SCHEMA, LOCALIZATION_AUCS


# --------------------------------------------------------------------------- file names


EVIL_IDS = ["../../etc/passwd", "/abs/path", "..", ".", "a/../b", "", ".hidden", "a\\b", "nul\x00byte",
            "x" * 10 + "/" + "..", "café photo"]


def test_file_names_from_any_id_stay_in_their_folder(tmp_path: Path):
    folder = tmp_path / "results" / "heatmaps" / "shard-0" / "maps"
    folder.mkdir(parents=True)
    stems = hf.image_stems(EVIL_IDS)
    assert len(set(stems)) == len(EVIL_IDS)
    for stem in stems:
        path = hf.output_file(folder, stem, ".npz")
        assert path.resolve().parent == folder.resolve()
        assert path.name == stem + ".npz" and not path.name.startswith(".")


@pytest.mark.parametrize("stem", ["../x", "a/b", "..", ".", "", ".hidden", "a\\b", "x\x00"])
def test_output_file_refuses_names_that_leave_the_folder(tmp_path: Path, stem: str):
    with pytest.raises(ValueError, match="refusing output file name"):
        hf.output_file(tmp_path, stem, "")


def test_image_stems_must_be_unique():
    assert hf.image_stems(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="same file name"):
        hf.image_stems(["a", "a"])


# --------------------------------------------------------------------------- per-image figures


def hand_maps() -> dict[str, np.ndarray]:
    direction = np.array([[0.9, 0.8, 0.0], [-0.5, -1.0, 0.1]])
    return {
        "direction": direction,
        "ais": -direction,  # a helpfulness map that disagrees with the direction
        "gradcam": np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.2]]),
        "gradcampp": np.array([[1.0, 0.5, 0.0], [0.0, 0.0, 0.2]]),
    }


def test_image_figures_localisation_by_hand():
    raise_mask = np.array([[True, True, False], [False, False, False]])
    lower_mask = np.array([[False, False, False], [False, True, False]])
    f = map_figures.image_figures(hand_maps(), {"raise": raise_mask, "lower": lower_mask})
    assert f["has_mask"] and f["raise_fraction"] == pytest.approx(2 / 6) and f["lower_fraction"] == pytest.approx(1 / 6)
    # direction [.9 .8 0 / -.5 -1 .1], most positive first: both raise pixels above every other pixel
    assert f["ais_pos_auc"] == 1.0 and f["ais_pos_clipped_auc"] == 1.0
    # negated [-.9 -.8 0 / .5 1 -.1]: the lower pixel (1.0) above all five others
    assert f["ais_neg_auc"] == 1.0 and f["ais_neg_clipped_auc"] == 1.0
    # AIS map = -direction [-.9 -.8 0 / .5 1 -.1]: both raise pixels below the four others
    assert f["ais_map_pos_auc"] == 0.0
    # negated AIS map = direction: the lower pixel (-1) below all five others
    assert f["ais_map_neg_auc"] == 0.0
    assert f["gradcam_auc"] == 1.0 and f["gradcampp_auc"] == 1.0
    assert f["gradcam_lower_auc"] == pytest.approx(0.2)  # the lower pixel (0) ties with two zeros of five


def test_image_figures_lower_pixel_ranked_by_part():
    lower_mask = np.array([[False, False, False], [True, False, False]])  # the -0.5 pixel
    f = map_figures.image_figures(hand_maps(), {"raise": np.zeros((2, 3), bool), "lower": lower_mask})
    assert f["ais_neg_auc"] == pytest.approx(0.8)  # 0.5 beats -.9 -.8 0 -.1, loses to 1.0
    # clipped [0 0 0 / .5 1 0]: 0.5 beats the four zeros, loses to 1.0 -- here the same
    assert f["ais_neg_clipped_auc"] == pytest.approx(0.8)
    assert math.isnan(f["ais_pos_auc"]) and math.isnan(f["gradcam_auc"])  # empty raise mask
    # Where the clipped part differs: a lower pixel at 0 ties with the other zeros when clipped.
    lower_zero = np.array([[False, False, True], [False, False, False]])  # direction 0
    g = map_figures.image_figures(hand_maps(), {"raise": np.zeros((2, 3), bool), "lower": lower_zero})
    assert g["ais_neg_auc"] == pytest.approx(3 / 5)  # -0 beats -.9 -.8 -.1, loses to .5 and 1
    assert g["ais_neg_clipped_auc"] == pytest.approx(1.5 / 5)  # ties with three zeros (1/2 each), loses to .5, 1


def test_image_figures_agreement_and_no_masks():
    maps = hand_maps()
    f = map_figures.image_figures(maps, None)
    expected = agreement.compare(maps["ais"], maps["gradcam"])
    assert f["cc_gradcam"] == pytest.approx(expected["cc"])
    assert f["sim_gradcam"] == pytest.approx(expected["sim"])
    assert f["kld_gradcam"] == pytest.approx(expected["kld"])
    assert -1 <= f["cc_gradcam"] <= 1 and 0 <= f["sim_gradcam"] <= 1
    assert not f["has_mask"]
    assert all(math.isnan(f[k]) for k in LOCALIZATION_AUCS)
    assert set(f) | {"image_id"} <= set(HEATMAP_SCHEMA.names)


def test_region_masks_resized_nearest(tmp_path: Path):
    from ais.demo import ARTEFACTS

    bits = np.zeros((4, 4), np.uint8)
    bits[:2, :2] = 1 << ARTEFACTS["grain"].bit  # raises realism
    bits[3, 3] = 1 << ARTEFACTS["checkerboard"].bit  # lowers realism
    Image.fromarray(bits, "L").save(tmp_path / "m.png")
    masks = hf.load_region_masks(tmp_path / "m.png", (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[:4, :4] = True
    np.testing.assert_array_equal(masks["raise"], expected)
    assert masks["lower"].sum() == 4 and masks["lower"][6:, 6:].all()
    with pytest.raises(ValueError, match="image x: cannot read its mask"):
        hf.load_region_masks(tmp_path / "missing.png", (8, 8), "x")


# --------------------------------------------------------------------------- gallery choice


def ranked_table(n: int, labelled: bool = True) -> pd.DataFrame:
    return pd.DataFrame({
        "image_id": [f"i{k}" for k in range(n)],
        "abs_error": [float(k) if labelled else np.nan for k in range(n)],
        "y_pred": [float(k) for k in range(n)],
    }).sample(frac=1.0, random_state=0)  # order of rows does not matter


def test_gallery_selection_best_median_worst():
    assert map_figures.gallery_selection(ranked_table(10), 2) == [
        ("best", "i0"), ("best", "i1"), ("median", "i4"), ("median", "i5"), ("worst", "i9"), ("worst", "i8"),
    ]
    assert map_figures.gallery_selection(ranked_table(5), 2) == [
        ("best", "i0"), ("best", "i1"), ("median", "i2"), ("worst", "i4"), ("worst", "i3"),
    ]
    assert map_figures.gallery_selection(ranked_table(3), 3) == [("best", "i0"), ("best", "i1"), ("best", "i2")]
    assert map_figures.gallery_selection(ranked_table(10), 0) == []
    assert map_figures.gallery_selection(ranked_table(0), 3) == []


def test_gallery_selection_unlabelled_by_prediction():
    assert map_figures.gallery_selection(ranked_table(7, labelled=False), 1) == [
        ("highest", "i6"), ("median", "i3"), ("lowest", "i0"),
    ]


# --------------------------------------------------------------------------- gathering


def figures_row(image_id: str, shard: int, mask: bool, auc: float = 0.9) -> dict:
    row = {name: np.nan for name in HEATMAP_SCHEMA.names}
    row.update(image_id=image_id, shard=shard, split="test", path=f"/x/{image_id}.png", file_stem=image_id,
               weights="image", y_true=3.0, y_pred=2.5, abs_error=0.5, ais_scale=1.0, direction_scale=2.0,
               gradcam_scale=3.0, cc_gradcam=0.5, sim_gradcam=0.7, kld_gradcam=0.1, has_mask=mask)
    if mask:
        row.update({name: auc for name in LOCALIZATION_AUCS}, raise_fraction=0.1, lower_fraction=0.2)
    return row


def test_summarize_with_masks(tmp_path: Path):
    hf.write_figures(tmp_path / "s1.parquet", pd.DataFrame([figures_row("b", 1, True, 0.8)]))
    hf.write_figures(tmp_path / "s0.parquet", pd.DataFrame([figures_row("a", 0, True, 1.0),
                                                            figures_row("c", 0, True, np.nan)]))
    config = {"heatmaps": {"batch_size": 2}}
    report = summarize_heatmaps.run([tmp_path / "s0.parquet", tmp_path / "s1.parquet"], tmp_path / "agreement.parquet",
                                    tmp_path / "localization.json", config=config)
    table = pq.read_table(tmp_path / "agreement.parquet")
    assert table.schema.remove_metadata().equals(HEATMAP_SCHEMA)
    assert table.column("image_id").to_pylist() == ["a", "b", "c"]
    loaded = json.loads((tmp_path / "localization.json").read_text(), parse_constant=_no_nan)
    for key in ("ais_pos_auc", "ais_neg_auc", "gradcam_auc"):
        assert loaded[key] == pytest.approx(0.9)  # mean of 1.0 and 0.8; NaN (c) skipped
        assert loaded["per_key"][key]["n_images"] == 2 and loaded["per_key"][key]["n_skipped"] == 1
    assert loaded["reason"] is None and loaded["n_images_with_masks"] == 3
    assert loaded["maps"]["ais_pos_auc"] == {"map": "direction", "part": "pos", "mask": "raise"}
    assert loaded["agreement"]["gradcam"]["cc"]["mean"] == pytest.approx(0.5)
    expected = json.loads(json.dumps(nan_to_none(stamp(config)["provenance"])))
    assert loaded["provenance"] == expected and loaded["provenance"]["config"] == config
    assert report["ais_pos_auc"] == pytest.approx(0.9)


def test_summarize_without_masks_gives_null_and_reason(tmp_path: Path):
    hf.write_figures(tmp_path / "s0.parquet", pd.DataFrame([figures_row("a", 0, False)]))
    summarize_heatmaps.run([tmp_path / "s0.parquet"], tmp_path / "a.parquet", tmp_path / "l.json")
    loaded = json.loads((tmp_path / "l.json").read_text(), parse_constant=_no_nan)
    assert loaded["ais_pos_auc"] is None and loaded["ais_neg_auc"] is None and loaded["gradcam_auc"] is None
    assert "no ground-truth region masks" in loaded["reason"]
    assert loaded["n_images"] == 1 and loaded["n_images_with_masks"] == 0


def test_summarize_rejects_an_image_in_two_shards(tmp_path: Path):
    hf.write_figures(tmp_path / "s0.parquet", pd.DataFrame([figures_row("a", 0, False)]))
    hf.write_figures(tmp_path / "s1.parquet", pd.DataFrame([figures_row("a", 1, False)]))
    with pytest.raises(ValueError, match="more than one shard"):
        summarize_heatmaps.run([tmp_path / "s0.parquet", tmp_path / "s1.parquet"], tmp_path / "a.parquet",
                               tmp_path / "l.json")


def _no_nan(text: str):
    raise AssertionError(f"{text} in JSON output")


# --------------------------------------------------------------------------- panels and gallery from map files


def write_shard(tmp_path: Path, ids: list[str]) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    stems = hf.image_stems(ids)
    rows = []
    for k, (image_id, stem) in enumerate(zip(ids, stems)):
        ais = rng.uniform(-1, 1, (8, 8))
        write_maps(hf.output_file(maps_dir, stem, ".npz"), {
            "ais": ais, "helpful": np.maximum(ais, 0), "harmful": np.minimum(ais, 0),
            "direction": rng.uniform(-1, 1, (8, 8)), "gradcam": rng.uniform(0, 1, (8, 8)),
            "gradcampp": rng.uniform(0, 1, (8, 8)),
            "image": rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "image_id": np.array(image_id),
        })
        row = figures_row(image_id, 0, False)
        row.update(file_stem=stem, abs_error=float(k))
        rows.append(row)
    figures = tmp_path / "figures.parquet"
    hf.write_figures(figures, pd.DataFrame(rows))
    return figures, maps_dir


def test_render_shard_one_panel_per_image(tmp_path: Path):
    ids = ["a", "../escape", "b c"]
    figures, maps_dir = write_shard(tmp_path, ids)
    panels = tmp_path / "panels"
    assert render_heatmaps.run(figures, maps_dir, panels, views=["ais", "raises"]) == 3
    names = sorted(p.name for p in panels.iterdir())
    assert names == sorted(f"{file_stem(i)}.png" for i in ids)
    with Image.open(panels / "a.png") as im:
        # image, AIS, raises: tiles enlarged to 160 px, titles; the caption above, the colour bars below
        assert im.mode == "RGB" and im.width == 3 * 160 + 2 * 2 and im.height > 14 + 160 + 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures.parquet", "maps", "panels"]  # no temporaries


def test_render_shard_checks_the_map_file_belongs_to_the_image(tmp_path: Path):
    figures, maps_dir = write_shard(tmp_path, ["a", "b"])
    table = pd.read_parquet(figures)
    table["image_id"] = ["b", "a"]  # ids swapped against the files a.npz, b.npz
    hf.write_figures(figures, table)
    with pytest.raises(ValueError, match="holds image a, expected b"):
        render_heatmaps.run(figures, maps_dir, tmp_path / "panels")
    assert not (tmp_path / "panels").exists()


def test_plot_gallery(tmp_path: Path):
    figures, maps_dir = write_shard(tmp_path, ["a", "b", "c", "d"])
    chosen = plot_gallery.run(figures, {0: maps_dir}, tmp_path / "gallery.png", tmp_path / "gallery.json",
                              n_per_group=1)
    assert chosen == [("best", "a"), ("median", "b"), ("worst", "d")]
    selection = json.loads((tmp_path / "gallery.json").read_text())
    assert selection["n_per_group"] == 1 and "provenance" in selection
    assert selection["groups"] == {"best": ["a"], "median": ["b"], "worst": ["d"]}
    with Image.open(tmp_path / "gallery.png") as im:
        assert im.width > 500 and im.height > 300
    empty = tmp_path / "empty.parquet"
    hf.write_figures(empty, pd.DataFrame(columns=HEATMAP_SCHEMA.names))
    assert plot_gallery.run(empty, {}, tmp_path / "none.png", tmp_path / "none.json") == []
    assert json.loads((tmp_path / "none.json").read_text())["groups"] == {"best": [], "median": [], "worst": []}
    assert (tmp_path / "none.png").stat().st_size > 0


# --------------------------------------------------------------------------- io helpers


def test_atomic_dir_replaces_whole_folders_or_nothing(tmp_path: Path):
    out = tmp_path / "maps"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("killed")
    assert sorted(p.name for p in out.iterdir()) == ["a"]  # untouched
    with atomic_dir(out) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == ["c"]  # replaced, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps"]  # no temporaries left


def test_model_view_is_what_the_model_sees(tmp_path: Path):
    from ais.images import load_tensor
    from conftest import write_image

    path = write_image(tmp_path / "a.png", size=(40, 24))
    view, x = model_view(str(path), 16)
    assert view.shape == (16, 16, 3) and view.dtype == np.uint8
    assert np.array_equal(x.numpy(), load_tensor(path, 16).numpy())
    np.testing.assert_allclose(view / 255.0, load_tensor(path, 16, "none").numpy().transpose(1, 2, 0), atol=1e-6)


def test_nan_to_none():
    assert nan_to_none({"a": [1.0, float("nan")], "b": {"c": np.float64("inf"), "d": "x"}, "e": np.int64(3)}) == {
        "a": [1.0, None], "b": {"c": None, "d": "x"}, "e": 3,
    }


def test_a_signed_reference_is_compared_by_magnitude():
    """|AIS| against |occlusion|: a signed reference map (occlusion) is compared by its magnitude."""
    from ais.map_figures import image_figures
    from ais.tables import AGREEMENT_REFERENCES

    assert "occlusion" in AGREEMENT_REFERENCES
    rng = np.random.default_rng(5)
    maps = {k: rng.uniform(-1, 1, size=(6, 6)) for k in ("ais", "direction", "occlusion")}
    maps.update({k: rng.uniform(0, 1, size=(6, 6)) for k in ("gradcam", "gradcampp", "saliency")})
    got = image_figures(maps)
    expected = agreement.compare(maps["ais"], np.abs(maps["occlusion"]))
    for metric in ("cc", "sim", "kld"):
        assert got[f"{metric}_occlusion"] == pytest.approx(expected[metric], rel=1e-12)
        assert got[f"{metric}_gradcam"] == agreement.compare(maps["ais"], maps["gradcam"])[metric]
    del maps["occlusion"]  # not computed (optional): NaN, not an error
    assert all(math.isnan(image_figures(maps)[f"{m}_occlusion"]) for m in ("cc", "sim", "kld"))
