"""The heatmap browser: its data against the tables it reads, and the page driven in headless Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ais.reporting import browser as B
from ais.stages import build_browser

# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def chromium() -> str:
    """The Chromium executable (``make test`` installs it, as for the report's browser test)."""
    from browser import find_chromium

    if os.environ.get("AIS_SKIP_BROWSER"):
        pytest.skip("AIS_SKIP_BROWSER is set")
    executable = find_chromium()
    assert executable, ("chromium not found: `make test` installs it as root (tests/tools/ensure_chromium.sh); "
                        "or set AIS_CHROMIUM, or AIS_SKIP_BROWSER=1 to skip")
    return executable


def _figures(n: int, seed: int = 0) -> pd.DataFrame:
    """A per-image figures table like agreement.parquet: two shards, mixed splits, some missing values."""
    rng = np.random.default_rng(seed)
    y_true = rng.uniform(1, 5, n)
    y_true[::7] = np.nan
    y_pred = y_true + rng.normal(0, 0.5, n)
    y_pred[::7] = rng.uniform(1, 5, len(y_pred[::7]))
    return pd.DataFrame({
        "image_id": [f"photos__set-{i % 3}__img-{i:04d}" for i in range(n)],
        "shard": (np.arange(n) % 2).astype(np.int32),
        "split": np.array(["train", "val", "test"])[rng.integers(0, 3, n)],
        "path": [f"photos/img-{i:04d}.png" for i in range(n)],
        "file_stem": [f"photos__set-{i % 3}__img-{i:04d}" for i in range(n)],
        "weights": "image", "y_true": y_true, "y_pred": y_pred, "abs_error": np.abs(y_pred - y_true),
        "cc_gradcam": rng.uniform(-1, 1, n), "has_mask": False,
    })


def _cell_texts(browser, column: str) -> list[str]:
    """The texts of one column's cells on the shown page, in row order."""
    index = browser.evaluate(
        f"Array.from(document.querySelectorAll('#grid thead tr.labels th')).findIndex(th => th.dataset.key === '{column}')")
    assert index >= 0, f"column {column} is not shown"
    return browser.evaluate(
        f"Array.from(document.querySelectorAll('#grid tbody tr')).map(tr => tr.cells[{index}].textContent)")


def _shown_ids(browser) -> list[str]:
    return _cell_texts(browser, "image_id")


def _count_text(browser) -> str:
    return browser.evaluate("document.getElementById('count').textContent")


def _fmt(x: float) -> str:
    """The page's number format (4 significant digits) for values between 1e-3 and 1e5."""
    return repr(float(f"{x:.4g}")).removesuffix(".0")


# --------------------------------------------------------------------------- the data


def test_merge_keeps_figures_rows_and_adds_optional_columns():
    figures = _figures(10)
    predictions = pd.DataFrame({"image_id": figures["image_id"][::-1], "split": "train", "y_true": 0.0,
                                "y_pred": 0.0, "mc_std": np.arange(10.0)[::-1], "mc_entropy": np.nan})
    faith = pd.DataFrame({"image_id": np.repeat(figures["image_id"].to_numpy()[:4], 2),
                          "method": ["ais", "gradcam"] * 4, "deletion_auc": np.arange(8.0), "steps": 8, "note": "x"})
    table = B.merge_tables(figures, predictions, faith)
    assert table["image_id"].tolist() == figures["image_id"].tolist()  # the figures' rows, in order
    assert table["y_pred"].tolist() == figures["y_pred"].tolist()  # figures win over predictions
    assert table["mc_std"].tolist() == list(np.arange(10.0))  # joined by id, not by position
    assert table["faith_deletion_auc_gradcam"].iloc[:4].tolist() == [1.0, 3.0, 5.0, 7.0]
    assert table["faith_deletion_auc_ais"].iloc[4:].isna().all()
    assert "faith_steps_ais" not in table
    wide = B.faithfulness_columns(pd.DataFrame({"image_id": ["a", "b"], "insertion": [0.1, 0.2]}))
    assert list(wide.columns) == ["image_id", "faith_insertion"]
    long = pd.DataFrame({"image_id": ["a", "a", "a", "b"], "map": ["ais", "ais", "random", "ais"],
                         "method": "x", "sign": ["pos", "neg", "pos", "pos"], "deletion_gain": [1.0, 2.0, 3.0, 4.0],
                         "y_clean": 9.0})
    wide = B.faithfulness_columns(long).set_index("image_id")
    assert sorted(wide.columns) == ["faith_deletion_gain_ais_neg", "faith_deletion_gain_ais_pos",
                                    "faith_deletion_gain_random_pos"]
    assert wide.loc["a", "faith_deletion_gain_ais_neg"] == 2.0 and wide.loc["b", "faith_deletion_gain_ais_pos"] == 4.0
    assert np.isnan(wide.loc["b", "faith_deletion_gain_random_pos"])
    with pytest.raises(ValueError, match="twice"):
        B.merge_tables(pd.concat([figures, figures.iloc[:1]]))
    with pytest.raises(ValueError, match="image_id"):
        B.faithfulness_columns(pd.DataFrame({"x": [1]}))


def test_data_columns_regression():
    table = B.merge_tables(_figures(15), pd.DataFrame({"image_id": _figures(15)["image_id"], "mc_std": 0.5}))
    data = B.browser_data(table, {0: "../p0/", 1: "../p1/"}, {0: "t0/", 1: "t1/"}, {}, B.view_legend(["ais"]))
    cols = {c["key"]: c for c in data["columns"]}
    assert data["n"] == 15 and list(cols)[:2] == ["image_id", "split"]
    assert not set(B.HIDDEN) & set(cols)  # file locations are not columns
    assert cols["split"]["kind"] == "category" and cols["split"]["levels"] == ["test", "train", "val"]
    split = [cols["split"]["levels"][k] for k in cols["split"]["codes"]]
    assert split == table["split"].tolist()
    assert cols["y_true"]["values"][0] is None and cols["y_true"]["values"][1] == pytest.approx(table["y_true"][1], rel=1e-5)
    assert cols["mc_std"]["group"] == "uncertainty" and cols["cc_gradcam"]["label"] == "CC Grad-CAM"
    assert data["shard"] == table["shard"].tolist() and data["stem"] == [None] * 15  # stems equal to the ids
    assert data["views"][0]["gradient"].startswith("linear-gradient(to right, rgb(0,0,255)")  # bwr from blue
    text = B.encode_data(data)
    assert text.startswith("window.AIS_BROWSER={") and "NaN" not in text
    assert json.loads(text[len("window.AIS_BROWSER="):-2]) == data


def test_data_columns_classifier():
    figures = _figures(6).assign(y_true=[0.0, 1.0, 2.0, np.nan, 1.0, 0.0], y_pred=0.3)
    predictions = pd.DataFrame({"image_id": figures["image_id"], "pred_class": np.int32([0, 2, 2, 1, 1, 0]),
                                "prob_0": 0.2, "prob_1": 0.5, "prob_2": 0.3})
    data = B.browser_data(B.merge_tables(figures, predictions), {}, {}, {}, [], classes=["cat", "dog", "fake"],
                          meta={"explained_class": "fake"})
    cols = {c["key"]: c for c in data["columns"]}
    names = lambda c: [c["levels"][k] if k >= 0 else None for k in c["codes"]]  # noqa: E731
    assert names(cols["y_true"]) == ["cat", "dog", "fake", None, "dog", "cat"]
    assert names(cols["pred_class"]) == ["cat", "fake", "fake", "dog", "dog", "cat"]
    assert cols["y_true"]["label"] == "true class" and cols["y_pred"]["label"] == "P(fake)"
    assert [cols[f"prob_{k}"]["label"] for k in range(3)] == ["P(cat)", "P(dog)", "P(fake)"]
    with pytest.raises(ValueError, match="outside the 2 classes"):
        B.browser_data(B.merge_tables(figures, predictions), {}, {}, {}, [], classes=["cat", "dog"])


def test_numbers_keep_six_significant_digits():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 1, 200) * 10.0 ** rng.integers(-8, 8, 200), [0.0, np.nan, np.inf]])
    out = B._numbers(values)
    assert out[-3:] == [0.0, None, None]
    for got, v in zip(out[:-3], values[:-3]):
        assert got == pytest.approx(float(f"{v:.6g}"), rel=1e-12)  # Python's own %g as the oracle


