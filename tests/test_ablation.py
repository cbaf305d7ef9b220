"""The channel-ablation engine: every path equals the naive weight-zeroing reference.

Reference values come from :func:`naive_ablation` (zero ``weight[c]`` and
``bias[c]``, full forward, restore) and, for two tiny nets, from hand
computation. Models are randomly initialised (no downloads) with heads scaled
so that outputs and deltas are of order one, which makes 1e-5 a strict bound.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
import torchvision
import torch.nn.functional as F
from torch import nn

from ais.ablation import PATHS, ChannelAblation, ablate_batches, ablation_table, naive_ablation
from ais.pipeline import iter_batches
from ais.io import write_table
from ais.layers import conv_layers, resolve_layer
from ais.tables import ABLATION_SCHEMA
from ais.targets import ClassProbabilityTarget, RegressionTarget
from conftest import write_image

ATOL = 1e-5
SUBSET = [0, 1, 100, 256, 311, 511]  # of 512 channels, where all would be slow
SCALE = {"vgg16": 10.0, "vgg16_bn": 10.0, "vgg16_gap": 10.0}  # outputs ~1, deltas ~0.01-0.3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these small tensors gain nothing from more, and on a busy machine every
    op of a multi-threaded run waits for a descheduled thread (the suite runs 4x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- models


def _he_convs(model: nn.Module) -> nn.Module:
    """PyTorch's default conv init (std 1/sqrt(3 fan_in)) times sqrt(6): He variance, in place.

    Cheaper than torchvision's own VGG initialisation (models build in half the time).
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(math.sqrt(6.0))
    return model


def _scale_output(model: nn.Module, factor: float) -> nn.Module:
    """Scale the last Linear in place, so that outputs and deltas are of order one."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return model


def _randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics, so that relu(bn(0)) is not zero for about half the channels."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.5)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
    return model


class GapVGG(nn.Module):
    """VGG features -> global average pool -> Linear(C, 1), with its own forward."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(features[-3].out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@functools.cache
def build(name: str) -> nn.Module:
    """The four reference models of the brief, eval mode, seeded."""
    torch.manual_seed(0)
    if name == "vgg16":
        model = _he_convs(torchvision.models.vgg16(weights=None, init_weights=False))
        model.classifier[6] = nn.Linear(4096, 1)
        _scale_output(model, SCALE["vgg16"])
    elif name == "vgg16_bn":
        model = _he_convs(torchvision.models.vgg16_bn(weights=None, init_weights=False))
        _randomise_batchnorm(model, seed=1)
        model.classifier[6] = nn.Linear(4096, 1)
        _scale_output(model, SCALE["vgg16_bn"])
    elif name == "vgg16_gap":
        model = _scale_output(GapVGG(build("vgg16").features), SCALE["vgg16_gap"])
    elif name == "resnet18":
        model = torchvision.models.resnet18(weights=None)
        model.fc = nn.Linear(512, 1)
    else:
        raise KeyError(name)
    return model.eval()


