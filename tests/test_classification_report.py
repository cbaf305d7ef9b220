"""The classification report and the per-group figures, on synthetic tables (no workflow run).

Curves, areas and the confusion matrix are checked against scikit-learn; the
rest against plain pandas / numpy computations or hand-made values.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ais.reporting import classification as rc
from ais.reporting import groups as rg
from ais.reporting.data import ReportData
from ais.reporting.summary import task_blocks
from ais.tables import HEATMAP_SCHEMA
from ais.tasks import get_task
from ais.tasks.classification import task_from_config

sk = pytest.importorskip("sklearn.metrics")

CONFIG = {"model": {"task": "classification"}, "data": {"classes": ["real", "generated"], "group_column": "kind"},
          "explain": {"class": "generated"}, "train": {"bootstrap": 50}, "fusion": {"bootstrap": 50}, "seed": 0}
SETUP = rc.ClassSetup(("real", "generated"), "generated")


def _scores(rng: np.random.Generator, n: int, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    y = rng.random(n) < 0.4
    s = rng.normal(size=n) + 1.2 * y
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_points_equal_sklearn(seed, ties):
    y, s = _scores(np.random.default_rng(seed), 60, ties)
    fpr, tpr, thr = rc.roc_points(y, s)
    ref_fpr, ref_tpr, ref_thr = sk.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, rtol=0, atol=1e-12)
    assert thr[0] == np.inf and ref_thr[0] == np.inf
    np.testing.assert_array_equal(thr[1:], ref_thr[1:])
    assert rc.area(fpr, tpr) == pytest.approx(sk.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pr_points_equal_sklearn(seed, ties):
    y, s = _scores(np.random.default_rng(10 + seed), 60, ties)
    precision, recall, thr = rc.pr_points(y, s)
    ref_p, ref_r, ref_t = sk.precision_recall_curve(y, s)
    np.testing.assert_allclose(precision, ref_p, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall, ref_r, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thr, ref_t)
    assert rc.average_precision(precision, recall) == pytest.approx(sk.average_precision_score(y, s), abs=1e-12)


def test_curves_by_hand():
    # Scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg): thresholds inf, 0.9, 0.8, 0.1.
    fpr, tpr, thr = rc.roc_points(np.array([1, 0, 1, 0], bool), np.array([0.9, 0.8, 0.8, 0.1]))
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.9, 0.8, 0.1])
    assert rc.area(fpr, tpr) == pytest.approx(0.875)
    with pytest.raises(ValueError, match="equal-length"):
        rc.roc_points(np.array([True, False]), np.array([0.1, 0.2, 0.3]))


def test_confusion_and_reliability():
    rng = np.random.default_rng(3)
    t, p = rng.integers(0, 3, 80), rng.integers(0, 3, 80)
    np.testing.assert_array_equal(rc.confusion(t, p, 3), sk.confusion_matrix(t, p, labels=[0, 1, 2]))
    with pytest.raises(ValueError, match="row 1"):
        rc.confusion(np.array([0, 3]), np.array([0, 0]), 3)
    prob = np.array([0.05, 0.15, 0.12, 0.95, 1.0, 0.55])
    pos = np.array([0, 1, 0, 1, 1, 0], bool)
    bins = rc.reliability_bins(pos, prob, n_bins=10)
    assert bins["n"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 2]  # 1.0 falls in the last bin
    assert bins.loc[1, "prob"] == pytest.approx(0.135) and bins.loc[1, "frequency"] == pytest.approx(0.5)
    assert np.isnan(bins.loc[2, "prob"])
    full = bins[bins["n"] > 0]
    ece = (full["gap"] * full["n"]).sum() / len(prob)
    by_hand = np.mean([abs(0.05 - 0), abs(0.135 - 0.5), abs(0.55 - 0), abs(0.975 - 1)] * np.array([1, 2, 1, 2]) * 4 / 6)
    assert ece == pytest.approx(by_hand)


def _predictions(n: int = 120, seed: int = 0, groups: tuple[str, ...] = ("camera", "gan", "tiny")) -> pd.DataFrame:
    """Binary predictions: y_true, prob_0/1, pred_class, split, group (the last group has 6 test images)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(float)
    p1 = np.clip(1 / (1 + np.exp(-(2.5 * (y - 0.5) + rng.normal(scale=1.2, size=n)))), 1e-6, 1 - 1e-6)
    split = np.where(np.arange(n) % 2 == 0, "test", "train")
    group = np.array([groups[0] if i % 4 < 2 else groups[1] for i in range(n)], dtype=object)
    group[np.arange(n) < 12] = groups[2]  # 6 of them test
    frame = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(n)], "split": split, "y_true": y,
                          "y_pred": p1, "prob_0": 1 - p1, "prob_1": p1, "pred_class": (p1 >= 0.5).astype(np.int32),
                          "group": group})
    frame.loc[n - 2:, ["y_true"]] = np.nan  # unlabelled rows are left out everywhere
    frame.loc[n - 2:, "split"] = "unlabelled"
    return frame


