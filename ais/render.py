"""Per-image heatmap panels by colour lookup (numpy + Pillow), and a matplotlib gallery figure.

Colours come from lookup tables sampled once from matplotlib colormaps:

- signed maps in [-1, 1] use ``bwr`` through a ``TwoSlopeNorm`` centred at 0
  on [-1, 1] (which on a symmetric range is the linear map ``(v + 1) / 2``):
  -1 -> blue (0, 0, 255), 0 -> white, +1 -> red (255, 0, 0). The table has
  :data:`SIGNED_LUT_SIZE` = 257 entries, an odd number so that 0 falls
  exactly on the white centre entry (with 256 entries no entry is white);
- unsigned maps in [0, 1] (Grad-CAM) use a 256-entry sequential table
  (``jet`` by default).

Heatmaps are resized to the image with bilinear interpolation, then blended:
``(1 - alpha) * image + alpha * colour`` (alpha 0.4: 60 % image, 40 % colour).
Nothing is rescaled per image here: maps arrive already divided by their max
|value| (:func:`ais.heatmaps.compute_maps`), and values outside the range are
clipped.

Views (:func:`panel` tiles those whose maps are present):

- ``AIS``: the signed AIS map (red: helpful channels, blue: harmful).
- ``direction``: the -Δy-weighted map (red raises realism, blue lowers it).
- ``raises`` / ``lowers``: the positive part (white to red) and the negative
  part (white to blue) of the direction map, one at a time: where the model
  sees evidence that raises / lowers realism.
- ``dual``: hue from the direction map (red raises / blue lowers, strength =
  |direction|), saturation from helpfulness (the AIS map ``h``): the colour
  is mixed with its own grey level in proportion ``(1 + h) / 2``, so helpful
  evidence is vivid, neutral half-saturated and harmful evidence grey.
- ``primary``: the helpful-channels-only map (white to red) with the
  harmful regions (harmful map <= -``harm_threshold``) outlined in grey by a
  morphological edge (3x3-cross dilation minus erosion, 2 px wide).
- ``Grad-CAM`` / ``Grad-CAM++``: sequential colormap on [0, 1].
"""

from __future__ import annotations

import functools
import os
import struct
import zlib
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ais.io import atomic_path, write_bytes

SIGNED_LUT_SIZE = 257
SEQUENTIAL_LUT_SIZE = 256
OUTLINE_GREY = (128, 128, 128)
TITLE_HEIGHT = 14
GAP = 2

#: Panel order of the views and their titles.
_VIEW_ORDER = ("image", "ais", "direction", "raises", "lowers", "dual", "primary", "gradcam", "gradcampp")
#: Every view a panel can show (the ``heatmaps.views`` choices), besides the image.
VIEWS = _VIEW_ORDER[1:]
TITLES = {
    "image": "image",
    "ais": "AIS",
    "direction": "direction",
    "raises": "raises realism",
    "lowers": "lowers realism",
    "dual": "dual",
    "primary": "primary",
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
}
#: Titles used in panels whose tiles are too narrow for :data:`TITLES`.
SHORT_TITLES = {
    "image": "img",
    "ais": "AIS",
    "direction": "dir",
    "raises": "raises",
    "lowers": "lowers",
    "dual": "dual",
    "primary": "prim",
    "gradcam": "GC",
    "gradcampp": "GC++",
}


# --------------------------------------------------------------------------- lookup tables


@functools.lru_cache(maxsize=None)
def lut(name: str = "bwr", size: int | None = None) -> np.ndarray:
    """``(size, 3)`` uint8 colours of matplotlib colormap ``name`` at ``size`` evenly spaced points.

    ``size`` defaults to :data:`SIGNED_LUT_SIZE` for ``bwr`` and
    :data:`SEQUENTIAL_LUT_SIZE` otherwise. The colormap is resampled from its
    definition (not from its own 256-entry table), so ``lut("bwr")[128]`` is
    exactly white.
    """
    import matplotlib

    if size is None:
        size = SIGNED_LUT_SIZE if name == "bwr" else SEQUENTIAL_LUT_SIZE
    cmap = matplotlib.colormaps[name].resampled(size)
    rgba = cmap(np.arange(size))  # integer input indexes the resampled table directly
    table = np.rint(rgba[:, :3] * 255.0).astype(np.uint8)
    table.setflags(write=False)
    return table


