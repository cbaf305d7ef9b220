"""Colour tables, overlays, views, panels, PNG output and the gallery figure."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ais import render
from ais.render.panel import _title_band
from ais.views import get_view, list_views


def test_signed_lut_white_red_blue():
    table = render.lut("bwr")
    assert table.shape == (render.SIGNED_LUT_SIZE, 3) and table.dtype == np.uint8
    colours = render.colorize(np.array([-1.0, 0.0, 1.0]))
    assert colours.tolist() == [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    assert render.colorize(np.array([-7.0, 7.0])).tolist() == [[0, 0, 255], [255, 0, 0]]  # clipped
    assert render.colorize(np.array([np.nan])).tolist() == [[255, 255, 255]]  # NaN as 0


def test_signed_index_is_two_slope_norm():
    from matplotlib.colors import TwoSlopeNorm

    v = np.linspace(-1, 1, 101)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0)
    expected = np.rint(np.asarray(norm(v)) * (render.SIGNED_LUT_SIZE - 1)).astype(int)
    np.testing.assert_array_equal(render.signed_index(v), expected)


def test_sequential_lut():
    table = render.lut("jet")
    assert table.shape == (256, 3)
    assert render.colorize(np.array([0.0, 1.0]), "jet").tolist() == [table[0].tolist(), table[255].tolist()]


def image(h: int = 8, w: int = 8, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_overlay_shape_dtype_and_blend():
    heat = np.zeros((2, 2), dtype=np.float32)
    heat[0, 0] = 1.0
    out = render.overlay(image(16, 12), heat)
    assert out.shape == (16, 12, 3) and out.dtype == np.uint8
    # heat 0 -> white: 0.6 * 100 + 0.4 * 255 = 162; heat 1 -> red: (60 + 102, 60, 60)
    assert out[-1, -1].tolist() == [162, 162, 162]
    assert out[0, 0].tolist() == [162, 60, 60]
    full = render.overlay(image(), np.full((8, 8), -1.0), alpha=1.0)
    assert (full == [0, 0, 255]).all()
    with pytest.raises(ValueError, match="uint8"):
        render.overlay(np.zeros((8, 8, 3)), heat)


def test_positive_negative_and_cam_overlays():
    heat = np.array([[-1.0, 1.0]])
    pos = render.overlay_positive(image(1, 2), heat, alpha=1.0)
    neg = render.overlay_negative(image(1, 2), heat, alpha=1.0)
    assert pos.tolist() == [[[255, 255, 255], [255, 0, 0]]]
    assert neg.tolist() == [[[0, 0, 255], [255, 255, 255]]]
    cam = render.overlay_cam(image(1, 2), np.array([[0.0, 1.0]]), alpha=1.0)
    assert cam.tolist() == [render.lut("jet")[[0, 255]].tolist()]


def test_dual_view_saturation_follows_helpfulness():
    direction = np.array([[1.0, 1.0, -1.0]])
    helpful = np.array([[1.0, -1.0, 1.0]])
    out = render.dual(image(1, 3), direction, helpful, alpha=1.0)
    assert out[0, 0].tolist() == [255, 0, 0]  # raises realism, helpful: vivid red
    r, g, b = out[0, 1].tolist()
    assert r == g == b == round(0.299 * 255)  # raises realism but harmful: grey
    assert out[0, 2].tolist() == [0, 0, 255]  # lowers realism, helpful: vivid blue


def test_outline_and_primary():
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    edge = render.outline(mask)
    assert edge[2, 2] and edge[1, 3] and edge[5, 5] and edge[6, 4]  # inner and outer ring
    assert not edge[3, 3] and not edge[0, 0]
    harmful = np.where(mask, -1.0, 0.0)
    out = render.primary(image(), np.zeros((8, 8)), harmful, alpha=0.4)
    assert out[edge].tolist() == [list(render.OUTLINE_GREY)] * int(edge.sum())
    assert out[0, 0].tolist() == [162, 162, 162]


def test_primary_view_is_signed_with_the_harmful_outline():
    """The seed's primary map: red raises, blue lowers (helpful channels only), harmful regions outlined."""
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    primary = np.zeros((8, 8), np.float32)
    primary[0, 0], primary[7, 7] = 1.0, -1.0
    maps = {"ais": np.zeros((8, 8), np.float32), "harmful": np.where(mask, -1.0, 0.0).astype(np.float32),
            "primary": primary}
    tiles = render.views(image(), maps, alpha=1.0, keys=["primary", "helpful"])
    out = tiles["primary"]
    assert out[0, 0].tolist() == [255, 0, 0] and out[7, 7].tolist() == [0, 0, 255]  # both signs drawn
    edge = render.outline(mask)
    assert out[edge].tolist() == [list(render.OUTLINE_GREY)] * int(edge.sum())
    assert out[0, 1].tolist() == [255, 255, 255]
    assert get_view("primary").scale == "signed" and get_view("helpful").scale == "positive"
    # the former primary view lives on as "helpful": positive part of the AIS helpful map only
    helpful = render.views(image(), {**maps, "helpful": np.full((8, 8), 0.0)}, alpha=1.0, keys=["helpful"])
    assert helpful["helpful"][edge].tolist() == [list(render.OUTLINE_GREY)] * int(edge.sum())
    assert "primary" not in render.views(image(), {"ais": maps["ais"]})  # needs the primary map


