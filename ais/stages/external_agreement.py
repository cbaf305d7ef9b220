"""Rule external_agreement: every method's maps against external saliency maps (``heatmaps.external``).

``heatmaps.external`` is a folder with one map per image, ``<image id>.png`` or
``.npy`` (or the image's file stem, :func:`ais.data.file_stem`), any size: a
saliency model's output (e.g. TranSalNet) or a human fixation density. Each is
resized onto the grid of the run's maps (:mod:`ais.validity.saliency`). For
every image with maps (``results/heatmaps/shard-*/maps``), every map array and
part (``all`` for an unsigned map; ``abs``, ``pos``, ``neg`` for a signed one)
and a centre-bias baseline (``centre``: a Gaussian at the image centre, the
classic floor for saliency agreement), the table
``results/validity/external.parquet`` (:data:`EXTERNAL_SCHEMA`) holds CC, SIM,
KLD, NSS, AUC-Judd and the shuffled AUC.

Fixations: from ``heatmaps.external_fixations`` (binary or count maps) when
given, else from the external map itself when it is binary; NSS, AUC-Judd
and sAUC use them. Without points (a continuous density), NSS is the
density-weighted NSS and AUC-Judd / sAUC are null (``fixations`` says which).

An image whose external map (or fixation map) is missing, ambiguous or
unreadable keeps its rows (every map and part) with ``status`` ``missing`` /
``unreadable``, the reason and null metrics, and is listed in the log and the
table's metadata: never skipped silently. A folder that does not exist stops the rule before anything is read.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from ais import io
from ais.errors import UserError
from ais.logs import Progress
from ais.methods import get_method, list_methods, map_keys
from ais.stages import job, stamp
from ais.stages._heatmap_files import read_image_maps
from ais.tables import HEATMAP_SCHEMA
from ais.validity import saliency

logger = logging.getLogger(__name__)

METRICS = ("cc", "sim", "kld", "nss", "auc_judd", "sauc")
CENTRE = "centre"

EXTERNAL_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("map", pa.string(), nullable=False),  # the judged map array, or centre (the baseline)
        pa.field("part", pa.string(), nullable=False),  # all | abs | pos | neg
        pa.field("fixations", pa.string(), nullable=True),  # points | binary map | density
        pa.field("n_fixations", pa.int64(), nullable=False),
        *[pa.field(m, pa.float64(), nullable=True) for m in METRICS],
        pa.field("status", pa.string(), nullable=False),  # ok | missing | unreadable
        pa.field("reason", pa.string(), nullable=False),  # why not ok ("" when ok)
    ]
)


def check_folder(folder: str | os.PathLike | None, key: str) -> Path | None:
    """``folder`` as a Path after checking it is an existing folder (``UserError`` naming ``key``), or None."""
    if folder is None:
        return None
    path = Path(folder)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserError(f"heatmaps.{key}: '{folder}' {what}; give the folder holding one <image id>.png or .npy "
                        "map per image")
    return path


def map_signs(names: Sequence[str]) -> dict[str, bool]:
    """Per map array: signed (judged by its abs / pos / neg parts) or not, from the method registry.

    A map scored by ``pos`` / ``neg`` localisation parts is signed, one scored
    by ``all`` is not; any other map follows its method's ``signed``.
    """
    out: dict[str, bool] = {}
    for method in map(get_method, list_methods()):
        parts: dict[str, set[str]] = {}
        for name, part, _ in method.localization.values():
            parts.setdefault(name, set()).add(part)
        for name in method.map_names():
            out[name] = bool(parts[name] - {"all"}) if name in parts else bool(method.signed)
    return {n: out.get(n, True) for n in names}


def centre_map(size: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """A Gaussian centre-bias map (H, W): standard deviation ``sigma`` x each side."""
    ys = (np.arange(size[0]) + 0.5) / size[0] - 0.5
    xs = (np.arange(size[1]) + 0.5) / size[1] - 0.5
    return np.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))


@dataclass
class _Reference:
    """One image's external map on the grid, its fixations and where they came from; or why there is none."""

    q: np.ndarray | None = None
    fixations: saliency.Fixations | None = None
    source: str = "density"
    status: str = "ok"
    reason: str = ""


def _reference(image_id: str, stem: str, folder: Path, fix_folder: Path | None, size: tuple[int, int]) -> _Reference:
    path, why = saliency.find_map(folder, image_id, stem)
    if path is None:
        return _Reference(status="missing" if why.startswith("no ") else "unreadable", reason=why)
    try:
        raw = saliency.read_array(path)
        ref = _Reference(q=saliency.resize_map(raw, size))
        if fix_folder is not None:
            fix_path, why = saliency.find_map(fix_folder, image_id, stem)
            if fix_path is None:
                return _Reference(status="missing" if why.startswith("no ") else "unreadable",
                                  reason=f"fixations: {why}")
            ref.fixations, ref.source = saliency.read_fixations(fix_path, size), "points"
        elif saliency.is_binary(raw):
            ref.fixations, ref.source = saliency.points_on_grid(raw, size), "binary map"
        return ref
    except ValueError as exc:
        return _Reference(status="unreadable", reason=str(exc))


