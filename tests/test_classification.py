"""model.task classification: metrics against scikit-learn, the task, targets, intake refusals, the ablation
of the explained class's log-odds against the naive loop, and one run of the tiny workflow on a three-class sheet."""

from __future__ import annotations

import json
import math
import numpy as np
import pandas as pd
import pytest
import sklearn.metrics as skm
import torch
import torch.nn.functional as F
import yaml
from conftest import TINY, run_snakemake, write_image
from sklearn.preprocessing import label_binarize
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from ais import metrics as m
from ais.ablation import ChannelAblation, ablate_batches, naive_ablation
from ais.config import ConfigError, check_paths, validate_config
from ais.data import BadRowsError, SheetError, SheetSpec, build_manifest
from ais.targets import ClassLogOddsTarget, ClassLogProbTarget
from ais.tasks import get_task
from ais.tasks.classification import balanced_weights, task_from_config, task_from_spec

CLASSES = ("synthetic", "tampered", "real")


def _probs(n: int, k: int, seed: int, decimals: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Labels with every class present and rounded (tied) probabilities that carry some signal."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    p = np.exp(np.round(logits, decimals))
    return y, p / p.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("k", [2, 3, 4])
def test_metrics_equal_scikit_learn(k):
    for seed, decimals in ((0, 1), (1, 6)):  # heavy ties, then almost none
        y, p = _probs(40, k, seed, decimals)
        pred = p.argmax(axis=1)
        assert m.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, pred), abs=1e-9)
        assert m.balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-9)
        auc = skm.roc_auc_score(y, p[:, 1]) if k == 2 else skm.roc_auc_score(y, p, multi_class="ovr", average="macro")
        assert m.roc_auc(y, p) == pytest.approx(auc, abs=1e-9)
        onehot = label_binarize(y, classes=range(k))
        ap = skm.average_precision_score(y == 1, p[:, 1]) if k == 2 else skm.average_precision_score(onehot, p)
        assert m.average_precision(1 if k == 2 else None)(y, p) == pytest.approx(ap, abs=1e-9)
        assert m.average_precision(0)(y, p) == pytest.approx(skm.average_precision_score(y == 0, p[:, 0]), abs=1e-9)
        assert m.log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=range(k)), abs=1e-9)
        prec, rec, f1, _ = skm.precision_recall_fscore_support(y, pred, labels=range(k), zero_division=np.nan)
        for j in range(k):
            for mine, ref in ((m.precision(j)(y, p), prec[j]), (m.recall(j)(y, p), rec[j]), (m.f1(j)(y, p), f1[j])):
                assert (math.isnan(mine) and math.isnan(ref)) or mine == pytest.approx(ref, abs=1e-9)
        np.testing.assert_array_equal(m.confusion_matrix(y, p), skm.confusion_matrix(y, pred, labels=range(k)))


def test_undefined_precision_is_nan_like_scikit_learn():
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])  # class 1 never predicted
    ref = skm.precision_score(y, p.argmax(1), pos_label=1, zero_division=np.nan)
    assert math.isnan(m.precision(1)(y, p)) and math.isnan(ref)
    assert m.recall(1)(y, p) == 0.0 and m.f1(1)(y, p) == 0.0


def test_expected_calibration_error_by_hand():
    # confidences 0.9 and 0.91 share bin (13/15, 14/15]; 0.7, 0.62, 0.56 fall in bins of their own
    p = np.array([[0.9, 0.1], [0.91, 0.09], [0.3, 0.7], [0.38, 0.62], [0.56, 0.44]])
    y = np.array([0, 1, 0, 1, 0])  # correct, wrong, wrong, correct, correct
    by_hand = 2 / 5 * abs(0.5 - 0.905) + 1 / 5 * 0.7 + 1 / 5 * (1 - 0.62) + 1 / 5 * (1 - 0.56)
    assert m.ECE_BINS == 15
    assert m.expected_calibration_error(y, p) == pytest.approx(by_hand, abs=1e-12)
    assert by_hand == pytest.approx(0.466)


def test_bootstrap_uses_the_regression_resamples_and_leaves_out_resamples_missing_a_class():
    y, p = _probs(30, 3, 4)
    correct = (p.argmax(1) == y).astype(np.float64)
    lo, hi, kept = m.class_bootstrap_ci(m.accuracy, y, p, n=300, seed=5)
    ref = m.bootstrap_ci(lambda a, b: float(np.mean(a)), correct, correct, n=300, seed=5)
    assert (lo, hi) == pytest.approx(ref, abs=1e-12) and kept == 300
    y_rare = y.copy()
    y_rare[y_rare == 2] = 0
    y_rare[0] = 2  # class 2 has one image: most resamples miss it
    _, _, kept_recall = m.class_bootstrap_ci(m.recall(2), y_rare, p, n=300, seed=5)
    rng = np.random.default_rng(5)
    expected = sum(bool((rng.integers(0, 30, 30) == 0).any()) for _ in range(300))
    assert kept_recall == expected < 300
    report = m.classification_report(y, p, CLASSES, 2, n_boot=200, seed=0)
    assert report["roc_auc"]["value"] == pytest.approx(m.roc_auc(y, p))
    assert report["per_class"]["real"]["support"] == int((y == 2).sum()) and report["n"] == 30
    assert report["confusion_matrix"]["counts"] == skm.confusion_matrix(y, p.argmax(1)).tolist()
    json.dumps(report, allow_nan=False)


