"""ONNX export: checked files with dynamic batch and metadata, onnxruntime parity with PyTorch, int8 quantisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from ais import export_onnx as ex
from ais.models import build_model, load_trained
from ais.provenance import file_hash
from ais.stages import export_onnx as stage

SPEC = {"arch": "vgg11", "head": "gap", "task": "regression", "input_size": 32, "normalization": "imagenet",
        "format": "ais-regressor-v1", "output": "score", "weights_sha256": "ab" * 32}


@pytest.fixture(scope="module")
def exported() -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    model = build_model("vgg11", "gap").eval()
    return model, ex.export_onnx(model, 32, ex.onnx_metadata(SPEC))


def test_the_file_is_checked_has_a_dynamic_batch_and_says_how_to_feed_it(exported):
    model, data = exported
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert inp.name == ex.INPUT_NAME and isinstance(dims[0], str) and dims[1:] == [3, 32, 32]
    assert proto.opset_import[0].version == ex.OPSET or any(o.version == ex.OPSET for o in proto.opset_import)
    meta = ex.read_metadata(data)
    assert meta["ais.input_size"] == "32" and meta["ais.normalization"] == "imagenet"
    assert json.loads(meta["ais.mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert meta["ais.task"] == "regression" and json.loads(meta["ais.class_names"]) == []
    assert model.training is False and next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("n", [1, 5])
def test_onnxruntime_reproduces_pytorch_for_any_batch_size(exported, n):
    model, data = exported
    x = np.random.default_rng(n).standard_normal((n, 3, 32, 32)).astype(np.float32)
    onnx_out, torch_out = ex.run_onnx(ex.session(data), x), ex.torch_outputs(model, x)
    assert onnx_out.shape == torch_out.shape == (n, 1)
    assert ex.max_abs_difference(onnx_out, torch_out) <= 1e-5 * max(1.0, float(np.abs(torch_out).max()))


def test_the_export_is_deterministic_and_leaves_the_model_as_it_was(exported):
    model, data = exported
    model.train()
    try:
        assert ex.export_onnx(model, 32, ex.onnx_metadata(SPEC)) == data
        assert all(m.training for m in model.modules())
    finally:
        model.eval()


def test_a_wrong_export_fails_the_parity_check():
    ref = np.array([[1.0], [2.0]], np.float32)
    assert ex.check_parity(ref + 5e-5, ref)["max_abs_difference"] == pytest.approx(5e-5, rel=1e-2)
    with pytest.raises(ValueError, match="not faithful"):
        ex.check_parity(ref + 1e-3, ref)


def test_int8_quantisation_runs_and_stays_close(exported):
    model, data = exported
    q = ex.quantize_int8(data)
    meta = ex.read_metadata(q)
    assert "dynamic int8" in meta["ais.quantization"] and meta["ais.input_size"] == "32"
    assert len(q) < len(data) / 2
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    ref = ex.torch_outputs(model, x)
    diff = ex.max_abs_difference(ex.run_onnx(ex.session(q), x), ref)
    assert 0 < diff < 0.1 * max(1e-3, float(np.abs(ref).max()) * 10)
    ops = {n.op_type for n in onnx.load_from_string(q).graph.node}
    assert ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}


def test_metric_changes_pair_the_values():
    a = {"mae": {"value": 0.5, "ci95": [None, None]}, "srcc": {"value": None}, "n": 4}
    b = {"mae": {"value": 0.75}, "srcc": {"value": 0.1}, "n": 4}
    assert ex.metric_changes(a, b) == {"mae": {"reference": 0.5, "quantized": 0.75, "change": 0.25},
                                       "srcc": {"reference": None, "quantized": 0.1, "change": None}}


def test_the_stage_on_the_tiny_run_has_parity_within_1e_4(tiny_workflow: Path, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tiny_workflow)  # the manifest's image paths are relative to the workflow's folder
    results = tiny_workflow / "results"
    out = tmp_path / "model"
    summary = stage.run(results / "model", results / "data" / "manifest.parquet", out / "model.onnx",
                        out / "onnx.json", out / "model.int8.onnx", seed=0, config={"seed": 0})
    written = json.loads((out / "onnx.json").read_text())
    assert written["parity"]["max_abs_difference"] <= 1e-4 and written["opset"] == ex.OPSET
    assert written["onnx"]["sha256"] == file_hash(out / "model.onnx")
    assert written["int8"]["sha256"] == file_hash(out / "model.int8.onnx")
    manifest = pd.read_parquet(results / "data" / "manifest.parquet")
    assert written["n_images"] == summary["parity"]["n"] == int((manifest["split"] == "test").sum())
    assert set(written["int8"]["metrics"]) == {"mae", "rmse", "plcc", "srcc", "krcc"}
    assert "provenance" in written and written["metadata"]["ais.weights_sha256"] == json.loads(
        (results / "model" / "model.json").read_text())["weights_sha256"]
    # the file alone reproduces the workflow's own predictions of the test split
    model, spec = load_trained(results / "model")
    predictions = pd.read_parquet(results / "model" / "predictions.parquet").set_index("image_id")
    test = manifest[manifest["split"] == "test"].sort_values("image_id")
    from ais.images import load_batch

    x = load_batch(test["path"].tolist(), int(spec["input_size"]), spec["normalization"]).numpy()
    y = ex.run_onnx(ex.session(out / "model.onnx"), x)[:, 0]
    np.testing.assert_allclose(y, predictions.loc[test["image_id"], "y_pred"], rtol=0, atol=1e-4)


def test_no_test_images_is_refused(tiny_workflow: Path, tmp_path: Path):
    results = tiny_workflow / "results"
    manifest = pd.read_parquet(results / "data" / "manifest.parquet")
    manifest[manifest["split"] != "test"].to_parquet(tmp_path / "manifest.parquet")
    with pytest.raises(ValueError, match="no test images"):
        stage.run(results / "model", tmp_path / "manifest.parquet", tmp_path / "m.onnx", tmp_path / "o.json")
    assert not (tmp_path / "m.onnx").exists()
