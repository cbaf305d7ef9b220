"""Rule validity: which map to trust, measured for every map method of the run.

Reads the maps that compute_heatmaps wrote (:func:`ais.io.read_maps`) for up
to ``validity.max_images`` of the mapped (ablated) images, a seeded choice,
and writes to ``results/validity/``:

- ``faithfulness.parquet`` (:data:`ais.tables.FAITHFULNESS_SCHEMA`): RISE
  deletion / insertion per image, map and sign, with the random and the
  all-equal map (:mod:`ais.validity.faithfulness`);
- ``sanity.parquet`` (:data:`ais.tables.SANITY_SCHEMA`): cascading
  randomisation, per image, map and depth, for ``validity.sanity_images`` of
  those images (:mod:`ais.validity.sanity`);
- ``summary.json``: per map the mean AUCs and gains with bootstrap
  intervals, the random baseline's values, the similarity at the top and the
  deepest depth, localisation (pointing game, relevance mass) on the demo's
  masks, agreement with external maps, a verdict (:mod:`ais.validity.verdict`);
  and for the run: the pruning summary, what the helpfulness sign reduces to,
  exact ablation against its first-order Taylor estimate, and the degenerate
  warnings (also logged as warnings).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from ais import io
from ais.data import read_manifest
from ais.families import family_for
from ais.methods import configured_methods, get_method
from ais.models import load_trained
from ais.pipeline import iter_batches
from ais.stages import job, pick_device, stamp
from ais.stages._heatmap_files import load_region_masks, read_image_maps
from ais.tables import FAITHFULNESS_SCHEMA, SANITY_SCHEMA
from ais.tasks.classification import task_from_spec
from ais.validity import faithfulness as fa
from ais.validity import measures
from ais.validity.sanity import cascading_randomisation
from ais.validity.verdict import faithfulness_summary, sanity_summary, verdict

logger = logging.getLogger(__name__)


@dataclass
class _Images:
    """The evaluated images: figures rows, their input tensors and maps."""

    rows: pd.DataFrame  # agreement-table rows (image_id, shard, file_stem, y_true, y_pred, ...), image-id order
    x: torch.Tensor  # (N, 3, H, W) on the device
    maps: dict[str, np.ndarray]  # map name -> (N, H, W) float32
    masks: list[dict[str, np.ndarray] | None]  # the demo's raise / lower masks per image


def run(
    figures_path: str | os.PathLike,
    maps_dirs: Sequence[str | os.PathLike],
    manifest_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    target_layer: str,
    config: Mapping[str, Any],
    scores_path: str | os.PathLike | None = None,
    predictions_path: str | os.PathLike | None = None,
    pruning_path: str | os.PathLike | None = None,
    external_path: str | os.PathLike | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Faithfulness, sanity checks and the summary of the run's maps into ``out_dir``; returns the summary.

    ``config`` holds the sections ``validity``, ``heatmaps``, ``fusion`` and ``seed``.
    """
    started = time.perf_counter()
    cfg, seed = dict(config["validity"]), int(config.get("seed", 0))
    device = pick_device(device)
    model, spec = load_trained(model_dir, device)
    family = family_for(spec["arch"])
    layer = family.resolve_layer(model, target_layer)
    task = task_from_spec(spec)  # classification: the explained class, as compute_heatmaps
    methods = configured_methods(config.get("heatmaps", {}).get("optional_methods", ()))
    images = _load_images(figures_path, maps_dirs, manifest_path, spec, methods, cfg, seed, device)
    methods = [m for m in methods if any(k in images.maps for k in get_method(m).map_names())]  # that apply
    logger.info("validity: %d image(s), %d map(s), %d steps, on %s", len(images.rows), len(images.maps),
                cfg["steps"], device)
    faith = _faithfulness(model, task, images, methods, layer, family, cfg, seed)
    n_sanity = min(int(cfg["sanity_images"]), len(images.rows))
    sanity = cascading_randomisation(
        model, layer, images.x[:n_sanity], images.rows["y_true"].to_numpy(np.float64)[:n_sanity],
        images.rows["image_id"].tolist()[:n_sanity], methods, task, family, config.get("fusion", {}),
        config.get("heatmaps", {}), seed, int(cfg["batch_size"])) if n_sanity else pd.DataFrame()
    signed = {k: get_method(m).signed for m in methods for k in get_method(m).map_names()}
    inputs = measures.Inputs(model=model, layer=layer, task=task, x=images.x, rows=images.rows, maps=images.maps,
                             masks=images.masks, signed=signed, scores=_table(scores_path),
                             predictions=_table(predictions_path), pruning=_table(pruning_path),
                             external=_table(external_path), extra_warnings=_scale_warning(faith))
    summary = _summary(faith, sanity, measures.collect(inputs, int(cfg["bootstrap"]), seed), cfg, seed, len(images.rows))
    _write(out_dir, faith, sanity, summary, config, layer, spec)  # no timings inside: same inputs, same bytes
    logger.info("validity: done in %.1f s", time.perf_counter() - started)
    return summary