def test_classification_block_matches_sklearn():
    pred = _predictions()
    block = rc.classification_block(pred, SETUP, shown=pred["image_id"].tolist()[::2])
    test = pred[(pred["split"] == "test") & pred["y_true"].notna()]
    y = test["y_true"].to_numpy(int)
    assert block["n_test"] == len(test) and block["explained_class"] == "generated"
    assert list(block["curves"]) == ["generated"]  # two classes: the explained class's curve only
    assert block["curves"]["generated"]["roc_auc"] == pytest.approx(sk.roc_auc_score(y, test["prob_1"]), abs=1e-12)
    assert block["curves"]["generated"]["average_precision"] == pytest.approx(
        sk.average_precision_score(y, test["prob_1"]), abs=1e-12)
    assert block["confusion"]["matrix"] == sk.confusion_matrix(y, test["pred_class"]).tolist()
    counts = block["outcomes"]["counts"]
    (tn, fp), (fn, tp) = sk.confusion_matrix(y, test["pred_class"])
    assert counts == {"tp": tp, "fp": fp, "fn": fn, "tn": tn}
    assert sum(b["n"] for b in block["reliability"]["bins"]) == len(test)
    assert 0 <= block["reliability"]["ece"] <= 1


def test_outcome_selection_by_hand():
    test = pd.DataFrame({"image_id": ["a", "b", "c", "d", "e", "f"], "y_true": [1, 1, 0, 0, 1, 0.0],
                         "pred_class": [1, 0, 1, 0, 1, 1], "prob_1": [0.9, 0.2, 0.7, 0.1, 0.95, 0.6]})
    got = rc.outcome_selection(test, SETUP, n=2)
    assert got == {"tp": ["e", "a"], "fp": ["c", "f"], "fn": ["b"], "tn": ["d"]}
    assert rc.outcome_selection(test, SETUP, shown=["a", "c", "d"], n=2) == {"tp": ["a"], "fp": ["c"], "fn": [],
                                                                              "tn": ["d"]}


def test_three_classes_curve_per_class():
    rng = np.random.default_rng(5)
    n = 90
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 2.0 * np.eye(3)[y]
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "split": "test", "y_true": y.astype(float),
                         "pred_class": prob.argmax(1), **{f"prob_{k}": prob[:, k] for k in range(3)}})
    setup = rc.ClassSetup(("synthetic", "tampered", "real"), "tampered")
    block = rc.classification_block(pred, setup)
    assert list(block["curves"]) == ["synthetic", "tampered", "real"]
    for k, name in enumerate(setup.classes):
        assert block["curves"][name]["roc_auc"] == pytest.approx(sk.roc_auc_score(y == k, prob[:, k]), abs=1e-12)
    figures = rc.draw_classification_figures(pred, setup, task_from_config(
        {"model": {"task": "classification"}, "data": {"classes": list(setup.classes)},
         "explain": {"class": "tampered"}}).words)
    assert set(figures) == {"class_roc", "class_pr", "class_confusion", "class_reliability"}
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in figures.values())


