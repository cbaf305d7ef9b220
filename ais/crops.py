"""The image crops that activate a channel most: what the top channels look at.

For a set of channels of the target layer and a set of images, every image
is passed once through the model; the target layer's post-ReLU activation
(see :meth:`ais.families.Family.activation_module`) is kept for the requested
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
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ais.families import Family
from ais.hooks import Hooks
from ais.images import open_image, resize_square
from ais.logs import Progress
from ais.pipeline import iter_batches

logger = logging.getLogger(__name__)


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
    batches: Iterable[torch.Tensor],
    channels: Sequence[int],
    n_images: int,
    device: str | torch.device = "cpu",
    family: Family | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Peak post-ReLU activation of each channel in each image of ``batches`` (each ``(B, 3, H, W)``).

    Returns ``(peak (N, K), argmax (N, K) flat cell index, grid (h, w))`` for
    ``K = len(channels)``. The model is left unchanged (one forward hook,
    removed on exit, also on errors).
    """
    if model.training:
        raise ValueError("the model must be in eval mode (model.eval())")
    target = model.get_submodule(layer) if isinstance(layer, str) else layer
    family = family or Family()
    source = family.activation_module(model, target)
    idx = torch.as_tensor(list(channels), dtype=torch.long)
    kept: list[torch.Tensor] = []
    peaks, cells, grid = [], [], (0, 0)
    progress = Progress(n_images, "images", logger, every=30.0)
    done = 0
    with Hooks() as hooks:
        hooks.add(source, lambda m, i, out: kept.append(
            torch.relu(family.to_grid(out).index_select(1, idx.to(out.device))).detach().float().cpu()))
        for x in batches:
            kept.clear()
            model(x.to(device))
            acts = kept[0]  # (B, K, h, w)
            grid = (int(acts.shape[-2]), int(acts.shape[-1]))
            value, where = acts.flatten(2).max(dim=2)
            peaks.append(value.numpy())
            cells.append(where.numpy())
            done += len(x)
            progress.update(done)
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
    family: Family | None = None,
    workers: int = 0,
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
    batches = (x for (x,) in iter_batches(manifest, size, normalization, batch_size, workers=workers, device=device))
    peak, cell, grid = peak_activations(model, layer, batches, chosen["channel"].tolist(), len(ids), device, family)
    crops = select_crops(peak, cell, grid, ids, chosen["channel"].tolist(), size, n_crops, crop_fraction)
    crops = crops.merge(manifest[["image_id", "path"]], on="image_id", how="left")
    crops = crops.merge(chosen[["channel", "group", "rank"]], on="channel", how="left")
    logger.info("crops of %d channels over %d images (%dx%d grid) in %.1f s",
                len(chosen), len(ids), grid[0], grid[1], time.perf_counter() - t0)
    return chosen, crops


def crop_pixels(path: str, box: Box, size: int) -> np.ndarray:
    """The crop of the model's input view of ``path``: uint8 ``(side, side, 3)``."""
    view = np.asarray(resize_square(open_image(path), size), dtype=np.uint8)
    return view[box.top:box.top + box.side, box.left:box.left + box.side]


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
