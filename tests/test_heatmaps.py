"""AIS map, primary map, Grad-CAM and Grad-CAM++: hand-computed values, Captum as oracle, hooks released."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ais.families import Family
from ais.io import read_maps, write_maps
from ais.methods import compute_maps
from ais.methods.ais_map import AISMap
from ais.methods.gradcam import GradCAM
from ais.methods.gradcampp import GradCAMPlusPlus
from ais.targets import NegatedTarget

# ---------------------------------------------------------------------------- a tiny hand-made net
#
# conv 1x1, two channels: A0 = x - 2, A1 = -x + 3; then ReLU(inplace), global
# average pool, y = 2 * mean(ReLU(A0)) - 1 * mean(ReLU(A1)).
# For the layer input x = [[1, 2], [3, 4]]:
#   A0 = [[-1, 0], [1, 2]]   ReLU(A0) = [[0, 0], [1, 2]]
#   A1 = [[ 2, 1], [0, -1]]  ReLU(A1) = [[2, 1], [0, 0]]
#   dy/dA0 = 2/4 * [A0 > 0] = [[0, 0], [0.5, 0.5]]        mean 0.25
#   dy/dA1 = -1/4 * [A1 > 0] = [[-0.25, -0.25], [0, 0]]   mean -0.125


def tiny_net(pool: bool = False, bn: bool = False) -> nn.Sequential:
    conv = nn.Conv2d(1, 2, kernel_size=1)
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.copy_(torch.tensor([-2.0, 3.0]))
        lin.weight.copy_(torch.tensor([[2.0, -1.0]]))
        lin.bias.zero_()
    layers: list[nn.Module] = [nn.AvgPool2d(2)] if pool else []
    layers.append(conv)
    if bn:
        norm = nn.BatchNorm2d(2)
        with torch.no_grad():
            norm.running_mean.copy_(torch.tensor([0.5, -0.5]))
            norm.running_var.copy_(torch.tensor([4.0, 0.25]))
            norm.weight.copy_(torch.tensor([2.0, 1.0]))
            norm.bias.copy_(torch.tensor([0.0, -1.0]))
        layers.append(norm)
    layers += [nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), lin]
    return nn.Sequential(*layers).eval()


X2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
# 4 x 4 input whose 2 x 2 block means are X2: the pooled net's layer sees X2 again.
X4 = torch.kron(X2[0, 0], torch.ones(2, 2)).view(1, 1, 4, 4)


def conv_of(model: nn.Sequential) -> nn.Conv2d:
    return next(m for m in model if isinstance(m, nn.Conv2d))


def assert_no_hooks(model: nn.Module) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert not m._backward_hooks and not m._backward_pre_hooks


def test_ais_map_by_hand_at_layer_resolution():
    model = tiny_net()
    # 1 * [[0, 0], [1, 2]] - 0.5 * [[2, 1], [0, 0]] = [[-1, -0.5], [1, 2]]
    raw = AISMap(model, conv_of(model)).attribute(X2, torch.tensor([1.0, -0.5]))
    torch.testing.assert_close(raw, torch.tensor([[[-1.0, -0.5], [1.0, 2.0]]]))
    norm = AISMap(model, conv_of(model))(X2, np.array([[1.0, -0.5]]))
    torch.testing.assert_close(norm, torch.tensor([[[-0.5, -0.25], [0.5, 1.0]]]))


def test_ais_map_by_hand_upsampled():
    model = tiny_net(pool=True)
    out = AISMap(model, conv_of(model))(X4, torch.tensor([1.0, -0.5]))
    # bilinear, align_corners=False, 2 -> 4: [a, b] -> [a, .75a + .25b, .25a + .75b, b] on each axis
    expected = torch.tensor(
        [
            [-0.5, -0.4375, -0.3125, -0.25],
            [-0.25, -0.171875, -0.015625, 0.0625],
            [0.25, 0.359375, 0.578125, 0.6875],
            [0.5, 0.625, 0.875, 1.0],
        ]
    )
    torch.testing.assert_close(out[0], expected)


def test_gradcam_by_hand():
    model = tiny_net(pool=True)
    cam = GradCAM(model, conv_of(model))
    # 0.25 * A0 - 0.125 * A1 = [[-0.5, -0.125], [0.25, 0.625]] -> ReLU -> [[0, 0], [0.25, 0.625]]
    cap = cam.capture(X4)
    torch.testing.assert_close(cam.layer_map(cap), torch.tensor([[[0.0, 0.0], [0.25, 0.625]]]))
    torch.testing.assert_close(cap.grad, torch.tensor([[[[0.0, 0.0], [0.5, 0.5]], [[-0.25, -0.25], [0.0, 0.0]]]]))
    expected = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],
            [0.0625, 0.0859375, 0.1328125, 0.15625],
            [0.1875, 0.2578125, 0.3984375, 0.46875],
            [0.25, 0.34375, 0.53125, 0.625],
        ]
    )
    torch.testing.assert_close(cam.attribute(X4)[0], expected)
    torch.testing.assert_close(cam(X4)[0], expected / 0.625)


def test_gradcam_plus_plus_by_hand():
    model = tiny_net()
    # channel 0: g = 0.5 at 2 pixels, sum(A0) = 2: alpha = 0.25 / (0.5 + 2 * 0.125 + 1e-6)
    # w0 = 2 * 0.5 * alpha = 1/3; channel 1: ReLU(g) = 0 -> w1 = 0; cam = ReLU(w0 * A0)
    w0 = 0.25 / (0.75 + 1e-6)
    cam = GradCAMPlusPlus(model, conv_of(model))
    torch.testing.assert_close(cam.attribute(X2), torch.tensor([[[0.0, 0.0], [w0, 2 * w0]]]))
    torch.testing.assert_close(cam(X2), torch.tensor([[[0.0, 0.0], [0.5, 1.0]]]))


def test_gradcam_negated_target_flips_weights():
    model = tiny_net()
    # -(0.25 A0 - 0.125 A1) = [[0.5, 0.125], [-0.25, -0.625]] -> ReLU
    cam = GradCAM(model, conv_of(model), target=NegatedTarget())
    torch.testing.assert_close(cam.attribute(X2), torch.tensor([[[0.5, 0.125], [0.0, 0.0]]]))


# ---------------------------------------------------------------------------- torchvision VGG


@pytest.fixture(scope="module")
def vgg11():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None)
    model.classifier[-1] = nn.Linear(4096, 1)
    return model.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_gradcam_matches_captum_on_vgg11(vgg11, images):
    captum_attr = pytest.importorskip("captum.attr")
    layer = vgg11.features[18]  # last Conv2d, followed by ReLU(inplace=True)
    ref = captum_attr.LayerGradCam(vgg11, layer).attribute(images, target=0, relu_attributions=True)
    ref = captum_attr.LayerAttribution.interpolate(ref, (64, 64), interpolate_mode="bilinear")[:, 0].detach()
    ours = GradCAM(vgg11, layer).attribute(images)
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))
    assert (ours - ref).abs().max() < 1e-5
    assert_no_hooks(vgg11)


def test_inplace_relu_activation_is_relu_of_conv(vgg11, images):
    layer = vgg11.features[18]
    assert Family().activation_module(vgg11, layer) is layer
    cap = GradCAM(vgg11, "features.18").capture(images)
    with torch.no_grad():
        conv_out = layer(vgg11.features[:18](images))
    torch.testing.assert_close(cap.conv, conv_out)  # the kept conv output was not overwritten
    assert (cap.conv < 0).any()
    torch.testing.assert_close(cap.activation, torch.relu(conv_out))


def test_batchnorm_activation_is_relu_of_bn():
    model = tiny_net(bn=True)
    conv, norm = model[0], model[1]
    assert Family().activation_module(model, conv) is norm
    cap = AISMap(model, conv).capture(X2)
    with torch.no_grad():
        torch.testing.assert_close(cap.activation, torch.relu(norm(conv(X2))))
        torch.testing.assert_close(cap.conv, conv(X2))


def test_vgg_bn_activation_module_is_batchnorm():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.vgg11_bn(weights=None)
    assert Family().activation_module(model, model.features[25]) is model.features[26]


def test_ais_map_range_and_zero_weights(vgg11, images):
    layer = vgg11.features[18]
    w = torch.randn(2, 512, generator=torch.Generator().manual_seed(2))
    maps = AISMap(vgg11, layer)(images, w)
    assert maps.shape == (2, 64, 64)
    assert maps.min() >= -1 and maps.max() <= 1
    torch.testing.assert_close(maps.abs().amax(dim=(1, 2)), torch.ones(2))
    zero = AISMap(vgg11, layer)(images, torch.zeros(512))
    assert torch.count_nonzero(zero) == 0
    with pytest.raises(ValueError, match="shape"):
        AISMap(vgg11, layer)(images, torch.zeros(3, 512))


def test_model_unchanged_and_hooks_released_also_after_an_exception():
    model = tiny_net(pool=True, bn=True).train()  # train mode: BN would update its running stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    conv = conv_of(model)

    GradCAM(model, conv)(X4)
    AISMap(model, conv)(X4, torch.ones(2))
    compute_maps(model, conv, X4, {"ais_weights": torch.ones(2), "direction_weights": torch.ones(1, 2)})

    def broken_target(output: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    with pytest.raises(RuntimeError, match="target failed"):
        GradCAM(model, conv, target=broken_target)(X4)
    with pytest.raises(RuntimeError):
        AISMap(model, conv)(torch.zeros(1, 3, 4, 4), torch.ones(2))  # wrong channel count in forward

    assert_no_hooks(model)
    assert all(m.training for m in model.modules())  # modes restored
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compute_maps_and_save_load(tmp_path, vgg11, images):
    rng = np.random.default_rng(0)
    inputs = {"ais_weights": rng.normal(size=(2, 512)), "direction_weights": rng.normal(size=(2, 512))}
    maps = compute_maps(vgg11, "features.18", images, inputs, with_scales=True)
    for key in ("ais", "helpful", "harmful", "direction", "gradcam", "gradcampp", "primary", "saliency",
                "input_x_gradient", "occlusion"):
        assert maps[key].shape == (2, 64, 64) and maps[key].dtype == np.float32
        assert maps[f"{key}_scale"].shape == (2,)
        assert np.abs(maps[key]).max() <= 1.0 + 1e-6
    assert maps["gradcam"].min() >= 0 and maps["gradcampp"].min() >= 0 and maps["saliency"].min() >= 0
    assert maps["helpful"].min() >= 0 and maps["harmful"].max() <= 0
    shared = np.maximum(np.abs(maps["helpful"]).max((1, 2)), np.abs(maps["harmful"]).max((1, 2)))
    np.testing.assert_allclose(shared, 1.0)  # one scale for both
    # Grad-CAM from compute_maps equals GradCAM's own normalised map
    np.testing.assert_allclose(maps["gradcam"], GradCAM(vgg11, "features.18")(images).numpy(), atol=1e-6)

    path = tmp_path / "maps" / "shard-0.npz"
    write_maps(path, {**maps, "image_id": np.array(["a", "b"])})
    loaded = read_maps(path)
    assert list(loaded["image_id"]) == ["a", "b"]
    np.testing.assert_allclose(loaded["ais"], maps["ais"], atol=1e-3)  # float16
    assert [p.name for p in path.parent.iterdir()] == ["shard-0.npz"]  # no temporary left


# ---------------------------------------------------------------------------- the seed's primary map


def test_primary_map_by_hand_helpful_channels_signed_by_direction():
    # channel 0 helpful (AIS > 0) with -Δy = -0.5 (it lowers the output); channel 1 harmful: left out.
    # ReLU(A0) = [[0, 0], [1, 2]] -> primary = -0.5 * ReLU(A0) = [[0, 0], [-0.5, -1]], scale 1.
    model = tiny_net()
    inputs = {"ais_weights": torch.tensor([[1.0, -1.0]]), "direction_weights": torch.tensor([[-0.5, 3.0]])}
    maps = compute_maps(model, conv_of(model), X2, inputs, methods=["ais", "primary"], with_scales=True)
    np.testing.assert_allclose(maps["primary"][0], [[0.0, 0.0], [-0.5, -1.0]])
    np.testing.assert_allclose(maps["primary_scale"], [1.0])
    # flipping the direction flips the colours; making channel 0 harmful empties the map
    flipped = compute_maps(model, conv_of(model), X2, {**inputs, "direction_weights": -inputs["direction_weights"]},
                           methods=["primary"])
    np.testing.assert_allclose(flipped["primary"], -maps["primary"])
    none = compute_maps(model, conv_of(model), X2, {**inputs, "ais_weights": -torch.ones(1, 2)}, methods=["primary"])
    assert np.count_nonzero(none["primary"]) == 0
    # the existing maps are unchanged by the new method: AIS, helpful and harmful as before
    alone = compute_maps(model, conv_of(model), X2, inputs, methods=["ais"])
    for key in ("ais", "helpful", "harmful"):
        np.testing.assert_array_equal(alone[key], maps[key])


def test_optional_methods_and_their_schema_enum():
    from ais.config import load_schema, validate_config
    from ais.methods import configured_methods, get_method, list_methods
    from ais.tables import LOCALIZATION_AUCS

    optional = [m for m in list_methods() if get_method(m).optional]
    assert optional == ["occlusion", "attention", "rollout"]  # attention, rollout: ViTs (tests/test_vit.py)
    heat = load_schema()["properties"]["heatmaps"]["properties"]
    assert heat["optional_methods"]["items"]["enum"] == optional
    assert "occlusion" not in configured_methods() and "occlusion" in configured_methods(["occlusion"])
    assert configured_methods()[:4] == ["ais", "direction", "gradcam", "gradcampp"]  # the existing maps first
    with pytest.raises(ValueError, match="optional_methods"):
        configured_methods(["gradcam"])
    assert validate_config({})["heatmaps"]["optional_methods"] == []
    assert {"primary_pos_auc", "saliency_auc", "occlusion_pos_auc", "input_x_gradient_neg_auc"} <= set(LOCALIZATION_AUCS)


def test_image_figures_leave_an_uncomputed_map_null():
    from ais.map_figures import image_figures

    rng = np.random.default_rng(0)
    maps = {k: rng.uniform(0, 1, (6, 6)) for k in ("ais", "helpful", "harmful", "direction", "gradcam", "gradcampp",
                                                   "primary", "saliency", "input_x_gradient")}
    masks = {"raise": np.eye(6, dtype=bool), "lower": np.eye(6, dtype=bool)[::-1]}
    out = image_figures(maps, masks)
    assert np.isnan(out["occlusion_pos_auc"]) and np.isfinite(out["primary_pos_auc"])
    assert np.isfinite(out["cc_saliency"])