def _load_images(figures_path: Any, maps_dirs: Sequence[Any], manifest_path: Any, spec: Mapping[str, Any],
                 methods: Sequence[str], cfg: Mapping[str, Any], seed: int, device: torch.device) -> _Images:
    """The evaluated images: a seeded choice of ``max_images`` mapped images, their inputs, maps and masks."""
    figures = pd.read_parquet(figures_path)
    if not len(figures):
        raise ValueError(f"{figures_path}: no mapped images; validity needs the maps of compute_heatmaps")
    rows = _choose(figures, int(cfg["max_images"]), seed)
    manifest = read_manifest(manifest_path).set_index("image_id")
    missing = sorted(set(rows["image_id"]) - set(manifest.index))
    if missing:
        raise ValueError(f"{figures_path}: image ids not in {manifest_path}: {missing[:5]}; rerun the workflow")
    per_image = [_image_maps(maps_dirs, r, figures_path) for r in rows.itertuples(index=False)]
    names = _present(per_image, methods, rows)
    maps = {k: np.stack([p[k] for p in per_image]) for k in names}
    size = int(spec["input_size"])
    if maps[names[0]].shape[1:] != (size, size):
        raise ValueError(f"maps are {maps[names[0]].shape[1:]} but the model's input is {size} px; "
                         "rerun compute_heatmaps with this model")
    mrows = manifest.loc[rows["image_id"]].reset_index()
    x = torch.cat([b[0] for b in iter_batches(mrows, size, spec["normalization"], int(cfg["batch_size"]),
                                              device=device)])
    masks = [load_region_masks(m, (size, size), i) if isinstance(m, str) and m else None
             for i, m in zip(mrows["image_id"], mrows["mask"])]
    return _Images(rows=rows, x=x, maps=maps, masks=masks)


def _choose(figures: pd.DataFrame, max_images: int, seed: int) -> pd.DataFrame:
    """``max_images`` rows chosen with ``seed`` (all when fewer), in image-id order."""
    figures = figures.sort_values("image_id", kind="stable").reset_index(drop=True)
    if len(figures) > max_images:
        keep = np.sort(np.random.default_rng(seed).choice(len(figures), max_images, replace=False))
        figures = figures.iloc[keep].reset_index(drop=True)
    return figures


def _image_maps(maps_dirs: Sequence[Any], row: Any, source: Any) -> dict[str, np.ndarray]:
    shard = int(row.shard)
    if not 0 <= shard < len(maps_dirs):
        raise ValueError(f"{source}: image {row.image_id} is in shard {shard} but {len(maps_dirs)} maps folder(s) "
                         "were given; rerun compute_heatmaps")
    return read_image_maps(maps_dirs[shard], row.file_stem, row.image_id, str(source))


def _present(per_image: Sequence[Mapping[str, Any]], methods: Sequence[str], rows: pd.DataFrame) -> list[str]:
    """The map names of ``methods`` the files hold: a method that wrote no map for any image does not apply.

    A map present for some images and absent for others is refused (the maps come from different runs).
    """
    names = []
    for m in methods:
        for k in get_method(m).map_names():
            have = [k in p for p in per_image]
            if all(have):
                names.append(k)
            elif any(have):
                bad = rows["image_id"][[not h for h in have]].tolist()
                raise ValueError(f"map {k!r} is missing for image(s) {bad[:5]}; rerun compute_heatmaps")
            else:
                logger.info("validity: method %s wrote no map %r (it does not apply to this model)", m, k)
    if not names:
        raise ValueError("the maps files hold none of this run's methods' maps; rerun compute_heatmaps")
    return names


def layer_grid(model: torch.nn.Module, layer: str, x: torch.Tensor, family: Any) -> tuple[int, int] | None:
    """The unit grid ``(h, w)`` of ``layer``'s output for input ``x`` (1, 3, H, W) (``family.to_grid``); None if none."""
    from ais.hooks import Hooks

    kept: dict[str, torch.Tensor] = {}
    hooks = Hooks()
    try:
        hooks.keep_output(model.get_submodule(layer), kept, "out")
        with torch.no_grad():
            model.eval()(x)
    finally:
        hooks.remove()
    out = family.to_grid(kept["out"]) if "out" in kept else None
    return tuple(int(v) for v in out.shape[-2:]) if out is not None and out.ndim == 4 else None