# name -> (target layer, input size, paths that apply)
CASES = {
    "vgg16": ("features.28", 32, PATHS),
    "vgg16_bn": ("features.40", 32, PATHS),
    "vgg16_gap": ("features.28", 32, PATHS),
    "resnet18": ("layer4.1.conv1", 64, ("tail", "generic")),
}


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@functools.cache
def naive(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    layer, size, _ = CASES[name]
    return naive_ablation(build(name), layer, images(2, size), channels=SUBSET)


def tiny_vgg(bn: bool, seed: int = 0) -> nn.Module:
    """A small VGG-like Sequential: all channels can be checked against the naive loop."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 8, 3, padding=1)]
    layers += [nn.BatchNorm2d(8)] if bn else []
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Conv2d(8, 12, 3, padding=1)]
    layers += [nn.BatchNorm2d(12)] if bn else []
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(3), nn.Flatten()]
    layers += [nn.Linear(12 * 9, 16), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(16, 1)]
    model = nn.Sequential(*layers)
    if bn:
        _randomise_batchnorm(model, seed)
    return _scale_output(model, 10.0).eval()


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    "name,path", [(name, path) for name, (_, _, paths) in CASES.items() for path in paths]
)
def test_path_matches_naive(name: str, path: str):
    layer, size, _ = CASES[name]
    model = build(name)
    y_ref, abl_ref = naive(name)
    with ChannelAblation(model, layer, path=path) as engine:
        y_pred, y_abl = engine(images(2, size), channels=SUBSET)
    assert engine.path == path and engine.layer_name == layer
    assert y_abl.shape == (2, len(SUBSET)) and y_abl.dtype == torch.float32
    torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)
    assert (abl_ref - y_ref[:, None]).abs().max() > 1e-3  # the deltas are not trivially zero


@pytest.mark.parametrize("name,expected", [("vgg16", "lowrank"), ("vgg16_bn", "lowrank"), ("vgg16_gap", "lowrank"),
                                           ("resnet18", "tail")])
def test_auto_path(name: str, expected: str):
    engine = ChannelAblation(build(name), CASES[name][0])
    assert engine.path == expected
    if name == "resnet18":  # conv2 follows inside the block: not channel-wise; the identity is kept
        assert "not a channel-wise operation" in engine.reasons["lowrank"]
        assert engine.describe()["why_not_faster"] == {"lowrank": engine.reasons["lowrank"]}
        assert engine.describe()["kept_tensors"] == 1
        with pytest.raises(ValueError, match="does not apply"):
            ChannelAblation(build(name), CASES[name][0], path="lowrank")


def test_all_512_channels_lowrank_equals_tail_vgg16_gap():
    model, x = build("vgg16_gap"), images(2, 32, seed=3)
    y1, a1 = ChannelAblation(model, "features.28", path="lowrank")(x)
    y2, a2 = ChannelAblation(model, "features.28", path="tail")(x)
    assert a1.shape == (2, 512)
    torch.testing.assert_close(a1, a2, rtol=0, atol=ATOL)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)


@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("layer", ["0", "auto"])
@pytest.mark.parametrize("path", PATHS)
def test_tiny_vgg_all_channels(bn: bool, layer: str, path: str):
    model, x = tiny_vgg(bn), images(3, 20, seed=4)
    if layer == "0" and path == "lowrank":  # another conv follows: not channel-wise
        with pytest.raises(ValueError, match="not a channel-wise operation"):
            ChannelAblation(model, layer, path=path)
        return
    y_ref, abl_ref = naive_ablation(model, layer, x)
    engine = ChannelAblation(model, layer, path=path, channel_batch=5)
    y_pred, y_abl = engine(x)
    assert y_abl.shape == (3, engine.n_channels)
    torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)


def test_batchnorm_ablated_channel_is_bn_shift_not_zero():
    """With BN after the conv an ablated channel becomes relu(beta - mean * gamma / sqrt(var + eps))."""
    model = tiny_vgg(bn=True)
    bn = model[5]
    shift = torch.relu(bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps))
    assert (shift > 0).any() and (shift == 0).any()
    engine = ChannelAblation(model, "4")
    _, abl = engine(images(1, 20))
    _, ref = naive_ablation(model, "4", images(1, 20))
    torch.testing.assert_close(abl, ref, rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- skip connections across the cut


class TinyResNet(nn.Module):
    """stem -> BasicBlock(6) -> BasicBlock(6 -> 8, stride 2, downsample) -> GAP -> Linear: skips everywhere."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models.resnet import BasicBlock

        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True))
        self.block1 = BasicBlock(6, 6)
        down = nn.Sequential(nn.Conv2d(6, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.block2 = BasicBlock(6, 8, stride=2, downsample=down)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))


def tiny_resnet() -> nn.Module:
    torch.manual_seed(8)
    return _scale_output(_randomise_batchnorm(TinyResNet(), seed=8), 10.0).eval()


