"""The ``ais explain`` command's stage: load a finished run, check new images, write their panels, maps and table.

:func:`run` explains image files and folders with a finished run
(:func:`load_run`) through :class:`ais.explain.Explainer` and writes, in the
output folder:

- ``maps/{file_stem}.npz``: the maps, the image as the model saw it and its id,
  in the format of the workflow's ``results/heatmaps/shard-*/maps``;
- ``panels/{file_stem}.png``: the run's views (``heatmaps.views``) of it;
- ``explain.parquet`` and ``explain.csv``: one row per image
  (:func:`ais.explain.table_schema`); the Parquet file carries the provenance
  stamp, the run, the model's hash, the target layer and what Monte-Carlo
  dropout did.

Like intake, every image is checked before any compute (:func:`ais.images.open_image`
with the run's ``data.max_image_pixels``); bad images stop the command
listing each one (:class:`BadImagesError`), or are skipped (``on_bad_image="skip"``).
A run that is unfinished, or was made by another version, is refused
(:class:`RunError`) with what is missing or different.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ais import io, render
from ais.config import ConfigError, validate_config
from ais.data import derive_image_id
from ais.errors import UserError
from ais.explain import Explainer, LoadedRun, image_maps, image_row, table_schema
from ais.fusion import CHANNELS_SCHEMA
from ais.images import DEFAULT_MAX_PIXELS, BadImageError, open_image
from ais.logs import Progress
from ais.pipeline import iter_batches
from ais.stages import pick_device, stamp
from ais.stages._heatmap_files import image_stems, output_file

logger = logging.getLogger(__name__)

#: The files of a finished run that explaining reads (relative to the results folder).
RUN_FILES = ("model/model.json", "model/model.safetensors", "fusion/channels.parquet", "report/summary.json")


class RunError(UserError):
    """The results folder is not a finished run of this version of ais."""


class BadImagesError(UserError):
    """Some images cannot be used; the message lists each (intake's wording)."""


def run(
    inputs: Sequence[str | os.PathLike],
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    batch_size: int = 8,
    device: Any = None,
    mc_samples: int | None = None,
    seed: int | None = None,
    on_bad_image: str = "error",
    workers: int = 0,
    progress_bar: bool | None = None,
) -> pd.DataFrame:
    """Explain the images ``inputs`` (files, folders searched recursively) with the run in ``run_dir``.

    ``mc_samples`` and ``seed`` default to the run's ``uncertainty.mc_samples``
    and ``seed``; ``progress_bar`` (default: when stderr is a terminal) shows
    a tqdm bar instead of progress lines. Returns the table it wrote.
    """
    loaded = load_run(run_dir, device)
    rows = check_images(find_images(inputs), loaded.config["data"].get("max_image_pixels", DEFAULT_MAX_PIXELS),
                        on_bad_image)
    mc = int(loaded.config["uncertainty"]["mc_samples"] if mc_samples is None else mc_samples)
    seed = int(loaded.config["seed"] if seed is None else seed)
    out_dir = Path(out_dir)
    logger.info("explaining %d image(s) with %s (%s, layer %s, %d units) on %s", len(rows), run_dir,
                loaded.spec["arch"], loaded.layer, loaded.n_units, loaded.device)
    records = []
    with Explainer(loaded, mc, seed) as explainer, _progress(len(rows), progress_bar) as progress:
        if explainer.uncertainty["status"] != "sampled":
            logger.info("Monte-Carlo dropout: not sampled (%s); no mc_* columns", explainer.uncertainty["reason"])
        size, norm = int(loaded.spec["input_size"]), loaded.spec["normalization"]
        for x, views, ids in iter_batches(rows, size, norm, batch_size, ("image_id",), workers, loaded.device,
                                          views=True):
            batch = explainer.explain(x, ids)
            for j in range(len(ids)):
                rec = rows.iloc[len(records)]
                row = image_row(batch, j, loaded.class_names)
                _write_image(out_dir, loaded, rec, views[j], image_maps(batch, j), row)
                records.append({**rec.to_dict(), **row})
            progress.update(len(records))
        info = dict(explainer.uncertainty)
    return _write_table(out_dir, loaded, records, info, run_dir, {"mc_samples": mc, "seed": seed,
                                                                  "batch_size": batch_size})


def load_run(run_dir: str | os.PathLike, device: Any = None) -> LoadedRun:
    """The finished run in ``run_dir`` (a results folder), checked; :class:`RunError` says what is wrong."""
    from ais.families import family_for
    from ais.models import load_trained
    from ais.tasks.classification import task_from_spec

    run_dir = Path(run_dir)
    missing = [f for f in RUN_FILES if not (run_dir / f).is_file()]
    if missing:
        what = "no such folder" if not run_dir.is_dir() else f"missing {', '.join(missing)}"
        raise RunError(f"{run_dir}: not a finished AIS run ({what}); run the workflow to the end "
                       "(snakemake --cores N) and pass its results folder with --run")
    config = run_config(run_dir)
    _check_version(run_dir)
    device = pick_device(device)
    try:
        model, spec = load_trained(run_dir / "model", device)
    except (OSError, ValueError) as exc:
        raise RunError(f"{run_dir}: the trained model cannot be used: {exc}") from None
    task, family = task_from_spec(spec), family_for(spec["arch"])
    layer = family.resolve_layer(model, config["model"]["target_layer"])
    _check_ablation(run_dir, spec, layer)
    n_units = family.n_units(model, layer)
    channels = read_channels(run_dir / "fusion" / "channels.parquet", n_units)
    names = spec.get("classes") or spec.get("class_names") or getattr(task, "classes", None) or ()
    class_names = [str(c) for c in names]
    return LoadedRun(model, spec, family, layer, n_units, task, channels, config, device, class_names)


def run_config(run_dir: Path) -> dict[str, Any]:
    """The run's config (``report/summary.json``'s ``run.config``), validated against this version's schema."""
    path = run_dir / "report" / "summary.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))["run"]["config"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunError(f"{path}: holds no run.config ({type(exc).__name__}: {exc}); "
                       "the run was made by another version of ais: rerun the workflow") from None
    try:
        return validate_config(config, source=str(path))
    except ConfigError as exc:
        raise RunError(f"{path}: the run's config does not fit this version of ais ({exc}); "
                       "rerun the workflow") from None


