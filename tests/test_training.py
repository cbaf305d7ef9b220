"""The finetune_model stage: outputs, a SIGKILLed run that resumes to the same weights, schedule, checkpoints."""

from __future__ import annotations

import json
import logging
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ais import io
from ais.models import load_trained
from ais.stages.finetune_model import run as train_model
from ais.tables import MANIFEST_SCHEMA, PREDICTIONS_SCHEMA
from ais.tasks import get_task
from ais.training import (
    _rng_state,
    _set_rng_state,
    lr_factor,
    manifest_data_hash,
    predict,
)

MODEL_CFG = {"arch": "vgg11_bn", "head": "gap", "weights": "none", "target_layer": "auto",
             "input_size": 32, "normalization": "imagenet"}
TRAIN_CFG = {"epochs": 3, "batch_size": 4, "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4,
             "scheduler": "cosine", "warmup_epochs": 1, "patience": 5, "augment": True, "bootstrap": 100}
SEED = 11
OUTPUTS = ("model.safetensors", "model.json", "history.csv", "predictions.parquet", "metrics.json", "training_curve.png")

# Runs the finetune_model stage in a fresh process; optionally SIGKILLs itself after the n-th optimiser step.
RUNNER = textwrap.dedent(
    """
    import json, logging, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from ais.stages.finetune_model import run as train_model

    args = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, filename=args["log"], format="%(name)s: %(message)s")
    steps = 0

    def kill_hook(optimizer, a, kw):
        global steps
        steps += 1
        if steps == args["kill_at_step"]:
            os.kill(os.getpid(), signal.SIGKILL)

    if args["kill_at_step"]:
        register_optimizer_step_post_hook(kill_hook)
    train_model(args["manifest"], args["out"], args["model"], args["train"], args["seed"], device="cpu")
    """
)


def make_dataset(root: Path, n_labelled: int = 16, n_unlabelled: int = 2, size: int = 32) -> Path:
    """Tiny PNGs whose brightness tracks the score; 10 train, 3 val, 3 test, 2 unlabelled."""
    rng = np.random.default_rng(0)
    splits = ["train"] * 10 + ["val"] * 3 + ["test"] * 3 + ["unlabelled"] * n_unlabelled
    rows = []
    for i, split in enumerate(splits):
        score = float(rng.uniform(1, 5))
        pixels = (rng.normal(0, 25, (size, size, 3)) + 45 * score).clip(0, 255).astype(np.uint8)
        path = root / f"img{i:02d}.png"
        Image.fromarray(pixels).save(path)
        rows.append({"image_id": f"img{i:02d}", "path": str(path), "y_true": None if split == "unlabelled" else score,
                     "split": split, "width": size, "height": size, "sheet_row": i + 1, "mask": None})
    manifest = root / "manifest.parquet"
    io.write_table(manifest, pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), MANIFEST_SCHEMA)
    return manifest


def run_training(manifest: Path, out: Path, log: Path, kill_at_step: int = 0) -> subprocess.CompletedProcess:
    args = {"manifest": str(manifest), "out": str(out), "log": str(log), "model": MODEL_CFG, "train": TRAIN_CFG,
            "seed": SEED, "kill_at_step": kill_at_step}
    return subprocess.run([sys.executable, "-c", RUNNER, json.dumps(args)], capture_output=True, text=True, timeout=300)