def test_top_channels_against_a_loop():
    rng = np.random.default_rng(1)
    scores = pd.DataFrame({"image_id": np.repeat(["b", "a", "c"], 20), "channel": np.tile(np.arange(20), 3),
                           "ais_score": rng.normal(0, 1, 60).round(1), "delta_prediction": rng.normal(0, 1, 60)})
    scores.loc[scores["image_id"] == "c", "ais_score"] = np.abs(scores["ais_score"])  # no harmful channel in c
    top = B.top_channels(scores, k=3)
    for image_id, group in scores.groupby("image_id"):
        rows = list(zip(group["channel"], group["ais_score"], group["delta_prediction"]))
        helpful = sorted([r for r in rows if r[1] > 0], key=lambda r: (-r[1], r[0]))[:3]
        harmful = sorted([r for r in rows if r[1] < 0], key=lambda r: (r[1], r[0]))[:3]
        assert [r[0] for r in top[image_id]] == [r[0] for r in helpful + harmful]
        assert [r[1] for r in top[image_id]] == pytest.approx([r[1] for r in helpful + harmful])
    assert all(r[1] > 0 for r in top["c"])


def test_stage_needs_only_the_figures_table(tmp_path):
    """No predictions, scores, faithfulness or spec: the browser still has a row per image (thumbnails too)."""
    figures = _figures(4)
    figures.to_parquet(tmp_path / "agreement.parquet")
    maps = [tmp_path / "heatmaps" / f"shard-{s}" / "maps" for s in (0, 1)]
    for folder in maps:
        folder.mkdir(parents=True)
    for stem, shard in zip(figures["file_stem"], figures["shard"]):
        np.savez_compressed(maps[shard] / f"{stem}.npz", image=np.full((20, 10, 3), 200, np.uint8), ais=np.zeros((2, 2)))
    report = tmp_path / "report"
    n = build_browser.run(tmp_path / "agreement.parquet", report / "browser.html", report / "browser-data.js",
                          report / "browser" / "thumbs", maps_dirs=[str(m) for m in maps],
                          predictions=str(tmp_path / "missing.parquet"))
    assert n == 4
    text = (report / "browser-data.js").read_text()
    data = json.loads(text[len("window.AIS_BROWSER="):-2])
    assert data["n"] == 4 and data["thumb_dirs"] == {"0": "browser/thumbs/shard-0/", "1": "browser/thumbs/shard-1/"}
    thumbs = sorted((report / "browser" / "thumbs").rglob("*.jpg"))
    assert len(thumbs) == 4 and Image.open(thumbs[0]).size == (32, 64)  # the longer side 64 px, aspect kept
    page = (report / "browser.html").read_text()
    assert '<script src="browser-data.js"></script>' in page and "{{" not in page
    assert "AIS_BROWSER" in page  # the code is inlined, the rows are not
    assert "photos__set-0__img-0000" not in page


