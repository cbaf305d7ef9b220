"""Panels: the image and its registered views (:mod:`ais.views`) tiled left to right, with small titles."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ais.render.canvas import Canvas, upsample
from ais.views import DrawOptions, get_view, list_views

TITLE_HEIGHT = 14
GAP = 2
_ASCII = str.maketrans({"×": "x", "−": "-", "Δ": "d"})  # the default font has no glyph for these


def views(image: np.ndarray, maps: Mapping[str, np.ndarray], alpha: float = 0.4,
          harm_threshold: float = 0.25, cmap: str = "jet",
          keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The views of one image whose maps are present, in panel order: ``{key: (H, W, 3) uint8}``.

    ``maps`` holds one image's maps ``(h, w)`` (:func:`ais.methods.compute_maps`'s
    keys); the registered views (:mod:`ais.views`) whose maps are present are
    drawn, in registration order; ``cmap`` is the sequential colormap of the
    ``unit`` views. ``keys`` limits the views drawn; the image is always included.
    """
    registered = list_views()
    if keys is not None:
        unknown = sorted(set(keys) - set(registered))
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; choose from {', '.join(registered)}")
    want = set(registered if keys is None else keys)
    canvas = Canvas(image, alpha)
    options = DrawOptions(harm_threshold=harm_threshold, cmap=cmap)
    out = {"image": canvas.image}
    for name in registered:
        view = get_view(name)
        if name in want and view.available(maps):
            out[name] = view.draw(canvas, maps, options)
    return out


def title(key: str, short: bool = False) -> str:
    """A tile's title: the view's (short) title; ``image`` for the image tile."""
    if key == "image":
        return "img" if short else "image"
    view = get_view(key)
    return view.short_title if short else view.title


