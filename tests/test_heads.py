"""Heads (``model.head: mlp``) for every family and frozen backbones (``train.freeze_backbone``, ais.frozen)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from ais import uncertainty
from ais.config import check_target_layer, validate_config
from ais.families import Family, family_for
from ais.frozen import FeatureDataset, freeze_backbone, head_module
from ais.images import ImageDataset
from ais.models import MLPHead, build_model, build_net, load_trained, mlp_head, save_checkpoint, set_head_dropout
from ais.tasks import get_task
from ais.training import train

# One family per place the output Linear sits: alone in a Sequential (VGG's gap), an attribute of the model
# (ResNet; also DenseNet, RegNet), the last of a longer Sequential (EfficientNet, MobileNet; also ConvNeXt).
ONE_PER_FAMILY = ("vgg11", "resnet18", "efficientnet_b0", "mobilenet_v3_small")


class SeedHead(nn.Module):
    """The DINO seed's classifier, written out as the seed writes it (the reference for the default MLP head)."""

    def __init__(self, d: int, k: int, p: float = 0.3) -> None:
        super().__init__()
        self.fc1, self.dropout1, self.relu = nn.Linear(d, 128), nn.Dropout(p), nn.ReLU()
        self.fc2, self.dropout2, self.fc3 = nn.Linear(128, 64), nn.Dropout(p), nn.Linear(64, k)

    def forward(self, x):
        x = self.dropout1(x)
        x = self.relu(self.fc1(x))
        x = self.dropout2(x)
        return self.fc3(self.fc2(x))


def test_default_mlp_head_is_the_seeds_classifier():
    head = MLPHead(384, 2)
    kinds = [(type(m).__name__, getattr(m, "in_features", None), getattr(m, "out_features", None),
              getattr(m, "p", None)) for m in head]
    assert kinds == [("Dropout", None, None, 0.3), ("Linear", 384, 128, None), ("ReLU", None, None, None),
                     ("Dropout", None, None, 0.3), ("Linear", 128, 64, None), ("Linear", 64, 2, None)]
    seed = SeedHead(384, 2)
    seed.load_state_dict({k: v for k, v in head.state_dict().items()})  # fc1, fc2, fc3: the seed's names
    x = torch.randn(5, 384)
    for mode in (False, True):  # eval, and train mode with the same dropout draws
        head.train(mode), seed.train(mode)
        torch.manual_seed(3)
        a = head(x)
        torch.manual_seed(3)
        b = seed(x)
        assert torch.equal(a, b)


def test_mlp_sizes_and_bad_sizes():
    head = MLPHead(10, 1, hidden=[7], dropout=0.0, last_relu=True)
    assert [type(m).__name__ for m in head] == ["Dropout", "Linear", "ReLU", "Linear"]
    assert head.spec() == {"hidden": [7], "dropout": 0.0, "last_relu": True}
    assert [type(m).__name__ for m in MLPHead(10, 1, hidden=[])] == ["Linear"]
    with pytest.raises(ValueError, match=r"model\.mlp\.hidden"):
        MLPHead(10, 1, hidden=[0])
    with pytest.raises(ValueError, match=r"model\.mlp\.dropout"):
        MLPHead(10, 1, dropout=1.0)
    with pytest.raises(ValueError, match=r"model\.mlp: unknown key"):
        build_net(family_for("resnet18"), "resnet18", "mlp", 1, {"hidden": [4], "width": 3})


@pytest.mark.parametrize("arch", ONE_PER_FAMILY)
def test_every_family_takes_an_mlp_head(arch):
    family = family_for(arch)
    torch.manual_seed(0)
    model = build_model(arch, "mlp", n_outputs=3, mlp={"hidden": [16, 8], "dropout": 0.2})
    head = mlp_head(model)
    assert head is not None and family.output_layer(model) is head[-1]
    assert head[-1].out_features == 3 and head.fc1.out_features == 16 and head.fc2.out_features == 8
    gap = build_net(family, arch, "gap" if "gap" in family.heads else family.heads[0], 3)
    assert head.fc1.in_features == family.output_layer(gap).in_features  # the MLP reads the pooled features
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    cfg = validate_config({"model": {"arch": arch, "head": "mlp", "target_layer": family.explainable_layers(model)[0]}})
    if not arch.startswith("regnet"):  # regnet cannot be built on the meta device at all (any head; for the lead)
        check_target_layer(cfg)  # the config check builds the mlp head too