# --------------------------------------------------------------------------- task and targets


def test_log_odds_target_is_exact_and_stable():
    z = torch.tensor([[0.3, -1.2, 2.0], [50.0, -40.0, 10.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    p = torch.softmax(z, dim=1)
    for k in range(3):
        got = ClassLogOddsTarget(k)(z)
        ref = torch.log(p[:, k]) - torch.log1p(-p[:, k])
        torch.testing.assert_close(got[[0, 2]], ref[[0, 2]], rtol=0, atol=1e-12)
        assert torch.isfinite(got).all()
    assert float(ClassLogOddsTarget(1)(z)[1]) == pytest.approx(-40.0 - 50.0, abs=1e-9)  # p_1 ~ 1e-39: still exact
    torch.testing.assert_close(ClassLogProbTarget(2)(z), torch.log_softmax(z, 1)[:, 2])


def test_task_loss_weights_words_and_error():
    task = get_task("classification").configure(CLASSES, "tampered", [1.0, 2.0, 0.5])
    assert task.n_outputs == 3 and task.explained_index == 1 and get_task("classification").n_outputs == 2
    assert task.words.raises == "towards tampered" and task.words.lowers == "towards synthetic or real"
    out, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 1, 0, 2.0])
    torch.testing.assert_close(task.loss(out, y), F.cross_entropy(out, y.long(), weight=torch.tensor([1.0, 2.0, 0.5])))
    y_train = np.array([0, 0, 0, 1, 2, 2])
    np.testing.assert_allclose(balanced_weights(y_train, 3), compute_class_weight("balanced", classes=np.arange(3),
                                                                                   y=y_train))
    probs = task.decode(out.numpy(), {})
    np.testing.assert_allclose(probs.sum(1), 1.0) and np.testing.assert_allclose(probs, torch.softmax(out, 1).numpy())
    L = ClassLogOddsTarget(1)(out).numpy()
    ce = F.cross_entropy(out, y.long(), reduction="none").numpy()
    err = task.error(L, y.numpy())
    own = y.numpy() == 1
    np.testing.assert_allclose(err[own], ce[own], rtol=1e-5)
    assert np.isnan(err[~own]).all()  # three classes: another class's cross-entropy is not a function of L
    binary = get_task("classification").configure(["real", "generated"])
    L2 = ClassLogOddsTarget(1)(out[:, :2]).numpy()
    np.testing.assert_allclose(binary.error(L2, y.numpy() % 2), F.cross_entropy(out[:, :2], y.long() % 2,
                                                                                  reduction="none").numpy(), rtol=1e-5)
    again = task_from_spec({"task": "classification", **task.settings()})
    assert again.settings() == task.settings()
    cfg = {"model": {"task": "classification"}, "data": {"classes": list(CLASSES)}, "explain": {"class": None}}
    assert task_from_config(cfg).explained == "real" and task_from_spec({"task": "regression"}).name == "regression"


def _three_class_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 3),
    ).eval()


@pytest.mark.parametrize("path", ["lowrank", "tail", "generic"])
def test_engine_equals_naive_loop_for_the_log_odds_and_cross_entropy(path):
    model = _three_class_cnn()
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.3, 0.3)
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    task = get_task("classification").configure(CLASSES, "tampered")
    y_true = [0.0, 1.0, 2.0, None, 2.0]
    with ChannelAblation(model, "3", task.target(), path=path) as engine:
        z, z_abl = engine(x)
        table = ablate_batches(engine, [(x, [f"i{i}" for i in range(5)], y_true)], 5, task.error,
                               task.residual_target).to_pandas()
    ref_z, ref_abl = naive_ablation(model, "3", x, task.target())
    torch.testing.assert_close(z, ref_z, rtol=0, atol=1e-5)
    torch.testing.assert_close(z_abl, ref_abl, rtol=0, atol=1e-5)
    ce = torch.stack([-ClassLogProbTarget(int(c))(model(x[i:i + 1]))[0] if c is not None else torch.tensor(math.nan)
                      for i, c in enumerate(y_true)]).detach()
    ce_abl = torch.stack([naive_ablation(model, "3", x, ClassLogProbTarget(int(c)))[1][i] if c is not None
                          else torch.full((8,), math.nan) for i, c in enumerate(y_true)])
    ce_abl = -ce_abl
    got = table["delta_residual"].to_numpy(np.float64).reshape(5, 8)
    np.testing.assert_allclose(got[[0, 1, 2, 4]], (ce_abl - ce[:, None]).numpy()[[0, 1, 2, 4]], atol=1e-5)
    assert np.isnan(got[3]).all()  # unlabelled
    np.testing.assert_allclose(table["residual"].to_numpy().reshape(5, 8)[:, 0][[0, 1, 2, 4]], ce.numpy()[[0, 1, 2, 4]],
                               atol=1e-5)


