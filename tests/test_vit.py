"""Vision Transformers (issue 15): torchvision, timm and Hugging Face ViT families, units, maps, exact ablation.

Oracles: the libraries' own attention (torchvision's fused ``nn.MultiheadAttention``
with ``need_weights=True``, timm's fused attention, transformers' own
``ViTForImageClassification``), weight zeroing for the naive reference,
pytorch-grad-cam's ``reshape_transform`` written out, and a loop-by-loop
attention rollout written here.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from ais.ablation import ChannelAblation, naive_ablation
from ais.families import family_for, list_archs
from ais.families.vit import prefix_tokens, tokens_to_grid, units_to_grid
from ais.methods import compute_maps
from ais.models import build_model
from conftest import TINY, run_snakemake, small_cnn

ATOL = 1e-5
TV, TIMM, HF = "vit_micro_8", "timm_vit_micro_8", "hf_vit_micro_8"

try:
    import timm
except ImportError:  # pragma: no cover - the timm extra
    timm = None
try:
    import transformers
except ImportError:  # pragma: no cover - the hf extra
    transformers = None

needs_timm = pytest.mark.skipif(timm is None, reason="timm not installed (pip install -e '.[timm]')")
needs_hf = pytest.mark.skipif(transformers is None, reason="transformers not installed (pip install -e '.[hf]')")
ARCHS = [pytest.param(TV, "token", id="torchvision"),
         pytest.param(TIMM, "token", id="timm-token", marks=needs_timm),
         pytest.param(TIMM, "avg", id="timm-avg", marks=needs_timm),
         pytest.param(HF, "token", id="hf-token", marks=needs_hf),
         pytest.param(HF, "avg", id="hf-avg", marks=needs_hf)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def vit(arch: str, head: str = "token", n_outputs: int = 1, seed: int = 0) -> nn.Module:
    """A built ViT with every parameter drawn at random (torchvision's head starts at zero), eval mode."""
    torch.manual_seed(seed)
    model = build_model(arch, head, n_outputs=n_outputs)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


def images(n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- families


def test_registered_and_layers():
    for arch in ("vit_b_16", "vit_b_32", "vit_l_16", TV, "vit_small_patch16_224", "vit_base_patch16_224", TIMM,
                 "hf_vit_base_patch16_224", "hf_vit_small_patch16_224", HF):
        assert arch in list_archs()
    model, family = vit(TV), family_for(TV)
    prefix = "encoder.layers.encoder_layer_"
    assert family.explainable_layers(model) == [
        f"{prefix}0.self_attention.out_proj.heads", f"{prefix}0.mlp.1.neurons",
        f"{prefix}1.self_attention.out_proj.heads", f"{prefix}1.mlp.1.neurons"]
    assert family.resolve_layer(model, "auto") == f"{prefix}1.mlp.1.neurons"
    assert family.resolve_layer(model, f"{prefix}0.mlp") == f"{prefix}0.mlp.1.neurons"
    assert family.resolve_layer(model, f"{prefix}1.self_attention") == f"{prefix}1.self_attention.out_proj.heads"
    assert family.n_units(model, f"{prefix}1.mlp.1.neurons") == 64
    assert family.n_units(model, f"{prefix}1.self_attention.out_proj.heads") == 2
    assert family.output_layer(model) is model.heads.head
    with pytest.raises(ValueError, match=r"model\.target_layer='encoder\.ln'.*auto"):
        family.resolve_layer(model, "encoder.ln")
    with pytest.raises(ValueError, match=r"model\.head='gap'.*token"):
        build_model(TV, "gap")


def test_vit_b_16_shape_and_layers():
    """The real vit_b_16: 12 blocks, 3072 MLP neurons and 12 heads per block (built, not run)."""
    model, family = build_model("vit_b_16", "token"), family_for("vit_b_16")
    assert family.resolve_layer(model, "auto") == "encoder.layers.encoder_layer_11.mlp.1.neurons"
    assert family.n_units(model, "encoder.layers.encoder_layer_11.mlp") == 3072
    assert family.n_units(model, "encoder.layers.encoder_layer_11.self_attention.out_proj.heads") == 12
    assert "IMAGENET1K_V1" in family.weight_names("vit_b_16")


def test_torchvision_eager_attention_equals_fused():
    """The eager attention with its taps gives torchvision's own (fused, need_weights=False) outputs."""
    from torchvision.models.vision_transformer import VisionTransformer

    model = vit(TV, n_outputs=3)
    reference = VisionTransformer(num_classes=3, **family_for(TV).micro).eval()
    reference.load_state_dict(model.state_dict())  # same keys: the taps hold no parameters
    x = images()
    torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_local_weights_torchvision(tmp_path: Path):
    from safetensors.torch import save_file
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(3)
    reference = VisionTransformer(num_classes=1, **family_for(TV).micro)
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    model = build_model(TV, "token", weights=str(tmp_path / "w.safetensors")).eval()
    torch.testing.assert_close(model(images()), reference.eval()(images()), rtol=1e-5, atol=1e-5)


@needs_timm
@pytest.mark.parametrize("head", ["token", "avg"])
def test_timm_eager_equals_timm_and_local_safetensors(tmp_path: Path, head: str):
    """timm's own fused model, saved to .safetensors, loads through build_model and gives the same outputs."""
    from safetensors.torch import save_file

    from ais.families.timm_vit import MICRO

    torch.manual_seed(4)
    pool = dict(global_pool="avg", fc_norm=False) if head == "avg" else {}
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1, **MICRO, **pool).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.normal_(0.0, 0.2)
    save_file(reference.state_dict(), str(tmp_path / "model.safetensors"))
    model = build_model(TIMM, head, weights=str(tmp_path / "model.safetensors")).eval()
    torch.testing.assert_close(model(images()), reference(images()), rtol=1e-5, atol=1e-5)
    torch.save(reference.state_dict(), tmp_path / "model.pth")
    with pytest.raises(ValueError, match=r"\.safetensors.*pickled checkpoints are refused"):
        build_model(TIMM, head, weights=str(tmp_path / "model.pth"))


@needs_hf
def test_hf_folder_classifier_and_backbone(tmp_path: Path):
    """A save_pretrained folder: ViTForImageClassification loads whole; a ViTModel folder loads the backbone."""
    from ais.families.hf_vit import PRESETS

    torch.manual_seed(5)
    config = transformers.ViTConfig(**PRESETS[HF], num_labels=1)
    reference = transformers.ViTForImageClassification(config).eval()
    reference.save_pretrained(tmp_path / "clf")
    model = build_model(HF, "token", weights=str(tmp_path / "clf")).eval()
    torch.testing.assert_close(model(images()), reference(pixel_values=images()).logits, rtol=1e-5, atol=1e-5)

    backbone = transformers.ViTModel(config, add_pooling_layer=True).eval()
    backbone.save_pretrained(tmp_path / "features")
    model = build_model(HF, "avg", weights=str(tmp_path / "features")).eval()
    feats = backbone(pixel_values=images()).last_hidden_state[:, 1:].mean(1)
    torch.testing.assert_close(model(images()), model.classifier(feats), rtol=1e-5, atol=1e-5)

    transformers.ViTModel(transformers.ViTConfig(**{**PRESETS[HF], "hidden_size": 48})).save_pretrained(
        tmp_path / "wide")
    with pytest.raises(ValueError, match=r"not a hf_vit_micro_8.*hidden_size"):
        build_model(HF, "token", weights=str(tmp_path / "wide"))
    with pytest.raises(ValueError, match="local model folder"):
        build_model(HF, "token", weights=str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- ablation


def _naive_by_weights(model: nn.Module, arch: str, layer: str, x: torch.Tensor) -> torch.Tensor:
    """An independent oracle for the naive hook: zero fc1's row j (GELU(0) = 0), or the out-projection's head columns."""
    family = family_for(arch)
    block, kind = family.stack(model).sites[layer]
    site = model.get_submodule(layer)
    if kind == "mlp":  # .../mlp.1.neurons: the MLP holds fc1 (torchvision: mlp.0)
        parent = model.get_submodule(layer.rsplit(".", 2)[0])
        fc1 = parent[0] if isinstance(parent, nn.Sequential) else parent.fc1
    else:
        proj = model.get_submodule(layer.rpartition(".")[0])
    cols = []
    with torch.no_grad():
        for j in range(site.units):
            weight = fc1 if kind == "mlp" else proj
            saved = weight.weight.clone(), weight.bias.clone()
            if kind == "mlp":
                fc1.weight[j] = 0
                fc1.bias[j] = 0
            else:
                d = proj.in_features // site.units
                proj.weight[:, j * d:(j + 1) * d] = 0
            cols.append(model(x)[:, 0])
            weight.weight.copy_(saved[0])
            weight.bias.copy_(saved[1])
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("arch,head", ARCHS)
def test_engine_equals_naive_every_site(arch: str, head: str):
    """Middle and last block, MLP neurons and heads: the residual path and generic equal the naive loop (1e-5)."""
    model, family, x = vit(arch, head), family_for(arch), images()
    for layer in family.explainable_layers(model):
        y_ref, abl_ref = naive_ablation(model, layer, x, family=family)
        assert (abl_ref - y_ref[:, None]).abs().max() > 1e-3, "units do not matter: the test would be vacuous"
        if arch == TV:
            torch.testing.assert_close(abl_ref, _naive_by_weights(model, arch, layer, x), rtol=0, atol=ATOL)
        for path, channel_batch in (("auto", "auto"), ("auto", 5), ("generic", 7)):
            engine = ChannelAblation(model, layer, path=path, channel_batch=channel_batch)  # found without family
            y_pred, y_abl = engine(x)
            assert engine.path == ("residual" if path == "auto" else path)
            torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=ATOL)
            torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=ATOL)