@functools.lru_cache(maxsize=32)
def _title_band(tile_width: int, keys: tuple[str, ...]) -> np.ndarray:
    """White band ``(TITLE_HEIGHT, width, 3)`` with each view's title centred over its tile (cached).

    A title wider than its tile is replaced by its view's short title
    (``raises`` and ``lowers`` together, so that the pair reads alike).
    """
    width = len(keys) * tile_width + (len(keys) - 1) * GAP
    band = Image.new("RGB", (width, TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = ImageFont.load_default()

    def fits(key: str) -> bool:
        left, _, right, _ = draw.textbbox((0, 0), title(key).translate(_ASCII), font=font)
        return right - left <= tile_width

    for i, key in enumerate(keys):
        pair = ("raises", "lowers") if key in ("raises", "lowers") else (key,)
        text = title(key, short=not all(fits(k) for k in pair)).translate(_ASCII)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = i * (tile_width + GAP) + (tile_width - (right - left)) // 2 - left
        y = (TITLE_HEIGHT - (bottom - top)) // 2 - top
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    arr = np.asarray(band).copy()
    arr.setflags(write=False)
    return arr


def panel(image: np.ndarray, maps: Mapping[str, np.ndarray], alpha: float = 0.4,
          harm_threshold: float = 0.25, cmap: str = "jet", titles: bool = True,
          keys: Sequence[str] | None = None) -> np.ndarray:
    """Views of one image tiled left to right with small titles: ``(TITLE_HEIGHT + H, W_total, 3)`` uint8.

    ``maps`` holds one image's maps (see :func:`views`; ``keys`` picks the
    views); tiles are separated by :data:`GAP` white pixels. The panel
    files carry more (:func:`standalone_panel`).
    """
    return _strip(views(image, maps, alpha, harm_threshold, cmap, keys), titles)


def _strip(tiles: Mapping[str, np.ndarray], titles: bool = True) -> np.ndarray:
    """The tiles ``{key: (H, W, 3)}`` left to right, :data:`GAP` apart, under their titles."""
    keys = list(tiles)  # the image, then the views in panel order
    h, w = tiles["image"].shape[:2]
    width = len(keys) * w + (len(keys) - 1) * GAP
    top = TITLE_HEIGHT if titles else 0
    out = np.full((top + h, width, 3), 255, dtype=np.uint8)
    if titles:
        out[:top] = _title_band(w, tuple(keys))
    for i, key in enumerate(keys):
        x = i * (w + GAP)
        out[top:, x:x + w] = tiles[key]
    return out


# --------------------------------------------------------------------------- panels that stand on their own

#: Tiles of a panel file are drawn at least this many pixels wide (smaller inputs are enlarged).
MIN_TILE = 160
BAR_HEIGHT = 10
MARGIN = 6
#: Tick labels under each colour scale's bar.
SCALE_TICKS = {"signed": ("-1", "0", "1"), "positive": ("0", "0.5", "1"), "negative": ("-1", "-0.5", "0"),
               "unit": ("0", "0.5", "1"), "dual": ("lowers", "0", "raises")}
_SEPARATORS = re.compile(r"(__|/|\\)")


@dataclass(frozen=True)
class Caption:
    """What a panel file says about its image, above the tiles.

    ``title`` is the image's id (shortened: :func:`short_ids`), ``facts``
    short phrases (split, true and predicted values), ``note`` a sentence
    (how the model saw the image) or ``None``.
    """

    title: str
    facts: tuple[str, ...] = ()
    note: str | None = None


def short_ids(image_ids: Sequence[str]) -> list[str]:
    """Ids with the path prefix they all share dropped, cut only at separators (``__``, ``/``), never mid-name.

    ``["photos__cats__a", "photos__dogs__b"]`` -> ``["cats__a", "dogs__b"]``;
    an id keeps at least its last part, so no id becomes empty.
    """
    parts = [_SEPARATORS.split(str(i)) for i in image_ids]  # names at even positions, separators at odd
    if not parts:
        return []
    common = 0
    while all(len(p) > common + 2 for p in parts) and len({tuple(p[common:common + 2]) for p in parts}) == 1:
        common += 2  # one shared name and the separator after it
    return ["".join(p[common:]) for p in parts]


def caption(image_id: str, split: str | None = None, y_true: float | None = None, y_pred: float | None = None,
            classes: Sequence[str] | None = None, explained: str | None = None, pred_class: int | None = None,
            size: tuple[int, int] | None = None, input_size: int | None = None) -> Caption:
    """A panel's caption: ``split``, the true and predicted values (a classifier's classes and probability).

    ``size`` is the original image's (width, height); when it is not square
    and the model saw an ``input_size`` square, the note says so. Missing
    values (None, NaN) are left out, an unlabelled truth shown as such.
    """
    facts = [f"split {split}"] if split else []
    missing = y_true is None or np.isnan(y_true)
    if classes:
        facts.append("true: unlabelled" if missing else f"true {classes[int(y_true)]}")
        if pred_class is not None:
            facts.append(f"predicted {classes[int(pred_class)]}")
        if y_pred is not None and not np.isnan(y_pred):
            facts.append(f"P({explained or classes[-1]}) {y_pred:.3f}")
    else:
        facts.append("true: unlabelled" if missing else f"true {y_true:.4g}")
        if y_pred is not None and not np.isnan(y_pred):
            facts.append(f"predicted {y_pred:.4g}")
        if not missing and y_pred is not None and not np.isnan(y_pred):
            facts.append(f"|error| {abs(y_pred - y_true):.3g}")
    note = None
    if size and input_size and size[0] != size[1]:
        note = (f"The model saw this {size[0]} x {size[1]} image stretched to a {input_size} x {input_size} "
                "square; the tiles show that square.")
    return Caption(image_id, tuple(facts), note)


def standalone_panel(image: np.ndarray, maps: Mapping[str, np.ndarray], text: Caption, alpha: float = 0.4,
                     harm_threshold: float = 0.25, cmap: str = "jet", keys: Sequence[str] | None = None,
                     min_tile: int = MIN_TILE) -> np.ndarray:
    """A panel file: the caption, the tiles (at least ``min_tile`` px) with titles, each view's colour bar.

    ``(H_caption + TITLE_HEIGHT + H' + H_bars, W_total, 3)`` uint8, where
    ``H'`` is the image's height after :func:`ais.render.canvas.upsample`.
    """
    tiles = views(upsample(image, min_tile), maps, alpha, harm_threshold, cmap, keys)
    strip = _strip(tiles)
    width = strip.shape[1]
    tile_width = next(iter(tiles.values())).shape[1]
    head = _caption_band(text, width)
    bars = _bars_band(tuple(tiles), tile_width, cmap)
    return np.concatenate([head, strip, bars], axis=0)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: its fixed bitmap font
        return ImageFont.load_default()


def _wrap(pieces: Sequence[str], font: Any, width: int, joiner: str = "") -> list[str]:
    """Greedy lines of ``pieces`` joined by ``joiner``, each at most ``width`` px where a piece allows."""
    lines: list[str] = []
    for piece in pieces:
        trial = f"{lines[-1]}{joiner}{piece}" if lines else piece
        if lines and font.getlength(trial) <= width:
            lines[-1] = trial
        else:
            lines.append(piece)
    return lines


def title_lines(title: str, width: int, font: Any = None) -> list[str]:
    """``title`` in lines of at most ``width`` px (font: the caption's), broken only after a separator.

    A name wider than ``width`` keeps its own line whole: names are never cut.
    """
    pieces = [p for p in re.split(r"(?<=__)|(?<=/)", title) if p]
    return _wrap(pieces, font or _font(16), width)


def _caption_band(text: Caption, width: int) -> np.ndarray:
    """White band with the title (wrapped at separators), the facts and the note; ``(h, width, 3)``."""
    big, small = _font(16), _font(13)
    inner = width - 2 * MARGIN
    lines = [(line, big) for line in title_lines(text.title, inner, big)]
    lines += [(line, small) for line in _wrap(list(text.facts), small, inner, "    ")]
    if text.note:
        lines += [(line, small) for line in _wrap(text.note.split(" "), small, inner, " ")]
    heights = [font.getbbox("Ag")[3] + 4 for _, font in lines]
    band = Image.new("RGB", (width, sum(heights) + 2 * MARGIN), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    y = MARGIN
    for (line, font), h in zip(lines, heights):
        draw.text((MARGIN, y), line, fill=(0, 0, 0) if font is big else (60, 60, 60), font=font)
        y += h
    return np.asarray(band)


@functools.lru_cache(maxsize=32)
def _bars_band(keys: tuple[str, ...], tile_width: int, cmap: str) -> np.ndarray:
    """Under each view's tile its colour scale (bar and ticks), nothing under the image; cached, read-only."""
    small = _font(11)
    tick_h = small.getbbox("0")[3]
    width = len(keys) * tile_width + (len(keys) - 1) * GAP
    band = Image.new("RGB", (width, MARGIN + BAR_HEIGHT + tick_h + 2 * MARGIN), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    bar_w = tile_width - 2 * MARGIN
    for i, key in enumerate(keys):
        if key == "image":
            continue
        scale = get_view(key).scale
        x0 = i * (tile_width + GAP) + MARGIN
        band.paste(Image.fromarray(_scale_bar(scale, bar_w, cmap)), (x0, MARGIN))
        draw.rectangle((x0 - 1, MARGIN - 1, x0 + bar_w, MARGIN + BAR_HEIGHT), outline=(120, 120, 120))
        for tick, frac in zip(SCALE_TICKS[scale], (0.0, 0.5, 1.0)):
            length = small.getlength(tick)
            x = x0 + frac * bar_w - frac * length
            draw.text((x, MARGIN + BAR_HEIGHT + 3), tick, fill=(60, 60, 60), font=small)
    arr = np.asarray(band).copy()
    arr.setflags(write=False)
    return arr


def _scale_bar(scale: str, width: int, cmap: str) -> np.ndarray:
    """``(BAR_HEIGHT, width, 3)`` uint8: the pure colours of a colour scale, left (low) to right (high).

    The dual view's bar is its 2-D key squeezed to the bar: direction left to
    right, helpfulness top (vivid) to bottom (grey).
    """
    from ais.render.colours import lut
    from ais.render.gallery import dual_key

    if scale == "dual":
        key = Image.fromarray(dual_key()).resize((width, BAR_HEIGHT), Image.Resampling.BILINEAR)
        return np.asarray(key)
    table = {"signed": lut("bwr"), "positive": lut("bwr")[128:], "negative": lut("bwr")[:129], "unit": lut(cmap)}[scale]
    row = table[np.linspace(0, len(table) - 1, width).round().astype(int)]
    return np.ascontiguousarray(np.broadcast_to(row[None], (BAR_HEIGHT, width, 3)))
