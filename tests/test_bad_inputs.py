"""Bad inputs: a corpus of broken, odd and hostile images and sheets, built here, run through intake.

Every case either ends in the manifest, handled as the README's intake
section says, or is rejected with a message naming the row, the file and the
reason. With ``on_bad_image: error`` all bad rows are listed at once and no
model is trained; with ``skip`` every sheet row is in the manifest or in
``rejected.csv``, never silently dropped.
"""

from __future__ import annotations

import os
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image, ImageOps

from ais import images
from ais.data import BadRowsError, SheetError, SheetSpec, build_manifest
from ais.images import BadImageError, open_image, to_tensor
from ais.stages import intake_sheet
from conftest import REPO, run_snakemake, write_image

SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}
NON_ASCII = "café-ümlaut-日本.png"
REJECTED_COLUMNS = ["sheet_row", "column", "path", "reason"]


# ---------------------------------------------------------------------------
# Corpus


def blocks(h: int, w: int, seed: int = 0, block: int = 8) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 image of flat 8x8 colour blocks (survives JPEG nearly unchanged)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(-(-h // block), -(-w // block), 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, block, 0), block, 1)[:h, :w]


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def exif_rotated_jpeg(path: Path, stored: np.ndarray, orientation: int = 6) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    Image.fromarray(stored).save(path, quality=95, subsampling=0, exif=exif.tobytes())  # 4:4:4: no colour bleeding
    return path


def rgba_array() -> np.ndarray:
    """16x8 RGBA: columns of alpha 0, 128, 255 and a colour gradient."""
    arr = np.zeros((8, 16, 4), np.uint8)
    arr[..., 0] = np.arange(16)[None, :] * 16
    arr[..., 1] = 200
    arr[..., 2] = 30
    arr[..., 3] = np.repeat([0, 128, 255, 255], 4)[None, :]
    return arr


def build_corpus(tmp: Path) -> tuple[Path, Path, list[dict]]:
    """Images under ``tmp/root`` and a sheet ``tmp/sheet.csv``; returns (sheet, root, cases).

    Each case: ``rel`` (the sheet's path cell), ``score`` (its score cell),
    ``outcome`` (``ok`` or ``reject``), and for rejections ``column`` and
    ``needle`` (a phrase of the reason).
    """
    root = tmp / "root"
    root.mkdir(parents=True)
    outside = write_image(tmp / "outside" / "secret.png", seed=99)
    cases: list[dict] = []

    def ok(rel: str, score: str = "3.0", **expect) -> None:
        cases.append({"rel": rel, "score": score, "outcome": "ok", **expect})

    def bad(rel: str, column: str, needle: str, score: str = "3.0") -> None:
        cases.append({"rel": rel, "score": score, "outcome": "reject", "column": column, "needle": needle})

    for i in range(8):  # plain images, enough for every split
        write_image(root / f"good{i}.png", size=(24, 20), seed=i)
        ok(f"good{i}.png", score=f"{1 + i * 0.5}", size=(24, 20))

    # Files that are not (whole) images.
    jpeg = root / "whole.jpg"
    Image.fromarray(blocks(64, 64, seed=1)).save(jpeg, quality=90)
    (root / "truncated.jpg").write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    jpeg.unlink()
    bad("truncated.jpg", "path", "truncated")
    (root / "empty.jpg").write_bytes(b"")
    bad("empty.jpg", "path", "file is empty (0 bytes)")
    (root / "text.jpg").write_text("this is a text file, not a JPEG\n")
    bad("text.jpg", "path", "cannot be read as an image")
    (root / "folder.png").mkdir()
    bad("folder.png", "path", "not a file")
    bad("missing.png", "path", "file not found")
    png_header_only(root / "bomb.png", 100_000, 100_000)
    bad("bomb.png", "path", "image too large (100000x100000 = 10000000000 pixels); the limit is data.max_image_pixels")

    # Every colour mode and layout, handled.
    Image.fromarray(blocks(32, 32, seed=2)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    ok("cmyk.jpg", size=(32, 32))
    Image.fromarray((np.arange(24 * 16).reshape(16, 24) * 170).astype(np.uint16)).save(root / "gray16.png")
    ok("gray16.png", size=(24, 16))
    Image.fromarray(blocks(16, 16, seed=3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
        root / "palette.png")
    ok("palette.png", size=(16, 16))
    Image.fromarray(blocks(16, 16, seed=4)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
        root / "palette_transparent.png", transparency=0)
    ok("palette_transparent.png", size=(16, 16))
    Image.fromarray(rgba_array(), "RGBA").save(root / "rgba.png")
    ok("rgba.png", size=(16, 8))
    Image.fromarray(rgba_array()[..., [0, 3]], "LA").save(root / "la.png")
    ok("la.png", size=(16, 8))
    write_image(root / "grey.png", mode="L", seed=5)
    ok("grey.png", size=(20, 16))
    exif_rotated_jpeg(root / "exif6.jpg", blocks(24, 40, seed=6))
    ok("exif6.jpg", size=(24, 40))  # stored 40 wide, 24 high; upright 24 wide, 40 high
    frames = [Image.fromarray(np.full((10, 12, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ok("animated.gif", size=(12, 10))
    frames[0].save(root / "pages.tiff", save_all=True, append_images=frames[1:])
    ok("pages.tiff", size=(12, 10))
    write_image(root / "one_pixel.png", size=(1, 1), seed=7)
    ok("one_pixel.png", size=(1, 1))
    write_image(root / "wide.png", size=(600, 1), seed=8)
    ok("wide.png", size=(600, 1))
    write_image(root / "tall.png", size=(1, 600), seed=9)
    ok("tall.png", size=(1, 600))
    write_image(root / NON_ASCII, seed=10)
    ok(NON_ASCII, size=(20, 16))
    write_image(root / unicodedata.normalize("NFD", "naïve-é.png"), seed=11)  # NFD on disk (macOS), NFC in the sheet
    ok(unicodedata.normalize("NFC", "naïve-é.png"), size=(20, 16))
    write_image(root / "sub" / "inner.png", seed=12)
    os.symlink(root / "sub" / "inner.png", root / "link_inside.png")
    ok("link_inside.png", size=(20, 16))

    # Scores: empty = unlabelled (valid); anything else must be a finite number.
    write_image(root / "scores" / "s.png", seed=13)
    ok("scores/s.png", score="", unlabelled=True, size=(20, 16))
    for k, value in enumerate(["  ", "nan", "NaN", "inf", "-inf", "abc", "3,5"]):
        write_image(root / "scores" / f"s{k}.png", seed=14 + k)
        if value.strip() == "":
            ok(f"scores/s{k}.png", score=value, unlabelled=True, size=(20, 16))
        else:
            needle = "is not finite" if value.lower() in ("nan", "inf", "-inf") else "is not a number"
            bad(f"scores/s{k}.png", "score", f"score {value!r} {needle}", score=value)

    # Paths that leave data.root, and a duplicate.
    bad("../outside/secret.png", "path", "path leaves data.root")
    bad(str(outside), "path", "absolute image path")
    os.symlink(outside, root / "link_out.png")
    bad("link_out.png", "path", "path leaves data.root through a symbolic link")
    os.symlink(outside.parent, root / "dir_link")
    bad("dir_link/secret.png", "path", "path leaves data.root through a symbolic link")
    bad("sub/../../outside/secret.png", "path", "path leaves data.root")
    bad("good0.png", "path", "duplicate image id 'good0' (first on row 1)")
    bad("", "path", "empty image path")

    sheet = tmp / "sheet.csv"
    pd.DataFrame({"path": [c["rel"] for c in cases], "score": [c["score"] for c in cases]}).to_csv(sheet, index=False)
    for row, case in enumerate(cases, 1):
        case["row"] = row
    return sheet, root, cases


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, list[dict]]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def data_cfg(sheet: Path, root: Path | None, on_bad_image: str, **extra) -> dict:
    return {"source": "sheet", "sheet": str(sheet), "root": None if root is None else str(root),
            "image_column": "path", "score_column": "score", "id_column": None, "split_column": None,
            "splits": SPLITS, "on_bad_image": on_bad_image, "max_image_pixels": images.DEFAULT_MAX_PIXELS, **extra}


# ---------------------------------------------------------------------------
# The corpus through intake


def test_error_mode_lists_every_bad_row_at_once(corpus):
    sheet, root, cases = corpus
    with pytest.raises(BadRowsError) as err:
        build_manifest(SheetSpec(sheet=str(sheet), root=str(root)), SPLITS, seed=0)
    msg = str(err.value)
    lines = msg.splitlines()
    bad = [c for c in cases if c["outcome"] == "reject"]
    assert f"{sheet}: {len(bad)} bad row(s)" in lines[0] and "data.on_bad_image: skip" in lines[0]
    assert len(lines) == 1 + len(bad)
    for case, line in zip(bad, lines[1:]):
        # Row, column, file and reason on one line, in sheet order.
        assert line.startswith(f"  row {case['row']} ({case['column']}) {case['rel']}: "), (case, line)
        assert case["needle"] in line, (case, line)
    assert list(err.value.rejected.columns) == REJECTED_COLUMNS


def test_skip_mode_keeps_or_lists_every_row(corpus, tmp_path):
    sheet, root, cases = corpus
    out = tmp_path / "out"
    manifest = intake_sheet.run(data_cfg(sheet, root, "skip"), 0, out / "manifest.parquet", out / "rejected.csv")
    rejected = pd.read_csv(out / "rejected.csv", keep_default_na=False)
    assert list(rejected.columns) == REJECTED_COLUMNS

    # Nothing silently dropped: every sheet row is in exactly one of the two.
    kept, dropped = set(manifest["sheet_row"]), set(rejected["sheet_row"])
    assert kept.isdisjoint(dropped)
    assert kept | dropped == {c["row"] for c in cases}
    assert pd.read_parquet(out / "manifest.parquet")["sheet_row"].tolist() == manifest["sheet_row"].tolist()

    by_row = rejected.set_index("sheet_row")
    m = manifest.set_index("sheet_row")
    for case in cases:
        if case["outcome"] == "reject":
            got = by_row.loc[case["row"]]
            assert (got["column"], got["path"]) == (case["column"], case["rel"]), case
            assert case["needle"] in got["reason"], (case, got["reason"])
        else:
            got = m.loc[case["row"]]
            assert (got["width"], got["height"]) == case["size"], case
            if case.get("unlabelled"):
                assert pd.isna(got["y_true"]) and got["split"] == "unlabelled", case
            else:
                assert got["y_true"] == float(case["score"]) and got["split"] in SPLITS, case
            assert os.path.isfile(got["path"]) and got["image_id"].isascii(), case
    ids = m["image_id"]
    assert ids.is_unique
    assert ids[next(c["row"] for c in cases if c["rel"] == NON_ASCII)].startswith("caf_-_mlaut-")


def test_every_accepted_image_feeds_the_model(corpus):
    """Tiny, extreme-aspect and odd-mode images load and resize to the input size; the model runs on them."""
    from ais.models import build_model

    sheet, root, cases = corpus
    manifest, _ = build_manifest(SheetSpec(sheet=str(sheet), root=str(root)), SPLITS, seed=0, on_bad_image="skip")
    x = torch.stack([images.load_tensor(p, 32) for p in manifest["path"]])
    assert x.shape == (len(manifest), 3, 32, 32) and torch.isfinite(x).all()
    torch.manual_seed(0)
    model = build_model("vgg11", "gap", "none").eval()
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (len(manifest), 1) and torch.isfinite(y).all()


# ---------------------------------------------------------------------------
# What "handled" means, pixel by pixel


def test_exif_orientation_is_applied(tmp_path):
    stored = blocks(24, 40, seed=6)
    path = exif_rotated_jpeg(tmp_path / "exif6.jpg", stored)
    with Image.open(path) as raw:
        assert raw.size == (40, 24) and raw.getexif()[0x0112] == 6
    got = np.asarray(open_image(path), dtype=np.int16)
    upright = np.rot90(stored, k=-1).astype(np.int16)  # orientation 6: rotate 90 degrees clockwise to view
    assert got.shape == upright.shape == (40, 24, 3)
    assert np.abs(got - upright).mean() < 3  # JPEG noise only
    assert np.abs(got - np.rot90(stored, k=1).astype(np.int16)).mean() > 20  # not the other way round
    # The model sees the upright image.
    assert torch.equal(images.load_tensor(path, 32), to_tensor(open_image(path), 32))


def test_colour_modes_become_the_expected_rgb(tmp_path, corpus):
    _, root, _ = corpus
    g16 = np.asarray(Image.open(root / "gray16.png"), dtype=np.float64)
    assert Image.open(root / "gray16.png").mode == "I;16"
    want = np.round(g16 / 65535 * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(open_image(root / "gray16.png")), np.stack([want] * 3, -1))

    with Image.open(root / "palette.png") as p:
        assert p.mode == "P"
        assert np.array_equal(np.asarray(open_image(root / "palette.png")), np.asarray(p.convert("RGB")))
    with Image.open(root / "palette_transparent.png") as p:
        index = np.asarray(p)
        got = np.asarray(open_image(root / "palette_transparent.png"))
        assert (got[index == 0] == 255).all()  # transparent: white
        assert np.array_equal(got[index != 0], np.asarray(p.convert("RGB"))[index != 0])

    rgba = rgba_array().astype(np.float64)
    alpha = rgba[..., 3:] / 255
    want = rgba[..., :3] * alpha + 255 * (1 - alpha)  # composited on white
    assert np.abs(np.asarray(open_image(root / "rgba.png"), dtype=np.float64) - want).max() <= 1
    la = np.asarray(open_image(root / "la.png"), dtype=np.float64)
    assert np.abs(la - (rgba[..., :1] * alpha + 255 * (1 - alpha))).max() <= 1

    grey = np.asarray(open_image(root / "grey.png"))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    for multi in ("animated.gif", "pages.tiff"):  # the first frame
        with Image.open(root / multi) as im:
            assert im.n_frames == 3
        assert (np.asarray(open_image(root / multi)) == 10).all()
    cmyk = np.asarray(open_image(root / "cmyk.jpg"), dtype=np.int16)
    assert Image.open(root / "cmyk.jpg").mode == "CMYK"
    assert np.abs(cmyk - blocks(32, 32, seed=2)).mean() < 4


def test_tiny_and_extreme_aspect_images_are_stretched_to_the_square_input(tmp_path):
    for size in [(1, 1), (600, 1), (1, 600), (3, 2)]:
        path = write_image(tmp_path / f"{size[0]}x{size[1]}.png", size=size, seed=1)
        x = images.load_tensor(path, 32, "none")
        assert x.shape == (3, 32, 32) and torch.isfinite(x).all()
    # A 1x1 image becomes a flat square of its colour.
    one = images.load_tensor(tmp_path / "1x1.png", 32, "none")
    assert torch.allclose(one, one[:, :1, :1].expand_as(one))


# ---------------------------------------------------------------------------
# Decompression bombs


def test_bomb_header_is_refused_before_decoding(tmp_path):
    path = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)
    with pytest.raises(BadImageError) as err:
        open_image(path, max_pixels=images.DEFAULT_MAX_PIXELS)
    assert str(err.value).startswith(f"{path}: image too large (100000x100000 = 10000000000 pixels)")
    assert "data.max_image_pixels=178956970" in str(err.value)


def test_pixel_limit_is_the_configs_not_pillows(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.png", size=(20, 20))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow alone would refuse (warn) 400 pixels
    assert open_image(path, max_pixels=1000).size == (20, 20)
    assert open_image(path).size == (20, 20)  # no limit: an image intake already accepted
    with pytest.raises(BadImageError, match=r"image too large \(20x20 = 400 pixels\).*max_image_pixels=399"):
        open_image(path, max_pixels=399)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_pillows_own_bomb_error_becomes_a_clear_rejection(tmp_path, monkeypatch):
    """Pillow also checks sizes while decoding (frames, tiles): its error names the file and the config key."""
    path = write_image(tmp_path / "frames.png")

    def bomb(im, *args, **kwargs):
        raise Image.DecompressionBombError("Image size (999999999 pixels) exceeds limit of 1000 pixels, "
                                           "could be decompression bomb DOS attack.")

    monkeypatch.setattr(ImageOps, "exif_transpose", bomb)
    with pytest.raises(BadImageError) as err:
        open_image(path, max_pixels=1000)
    assert str(err.value).startswith(f"{path}: image too large (Image size (999999999 pixels)")
    assert "data.max_image_pixels=1000" in str(err.value)

    def warn(im, *args, **kwargs):
        import warnings

        warnings.warn("Image size (1500 pixels) exceeds limit of 1000 pixels", Image.DecompressionBombWarning)
        return im

    monkeypatch.setattr(ImageOps, "exif_transpose", warn)
    with pytest.raises(BadImageError, match="image too large.*data.max_image_pixels=1000"):
        open_image(path, max_pixels=1000)


def test_configured_limit_reaches_intake(tmp_path):
    write_image(tmp_path / "a.png", size=(20, 20))
    write_image(tmp_path / "b.png", size=(10, 10))
    pd.DataFrame({"path": ["a.png", "b.png"], "score": ["1", "2"]}).to_csv(tmp_path / "s.csv", index=False)
    cfg = data_cfg(tmp_path / "s.csv", None, "error", max_image_pixels=300,
                   splits={"train": 1.0, "val": 0.0, "test": 0.0})
    with pytest.raises(BadRowsError, match=r"row 1 \(path\) a.png: image too large \(20x20 = 400 pixels\)"):
        intake_sheet.run(cfg, 0, tmp_path / "m.parquet", tmp_path / "r.csv")


# ---------------------------------------------------------------------------
# Sheets


def test_sheet_level_problems(tmp_path):
    (tmp_path / "zero.csv").write_bytes(b"")
    with pytest.raises(SheetError, match=r"zero.csv: the sheet is empty"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "zero.csv")), SPLITS, 0)
    (tmp_path / "header.csv").write_text("path,score\n\n\n")
    with pytest.raises(SheetError, match=r"header.csv: the sheet has a header but no rows"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "header.csv")), SPLITS, 0)
    pq.write_table(pa.table({"path": pa.array([], pa.string()), "score": pa.array([], pa.float64())}),
                   tmp_path / "empty.parquet")
    with pytest.raises(SheetError, match=r"empty.parquet: the sheet has a header but no rows"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "empty.parquet")), SPLITS, 0)
    (tmp_path / "cols.csv").write_text("file,realism\na.png,1\n")
    with pytest.raises(SheetError, match=r"cols.csv: missing column\(s\) 'path', 'score'; the sheet has 'file', 'realism'"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "cols.csv")), SPLITS, 0)
    with pytest.raises(SheetError, match=r"missing column\(s\) 'id'"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "cols.csv"), image_column="file", score_column="realism",
                                 id_column="id"), SPLITS, 0)
    (tmp_path / "latin1.csv").write_bytes("path,score\ncaf\xe9.png,1\n".encode("latin-1"))
    with pytest.raises(SheetError, match=r"latin1.csv: cannot be read as a sheet \(UnicodeDecodeError"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "latin1.csv")), SPLITS, 0)
    (tmp_path / "sheet.xlsx").write_bytes(b"PK")
    with pytest.raises(SheetError, match="unknown sheet format '.xlsx'"):
        build_manifest(SheetSpec(sheet=str(tmp_path / "sheet.xlsx")), SPLITS, 0)
    # Every row bad in skip mode: nothing to train on, and the message still lists each row.
    (tmp_path / "allbad.csv").write_text("path,score\nnope.png,1\ngone.png,2\n")
    with pytest.raises(SheetError) as err:
        build_manifest(SheetSpec(sheet=str(tmp_path / "allbad.csv")), SPLITS, 0, on_bad_image="skip")
    assert "no usable rows" in str(err.value)
    assert "row 1 (path) nope.png: " in str(err.value) and "row 2 (path) gone.png: " in str(err.value)


