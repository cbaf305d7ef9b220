"""Saliency metrics and localisation AUC on tiny arrays with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ais.agreement import (
    EPS,
    agreement_table,
    cc,
    compare,
    kld,
    localization_auc,
    localization_summary,
    pooled_localization_auc,
    sim,
)


def test_cc():
    assert cc(np.array([1, 2, 3, 4]), np.array([2, 4, 6, 8])) == pytest.approx(1.0)
    assert cc(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # p - mean = [-1, 1, -1, 1], q - mean = [-1, -1, 1, 1]: uncorrelated
    assert cc(np.array([[0, 2], [0, 2]]), np.array([[0, 0], [2, 2]])) == pytest.approx(0.0)
    # p = [1, 2, 3], q = [1, 3, 2]: centred [-1, 0, 1] . [-1, 1, 0] = 1, norms sqrt(2) sqrt(2) -> 0.5
    assert cc(np.array([1, 2, 3]), np.array([1, 3, 2])) == pytest.approx(0.5)
    assert math.isnan(cc(np.ones(4), np.arange(4)))


def test_sim():
    # [0.5, 0.5, 0, 0] vs [0, 0.5, 0.5, 0]: intersection 0.5
    assert sim(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0])) == pytest.approx(0.5)
    assert sim(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(1.0)  # scale does not matter
    assert sim(np.array([1, 0]), np.array([0, 1])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="negative"):
        sim(np.array([-1, 1]), np.array([1, 1]))


def test_kld_direction_and_value():
    p = np.array([1.0, 1.0])  # judged: [0.5, 0.5]
    q = np.array([1.0, 3.0])  # reference: [0.25, 0.75]
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # KL(Q || P) = 0.130812...
    assert kld(p, q) == pytest.approx(expected, rel=1e-9)
    reverse = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(P || Q) = 0.143841...
    assert kld(q, p) == pytest.approx(reverse, rel=1e-9)
    assert kld(np.array([1.0, 2.0]), np.array([2.0, 4.0])) == pytest.approx(0.0, abs=1e-12)
    # reference mass where the judged map has none: log(eps + 1 / eps) ~ 36.04
    assert kld(np.array([0.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(math.log(EPS + 1 / EPS))


def test_compare_uses_ais_magnitude():
    ais = np.array([[-1.0, 0.0], [0.5, 0.0]])
    cam = np.array([[1.0, 0.0], [0.5, 0.0]])
    out = compare(ais, cam)
    assert out["cc"] == pytest.approx(1.0)
    assert out["sim"] == pytest.approx(1.0)
    assert out["kld"] == pytest.approx(0.0, abs=1e-12)
    maps = {"ais": np.stack([ais, -ais]), "gradcam": np.stack([cam, cam])}
    table = agreement_table(["a", "b"], maps, references=["gradcam"])
    assert table["image_id"].tolist() == ["a", "b"] and table["cc"].tolist() == pytest.approx([1.0, 1.0])


def naive_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_localization_auc_known_cases():
    mask = np.array([[True, True], [False, False]])
    assert localization_auc(np.array([[0.9, 0.8], [0.1, 0.2]]), mask) == 1.0  # perfect
    assert localization_auc(np.array([[0.1, 0.2], [0.9, 0.8]]), mask) == 0.0  # inverted
    assert localization_auc(np.full((2, 2), 0.3), mask) == 0.5  # constant: all ties
    # positives {0.5, 0.9}, negatives {0.1, 0.5}: (1 + 0.5 + 1 + 1) / 4
    assert localization_auc(np.array([0.1, 0.5, 0.5, 0.9]), np.array([False, True, False, True])) == 0.875
    assert math.isnan(localization_auc(np.ones((2, 2)), np.zeros((2, 2), bool)))
    assert math.isnan(localization_auc(np.ones((2, 2)), np.ones((2, 2), bool)))
    with pytest.raises(ValueError, match="shape"):
        localization_auc(np.ones((2, 2)), np.ones((3, 3), bool))


def test_auc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60).astype(float)  # many ties
    labels = rng.random(60) < 0.3
    assert localization_auc(scores, labels) == pytest.approx(naive_auc(scores, labels))


def test_pooled_and_summary():
    m1, k1 = np.array([0.9, 0.1]), np.array([True, False])  # AUC 1
    m2, k2 = np.array([0.2, 0.8]), np.array([True, False])  # AUC 0
    m3, k3 = np.array([0.5, 0.5]), np.array([True, True])  # no negatives: skipped per image
    # pooled: positives {0.9, 0.2, 0.5, 0.5}, negatives {0.1, 0.8}: wins 2 + 1 + 1 + 1 = 5 of 8
    assert pooled_localization_auc([m1, m2, m3], [k1, k2, k3]) == pytest.approx(5 / 8)
    summary = localization_summary([m1, m2, m3], [k1, k2, k3])
    assert summary == {"auc_mean": 0.5, "auc_median": 0.5, "n_images": 2, "n_skipped": 1, "auc_pooled": 0.625}
