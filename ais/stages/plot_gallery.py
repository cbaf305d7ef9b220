"""Rule plot_gallery: the gallery figure of the best-, median- and worst-predicted images, and its selection.

Writes ``gallery.png`` (:func:`ais.render.gallery_figure`) and
``gallery.json``: ``{"n_per_group", "groups": {group: [image ids]},
"provenance"}``, the images the figure shows (the report reads it rather than
choosing again).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import pandas as pd

from ais import io, render
from ais.map_figures import GALLERY_GROUPS, gallery_selection
from ais.stages import job, stamp
from ais.stages._heatmap_files import read_image_maps
from ais.views import list_views

logger = logging.getLogger(__name__)


def run(
    agreement_path: str | os.PathLike,
    maps_dirs: Mapping[int, str | os.PathLike],
    out_path: str | os.PathLike,
    out_selection: str | os.PathLike | None = None,
    n_per_group: int = 3,
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
    views: Sequence[str] | None = None,
) -> list[tuple[str, str]]:
    """Draw the gallery (``maps_dirs``: shard index -> maps folder) and write its selection; returns it.

    With no image to show, the figure says so.
    """
    table = pd.read_parquet(agreement_path)
    chosen = gallery_selection(table, n_per_group)
    by_id = table.set_index("image_id")
    images, maps, titles = [], [], []
    for group, image_id in chosen:
        rec = by_id.loc[image_id]
        data = read_image_maps(maps_dirs[int(rec["shard"])], rec["file_stem"], image_id, str(agreement_path))
        images.append(data["image"])
        maps.append(data)
        titles.append(_row_title(group, image_id, rec))
        logger.info("gallery: %s %s (y_true %s, y_pred %.3f)", group, image_id, rec["y_true"], rec["y_pred"])
    keys = tuple(views if views is not None else list_views())
    if images:
        render.gallery_figure(out_path, images, maps, row_titles=titles, keys=keys, alpha=alpha,
                              harm_threshold=harm_threshold)
    else:
        _empty_figure(out_path, "no images with heatmaps" if len(table) else "no images were ablated")
    if out_selection is not None:
        io.write_json(out_selection, {"n_per_group": n_per_group, "groups": _groups(chosen), **stamp()})
    return chosen


def _row_title(group: str, image_id: str, rec: pd.Series) -> str:
    truth = f"y {rec['y_true']:.2f}, " if pd.notna(rec["y_true"]) else "unlabelled, "
    label = image_id if len(image_id) <= 18 else image_id[:8] + "…" + image_id[-8:]
    return f"{group}\n{label}\n{truth}ŷ {rec['y_pred']:.2f}"


def _groups(chosen: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """The selection by group, in the figure's order (the best/highest group first)."""
    groups = dict.fromkeys(group for group, _ in chosen) or dict.fromkeys(GALLERY_GROUPS)
    return {group: [i for g, i in chosen if g == group] for group in groups}


def _empty_figure(path: str | os.PathLike, text: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 1), dpi=100)
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, text, ha="center", va="center")
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def main(smk: Any) -> None:
    with job(smk):
        opts = smk.params.render
        run(smk.input.table, dict(enumerate(smk.input.maps)), smk.output.gallery, smk.output.selection,
            n_per_group=smk.params.gallery, alpha=opts["alpha"], harm_threshold=opts["harm_threshold"],
            views=opts["views"])