def test_bom_blank_lines_and_short_rows(tmp_path):
    """Excel's UTF-8 CSV (byte-order mark), blank lines (skipped, but row numbers still match the file), short rows."""
    for name in ("a.png", "b.png", "c.png"):
        write_image(tmp_path / name)
    (tmp_path / "s.csv").write_bytes("\ufeffpath,score\na.png,1\n\n,\nb.png,2\nc.png\nmissing.png,3\n".encode())
    manifest, rejected = build_manifest(SheetSpec(sheet=str(tmp_path / "s.csv")), SPLITS, 0, on_bad_image="skip")
    assert manifest.set_index("image_id")["sheet_row"].to_dict() == {"a": 1, "b": 4, "c": 5}
    assert pd.isna(manifest.set_index("image_id").loc["c", "y_true"])  # short row: empty score, unlabelled
    assert rejected["sheet_row"].tolist() == [6] and "file not found" in rejected["reason"].item()


def test_parquet_sheet_nulls_nans_ids_and_nul_characters(tmp_path):
    """Parquet keeps types: a null score is unlabelled, a NaN score is rejected, integer ids stay integers."""
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png"):
        write_image(tmp_path / name)
    table = pa.table({
        "path": ["a.png", "b.png", "c.png", "d\x00.png", "e.png", "f.png"],
        "score": pa.array([1.0, None, float("nan"), 2.0, 3.0, 4.0], pa.float64()),
        "id": pa.array([7, 8, 9, 10, 11, None], pa.int64()),
    })
    pq.write_table(table, tmp_path / "s.parquet")
    spec = SheetSpec(sheet=str(tmp_path / "s.parquet"), id_column="id")
    manifest, rejected = build_manifest(spec, SPLITS, 0, on_bad_image="skip")
    assert manifest["image_id"].tolist() == ["11", "7", "8"]
    assert pd.isna(manifest.set_index("image_id").loc["8", "y_true"])
    reasons = rejected.set_index("sheet_row")["reason"].to_dict()
    assert "score nan is not finite" in reasons[3]
    assert reasons[4] == "image path contains a NUL character"
    assert reasons[6] == "empty image id"
    assert set(manifest["sheet_row"]) | set(rejected["sheet_row"]) == set(range(1, 7))