def test_last_block_reads_the_class_token_only():
    """The residual plan of the last block forms only token 0's stream; a middle block keeps every token."""
    model = vit(TV)
    last = ChannelAblation(model, "auto")
    middle = ChannelAblation(model, "encoder.layers.encoder_layer_0.mlp")
    assert last._residual.tokens == slice(0, 1) and middle._residual.tokens == slice(None)
    assert last.describe()["path"] == "residual" and last.why_not_faster() == {}
    assert ChannelAblation(model, "auto", path="generic").why_not_faster() == {"residual": "path='generic' was asked for"}
    with pytest.raises(ValueError, match="lowrank.*does not apply.*residual path applies"):
        ChannelAblation(model, "auto", path="lowrank")


def test_channels_subset_model_unchanged_and_float64():
    model = vit(TV).double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(2).double()
    layer = "encoder.layers.encoder_layer_0.self_attention.out_proj.heads"
    y_ref, abl_ref = naive_ablation(model, layer, x, channels=[1])
    with ChannelAblation(model, layer) as engine:
        _, y_abl = engine(x, channels=[1])
    torch.testing.assert_close(y_abl, abl_ref, rtol=0, atol=1e-9)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- maps


def reshape_transform(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """pytorch-grad-cam's ViT reshape_transform (its tutorial), written out."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def test_tokens_to_grid_is_gradcams_reshape_transform():
    t = torch.randn(2, 1 + 4 * 4, 5)
    torch.testing.assert_close(tokens_to_grid(t), reshape_transform(t, 4, 4), rtol=0, atol=0)
    torch.testing.assert_close(units_to_grid(t.transpose(1, 2)), reshape_transform(t, 4, 4), rtol=0, atol=0)
    assert [prefix_tokens(n) for n in (197, 201, 196, 17, 2)] == [1, 5, 0, 1, 1]


def test_gradcam_on_the_token_grid():
    """Grad-CAM of the last MLP: the gradient of the output with respect to the GELU output, on the grid."""
    from ais.methods.gradcam import GradCAM

    model, family, x = vit(TV), family_for(TV), images(2)
    layer = family.resolve_layer(model, "auto")
    kept = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    out = model(x)
    handle.remove()
    (grad,) = torch.autograd.grad(out[:, 0].sum(), kept["a"])  # the site shows the neurons as (N, C, T)
    acts, grads = reshape_transform(kept["a"].transpose(1, 2), 4, 4), reshape_transform(grad.transpose(1, 2), 4, 4)
    cam = torch.relu((grads.mean(dim=(2, 3))[:, :, None, None] * acts).sum(1))
    expected = torch.nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    got = GradCAM(model, layer, family=family).attribute(x)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-6)


def _torchvision_attention(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's head-averaged attention weights from torchvision's own MultiheadAttention (need_weights=True)."""
    from torchvision.models.vision_transformer import VisionTransformer

    reference = VisionTransformer(num_classes=1, **family_for(TV).micro).eval()
    reference.load_state_dict(model.state_dict())
    weights = []
    for block in reference.encoder.layers:
        def hook(m, inputs, output, block=block):
            y = block.ln_1(inputs[0])
            weights.append(block.self_attention(y, y, y, need_weights=True, average_attn_weights=True)[1])
        block.register_forward_hook(hook)
    reference(x)
    return weights


def rollout_loops(weights: list[torch.Tensor]) -> torch.Tensor:
    """Abnar & Zuidema's rollout from head-averaged weights (N, T, T), row by row in Python loops."""
    n, t, _ = weights[0].shape
    result = torch.eye(t, dtype=torch.float64).repeat(n, 1, 1)
    for w in weights:
        a = torch.zeros(n, t, t, dtype=torch.float64)
        for b in range(n):
            for i in range(t):
                row = [float(w[b, i, j]) + (1.0 if i == j else 0.0) for j in range(t)]
                total = sum(row)
                for j in range(t):
                    a[b, i, j] = row[j] / total
        new = torch.zeros_like(result)
        for b in range(n):
            for i in range(t):
                for j in range(t):
                    new[b, i, j] = sum(a[b, i, k] * result[b, k, j] for k in range(t))
        result = new
    return result


def test_attention_and_rollout_maps():
    from ais.methods.base import upsample

    model, family, x = vit(TV), family_for(TV), images(2)
    layer = family.resolve_layer(model, "auto")
    maps = compute_maps(model, layer, x, {}, methods=["attention", "rollout"], family=family)
    weights = _torchvision_attention(model, x)
    attn = upsample(weights[-1][:, 0, 1:].reshape(2, 4, 4), (32, 32))
    expected = (attn / attn.amax(dim=(1, 2), keepdim=True)).detach().numpy()
    assert abs(maps["attention"] - expected).max() < 1e-5
    roll = rollout_loops([w.detach() for w in weights])[:, 0, 1:].reshape(2, 4, 4).float()
    roll = upsample(roll, (32, 32))
    assert abs(maps["rollout"] - (roll / roll.amax(dim=(1, 2), keepdim=True)).numpy()).max() < 1e-5


def test_attention_methods_do_not_apply_to_cnns(caplog):
    model = small_cnn()
    import ais.methods
    ais.methods._SAID.clear()  # "no map" is logged once per method and model class in a process
    with caplog.at_level("INFO", logger="ais.methods"):
        maps = compute_maps(model, "3", torch.randn(2, 3, 8, 8), {}, methods=["gradcam", "attention", "rollout"])
    assert set(maps) == {"gradcam"}
    assert "has no attention weights" in caplog.text


@pytest.mark.parametrize("arch,head", ARCHS)
def test_every_map_on_the_patch_grid(arch: str, head: str):
    """Every default method on the last MLP and on the heads of block 0: (N, H, W) maps in [-1, 1].

    With a class-token head, the last block's patch tokens no longer reach the output: the gradient
    there is zero on the patch grid, and so are Grad-CAM and Grad-CAM++ (the README says so).
    """
    model, family, x = vit(arch, head), family_for(arch), images(2)
    for layer in (family.resolve_layer(model, "auto"), family.explainable_layers(model)[0]):
        c = family.n_units(model, layer)
        inputs = {"ais_weights": torch.randn(2, c), "direction_weights": torch.randn(2, c)}
        maps = compute_maps(model, layer, x, inputs, family=family)
        blind = head == "token" and layer == family.resolve_layer(model, "auto")
        for name in ("ais", "direction", "gradcam", "gradcampp", "attention", "rollout"):
            assert maps[name].shape == (2, 32, 32) and (abs(maps[name]) <= 1 + 1e-6).all(), name
            if name.startswith("gradcam"):  # (elsewhere a ReLU'd CAM of a random model may be zero too)
                assert not blind or abs(maps[name]).max() == 0, name
            else:
                assert abs(maps[name]).max() > 0, name


def test_head_gradient_is_the_derivative_along_the_head_output():
    """For heads the grid is ||o_h(t)||; its gradient is (g . o) / ||o||, checked by a finite difference."""
    family = family_for(TV)
    o = torch.randn(1, 2, 5, 3, dtype=torch.float64)  # (N, H, T, d)
    g = torch.randn_like(o)
    eps = 1e-6
    f = lambda t: (g * t).sum()  # noqa: E731  a linear target of the heads' outputs
    grid_grad = family.grid_gradient(o, g)
    scale = 1 + eps / family.to_grid(o)[0, 1, 0, 1]  # stretch head 1 at patch (0, 1) (token 2) by eps in norm
    o2 = o.clone()
    o2[0, 1, 2] *= scale
    assert math.isclose(float((f(o2) - f(o)) / eps), float(grid_grad[0, 1, 0, 1]), rel_tol=1e-4)


# ----------------------------------------------------------------------------- workflow


WORKFLOW = [pytest.param(TV, "token", id="torchvision"),
            pytest.param(TIMM, "avg", id="timm", marks=needs_timm),
            pytest.param(HF, "token", id="hf", marks=needs_hf)]


@pytest.mark.slow
@pytest.mark.parametrize("arch,head", WORKFLOW)
def test_tiny_workflow_vit(tmp_path: Path, arch: str, head: str):
    """The whole workflow end to end on a tiny ViT of each family: last block's MLP, residual path, report."""
    config = yaml.safe_load(TINY.read_text())
    config["model"].update(arch=arch, head=head)
    config["heatmaps"]["optional_methods"] = ["attention", "rollout"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "config.yaml"))
    spec = json.loads(next(tmp_path.rglob("model.json")).read_text())
    model = build_model(arch, head)
    layer = family_for(arch).explainable_layers(model)[-1]
    units = family_for(arch).n_units(model, layer)  # the MLP's hidden width: 64 (torchvision, HF), 128 (timm)
    assert spec["arch"] == arch and spec["target_layer"] == layer and spec["target_channels"] == units
    shards = sorted(tmp_path.rglob("ablation/shard-*.parquet"))
    info = json.loads(pq.read_schema(shards[0]).metadata[b"ablation"])
    assert info["path"] == "residual" and info["n_channels"] == units
    assert list(tmp_path.rglob("report/index.html")), "no report page"
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