# layer -> (path taken, tensors kept from before the layer: the block input, the downsampled identity)
RESIDUAL_CASES = {
    "stem.0": ("tail", 0),  # everything after reads the stem's output only through the conv
    "block1.conv1": ("tail", 1),  # block1's input is added back after conv2
    "block1.conv2": ("tail", 1),  # + identity, relu, then block2's convs: not channel-wise
    "block1": ("tail", 0),  # block2 reads it twice (conv1 and downsample)
    "block2.conv1": ("tail", 1),  # the downsampled identity
    "block2.conv2": ("lowrank", 1),  # bn2, + identity, relu, pool, fc: channel-wise
    "block2.downsample.0": ("lowrank", 1),  # bn, + the residual branch (kept), relu, pool, fc
    "block2": ("lowrank", 0),
}


@pytest.mark.parametrize("layer", list(RESIDUAL_CASES))
def test_skip_connection_across_the_cut_all_channels(layer: str):
    """Every unit of every layer of a residual net, on every path that applies, equals the naive loop."""
    model, x = tiny_resnet(), images(3, 12, seed=2)
    path, kept = RESIDUAL_CASES[layer]
    y_ref, abl_ref = naive_ablation(model, layer, x)
    assert (abl_ref - y_ref[:, None]).abs().max() > 1e-3
    engine = ChannelAblation(model, layer)
    assert engine.path == path and engine.describe()["kept_tensors"] == kept
    for p in PATHS[PATHS.index(path):]:
        for channel_batch in ("auto", 4):
            y_pred, y_abl = ChannelAblation(model, layer, path=p, channel_batch=channel_batch)(x)
            torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
            torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)


class FunctionalSkip(nn.Module):
    """A skip whose value no module outputs or reads first (``0.5 * relu(conv0(x))``): no hook can keep it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 5, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv0(x))
        skip = h * 0.5
        out = torch.relu(self.conv2(torch.relu(self.conv1(h))) + skip)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@pytest.mark.parametrize("layer,path", [("conv1", "tail"), ("conv2", "lowrank")])
def test_skip_kept_by_the_traced_prefix(layer: str, path: str):
    torch.manual_seed(9)
    model, x = _scale_output(FunctionalSkip(), 10.0).eval(), images(2, 8, seed=3)
    engine = ChannelAblation(model, layer)
    assert engine.path == path and engine.describe()["kept_by"] == "prefix pass"
    y_ref, abl_ref = naive_ablation(model, layer, x)
    assert (abl_ref - y_ref[:, None]).abs().max() > 1e-3
    y_pred, y_abl = engine(x)
    torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)
    assert _hook_counts(model) == 0


def test_skip_paths_leave_the_model_unchanged():
    model, before = tiny_resnet(), None
    before = _snapshot(model)
    for layer in ("block1.conv1", "block2.conv2"):
        with ChannelAblation(model, layer, channel_batch=3) as engine:
            engine(images(2, 12))
            assert _hook_counts(model) == 0
    _assert_same(model, before)


def test_naive_on_a_block_zeroes_its_output_channel():
    """For a non-conv layer the reference zeroes the channel of the layer's output (here: by hand, via the head)."""
    model, x = tiny_resnet(), images(2, 12)
    with torch.no_grad():
        feats = torch.flatten(model.pool(model.block2(model.block1(model.stem(x)))), 1)  # (N, 8)
        expected = [model.fc(feats.index_fill(1, torch.tensor([c]), 0.0))[:, 0] for c in range(8)]
    _, abl = naive_ablation(model, "block2", x)
    torch.testing.assert_close(abl, torch.stack(expected, dim=1), rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- hand-made nets


def hand_net(bn: bool) -> nn.Module:
    """conv 1x1 (w = [1, 2], b = [0, 1]) [-> BN(shift [0.5, -1])] -> ReLU -> GAP -> Linear([3, -1], 0.5)."""
    conv = nn.Conv2d(1, 2, 1)
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([0.0, 1.0]))
        lin.weight.copy_(torch.tensor([[3.0, -1.0]]))
        lin.bias.fill_(0.5)
    layers = [conv]
    if bn:
        norm = nn.BatchNorm2d(2, eps=0.0)
        with torch.no_grad():
            norm.bias.copy_(torch.tensor([0.5, -1.0]))
        layers.append(norm)
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin]
    return nn.Sequential(*layers).eval()