def train_here(manifest: Path, out: Path, log: Path, **kwargs) -> dict:
    """The stage in this process, the ``ais`` log lines in ``log``, each prefixed ``test.<out's name>:``."""
    logger = logging.getLogger("ais")
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter(f"test.{out.name}: %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess; steady on a shared machine
    try:
        return train_model(manifest, out, MODEL_CFG, kwargs.pop("train", TRAIN_CFG), SEED, device="cpu", **kwargs)
    finally:
        torch.set_num_threads(threads)
        logger.setLevel(level)
        logger.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run, and a run SIGKILLed in the middle of epoch 2 (in a subprocess) then rerun."""
    root = tmp_path_factory.mktemp("train")
    manifest = make_dataset(root)
    train_here(manifest, root / "full", root / "full.log")

    # 10 train images / batch 4 = 3 steps per epoch: step 5 is in the middle of epoch 2.
    killed = run_training(manifest, root / "resumed", root / "killed.log", kill_at_step=5)
    assert killed.returncode == -9, killed.stderr + (root / "killed.log").read_text()  # SIGKILL: no clean-up ran
    state = torch.load(root / "resumed" / "resume" / "state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert not (root / "resumed" / "model.json").exists()
    shutil.copytree(root / "resumed" / "resume", root / "stale_resume")  # for the config-change test

    train_here(manifest, root / "resumed", root / "resumed.log")
    return {"root": root, "manifest": manifest, "full": root / "full", "resumed": root / "resumed"}


def test_outputs_exist_and_resume_state_is_gone(runs) -> None:
    for name in ("full", "resumed"):
        for output in OUTPUTS:
            assert (runs[name] / output).is_file(), (name, output)
        assert not (runs[name] / "resume").exists()
        assert not list(runs[name].glob(".*tmp*"))


def test_killed_run_resumes_to_the_uninterrupted_result(runs) -> None:
    log = (runs["root"] / "resumed.log").read_text()
    assert "resuming from" in log and "after epoch 1/3" in log
    assert "test.resumed: epoch 1/3 " not in log  # epoch 1 was not redone
    assert "test.resumed: epoch 2/3 " in log
    full = pd.read_csv(runs["full"] / "history.csv")
    resumed = pd.read_csv(runs["resumed"] / "history.csv")
    assert list(full["epoch"]) == list(resumed["epoch"]) == [1, 2, 3]
    pd.testing.assert_frame_equal(full.drop(columns="seconds"), resumed.drop(columns="seconds"))
    a = load_file(str(runs["full"] / "model.safetensors"))
    b = load_file(str(runs["resumed"] / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    pa_ = pq.read_table(runs["full"] / "predictions.parquet").to_pandas()
    pb = pq.read_table(runs["resumed"] / "predictions.parquet").to_pandas()
    pd.testing.assert_frame_equal(pa_, pb)


def test_predictions_cover_every_manifest_row(runs) -> None:
    manifest = pd.read_parquet(runs["manifest"])
    table = pq.read_table(runs["full"] / "predictions.parquet")
    assert table.schema.remove_metadata() == PREDICTIONS_SCHEMA
    pred = table.to_pandas()
    assert list(pred["image_id"]) == list(manifest["image_id"])
    assert list(pred["split"]) == list(manifest["split"])
    assert pred["y_pred"].notna().all()
    assert pred.loc[pred["split"] == "unlabelled", "y_true"].isna().all()
    meta = io.read_metadata(runs["full"] / "predictions.parquet")
    assert meta["provenance"]["data_hash"] == manifest_data_hash(manifest)
    assert "versions" in meta["provenance"] and "git_revision" in meta["provenance"]


def test_metrics_and_history(runs) -> None:
    metrics = json.loads((runs["full"] / "metrics.json").read_text())
    for split, n in (("test", 3), ("val", 3), ("train", 10)):
        assert metrics[split]["n"] == n
        for key in ("mae", "rmse", "plcc", "srcc", "krcc"):
            assert set(metrics[split][key]) == {"value", "ci95"}
    assert metrics["test"]["mae"]["ci95"][0] <= metrics["test"]["mae"]["value"] <= metrics["test"]["mae"]["ci95"][1]
    assert 1 <= metrics["best_epoch"] <= 3 and metrics["epochs_run"] == 3
    assert metrics["n_images"] == {"train": 10, "val": 3, "test": 3, "unlabelled": 2}
    history = pd.read_csv(runs["full"] / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_mae", "val_srcc", "lr", "seconds"]
    best = history.set_index("epoch").loc[metrics["best_epoch"]]
    assert best["val_loss"] == history["val_loss"].min()  # selection on val loss
    # The saved model's raw output is on the score scale: its val MAE is the one measured during training
    # on the standardised scale and mapped back.
    assert metrics["val"]["mae"]["value"] == pytest.approx(best["val_mae"], rel=1e-4)


def test_load_trained_round_trips(runs) -> None:
    model, spec = load_trained(runs["full"])
    assert spec["arch"] == "vgg11_bn" and spec["head"] == "gap" and spec["target_layer"] == "features.25"
    assert spec["input_size"] == 32 and spec["normalization"] == "imagenet" and spec["seed"] == SEED
    manifest = pd.read_parquet(runs["manifest"])
    assert spec["data_hash"] == manifest_data_hash(manifest)
    torch.set_num_threads(1)
    y = predict(model, manifest["path"].tolist(), spec["input_size"], spec["normalization"], batch_size=4)
    expected = pd.read_parquet(runs["full"] / "predictions.parquet")["y_pred"].to_numpy()
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)


def test_changed_config_starts_over(runs, tmp_path, caplog) -> None:
    resume = tmp_path / "resume"
    shutil.copytree(runs["root"] / "stale_resume", resume)
    torch.set_num_threads(1)
    # As the workflow passes it: without target_layer (not a training setting).
    model_cfg = {k: v for k, v in MODEL_CFG.items() if k != "target_layer"}
    with caplog.at_level(logging.INFO):
        train_model(runs["manifest"], tmp_path / "out", model_cfg, {**TRAIN_CFG, "epochs": 1, "lr": 5e-4}, SEED,
                    device="cpu", resume_dir=resume)
    assert "another configuration or data set" in caplog.text and "starting over" in caplog.text
    assert len(pd.read_csv(tmp_path / "out" / "history.csv")) == 1
    assert not resume.exists()
    assert json.loads((tmp_path / "out" / "model.json").read_text())["target_layer"] == "features.25"


def test_missing_val_split_is_a_clear_error(tmp_path) -> None:
    manifest = make_dataset(tmp_path)
    df = pd.read_parquet(manifest)
    df.loc[df["split"] == "val", "split"] = "train"
    df.to_parquet(manifest)
    with pytest.raises(ValueError, match="no labelled val images"):
        train_model(manifest, tmp_path / "out", MODEL_CFG, TRAIN_CFG, SEED, device="cpu")


def test_target_layer_is_checked_before_training(tmp_path) -> None:
    manifest = make_dataset(tmp_path)
    expected = r"features\.28.*is a MaxPool2d, not an explainable layer \(nn\.Conv2d\).*features\.25"
    with pytest.raises(ValueError, match=expected):
        train_model(manifest, tmp_path / "out", {**MODEL_CFG, "target_layer": "features.28"}, TRAIN_CFG, SEED)
    assert not (tmp_path / "out").exists()


def test_lr_schedules() -> None:
    total, warm = 100, 10
    assert [lr_factor(s, total, warm, "cosine") for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(10, total, warm, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, total, warm, "cosine") == pytest.approx(0.5)
    assert lr_factor(99, total, warm, "cosine") < 0.001
    assert lr_factor(50, total, warm, "none") == 1.0
    assert lr_factor(0, total, warm, "onecycle") == pytest.approx(1 / 25)
    assert lr_factor(10, total, warm, "onecycle") == pytest.approx(1.0)
    assert lr_factor(100, total, 0, "onecycle") == pytest.approx(1 / 25e4)
    assert max(lr_factor(s, total, 0, "onecycle") for s in range(total)) == pytest.approx(1.0)


def test_rng_state_survives_a_weights_only_round_trip(tmp_path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    torch.save(_rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.normal(size=3), random.random())
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.normal(size=3), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def test_fold_affine() -> None:
    layer = torch.nn.Linear(3, 1)
    x = torch.randn(5, 3)
    before = layer(x).detach()
    get_task("regression").fold(layer, {"target_mean": -1.0, "target_std": 2.5})
    torch.testing.assert_close(layer(x).detach(), 2.5 * before - 1.0)

