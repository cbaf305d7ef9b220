"""Rule build_browser: ``results/report/browser.html``, its data file and the table's thumbnails.

Reads the per-image figures table (``agreement.parquet``: one row per
explained image), and where they exist the predictions (uncertainty,
classes and probabilities), the fused scores (each image's top channels),
the validity stage's ``faithfulness.parquet`` and the model's spec (class
names). It writes the page (:func:`ais.reporting.browser.browser_page`),
``browser-data.js`` (:func:`ais.reporting.browser.browser_data`) and one
small JPEG per image, the model's view of it, into ``thumbs/shard-{i}/``.
The panels are the existing PNGs, linked relative to the page.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ais import io
from ais.logs import Progress
from ais.reporting import browser
from ais.stages import job, stamp

logger = logging.getLogger(__name__)

THUMB_SIZE = 64  # px, the longer side
THUMB_QUALITY = 80


def run(figures: str | os.PathLike, out_html: str | os.PathLike, out_data: str | os.PathLike,
        thumbs_dir: str | os.PathLike, panel_dirs: Sequence[str] = (), maps_dirs: Sequence[str] = (),
        predictions: str | None = None, scores: str | None = None, faithfulness: str | None = None,
        spec: str | None = None, views: Sequence[str] | None = None, config: Mapping[str, Any] | None = None,
        top_k: int = 3) -> int:
    """Write the browser, its data and its thumbnails; return the number of images (rows).

    ``panel_dirs`` / ``maps_dirs`` are the per-shard folders
    ``.../shard-{i}/panels`` and ``.../shard-{i}/maps``; the optional
    tables are left out when ``None`` or missing on disk.
    """
    t0 = time.perf_counter()
    table = pd.read_parquet(figures)
    table = browser.merge_tables(table, _optional_table(predictions), _optional_table(faithfulness))
    model = _read_json(spec) if spec and Path(spec).is_file() else {}
    classes = model.get("classes")
    score_table = _optional_table(scores, columns=["image_id", "channel", "ais_score", "delta_prediction"])
    top = browser.top_channels(score_table, top_k) if score_table is not None else {}
    page_dir = Path(out_html).parent
    data = browser.browser_data(
        table, _relative({_shard_of(d): d for d in panel_dirs}, page_dir),
        _relative(_thumb_dirs(table, thumbs_dir), page_dir), top,
        browser.view_legend(views), classes,
        meta={"explained_class": model.get("explained_class"), "task": model.get("task", "regression"),
              **stamp(config)})
    write_thumbnails(table, maps_dirs, thumbs_dir)
    io.write_text(out_data, browser.encode_data(data))
    io.write_text(out_html, browser.browser_page("AIS heatmap browser", Path(out_data).name))
    logger.info("browser of %d image(s), %d column(s) written to %s in %.1f s", len(table), len(data["columns"]),
                out_html, time.perf_counter() - t0)
    return len(table)


def main(smk: Any) -> None:
    """The rule's script: Snakemake's input, output and params onto :func:`run`."""
    with job(smk):
        inp, out, params = smk.input, smk.output, smk.params
        run(inp.figures, out.html, out.data, out.thumbs, panel_dirs=list(inp.panels), maps_dirs=list(inp.maps),
            predictions=inp.predictions, scores=inp.scores, spec=inp.spec,
            faithfulness=inp.faithfulness[0] if len(inp.faithfulness) else None,
            views=params.views, config=dict(params.config))


def write_thumbnails(table: pd.DataFrame, maps_dirs: Sequence[str], thumbs_dir: str | os.PathLike) -> None:
    """One JPEG per image (:data:`THUMB_SIZE` px) of the model's view stored in its maps file; atomically.

    ``thumbs_dir/shard-{i}/{file_stem}.jpg``; an image whose maps file is
    missing gets no thumbnail (the page shows an empty square).
    """
    from PIL import Image

    from ais.stages._heatmap_files import output_file

    by_shard = {_shard_of(d): Path(d) for d in maps_dirs}
    progress = Progress(len(table), "thumbnails", logger)
    with io.atomic_dir(thumbs_dir) as tmp:
        for n, (shard, stem) in enumerate(zip(table["shard"].astype(int), table["file_stem"].astype(str)), 1):
            folder = by_shard.get(shard)
            source = folder / f"{stem}.npz" if folder is not None else None
            if source is None or not source.is_file():
                continue
            with np.load(source, allow_pickle=False) as maps:  # only the image member is decompressed
                image = Image.fromarray(np.asarray(maps["image"], dtype=np.uint8))
            scale = THUMB_SIZE / max(image.size)  # up or down: small inputs too fill the table's square
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
            out = output_file(Path(tmp) / f"shard-{shard}", stem, ".jpg")
            out.parent.mkdir(exist_ok=True)
            image.save(out, format="JPEG", quality=THUMB_QUALITY)
            progress.update(n)


def _thumb_dirs(table: pd.DataFrame, thumbs_dir: str | os.PathLike) -> dict[int, str]:
    shards = sorted(set(table["shard"].astype(int))) if "shard" in table else [0]
    return {s: str(Path(thumbs_dir) / f"shard-{s}") for s in shards}


def _shard_of(folder: str | os.PathLike) -> int:
    """The shard number of ``.../shard-{i}/<name>``."""
    parent = Path(folder).parent.name
    if not parent.startswith("shard-") or not parent[6:].isdigit():
        raise ValueError(f"{folder}: expected a per-shard folder .../shard-<i>/{Path(folder).name}")
    return int(parent[6:])


def _relative(folders: Mapping[int, str], page_dir: Path) -> dict[int, str]:
    """Per shard, its folder relative to the page, ending in ``/`` (URL path separators)."""
    return {shard: Path(os.path.relpath(Path(folder).resolve(), page_dir.resolve())).as_posix().rstrip("/") + "/"
            for shard, folder in folders.items()}


def _optional_table(path: str | None, columns: Sequence[str] | None = None) -> pd.DataFrame | None:
    if not path or not Path(path).is_file():
        return None
    if columns is None:
        return pd.read_parquet(path)
    import pyarrow.parquet as pq

    present = set(pq.read_schema(path).names)
    return pd.read_parquet(path, columns=[c for c in columns if c in present])


def _read_json(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