def test_class_setup_from_config():
    assert rc.class_setup({"model": {"task": "regression"}}) is None
    assert rc.class_setup(CONFIG) == SETUP
    assert rc.class_setup({"model": {"task": "classification"}, "data": {"classes": ["a", "b", "c"]}}).explained == "c"
    with pytest.raises(ValueError, match="explain.class 'x'"):
        rc.class_setup({"model": {"task": "classification"}, "data": {"classes": ["a", "b"]}, "explain": {"class": "x"}})
    with pytest.raises(ValueError, match="prob_1"):
        rc.probabilities(pd.DataFrame({"prob_0": [1.0]}), 2)


def test_section_words_come_from_the_task():
    pred = _predictions()
    words = task_from_config(CONFIG).words
    block = rc.classification_block(pred, SETUP)
    figures = rc.draw_classification_figures(pred, SETUP, words)
    panels = {"tp": [("img000", b"png")]}
    page = "\n".join(rc.classification_section(block, figures, panels, words))
    assert words.true in page and words.predicted in page  # "true class", "P(generated)"
    assert "true positives (generated, predicted generated" in page and "false negatives (generated, predicted real" in page
    assert page.count("<figure>") == 4 + 1  # four figures and one panel
    assert "explained_class_auc" not in page  # not measured: not shown
    page = "\n".join(rc.classification_section(block | {"explained_class_auc": 0.8766}, figures, panels, words))
    assert "explained_class_auc" in page and "0.877" in page
    assert rc.classification_section(None, figures, panels, words) == []


# --------------------------------------------------------------------------- localisation of the explained class


def _figures_table(neg_auc: list[float], pos_auc: list[float], has_mask: list[bool]) -> pd.DataFrame:
    n = len(neg_auc)
    cols = {}
    for f in HEATMAP_SCHEMA:
        if pa.types.is_string(f.type):
            cols[f.name] = [f"x{i}" for i in range(n)]
        elif pa.types.is_boolean(f.type):
            cols[f.name] = has_mask
        elif pa.types.is_integer(f.type):
            cols[f.name] = [0] * n
        else:
            cols[f.name] = [0.5] * n
    cols["image_id"] = [f"img{i}" for i in range(n)]
    cols["ais_neg_auc"], cols["ais_pos_auc"] = neg_auc, pos_auc
    return pd.DataFrame(cols)


def test_explained_class_auc_is_the_direction_map_against_the_evidence_mask():
    table = _figures_table([0.1, 0.3, np.nan, 0.9], [0.6, 0.7, 0.8, 0.2], [True, True, True, False])
    got = rc.explained_class_localization(table, "generated", {"generated": "lower", "real": "raise"})
    assert got["explained_class_auc"] == pytest.approx(np.mean([0.9, 0.7]))  # 1 - ais_neg_auc, masked images
    assert got["explained_class_localization"]["from_column"] == "1 - ais_neg_auc"
    assert got["explained_class_localization"]["n_images"] == 2
    real = rc.explained_class_localization(table, "real", {"generated": "lower", "real": "raise"})
    assert real["explained_class_auc"] == pytest.approx(np.mean([0.6, 0.7, 0.8]))
    unknown = rc.explained_class_localization(table, "tampered", {"generated": "lower"})
    assert unknown["explained_class_auc"] is None and "tampered" in unknown["explained_class_localization"]["reason"]


