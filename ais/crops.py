"""The image crops that activate a channel most: what the top channels look at.

For a set of channels of the target layer and a set of images, every image
is passed once through the model; the target layer's post-ReLU activation
(see :func:`ais.heatmaps.activation_module`) is kept for the requested
channels only. For each channel the ``n_crops`` images with the highest
peak activation are chosen (ties broken by image order, one crop per image)
and a square crop of the model's input view (the image resized to the input
size) is cut around the peak: the peak's cell of the layer's grid mapped to
input pixels, enlarged to ``crop_fraction`` of the input side (at least two
cells) and shifted to stay inside the image.

:func:`top_channels` picks the channels by data-set-level score:
the most helpful (highest ``mean_ais_score``) and the most harmful (lowest).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ais.heatmaps import activation_module, resolve_layer
from ais.images import load_batch
from ais.logs import Progress
from ais.tables import TOP_CHANNELS_SCHEMA

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    """A crop in input pixels: rows ``top:top+side``, columns ``left:left+side``."""

    top: int
    left: int
    side: int


def top_channels(channels: pd.DataFrame, k: int) -> pd.DataFrame:
    """The ``k`` most helpful (highest positive) and the ``k`` most harmful (lowest negative) channels.

    Ranked by data-set-level ``mean_ais_score``; returns columns ``channel``,
    ``group`` (``helpful`` / ``harmful``), ``rank`` (1 = strongest in its
    group) and ``mean_ais_score``. Channels without a score (no labelled
    image) or with a score of 0 are never chosen.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scored = channels.loc[channels["mean_ais_score"].notna(), ["channel", "mean_ais_score"]]
    # Stable order: score, then channel number.
    positive = scored[scored["mean_ais_score"] > 0]
    negative = scored[scored["mean_ais_score"] < 0]
    helpful = positive.sort_values(["mean_ais_score", "channel"], ascending=[False, True], kind="mergesort").head(k)
    harmful = negative.sort_values(["mean_ais_score", "channel"], ascending=[True, True], kind="mergesort").head(k)
    parts = []
    for group, frame in (("helpful", helpful), ("harmful", harmful)):
        frame = frame.copy()
        frame.insert(1, "group", group)
        frame.insert(2, "rank", np.arange(1, len(frame) + 1, dtype=np.int64))
        parts.append(frame)
    out = pd.concat(parts, ignore_index=True)
    out["channel"] = out["channel"].astype(np.int64)
    return out


def crop_box(cell: tuple[int, int], grid: tuple[int, int], size: int, crop_fraction: float = 0.5) -> Box:
    """The crop around grid cell ``(row, col)`` of a ``grid = (h, w)`` layer on a ``size`` px input."""
    h, w = grid
    row, col = cell
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"cell {cell} outside the {h}x{w} grid")
    stride = size / max(h, w)
    side = int(round(min(size, max(2 * stride, crop_fraction * size))))
    centre_y = (row + 0.5) * size / h
    centre_x = (col + 0.5) * size / w
    top = int(round(centre_y - side / 2))
    left = int(round(centre_x - side / 2))
    top = min(max(top, 0), size - side)
    left = min(max(left, 0), size - side)
    return Box(top, left, side)