# --------------------------------------------------------------------------- in Chromium


def _write_page(folder: Path, table: pd.DataFrame, classes=None) -> Path:
    data = B.browser_data(B.merge_tables(table), {0: "p0/", 1: "p1/"}, {0: "t0/", 1: "t1/"}, {},
                          B.view_legend(), classes)
    (folder / "browser-data.js").write_text(B.encode_data(data))
    page = folder / "browser.html"
    page.write_text(B.browser_page("test browser"))
    return page


def test_filters_ranges_and_pages_in_chromium(chromium, tmp_path):
    """A 300-image table: split filter, value ranges, pages and the column picker, checked against pandas."""
    from browser import Browser

    table = _figures(300)
    page = _write_page(tmp_path, table)
    with Browser(chromium, width=1300, height=900) as b:
        b.open(page)
        assert len(_shown_ids(b)) == 50 and b.evaluate("document.getElementById('page-info').textContent") == \
            "page 1 of 6"
        b.select("#filter-split", b.evaluate(
            "Array.from(document.querySelectorAll('#filter-split option')).find(o => o.text === 'val').value"))
        val = table[table["split"] == "val"]
        assert _count_text(b).startswith(f"{len(val)} of 300 explained images")
        assert set(_cell_texts(b, "split")) == {"val"}
        b.type_text("#min-abs_error", "0.2")
        b.type_text("#max-abs_error", "0.6")
        ranged = val[(val["abs_error"] >= 0.2) & (val["abs_error"] <= 0.6)]
        assert _count_text(b).startswith(f"{len(ranged)} of 300")
        assert 0 < len(ranged) <= 50 and set(_shown_ids(b)) == set(ranged["image_id"])
        b.click("#reset")
        assert _count_text(b).startswith("300 explained images")
        b.click("#next-page")
        assert _shown_ids(b) == table["image_id"].tolist()[50:100]
        b.click("th[data-key='y_true']")  # numbers sort largest first, missing values last
        shown = _cell_texts(b, "y_true")
        expected = table.sort_values("y_true", ascending=False, kind="mergesort")["y_true"]
        assert shown == [_fmt(v) for v in expected.iloc[:50]]
        b.click("th[data-key='y_true']")
        b.click("#next-page")
        assert b.evaluate("document.getElementById('page-info').textContent") == "page 2 of 6"
        assert _cell_texts(b, "y_true")[-1] == _fmt(table["y_true"].sort_values().iloc[99])
        b.click("#picker summary")
        b.click("#show-cc_gradcam")
        assert b.evaluate("document.querySelector(\"th[data-key='cc_gradcam']\")") is None
        b.screenshot(tmp_path / "synthetic.png")


