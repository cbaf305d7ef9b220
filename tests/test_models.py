"""The VGG regressor: heads, weights loading (ImageNet API and local files, one code path), safety, checkpoints."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from ais.families import family_for
from ais.models import (
    build_model,
    load_pretrained,
    load_trained,
    read_state_dict,
    save_checkpoint,
    set_seed,
)


def resolve_target_layer(model: nn.Module, name: str) -> str:
    """``model.target_layer`` resolved as every stage resolves it: by the VGG family."""
    return family_for("vgg11").resolve_layer(model, name)


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: fast and steady on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def imagenet_vgg11(tmp_path_factory) -> tuple[dict[str, torch.Tensor], Path, Path]:
    """A torchvision ImageNet-shaped vgg11 state dict, also saved with torch.save and as safetensors."""
    torch.manual_seed(1)
    state = torchvision.models.vgg11(weights=None).state_dict()
    folder = tmp_path_factory.mktemp("weights")
    pt, st = folder / "vgg11_imagenet.pth", folder / "vgg11_imagenet.safetensors"
    torch.save(state, pt)
    save_file(state, str(st))
    return state, pt, st


def test_gap_head_structure() -> None:
    model = build_model("vgg11", "gap")
    assert isinstance(model, torchvision.models.VGG)
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == 1
    assert isinstance(model.classifier, nn.Sequential) and len(model.classifier) == 1
    assert (model.classifier[0].in_features, model.classifier[0].out_features) == (512, 1)
    assert isinstance(dict(model.named_modules())["features.18"], nn.Conv2d)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1)


def test_classifier_head_structure() -> None:
    model = build_model("vgg11", "classifier")
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d) and model.avgpool.output_size == (7, 7)
    assert len(model.classifier) == 7
    last = model.classifier[-1]
    assert (last.in_features, last.out_features) == (4096, 1)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1)


def test_seeded_builds_are_identical() -> None:
    set_seed(3)
    a = build_model("vgg11_bn", "gap").state_dict()
    set_seed(3)
    b = build_model("vgg11_bn", "gap").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resolve_target_layer() -> None:
    model = build_model("vgg11", "gap")
    assert resolve_target_layer(model, "auto") == "features.18"
    assert resolve_target_layer(model, "features.16") == "features.16"
    assert resolve_target_layer(build_model("vgg11_bn", "gap"), "auto") == "features.25"
    with pytest.raises(ValueError, match=r"features\.28.*does not exist.*features\.0, features\.3"):
        resolve_target_layer(model, "features.28")  # vgg16's last conv, not vgg11's
    with pytest.raises(ValueError, match="is a ReLU"):
        resolve_target_layer(model, "features.1")


def test_bad_arch_head_and_weights_names() -> None:
    with pytest.raises(ValueError, match="vgg11_bn.*resnet50"):  # the message lists every registered arch
        build_model("alexnet")
    with pytest.raises(ValueError, match="classifier, gap, mlp"):
        build_model("vgg11", "transformer")  # mlp is a head of every family (tests/test_heads.py)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_model("vgg11", "gap", "IMAGENET1K_V9")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        build_model("vgg11", "gap", "/nonexistent/missing.safetensors")


def _features(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("features.")}


@pytest.mark.parametrize("head", ["gap", "classifier"])
def test_imagenet_api_and_local_files_load_the_same_tensors(monkeypatch, imagenet_vgg11, head: str) -> None:
    state, pt, st = imagenet_vgg11
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):  # stands in for the download into the torch cache
        calls.append((self, kwargs))
        return dict(state)

    monkeypatch.setattr(torchvision.models.VGG11_Weights, "get_state_dict", fake_get_state_dict)
    from_api = build_model("vgg11", head, "IMAGENET1K_V1")
    assert calls and calls[0][0] is torchvision.models.VGG11_Weights.IMAGENET1K_V1
    assert calls[0][1]["weights_only"] is True and calls[0][1]["check_hash"] is True
    models = {"api": from_api, "safetensors": build_model("vgg11", head, str(st))}
    if head == "gap":  # the classifier head is slow to build; one file format is enough there
        models["pth"] = build_model("vgg11", head, str(pt))
    expected = {k: v for k, v in state.items() if k.startswith("features.")}
    for source, model in models.items():
        got = _features(model)
        assert got.keys() == expected.keys(), source
        assert all(torch.equal(got[k], expected[k]) for k in expected), source
        if head == "classifier":  # the first two classifier layers fit and are loaded; the last is new
            assert torch.equal(model.classifier[0].weight, state["classifier.0.weight"]), source
            assert torch.equal(model.classifier[3].weight, state["classifier.3.weight"]), source
        assert model.classifier[-1].weight.shape == (1, 4096 if head == "classifier" else 512)
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 1)


def test_load_report_names_the_skipped_head(imagenet_vgg11) -> None:
    state, _, _ = imagenet_vgg11
    report = load_pretrained(build_model("vgg11", "classifier"), state, "test")
    assert set(report.skipped) == {"classifier.6.weight", "classifier.6.bias"}
    assert "shape (1000, 4096) in file, (1, 4096) in model" in report.skipped["classifier.6.weight"]
    assert report.fresh == ["classifier.6.weight", "classifier.6.bias"]
    report = load_pretrained(build_model("vgg11", "gap"), state, "test")
    assert "classifier.3.weight" in report.skipped and "classifier.0.weight" in report.skipped
    assert "skipped" in report.summary()


def test_full_regressor_state_dict_loads_completely(tmp_path) -> None:
    set_seed(0)
    trained = build_model("vgg11_bn", "gap")
    path = tmp_path / "regressor.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in trained.state_dict().items()}}, path)  # wrapped, DataParallel names
    report = load_pretrained(build_model("vgg11_bn", "gap"), read_state_dict(path), str(path))
    assert not report.skipped and not report.fresh
    loaded = build_model("vgg11_bn", "gap", str(path))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in trained.state_dict().items())


def test_mismatching_features_are_refused_naming_file_and_key(tmp_path, imagenet_vgg11) -> None:
    state, _, _ = imagenet_vgg11
    bad = dict(state)
    bad["features.3.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "bad.safetensors"
    save_file(bad, str(path))
    with pytest.raises(ValueError, match=r"bad\.safetensors.*'features\.3\.weight'.*\(128, 64, 5, 5\)"):
        build_model("vgg11", "gap", str(path))
    with pytest.raises(ValueError, match=r"vgg11_imagenet\.pth.*features"):  # vgg11 weights into a vgg11_bn
        build_model("vgg11_bn", "gap", str(imagenet_vgg11[1]))


class _Payload:
    """Unpickling this creates a marker file: a stand-in for code smuggled into a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_checkpoint_that_runs_code_on_unpickling_is_refused(tmp_path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"features.0.weight": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth: refused"):
        build_model("vgg11", "gap", str(path))
    assert not marker.exists()
    # The payload is live: an unrestricted load does run it.
    if writer == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def test_checkpoint_round_trip(tmp_path) -> None:
    set_seed(5)
    model = build_model("vgg11_bn", "gap").eval()
    spec = {"arch": "vgg11_bn", "head": "gap", "target_layer": "auto", "input_size": 32,
            "normalization": "imagenet", "seed": 5, "data_hash": "abc"}
    save_checkpoint(model, tmp_path, spec)
    stored = json.loads((tmp_path / "model.json").read_text())
    assert stored["target_layer"] == "features.25" and stored["target_channels"] == 512
    assert stored["family"] == "vgg" and stored["task"] == "regression"
    assert stored["data_hash"] == "abc" and "torch" in stored["provenance"]["versions"]
    assert "git_revision" in stored["provenance"]
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files

    loaded, spec_back = load_trained(tmp_path)
    assert not loaded.training and spec_back == stored
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    (tmp_path / "model.safetensors").write_bytes((tmp_path / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ValueError, match="SHA-256"):
        load_trained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_trained(tmp_path / "nowhere")