def _faithfulness(model: torch.nn.Module, task: Any, images: _Images, methods: Sequence[str],
                  layer: str, family: Any, cfg: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """The faithfulness table of every map and sign, with the random and all-equal baselines."""
    orders = [fa.Order(k, m, s) for m in methods for k in get_method(m).map_names() if k in images.maps
              for s in fa.map_signs(images.maps[k], get_method(m).signed)]
    orders += [fa.Order(fa.RANDOM, "baseline", "pos"), fa.Order(fa.UNIFORM, "baseline", "pos")]
    ids = images.rows["image_id"].tolist()
    scores = fa.order_scores(images.maps, orders, ids, seed, layer_grid(model, layer, images.x[:1], family))
    sub = cfg["substrate"]
    x = images.x
    deletion = fa.make_substrate(x, sub["deletion"], float(sub["blur_sigma"]))
    insertion = fa.make_substrate(x, sub["insertion"], float(sub["blur_sigma"]))
    model.eval()
    curves = fa.perturbation_curves(model, task.target(), x, scores, int(cfg["steps"]), deletion, insertion,
                                    int(cfg["batch_size"]))
    scale = fa.output_scale(curves.deletion[:, 0, 0])
    return fa.faithfulness_rows(curves, orders, ids, scale, int(cfg["steps"]))


def _summary(faith: pd.DataFrame, sanity: pd.DataFrame, measured: Mapping[str, Any], cfg: Mapping[str, Any],
             seed: int, n_images: int) -> dict[str, Any]:
    """summary.json's content (without provenance): per map, the baselines, the run's measures, warnings."""
    n_boot = int(cfg["bootstrap"])
    per_map = faithfulness_summary(faith, n_boot, seed)
    baselines = {b: per_map.pop(b) for b in fa.BASELINES if b in per_map}
    randomisation = sanity_summary(sanity, n_boot, seed)
    rnd = baselines.get(fa.RANDOM, {})
    for name, entry in per_map.items():
        entry["random"] = {"deletion_auc": rnd.get("deletion_auc"), "insertion_auc": rnd.get("insertion_auc")}
        entry["randomisation"] = randomisation.get(name, {})
        entry["localisation"] = measured["localisation"].get(name, {})
        entry["external"] = measured["external"].get(name, {})
        entry["verdict"] = verdict(entry)
    scale = float(faith["scale"].iloc[0]) if len(faith) else None
    return {
        "images": n_images, "sanity_images": int(sanity["image_id"].nunique()) if len(sanity) else 0,
        "steps": int(cfg["steps"]), "substrate": dict(cfg["substrate"]), "scale": scale,
        "normalisation": ("curve = change of the explained output from the curve's start (clean image for "
                          "deletion, substrate for insertion) divided by `scale`, the standard deviation of the "
                          "clean outputs over the evaluated images; AUC = mean of the curve over the fraction "
                          "of pixels removed (inserted); gain = expected direction x (AUC - random map's AUC), "
                          "> 0: better than the random map"),
        "methods": per_map, "baselines": baselines,
        **{k: v for k, v in measured.items() if k not in ("localisation", "external")},
    }


def _table(path: str | os.PathLike | None) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path else None


def _scale_warning(faith: pd.DataFrame) -> list[str]:
    """A warning when the clean outputs do not vary (the curves are then in raw output units)."""
    if len(faith) and fa.outputs_constant(faith.drop_duplicates("image_id")["y_clean"].to_numpy()):
        return ["faithfulness: the model's output is the same for every evaluated image, so the curves are in "
                "raw output units (scale 1), not in prediction standard deviations"]
    return []


def _write(out_dir: Any, faith: pd.DataFrame, sanity: pd.DataFrame, summary: dict[str, Any],
           config: Mapping[str, Any], layer: str, spec: Mapping[str, Any]) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {**stamp(config), "target_layer": layer, "model": {"weights_sha256": spec.get("weights_sha256")}}
    io.write_table(out / "faithfulness.parquet", pa.Table.from_pandas(faith, preserve_index=False)
                   if len(faith) else FAITHFULNESS_SCHEMA.empty_table(), FAITHFULNESS_SCHEMA, meta)
    io.write_table(out / "sanity.parquet", pa.Table.from_pandas(sanity, preserve_index=False)
                   if len(sanity) else SANITY_SCHEMA.empty_table(), SANITY_SCHEMA, meta)
    io.write_json(out / "summary.json", io.nan_to_none({**stamp(config), "target_layer": layer, **summary}))


def _first(paths: Sequence[Any]) -> str | None:
    """The one file of an optional input (an empty list when the rule producing it is not in the run)."""
    return str(paths[0]) if len(paths) else None


def main(smk: Any) -> None:
    with job(smk, gpu=True):
        inp, out, params = smk.input, smk.output, smk.params
        run(figures_path=inp.figures, maps_dirs=list(inp.maps), manifest_path=inp.manifest,
            model_dir=Path(inp.spec).parent, out_dir=Path(out.summary).parent, target_layer=params.target_layer,
            config=params.config, scores_path=inp.scores, predictions_path=inp.predictions,
            pruning_path=_first(inp.pruning), external_path=_first(inp.external))