def test_browser_of_the_tiny_run_in_chromium(chromium, tiny_workflow: Path, tmp_path: Path):
    """Sort by error, filter by split, search an id, open a panel, next image: what the page shows after each."""
    from browser import Browser

    results = tiny_workflow / "results"
    page = results / "report" / "browser.html"
    explained = pd.read_parquet(results / "heatmaps" / "agreement.parquet")
    by_error = explained.sort_values("abs_error", ascending=False, kind="mergesort")
    shot = tmp_path / "browser-screenshot.png"
    with Browser(chromium, width=1400, height=1000) as b:
        b.open(page)
        assert b.evaluate("document.querySelectorAll('#grid tbody tr').length") == len(explained)
        assert _count_text(b).startswith(f"{len(explained)} explained images")
        thumbs = b.evaluate("Promise.all(Array.from(document.querySelectorAll('#grid td.thumb img')).map(i => "
                            "i.decode().then(() => i.naturalWidth, () => 0)))")
        assert len(thumbs) == len(explained) and min(thumbs) > 0, thumbs

        b.click("th[data-key='abs_error']")  # sort by error: largest first
        assert _shown_ids(b) == by_error["image_id"].tolist()
        assert _cell_texts(b, "abs_error")[0] == _fmt(by_error["abs_error"].iloc[0])

        splits = b.evaluate("Array.from(document.querySelectorAll('#filter-split option')).map(o => o.text)")
        assert splits == ["all", *sorted(explained["split"].unique())]
        split = sorted(explained["split"].unique())[0]
        b.select("#filter-split", "0")
        assert set(_cell_texts(b, "split")) == {split}
        assert len(_shown_ids(b)) == int((explained["split"] == split).sum())

        target = by_error["image_id"].iloc[-1]
        b.type_text("#search", target)
        assert _shown_ids(b) == [target]
        b.click("#search")
        b.type_text("#search", "")
        assert _shown_ids(b) == by_error["image_id"].tolist()  # the sort is kept

        b.click("#grid tbody tr:first-child td:nth-child(2)")  # open the worst image's panel
        assert b.evaluate("document.getElementById('detail').hidden") is False
        assert b.evaluate("document.getElementById('detail-id').textContent") == by_error["image_id"].iloc[0]
        row = by_error.iloc[0]
        panel = results / "heatmaps" / f"shard-{int(row['shard'])}" / "panels" / f"{row['file_stem']}.png"
        width = b.evaluate("document.getElementById('detail-panel').decode().then(() => "
                           "document.getElementById('detail-panel').naturalWidth)")
        assert width == Image.open(panel).width
        values = b.evaluate("Object.fromEntries(Array.from(document.querySelectorAll('#detail-values tr'))"
                            ".map(tr => [tr.dataset.key, tr.cells[1].textContent]))")
        assert values["abs_error"] == _fmt(row["abs_error"]) and values["split"] == row["split"]
        assert b.evaluate("document.querySelectorAll('#detail-top tr').length") > 1  # its top channels
        assert b.evaluate("document.querySelectorAll('#detail-views .bar').length") >= 3  # colour scales

        b.press("ArrowRight")  # the next image in the table's order
        assert b.evaluate("document.getElementById('detail-id').textContent") == by_error["image_id"].iloc[1]
        assert b.evaluate("document.getElementById('detail-pos').textContent") == f"image 2 of {len(explained)}"
        b.press("ArrowLeft")
        assert b.evaluate("document.getElementById('detail-id').textContent") == by_error["image_id"].iloc[0]
        b.press("ArrowRight")
        b.screenshot(shot)
        b.press("Escape")
        assert b.evaluate("document.getElementById('detail').hidden") is True
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