# --------------------------------------------------------------------------- configuration and intake


def _cfg(**data) -> dict:
    return {"data": {"source": "sheet", "sheet": "s.csv", **data}, "model": {"task": "classification"}}


@pytest.mark.parametrize("cfg, key, words", [
    ({"data": {"label_column": "label"}}, "data.label_column", "model.task is 'regression'"),
    (_cfg(label_column="label", classes=["real"]), "data.classes", "at least two"),
    (_cfg(label_column="label", classes=["real", "fake"]) | {"explain": {"class": "generated"}}, "explain.class",
     "'generated' is not one of data.classes (real, fake)"),
    (_cfg(classes=["real", "fake"]), "data.label_column", "required with model.task: classification"),
    (_cfg(label_column="label", classes=["real", "fake"], score_column="realism"), "data.score_column",
     "reads classes from data.label_column"),
    (_cfg(label_column="label", classes=["real", "fake"]) | {"train": {"class_weights": [1, 2, 3]}},
     "train.class_weights", "3 weights for 2 classes"),
])
def test_bad_task_settings_refused_at_parse_time(cfg, key, words):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert f"'{key}'" in str(err.value) and words in str(err.value)


def _sheet(tmp_path, labels, split=None, groups=None):
    rows = []
    for i, label in enumerate(labels):
        write_image(tmp_path / f"img{i:02d}.png", size=(8, 8), seed=i)
        row = {"path": f"img{i:02d}.png", "label": label}
        if split is not None:
            row["split"] = split[i]
        if groups is not None:
            row["gen"] = groups[i]
        rows.append(row)
    pd.DataFrame(rows).to_csv(tmp_path / "sheet.csv", index=False)
    return tmp_path / "sheet.csv"


def test_unknown_class_refused_at_parse_time_and_at_intake(tmp_path):
    sheet = _sheet(tmp_path, ["real", "fake", "generated", "real", "1"])
    cfg = validate_config(_cfg(sheet=str(sheet), label_column="label", classes=["real", "fake"]))
    with pytest.raises(ConfigError) as err:
        check_paths(cfg)
    text = str(err.value)
    assert "row 3 (label)" in text and "'generated' is not one of data.classes (real, fake)" in text
    assert "row 5" not in text  # "1" is the index of fake
    spec = SheetSpec.from_config(cfg["data"])
    with pytest.raises(BadRowsError, match=r"row 3 \(label\) img02.png: class 'generated' is not one of"):
        build_manifest(spec, cfg["data"]["splits"], 0)


def test_class_missing_from_train_refused(tmp_path):
    labels = ["real", "fake"] * 4
    split = ["train", "train", "val", "val", "test", "test", "train", "test"]
    split[1] = split[7] = "test"  # no fake image in train
    sheet = _sheet(tmp_path, labels, split=split)
    spec = SheetSpec(str(sheet), split_column="split", label_column="label", classes=("real", "fake"))
    with pytest.raises(SheetError, match=r"class\(es\) 'fake' have no labelled train image.*fake: train 0, val 1"):
        build_manifest(spec, {"train": 0.5, "val": 0.25, "test": 0.25}, 0)


def test_stratified_split_labels_groups_and_unlabelled_rows(tmp_path):
    labels = ["real"] * 12 + ["fake"] * 8 + ["", ""]
    sheet = _sheet(tmp_path, labels, groups=[f"g{i % 3}" for i in range(len(labels))])
    spec = SheetSpec(str(sheet), label_column="label", classes=("real", "fake"), group_column="gen")
    manifest, _ = build_manifest(spec, {"train": 0.5, "val": 0.25, "test": 0.25}, 3)
    counts = pd.crosstab(manifest["label"].fillna("-"), manifest["split"])
    assert counts.loc["real"].to_dict() == {"test": 3, "train": 6, "unlabelled": 0, "val": 3}
    assert counts.loc["fake"].to_dict() == {"test": 2, "train": 4, "unlabelled": 0, "val": 2}
    assert (manifest.loc[manifest["label"] == "fake", "y_true"] == 1).all()
    assert manifest["y_true"].isna().sum() == 2 and (manifest.loc[manifest["y_true"].isna(), "split"] == "unlabelled").all()
    by_path = manifest.set_index("sheet_row")["group"]
    assert by_path[1] == "g0" and by_path[5] == "g1"
    again, _ = build_manifest(spec, {"train": 0.5, "val": 0.25, "test": 0.25}, 3)
    pd.testing.assert_frame_equal(manifest, again)


