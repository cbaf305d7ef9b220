"""The validity measures of issue 17 (T2): pruning generalisation, external-map agreement, localisation,
the helpfulness-sign reduction, the Taylor comparison and the degenerate-result flags.

Unit tests on tiny tensors and hand-made inputs with known answers; references are a slow obvious
computation, scipy, or pysaliency's definitions (ported below, and pysaliency itself when installed).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from ais.families import Family, register_family, unregister_family
from ais.tasks import get_task
from ais.validity import pruning

# --------------------------------------------------------------------------- a toy family for stage runs


class _ToyNet(nn.Module):
    def __init__(self, n_outputs: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                                  nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(6, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(dim=(2, 3)))


class _ToyFamily(Family):
    name = "t2toy"
    archs = ("t2toy",)
    heads = ("gap",)
    backbone_prefix = "body."

    def build(self, arch: str, head: str, n_outputs: int = 1) -> nn.Module:
        return _ToyNet(n_outputs)


@pytest.fixture
def toy_family():
    family = register_family(_ToyFamily())
    try:
        yield family
    finally:
        unregister_family("t2toy")


def _toy_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = _ToyNet().eval()
    with torch.no_grad():
        model.body[2].bias.uniform_(-0.2, 0.6)
    return model


def _images(n: int, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- pruning


def test_a_mask_of_k_units_equals_zeroing_them_by_hand():
    model, x = _toy_model(), _images(5)
    units = [1, 3, 4]
    got = pruning.masked_predictions(model, "body.2", x, pruning.unit_mask(6, units), lambda o: o.reshape(-1),
                                     batch_size=2)
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        by_hand.body[2].weight[units] = 0.0
        by_hand.body[2].bias[units] = 0.0
        expected = by_hand(x).reshape(-1).double().numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert not np.allclose(got, model(x).detach().reshape(-1).numpy(), atol=1e-4)  # the mask did something
    assert not model.body[2]._forward_hooks  # the hook is gone
    # one unit: the exact engine's ablation of that unit
    from ais.ablation import ChannelAblation

    with ChannelAblation(model, "body.2") as engine:
        _, y_abl = engine(x)
    one = pruning.masked_predictions(model, "body.2", x, pruning.unit_mask(6, [2]), lambda o: o.reshape(-1))
    np.testing.assert_allclose(one, y_abl[:, 2].double().numpy(), rtol=0, atol=1e-5)


class _Skip(nn.Module):
    """A conv whose input is added back after it: no cut after the conv reads its output alone."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.head(torch.relu(self.b(h) + h).mean(dim=(2, 3)))


