"""Rule validity: RISE deletion / insertion, cascading randomisation, SSIM, verdicts and the stage's outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from ais.validity import faithfulness as fa
from ais.validity.sanity import cascading_randomisation, randomisation_blocks, randomise_, spearman_rows, ssim
from ais.validity.verdict import mean_ci, verdict
from conftest import small_cnn


# ----------------------------------------------------------------------------- the order of removal


def test_ties_are_blended_by_the_same_fraction():
    scores = torch.tensor([[3.0, 1.0, 1.0, 0.0]])
    before, count = fa.tie_groups(scores)
    assert before.tolist() == [[0, 1, 1, 3]] and count.tolist() == [[1, 2, 2, 1]]
    w = fa.removal_weights(before, count, torch.tensor([2.0]))
    assert w.tolist() == [[1.0, 0.5, 0.5, 0.0]]  # the tied pair shares the second pixel's worth
    for k in (0.0, 1.5, 2.0, 3.0, 4.0):
        assert float(fa.removal_weights(before, count, torch.tensor([k])).sum()) == pytest.approx(k)


def test_map_signs_follow_the_values():
    m = np.array([[[0.5, -0.2], [0.0, 0.1]]])
    assert fa.map_signs(m, signed=True) == ("pos", "neg")
    assert fa.map_signs(m, signed=False) == ("pos",)
    assert fa.map_signs(-np.abs(m), signed=True) == ("neg",)
    assert fa.map_signs(np.zeros((1, 2, 2)), signed=True) == ("pos",)


def test_blur_matches_scipy():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fa.gaussian_blur(x, 1.5).numpy()
    radius = 5  # ceil(3 * 1.5)
    ref = np.stack([np.stack([gaussian_filter(c, 1.5, mode="mirror", truncate=radius / 1.5) for c in im])
                    for im in x.numpy()])
    np.testing.assert_allclose(out, ref, atol=1e-10)


# ----------------------------------------------------------------------------- curves


def _naive_weights(score: np.ndarray, k: float) -> np.ndarray:
    """The removal weights by definition: tie groups in descending order of value, one group at a time."""
    flat = score.reshape(-1)
    w = np.zeros_like(flat, dtype=np.float64)
    start = 0
    for value in sorted(set(flat.tolist()), reverse=True):
        members = flat == value
        g = int(members.sum())
        w[members] = min(max((k - start) / g, 0.0), 1.0)
        start += g
    return w.reshape(score.shape)


def _naive_curves(model, x, scores, steps, sub_del, sub_ins):
    """One forward per perturbed image, in a plain loop."""
    n, o = scores.shape[:2]
    pixels = x.shape[-1] * x.shape[-2]
    deletion, insertion = np.empty((n, o, steps + 1)), np.empty((n, o, steps + 1))
    with torch.no_grad():
        for i in range(n):
            for j in range(o):
                for s in range(steps + 1):
                    w = torch.as_tensor(_naive_weights(scores[i, j].numpy(), s * pixels / steps), dtype=x.dtype)
                    xd = x[i] + w * (sub_del[i] - x[i])
                    xi = sub_ins[i] + w * (x[i] - sub_ins[i])
                    deletion[i, j, s] = float(model(xd[None])[0, 0])
                    insertion[i, j, s] = float(model(xi[None])[0, 0])
    return deletion, insertion


def test_batched_curves_equal_the_naive_loop():
    model = small_cnn()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=g)
    maps = {"m": np.round(np.random.default_rng(0).normal(size=(2, 6, 6)), 1).astype(np.float32)}  # many ties
    orders = [fa.Order("m", "m", "pos"), fa.Order("m", "m", "neg"), fa.Order(fa.RANDOM, "baseline", "pos"),
              fa.Order(fa.UNIFORM, "baseline", "pos")]
    scores = fa.order_scores(maps, orders, ["a", "b"], seed=0)
    sub_del, sub_ins = fa.make_substrate(x, "mean", 0.1), fa.make_substrate(x, "blur", 0.1)
    target = lambda out: out[:, 0]  # noqa: E731
    fast = fa.perturbation_curves(model, target, x, scores, 4, sub_del, sub_ins, batch_size=5)
    slow_del, slow_ins = _naive_curves(model, x, scores, 4, sub_del, sub_ins)
    np.testing.assert_allclose(fast.deletion, slow_del, atol=1e-5)
    np.testing.assert_allclose(fast.insertion, slow_ins, atol=1e-5)


class _Linear(nn.Module):
    """``f(x) = sum(W * x[:, 0])``: the pixels' contributions are known, the best order is by W."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, 0] * self.w).sum(dim=(1, 2))[:, None]