@torch.no_grad()
def peak_activations(
    model: nn.Module,
    layer: nn.Module | str,
    paths: Sequence[str],
    channels: Sequence[int],
    size: int,
    normalization: str = "imagenet",
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Peak post-ReLU activation of each channel in each image.

    Returns ``(peak (N, K), argmax (N, K) flat cell index, grid (h, w))`` for
    ``K = len(channels)``. The model is left unchanged (one forward hook,
    removed on exit, also on errors).
    """
    if model.training:
        raise ValueError("the model must be in eval mode (model.eval())")
    target = resolve_layer(model, layer)
    source = activation_module(model, target)
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    kept: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        kept.append(torch.relu(output.index_select(1, idx.to(output.device))).detach().float().cpu())

    peaks, cells, grid = [], [], (0, 0)
    progress = Progress(len(paths), "images", log, every=30.0)
    handle = source.register_forward_hook(hook)
    try:
        for start in range(0, len(paths), batch_size):
            batch = list(paths[start:start + batch_size])
            kept.clear()
            model(load_batch(batch, size, normalization).to(device))
            acts = kept[0]  # (B, K, h, w)
            grid = (int(acts.shape[-2]), int(acts.shape[-1]))
            flat = acts.flatten(2)
            value, where = flat.max(dim=2)
            peaks.append(value.numpy())
            cells.append(where.numpy())
            progress.update(start + len(batch))
    finally:
        handle.remove()
    if not peaks:
        k = len(idx)
        return np.empty((0, k), np.float32), np.empty((0, k), np.int64), grid
    return np.concatenate(peaks), np.concatenate(cells).astype(np.int64), grid


def select_crops(
    peak: np.ndarray,
    cell: np.ndarray,
    grid: tuple[int, int],
    image_ids: Sequence[str],
    channels: Sequence[int],
    size: int,
    n_crops: int,
    crop_fraction: float = 0.5,
) -> pd.DataFrame:
    """The ``n_crops`` most activating images per channel and their crop boxes.

    Columns: ``channel``, ``crop_rank`` (1 = highest peak), ``image_id``,
    ``peak_activation``, ``cell_row``, ``cell_col``, ``top``, ``left``, ``side``.
    Images whose peak is 0 (the channel never fires there) are not chosen.
    """
    rows = []
    h, w = grid
    for j, channel in enumerate(channels):
        # Highest peak first; ties by image order (stable sort of -peak).
        order = np.argsort(-peak[:, j], kind="stable")
        rank = 0
        for i in order:
            if rank >= n_crops or peak[i, j] <= 0:
                break
            rank += 1
            r, c = divmod(int(cell[i, j]), w)
            box = crop_box((r, c), grid, size, crop_fraction)
            rows.append({
                "channel": int(channel), "crop_rank": rank, "image_id": image_ids[i],
                "peak_activation": float(peak[i, j]), "cell_row": r, "cell_col": c,
                "top": box.top, "left": box.left, "side": box.side,
            })
    columns = ["channel", "crop_rank", "image_id", "peak_activation", "cell_row", "cell_col", "top", "left", "side"]
    return pd.DataFrame(rows, columns=columns)


def channel_crops(
    model: nn.Module,
    layer: nn.Module | str,
    manifest: pd.DataFrame,
    channels: pd.DataFrame,
    size: int,
    normalization: str,
    k: int,
    n_crops: int,
    crop_fraction: float = 0.5,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Top channels (:func:`top_channels`) and their crops over ``manifest``'s images.

    Returns ``(chosen, crops)``; ``crops`` also carries the image ``path`` and
    the channel's ``group`` and ``rank``.
    """
    chosen = top_channels(channels, k)
    if chosen.empty or manifest.empty:
        crops = select_crops(np.empty((0, 0)), np.empty((0, 0), np.int64), (1, 1), [], [], size, n_crops)
        return chosen, crops.assign(path=pd.Series(dtype=str), group=pd.Series(dtype=str),
                                    rank=pd.Series(dtype=np.int64))
    t0 = time.perf_counter()
    ids = manifest["image_id"].tolist()
    peak, cell, grid = peak_activations(
        model, layer, manifest["path"].tolist(), chosen["channel"].tolist(), size, normalization,
        batch_size=batch_size, device=device,
    )
    crops = select_crops(peak, cell, grid, ids, chosen["channel"].tolist(), size, n_crops, crop_fraction)
    crops = crops.merge(manifest[["image_id", "path"]], on="image_id", how="left")
    crops = crops.merge(chosen[["channel", "group", "rank"]], on="channel", how="left")
    log.info("crops of %d channels over %d images (%dx%d grid) in %.1f s",
             len(chosen), len(ids), grid[0], grid[1], time.perf_counter() - t0)
    return chosen, crops


def crop_pixels(path: str, box: Box, size: int) -> np.ndarray:
    """The crop of the model's input view of ``path``: uint8 ``(side, side, 3)``."""
    from PIL import Image

    from ais.images import open_image

    im = open_image(path)
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[box.top:box.top + box.side, box.left:box.left + box.side]


def montage(crops: pd.DataFrame, size: int, tile: int = 72, label_width: int = 160) -> np.ndarray:
    """One row per channel (in ``crops`` order): a label and its crops, highest first; uint8 ``(H, W, 3)``.

    Crops are upscaled to ``tile`` px with nearest-neighbour so the model's
    input pixels stay visible. A channel with no crop (it never fires) keeps
    an empty row; no channel at all gives a one-line note.
    """
    from PIL import Image, ImageDraw

    gap = 4
    if crops.empty:
        sheet = Image.new("RGB", (label_width + tile, tile), "white")
        ImageDraw.Draw(sheet).text((4, tile // 2 - 6), "no channel with a score fires on these images", fill=(0, 0, 0))
        return np.asarray(sheet)
    order = crops.drop_duplicates("channel")[["channel", "group", "rank"]]
    n_cols = int(crops["crop_rank"].max())
    sheet = Image.new("RGB", (label_width + n_cols * (tile + gap), len(order) * (tile + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(order.itertuples(index=False)):
        y = r * (tile + gap)
        draw.text((4, y + tile // 2 - 6), f"{row.group} #{row.rank}: channel {row.channel}", fill=(0, 0, 0))
        for c in crops[crops["channel"] == row.channel].itertuples(index=False):
            pixels = crop_pixels(c.path, Box(int(c.top), int(c.left), int(c.side)), size)
            im = Image.fromarray(pixels).resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(im, (label_width + (int(c.crop_rank) - 1) * (tile + gap), y))
    return np.asarray(sheet)


#: Columns of results/report/top_channels.parquet (:data:`ais.tables.TOP_CHANNELS_SCHEMA`).
CROPS_COLUMNS = tuple(TOP_CHANNELS_SCHEMA.names)


def run_crops(
    manifest_path: str,
    model_dir: str,
    channels_path: str,
    out_table: str,
    out_png: str,
    split: str,
    target_layer: str,
    k: int,
    n_crops: int,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    metadata: dict | None = None,
) -> pd.DataFrame:
    """Rule ``top_channel_crops``: crops of the top channels over the ablated images; table and montage."""
    import pyarrow as pa

    from ais.data import read_manifest, select_split
    from ais.io import write_table
    from ais.models import load_trained, resolve_target_layer
    from ais.render import save_png

    model, spec = load_trained(model_dir, device)
    layer = resolve_target_layer(model, target_layer)
    images = select_split(read_manifest(manifest_path), split)
    channels = pd.read_parquet(channels_path)
    size = int(spec["input_size"])
    _, crops = channel_crops(model, layer, images, channels, size, spec["normalization"], k, n_crops,
                             batch_size=batch_size, device=device)
    crops = crops.loc[:, list(CROPS_COLUMNS)].reset_index(drop=True)
    write_table(out_table, pa.Table.from_pandas(crops, preserve_index=False), TOP_CHANNELS_SCHEMA,
                metadata={**(metadata or {}), "target_layer": layer, "split": split})
    save_png(out_png, montage(crops, size))
    log.info("top channel crops: %d channels, %d crops over %d %s images", crops["channel"].nunique(),
             len(crops), len(images), split)
    return crops
