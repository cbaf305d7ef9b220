"""The workflow's heatmap stages: maps per shard, panels per shard, the gathered tables, the gallery.

Per ablation shard ``i`` (folder ``results/heatmaps/shard-{i}/``):

- :func:`compute_shard` (rule ``compute_heatmaps``): for every image of the
  shard, the maps of :func:`ais.heatmaps.compute_maps` (AIS with the image's
  fused scores, or the data-set-level channel scores for unlabelled images;
  the direction map; Grad-CAM; Grad-CAM++), saved with the image as the model
  saw it to ``maps/{file_stem}.npz`` (float16 maps, uint8 image), and
  ``figures.parquet`` (:data:`ais.tables.HEATMAP_SCHEMA`): per image the
  agreement of the AIS magnitude with Grad-CAM / Grad-CAM++ (CC, SIM, KLD)
  and, where ground-truth masks exist (demo), the localisation AUCs.
- :func:`render_shard` (rule ``render_heatmaps``): ``panels/{file_stem}.png``,
  one panel per image by colour lookup (:func:`ais.render.panel`). Only the
  rendering options reach this stage, so changing one reruns rendering only.

Gathered (:func:`summarize`, rule ``summarize_heatmaps``):
``results/heatmaps/agreement.parquet`` and ``localization.json``;
:func:`plot_gallery` (rule ``plot_gallery``) draws ``gallery.png``.

File names come from image ids through :func:`ais.data.file_stem` and are
checked by :func:`output_file` to stay inside their folder, whatever the id.

**Localisation AUCs** (:data:`ais.tables.LOCALIZATION_AUCS`): the fused AIS
score is sign(Δerror) x magnitude, so the AIS map's red marks what *helpful*
channels see, not what raises realism. Raise/lower-realism masks are
therefore scored with the direction map (channel weights -Δy: red raises the
realism prediction): ``ais_pos_auc`` ranks pixels from the most positive
(most realism-raising) down against the raise masks -- the positive map's
order, with the pixels it leaves at 0 ordered by the negative part --, and
``ais_neg_auc`` from the most negative down against the lower masks.
``ais_pos_clipped_auc`` / ``ais_neg_clipped_auc`` rank by the clipped parts
alone (every pixel outside the part ties at 0); ``ais_map_pos_auc`` /
``ais_map_neg_auc`` rank by the AIS map itself, for transparency; ``gradcam_auc`` ranks by Grad-CAM
(of the realism output, so also "what raises it") against the raise masks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ais import agreement, io
from ais.logs import Progress
from ais.tables import AGREEMENT_REFERENCES, HEATMAP_SCHEMA, LOCALIZATION_AUCS

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

MAPS_DIR = "maps"
PANELS_DIR = "panels"
#: Map arrays stored per image (all of :func:`ais.heatmaps.compute_maps`'s maps).
MAP_KEYS = ("ais", "helpful", "harmful", "direction", "gradcam", "gradcampp")
GALLERY_GROUPS = ("best", "median", "worst")
UNLABELLED_GROUPS = ("highest", "median", "lowest")


# --------------------------------------------------------------------------- file names


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
    """File stems of ``image_ids`` (:func:`ais.data.file_stem`), checked to be unique."""
    from ais.data import file_stem

    stems = [file_stem(str(i)) for i in image_ids]
    seen: dict[str, str] = {}
    for image_id, stem in zip(image_ids, stems):
        if stem in seen:
            raise ValueError(f"image ids {seen[stem]!r} and {image_id!r} map to the same file name {stem!r}")
        seen[stem] = image_id
    return stems


# --------------------------------------------------------------------------- per-image figures


def _part(heat: np.ndarray, part: str) -> np.ndarray:
    heat = np.asarray(heat, dtype=np.float64)
    if part == "pos":
        return heat
    if part == "neg":
        return -heat
    if part == "pos_clipped":
        return np.maximum(heat, 0.0)
    if part == "neg_clipped":
        return np.maximum(-heat, 0.0)
    if part == "all":
        return heat
    raise ValueError(f"unknown map part {part!r}")


def image_figures(maps: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Per-image figures of one image's maps ``(H, W)``: agreement and (with masks) localisation AUCs.

    ``cc_<ref>``, ``sim_<ref>``, ``kld_<ref>``: :func:`ais.agreement.compare` of
    the AIS magnitude against each reference of
    :data:`ais.tables.AGREEMENT_REFERENCES`. With ``masks`` (``{"raise": bool
    (H, W), "lower": bool (H, W)}``): ``raise_fraction``, ``lower_fraction``
    and every AUC of :data:`ais.tables.LOCALIZATION_AUCS` (NaN where a mask is
    empty or full); without, those are NaN and ``has_mask`` is False.
    """
    out: dict[str, Any] = {}
    for ref in AGREEMENT_REFERENCES:
        for metric, value in agreement.compare(maps["ais"], maps[ref]).items():
            out[f"{metric}_{ref}"] = value
    out["has_mask"] = masks is not None
    out["raise_fraction"] = float(np.mean(masks["raise"])) if masks is not None else float("nan")
    out["lower_fraction"] = float(np.mean(masks["lower"])) if masks is not None else float("nan")
    for name, (key, part, mask) in LOCALIZATION_AUCS.items():
        out[name] = (agreement.localization_auc(_part(maps[key], part), masks[mask])
                     if masks is not None else float("nan"))
    return out


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