def test_linear_model_hand_computed():
    w = torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    model, x = _Linear(w).eval(), torch.ones(1, 3, 2, 2)
    orders = [fa.Order("w", "w", "pos"), fa.Order("w", "w", "neg"), fa.Order(fa.RANDOM, "baseline", "pos"),
              fa.Order(fa.UNIFORM, "baseline", "pos")]
    scores = fa.order_scores({"w": w.numpy()[None]}, orders, ["one"], seed=0)
    zero = torch.zeros_like(x)
    curves = fa.perturbation_curves(model, lambda o: o[:, 0], x, scores, 4, zero, zero)
    np.testing.assert_allclose(curves.deletion[0, 0], [10, 6, 3, 1, 0])  # the largest contribution first
    np.testing.assert_allclose(curves.insertion[0, 0], [0, 4, 7, 9, 10])
    np.testing.assert_allclose(curves.deletion[0, 1], [10, 9, 7, 4, 0])  # most negative (smallest) first
    np.testing.assert_allclose(curves.deletion[0, 3], [10, 7.5, 5, 2.5, 0])  # all-equal: every pixel blended
    rows = fa.faithfulness_rows(curves, orders, ["one"], scale=2.0, steps=4)
    # normalised deletion curve (0, -4, -7, -9, -10) / 2; trapezoid over 0..1: -25 / 4 / 2
    assert rows.loc[0, "deletion_auc"] == pytest.approx(-3.125)
    assert rows.loc[0, "insertion_auc"] == pytest.approx((4 + 11 + 16 + 19) / 8 / 2)
    assert rows.loc[3, "deletion_auc"] == pytest.approx(-2.5)


def test_right_order_beats_random_on_a_linear_model():
    rng = np.random.default_rng(3)
    w = torch.as_tensor(rng.random((12, 12)) ** 3, dtype=torch.float32)
    model, x = _Linear(w).eval(), torch.ones(4, 3, 12, 12)
    orders = [fa.Order("w", "w", "pos"), fa.Order("w", "w", "neg"), fa.Order(fa.RANDOM, "baseline", "pos"),
              fa.Order(fa.UNIFORM, "baseline", "pos")]
    scores = fa.order_scores({"w": np.repeat(w.numpy()[None], 4, 0)}, orders, list("abcd"), seed=0)
    zero = torch.zeros_like(x)
    curves = fa.perturbation_curves(model, lambda o: o[:, 0], x, scores, 8, zero, zero, batch_size=16)
    rows = fa.faithfulness_rows(curves, orders, list("abcd"), scale=1.0, steps=8)
    best = rows[rows["map"] == "w"].set_index("sign")
    assert rows.groupby(["map", "sign"])["deletion_auc"].mean().idxmin() == ("w", "pos")
    assert (rows[(rows["map"] == "w") & (rows["sign"] == "pos")]["deletion_gain"] > 0).all()
    assert (rows[(rows["map"] == "w") & (rows["sign"] == "pos")]["insertion_gain"] > 0).all()
    # relative to the random order: least positive first keeps the output up, which is what neg predicts
    assert (rows[(rows["map"] == "w") & (rows["sign"] == "neg")]["deletion_gain"] > 0).all()
    assert best.loc["pos", "deletion_auc"].max() < best.loc["neg", "deletion_auc"].min()


def test_random_map_is_seeded_by_image():
    a = fa.random_map("img-1", (4, 5), seed=0)
    assert np.array_equal(a, fa.random_map("img-1", (4, 5), seed=0))
    assert not np.array_equal(a, fa.random_map("img-2", (4, 5), seed=0))
    assert not np.array_equal(a, fa.random_map("img-1", (4, 5), seed=1))


def test_output_scale_and_bad_maps():
    assert fa.output_scale(np.array([1.0, 3.0])) == pytest.approx(1.0)
    assert fa.output_scale(np.array([2.0, 2.0])) == 1.0 and fa.outputs_constant(np.array([2.0, 2.0]))
    bad = {"m": np.full((1, 2, 2), np.nan, dtype=np.float32)}
    with pytest.raises(ValueError, match="NaN"):
        fa.order_scores(bad, [fa.Order("m", "m", "pos")], ["a"], 0)