def signed_index(values: np.ndarray, size: int = SIGNED_LUT_SIZE) -> np.ndarray:
    """LUT indices of values in [-1, 1] (TwoSlopeNorm(vcenter=0, vmin=-1, vmax=1)); clipped, NaN as 0."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float32), -1.0, 1.0), copy=False)  # NaN -> 0
    return np.rint((v + 1.0) * (0.5 * (size - 1))).astype(np.intp)


def unsigned_index(values: np.ndarray, size: int = SEQUENTIAL_LUT_SIZE) -> np.ndarray:
    """LUT indices of values in [0, 1]; clipped, NaN as 0."""
    v = np.nan_to_num(np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0), copy=False)  # NaN -> 0
    return np.rint(v * (size - 1)).astype(np.intp)


def colorize(values: np.ndarray, cmap: str = "bwr") -> np.ndarray:
    """``(H, W, 3)`` uint8 colours of a map: signed [-1, 1] for ``bwr``, [0, 1] for others."""
    return np.take(lut(cmap), _index(values, cmap), axis=0)


def _index(values: np.ndarray, cmap: str) -> np.ndarray:
    size = SIGNED_LUT_SIZE if cmap == "bwr" else len(lut(cmap))
    return signed_index(values, size) if cmap == "bwr" else unsigned_index(values, size)


@functools.lru_cache(maxsize=64)
def _scaled_lut(cmap: str, alpha: float) -> np.ndarray:
    """``alpha * lut(cmap)`` as float32, the colour term of a blend."""
    return lut(cmap).astype(np.float32) * np.float32(alpha)


@functools.lru_cache(maxsize=8)
def _dual_tables(alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Per ``bwr`` entry: ``alpha * grey`` (257,) and ``alpha * (colour - grey)`` (257, 3), float32."""
    colour = lut("bwr").astype(np.float32)
    grey = colour @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return grey * np.float32(alpha), (colour - grey[:, None]) * np.float32(alpha)


# --------------------------------------------------------------------------- resizing and blending


def resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map ``(h, w)`` to ``size`` = (H, W), float32."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape == tuple(size):
        return heat
    im = Image.fromarray(heat, mode="F").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32)


def _base(image: np.ndarray, alpha: float) -> np.ndarray:
    """The image term of a blend, ``(1 - alpha) * image + 0.5`` (0.5: round on the uint8 cast), float32."""
    base = image.astype(np.float32)
    base *= np.float32(1.0 - alpha)
    base += np.float32(0.5)
    return base


