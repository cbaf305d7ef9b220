"""ARCHITECTURE.md's recipes, each done inside this file: a toy method, a toy family and a toy task
are registered here and run through the package's real code paths; no package file is edited."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ais import render
from ais.ablation import ChannelAblation, naive_ablation
from ais.families import Family, family_for, register_family, unregister_family
from ais.methods import compute_maps, list_methods, register_method, unregister_method
from ais.methods.base import Capture, LayerMap
from ais.tasks import TaskWords, get_task, register_task, unregister_task
from ais.views import View, list_views, register_view, unregister_view

PACKAGE = Path(__file__).resolve().parent.parent / "ais"


def _package_files() -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in PACKAGE.rglob("*.py")}


@pytest.fixture(autouse=True)
def package_untouched():
    before = _package_files()
    yield
    assert _package_files() == before


# --------------------------------------------------------------------------- a toy method


class ActivationEnergy(LayerMap):
    """The mean of the post-ReLU activations over channels: every unit weighted 1 / C (unsigned)."""

    name = "energy"
    title = "energy"
    signed = False
    needs = ()

    def channel_weights(self, cap: Capture, channel_weights: torch.Tensor | None = None) -> torch.Tensor:
        n, c = cap.activation.shape[:2]
        return torch.full((n, c), 1.0 / c)


def conv_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 1)).eval()


def test_recipe_add_a_method_maps_and_panel():
    register_method(ActivationEnergy)
    register_view(View("energy", "energy", "en", "unit", ("energy",), lambda c, m, o: c.overlay(m["energy"], o.cmap)))
    try:
        model, x = conv_net(), torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
        assert "energy" in list_methods() and list_views()[-1] == "energy"
        inputs = {"ais_weights": np.ones((2, 4), np.float32), "direction_weights": np.ones((2, 4), np.float32)}
        maps = compute_maps(model, "0", x, inputs, with_scales=True)
        with torch.no_grad():  # by hand: mean over channels of ReLU(conv(x)), divided by its max
            expected = torch.relu(model[0](x)).mean(dim=1)
            expected = (expected / expected.amax(dim=(1, 2), keepdim=True)).numpy()
        np.testing.assert_allclose(maps["energy"], expected, rtol=1e-6)
        np.testing.assert_allclose(maps["energy_scale"], torch.relu(model[0](x)).mean(1).amax((1, 2)).detach(), rtol=1e-6)
        image = np.full((6, 6, 3), 128, np.uint8)
        one = {k: v[0] for k, v in maps.items()}
        tiles = render.views(image, one)
        assert list(tiles)[-1] == "energy"
        np.testing.assert_array_equal(tiles["energy"], render.overlay_cam(image, one["energy"]))
        panel = render.panel(image, one)
        assert panel.shape[1] == len(tiles) * 6 + (len(tiles) - 1) * render.GAP
    finally:
        unregister_view("energy")
        unregister_method("energy")
    assert "energy" not in list_methods()


# --------------------------------------------------------------------------- a toy family


class ToyFamily(Family):
    """A three-convolution CNN, global average pooling and a linear read-out."""

    name = "toy"
    archs = ("toy3",)
    heads = ("gap",)
    backbone_prefix = "body."

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        return ToyNet(n_outputs)


class ToyNet(nn.Module):
    def __init__(self, n_outputs: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                                  nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(5, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


@pytest.fixture
def toy_family():
    family = register_family(ToyFamily())
    try:
        yield family
    finally:
        unregister_family("toy")


def test_recipe_add_a_family_ablated_exactly_and_mapped(toy_family, tmp_path):
    from ais.models import build_model, load_trained, save_checkpoint

    torch.manual_seed(3)
    model = build_model("toy3", "gap").eval()
    with torch.no_grad():
        model.body[3].running_mean.uniform_(-0.5, 0.5)
    assert family_for("toy3") is toy_family
    assert toy_family.explainable_layers(model) == ["body.0", "body.2", "body.5"]
    assert toy_family.resolve_layer(model, "auto") == "body.5"
    with pytest.raises(ValueError, match=r"body\.3.*BatchNorm2d.*body\.0, body\.2, body\.5"):
        toy_family.resolve_layer(model, "body.3")
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    for layer in ("body.2", "body.5"):
        with ChannelAblation(model, layer) as engine:
            y_pred, y_abl = engine(x)
        ref_pred, ref_abl = naive_ablation(model, layer, x)
        torch.testing.assert_close(y_pred, ref_pred, rtol=0, atol=1e-6)
        torch.testing.assert_close(y_abl, ref_abl, rtol=0, atol=1e-5)
    assert toy_family.activation_module(model, "body.2") is model.body[3]  # relu(bn(conv)) is the unit's map
    maps = compute_maps(model, "body.2", x, {"ais_weights": np.ones((3, 6)), "direction_weights": np.ones((3, 6))},
                        family=toy_family)
    assert maps["ais"].shape == (3, 8, 8) and maps["gradcam"].min() >= 0
    spec = save_checkpoint(model, tmp_path, {"arch": "toy3", "head": "gap", "input_size": 8,
                                             "normalization": "none", "target_layer": "auto"})
    assert spec["family"] == "toy" and spec["target_layer"] == "body.5" and spec["target_channels"] == 5
    again, _ = load_trained(tmp_path)
    torch.testing.assert_close(again(x), model(x))


# --------------------------------------------------------------------------- a toy task


class LogOdds:
    """The log-odds of class 1 of a two-logit output, ``(N,)``."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[:, 1] - output[:, 0]