class _Untraceable(_ToyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return x


@pytest.mark.parametrize("case", ["suffix", "skip", "untraceable"])
def test_the_masked_runner_equals_full_forward_passes(case):
    torch.manual_seed(1)
    model, layer = {"suffix": (_toy_model(), "body.2"), "skip": (_Skip().eval(), "b"),
                    "untraceable": (_Untraceable().eval(), "body.2")}[case]
    x = _images(7, seed=3)
    runner = pruning.MaskedRunner(model, layer, x, lambda o: o.reshape(-1), batch_size=3)
    assert runner.path == ("suffix" if case == "suffix" else "forward")
    for units in ([], [0], [1, 2, 5], list(range(6))):
        mask = pruning.unit_mask(6, units)
        expected = pruning.masked_predictions(model, layer, x, mask, lambda o: o.reshape(-1))
        np.testing.assert_allclose(runner(mask), expected, rtol=0, atol=1e-6)
    tiny_budget = pruning.MaskedRunner(model, layer, x, lambda o: o.reshape(-1), batch_size=3, memory_budget=10)
    assert tiny_budget.path == "forward"


def test_unit_mask_and_k_grid():
    np.testing.assert_array_equal(pruning.unit_mask(4, [0, 2]).numpy(), [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        pruning.unit_mask(4, [4])
    assert pruning.k_grid(512) == [1, 4, 16, 64, 256, 512]
    assert pruning.k_grid(5) == [1, 4, 5]
    assert pruning.k_grid(1) == [1]
    assert pruning.k_grid(6, [6, 2, 2]) == [2, 6]
    with pytest.raises(ValueError, match=r"\[7\].*1\.\.6"):
        pruning.k_grid(6, [1, 7])
    with pytest.raises(ValueError, match="auto"):
        pruning.k_grid(6, "all")


def test_rank_units_orders_ties_and_missing_scores():
    channels = pd.DataFrame({"channel": [0, 1, 2, 3, 4], "mean_ais_score": [0.5, -1.0, np.nan, 0.5, -0.2],
                             "mean_delta_residual": [1.0, 2.0, 3.0, -1.0, 0.0]})
    r = pruning.rank_units(channels, 6, "ais")  # unit 5 has no row: no score
    assert r["harmful"].tolist() == [1, 4, 0, 3, 2, 5]
    assert r["helpful"].tolist() == [0, 3, 4, 1, 2, 5]
    r = pruning.rank_units(channels, 5, "delta_residual")
    assert r["harmful"].tolist() == [3, 4, 0, 1, 2] and r["helpful"].tolist() == [2, 1, 0, 4, 3]
    with pytest.raises(ValueError, match="validity.pruning.score"):
        pruning.rank_units(channels, 5, "gradcam")


def test_pruning_table_rows_dedup_and_baseline():
    model, x = _toy_model(), _images(12, seed=2)
    y_true = np.linspace(0.0, 1.0, 12)
    task = get_task("regression")
    ranking = {"harmful": np.array([5, 4, 3, 2, 1, 0]), "helpful": np.array([0, 1, 2, 3, 4, 5])}
    calls = []
    original = pruning.MaskedRunner.__call__

    def counting(self, mask):
        calls.append(1)
        return original(self, mask)

    pruning.MaskedRunner.__call__ = counting
    try:
        table = pruning.pruning_table(model, "body.2", x, y_true, task, ranking, [1, 6], draws=2, n_boot=50, seed=3)
    finally:
        pruning.MaskedRunner.__call__ = original
    assert list(table.columns) == list(pruning.PRUNING_COLUMNS)
    n_metrics = table["metric"].nunique()
    assert set(table["metric"]) >= {"srcc", "mae"}
    assert len(table) == n_metrics * (1 + 2 * (2 + 2))
    assert len(calls) == 1 + 4 + 1  # k = 6: every order zeroes every unit, evaluated once
    full = table[table["k"] == 6]
    assert full.groupby("metric")["value"].nunique(dropna=False).max() == 1
    base = table[(table["order"] == "none") & (table["metric"] == "mae")]
    with torch.no_grad():
        y_pred = model(x).reshape(-1).double().numpy()
    assert base["value"].item() == pytest.approx(np.mean(np.abs(y_pred - y_true)))
    harm1 = table[(table["order"] == "harmful") & (table["k"] == 1) & (table["metric"] == "mae")]
    by_hand = pruning.masked_predictions(model, "body.2", x, pruning.unit_mask(6, [5]), task.predictions)
    assert harm1["value"].item() == pytest.approx(np.mean(np.abs(by_hand - y_true)))
    ok = table["lo"].notna()  # all units zeroed: constant predictions, correlations undefined (NaN)
    assert (table["n_images"] == 12).all() and (table.loc[ok, "lo"] <= table.loc[ok, "hi"]).all()
    assert table.loc[table["order"] == "random", "lo"].isna().all() and ok[table["order"] == "harmful"].any()
    assert table.loc[(table["k"] == 6) & (table["metric"] == "srcc"), "value"].isna().all()
    again = pruning.pruning_table(model, "body.2", x, y_true, task, ranking, [1, 6], draws=2, n_boot=50, seed=3)
    pd.testing.assert_frame_equal(table, again)  # seeded draws and bootstrap
    summary = pruning.summarize_pruning(table)
    assert summary["mae"]["baseline"] == pytest.approx(base["value"].item())
    assert [p["k"] for p in summary["mae"]["random"]] == [1, 6] and summary["mae"]["random"][0]["draws"] == 2


def _write_manifest(folder: Path, y: dict[str, list[float]], size: int = 8) -> Path:
    rows = []
    for split, values in y.items():
        for i, value in enumerate(values):
            path = folder / f"{split}{i}.png"
            arr = np.random.default_rng(len(rows)).integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(path)
            rows.append({"image_id": f"{split}{i}", "path": str(path), "y_true": value, "split": split})
    out = folder / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(out)
    return out


def _toy_checkpoint(folder: Path) -> Path:
    from ais.models import save_checkpoint

    save_checkpoint(_toy_model(), folder, {"arch": "t2toy", "head": "gap", "input_size": 8,
                                           "normalization": "none", "target_layer": "body.2"})
    return folder


def test_the_stage_ranks_on_the_ranking_split_only(toy_family, tmp_path):
    from ais import io
    from ais.stages import prune_units

    model_dir = _toy_checkpoint(tmp_path / "model")
    rng = np.random.default_rng(0)
    val, test = rng.uniform(1, 5, 6).tolist(), rng.uniform(1, 5, 5).tolist()

    def ranked(name: str, val_y: list[float], test_y: list[float]) -> tuple[dict, pd.DataFrame]:
        folder = tmp_path / name
        folder.mkdir()
        manifest = _write_manifest(folder, {"train": [3.0, 2.0], "val": val_y, "test": test_y})
        out = folder / "pruning.parquet"
        prune_units.run(manifest, model_dir, out, target_layer="body.2", split="val", draws=2, n_boot=20,
                        device="cpu")
        return io.read_metadata(out)["ais_pruning"], pd.read_parquet(out)

    first, table = ranked("a", val, test)
    other_test, table_b = ranked("b", val, [5.0 - v for v in test])  # new test labels: same ranking
    other_val, _ = ranked("c", [-v for v in val], test)  # val labels on the other side of y_pred: another ranking
    assert first["harmful_order"] == other_test["harmful_order"]
    assert first["harmful_order"] != other_val["harmful_order"]
    assert first["n_ranking_images"] == 6 and first["n_test_images"] == 5 and first["k"] == [1, 4, 6]
    assert set(table["order"]) == {"none", "harmful", "helpful", "random"}
    assert not table.equals(table_b)  # the test labels are what is scored


def test_the_stage_scores_a_classifier_with_its_test_metrics(toy_family, tmp_path):
    from ais import io
    from ais.models import save_checkpoint
    from ais.stages import prune_units

    torch.manual_seed(0)
    model = _ToyNet(2).eval()
    save_checkpoint(model, tmp_path / "model", {"arch": "t2toy", "head": "gap", "input_size": 8, "task": "classification",
                                                "classes": ["real", "generated"], "explained_class": "generated",
                                                "normalization": "none", "target_layer": "body.2"})
    manifest = _write_manifest(tmp_path, {"train": [0.0, 1.0], "val": [0.0, 1.0, 1.0, 0.0], "test": [1.0, 0.0, 1.0, 0.0]})
    summary = prune_units.run(manifest, tmp_path / "model", tmp_path / "p.parquet", split="val", k=[2], draws=1,
                              n_boot=10, device="cpu")
    table = pd.read_parquet(tmp_path / "p.parquet")
    assert "roc_auc" in set(table["metric"]) and "roc_auc" in summary
    from sklearn.metrics import roc_auc_score

    from ais.images import load_batch

    test = pd.read_parquet(manifest).query("split == 'test'").sort_values("image_id")
    with torch.no_grad():
        probs = torch.softmax(model(load_batch(test["path"].tolist(), 8, "none")), 1)[:, 1].numpy()
    unpruned = table[(table["order"] == "none") & (table["metric"] == "roc_auc")]["value"].item()
    assert unpruned == pytest.approx(roc_auc_score(test["y_true"], probs))
    meta = io.read_metadata(tmp_path / "p.parquet")["ais_pruning"]
    assert meta["task"] == "classification" and meta["k"] == [2]


def test_the_stage_refuses_the_test_split_and_an_unlabelled_ranking_split(toy_family, tmp_path):
    from ais.errors import UserError
    from ais.stages import prune_units

    model_dir = _toy_checkpoint(tmp_path / "model")
    manifest = _write_manifest(tmp_path, {"train": [1.0, 2.0], "val": [np.nan, np.nan], "test": [1.0, 2.0]})
    with pytest.raises(UserError, match="held out"):
        prune_units.run(manifest, model_dir, tmp_path / "p.parquet", split="test")
    with pytest.raises(UserError, match="no labelled val image"):
        prune_units.run(manifest, model_dir, tmp_path / "p.parquet", split="val")
    assert not (tmp_path / "p.parquet").exists()


# --------------------------------------------------------------------------- external saliency maps
# The reference: pysaliency's definitions (github.com/matthias-k/pysaliency, pysaliency/metrics.py and
# numba_utils.py, v0.2.22), ported line by line below; and pysaliency itself when it is installed.

from ais.validity import saliency  # noqa: E402


def _ps_density(m, minimum_value=0.0):  # pysaliency.metrics.convert_saliency_map_to_density
    if m.min() < 0:
        m = m - m.min()
    m = m + minimum_value
    total = m.sum()
    return m / total if total else np.full_like(m, 1.0 / m.size)


def _ps_nss(m, xs, ys):  # pysaliency.metrics.NSS (per fixation)
    m = np.asarray(m, dtype=float)
    v = m[ys, xs] - m.mean()
    return v / m.std() if m.std() else v


def _ps_cc(a, b):  # pysaliency.metrics.CC
    return np.corrcoef(a.flatten(), b.flatten())[0, 1]


def _ps_sim(a, b):  # pysaliency.metrics.SIM
    return np.min([_ps_density(a), _ps_density(b)], axis=0).sum()


def _ps_mit_kld(a, b):  # pysaliency.metrics.MIT_KLDiv(saliency_map_1=judged, saliency_map_2=empirical)
    p1, p2 = _ps_density(a), _ps_density(b)
    return (p2 * np.log(2.2204e-16 + p2 / (p1 + 2.2204e-16))).sum()


def _ps_general_roc(positives, negatives, judd):  # pysaliency.numba_utils.general_roc_numba, loops as written
    sp, sn = np.sort(positives)[::-1], np.sort(negatives)[::-1]
    if judd == 0:
        values = np.sort(np.hstack([positives, negatives]))[::-1]
    else:
        lo, hi = min(sp[-1], sn[-1]), max(sp[0], sn[0]) + 1
        values = np.sort(np.hstack((hi, positives, lo)))[::-1]
    fpr, tpr = np.zeros(len(values) + 1), np.zeros(len(values) + 1)
    tp = fp = 0
    for i, theta in enumerate(values):
        while tp < len(sp) and sp[tp] >= theta:
            tp += 1
        while fp < len(sn) and sn[fp] >= theta:
            fp += 1
        fpr[i + 1], tpr[i + 1] = fp / len(sn), tp / len(sp)
    return np.trapezoid(tpr, fpr)


def _ps_auc_judd(m, ys, xs):  # SaliencyMapModel.AUC_Judd(jitter=False): 'unfixated' negatives, judd thresholds
    fixated = np.zeros(m.shape, bool)
    fixated[ys, xs] = True
    return _ps_general_roc(m[ys, xs], m[~fixated], judd=1)


def _ps_sauc(m, ys, xs, oys, oxs):  # SaliencyMapModel.sAUC: mean over fixations of general_rocs_per_positive
    neg = m[oys, oxs]
    return np.mean([((neg < v).sum() + 0.5 * (neg == v).sum()) / neg.size for v in m[ys, xs]])


def _random_case(seed: int, shape=(9, 11), n_fix=7):
    rng = np.random.default_rng(seed)
    p = rng.gamma(1.0, size=shape).round(1)  # rounded: ties on purpose
    q = rng.gamma(2.0, size=shape)
    ys, xs = rng.integers(0, shape[0], n_fix), rng.integers(0, shape[1], n_fix)
    oys, oxs = rng.integers(0, shape[0], 20), rng.integers(0, shape[1], 20)
    return p, q, (ys, xs), (oys, oxs)


def test_saliency_metrics_by_hand():
    p = np.array([[0.0, 1.0], [2.0, 3.0]])
    assert saliency.nss(p, (np.array([1]), np.array([1]))) == pytest.approx(1.5 / np.sqrt(1.25))
    assert saliency.nss(p, (np.array([0, 1]), np.array([0, 1]))) == pytest.approx(0.0)
    assert np.isnan(saliency.nss(np.ones((2, 2)), (np.array([0]), np.array([0]))))
    assert saliency.nss_density(p, np.array([[0.0, 0.0], [0.0, 2.0]])) == pytest.approx(1.5 / np.sqrt(1.25))
    # AUC-Judd: thresholds only at fixated values, so it is not the Mann-Whitney statistic (1/3 here)
    m = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert saliency.auc_judd(m, (np.array([0]), np.array([1]))) == pytest.approx(2 / 3)
    assert saliency.auc_judd(np.array([[0.1, 0.9], [0.5, 0.3]]), (np.array([0, 1]), np.array([1, 0]))) == 1.0
    # shuffled AUC: 2 against the other images' values 1, 2, 4: (1 + 1/2) / 3
    assert saliency.shuffled_auc(m, (np.array([0]), np.array([1])), (np.array([0, 0, 1]), np.array([0, 1, 1]))) == 0.5
    assert np.isnan(saliency.shuffled_auc(m, (np.array([0]), np.array([1])), (np.array([], int), np.array([], int))))
    with pytest.raises(ValueError, match="inside the 2x2 map"):
        saliency.nss(m, (np.array([2]), np.array([0])))
    parts = saliency.map_parts(np.array([[-1.0, 2.0]]), signed=True)
    np.testing.assert_array_equal(parts["abs"], [[1, 2]])
    np.testing.assert_array_equal(parts["neg"], [[1, 0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_saliency_metrics_equal_pysaliency_definitions(seed):
    p, q, (ys, xs), (oys, oxs) = _random_case(seed)
    assert saliency.cc(p, q) == pytest.approx(_ps_cc(p, q), rel=1e-12)
    assert saliency.sim(p, q) == pytest.approx(_ps_sim(p, q), rel=1e-12)
    assert saliency.kld(p, q, eps=2.2204e-16) == pytest.approx(_ps_mit_kld(p, q), rel=1e-12)
    assert saliency.nss(p, (ys, xs)) == pytest.approx(_ps_nss(p, xs, ys).mean(), rel=1e-12)
    assert saliency.auc_judd(p, (ys, xs)) == pytest.approx(_ps_auc_judd(p, ys, xs), rel=1e-12)
    assert saliency.shuffled_auc(p, (ys, xs), (oys, oxs)) == pytest.approx(_ps_sauc(p, ys, xs, oys, oxs), rel=1e-12)


def _installed_pysaliency():
    """pysaliency's metrics.py and numba_utils.py loaded from the installed package, without its __init__
    (which imports pkg_resources, absent from recent setuptools); None when pysaliency is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("pysaliency")
    if spec is None or not spec.submodule_search_locations:
        return None
    mods = {}
    for name in ("metrics", "numba_utils"):
        s = importlib.util.spec_from_file_location(f"_ps_{name}", Path(spec.submodule_search_locations[0]) / f"{name}.py")
        mods[name] = importlib.util.module_from_spec(s)
        s.loader.exec_module(mods[name])
    return mods


def test_saliency_metrics_equal_installed_pysaliency(monkeypatch):
    ps = _installed_pysaliency()
    if ps is None:
        pytest.skip("pysaliency is not installed (the ported definitions above are the reference)")
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # pysaliency 0.2.22 calls np.trapz (NumPy < 2.4)
    for seed in range(3):
        p, q, (ys, xs), (oys, oxs) = _random_case(seed)
        assert saliency.cc(p, q) == pytest.approx(ps["metrics"].CC(p, q), rel=1e-12)
        assert saliency.sim(p, q) == pytest.approx(ps["metrics"].SIM(p, q), rel=1e-12)
        assert saliency.kld(p, q, eps=2.2204e-16) == pytest.approx(ps["metrics"].MIT_KLDiv(p, q), rel=1e-12)
        assert saliency.nss(p, (ys, xs)) == pytest.approx(ps["metrics"].NSS(p, xs, ys).mean(), rel=1e-12)
        fixated = np.zeros(p.shape, bool)
        fixated[ys, xs] = True
        judd = ps["numba_utils"].general_roc_numba(p[ys, xs], p[~fixated], judd=1)[0]
        assert saliency.auc_judd(p, (ys, xs)) == pytest.approx(judd, rel=1e-12)
        per_fix = ps["numba_utils"].general_rocs_per_positive_numba(p[ys, xs], p[oys, oxs])
        assert saliency.shuffled_auc(p, (ys, xs), (oys, oxs)) == pytest.approx(per_fix.mean(), rel=1e-12)


def test_reading_external_maps_and_fixations(tmp_path):
    Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).save(tmp_path / "a.png")
    np.testing.assert_array_equal(saliency.read_array(tmp_path / "a.png"), [[0, 255], [255, 0]])
    Image.fromarray(np.full((3, 5), 1000, np.uint16)).save(tmp_path / "b16.png")
    assert saliency.read_array(tmp_path / "b16.png").max() == 1000  # 16-bit PNGs keep their values
    np.save(tmp_path / "c.npy", np.ones((4, 6, 1)))
    assert saliency.read_external_map(tmp_path / "c.npy", (2, 3)).shape == (2, 3)
    for name, arr, match in [("bad3d.npy", np.ones((2, 2, 3)), "2-D"), ("nan.npy", np.array([[np.nan]]), "NaN"),
                             ("neg.npy", -np.ones((2, 2)), "negative")]:
        np.save(tmp_path / name, arr)
        with pytest.raises(ValueError, match=f"{name}.*{match}"):
            saliency.read_array(tmp_path / name)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png: cannot be read"):
        saliency.read_array(tmp_path / "broken.png")
    counts = np.zeros((4, 4))
    counts[3, 3], counts[0, 1] = 2, 1
    ys, xs = saliency.points_on_grid(counts, (2, 2))  # integer counts repeat a fixation
    assert sorted(zip(ys.tolist(), xs.tolist())) == [(0, 0), (1, 1), (1, 1)]
    assert saliency.is_binary(np.array([[0, 3], [3, 0]])) and not saliency.is_binary(np.array([[0, 1], [2, 0]]))
    assert saliency.find_map(tmp_path, "a", "a") == (tmp_path / "a.png", "")
    path, why = saliency.find_map(tmp_path, "zzz", "zzz")
    assert path is None and why.startswith("no zzz.npy or zzz.png")
    np.save(tmp_path / "a.npy", np.ones((2, 2)))
    assert saliency.find_map(tmp_path, "a", "a")[1].startswith("ambiguous: a.npy, a.png")
    assert saliency.find_map(tmp_path / "sub", "../a", "a__x")[0] is None  # never outside the folder


def _figures_and_maps(tmp_path: Path, ids: list[str], size: int = 8) -> tuple[Path, Path]:
    """A one-shard figures table and maps folder as compute_heatmaps writes them (every map array)."""
    import pyarrow as pa

    from ais import io
    from ais.methods import map_keys
    from ais.tables import HEATMAP_SCHEMA

    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    rng = np.random.default_rng(0)
    for image_id in ids:
        maps = {k: rng.uniform(-1, 1, (size, size)) for k in map_keys()}
        maps["gradcam"] = np.abs(maps["gradcam"])
        io.write_maps(maps_dir / f"{image_id}.npz", {**maps, "image": np.zeros((size, size, 3), np.uint8),
                                                     "image_id": np.array(image_id)})
    default = {pa.string(): "x", pa.int32(): 0, pa.float64(): 0.0, pa.bool_(): False}
    rows = [{f.name: default.get(f.type, 0) for f in HEATMAP_SCHEMA} | {"image_id": i, "file_stem": i} for i in ids]
    figures = tmp_path / "figures.parquet"
    io.write_table(figures, pa.Table.from_pylist(rows, schema=HEATMAP_SCHEMA), HEATMAP_SCHEMA)
    return figures, maps_dir


def test_the_external_stage_scores_lists_missing_and_unreadable_maps(tmp_path, caplog):
    from ais.stages import external_agreement

    figures, maps_dir = _figures_and_maps(tmp_path, ["a", "b", "c", "d"])
    ext = tmp_path / "external"
    ext.mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)).save(ext / "a.png")
    binary = np.zeros((16, 16))
    binary[4, 4] = binary[12, 8] = 1.0
    np.save(ext / "b.npy", binary)  # a binary map: its pixels are fixations
    (ext / "d.png").write_bytes(b"broken")
    with caplog.at_level("WARNING"):
        table = external_agreement.run([figures], [maps_dir], ext, tmp_path / "external.parquet")
    status = table.groupby("image_id")["status"].agg(lambda s: "/".join(sorted(set(s)))).to_dict()
    assert status == {"a": "ok", "b": "ok", "c": "missing", "d": "unreadable"}
    assert table.groupby("image_id").size().nunique() == 1  # every image has a row for every (map, part)
    assert table.loc[table["status"] != "ok", "cc"].isna().all()
    assert "d.png: cannot be read" in table.loc[table["image_id"] == "d", "reason"].iloc[0]
    assert "2 of 4 image(s) not scored" in caplog.text and "c (missing" in caplog.text and "d (unreadable" in caplog.text
    a = table[table["image_id"] == "a"]
    assert set(a["fixations"]) == {"density"} and a["auc_judd"].isna().all() and a["nss"].notna().all()
    assert set(a.loc[a["map"] == "ais", "part"]) == {"abs", "pos", "neg"}
    assert set(a.loc[a["map"] == "gradcam", "part"]) == {"all"} and "centre" in set(a["map"])
    b = table[table["image_id"] == "b"]
    assert set(b["fixations"]) == {"binary map"} and (b["n_fixations"] == 2).all() and b["auc_judd"].notna().all()
    assert b["sauc"].isna().all()  # no other image has fixations
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "external.parquet"), table, check_dtype=False)
    # by hand for one row: CC of |ais| of image a against its PNG resized to the 8 x 8 grid
    from ais import io

    maps = io.read_maps(maps_dir / "a.npz")
    q = saliency.read_external_map(ext / "a.png", (8, 8))
    row = a[(a["map"] == "ais") & (a["part"] == "abs")].iloc[0]
    assert row["cc"] == pytest.approx(saliency.cc(np.abs(maps["ais"]), q))
    # fixations as points for a and b: NSS, AUC-Judd and sAUC (the other image's fixations as negatives)
    fix = tmp_path / "fix"
    fix.mkdir()
    np.save(fix / "a.npy", binary.T)
    np.save(fix / "b.npy", binary)
    again = external_agreement.run([figures], [maps_dir], ext, tmp_path / "e2.parquet", fixations=fix)
    ok = again[again["status"] == "ok"]
    assert set(ok["fixations"]) == {"points"} and ok["sauc"].notna().all() and ok["auc_judd"].notna().all()


def test_the_external_stage_refuses_a_bad_folder_before_reading(tmp_path):
    from ais.errors import UserError
    from ais.stages import external_agreement

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="heatmaps.external: .*does not exist"):
        external_agreement.run(["no-such-figures.parquet"], [], tmp_path / "nope", tmp_path / "out.parquet")
    with pytest.raises(UserError, match="heatmaps.external_fixations: .*is a file, not a folder"):
        external_agreement.run(["no-such-figures.parquet"], [], tmp_path, tmp_path / "out.parquet",
                               fixations=tmp_path / "file.txt")
    assert not (tmp_path / "out.parquet").exists()


# --------------------------------------------------------------------------- localisation

from ais.validity import degenerate, localisation, sign, taylor  # noqa: E402


def test_pointing_game_and_relevance_mass_by_hand():
    heat = np.zeros((5, 5))
    heat[1, 1], heat[3, 3], heat[0, 4] = 1.0, 0.5, -2.0
    mask = np.zeros((5, 5), bool)
    mask[3:, 3:] = True
    assert localisation.pointing_game(heat, mask) is False
    mask[1, 1] = True
    assert localisation.pointing_game(heat, mask) is True
    near = np.zeros((5, 5), bool)
    near[2, 2] = True  # one pixel away (diagonal: sqrt 2) from the peak
    assert not localisation.pointing_game(heat, near, tolerance=1) and localisation.pointing_game(heat, near, 2)
    assert localisation.pointing_game(np.ones((3, 3)), np.eye(3, dtype=bool)) is False  # ties never win
    assert localisation.pointing_game(np.ones((3, 3)), np.ones((3, 3), bool)) is True
    with pytest.raises(ValueError, match="empty"):
        localisation.pointing_game(heat, np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="same"):
        localisation.pointing_game(heat, np.ones((4, 5), bool))
    only = np.zeros((5, 5), bool)
    only[3, 3] = True
    assert localisation.relevance_mass(heat, only) == pytest.approx(0.5 / 1.5)  # negatives do not count
    assert localisation.relevance_mass(-heat, only) == 0.0 and localisation.relevance_mass(-heat, ~only) == 1.0
    assert np.isnan(localisation.relevance_mass(-np.ones((2, 2)), np.ones((2, 2), bool)))
    s = localisation.localisation_summary([heat, heat, heat], [mask, only, np.zeros((5, 5), bool)])
    assert s == {"pointing_game": 0.5, "relevance_mass": pytest.approx((1.5 / 1.5 + 0.5 / 1.5) / 2), "n_images": 2,
                 "n_skipped": 1}


# --------------------------------------------------------------------------- the helpfulness sign


def _ablation_rows(y_true: float, y_pred: float, dys: list[float], image_id: str = "a") -> pd.DataFrame:
    from ais.ablation import ablation_table

    y_abl = np.array([[y_pred + d for d in dys]], dtype=np.float32)
    return ablation_table([image_id], [y_true], np.array([y_pred], np.float32), y_abl).to_pandas()


def test_sign_reduction_holds_exactly_when_the_move_is_smaller_than_the_error():
    # y_pred 3.0, y_true 2.0 (error 1): |Δy| 0.5 and 0.25 stay on the same side; 1.5 and -2 cross over
    table = pd.concat([_ablation_rows(2.0, 3.0, [0.5, -0.25, 1.5, -2.0]),
                       _ablation_rows(np.nan, 3.0, [0.1], image_id="u")])
    out = sign.sign_reduction(table).set_index("image_id")
    a = out.loc["a"]
    assert (a["n_pairs"], a["n_holds"], a["n_identity"]) == (4, 2, 2) and a["fraction_holds"] == 0.5
    assert a["max_identity_error"] < 1e-6
    # signed pairs where helpful == pushes toward the truth: 0.5 (helpful, toward), -0.25 (harmful), 1.5 (helpful),
    # -2 lands at 1.0: error 1 -> 1, Δerror 0: unsigned; so 3 of 3
    assert a["fraction_sign_agrees"] == 1.0
    assert out.loc["u", "n_pairs"] == 0 and np.isnan(out.loc["u", "fraction_holds"])
    summary = sign.sign_summary(out.reset_index())
    assert summary["fraction_holds"] == 0.5 and summary["n_images"] == 1 and "50.0 %" in summary["sentence"]
    assert sign.error_sign([3.0, 1.0], [2.0, 2.0]).tolist() == [-1.0, 1.0]
    with pytest.raises(ValueError, match="delta_residual"):
        sign.sign_reduction(table.drop(columns="delta_residual"))


def test_ais_weights_are_the_direction_times_the_error_sign_where_the_reduction_holds():
    from ais.fusion import fuse

    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 5, 6)
    pred = truth + rng.choice([-1.0, 1.0], 6) * rng.uniform(0.5, 1.5, 6)  # errors of 0.5 or more; moves ~0.05
    rows = [_ablation_rows(float(t), float(p), list(rng.normal(0, 0.05, 16)), image_id=f"i{k}")
            for k, (t, p) in enumerate(zip(truth, pred))]
    table = pd.concat(rows, ignore_index=True)
    assert sign.sign_reduction(table)["fraction_holds"].min() == 1.0
    fused = fuse(table)
    e = sign.error_sign(fused["y_pred"], fused["y_true"])
    np.testing.assert_allclose(fused["ais_score"], e * np.sign(fused["direction"]) * fused["z"], atol=1e-12)
    # the maps: with weights w the map is sum_c w_c A_c; AIS and the product share units and activations
    acts = rng.uniform(0, 1, (16, 6, 6))
    one = fused[fused["image_id"] == "i0"]
    ais_map = np.einsum("c,chw->hw", one["ais_score"].to_numpy(), acts)
    direction_map = np.einsum("c,chw->hw", one["direction"].to_numpy(), acts)
    s = sign.error_sign(one["y_pred"].iloc[0], one["y_true"].iloc[0])
    r = sign.map_product_correlation(ais_map, direction_map, s)
    assert r == pytest.approx(np.corrcoef(ais_map.ravel(), (s * direction_map).ravel())[0, 1])
    assert sign.map_product_correlation(ais_map, direction_map, -s) == pytest.approx(-r)
    assert np.isnan(sign.map_product_correlation(ais_map, direction_map, 0.0))
    both = sign.map_product_correlations(ais_map[None], direction_map[None], [one["y_pred"].iloc[0]],
                                         [one["y_true"].iloc[0]])
    assert both[0] == pytest.approx(r)


# --------------------------------------------------------------------------- Taylor


def test_taylor_is_exact_when_the_network_is_linear_after_the_layer():
    from ais.ablation import naive_ablation

    torch.manual_seed(0)
    linear_after = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 7, 3, padding=1),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(7, 1)).eval()
    x = _images(4)
    est = taylor.taylor_estimates(linear_after, "2", x, lambda o: o[:, 0], batch_size=3)
    _, y_abl = naive_ablation(linear_after, "2", x)
    with torch.no_grad():
        y = linear_after(x)[:, 0]
    np.testing.assert_allclose(est, (y_abl - y[:, None]).double().numpy(), atol=1e-5)
    assert all(p.grad is None for p in linear_after.parameters())
    # after a ReLU the estimate is first order only: by hand, -sum(grad * A) per unit
    model = _toy_model()
    est = taylor.taylor_estimates(model, "body.2", x, lambda o: o[:, 0])
    a = model.body[2](model.body[1](model.body[0](x))).detach().requires_grad_(True)
    y = model.head(torch.relu(a).mean(dim=(2, 3)))[:, 0].sum()
    (g,) = torch.autograd.grad(y, a)
    np.testing.assert_allclose(est, -(g * a).sum((2, 3)).detach().double().numpy(), atol=1e-6)
    table = pd.DataFrame({"image_id": np.repeat(["p", "q"], 6), "channel": np.tile(np.arange(6), 2),
                          "delta_prediction": np.concatenate([est[0], -est[1]])})
    out = taylor.taylor_table(table, ["p", "q"], est[:2])
    assert out["taylor_spearman"].tolist() == pytest.approx([1.0, -1.0])
    assert taylor.taylor_correlation(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 10.0])) == pytest.approx(0.5)
    assert np.isnan(taylor.taylor_correlation(np.ones(4), np.arange(4.0)))
    with pytest.raises(ValueError, match="no ablation rows"):
        taylor.taylor_table(table, ["z"], est[:1])


# --------------------------------------------------------------------------- degenerate results


def test_degenerate_flags_on_hand_made_inputs():
    rng = np.random.default_rng(0)
    y_true = rng.normal(3, 1, 50)
    assert degenerate.degenerate_flags(y_pred=y_true + rng.normal(0, 0.1, 50), y_true=y_true) == []
    flags = degenerate.degenerate_flags(y_pred=3 + 0.01 * rng.normal(size=50), y_true=y_true)
    assert len(flags) == 1 and "collapsed" in flags[0]
    assert "flipped" in degenerate.degenerate_flags(fraction_flipped=0.4)[0]
    assert degenerate.degenerate_flags(fraction_flipped=0.1) == []
    good = rng.normal(size=(8, 16, 16))  # peaks anywhere, no common pattern
    assert degenerate.degenerate_flags(maps={"ais": good}) == []
    blank = good.copy()
    blank[:5] = 0.0
    assert any("zero everywhere for 5 of 8" in f for f in degenerate.degenerate_flags(maps={"gradcam": blank}))
    positive = np.abs(good)
    flags = degenerate.degenerate_flags(maps={"ais": positive}, signed={"ais": True})
    assert any("one sign everywhere for 8 of 8" in f for f in flags)
    assert degenerate.degenerate_flags(maps={"gradcam": positive}, signed={"gradcam": False}) == []
    corner = rng.uniform(0, 0.5, (8, 16, 16))
    corner[:6, 0, 15] = 5.0  # 6 of 8 peak in the top-right cell
    flags = degenerate.degenerate_flags(maps={"gradcam": corner})
    assert any("same cell (row 1, column 4 of a 4 x 4 grid) for 6 of 8" in f for f in flags)
    pos = degenerate.position_effects(corner)
    assert pos["peak_cell"] == (0, 3) and pos["peak_share"] == 0.75 and pos["mean_map"].shape == (16, 16)
    pattern = np.outer(np.hanning(16), np.hanning(16))
    fixed = pattern[None] * rng.uniform(0.5, 2, (8, 1, 1)) + rng.normal(0, 0.01, (8, 16, 16))
    assert degenerate.position_effects(fixed)["mean_map_cc"] > 0.99
    assert any("mean map" in f for f in degenerate.degenerate_flags(maps={"saliency": fixed}))
    # AIS's harmful part is non-positive by definition: the validity stage marks it unsigned, so it is not flagged
    from ais.validity.measures import _sign_parts

    assert _sign_parts() == ["helpful", "harmful"]
    assert not any("one sign" in f for f in degenerate.degenerate_flags(maps={"harmful": -positive},
                                                                        signed={"harmful": False}))
    # a map zero for every image (Grad-CAM of a class-token ViT's last block) is flagged, not a crash
    zeros = degenerate.position_effects(np.zeros((8, 16, 16)))
    assert zeros["n_images"] == 0 and np.isnan(zeros["peak_share"]) and np.isnan(zeros["mean_map_cc"])
    assert any("zero everywhere for 8 of 8" in f for f in degenerate.degenerate_flags(maps={"gradcam": np.zeros((8, 16, 16))}))


def test_the_config_check_names_a_missing_external_folder(tmp_path):
    from ais.config import ConfigError, check_paths, validate_config

    cfg = validate_config({"heatmaps": {"external": "nope", "external_fixations": str(tmp_path)}}, source="t")
    assert cfg["validity"]["pruning"] == {"split": "val", "score": "ais", "k": "auto", "draws": 3, "bootstrap": None,
                                          "batch_size": 32}
    with pytest.raises(ConfigError, match=r"key 'heatmaps.external': 'nope' does not exist"):
        check_paths(cfg, source="t", base=tmp_path)
    (tmp_path / "nope").mkdir()
    check_paths(cfg, source="t", base=tmp_path)
