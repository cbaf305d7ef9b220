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
|value| (:func:`ais.methods.compute_maps`), and values outside the range are
clipped.

Modules: :mod:`~ais.render.colours` (lookup tables), :mod:`~ais.render.canvas`
(blending), :mod:`~ais.render.panel` (panels), :mod:`~ais.render.png` (the
encoder), :mod:`~ais.render.gallery` (the matplotlib figure).

The views a panel tiles, their titles and colour scales are declared in
:mod:`ais.views`; this module draws them on a :class:`Canvas` (``overlay``,
``dual``, ``primary``).
"""

from ais.render.canvas import (
    OUTLINE_GREY,
    Canvas,
    blend,
    dual,
    outline,
    overlay,
    overlay_cam,
    overlay_negative,
    overlay_positive,
    primary,
    resize_map,
    upsample,
)
from ais.render.colours import (
    SEQUENTIAL_LUT_SIZE,
    SIGNED_LUT_SIZE,
    colorize,
    lut,
    signed_index,
    unsigned_index,
)
from ais.render.gallery import dual_key, gallery_figure
from ais.render.panel import (
    GAP,
    MIN_TILE,
    TITLE_HEIGHT,
    Caption,
    caption,
    panel,
    short_ids,
    standalone_panel,
    title,
    views,
)
from ais.render.png import encode_png, save_png

__all__ = [
    "GAP", "MIN_TILE", "OUTLINE_GREY", "SEQUENTIAL_LUT_SIZE", "SIGNED_LUT_SIZE", "TITLE_HEIGHT", "Canvas", "Caption",
    "blend", "caption", "colorize", "dual", "dual_key", "encode_png", "gallery_figure", "lut", "outline", "overlay",
    "overlay_cam", "overlay_negative", "overlay_positive", "panel", "primary", "resize_map", "save_png", "short_ids",
    "signed_index", "standalone_panel", "title", "unsigned_index", "upsample", "views",
]