# ----------------------------------------------------------------------------- similarity


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the test extra's SSIM oracle")
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 20, 17))
    b = np.clip(a + rng.normal(0, 0.3, a.shape), -1, 1)
    ours = ssim(a, b, data_range=2.0)
    for i in range(3):
        assert ours[i] == pytest.approx(metrics.structural_similarity(a[i], b[i], data_range=2.0), abs=1e-10)


def test_ssim_hand_computed():
    assert ssim(np.ones((7, 7)), np.ones((7, 7)), data_range=1.0) == pytest.approx(1.0)
    # constant maps c1, c2: variances 0, so SSIM = (2 c1 c2 + C1) / (c1^2 + c2^2 + C1), C1 = (0.01 R)^2
    c1, c2, k = 0.2, 0.6, (0.01 * 1.0) ** 2
    got = ssim(np.full((9, 9), c1), np.full((9, 9), c2), data_range=1.0)
    assert got == pytest.approx((2 * c1 * c2 + k) / (c1 ** 2 + c2 ** 2 + k))


def test_spearman_rows_match_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 30)), rng.normal(size=(4, 30))
    a[0, :10] = 0.0  # ties
    ours = spearman_rows(a, b)
    for i in range(4):
        assert ours[i] == pytest.approx(spearmanr(a[i], b[i]).statistic)
    assert np.isnan(spearman_rows(np.zeros((1, 5)), b[:1, :5]))[0]


# ----------------------------------------------------------------------------- randomisation


def test_blocks_of_vgg_run_from_the_output_down():
    from ais.families import family_for

    import torchvision

    family = family_for("vgg11_bn")
    with torch.device("meta"):  # the structure alone: the gap head of ais.families.vgg on torchvision's VGG
        model = torchvision.models.vgg11_bn()
        model.avgpool, model.classifier = nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.Linear(512, 1))
    blocks = randomisation_blocks(model, family)
    assert blocks[0] == ("classifier", ("classifier",))
    assert blocks[1][1] == ("features.25", "features.26")  # the last conv with its BatchNorm
    assert blocks[-1][1] == ("features.0", "features.1")
    assert len(blocks) == 9  # head + 8 convolutions


def test_randomise_touches_only_its_block():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomise_(model, ["7"], seed=0)
    after = model.state_dict()
    assert not torch.equal(before["7.weight"], after["7.weight"])
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("7."))