def test_hostile_explicit_ids_are_data_not_paths(tmp_path):
    """Ids from the sheet are kept as given (they never become paths unsanitised); control characters are refused."""
    evil = ["../../x", "/abs", "a/../../b", "..", "x" * 1000, "a\x00b", "tab\there"]
    for k in range(len(evil)):
        write_image(tmp_path / f"i{k}.png", seed=k)
    pd.DataFrame({"path": [f"i{k}.png" for k in range(len(evil))], "score": "1", "id": evil}).to_parquet(
        tmp_path / "s.parquet")
    manifest, rejected = build_manifest(SheetSpec(sheet=str(tmp_path / "s.parquet"), id_column="id"), SPLITS, 0,
                                        on_bad_image="skip")
    assert sorted(manifest["image_id"]) == sorted(evil[:5])
    assert rejected["sheet_row"].tolist() == [6, 7]
    assert all("contains a control character" in r for r in rejected["reason"])


# ---------------------------------------------------------------------------
# Through the workflow


def sheet_config(tmp: Path, sheet: Path, root: Path, on_bad_image: str) -> Path:
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg["data"] = {"source": "sheet", "sheet": str(sheet), "root": str(root), "splits": SPLITS,
                   "on_bad_image": on_bad_image}
    path = tmp / f"config-{on_bad_image}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_workflow_stops_before_training_or_lists_rejections(corpus, tmp_path):
    sheet, root, cases = corpus
    bad = [c for c in cases if c["outcome"] == "reject"]

    # error (the default): intake fails naming every bad row; nothing is trained.
    work = tmp_path / "error"
    work.mkdir()
    proc = run_snakemake(work, "--cores", "1", "--configfile", str(sheet_config(work, sheet, root, "error")),
                         check=False)
    assert proc.returncode != 0
    log = (work / "results" / "logs" / "data" / "manifest.log").read_text()
    out = proc.stdout + proc.stderr
    for case in bad:
        line = f"row {case['row']} ({case['column']}) {case['rel']}: "
        assert line in log and line in out, (case, out[-3000:])
        assert case["needle"] in log
    assert f"{len(bad)} bad row(s)" in out
    assert not (work / "results" / "model").exists()
    assert not (work / "results" / "data" / "manifest.parquet").exists()
    assert "intake_sheet" in out and "finetune_model" not in out.split("Error in rule intake_sheet")[-1]

    # skip: the manifest holds the good rows, rejected.csv the others, each with its reason.
    work = tmp_path / "skip"
    work.mkdir()
    run_snakemake(work, "results/data/manifest.parquet", "--cores", "1",
                  "--configfile", str(sheet_config(work, sheet, root, "skip")))
    rejected = pd.read_csv(work / "results" / "data" / "rejected.csv", keep_default_na=False)
    assert list(rejected.columns) == REJECTED_COLUMNS
    assert rejected["sheet_row"].tolist() == [c["row"] for c in bad]
    assert all(c["needle"] in r for c, r in zip(bad, rejected["reason"]))
    manifest = pd.read_parquet(work / "results" / "data" / "manifest.parquet")
    assert sorted(manifest["sheet_row"]) == [c["row"] for c in cases if c["outcome"] == "ok"]
    assert pq.read_schema(work / "results" / "data" / "manifest.parquet").metadata[b"rejected"] == str(len(bad)).encode()