def test_vgg_mlp_keeps_the_classifier_names():
    model = build_model("vgg11", "mlp")
    assert isinstance(model.classifier, MLPHead) and family_for("vgg11").output_layer(model) is model.classifier[-1]
    assert "classifier.0.weight" in model.state_dict() and "classifier.fc1.weight" in model.state_dict()


def test_mlp_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet18", "mlp", mlp={"hidden": [32], "dropout": 0.1, "last_relu": True}).eval()
    spec = save_checkpoint(model, tmp_path, {"arch": "resnet18", "head": "mlp", "target_layer": "auto",
                                             "input_size": 32, "normalization": "imagenet"})
    assert spec["mlp"] == {"hidden": [32], "dropout": 0.1, "last_relu": True}
    loaded, _ = load_trained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert mlp_head(loaded).spec() == spec["mlp"]


def test_mlp_head_dropout_and_mc_dropout():
    model = small_net().eval()
    set_head_dropout(family_for("resnet18"), model, 0.4)
    assert [m.p for m in mlp_head(model) if isinstance(m, nn.Dropout)] == [0.4, 0.4]
    assert uncertainty.dropout_layers(model) == ["fc.dropout1", "fc.dropout2"]
    x = torch.randn(3, 3, 32, 32)
    fast = uncertainty.mc_samples(model, x, 6, seed=5)
    slow = uncertainty.mc_full_passes(model, x, 6, seed=5)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert float(fast.std(0).max()) > 0
    with pytest.raises(Exception, match="no head dropout"):
        set_head_dropout(family_for("resnet18"), nn.Sequential(nn.Linear(2, 1)), 0.2)


# --------------------------------------------------------------------------- frozen backbones


def _manifest(root: Path, size: int = 32) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 10 + ["val"] * 3 + ["test"] * 2):
        score = float(rng.uniform(1, 5))
        pixels = (rng.normal(0, 25, (size, size, 3)) + 45 * score).clip(0, 255).astype(np.uint8)
        pixels[:, : size // 3] //= 2  # not mirror-symmetric: a flip changes the features
        path = root / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image_id": f"img{i:02d}", "path": str(path), "y_true": score, "split": split})
    return pd.DataFrame(rows)


MODEL = {"arch": "resnet18", "head": "mlp", "weights": "none", "input_size": 32, "mlp": {"hidden": [16, 8]}}  # arch: logged


def small_net() -> nn.Module:
    """A seeded small CNN with BatchNorm and the seed's MLP head named ``fc`` (cheap to train many times)."""
    torch.manual_seed(7)
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 8, 3, stride=2)), ("bn", nn.BatchNorm2d(8)), ("relu", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", MLPHead(8, 1, [16, 8])),
    ]))


def _train(manifest, tmp_path, name, **tcfg):
    model = small_net()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = {"epochs": 3, "batch_size": 4, "lr": 1e-2, "scheduler": "none", "warmup_epochs": 0, "patience": 5,
           "freeze_backbone": True, **tcfg}
    result = train(manifest, get_task("regression"), Family(), model, MODEL, cfg, seed=7, device="cpu",
                   resume_dir=tmp_path / name)
    return start, result


@pytest.fixture(scope="module")
def frozen_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frozen")
    manifest = _manifest(tmp)
    return {f"{cache}-{aug}": _train(manifest, tmp, f"{cache}-{aug}", cache_features=cache, augment=aug)
            for cache in (True, False) for aug in (False, True)}


def _head_state(model):
    return {k: v for k, v in model.state_dict().items() if k.startswith("fc.")}