def model_view(path: str, size: int, normalization: str = "imagenet") -> tuple[np.ndarray, "torch.Tensor"]:
    """The image as the model sees it: ``(size, size, 3)`` uint8 and the input tensor ``(3, size, size)``.

    Opened and resized exactly as :func:`ais.images.load_tensor` does (one decode for both).
    """
    from PIL import Image

    from ais.images import open_image, to_tensor

    im = open_image(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return np.asarray(im, dtype=np.uint8), to_tensor(im, size, normalization)


def read_maps(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a per-image ``.npz`` (maps as float32, ``image`` uint8, ``image_id``); no pickles."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k].astype(np.float32) if np.issubdtype(data[k].dtype, np.floating) else data[k]
                for k in data.files}


# --------------------------------------------------------------------------- rule compute_heatmaps


def _shard_image_ids(ablation_shard: str | os.PathLike) -> list[str]:
    ids = pq.read_table(ablation_shard, columns=["image_id"]).column("image_id").to_pylist()
    return sorted(dict.fromkeys(ids))


def _read_scores(scores_path: str | os.PathLike, image_ids: Sequence[str]) -> pd.DataFrame:
    import pyarrow.compute as pc

    columns = ["image_id", "channel", "y_pred", "ais_score", "direction"]
    table = ds.dataset(os.fspath(scores_path), format="parquet").to_table(
        columns=columns, filter=pc.field("image_id").isin(pa.array(list(image_ids), pa.string()))
    )
    return table.to_pandas()


def compute_shard(
    ablation_shard: str | os.PathLike,
    scores_path: str | os.PathLike,
    channels_path: str | os.PathLike,
    manifest_path: str | os.PathLike,
    model_dir: str | os.PathLike,
    maps_dir: str | os.PathLike,
    figures_path: str | os.PathLike,
    shard: int,
    target_layer: str,
    batch_size: int = 8,
    config: Mapping[str, Any] | None = None,
    device: str | None = None,
    log: logging.Logger | None = None,
) -> pd.DataFrame:
    """Maps and per-image figures for the images of one ablation shard (see the module docstring).

    Writes ``maps_dir`` (a folder, replaced atomically) and ``figures_path``
    (:data:`ais.tables.HEATMAP_SCHEMA`, provenance in its metadata); returns
    the figures table.
    """
    import torch

    from ais.ablation import resolve_layer
    from ais.data import read_manifest
    from ais.fusion import image_weights
    from ais.heatmaps import compute_maps, save_maps
    from ais.models import load_trained
    from ais.provenance import provenance

    log = log or logger
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    image_ids = _shard_image_ids(ablation_shard)
    manifest = read_manifest(manifest_path).set_index("image_id")
    missing = [i for i in image_ids if i not in manifest.index]
    if missing:
        raise ValueError(f"{ablation_shard}: image ids not in {manifest_path}: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}; rerun ablation after intake")
    rows = manifest.loc[image_ids].reset_index()
    stems = image_stems(image_ids)

    model, spec = load_trained(model_dir, device)
    layer = resolve_layer(model, target_layer)
    n_channels = model.get_submodule(layer).out_channels
    scores = _read_scores(scores_path, image_ids)
    channels = pd.read_parquet(channels_path)
    top = int(max(scores["channel"].max() if len(scores) else -1, channels["channel"].max() if len(channels) else -1))
    if top >= n_channels:
        raise ValueError(f"{scores_path}: channel {top} but layer {layer} has {n_channels} channels; "
                         "the fusion outputs come from another model or target layer")
    absent = sorted(set(image_ids) - set(scores["image_id"]))
    if absent:
        raise ValueError(f"{scores_path}: no fused scores for image(s) {absent[:5]} of {ablation_shard}; rerun fusion")
    per_image = scores.groupby("image_id", sort=False).agg(
        y_pred=("y_pred", "first"), own=("ais_score", lambda s: s.notna().any()),
    ).reindex(image_ids)
    ais_w, dir_w = image_weights(scores, channels, image_ids, n_channels)
    size = int(spec["input_size"])
    log.info("shard %d: maps of %d image(s), layer %s (%d channels), %d px, on %s",
             shard, len(image_ids), layer, n_channels, size, device)

    records = []
    progress = Progress(len(image_ids), f"shard {shard}: maps", log)
    with io.atomic_dir(maps_dir) as tmp_dir:
        for start in range(0, len(image_ids), batch_size):
            sl = slice(start, start + batch_size)
            batch = rows.iloc[sl]
            views = [model_view(p, size, spec["normalization"]) for p in batch["path"]]
            x = torch.stack([t for _, t in views]).to(device)
            maps = compute_maps(model, layer, x, ais_w[sl], dir_w[sl], with_scales=True)
            for j, rec in enumerate(batch.itertuples(index=False)):
                i = start + j
                one = {k: maps[k][j] for k in MAP_KEYS}
                masks = None
                if isinstance(rec.mask, str) and rec.mask:
                    masks = load_region_masks(rec.mask, one["ais"].shape, rec.image_id)
                save_maps(output_file(tmp_dir, stems[i], ".npz"),
                          {**one, "image": views[j][0], "image_id": np.array(rec.image_id)})
                y_true = float(rec.y_true) if pd.notna(rec.y_true) else np.nan
                y_pred = float(per_image["y_pred"].iloc[i])
                records.append({
                    "image_id": rec.image_id, "shard": shard, "split": rec.split, "path": rec.path,
                    "file_stem": stems[i], "weights": "image" if per_image["own"].iloc[i] else "dataset",
                    "y_true": y_true, "y_pred": y_pred,
                    "abs_error": abs(y_pred - y_true) if pd.notna(y_true) else np.nan,
                    **{f"{k}_scale": float(maps[f"{k}_scale"][j]) for k in ("ais", "direction", "gradcam")},
                    **image_figures(one, masks),
                })
            progress.update(min(start + batch_size, len(image_ids)))
    table = pd.DataFrame.from_records(records, columns=HEATMAP_SCHEMA.names)
    metadata = provenance(config, shard={"index": shard, "images": len(image_ids)}, target_layer=layer,
                          model={"weights_sha256": spec.get("weights_sha256"), "input_size": size})
    write_figures(figures_path, table, metadata)
    log.info("shard %d: wrote %d map file(s) to %s and %s", shard, len(table), maps_dir, figures_path)
    return table


def write_figures(path: str | os.PathLike, table: pd.DataFrame, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a per-image figures table (:data:`ais.tables.HEATMAP_SCHEMA`; NaN stored as null) atomically."""
    arrow = pa.Table.from_pandas(table, preserve_index=False) if len(table) else HEATMAP_SCHEMA.empty_table()
    io.write_table(path, arrow, HEATMAP_SCHEMA, metadata)


# --------------------------------------------------------------------------- rule render_heatmaps


def render_shard(
    figures_path: str | os.PathLike,
    maps_dir: str | os.PathLike,
    panels_dir: str | os.PathLike,
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
    views: Sequence[str] | None = None,
    log: logging.Logger | None = None,
) -> int:
    """One PNG panel per image of a shard, ``panels_dir/{file_stem}.png`` (folder replaced atomically).

    Reads only the shard's figures table and map files (no model, no torch).
    Returns the number of panels; the log gets the rendering rate.
    """
    import time

    from ais import render

    log = log or logger
    table = pd.read_parquet(figures_path, columns=["image_id", "file_stem"])
    progress = Progress(len(table), "panels", log)
    start = time.perf_counter()
    with io.atomic_dir(panels_dir) as tmp_dir:
        for n, rec in enumerate(table.itertuples(index=False), 1):
            data = read_maps(output_file(maps_dir, rec.file_stem, ".npz"))
            if str(data.get("image_id")) != rec.image_id:
                raise ValueError(f"{maps_dir}/{rec.file_stem}.npz holds image {data.get('image_id')!s}, "
                                 f"expected {rec.image_id} ({figures_path}); rerun compute_heatmaps")
            arr = render.panel(data["image"], data, alpha=alpha, harm_threshold=harm_threshold, keys=views)
            render.save_png(output_file(tmp_dir, rec.file_stem, ".png"), arr)
            progress.update(n)
    elapsed = time.perf_counter() - start
    log.info("rendered %d panel(s) in %.2f s (%.1f images/s)", len(table), elapsed,
             len(table) / elapsed if elapsed > 0 else float("nan"))
    return len(table)


# --------------------------------------------------------------------------- rule summarize_heatmaps


def _stats(values: pd.Series) -> dict[str, Any]:
    v = values.to_numpy(np.float64, na_value=np.nan)
    ok = v[np.isfinite(v)]
    return {
        "mean": float(ok.mean()) if ok.size else None,
        "median": float(np.median(ok)) if ok.size else None,
        "n_images": int(ok.size),
        "n_skipped": int(v.size - ok.size),
    }


def localization_report(table: pd.DataFrame) -> dict[str, Any]:
    """``localization.json``'s content from the gathered per-image table (:data:`ais.tables.HEATMAP_SCHEMA`).

    Headline values (``ais_pos_auc``, ``ais_neg_auc``, ``gradcam_auc`` and the
    other :data:`ais.tables.LOCALIZATION_AUCS`) are means of the per-image
    AUCs over the images whose mask has both classes; null, with ``reason``,
    when no image has masks (real data).
    """
    with_masks = table[table["has_mask"]] if len(table) else table
    out: dict[str, Any] = {
        "n_images": int(len(table)),
        "n_images_with_masks": int(len(with_masks)),
        "aggregate": "mean of per-image ROC AUCs (images whose mask has both classes)",
        "maps": {
            name: {"map": key, "part": part, "mask": mask}
            for name, (key, part, mask) in LOCALIZATION_AUCS.items()
        },
    }
    if len(with_masks) == 0:
        out["reason"] = ("no ground-truth region masks: only the demo data set has them"
                         if len(table) else "no images with heatmaps")
    else:
        out["reason"] = None
    per_key = {}
    for name in LOCALIZATION_AUCS:
        stats = _stats(with_masks[name]) if len(with_masks) else {"mean": None, "median": None,
                                                                   "n_images": 0, "n_skipped": 0}
        per_key[name] = stats
        out[name] = stats["mean"]
    out["per_key"] = per_key
    out["agreement"] = {
        ref: {metric: _stats(table[f"{metric}_{ref}"]) if len(table) else None for metric in ("cc", "sim", "kld")}
        for ref in AGREEMENT_REFERENCES
    }
    out["weights"] = {k: int(v) for k, v in table["weights"].value_counts().sort_index().items()} if len(table) else {}
    return out


def summarize(
    figures_paths: Sequence[str | os.PathLike],
    out_table: str | os.PathLike,
    out_json: str | os.PathLike,
    metadata: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
) -> dict[str, Any]:
    """Gather the per-shard figures into ``agreement.parquet`` (sorted by image id) and ``localization.json``."""
    log = log or logger
    paths = [os.fspath(p) for p in figures_paths]
    if not paths:
        raise ValueError("no per-shard figures tables given")
    table = ds.dataset(paths, format="parquet", schema=HEATMAP_SCHEMA).to_table().to_pandas()
    dup = table["image_id"].duplicated()
    if dup.any():
        raise ValueError(f"image {table.loc[dup, 'image_id'].iloc[0]!r} has maps in more than one shard")
    table = table.sort_values("image_id", kind="stable").reset_index(drop=True)
    write_figures(out_table, table, metadata)
    report = localization_report(table)
    io.write_json(out_json, io.nan_to_none({**report, "provenance": dict(metadata or {})}))
    log.info("heatmaps: %d image(s), %d with masks; ais_pos_auc %s, ais_neg_auc %s, gradcam_auc %s%s",
             report["n_images"], report["n_images_with_masks"], report["ais_pos_auc"], report["ais_neg_auc"],
             report["gradcam_auc"], f" ({report['reason']})" if report["reason"] else "")
    return report


# --------------------------------------------------------------------------- rule plot_gallery


def gallery_selection(table: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """``[(group, image_id)]``: the ``n`` best-, median- and worst-predicted images, no image twice.

    Labelled images are ranked by ``abs_error`` (ties by image id): ``best``
    are the ``n`` smallest errors, ``worst`` the ``n`` largest (largest first),
    ``median`` the ``n`` in the middle of what is left. Without labelled
    images, by ``y_pred``: ``highest``, ``median``, ``lowest`` predicted
    realism. With fewer than ``3 n`` images the later groups get fewer.
    """
    if n <= 0 or len(table) == 0:
        return []
    labelled = table[table["abs_error"].notna()]
    if len(labelled):
        order = labelled.sort_values(["abs_error", "image_id"], kind="stable")["image_id"].tolist()
        names = GALLERY_GROUPS
    else:
        order = table.sort_values(["y_pred", "image_id"], ascending=[False, True], kind="stable")["image_id"].tolist()
        names = UNLABELLED_GROUPS
    k = len(order)
    first = order[:min(n, k)]
    last = order[max(k - n, len(first)):][::-1]
    middle = order[len(first):k - len(last)]
    begin = max(0, (len(middle) - n) // 2)
    centre = middle[begin:begin + n]
    return ([(names[0], i) for i in first] + [(names[1], i) for i in centre] + [(names[2], i) for i in last])


def plot_gallery(
    agreement_path: str | os.PathLike,
    maps_dirs: Mapping[int, str | os.PathLike],
    out_path: str | os.PathLike,
    n_per_group: int = 3,
    alpha: float = 0.4,
    harm_threshold: float = 0.25,
    views: Sequence[str] | None = None,
    log: logging.Logger | None = None,
) -> list[tuple[str, str]]:
    """The gallery figure (:func:`ais.render.gallery_figure`) of :func:`gallery_selection`'s images.

    ``maps_dirs`` maps a shard index to its maps folder. With no image to
    show, the figure says so. Returns the selection.
    """
    from ais import render

    log = log or logger
    table = pd.read_parquet(agreement_path)
    chosen = gallery_selection(table, n_per_group)
    by_id = table.set_index("image_id")
    images, maps, titles = [], [], []
    for group, image_id in chosen:
        rec = by_id.loc[image_id]
        data = read_maps(output_file(maps_dirs[int(rec["shard"])], rec["file_stem"], ".npz"))
        images.append(data["image"])
        maps.append(data)
        truth = f"y {rec['y_true']:.2f}, " if pd.notna(rec["y_true"]) else "unlabelled, "
        label = image_id if len(image_id) <= 18 else image_id[:8] + "…" + image_id[-8:]
        titles.append(f"{group}\n{label}\n{truth}ŷ {rec['y_pred']:.2f}")
        log.info("gallery: %s %s (y_true %s, y_pred %.3f)", group, image_id, rec["y_true"], rec["y_pred"])
    keys = tuple(views if views is not None else render.VIEWS)
    if images:
        render.gallery_figure(out_path, images, maps, row_titles=titles, keys=keys, alpha=alpha,
                              harm_threshold=harm_threshold)
    else:
        _empty_figure(out_path, "no images with heatmaps" if len(table) else "no images were ablated")
    return chosen


def _empty_figure(path: str | os.PathLike, text: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 1), dpi=100)
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.5, text, ha="center", va="center")
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