def test_gradient_and_occlusion_views():
    maps = {"saliency": np.array([[0.0, 1.0]]), "input_x_gradient": np.array([[-1.0, 1.0]]),
            "occlusion": np.array([[1.0, -1.0]])}
    tiles = render.views(image(1, 2), maps, alpha=1.0)
    assert list(tiles) == ["image", "saliency", "input_x_gradient", "occlusion"]
    assert tiles["saliency"].tolist() == [render.lut("jet")[[0, 255]].tolist()]
    assert tiles["input_x_gradient"].tolist() == [[[0, 0, 255], [255, 0, 0]]]
    assert tiles["occlusion"].tolist() == [[[255, 0, 0], [0, 0, 255]]]
    assert [get_view(k).scale for k in ("saliency", "input_x_gradient", "occlusion")] == ["unit", "signed", "signed"]


def random_maps(rng: np.random.Generator, h: int = 14, w: int = 14) -> dict[str, np.ndarray]:
    ais = rng.uniform(-1, 1, (h, w)).astype(np.float32)
    return {
        "ais": ais,
        "helpful": np.maximum(ais, 0),
        "harmful": np.minimum(ais, 0),
        "direction": rng.uniform(-1, 1, (h, w)).astype(np.float32),
        "gradcam": rng.uniform(0, 1, (h, w)).astype(np.float32),
        "gradcampp": rng.uniform(0, 1, (h, w)).astype(np.float32),
        "primary": rng.uniform(-1, 1, (h, w)).astype(np.float32),
        "saliency": rng.uniform(0, 1, (h, w)).astype(np.float32),
        "input_x_gradient": rng.uniform(-1, 1, (h, w)).astype(np.float32),
        "occlusion": rng.uniform(-1, 1, (h, w)).astype(np.float32),
    }


def test_panel_layout_and_determinism(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    maps = random_maps(rng)
    a = render.panel(img, maps)
    b = render.panel(img.copy(), {k: v.copy() for k, v in maps.items()})
    n = 13  # image, AIS, direction, raises, lowers, dual, primary, helpful, Grad-CAM, Grad-CAM++, saliency, IxG, occlusion
    assert a.shape == (render.TITLE_HEIGHT + 32, n * 40 + (n - 1) * render.GAP, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert np.array_equal(a[render.TITLE_HEIGHT:, :40], img)
    assert (a[: render.TITLE_HEIGHT] < 128).any()  # titles drawn
    only = render.panel(img, {"gradcam": maps["gradcam"]}, titles=False)
    assert only.shape == (32, 2 * 40 + render.GAP, 3)

    render.save_png(tmp_path / "p1.png", a)
    render.save_png(tmp_path / "p2.png", b)
    assert (tmp_path / "p1.png").read_bytes() == (tmp_path / "p2.png").read_bytes()
    with Image.open(tmp_path / "p1.png") as im:
        assert im.mode == "RGB"
        assert np.array_equal(np.asarray(im), a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p1.png", "p2.png"]


def test_raises_and_lowers_views_are_the_parts_of_the_direction_map():
    direction = np.array([[1.0, -1.0, 0.5]])
    tiles = render.views(image(1, 3), {"direction": direction}, alpha=1.0)
    assert list(tiles) == ["image", "direction", "raises", "lowers"]
    assert tiles["raises"].tolist() == [[[255, 0, 0], [255, 255, 255], render.colorize(np.array([0.5]))[0].tolist()]]
    assert tiles["lowers"].tolist() == [[[255, 255, 255], [0, 0, 255], [255, 255, 255]]]


def test_views_and_panel_keys_choose_the_views():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    maps = random_maps(rng, 8, 8)
    assert list(render.views(img, maps, keys=["gradcam", "ais"])) == ["image", "ais", "gradcam"]
    full = render.panel(img, maps)
    some = render.panel(img, maps, keys=["lowers", "ais"])
    assert some.shape == (render.TITLE_HEIGHT + 8, 3 * 8 + 2 * render.GAP, 3)
    np.testing.assert_array_equal(some[render.TITLE_HEIGHT:, 10:18], full[render.TITLE_HEIGHT:, 10:18])  # AIS
    with pytest.raises(ValueError, match="unknown view"):
        render.views(img, maps, keys=["AIS"])


def test_narrow_tiles_get_short_titles():
    narrow = _title_band(24, ("raises", "gradcampp"))
    wide = _title_band(200, ("raises", "gradcampp"))
    assert narrow.shape == (render.TITLE_HEIGHT, 2 * 24 + render.GAP, 3)
    assert (narrow < 128).any() and (wide < 128).any()
    for key in ["image", *list_views()]:  # every tile has both a title and a short title
        assert render.title(key) and render.title(key, short=True), key
    assert all(get_view(k).title and get_view(k).short_title for k in list_views())


def test_encode_png_round_trip():
    rng = np.random.default_rng(1)
    for shape in [(1, 1, 3), (3, 5, 3), (17, 9, 3)]:
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        with Image.open(io.BytesIO(render.encode_png(arr))) as im:
            np.testing.assert_array_equal(np.asarray(im), arr)


def test_gallery_figure(tmp_path):
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(2)]
    maps = [random_maps(rng, 6, 6) for _ in images]
    path = tmp_path / "gallery.png"
    render.gallery_figure(path, images, maps, row_titles=["best", "worst"])
    with Image.open(path) as im:
        assert im.width > 200 and im.height > 100
    assert render.dual_key(9).shape == (9, 9, 3)