@pytest.mark.parametrize("run", ["True-False", "False-False", "True-True", "False-True"])
def test_frozen_backbone_is_bit_identical(frozen_runs, run):
    start, result = frozen_runs[run]
    end = result.model.state_dict()
    changed = [k for k in start if not torch.equal(start[k], end[k])]
    assert changed and all(k.startswith("fc.") for k in changed), changed  # bn's running stats included
    assert all(p.requires_grad for p in result.model.parameters())  # released after training


@pytest.mark.parametrize("aug", [False, True])
def test_cached_head_equals_the_ordinary_loop(frozen_runs, aug):
    cached, plain = frozen_runs[f"True-{aug}"][1], frozen_runs[f"False-{aug}"][1]
    for k, v in _head_state(plain.model).items():
        torch.testing.assert_close(_head_state(cached.model)[k], v, rtol=0, atol=1e-6)
    np.testing.assert_allclose(cached.history["train_loss"], plain.history["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(cached.history["val_loss"], plain.history["val_loss"], rtol=1e-6)


def test_augmented_cache_differs_from_unaugmented(frozen_runs):
    a, b = frozen_runs["True-True"][1], frozen_runs["True-False"][1]
    assert not np.allclose(a.history["train_loss"], b.history["train_loss"])


def test_feature_dataset_flips_as_image_dataset(tmp_path):
    manifest = _manifest(tmp_path)
    paths = manifest["path"].tolist()[:6]
    images = ImageDataset(paths, 32, augment=True, seed=4)
    plain = ImageDataset(paths, 32)
    feats = torch.stack([plain[i][0].flatten() for i in range(6)])
    flipped = torch.stack([torch.flip(plain[i][0], dims=[2]).flatten() for i in range(6)])
    ds = FeatureDataset(feats, np.zeros(6), flipped, seed=4)
    for epoch in (1, 2, 3):
        images.set_epoch(epoch), ds.set_epoch(epoch)
        for i in range(6):
            assert torch.equal(ds[i][0], images[i][0].flatten())


def test_freeze_keeps_batchnorm_in_eval_and_names_the_head():
    family = family_for("vgg11_bn")
    model = build_model("vgg11_bn", "classifier")
    frozen = freeze_backbone(family, model)
    assert head_module(family, model)[0] == "classifier.6"  # a linear probe on VGG's 4096-d features
    model.train()
    frozen.keep_eval()
    assert not model.features[1].training and not model.classifier[5].training  # BatchNorm, VGG's dropout
    assert model.classifier[6].training
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["classifier.6.weight", "classifier.6.bias"]


def test_cache_refuses_a_head_that_is_not_last(tmp_path, caplog):
    class AfterHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 1)

        def forward(self, x):
            return 2 * self.fc(self.conv(x).mean((2, 3)))

    from ais.frozen import features

    model = AfterHead()
    frozen = freeze_backbone(Family(), model)
    paths = _manifest(tmp_path)["path"].tolist()[:2]
    with pytest.raises(ValueError, match="cache_features: false"):
        features(frozen, paths, 32, "imagenet", 2, torch.device("cpu"))


def test_head_dropout_trains_while_the_backbone_stays_in_eval():
    model = build_model("resnet18", "mlp")
    frozen = freeze_backbone(family_for("resnet18"), model)
    model.train()
    frozen.keep_eval()
    assert all(m.training for m in model.fc.modules())
    assert not any(m.training for n, m in model.named_modules() if not n.startswith("fc"))


def test_cached_training_logs_what_it_did(tmp_path, caplog):
    manifest = _manifest(tmp_path)
    with caplog.at_level(logging.INFO, logger="ais.frozen"):
        _train(manifest, tmp_path, "log", epochs=1, augment=True)
    text = caplog.text
    assert "parameters frozen" in text and "flipped copies" in text and "computed once" in text


def test_training_refuses_an_mlp_head_built_with_other_sizes(tmp_path):
    model = build_model("resnet18", "mlp")  # the defaults, not model.mlp below
    with pytest.raises(ValueError, match=r"model\.mlp is .* built with"):
        train(_manifest(tmp_path), get_task("regression"), family_for("resnet18"), model,
              {**MODEL, "mlp": {"hidden": [16]}}, {"epochs": 1}, seed=0, device="cpu", resume_dir=tmp_path / "r")