def blend(image: np.ndarray, colour: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour``, both ``(H, W, 3)`` uint8, rounded to uint8."""
    out = _base(image, alpha)
    out += np.asarray(colour, dtype=np.float32) * np.float32(alpha)
    return out.astype(np.uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return image


class _Canvas:
    """One image and one alpha; every view of a panel blends onto the same precomputed base."""

    def __init__(self, image: np.ndarray, alpha: float) -> None:
        self.image = _check_image(image)
        self.size = self.image.shape[:2]
        self.alpha = float(alpha)
        self.base = _base(self.image, self.alpha)

    def resize(self, heat: np.ndarray) -> np.ndarray:
        return resize_map(heat, self.size)

    def overlay(self, heat: np.ndarray, cmap: str = "bwr") -> np.ndarray:
        colour = np.take(_scaled_lut(cmap, self.alpha), _index(self.resize(heat), cmap), axis=0)
        colour += self.base
        return colour.astype(np.uint8)

    def dual(self, direction: np.ndarray, helpfulness: np.ndarray) -> np.ndarray:
        idx = signed_index(self.resize(direction))
        grey, chroma = _dual_tables(self.alpha)
        sat = np.clip(self.resize(helpfulness), -1.0, 1.0)
        sat += 1.0
        sat *= 0.5
        out = np.take(chroma, idx, axis=0)
        out *= sat[..., None]
        out += np.take(grey, idx)[..., None]
        out += self.base
        return out.astype(np.uint8)

    def primary(self, helpful: np.ndarray, harmful: np.ndarray, harm_threshold: float) -> np.ndarray:
        out = self.overlay(np.maximum(self.resize(helpful), 0.0))
        edge = outline(self.resize(harmful) <= -harm_threshold)
        out[edge] = OUTLINE_GREY
        return out


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4, cmap: str = "bwr") -> np.ndarray:
    """Signed heat ``(h, w)`` in [-1, 1] over ``image`` (H, W, 3) uint8 -> (H, W, 3) uint8.

    With a sequential ``cmap`` (not ``bwr``) the heat is read on [0, 1].
    """
    return _Canvas(image, alpha).overlay(heat, cmap)


def overlay_positive(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Positive part only (white to red, the upper half of ``bwr``); negative values show as 0."""
    return overlay(image, np.maximum(np.asarray(heat, dtype=np.float32), 0.0), alpha)


def overlay_negative(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Negative part only (white to blue, the lower half of ``bwr``); positive values show as 0."""
    return overlay(image, np.minimum(np.asarray(heat, dtype=np.float32), 0.0), alpha)


def overlay_cam(image: np.ndarray, cam: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Unsigned map ``(h, w)`` in [0, 1] (Grad-CAM) with a sequential colormap."""
    return overlay(image, cam, alpha, cmap)


def dual(image: np.ndarray, direction: np.ndarray, helpfulness: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """Dual encoding: hue and strength from ``direction``, saturation from ``helpfulness`` (both [-1, 1]).

    The ``bwr`` colour of the direction is mixed with its own grey level
    (0.299 R + 0.587 G + 0.114 B) in proportion ``(1 + helpfulness) / 2``.
    """
    return _Canvas(image, alpha).dual(direction, helpfulness)


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1, mode="edge")
    return p[1:-1, 1:-1] | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


def outline(mask: np.ndarray) -> np.ndarray:
    """Morphological edge of a bool mask: dilation minus erosion (3x3 cross), 2 px wide."""
    mask = np.asarray(mask, dtype=bool)
    return _dilate(mask) & _dilate(~mask)


def primary(
    image: np.ndarray,
    helpful: np.ndarray,
    harmful: np.ndarray,
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
) -> np.ndarray:
    """Helpful-only map (white to red) with regions where ``harmful <= -harm_threshold`` outlined in grey."""
    return _Canvas(image, alpha).primary(helpful, harmful, harm_threshold)


# --------------------------------------------------------------------------- panels


def views(image: np.ndarray, maps: Mapping[str, np.ndarray], alpha: float = 0.4,
          harm_threshold: float = 0.25, cmap: str = "jet",
          keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The views of one image whose maps are present, in panel order: ``{key: (H, W, 3) uint8}``.

    ``maps`` holds one image's maps ``(h, w)`` under the keys of
    :func:`ais.heatmaps.compute_maps`. ``primary`` uses ``helpful`` / ``harmful``
    when present, else the positive / negative parts of ``ais``; ``cmap`` is
    the sequential colormap of the Grad-CAM views. ``keys`` (any of
    :data:`VIEWS`) limits the views computed; the image is always included.
    """
    if keys is not None:
        unknown = sorted(set(keys) - set(VIEWS))
        if unknown:
            raise ValueError(f"unknown view(s) {unknown}; choose from {', '.join(VIEWS)}")
    want = set(VIEWS if keys is None else keys)
    canvas = _Canvas(image, alpha)
    out = {"image": canvas.image}
    if "ais" in maps and "ais" in want:
        out["ais"] = canvas.overlay(maps["ais"])
    if "direction" in maps:
        if "direction" in want:
            out["direction"] = canvas.overlay(maps["direction"])
        if "raises" in want:
            out["raises"] = canvas.overlay(np.maximum(canvas.resize(maps["direction"]), 0.0))
        if "lowers" in want:
            out["lowers"] = canvas.overlay(np.minimum(canvas.resize(maps["direction"]), 0.0))
    if "direction" in maps and "ais" in maps and "dual" in want:
        out["dual"] = canvas.dual(maps["direction"], maps["ais"])
    if "primary" in want:
        if "helpful" in maps and "harmful" in maps:
            out["primary"] = canvas.primary(maps["helpful"], maps["harmful"], harm_threshold)
        elif "ais" in maps:
            out["primary"] = canvas.primary(maps["ais"], np.minimum(maps["ais"], 0.0), harm_threshold)
    for key in ("gradcam", "gradcampp"):
        if key in maps and key in want:
            out[key] = canvas.overlay(maps[key], cmap)
    return out


@functools.lru_cache(maxsize=32)
def _title_band(tile_width: int, keys: tuple[str, ...]) -> np.ndarray:
    """White band ``(TITLE_HEIGHT, width, 3)`` with each view's title centred over its tile (cached).

    A title wider than its tile is replaced by its :data:`SHORT_TITLES` form
    (``raises`` and ``lowers`` together, so that the pair reads alike).
    """
    width = len(keys) * tile_width + (len(keys) - 1) * GAP
    band = Image.new("RGB", (width, TITLE_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    font = ImageFont.load_default()

    def fits(key: str) -> bool:
        left, _, right, _ = draw.textbbox((0, 0), TITLES[key], font=font)
        return right - left <= tile_width

    for i, key in enumerate(keys):
        pair = ("raises", "lowers") if key in ("raises", "lowers") else (key,)
        title = TITLES[key] if all(fits(k) for k in pair) else SHORT_TITLES[key]
        left, top, right, bottom = draw.textbbox((0, 0), title, font=font)
        x = i * (tile_width + GAP) + (tile_width - (right - left)) // 2 - left
        y = (TITLE_HEIGHT - (bottom - top)) // 2 - top
        draw.text((x, y), title, fill=(0, 0, 0), font=font)
    arr = np.asarray(band).copy()
    arr.setflags(write=False)
    return arr


def panel(image: np.ndarray, maps: Mapping[str, np.ndarray], alpha: float = 0.4,
          harm_threshold: float = 0.25, cmap: str = "jet", titles: bool = True,
          keys: Sequence[str] | None = None) -> np.ndarray:
    """Views of one image tiled left to right with small titles: ``(TITLE_HEIGHT + H, W_total, 3)`` uint8.

    ``maps`` holds one image's maps (see :func:`views`; ``keys`` picks the
    views); tiles are separated by :data:`GAP` white pixels.
    """
    tiles = views(image, maps, alpha, harm_threshold, cmap, keys)
    keys = [k for k in _VIEW_ORDER if k in tiles]
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


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 array: 8-bit RGB, "Up" filter on every row, zlib RLE.

    A minimal encoder because speed matters here: Pillow tries four filters
    on every row and then runs full deflate, ~3x slower for the same file size
    on panels. One vectorised filter plus run-length deflate (libpng's fast
    setting) keeps encoding near the cost of composing the panel. Same array,
    same bytes.
    """
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"PNG array must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    rows = arr.reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above (0 above the first row)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = deflate.compress(filtered.tobytes()) + deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, filter 0, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def save_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 array as PNG (:func:`encode_png`) atomically."""
    write_bytes(path, encode_png(arr))


# --------------------------------------------------------------------------- gallery (matplotlib)


def dual_key(n: int = 65) -> np.ndarray:
    """``(n, n, 3)`` uint8 legend of the dual view: x = direction -1..1, y = helpfulness 1..-1 (top to bottom)."""
    d = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    grid_d = np.broadcast_to(d[None, :], (n, n))
    grid_h = np.broadcast_to(d[::-1, None], (n, n))
    white = np.full((n, n, 3), 255, dtype=np.uint8)
    return dual(white, grid_d, grid_h, alpha=1.0)


def gallery_figure(
    path: str | os.PathLike,
    images: Sequence[np.ndarray],
    maps: Sequence[Mapping[str, np.ndarray]],
    row_titles: Sequence[str] | None = None,
    keys: Sequence[str] = ("ais", "direction", "dual", "primary", "gradcam"),
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
    dpi: int = 150,
) -> None:
    """A figure of a few images (rows) and their views (columns) with colour scales; written atomically.

    The format follows the suffix of ``path`` (png, pdf, svg). Signed views get
    a ``bwr`` colourbar on [-1, 1] (0 = white), Grad-CAM views a [0, 1] bar, the
    dual view a 2-D key (direction x helpfulness). Bars show the pure colours;
    the views blend them with the image at ``alpha``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize, TwoSlopeNorm
    from matplotlib.figure import Figure

    if not images:
        raise ValueError("gallery_figure needs at least one image")
    per_image = [views(img, m, alpha, harm_threshold, keys=keys) for img, m in zip(images, maps)]
    columns = ["image"] + [k for k in keys if k in per_image[0]]
    n_rows, n_cols = len(per_image), len(columns)
    fig = Figure(figsize=(2.0 * n_cols, 2.0 * n_rows + 1.0), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows + 1, n_cols, height_ratios=[1.0] * n_rows + [0.3], hspace=0.08, wspace=0.04)
    for r, tiles in enumerate(per_image):
        for c, key in enumerate(columns):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(tiles[key], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(TITLES[key], fontsize=9)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=8)
    signed_cmap = ListedColormap(lut("bwr") / 255.0, name="ais_bwr")
    cam_cmap = ListedColormap(lut("jet") / 255.0, name="ais_jet")
    for c, key in enumerate(columns):
        holder = fig.add_subplot(grid[n_rows, c])
        holder.set_axis_off()
        if key == "image":
            continue
        if key == "dual":
            cax = holder.inset_axes((0.2, 0.0, 0.6, 1.0))
            cax.imshow(dual_key(), extent=(-1, 1, -1, 1), aspect="auto")
            cax.set_xticks([-1, 0, 1], ["lowers", "0", "raises"])
            cax.set_yticks([-1, 1], ["harmful", "helpful"])
            cax.tick_params(labelsize=6, length=2)
            continue
        cax = holder.inset_axes((0.05, 0.55, 0.9, 0.35))
        if key in ("gradcam", "gradcampp"):
            mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cam_cmap)
            ticks = [0.0, 0.5, 1.0]
        elif key in ("primary", "raises"):
            mappable = ScalarMappable(norm=Normalize(0.0, 1.0), cmap=ListedColormap(lut("bwr")[128:] / 255.0))
            ticks = [0.0, 0.5, 1.0]
        elif key == "lowers":
            mappable = ScalarMappable(norm=Normalize(-1.0, 0.0), cmap=ListedColormap(lut("bwr")[:129] / 255.0))
            ticks = [-1.0, -0.5, 0.0]
        else:
            mappable = ScalarMappable(norm=TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0), cmap=signed_cmap)
            ticks = [-1.0, 0.0, 1.0]
        bar = fig.colorbar(mappable, cax=cax, orientation="horizontal", ticks=ticks)
        bar.ax.tick_params(labelsize=6, length=2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.fspath(path).rsplit(".", 1)[-1].lower(), bbox_inches="tight")