class ToyBinaryTask:
    """Two classes (0, 1), cross-entropy; ablation explains the log-odds of class 1 and records the
    change of the true class's cross-entropy, ``log(1 + exp(-(2y - 1) z))`` for log-odds ``z``."""

    name = "toy_binary"
    n_outputs = 2
    selection = "lowest validation cross-entropy"
    epoch_metrics = ("val_accuracy",)
    loss_label = "cross-entropy"
    words = TaskWords(score="class", raises="towards class 1", lowers="towards class 0",
                      predicted="P(class 1)", true="class")

    def fit_encoding(self, y_train: np.ndarray) -> dict[str, float]:
        return {}

    def encode(self, y: np.ndarray, encoding) -> np.ndarray:
        return y

    def loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.float(), y.long())

    def val_loss(self, raw: np.ndarray, y_encoded: np.ndarray) -> float:
        return float(F.cross_entropy(torch.tensor(raw), torch.tensor(y_encoded).long()))

    def decode(self, raw: np.ndarray, encoding) -> np.ndarray:
        return torch.softmax(torch.as_tensor(raw), dim=1)[:, 1].numpy()

    def epoch_scores(self, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
        return {"val_accuracy": float(np.mean((y_pred > 0.5) == (y_true == 1)))}

    def fold(self, output_layer: nn.Linear, encoding) -> None:
        pass

    def predictions(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=1)[:, 1]

    def test_metrics(self, y_true: np.ndarray, y_pred: np.ndarray, n_boot: int, seed: int) -> dict:
        return {"accuracy": {"value": float(np.mean((y_pred > 0.5) == (y_true == 1)))}, "n": int(len(y_true))}

    def target(self):
        return LogOdds()

    def error(self, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
        return np.log1p(np.exp(-(2 * y_true - 1) * y_pred))


def test_recipe_add_a_task_trained_and_ablated(toy_family, tmp_path):
    from conftest import write_image

    from ais.ablation import ablation_table
    from ais.images import load_batch
    from ais.models import build_model
    from ais.training import predict, split_metrics, train

    register_task(ToyBinaryTask())
    try:
        task = get_task("toy_binary")
        rows = []
        for i in range(12):
            path = write_image(tmp_path / f"img{i}.png", size=(8, 8), seed=i)
            rows.append({"image_id": f"img{i}", "path": str(path), "y_true": float(i % 2),
                         "split": ("train", "train", "val", "test")[i % 4]})
        manifest = pd.DataFrame(rows)
        torch.manual_seed(0)
        model = build_model("toy3", "gap", n_outputs=task.n_outputs)
        cfg = {"task": "toy_binary", "arch": "toy3", "head": "gap", "input_size": 8, "normalization": "none"}
        result = train(manifest, task, toy_family, model, cfg, {"epochs": 2, "batch_size": 4, "bootstrap": 100},
                       0, "cpu", tmp_path / "resume")
        assert list(result.history["epoch"]) == [1, 2] and np.isfinite(result.history["val_loss"]).all()
        assert "val_accuracy" in result.history and result.best_epoch in (1, 2)
        y_pred = predict(result.model, manifest["path"].tolist(), 8, "none", 4, "cpu", task)
        assert y_pred.shape == (12,) and ((0 <= y_pred) & (y_pred <= 1)).all()
        metrics = split_metrics(manifest, y_pred, task, 0, 0)
        assert metrics["test"]["n"] == 3

        model = result.model.eval()
        x = load_batch(manifest["path"].tolist(), 8, "none")
        with ChannelAblation(model, "auto", task.target()) as engine:
            z, z_abl = engine(x)
        ref_z, ref_abl = naive_ablation(model, "body.5", x, task.target())
        torch.testing.assert_close(z_abl, ref_abl, rtol=0, atol=1e-5)
        table = ablation_table(manifest["image_id"], manifest["y_true"], z, z_abl, error=task.error).to_pandas()
        row = table.iloc[7]  # image 1 (class 1), unit 2
        y, z0, z1 = 1.0, float(ref_z[1]), float(ref_abl[1, 2])
        expected = np.log1p(np.exp(-(2 * y - 1) * z1)) - np.log1p(np.exp(-(2 * y - 1) * z0))
        assert row["image_id"] == "img1" and row["channel"] == 2
        assert row["delta_residual"] == pytest.approx(expected, abs=1e-5)
    finally:
        unregister_task("toy_binary")