def test_auc_of_negated_map_is_one_minus():
    # The identity explained_class_localization relies on: AUC(-x) = 1 - AUC(x) with mid-ranks for ties.
    from ais.agreement import localization_auc

    rng = np.random.default_rng(0)
    heat = np.round(rng.normal(size=(12, 12)), 1)
    mask = rng.random((12, 12)) < 0.3
    assert localization_auc(-heat, mask) == pytest.approx(1 - localization_auc(heat, mask), abs=1e-12)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_summarize_heatmaps_adds_the_key_for_classification_only(tmp_path, task):
    from ais.stages import summarize_heatmaps

    table = _figures_table([0.2, 0.4], [0.5, 0.5], [True, True])
    path = tmp_path / "figures.parquet"
    pq.write_table(pa.Table.from_pandas(table, schema=HEATMAP_SCHEMA, preserve_index=False), path)
    spec = {"task": task, "classes": ["real", "generated"], "explained_class": "generated"}
    report = summarize_heatmaps.run([path], tmp_path / "agreement.parquet", tmp_path / "loc.json", spec=spec)
    if task == "classification":
        assert report["explained_class_auc"] == pytest.approx(0.7)
    else:
        assert "explained_class_auc" not in report and "explained_class_localization" not in report


# --------------------------------------------------------------------------- groups


def test_group_test_metrics_reuse_the_task():
    pred = _predictions()
    task = task_from_config(CONFIG)

    def metrics(rows):
        return task.test_metrics(rows["y_true"].to_numpy(), rc.probabilities(rows, 2), 50, 0)

    got = rg.group_test_metrics(pred, metrics)
    assert set(got) == {"camera", "gan", "tiny"}
    assert got["tiny"]["n_test"] == 6 and got["tiny"]["metrics"] is None and "6 < 10" in got["tiny"]["reason"]
    rows = pred[(pred["group"] == "gan") & (pred["split"] == "test") & pred["y_true"].notna()]
    assert got["gan"]["n_test"] == len(rows) >= 10
    assert got["gan"]["metrics"]["roc_auc"]["value"] == pytest.approx(
        sk.roc_auc_score(rows["y_true"], rows["prob_1"]), abs=1e-9)
    assert got["gan"]["metrics"]["accuracy"]["ci95"] is not None


def test_group_test_metrics_regression():
    rng = np.random.default_rng(1)
    n = 60
    y = rng.normal(3, 1, n)
    pred = pd.DataFrame({"image_id": [f"i{i}" for i in range(n)], "split": "test", "y_true": y,
                         "y_pred": y + rng.normal(0, 0.3, n), "group": np.where(np.arange(n) < 40, "real", "gen")})
    task = get_task("regression")
    got = rg.group_test_metrics(pred, lambda r: task.test_metrics(r["y_true"].to_numpy(), r["y_pred"].to_numpy(), 20, 0))
    ref = task.test_metrics(y[40:], pred["y_pred"].to_numpy()[40:], 20, 0)
    assert got["gen"]["metrics"]["srcc"]["value"] == pytest.approx(ref["srcc"]["value"])
    assert rg.group_test_metrics(pred.drop(columns="group"), lambda r: {}) == {}