# --------------------------------------------------------------------------- panels that stand on their own


def test_short_ids_drop_the_shared_prefix_at_separators():
    from ais.render import short_ids

    assert short_ids(["photos__cats__a", "photos__dogs__b"]) == ["cats__a", "dogs__b"]
    assert short_ids(["photos__cats__a", "photos__cats__b"]) == ["a", "b"]
    assert short_ids(["img-001", "img-002"]) == ["img-001", "img-002"]  # "img-00" is shared, but not a folder
    assert short_ids(["a__x", "a__x__y"]) == ["x", "x__y"]  # every id keeps its last name
    assert short_ids(["data/set__one"]) == ["one"] and short_ids([]) == []


def test_title_lines_break_only_after_separators():
    from ais.render.panel import _font, title_lines

    title = "a_rather_long_folder__another_folder_name__sub__image-000123"
    for width in (60, 150, 300, 2000):
        lines = title_lines(title, width)
        assert "".join(lines) == title  # nothing dropped
        assert all(line.endswith("__") for line in lines[:-1])  # broken after a separator only
        assert all(_font(16).getlength(line) <= width or "__" not in line[:-2] for line in lines)
    assert len(title_lines(title, 2000)) == 1 and len(title_lines(title, 60)) == 4


def test_captions_say_what_the_panel_shows():
    from ais.render import caption

    reg = caption("cat-1", "test", 3.25, 2.5, size=(640, 480), input_size=224)
    assert reg.facts == ("split test", "true 3.25", "predicted 2.5", "|error| 0.75")
    assert "640 x 480" in reg.note and "224 x 224" in reg.note and "stretched" in reg.note
    assert caption("x", "test", 3.0, 2.0, size=(300, 300), input_size=224).note is None  # square: not stretched
    unlabelled = caption("x", "unlabelled", float("nan"), 2.0)
    assert unlabelled.facts == ("split unlabelled", "true: unlabelled", "predicted 2")
    cls = caption("x", "val", 0.0, 0.875, classes=["real", "fake"], explained="fake", pred_class=1)
    assert cls.facts == ("split val", "true real", "predicted fake", "P(fake) 0.875")