# x = [[-1, 2], [3, 4]]
#   no BN: ch0 relu(x) mean 2.25, ch1 relu(2x + 1) mean 5.25: y = 3 * 2.25 - 5.25 + 0.5 = 2.0;
#          ablate ch0: -5.25 + 0.5 = -4.75; ablate ch1: 6.75 + 0.5 = 7.25
#   BN:    ch0 relu(x + 0.5) mean 2.625, ch1 relu(2x) mean 4.5: y = 7.875 - 4.5 + 0.5 = 3.875;
#          ablate ch0 -> relu(0.5) = 0.5: 1.5 - 4.5 + 0.5 = -2.5; ablate ch1 -> relu(-1) = 0: 7.875 + 0.5 = 8.375
@pytest.mark.parametrize("bn,y,ablated", [(False, 2.0, [-4.75, 7.25]), (True, 3.875, [-2.5, 8.375])])
@pytest.mark.parametrize("path", PATHS)
def test_hand_computed(bn: bool, y: float, ablated: list[float], path: str):
    x = torch.tensor([[[[-1.0, 2.0], [3.0, 4.0]]]])
    engine = ChannelAblation(hand_net(bn), "0", path=path)
    y_pred, y_abl = engine(x)
    torch.testing.assert_close(y_pred, torch.tensor([y]))
    torch.testing.assert_close(y_abl, torch.tensor([ablated]))


def test_class_probability_target():
    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4)
    ).eval()
    x, target = images(2, 8), ClassProbabilityTarget(2)
    y_ref, abl_ref = naive_ablation(model, "0", x, target=target)
    for path in PATHS:
        y_pred, y_abl = ChannelAblation(model, "0", target=target, path=path)(x)
        torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
        torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)
    assert ((y_pred > 0) & (y_pred < 1)).all()


# --------------------------------------------------------------------------- model safety


def _hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


class FailingTarget:
    """A regression target that raises on its ``fail_on``-th call (mid-way through the ablation)."""

    def __init__(self, fail_on: int) -> None:
        self.calls, self.fail_on = 0, fail_on

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("boom")
        return output[:, 0]


@pytest.mark.parametrize("path", PATHS)
def test_model_unchanged_and_hooks_released(path: str):
    model = tiny_vgg(bn=True)
    before = _snapshot(model)
    with ChannelAblation(model, "4", path=path, channel_batch=4) as engine:
        engine(images(2, 20))
        assert _hook_counts(model) == 0
    _assert_same(model, before)
    assert _hook_counts(model) == 0 and not model.training


@pytest.mark.parametrize("fail_on", [1, 3])
@pytest.mark.parametrize("path", PATHS)
def test_model_unchanged_and_hooks_released_on_exception(path: str, fail_on: int):
    model = tiny_vgg(bn=True)
    before = _snapshot(model)
    engine = ChannelAblation(model, "4", target=FailingTarget(fail_on), path=path, channel_batch=4)
    with pytest.raises(RuntimeError, match="boom"):
        engine(images(2, 20))
    assert _hook_counts(model) == 0
    _assert_same(model, before)


def test_naive_restores_weights_on_exception():
    model = tiny_vgg(bn=False)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        naive_ablation(model, "3", images(1, 20), target=FailingTarget(3))
    _assert_same(model, before)


def test_deterministic():
    model, x = tiny_vgg(bn=True), images(2, 20)
    for path in PATHS:
        a = ChannelAblation(model, "4", path=path)(x)
        b = ChannelAblation(model, "4", path=path)(x)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_channel_batch_does_not_change_results():
    model, x = tiny_vgg(bn=False), images(3, 20)
    ref = ChannelAblation(model, "3", channel_batch="auto")(x)[1]
    for cb in (1, 7):
        for path in PATHS:
            out = ChannelAblation(model, "3", channel_batch=cb, path=path)(x)[1]
            torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)


