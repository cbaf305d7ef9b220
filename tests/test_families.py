"""The torchvision CNN families: building, weights, explainable layers, exact ablation on every one, the workflow.

Every family is checked on one small random model at 32 px: the ablation
engine (on the path it picks, and on ``generic``) against the naive loop
(one full forward pass per zeroed unit), on the family's default layer and
on a layer with a skip connection or concatenation across the cut.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import torchvision
import yaml
from torch import nn

from ais.ablation import ChannelAblation, naive_ablation
from ais.families import Family, family_for, list_archs, list_families
from ais.methods import compute_maps
from ais.methods.gradcam import GradCAM
from ais.models import build_model, load_trained, save_checkpoint, set_seed
from conftest import TINY, run_snakemake

ATOL = 1e-5

# arch -> (default layer, a layer whose suffix reads tensors computed before it, path there)
CASES = {
    "vgg11": ("features.18", "features.16", "tail"),
    "resnet18": ("layer4.1", "layer4.0.conv1", "tail"),
    "efficientnet_b0": ("features.8.0", "features.6.1.block.3.0", "tail"),
    "mobilenet_v3_small": ("features.12.0", "features.9.block.3.0", "tail"),
    "convnext_tiny": ("features.7.2", "features.7.1.block.0", "tail"),
    "densenet121": ("features.norm5", "features.denseblock4.denselayer15.conv2", "tail"),
    "regnet_x_400mf": ("trunk_output.block4.block4-11", "trunk_output.block4.block4-10.f.b.0", "tail"),
}
AUTO_PATH = {"convnext_tiny": "tail"}  # its head's LayerNorm mixes channels; every other family: lowrank


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _calibrate_norms(model: nn.Module, seed: int) -> nn.Module:
    """BatchNorm statistics of random images and random affine parameters, so that units matter.

    Fresh statistics (mean 0, variance 1) do not match a random network's
    activations, and in deep nets (EfficientNet, MobileNet) the output then
    hardly depends on the input; ``relu(bn(0))`` is not zero for many units.
    """
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of the calibration batch
        model.train()(images(8, seed=seed))
        for m in norms:
            m.momentum = 0.1
    return model.eval()


@functools.cache
def model_of(arch: str) -> nn.Module:
    """``arch`` built by its family, BatchNorms calibrated, outputs centred and scaled to order one, eval mode."""
    set_seed(0)
    model = build_model(arch, "gap")
    with torch.no_grad():
        for m in model.modules():  # ConvNeXt's layer scale starts at 1e-6: its blocks would hardly matter
            if isinstance(getattr(m, "layer_scale", None), nn.Parameter):
                m.layer_scale.fill_(0.5)
    model = _calibrate_norms(model, seed=1)
    with torch.no_grad():
        y = model(images(4, seed=9))[:, 0]
        out = family_for(arch).output_layer(model)
        out.weight.mul_(1.0 / float(y.std()))  # outputs vary by about one across images
        out.bias.sub_(float(y.mean())).div_(float(y.std()))
    return model


def images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def spread(n: int, k: int = 6) -> list[int]:
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


# --------------------------------------------------------------------------- registry and building


def test_every_family_is_registered():
    assert list_families()[:7] == ["vgg", "resnet", "efficientnet", "mobilenet", "convnext", "densenet", "regnet"]
    for arch in ("resnet50", "resnext50_32x4d", "wide_resnet50_2", "efficientnet_v2_s", "mobilenet_v2",
                 "convnext_large", "densenet201", "regnet_y_128gf"):
        assert arch in list_archs()


@pytest.mark.parametrize("arch", [a for a in CASES if a != "vgg11"])
def test_build_n_outputs_and_output_layer(arch: str):
    family = family_for(arch)
    set_seed(2)
    model = build_model(arch, "gap", n_outputs=3)
    assert model.training
    assert model.eval()(images(2)).shape == (2, 3)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert family.output_layer(model) is last and last.out_features == 3


def test_seeded_builds_are_identical():
    set_seed(3)
    a = build_model("regnet_y_400mf", "gap").state_dict()
    set_seed(3)
    b = build_model("regnet_y_400mf", "gap").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match=r"model\.head='classifier'.*resnet18.*gap"):
        build_model("resnet18", "classifier")


@pytest.mark.parametrize("arch", list(CASES))
def test_explainable_layers_units_and_auto(arch: str):
    """``n_units`` is the channel dimension of every explainable layer's output; ``auto`` is the expected layer."""
    model, family = model_of(arch), family_for(arch)
    layers = family.explainable_layers(model)
    assert family.resolve_layer(model, "auto") == CASES[arch][0] == layers[-1]
    assert CASES[arch][1] in layers
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: shapes.__setitem__(n, tuple(o.shape))) for n in layers]
    try:
        with torch.no_grad():
            model(images(1))
    finally:
        for h in handles:
            h.remove()
    assert {n: shapes[n][1] for n in layers} == {n: family.n_units(model, n) for n in layers}


