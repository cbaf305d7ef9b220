"""The overlapped image pipeline gives exactly the synchronous loader's batches, in order, with any workers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_image

from ais.images import BadImageError, load_batch, model_view
from ais.pipeline import iter_batches, loader_workers


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> pd.DataFrame:
    folder = tmp_path_factory.mktemp("imgs")
    paths = [str(write_image(folder / f"{i:02d}.png", size=(20 + i, 14 + 2 * i), seed=i)) for i in range(11)]
    return pd.DataFrame({"path": paths, "image_id": [f"id{i}" for i in range(11)], "y_true": np.arange(11.0)})


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_batches_equal_the_synchronous_loader_bit_for_bit(rows: pd.DataFrame, workers: int):
    got = list(iter_batches(rows, 16, "imagenet", 4, ("image_id", "y_true"), workers=workers))
    assert [len(b[0]) for b in got] == [4, 4, 3]
    for k, (x, ids, y) in enumerate(got):
        part = rows.iloc[4 * k:4 * k + 4]
        expected = load_batch(part["path"].tolist(), 16, "imagenet")
        assert torch.equal(x, expected) and x.dtype == torch.float32
        assert ids == part["image_id"].tolist() and y == part["y_true"].tolist()


def test_views_are_the_model_view(rows: pd.DataFrame):
    (x, views), *_ = list(iter_batches(rows.iloc[:3], 12, "none", 3, workers=1, views=True))
    for i, path in enumerate(rows["path"].iloc[:3]):
        view, tensor = model_view(path, 12, "none")
        np.testing.assert_array_equal(views[i], view)
        assert views[i].dtype == np.uint8 and torch.equal(x[i], tensor)


def test_a_bad_image_fails_with_its_message_from_a_worker(rows: pd.DataFrame, tmp_path: Path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    bad = pd.concat([rows.iloc[:2], pd.DataFrame({"path": [str(broken)]})], ignore_index=True)
    with pytest.raises(BadImageError, match="broken.png: cannot be read as an image"):
        list(iter_batches(bad, 8, "none", 2, workers=1))


def test_workers_from_threads():
    assert [loader_workers(t) for t in (1, 2, 4, 64)] == [0, 1, 3, 8]


def test_training_with_decoding_workers_gives_the_same_weights(tmp_path: Path):
    from ais.families import family_for
    from ais.models import build_model, set_seed
    from ais.tasks import get_task
    from ais.training import train

    rows = [{"image_id": f"i{i}", "path": str(write_image(tmp_path / f"{i}.png", size=(24, 20), seed=i)),
             "y_true": float(i % 5), "split": ("train", "train", "val", "test")[i % 4]} for i in range(12)]
    manifest = pd.DataFrame(rows)
    cfg = {"arch": "vgg11", "head": "gap", "input_size": 32}
    states = []
    for workers in (0, 1):
        set_seed(0)
        model = build_model("vgg11", "gap")
        result = train(manifest, get_task("regression"), family_for("vgg11"), model, cfg,
                       {"epochs": 2, "batch_size": 4, "bootstrap": 100}, 0, "cpu", tmp_path / f"resume{workers}",
                       workers=workers)
        states.append(result.model.state_dict())
        assert list(result.history["epoch"]) == [1, 2]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
