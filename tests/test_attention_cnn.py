"""The seed's spatial-attention CNN: the family, exact ablation, its attention map, entropy, AUCs, the workflow."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from ais import uncertainty
from ais.ablation import ChannelAblation, naive_ablation
from ais.families import family_for
from ais.families.attention_cnn import SpatialAttentionCNN
from ais.map_figures import image_figures
from ais.methods import compute_maps
from ais.methods.attention_map import attention_entropy
from ais.models import build_model, mlp_head, set_seed
from ais.tables import HEATMAP_SCHEMA, IMAGE_STATS, LOCALIZATION_AUCS
from conftest import TINY, run_snakemake

FAMILY = family_for("attention_cnn")


def images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@functools.cache
def calibrated(seed: int = 0) -> nn.Module:
    """A seeded attention CNN whose BatchNorms hold the statistics of random images (units then matter), eval mode."""
    set_seed(seed)
    model = build_model("attention_cnn", "gap")
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
                m.momentum = None
        model.train()(images(8, seed=seed + 2))
        model.eval()
        y = model(images(4, seed=9))[:, 0]
        out = FAMILY.output_layer(model)
        out.weight.div_(float(y.std()))
        out.bias.sub_(float(y.mean())).div_(float(y.std()))
    return model


def test_architecture_is_the_seeds():
    model = build_model("attention_cnn", "gap", n_outputs=2)
    att = [type(m).__name__ for m in model.attention_conv]
    assert att == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "Sigmoid"]
    assert model.attention_conv[0].out_channels == 1 and model.attention_conv[3].out_channels == 1  # max(1, 3 // 4)
    assert SpatialAttentionCNN(input_channels=16).attention_conv[0].out_channels == 4  # reduces channels 4x
    convs = [m for m in model.feature_extractor if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(64, (3, 3), (1, 1)), (128, (3, 3), (1, 1)),
                                                                          (256, (3, 3), (1, 1))]
    assert isinstance(model.feature_extractor[-1], nn.AdaptiveAvgPool2d)
    assert [type(m).__name__ for m in model.fusion] == ["Linear", "ReLU", "Dropout"] and model.fusion[2].p == 0.3
    assert FAMILY.output_layer(model) is model.classifier[0] and model.classifier[0].out_features == 2
    assert FAMILY.explainable_layers(model) == ["feature_extractor.0", "feature_extractor.3", "feature_extractor.6"]
    assert FAMILY.resolve_layer(model, "auto") == "feature_extractor.6" and FAMILY.n_units(model, "feature_extractor.6") == 256
    assert FAMILY.activation_module(model, "feature_extractor.3") is model.feature_extractor[4]  # its BatchNorm


def test_forward_is_input_times_attention():
    model = calibrated()
    x = images(3)
    with torch.no_grad():
        a = model.attention_map(x)
        assert a.shape == (3, 1, 16, 16) and float(a.min()) >= 0 and float(a.max()) <= 1
        f = model.feature_extractor(x * a).flatten(1)
        torch.testing.assert_close(model(x), model.classifier(model.fusion(f)))


def test_heads_and_dropout():
    model = build_model("attention_cnn", "mlp")
    assert mlp_head(model) is model.classifier and model.classifier.fc1.in_features == 512
    assert FAMILY.output_layer(model) is model.classifier[-1]
    plain = FAMILY.set_head_dropout(build_model("attention_cnn", "gap"), 0.1)
    assert plain.fusion[2].p == 0.1
    with pytest.raises(ValueError, match="unknown head"):
        FAMILY.build("attention_cnn", "classifier")
    x = images(2)
    torch.testing.assert_close(uncertainty.mc_samples(plain.eval(), x, 4, seed=1),
                               uncertainty.mc_full_passes(plain, x, 4, seed=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", ["feature_extractor.0", "feature_extractor.3", "feature_extractor.6"])
def test_engine_equals_naive(layer):
    model = calibrated()
    x = images(2, seed=5)
    engine = ChannelAblation(model, layer, family=FAMILY)
    n = FAMILY.n_units(model, layer)
    sample = sorted({round(i * (n - 1) / 5) for i in range(6)})
    last = layer == "feature_extractor.6"  # every unit on the default layer; a sample on the costlier tail path
    y_pred, y_abl = engine(x) if last else engine(x, channels=sample)
    y_ref, abl_ref = naive_ablation(model, layer, x, channels=sample, family=FAMILY)
    torch.testing.assert_close(y_pred, y_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(y_abl[:, sample] if last else y_abl, abl_ref, rtol=0, atol=1e-5)
    assert (abl_ref - y_ref[:, None]).abs().max() > 1e-3
    if layer == "feature_extractor.6":
        assert engine.path == "lowrank", engine.describe()


def test_entropy_against_scipy():
    from scipy.stats import entropy

    rng = np.random.default_rng(0)
    a = rng.random((8, 8))
    assert attention_entropy(a) == pytest.approx(entropy(a.ravel()) / np.log(64), rel=1e-12)
    assert attention_entropy(np.ones((4, 4))) == pytest.approx(1.0)
    one = np.zeros((4, 4))
    one[1, 2] = 1
    assert attention_entropy(one) == 0.0 and np.isnan(attention_entropy(np.zeros((4, 4))))
    assert attention_entropy(a / a.max()) == pytest.approx(attention_entropy(a))  # scale-free


def test_attention_map_method_and_figures():
    model = calibrated()
    x = images(2, size=16, seed=3)
    maps = compute_maps(model, "feature_extractor.6", x, methods=["gradcam", "spatial_attention"], family=FAMILY)
    with torch.no_grad():
        a = model.attention_map(x)[:, 0]
    expected = (a / a.amax(dim=(1, 2), keepdim=True)).numpy()
    np.testing.assert_allclose(maps["spatial_attention"], expected, rtol=1e-6, atol=1e-7)
    assert "spatial_attention_entropy" in IMAGE_STATS and "spatial_attention_entropy" in HEATMAP_SCHEMA.names
    assert {"spatial_attention_auc", "spatial_attention_lower_auc"} <= set(LOCALIZATION_AUCS)
    raise_mask = np.zeros((16, 16), bool)
    raise_mask[:, :8] = True
    one = {k: v[0] for k, v in maps.items()}
    one["ais"] = one["gradcam"]  # image_figures compares |AIS| with the references
    figs = image_figures(one, {"raise": raise_mask, "lower": ~raise_mask})
    assert figs["spatial_attention_entropy"] == pytest.approx(attention_entropy(a[0].numpy()), rel=1e-5)
    from sklearn.metrics import roc_auc_score

    assert figs["spatial_attention_auc"] == pytest.approx(roc_auc_score(raise_mask.ravel(), expected[0].ravel()))
    vgg = build_model("vgg11", "gap").eval()  # no attention branch: no map, no error
    assert "spatial_attention" not in compute_maps(vgg, "features.18", images(1, size=32),
                                                   methods=["gradcam", "spatial_attention"])


def test_tiny_workflow_attention_cnn(tmp_path: Path):
    """The whole workflow on the attention CNN: its attention map drawn, entropy and AUCs in the figures."""
    config = yaml.safe_load(TINY.read_text())
    config["model"].update(arch="attention_cnn", head="gap")  # 32 px, the schema's smallest
    config["heatmaps"]["views"] = ["ais", "gradcam", "spatial_attention"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "config.yaml"))
    spec = json.loads(next(tmp_path.rglob("model.json")).read_text())
    assert spec["family"] == "attention_cnn" and spec["target_layer"] == "feature_extractor.6"
    shard = sorted(tmp_path.rglob("ablation/shard-*.parquet"))[0]
    assert json.loads(pq.read_schema(shard).metadata[b"ablation"])["path"] == "lowrank"
    table = pq.read_table(next(tmp_path.rglob("heatmaps/agreement.parquet"))).to_pandas()
    entropy = table["spatial_attention_entropy"].to_numpy(float)
    assert len(table) and np.isfinite(entropy).all() and ((entropy > 0) & (entropy <= 1)).all()
    loc = json.loads(next(tmp_path.rglob("localization.json")).read_text())
    assert loc["spatial_attention_auc"] is not None and 0 <= loc["spatial_attention_auc"] <= 1
    assert loc["image_stats"]["spatial_attention_entropy"]["n_images"] == len(table)
    maps = np.load(next(tmp_path.rglob("maps/*.npz")))
    assert "spatial_attention" in maps.files
    assert list(tmp_path.rglob("report/index.html")), "no report page"
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)