def test_cascading_randomisation_leaves_the_model_and_changes_the_maps():
    from ais.tasks import get_task

    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    table = cascading_randomisation(model, "3", x, np.array([1.0, 2.0, np.nan]), ["a", "b", "c"],
                                    ["ais", "gradcam"], get_task("regression"), seed=0, batch_size=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(table["map"]) == {"ais", "helpful", "harmful", "gradcam"}
    assert sorted(table["depth"].unique()) == [1, 2, 3]  # Linear, conv 3, conv 0 + BatchNorm
    deepest = table[(table["depth"] == 3) & (table["map"] == "gradcam")]
    assert deepest["spearman"].abs().mean() < 0.9  # a destroyed model draws another map


# ----------------------------------------------------------------------------- verdicts


def test_mean_ci_and_verdict():
    s = mean_ci([1.0, 2.0, 3.0, np.nan], n_boot=200, seed=0)
    assert s["mean"] == pytest.approx(2.0) and s["n"] == 3 and s["lo"] <= 2.0 <= s["hi"]
    assert mean_ci([])["mean"] is None
    good = {"mean": 0.5, "lo": 0.2, "hi": 0.8}
    bad = {"mean": -0.5, "lo": -0.8, "hi": -0.2}
    rnd = {"top": {"spearman": {"mean": 0.9}}, "deepest": {"spearman": {"mean": 0.8}}}
    text = verdict({"deletion_gain": good, "insertion_gain": bad, "randomisation": rnd})
    assert text.startswith("beats the random map on deletion; worse than the random map on insertion")
    assert "fails the sanity check" in text


def test_external_agreement_lists_the_missing_maps():
    from ais.validity.measures import external

    table = pd.DataFrame({
        "image_id": ["a", "b", "c", "a"], "map": ["ais", "ais", "ais", "gradcam"], "part": ["pos"] * 4,
        "cc": [0.2, 0.4, np.nan, 0.5], "nss": [1.0, 2.0, np.nan, 0.0], "status": ["ok", "ok", "missing", "ok"],
    })
    out = external(table)
    assert out["ais"]["cc"] == pytest.approx(0.3) and out["ais"]["nss"] == pytest.approx(1.5)
    assert out["ais"]["n_images"] == 2 and out["ais"]["missing"] == ["c: missing"]
    assert out["gradcam"]["missing"] == [] and external(None) == {}


def test_report_section_shows_warnings_table_and_verdicts():
    from ais.reporting.validity import validity_section

    entry = {"sign": "pos", "deletion_auc": {"mean": -1.0, "lo": -1.2, "hi": -0.8},
             "insertion_auc": {"mean": 1.0, "lo": 0.8, "hi": 1.2}, "deletion_gain": {"mean": 0.3, "lo": 0.1, "hi": 0.5},
             "insertion_gain": {"mean": 0.0, "lo": -0.1, "hi": 0.1}, "verdict": "beats the random map on deletion"}
    summary = {"images": 4, "steps": 8, "scale": 0.5, "substrate": {"deletion": "mean", "insertion": "blur"},
               "methods": {"gradcam": entry}, "baselines": {"random": {"deletion_auc": {"mean": -0.5}}},
               "warnings": ["gradcam: zero <everywhere>"]}
    page = "\n".join(validity_section(summary, {}))
    assert page.index("Warnings") < page.index("Which map to trust")
    assert "zero &lt;everywhere&gt;" in page and "-1.00 [-1.20, -0.80]" in page
    assert "beats the random map on deletion" in page and "random map (baseline)" in page
    assert validity_section(None, {}) == []


# ----------------------------------------------------------------------------- the stage on the tiny run


def test_stage_outputs_on_the_tiny_run(tiny_workflow: Path):
    from ais.io import read_metadata
    from ais.methods import configured_methods, get_method
    from ais.tables import FAITHFULNESS_SCHEMA, SANITY_SCHEMA

    out = tiny_workflow / "results" / "validity"
    faith = pq.read_table(out / "faithfulness.parquet")
    assert faith.schema.remove_metadata().equals(FAITHFULNESS_SCHEMA)
    assert pq.read_table(out / "sanity.parquet").schema.remove_metadata().equals(SANITY_SCHEMA)
    assert "provenance" in read_metadata(out / "faithfulness.parquet")
    summary = json.loads((out / "summary.json").read_text())
    maps = set(faith.column("map").to_pylist()) - set(fa.BASELINES)
    applicable = [k for m in configured_methods() for k in get_method(m).map_names() if k in maps]
    assert applicable and set(summary["methods"]) == set(applicable)
    for name, entry in summary["methods"].items():
        for key in ("deletion_auc", "insertion_auc"):
            assert {"mean", "lo", "hi"} <= set(entry[key]) and entry["random"][key]["mean"] is not None
        assert entry["randomisation"]["top"]["depth"] == 1
        assert entry["randomisation"]["deepest"]["depth"] > 1 and entry["verdict"]
    table = faith.to_pandas()
    n = table["image_id"].nunique()
    assert n == min(summary["images"], 8) and (table.groupby(["map", "sign"]).size() == n).all()
    assert all(len(c) == summary["steps"] + 1 for c in table["deletion_curve"])
    assert (table.loc[table["map"] == fa.RANDOM, "deletion_gain"] == 0).all()
    page = (tiny_workflow / "results" / "report" / "index.html").read_text()
    assert "Which map to trust" in page


def test_stage_refuses_maps_of_another_run(tiny_workflow: Path, tmp_path: Path, monkeypatch):
    from ais.stages import validity

    monkeypatch.chdir(tiny_workflow)
    r = tiny_workflow / "results"
    figures = pd.read_parquet(r / "heatmaps" / "agreement.parquet")
    figures["shard"] = 7
    figures.to_parquet(tmp_path / "figures.parquet")
    config = {"seed": 0, "validity": {"max_images": 2, "steps": 2, "sanity_images": 0, "batch_size": 8,
                                      "bootstrap": 10, "substrate": {"deletion": "mean", "insertion": "blur",
                                                                     "blur_sigma": 0.1}}}
    with pytest.raises(ValueError, match="shard 7"):
        validity.run(tmp_path / "figures.parquet", [r / "heatmaps" / "shard-0" / "maps"], r / "data" / "manifest.parquet",
                     r / "model", tmp_path / "out", "auto", config)
