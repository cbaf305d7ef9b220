"""The gallery: a matplotlib figure of a few images (rows) and their views (columns) with colour scales."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from ais.io import atomic_path
from ais.render.canvas import dual
from ais.render.colours import lut
from ais.render.panel import title, views
from ais.views import get_view


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
                ax.set_title(title(key), fontsize=9)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=8)
    for c, key in enumerate(columns):
        holder = fig.add_subplot(grid[n_rows, c])
        holder.set_axis_off()
        if key != "image":
            _colour_bar(fig, holder, get_view(key).scale)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.fspath(path).rsplit(".", 1)[-1].lower(), bbox_inches="tight")


def _colour_bar(fig: Any, holder: Any, scale: str) -> None:
    """The colour bar (or the dual view's 2-D key) of a gallery column, from its view's colour scale."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize, TwoSlopeNorm

    if scale == "dual":
        cax = holder.inset_axes((0.2, 0.0, 0.6, 1.0))
        cax.imshow(dual_key(), extent=(-1, 1, -1, 1), aspect="auto")
        cax.set_xticks([-1, 0, 1], ["lowers", "0", "raises"])
        cax.set_yticks([-1, 1], ["harmful", "helpful"])
        cax.tick_params(labelsize=6, length=2)
        return
    bars = {
        "unit": (Normalize(0.0, 1.0), ListedColormap(lut("jet") / 255.0, name="ais_jet"), [0.0, 0.5, 1.0]),
        "positive": (Normalize(0.0, 1.0), ListedColormap(lut("bwr")[128:] / 255.0), [0.0, 0.5, 1.0]),
        "negative": (Normalize(-1.0, 0.0), ListedColormap(lut("bwr")[:129] / 255.0), [-1.0, -0.5, 0.0]),
        "signed": (TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0), ListedColormap(lut("bwr") / 255.0, name="ais_bwr"),
                   [-1.0, 0.0, 1.0]),
    }
    norm, cmap, ticks = bars[scale]
    cax = holder.inset_axes((0.05, 0.55, 0.9, 0.35))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal", ticks=ticks)
    bar.ax.tick_params(labelsize=6, length=2)