def test_blocks_follow_their_convs_and_activation_modules():
    model, family = model_of("resnet18"), family_for("resnet18")
    layers = family.explainable_layers(model)
    assert layers.index("layer4.1.conv2") < layers.index("layer4.1")
    assert "layer4.1.relu" not in layers and "layer4" not in layers
    assert family.activation_module(model, "conv1") is model.bn1
    assert family.activation_module(model, "layer4.0.downsample.0") is model.layer4[0].downsample[1]
    assert family.activation_module(model, "layer4.1") is model.layer4[1]
    eff = model_of("efficientnet_b0")
    assert family_for("efficientnet_b0").activation_module(eff, "features.8.0") is eff.features[8]
    with pytest.raises(ValueError, match=r"layer4\.1\.relu.*not an explainable layer \(nn\.Conv2d or residual block\)"):
        family.resolve_layer(model, "layer4.1.relu")
    dense = model_of("densenet121")
    assert "features.denseblock4" not in family_for("densenet121").explainable_layers(dense)


# --------------------------------------------------------------------------- weights


def test_local_imagenet_weights_load_the_backbone(tmp_path: Path):
    torch.manual_seed(4)
    state = torchvision.models.resnet18(weights=None).state_dict()  # ImageNet-shaped: fc is 1000 x 512
    torch.save(state, tmp_path / "r18.pth")
    model = build_model("resnet18", "gap", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert model.fc.weight.shape == (1, 512)
    assert "IMAGENET1K_V1" in family_for("resnet18").weight_names("resnet18")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match="r34.pth.*layer"):
        build_model("resnet18", "gap", weights=str(tmp_path / "r34.pth"))


def test_checkpoint_round_trip_records_the_block(tmp_path: Path):
    set_seed(5)
    model = build_model("mobilenet_v3_small", "gap").eval()
    spec = save_checkpoint(model, tmp_path,
                           {"arch": "mobilenet_v3_small", "head": "gap", "target_layer": "features.11"})
    assert spec["family"] == "mobilenet" and spec["target_layer"] == "features.11" and spec["target_channels"] == 96
    loaded, _ = load_trained(tmp_path)
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


# --------------------------------------------------------------------------- exact ablation


def _check_against_naive(model: nn.Module, arch: str, layer: str, expected: str, atol: float,
                         generic: bool = True) -> None:
    family = family_for(arch)
    x = images(2, seed=5)
    engine = ChannelAblation(model, layer, family=family)
    assert engine.path == expected, engine.reasons
    y_pred, y_abl = engine(x)  # every unit
    assert y_abl.shape == (2, family.n_units(model, layer))
    sample = spread(engine.n_channels)
    y_ref, abl_ref = naive_ablation(model, layer, x, channels=sample, family=family)
    torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=atol)
    torch.testing.assert_close(y_abl[:, sample], abl_ref, rtol=0, atol=atol)
    assert (abl_ref - y_ref[:, None]).abs().max() > 1e-3  # the deltas are not trivially zero
    if generic:
        _, y_gen = ChannelAblation(model, layer, family=family, path="generic")(x, channels=sample)
        torch.testing.assert_close(y_gen, abl_ref, rtol=0, atol=atol)
    info = engine.describe()
    assert info["path"] == expected and bool(info["why_not_faster"]) == (expected != "lowrank")