def _check_version(run_dir: Path) -> None:
    """Refuse a run whose channel scores were written by another ais version (recorded in their provenance)."""
    path = run_dir / "fusion" / "channels.parquet"
    recorded = (io.read_metadata(path).get("provenance") or {}).get("versions", {}).get("ais")
    installed = importlib_metadata.version("ais")
    if recorded != installed:
        raise RunError(f"{path}: written by ais {recorded or 'unknown'}, this is ais {installed}; "
                       "rerun the workflow with this version")


def _check_ablation(run_dir: Path, spec: dict[str, Any], layer: str) -> None:
    """The run's ablation used this model and layer (the first shard's metadata), else the scores do not fit."""
    path = run_dir / "ablation" / "shard-0.parquet"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a finished AIS run (missing ablation/shard-0.parquet)")
    meta = io.read_metadata(path)
    sha = (meta.get("model") or {}).get("weights_sha256")
    if sha != spec.get("weights_sha256") or meta.get("target_layer") != layer:
        raise RunError(f"{path}: ablated model {str(sha)[:12]} layer {meta.get('target_layer')}, but the run's "
                       f"model is {str(spec.get('weights_sha256'))[:12]} layer {layer}; the run is unfinished: "
                       "rerun the workflow")


def read_channels(path: Path, n_units: int) -> pd.DataFrame:
    """The data-set-level channel scores, checked against :data:`ais.fusion.CHANNELS_SCHEMA` and the layer."""
    schema = pq.read_schema(path)
    missing = [f.name for f in CHANNELS_SCHEMA if f.name not in schema.names]
    if missing:
        raise RunError(f"{path}: lacks column(s) {', '.join(missing)}; written by another version of ais: "
                       "rerun the workflow")
    channels = pd.read_parquet(path)
    if len(channels) and int(channels["channel"].max()) >= n_units:
        raise RunError(f"{path}: channel {int(channels['channel'].max())} but the layer has {n_units} units; "
                       "the scores come from another model or layer: rerun the workflow")
    return channels