def _judged(signs: Mapping[str, bool]) -> list[tuple[str, str]]:
    """The (map, part) pairs of every image's rows: each map's parts, then the centre baseline."""
    parts = {True: ("abs", "pos", "neg"), False: ("all",)}
    return [(name, part) for name, signed in signs.items() for part in parts[signed]] + [(CENTRE, "all")]


def _image_rows(image_id: str, maps: Mapping[str, np.ndarray], ref: _Reference, signs: Mapping[str, bool],
                other: saliency.Fixations | None) -> list[dict[str, Any]]:
    n_fix = len(ref.fixations[0]) if ref.fixations is not None else 0
    judged = [(name, part, m) for name in signs for part, m in saliency.map_parts(maps[name], signs[name]).items()]
    judged.append((CENTRE, "all", centre_map(ref.q.shape)))
    return [{"image_id": image_id, "map": name, "part": part, "fixations": ref.source, "n_fixations": n_fix,
             **saliency.agreement(m, ref.q, ref.fixations, other), "status": "ok", "reason": ""}
            for name, part, m in judged]


def _figures(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    table = ds.dataset([os.fspath(p) for p in paths], format="parquet", schema=HEATMAP_SCHEMA).to_table()
    return table.to_pandas().sort_values("image_id", kind="stable").reset_index(drop=True)


def run(
    figures_paths: Sequence[str | os.PathLike],
    maps_dirs: Sequence[str | os.PathLike],
    external: str | os.PathLike,
    out_path: str | os.PathLike,
    fixations: str | os.PathLike | None = None,
    config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Score every image's maps against its external map; write and return the table (see the module docstring).

    ``maps_dirs[i]`` is the maps folder of shard ``i`` (figures' ``shard`` column).
    """
    folder, fix_folder = check_folder(external, "external"), check_folder(fixations, "external_fixations")
    figures = _figures(figures_paths)
    if figures.empty:
        raise UserError("external_agreement: the run has no image with maps to compare")
    first = read_image_maps(maps_dirs[int(figures["shard"].iloc[0])], figures["file_stem"].iloc[0],
                            figures["image_id"].iloc[0], "figures.parquet")
    size = tuple(first["image"].shape[:2])
    refs = {r.image_id: _reference(r.image_id, r.file_stem, folder, fix_folder, size) for r in figures.itertuples()}
    points = {k: r.fixations for k, r in refs.items() if r.fixations is not None}
    names = [n for n in map_keys() if n in first]
    signs = map_signs(names)
    rows: list[dict[str, Any]] = []
    progress = Progress(len(figures), "images", logger, every=30.0)
    for done, r in enumerate(figures.itertuples(), start=1):
        ref = refs[r.image_id]
        if ref.status != "ok":  # one row per judged map and part, so that every map's rows list the image
            rows += [{"image_id": r.image_id, "map": name, "part": part, "n_fixations": 0, "status": ref.status,
                      "reason": ref.reason} for name, part in _judged(signs)]
        else:
            maps = read_image_maps(maps_dirs[int(r.shard)], r.file_stem, r.image_id, "figures.parquet")
            rows += _image_rows(r.image_id, maps, ref, signs, saliency.other_fixations(points, r.image_id))
        progress.update(done)
    table = pd.DataFrame(rows, columns=EXTERNAL_SCHEMA.names)
    _write(table, out_path, refs, folder, fix_folder, config)
    return table


def _write(table: pd.DataFrame, out_path: Any, refs: Mapping[str, _Reference], folder: Path,
           fix_folder: Path | None, config: Mapping[str, Any] | None) -> None:
    problems = {k: f"{r.status}: {r.reason}" for k, r in refs.items() if r.status != "ok"}
    if problems:
        shown = "; ".join(f"{k} ({v})" for k, v in list(problems.items())[:20])
        logger.warning("external maps: %d of %d image(s) not scored: %s%s", len(problems), len(refs), shown,
                       " ..." if len(problems) > 20 else "")
    ok = table[(table["status"] == "ok") & (table["map"] != CENTRE)]
    for (name, part), g in ok.groupby(["map", "part"], sort=False):
        logger.info("external agreement %s/%s: CC %.3f, NSS %.3f, AUC-Judd %.3f (%d images)", name, part,
                    g["cc"].mean(), g["nss"].mean(), g["auc_judd"].mean(), len(g))
    table["n_fixations"] = table["n_fixations"].fillna(0).astype(np.int64)
    meta = {**stamp(config), "ais_external": {"folder": str(folder), "fixations": str(fix_folder) if fix_folder else None,
                                              "n_images": len(refs), "n_scored": len(refs) - len(problems),
                                              "not_scored": problems}}
    io.write_table(out_path, pa.Table.from_pandas(table, preserve_index=False), EXTERNAL_SCHEMA, meta)


def main(smk: Any) -> None:
    with job(smk):
        p = smk.params
        run(list(smk.input.figures), list(smk.input.maps), p.external, smk.output[0], fixations=p.fixations,
            config={"heatmaps": {"external": p.external, "external_fixations": p.fixations}, "seed": p.seed})