def test_channel_subset_order_and_bad_channels():
    model, x = tiny_vgg(bn=False), images(1, 20)
    engine = ChannelAblation(model, "3")
    _, full = engine(x)
    _, part = engine(x, channels=[7, 2, 3])
    torch.testing.assert_close(part, full[:, [7, 2, 3]], rtol=0, atol=0)
    with pytest.raises(ValueError, match="channels must lie in"):
        engine(x, channels=[12])


def test_training_mode_is_refused():
    model = tiny_vgg(bn=True).train()
    with pytest.raises(ValueError, match="eval"):
        ChannelAblation(model, "4")
    model.eval()


# --------------------------------------------------------------------------- untraceable / inconsistent models


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        if h.sum() > 0:
            h = h * 2
        return self.head(h)


def test_untraceable_model_uses_generic():
    torch.manual_seed(6)
    model, x = DataDependent().eval(), images(2, 8)
    engine = ChannelAblation(model, "auto")
    assert engine.path == "generic" and "traced" in engine.reasons["tail"]
    torch.testing.assert_close(engine(x)[1], naive_ablation(model, "conv", x)[1], rtol=0, atol=ATOL)


class Scaled(nn.Module):
    """Multiplies by a Python float read at call time; a trace bakes in the value it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 1)
        self.scale = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)) * self.scale)


def test_cut_that_disagrees_with_the_model_is_an_error():
    torch.manual_seed(7)
    model = Scaled().eval()
    engine = ChannelAblation(model, "conv", path="tail")
    model.scale = 3.0
    with pytest.raises(RuntimeError, match="path='generic'"):
        engine(images(1, 8))
    assert _hook_counts(model) == 0


# --------------------------------------------------------------------------- layers


def test_resolve_layer():
    model = build("vgg16")
    assert resolve_layer(model, "auto") == "features.28"
    assert resolve_layer(model, "features.26") == "features.26"
    assert resolve_layer(build("resnet18"), "auto") == "layer4.1.conv2"
    assert conv_layers(hand_net(False)) == ["0"]
    with pytest.raises(ValueError, match=r"not found.*features\.0, features\.2"):
        resolve_layer(model, "features.99")
    with pytest.raises(ValueError, match=r"ReLU, not an explainable layer \(nn\.Conv2d\).*features\.28"):
        resolve_layer(model, "features.29")
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        resolve_layer(nn.Sequential(nn.Linear(2, 1)), "auto")


def test_targets():
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    torch.testing.assert_close(RegressionTarget()(out), torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(RegressionTarget(1)(out), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(RegressionTarget()(torch.tensor([5.0, 6.0])), torch.tensor([5.0, 6.0]))
    p = 1 / (1 + math.exp(-1))
    torch.testing.assert_close(ClassProbabilityTarget(1)(out), torch.tensor([p, p]))


# --------------------------------------------------------------------------- tables


def test_ablation_table_values_and_nulls(tmp_path: Path):
    table = ablation_table(
        ["a", "b"], [1.0, None], np.array([2.0, 3.0]), np.array([[2.5, 1.0], [4.0, 3.0]]), channels=[4, 9]
    )
    assert table.schema.equals(ABLATION_SCHEMA)
    rows = table.to_pylist()
    assert [(r["image_id"], r["channel"]) for r in rows] == [("a", 4), ("a", 9), ("b", 4), ("b", 9)]
    assert rows[0] == {
        "image_id": "a", "channel": 4, "y_true": 1.0, "y_pred": 2.0, "y_pred_ablated": 2.5,
        "delta_prediction": 0.5, "residual": 1.0, "residual_ablated": 1.5, "delta_residual": 0.5,
    }
    assert rows[1]["delta_prediction"] == -1.0 and rows[1]["residual_ablated"] == 0.0
    assert rows[1]["delta_residual"] == -1.0
    for r in rows[2:]:  # unlabelled: null truth and residuals, predictions kept
        assert r["y_true"] is None and r["residual"] is None
        assert r["residual_ablated"] is None and r["delta_residual"] is None
    assert rows[2]["delta_prediction"] == 1.0 and rows[3]["delta_prediction"] == 0.0
    # NaN means unlabelled too, and the table survives write_table's schema cast
    nan_table = ablation_table(["c"], [float("nan")], [1.0], [[1.5]])
    assert nan_table.column("residual").null_count == 1
    write_table(tmp_path / "t.parquet", table, schema=ABLATION_SCHEMA)
    assert pq.read_table(tmp_path / "t.parquet").schema.remove_metadata().equals(ABLATION_SCHEMA)


def test_ablation_table_shape_errors():
    with pytest.raises(ValueError, match="expected y_pred"):
        ablation_table(["a"], [1.0], [1.0, 2.0], [[1.0]])


def ablate_files(model: nn.Module, layer: str, paths: list[str], ids: list[str], y_true: list, size: int,
                 batch_size: int = 8, channel_batch: int | str = "auto", device: str = "cpu") -> tuple:
    """What the ablation stage does with image files: the engine over ``iter_batches``; the table and the engine."""
    rows = pd.DataFrame({"path": paths, "image_id": ids, "y_true": y_true})
    batches = iter_batches(rows, size, "imagenet", batch_size, ("image_id", "y_true"))
    with ChannelAblation(model, layer, channel_batch=channel_batch, device=device) as engine:
        return ablate_batches(engine, batches, len(rows)), engine


def test_ablate_images(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    paths = [str(write_image(tmp_path / f"im{i}.png", size=(30, 24), seed=i)) for i in range(5)]
    ids = [f"im{i}" for i in range(5)]
    y_true = [1.0, 2.0, None, 4.0, float("nan")]
    model = tiny_vgg(bn=False)
    with caplog.at_level(logging.INFO, logger="ais.ablation"):
        table, engine = ablate_files(model, "auto", paths, ids, y_true, size=20, batch_size=2, device="cpu")
    lines = [r.getMessage() for r in caplog.records if r.name.split(".")[:2] == ["ais", "ablation"]]
    assert table.num_rows == 5 * 12
    assert table.schema.remove_metadata().equals(ABLATION_SCHEMA)
    assert table.column("image_id").to_pylist()[:13] == ["im0"] * 12 + ["im1"]
    assert table.column("residual").null_count == 2 * 12
    assert lines[0].startswith("ablating 12 channels of 3 for 5 images on cpu (lowrank path)")
    progress = [line.split(",")[0] for line in lines[1:]]  # the first batch at once, at most every 30 s, the end
    assert progress[0] == "images 2/5" and progress[-1] == "images 5/5"
    assert set(progress) <= {"images 2/5", "images 4/5", "images 5/5"}
    assert "/s, elapsed" in lines[1] and "ETA" in lines[1]
    info = engine.describe()  # what the stage stores under "ablation" in the shard's metadata
    assert info["target_layer"] == "3" and info["path"] == "lowrank"
    # same numbers as the engine on the same preprocessed images
    from ais.images import load_batch

    y_pred, y_abl = ChannelAblation(model, "auto")(load_batch(paths, 20))
    np.testing.assert_allclose(table.column("y_pred_ablated").to_numpy(), y_abl.numpy().reshape(-1), atol=1e-6)


def test_ablate_images_logs_to_logger(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    paths = [str(write_image(tmp_path / "a.png", seed=1))]
    with caplog.at_level(logging.INFO, logger="ais.ablation"):
        ablate_files(tiny_vgg(bn=False), "3", paths, ["a"], [None], size=16, device="cpu")
    assert any("images 1/1" in r.getMessage() for r in caplog.records)


class MeanHead(nn.Module):
    """MnasNet's and ShuffleNet's head: ``x.mean([2, 3])`` instead of a pool and a flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean([2, 3]))


def test_spatial_mean_head_is_lowrank():
    torch.manual_seed(10)
    model, x = _scale_output(_randomise_batchnorm(MeanHead(), 10), 10.0).eval(), images(2, 8)
    engine = ChannelAblation(model, "conv")
    assert engine.path == "lowrank"
    y_ref, abl_ref = naive_ablation(model, "conv", x)
    y_pred, y_abl = engine(x)
    torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
    torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)