@functools.cache
def double_model_of(arch: str) -> nn.Module:
    return copy.deepcopy(model_of(arch)).double()


@pytest.mark.parametrize("which", ["auto", "skip"])
@pytest.mark.parametrize("arch", list(CASES))
def test_engine_equals_naive_float64(arch: str, which: str):
    """In float64 every path of every family equals the naive loop to rounding (1e-9 on outputs of order one)."""
    layer = CASES[arch][0] if which == "auto" else CASES[arch][1]
    expected = AUTO_PATH.get(arch, "lowrank") if which == "auto" else CASES[arch][2]
    _check_against_naive(double_model_of(arch), arch, layer, expected, atol=1e-9)


@pytest.mark.parametrize("arch", list(CASES))
def test_engine_equals_naive_float32(arch: str):
    """In float32, the path taken on the default layer, within 1e-5.

    Not ``generic`` nor deeper cuts here: in EfficientNet and MobileNet, whole-network passes over batches of
    another size amplify float32 rounding (batch-size-dependent kernels) past 1e-5; the float64 test covers them.
    """
    _check_against_naive(model_of(arch), arch, CASES[arch][0], AUTO_PATH.get(arch, "lowrank"), atol=ATOL,
                         generic=False)


def test_resnet_skip_across_the_cut_float32():
    """resnet18 cut inside a residual block: the identity is kept from the one ordinary pass."""
    model = model_of("resnet18")
    for layer, path in (("layer4.0.conv1", "tail"), ("layer4.1.conv2", "lowrank"), ("layer3.1", "tail")):
        _check_against_naive(model, "resnet18", layer, path, atol=ATOL)
        info = ChannelAblation(model, layer).describe()
        assert (info["kept_tensors"], info["kept_by"]) == ((1, "hooks") if layer != "layer3.1" else (0, None))


# --------------------------------------------------------------------------- maps on blocks


def test_maps_on_a_block_and_the_conv_only_default():
    model, family = model_of("resnet18"), family_for("resnet18")
    x = images(2, seed=6)
    maps = compute_maps(model, "layer4.1", x, methods=["gradcam"], family=family)
    assert maps["gradcam"].shape == (2, 32, 32) and float(abs(maps["gradcam"]).max()) == pytest.approx(1.0)
    with pytest.raises(TypeError, match=r"explainable layer of the model \(nn\.Conv2d\), got BasicBlock"):
        GradCAM(model, "layer4.1", family=Family())
    assert not model.training


# --------------------------------------------------------------------------- the workflow


def test_tiny_workflow_resnet18(tmp_path: Path):
    """The whole workflow end to end on resnet18 with its gap head."""
    config = yaml.safe_load(TINY.read_text())
    config["model"].update(arch="resnet18", head="gap")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "config.yaml"))
    specs = list(tmp_path.rglob("model.json"))
    assert len(specs) == 1
    spec = json.loads(specs[0].read_text())
    assert spec["arch"] == "resnet18" and spec["family"] == "resnet"
    assert spec["target_layer"] == "layer4.1" and spec["target_channels"] == 512
    shards = sorted(tmp_path.rglob("ablation/shard-*.parquet"))
    assert shards, "no ablation shard"
    info = json.loads(pq.read_schema(shards[0]).metadata[b"ablation"])
    assert info["path"] == "lowrank" and info["n_channels"] == 512 and info["target_layer"] == "layer4.1"
    assert pq.read_table(shards[0]).num_rows % 512 == 0
    assert list(tmp_path.rglob("report/index.html")), "no report page"
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