def test_standalone_panel_layout():
    from ais import render
    from ais.render.panel import MARGIN, _bars_band, _caption_band

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    maps = {"ais": rng.uniform(-1, 1, (4, 4)).astype(np.float32),
            "gradcam": rng.uniform(0, 1, (4, 4)).astype(np.float32)}
    text = render.caption("cats__img-1", "test", 3.0, 2.0)
    out = render.standalone_panel(img, maps, text, keys=["ais", "gradcam"])
    big = render.upsample(img, 160)
    assert big.shape == (160, 160, 3) and np.array_equal(big[::5, ::5], img)  # whole factor 5, nearest
    assert render.upsample(np.zeros((200, 300, 3), np.uint8), 160).shape == (200, 300, 3)  # large enough
    head = _caption_band(text, out.shape[1])
    strip = render.panel(big, maps, keys=["ais", "gradcam"])
    bars = _bars_band(("image", "ais", "gradcam"), 160, "jet")
    assert out.shape == (head.shape[0] + strip.shape[0] + bars.shape[0], 3 * 160 + 2 * render.GAP, 3)
    assert np.array_equal(out[head.shape[0]:head.shape[0] + strip.shape[0]], strip)  # the tiles, enlarged
    assert (head < 100).any()  # the caption is drawn
    bar_rows = out[-bars.shape[0]:]
    assert (bar_rows[:, :160] == 255).all()  # no bar under the image
    ais_bar = bar_rows[MARGIN + 2, 160 + render.GAP + MARGIN:][:148]
    assert tuple(ais_bar[0]) == (0, 0, 255) and tuple(ais_bar[-1]) == (255, 0, 0)  # bwr: -1 blue .. +1 red
    gc_bar = bar_rows[MARGIN + 2, 2 * (160 + render.GAP) + MARGIN:][:148]
    assert tuple(gc_bar[0]) == tuple(render.lut("jet")[0])
    long = render.standalone_panel(img, maps, render.caption("x__" * 30 + "end", "test", 3.0, 2.0,
                                                             size=(64, 32), input_size=32), keys=["ais"])
    assert long.shape[0] > out.shape[0]  # the long id wraps (and the note adds a line): taller, never cut


# --------------------------------------------------------------------------- the report page stays small


def _png(width: int, height: int, seed: int = 0, flat: bool = False) -> bytes:
    import io

    rng = np.random.default_rng(seed)
    arr = np.full((height, width, 3), 240, np.uint8) if flat else rng.integers(0, 256, (height, width, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_previews_are_compressed_at_a_set_width_and_link_the_full_file():
    import base64
    import io

    from ais.reporting.figures import PREVIEW_WIDTH, preview
    from ais.reporting.markup import img
    from ais.reporting.page import browser_link, panel_previews

    big = _png(2400, 300)  # a wide panel of noise: megabytes as PNG
    small = _png(400, 200, flat=True)  # a line plot: small, kept as PNG
    p = preview(big, "../heatmaps/gallery.png")
    assert p.mime == "image/jpeg" and len(p) < len(big) / 4 and p.href == "../heatmaps/gallery.png"
    with Image.open(io.BytesIO(p)) as im:
        assert im.format == "JPEG" and im.size == (PREVIEW_WIDTH, round(300 * PREVIEW_WIDTH / 2400))
    q = preview(small)
    assert q.mime == "image/png" and bytes(q) == small and q.href is None
    page = img(p, "gallery", "the gallery")
    assert page.startswith('<figure><a href="../heatmaps/gallery.png"><img src="data:image/jpeg;base64,')
    assert 'full resolution</a>' in page
    uri = page.split('src="', 1)[1].split('"', 1)[0]
    assert base64.b64decode(uri.split(",", 1)[1]) == bytes(p)
    assert img(small, "a", "b").startswith('<figure><img src="data:image/png;base64,')  # plain bytes as before
    panels = panel_previews({"worst": [("dir__a b", big)], "groups": {"g": {"best": [("c", small)]}}})
    image_id, shown = panels["worst"][0]
    assert image_id == "dir__a b" and shown.href == browser_link("dir__a b") == "browser.html#image=dir__a%20b"
    assert panels["groups"]["g"]["best"][0][1].href == "browser.html#image=c"