def _fusion_scores(n_images: int = 30, n_channels: int = 6, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    ids = [f"img{i:03d}" for i in range(n_images)]
    manifest = pd.DataFrame({"image_id": ids, "group": ["a" if i < 22 else "b" for i in range(n_images)]})
    manifest.loc[0, "group"] = None  # an image without a group counts overall only
    rows = [(i, c) for i in ids for c in range(n_channels)]
    scores = pd.DataFrame({"image_id": [r[0] for r in rows], "channel": [r[1] for r in rows]})
    scores["ais_score"] = rng.normal(size=len(scores)) + scores["channel"] - 2.5
    scores.loc[scores["image_id"] == "img005", "ais_score"] = np.nan  # unlabelled
    scores["direction"] = rng.normal(size=len(scores))
    scores["quadrant"] = rng.choice(["helpful-raises", "harmful-lowers", "neutral-none"], size=len(scores))
    return scores, manifest


def test_group_unit_scores_are_group_means():
    scores, manifest = _fusion_scores()
    groups = rg.group_of(manifest)
    got = rg.group_unit_scores(scores, groups, n_boot=200, seed=0, n_top=3)
    assert got["b"]["reason"] and got["b"]["n_images"] == 8  # 8 < 10: no values
    a = got["a"]
    assert a["n_images"] == 20  # 21 in group a, one unlabelled
    part = scores[scores["image_id"].map(groups) == "a"].dropna(subset=["ais_score"])
    means = part.groupby("channel")["ais_score"].mean()
    assert [u["channel"] for u in a["top_helpful"]] == means[means > 0].sort_values(ascending=False).index[:3].tolist()
    for u in a["top_helpful"] + a["top_harmful"]:
        assert u["mean_ais_score"] == pytest.approx(means[u["channel"]])
        assert u["ci95"][0] <= u["mean_ais_score"] <= u["ci95"][1]
        assert u["mean_direction"] == pytest.approx(part.loc[part["channel"] == u["channel"], "direction"].mean())
    assert a["spearman_with_overall"] > 0.8  # the channel offsets dominate in every group
    again = rg.group_unit_scores(scores, groups, n_boot=200, seed=0, n_top=3)
    assert again == got  # seeded


def test_group_quadrants_and_galleries():
    scores, manifest = _fusion_scores()
    groups = rg.group_of(manifest)
    quads = rg.group_quadrants(scores, groups)
    for name in ("a", "b"):
        ids = set(groups[groups == name].index)
        assert sum(quads[name].values()) == scores["image_id"].isin(ids).sum()
        assert quads[name]["helpful-raises"] == ((scores["quadrant"] == "helpful-raises")
                                                 & scores["image_id"].isin(ids)).sum()
    agreement = pd.DataFrame({"image_id": manifest["image_id"], "abs_error": np.linspace(0, 1, len(manifest)),
                              "y_pred": 0.0})
    galleries = rg.group_galleries(agreement, groups, n=2)
    for name, chosen in galleries.items():
        shown = [i for ids in chosen.values() for i in ids]
        assert shown and all(groups[i] == name for i in shown)
    assert galleries["a"]["best"] == ["img001", "img002"]  # smallest errors of group a (img000 has no group)


def test_task_blocks_in_the_summary():
    pred = _predictions()
    scores, _ = _fusion_scores(n_images=len(pred))
    scores["image_id"] = scores["image_id"].str.replace("img", "img", regex=False)
    manifest = pred[["image_id", "group"]].copy()
    agreement = pd.DataFrame({"image_id": pred["image_id"], "abs_error": 0.1, "y_pred": pred["y_pred"]})
    data = ReportData(manifest=manifest, rejected=pd.DataFrame(), metrics={}, predictions=pred, scores=scores,
                      channels=pd.DataFrame(), fusion={}, agreement=agreement, localization={},
                      crops=pd.DataFrame(), benchmarks=pd.DataFrame(), gallery={}, config=CONFIG)
    blocks = task_blocks(data)
    assert set(blocks) == {"classification", "groups"}
    assert blocks["groups"]["column"] == "kind" and blocks["groups"]["groups"] == ["camera", "gan", "tiny"]
    assert blocks["groups"]["test_metrics"]["tiny"]["reason"]
    assert "roc_auc" in blocks["groups"]["test_metrics"]["gan"]["metrics"]
    overall = {"roc_auc": {"value": 0.9, "ci95": [0.8, 0.95]}}
    words = task_from_config(CONFIG).words
    page = "\n".join(rg.groups_section(blocks["groups"], overall, {}, words))
    assert "too few labelled test images (6 &lt; 10)" in page and "0.900 (0.800 to 0.950)" in page
    # Regression without groups: the summary gains nothing.
    plain = ReportData(manifest=manifest.drop(columns="group"), rejected=pd.DataFrame(), metrics={},
                       predictions=pred.drop(columns="group"), scores=scores, channels=pd.DataFrame(), fusion={},
                       agreement=agreement, localization={}, crops=pd.DataFrame(), benchmarks=pd.DataFrame(),
                       gallery={}, config={"model": {"task": "regression"}})
    assert task_blocks(plain) == {}
