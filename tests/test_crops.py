"""Top channels and the crops that activate them most, on a hand-made net with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from ais.crops import Box, channel_crops, crop_box, crop_pixels, peak_activations, select_crops, top_channels
from ais.images import load_batch

SIZE = 32


def _net() -> nn.Module:
    """features.0: 1x1 conv, channel 0 = red - 0.5, channel 1 = blue - 0.5, channel 2 = 0; ReLU; 4x4 pooling."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-0.5)
        conv.weight[0, 0] = 1.0
        conv.weight[1, 2] = 1.0
        conv.bias[2] = -10.0
    features = nn.Sequential(conv, nn.ReLU(inplace=True), nn.MaxPool2d(4))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1))
    return nn.Sequential(features, head).eval()


def _image(path, red_at=None, blue_at=None, value=255):
    arr = np.zeros((SIZE, SIZE, 3), np.uint8)
    if red_at:
        y, x = red_at
        arr[y:y + 4, x:x + 4, 0] = value
    if blue_at:
        y, x = blue_at
        arr[y:y + 4, x:x + 4, 2] = 255
    Image.fromarray(arr).save(path)
    return str(path)


def test_top_channels_orders_helpful_and_harmful():
    channels = pd.DataFrame({
        "channel": [0, 1, 2, 3, 4, 5],
        "mean_ais_score": [0.5, -2.0, 1.5, np.nan, -0.1, 1.5],
    })
    chosen = top_channels(channels, 2)
    assert chosen[["channel", "group", "rank"]].values.tolist() == [
        [2, "helpful", 1], [5, "helpful", 2], [1, "harmful", 1], [4, "harmful", 2],
    ]
    # Never a channel without a score; helpful ones are positive, harmful ones negative.
    chosen = top_channels(channels, 4)
    assert chosen[["channel", "group"]].values.tolist() == [
        [2, "helpful"], [5, "helpful"], [0, "helpful"], [1, "harmful"], [4, "harmful"],
    ]


def test_crop_box_centres_on_the_cell_and_stays_inside():
    # 8x8 grid on 64 px: cells of 8 px; a crop of half the side (32 px).
    assert crop_box((3, 4), (8, 8), 64) == Box(top=12, left=20, side=32)
    assert crop_box((0, 0), (8, 8), 64) == Box(top=0, left=0, side=32)
    assert crop_box((7, 7), (8, 8), 64) == Box(top=32, left=32, side=32)
    # At least two cells wide: a 2x2 grid on 64 px gives the whole image.
    assert crop_box((1, 0), (2, 2), 64, crop_fraction=0.25) == Box(top=0, left=0, side=64)
    with pytest.raises(ValueError, match="outside"):
        crop_box((8, 0), (8, 8), 64)


def test_peak_activations_find_the_square(tmp_path):
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    paths = [
        _image(tmp_path / "a.png", red_at=(20, 8)),  # red in cell (5, 2) of the 8x8 grid
        _image(tmp_path / "b.png", red_at=(0, 28), value=200),  # dimmer red in cell (0, 7)
        _image(tmp_path / "c.png", blue_at=(12, 12)),  # blue only, cell (3, 3)
    ]
    batches = (load_batch(paths[i:i + 2], SIZE, "none") for i in range(0, len(paths), 2))  # batches of 2
    peak, cell, grid = peak_activations(model, "0.0", batches, [0, 1, 2], len(paths))
    assert grid == (SIZE, SIZE)  # the conv's own resolution (before pooling)
    np.testing.assert_allclose(peak[:, 0], [0.5, 200 / 255 - 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(peak[:, 1], [0.0, 0.0, 0.5], atol=1e-6)
    assert (peak[:, 2] == 0).all()
    assert divmod(int(cell[0, 0]), SIZE) == (20, 8)  # first maximal pixel of the square
    assert divmod(int(cell[2, 1]), SIZE) == (12, 12)
    # The model is unchanged and no hook is left behind.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def test_select_crops_ranks_images_and_skips_silent_ones():
    peak = np.array([[0.5, 0.0], [0.2, 0.0], [0.7, 0.3]])
    cell = np.array([[9, 0], [0, 0], [15, 5]])
    crops = select_crops(peak, cell, (4, 4), ["a", "b", "c"], [7, 9], size=64, n_crops=2)
    assert crops[["channel", "crop_rank", "image_id"]].values.tolist() == [[7, 1, "c"], [7, 2, "a"], [9, 1, "c"]]
    first = crops.iloc[0]
    assert (first.cell_row, first.cell_col) == (3, 3)
    assert (first.top, first.left, first.side) == (32, 32, 32)


def test_channel_crops_end_to_end(tmp_path):
    model = _net()
    manifest = pd.DataFrame({
        "image_id": ["a", "b", "c"],
        "path": [
            _image(tmp_path / "a.png", red_at=(20, 8)),
            _image(tmp_path / "b.png", red_at=(0, 28), value=200),
            _image(tmp_path / "c.png", blue_at=(12, 12)),
        ],
    })
    channels = pd.DataFrame({"channel": [0, 1, 2], "mean_ais_score": [1.0, -1.0, 0.0]})
    chosen, crops = channel_crops(model, "0.0", manifest, channels, SIZE, "none", k=1, n_crops=3)
    assert chosen["channel"].tolist() == [0, 1]
    red = crops[crops["channel"] == 0]
    assert red["image_id"].tolist() == ["a", "b"]  # c never fires channel 0
    assert set(crops["group"]) == {"helpful", "harmful"}
    row = red.iloc[0]
    pixels = crop_pixels(row.path, Box(int(row.top), int(row.left), int(row.side)), SIZE)
    assert pixels.shape == (16, 16, 3)
    assert pixels[..., 0].max() == 255  # the red square is inside the crop


def test_montage_rows_and_empty_case(tmp_path):
    from ais.crops import montage

    path = _image(tmp_path / "a.png", red_at=(0, 0))
    crops = pd.DataFrame({
        "channel": [3, 3, 8], "group": ["helpful", "helpful", "harmful"], "rank": [1, 1, 1],
        "crop_rank": [1, 2, 1], "path": [path, path, path],
        "top": [0, 16, 0], "left": [0, 16, 0], "side": [16, 16, 16],
    })
    sheet = montage(crops, SIZE, tile=32, label_width=40)
    assert sheet.shape == (2 * (32 + 4), 40 + 2 * (32 + 4), 3)
    # Channel 3, first crop: the red square (4 px of 16, upscaled by 2) at its top-left corner.
    assert (sheet[0:8, 40:48] == [255, 0, 0]).all()
    assert (sheet[0:32, 76:108] == 0).all()  # second crop: black
    empty = montage(crops.iloc[:0], SIZE)
    assert empty.ndim == 3 and empty.shape[2] == 3
