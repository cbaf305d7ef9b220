"""Files the heatmap stages share: per-image file names, the demo's masks, the figures tables.

Per ablation shard ``i`` the maps live in ``results/heatmaps/shard-{i}/maps/{file_stem}.npz``
and the panels in ``.../panels/{file_stem}.png``; file stems come from image
ids through :func:`ais.data.file_stem` and are checked by :func:`output_file`
to stay inside their folder, whatever the id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ais import io
from ais.data import file_stem
from ais.tables import HEATMAP_SCHEMA


def output_file(folder: str | os.PathLike, stem: str, suffix: str) -> Path:
    """``folder / (stem + suffix)``, refusing any name that would leave ``folder``.

    ``stem`` should come from :func:`ais.data.file_stem`; this is the last
    check before a file is written (separators, ``..``, empty or hidden names
    and NUL bytes are refused).
    """
    name = f"{stem}{suffix}"
    folder = Path(folder)
    bad = (not stem or "/" in name or "\\" in name or "\x00" in name or name.startswith(".")
           or stem in (".", ".."))
    path = folder / name
    if bad or path.resolve().parent != folder.resolve():
        raise ValueError(f"refusing output file name {name!r}: it would leave {folder}")
    return path


def image_stems(image_ids: Sequence[str]) -> list[str]:
    """File stems of ``image_ids`` (:func:`ais.data.file_stem`), checked to be unique regardless of case.

    Two stems that differ only by case would overwrite each other's files on
    a case-insensitive file system (macOS, Windows), so they count as the same.
    """
    stems = [file_stem(str(i)) for i in image_ids]
    seen: dict[str, tuple[str, str]] = {}
    for image_id, stem in zip(image_ids, stems):
        key = stem.casefold()
        if key in seen:
            other_id, other = seen[key]
            raise ValueError(f"image ids {other_id!r} and {image_id!r} map to the same file name {stem!r}"
                             + ("" if other == stem else f" on a case-insensitive file system ({other!r})"))
        seen[key] = (image_id, stem)
    return stems


def load_region_masks(path: str | os.PathLike, size: tuple[int, int], image_id: str = "?") -> dict[str, np.ndarray]:
    """The demo's raise/lower-realism masks of one image at ``size`` = (H, W) (nearest-neighbour resize)."""
    from PIL import Image

    from ais.demo import load_mask

    try:
        masks = load_mask(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"image {image_id}: cannot read its mask {path} ({type(exc).__name__}: {exc})") from exc
    out = {}
    for key in ("raise", "lower"):
        m = masks[key]
        if m.shape != tuple(size):
            im = Image.fromarray(m.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
            m = np.asarray(im) > 127
        out[key] = m
    return out


def write_figures(path: str | os.PathLike, table: pd.DataFrame, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a per-image figures table (:data:`ais.tables.HEATMAP_SCHEMA`; NaN stored as null) atomically."""
    arrow = pa.Table.from_pandas(table, preserve_index=False) if len(table) else HEATMAP_SCHEMA.empty_table()
    io.write_table(path, arrow, HEATMAP_SCHEMA, metadata)


def read_image_maps(maps_dir: str | os.PathLike, stem: str, image_id: str, source: str) -> dict[str, np.ndarray]:
    """One image's maps file, checked to hold ``image_id`` (``source``: the table that named it)."""
    data = io.read_maps(output_file(maps_dir, stem, ".npz"))
    if str(data.get("image_id")) != image_id:
        raise ValueError(f"{maps_dir}/{stem}.npz holds image {data.get('image_id')!s}, expected {image_id} "
                         f"({source}); rerun compute_heatmaps")
    return data