def find_images(inputs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """``image_id`` and ``path`` of every input: a file as given, a folder's image files (recursive, sorted).

    Ids: :func:`ais.data.derive_image_id` of a file's name, or of its path
    inside the folder given; two inputs with the same id are refused.
    """
    from PIL import Image

    suffixes = {s.lower() for s in Image.registered_extensions()}
    found: list[tuple[str, str]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                           and not any(part.startswith(".") for part in p.relative_to(item).parts))
            if not files:
                raise BadImagesError(f"{item}: no image files in this folder (looked for {', '.join(sorted(suffixes)[:8])}, ...)")
            found += [(derive_image_id(p.relative_to(item).as_posix()), str(p)) for p in files]
        else:
            found.append((derive_image_id(item.name), str(item)))
    if not found:
        raise BadImagesError("no images given")
    rows = pd.DataFrame(found, columns=["image_id", "path"])
    dup = rows[rows["image_id"].duplicated(keep=False)]
    if len(dup):
        raise BadImagesError("images with the same id (rename one, or give the folders separately): "
                             + "; ".join(f"{i}: {', '.join(g['path'])}" for i, g in dup.groupby("image_id")))
    return rows


def check_images(rows: pd.DataFrame, max_pixels: int | None, on_bad_image: str = "error") -> pd.DataFrame:
    """``rows`` with ``width``, ``height`` and ``file_stem``, every image opened as intake opens it.

    Bad images (:class:`ais.images.BadImageError`, intake's messages) raise
    :class:`BadImagesError` listing all of them, or with ``on_bad_image="skip"``
    are logged and dropped.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be error or skip, got {on_bad_image!r}")
    sizes, bad = [], []
    for path in rows["path"]:
        try:
            sizes.append(open_image(path, max_pixels=max_pixels).size)
        except BadImageError as exc:
            sizes.append(None)
            bad.append(str(exc))
    if bad and (on_bad_image == "error" or len(bad) == len(rows)):
        raise BadImagesError(f"{len(bad)} bad image(s); fix or remove them"
                             + (", or pass --on-bad-image skip" if on_bad_image == "error" else "")
                             + ":\n" + "\n".join(f"  {b}" for b in bad))
    for b in bad:
        logger.warning("skipped: %s", b)
    keep = [s is not None for s in sizes]
    out = rows[keep].reset_index(drop=True)
    out["width"] = [s[0] for s in sizes if s is not None]
    out["height"] = [s[1] for s in sizes if s is not None]
    out["file_stem"] = image_stems(out["image_id"].tolist())
    return out


def _write_image(out_dir: Path, loaded: LoadedRun, rec: pd.Series, view: np.ndarray,
                 maps: dict[str, np.ndarray], row: dict[str, Any]) -> None:
    """One image's maps file and panel (the run's views and rendering options; captioned as the workflow's)."""
    heat = loaded.config["heatmaps"]
    io.write_maps(output_file(out_dir / "maps", rec["file_stem"], ".npz"),
                  {**maps, "image": view, "image_id": np.array(rec["image_id"])})
    classes = loaded.class_names or None
    pred_class = classes.index(row["predicted_class"]) if classes and row.get("predicted_class") in classes else None
    text = render.caption(str(rec["image_id"]), "unlabelled", None, row["prediction"], classes=classes,
                          explained=loaded.spec.get("explained_class"), pred_class=pred_class,
                          size=(int(rec["width"]), int(rec["height"])), input_size=view.shape[0])
    arr = render.standalone_panel(view, maps, text, alpha=heat["alpha"], harm_threshold=heat["harm_threshold"],
                                  keys=heat["views"])
    render.save_png(output_file(out_dir / "panels", rec["file_stem"], ".png"), arr)


def _write_table(out_dir: Path, loaded: LoadedRun, records: list[dict[str, Any]], mc_info: dict[str, Any],
                 run_dir: Any, settings: dict[str, Any]) -> pd.DataFrame:
    """``explain.parquet`` (stamped) and ``explain.csv``: one row per image."""
    schema = table_schema(loaded, mc_info["status"] == "sampled")
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in records], schema=schema)
    metadata = {**stamp(loaded.config, explain={**settings, "run": str(run_dir), "device": str(loaded.device)}),
                "model": {"weights_sha256": loaded.spec.get("weights_sha256"), "arch": loaded.spec.get("arch"),
                          "task": loaded.task.name},
                "target_layer": loaded.layer, "uncertainty": mc_info}
    io.write_table(out_dir / "explain.parquet", table, schema, metadata)
    frame = table.to_pandas()
    with io.atomic_path(out_dir / "explain.csv") as tmp:
        frame.to_csv(tmp, index=False)
    logger.info("wrote %d explanation(s) to %s (explain.parquet, explain.csv, maps/, panels/)", len(frame), out_dir)
    return frame


class _Bar:
    """A tqdm bar driven like :class:`ais.logs.Progress` (``update(done)``)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="image", desc="explain", file=sys.stderr)

    def update(self, done: int) -> None:
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class _Lines(Progress):
    def __enter__(self) -> "_Lines":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _progress(total: int, bar: bool | None) -> _Bar | _Lines:
    """A tqdm bar on a terminal (or when ``bar``), else progress lines."""
    if bar if bar is not None else sys.stderr.isatty():
        return _Bar(total)
    return _Lines(total, "explain: images", logger)