# --------------------------------------------------------------------------- the tiny workflow on a three-class sheet


#: What the classification core writes (the report and the validity stages are other engineers' and
#: are left out: this test must not fail on their work in progress).
CORE_TARGETS = ("results/model/metrics.json", "results/model/predictions.parquet", "results/fusion/summary.json",
                "results/heatmaps/localization.json")


def run_three_class_workflow(work):
    """The tiny configuration on a 38-row, three-class sheet (two rows unlabelled, a group column), to CORE_TARGETS."""
    labels = [CLASSES[i % 3] for i in range(36)] + [""] * 2
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    sheet = _sheet(data, labels, groups=["camera" if i % 2 else "generator" for i in range(len(labels))])
    cfg = yaml.safe_load(TINY.read_text())
    cfg["data"] = {"source": "sheet", "sheet": str(sheet), "label_column": "label", "classes": list(CLASSES),
                   "group_column": "gen", "splits": {"train": 0.5, "val": 0.25, "test": 0.25}}
    cfg["model"]["task"] = "classification"
    cfg["explain"] = {"class": "tampered"}
    cfg["train"]["class_weights"] = "balanced"
    (work / "config.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(work, *CORE_TARGETS, "--cores", "2", "--configfile", str(work / "config.yaml"))
    return work / "results"


@pytest.mark.slow
def test_three_class_sheet_through_the_tiny_workflow(tmp_path):
    check_three_class_outputs(run_three_class_workflow(tmp_path))


def check_three_class_outputs(res):
    from ais.images import load_batch
    from ais.models import load_trained

    metrics = json.loads((res / "model" / "metrics.json").read_text())
    assert "roc_auc" in metrics["test"] and metrics["test"]["classes"] == list(CLASSES)
    assert metrics["test"]["n"] == 9 and sum(map(sum, metrics["test"]["confusion_matrix"]["counts"])) == 9
    spec = json.loads((res / "model" / "model.json").read_text())
    assert spec["classes"] == list(CLASSES) and spec["explained_class"] == "tampered" and spec["explained_index"] == 1

    pred = pd.read_parquet(res / "model" / "predictions.parquet")
    probs = pred[[f"prob_{k}" for k in range(3)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert (pred["pred_class"] == probs.argmax(axis=1)).all() and np.allclose(pred["y_pred"], probs[:, 1])
    manifest = pd.read_parquet(res / "data" / "manifest.parquet").set_index("image_id")
    assert (pred.set_index("image_id")["group"] == manifest["group"]).all()

    shards = pd.concat([pd.read_parquet(p) for p in sorted((res / "ablation").glob("shard-*.parquet"))])
    model, _ = load_trained(res / "model")
    layer, units = spec["target_layer"], [0, 7, 100, 511]  # a few units: the naive loop runs the model per unit
    first = shards.drop_duplicates("image_id").groupby("y_true").head(1)  # one image per class: three engines
    x = load_batch([manifest.loc[i, "path"] for i in first["image_id"]], spec["input_size"], spec["normalization"])
    z, z_abl = naive_ablation(model, layer, x, ClassLogOddsTarget(1), channels=units)
    for row, image_id in enumerate(first["image_id"]):
        rows = shards[(shards["image_id"] == image_id) & shards["channel"].isin(units)].sort_values("channel")
        y = int(manifest.loc[image_id, "y_true"])
        lp, lp_abl = naive_ablation(model, layer, x[row:row + 1], ClassLogProbTarget(y), channels=units)
        np.testing.assert_allclose(rows["y_pred"], float(z[row]), atol=1e-4)
        np.testing.assert_allclose(rows["delta_prediction"], (z_abl[row] - z[row]).numpy(), atol=1e-4)
        np.testing.assert_allclose(rows["residual"], -float(lp[0]), atol=1e-4)
        np.testing.assert_allclose(rows["delta_residual"], -(lp_abl[0] - lp[0]).numpy(), atol=1e-4)

    summary = json.loads((res / "fusion" / "summary.json").read_text())
    assert summary["quadrant_words"]["helpful-raises"] == "helpful, towards tampered"
    assert summary["quadrant_words"]["harmful-lowers"] == "harmful, towards synthetic or real"
    localization = json.loads((res / "heatmaps" / "localization.json").read_text())
    assert localization  # maps of the explained class's log-odds were computed and scored on every shard
