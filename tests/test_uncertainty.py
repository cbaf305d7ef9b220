"""Monte-Carlo dropout: the head-only resampling equals full stochastic passes; summaries by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ais import uncertainty
from ais.families import family_for
from ais.uncertainty import mc_full_passes, mc_samples, summarize


def head_net(bn: bool = True) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4) if bn else nn.Identity(), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 16), nn.ReLU(inplace=True),
        nn.Dropout(0.3), nn.Linear(16, 8), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(8, 2),
    )


X = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_head_only_samples_equal_full_passes_and_run_the_backbone_once():
    model = head_net().train()
    calls = {"conv": 0, "head": 0}
    model[0].register_forward_hook(lambda m, i, o: calls.__setitem__("conv", calls["conv"] + 1))
    model[8].register_forward_hook(lambda m, i, o: calls.__setitem__("head", calls["head"] + len(i[0])))
    fast = mc_samples(model, X, 40, seed=3)
    assert calls == {"conv": 1, "head": 40 * 5}  # backbone once; the head on all samples
    full = mc_full_passes(model, X, 40, seed=3)
    assert fast.shape == full.shape == (40, 5, 2)
    assert (fast - full).abs().max() < 1e-6
    assert fast.std(dim=0).min() > 0  # the samples differ
    again = mc_samples(model, X, 40, seed=3)
    assert torch.equal(fast, again)  # deterministic for a seed
    assert not torch.equal(fast, mc_samples(model, X, 40, seed=4))
    assert all(m.training for m in model.modules())  # modes restored


def test_everything_but_dropout_stays_in_eval_mode():
    model = head_net().train()  # BN in train mode would use batch statistics and update its running stats
    before = {k: v.clone() for k, v in model.state_dict().items()}
    samples = mc_samples(model, X, 8, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # with every dropout mask kept (p -> the bank keeps all), the samples equal the eval-mode output
    keep_all = head_net()
    for m in keep_all.modules():
        if isinstance(m, nn.Dropout):
            m.p = 1e-12
    keep_all.load_state_dict(model.state_dict())
    with torch.no_grad():
        eval_out = keep_all.eval()(X)
    torch.testing.assert_close(mc_samples(keep_all, X, 3, seed=0), eval_out.expand(3, -1, -1))
    assert samples.shape == (8, 5, 2)


def test_masks_are_standard_dropout():
    """Each element is kept with probability 1 - p and scaled by 1 / (1 - p), as F.dropout."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Flatten(), nn.Dropout(0.25))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
    out = mc_samples(model, torch.ones(4, 1, 10, 10), 500, seed=0)  # (S, N, 100)
    np.testing.assert_allclose(np.unique(out.numpy()), [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(float((out == 0).float().mean()) - 0.25) < 0.01


def test_channel_dropout_masks_whole_channels():
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Dropout2d(0.5), nn.Conv2d(3, 2, 1), nn.Flatten())
    x = torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(mc_samples(model, x, 12, seed=1), mc_full_passes(model, x, 12, seed=1))
    store = {}
    model[2].register_forward_hook(lambda m, i, o: store.__setitem__("out", i[0]))  # what the dropout handed on
    mc_samples(model, x, 12, seed=1)
    zero = store["out"].reshape(12 * 2, 3, -1).eq(0).all(dim=-1)  # whole channels are 0 ...
    some = store["out"].reshape(12 * 2, 3, -1).eq(0).any(dim=-1)
    assert zero.any() and torch.equal(zero, some)  # ... or none of their pixels are


def test_no_dropout_is_said_not_faked():
    model = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 1))
    assert not uncertainty.has_dropout(model)
    with pytest.raises(ValueError, match="no dropout"):
        mc_samples(model, X, 10)
    info = uncertainty.status(model, 200)
    assert info["status"] == "no dropout" and "head_dropout" in info["reason"] and info["mc_samples"] == 0
    assert uncertainty.status(head_net(), 0)["status"] == "off"
    assert uncertainty.status(head_net(), 200) == {"status": "sampled", "mc_samples": 200,
                                                   "dropout_layers": ["7", "10"], "reason": None}


def test_vgg_heads_dropout():
    vgg = family_for("vgg11")
    gap = vgg.build("vgg11", "gap", 1)
    assert uncertainty.dropout_layers(gap) == []
    with_dropout = vgg.build("vgg11", "gap", 1, head_dropout=0.2)
    assert uncertainty.dropout_layers(with_dropout) == ["classifier.dropout"]
    assert list(with_dropout.state_dict()) == list(gap.state_dict())  # checkpoints load either way
    assert vgg.output_layer(with_dropout) is with_dropout.classifier[-1]
    classifier = vgg.build("vgg11", "classifier", 1)
    assert uncertainty.dropout_layers(classifier) == ["classifier.2", "classifier.5"]
    assert [m.p for m in classifier.classifier if isinstance(m, nn.Dropout)] == [0.5, 0.5]
    x = torch.randn(2, 3, 32, 32)
    fast, full = mc_samples(with_dropout, x, 6, seed=2), mc_full_passes(with_dropout, x, 6, seed=2)
    assert (fast - full).abs().max() < 1e-5
    with pytest.raises(ValueError, match="head_dropout"):
        vgg.build("vgg11", "gap", 1, head_dropout=1.0)


def test_regression_summary_by_hand():
    samples = np.array([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]])  # (S=3, N=2)
    out = summarize(samples, "regression")
    np.testing.assert_allclose(out["mc_mean"], [3.0, 2.0])
    np.testing.assert_allclose(out["mc_std"], [np.sqrt(8 / 3), 0.0])
    with pytest.raises(ValueError, match="regression"):
        summarize(samples[..., None], "regression")


def test_classification_summary_by_hand():
    # image 0: both samples certain but disagreeing -> entropy log 2, all of it mutual information;
    # image 1: both samples 50/50 -> entropy log 2, no mutual information.
    probs = np.array([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.5, 0.5]]])  # (S=2, N=2, K=2)
    out = summarize(probs, "classification")
    np.testing.assert_allclose(out["mc_mean_probability"], [[0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(out["mc_entropy"], [np.log(2), np.log(2)])
    np.testing.assert_allclose(out["mc_mutual_information"], [np.log(2), 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="unknown task kind"):
        summarize(probs, "segmentation")


def test_spearman_guards():
    assert uncertainty.spearman([1, 2, 3, 4], [2, 4, 6, 9]) == pytest.approx(1.0)
    assert uncertainty.spearman([1, 2], [1, 2]) is None
    assert uncertainty.spearman([1, 1, 1], [1, 2, 3]) is None


# ---------------------------------------------------------------------------- the fine-tuning stage and the report


def _train(tmp_path, head_dropout, mc_samples):
    import json

    import pandas as pd

    from ais.stages.finetune_model import run as train_model
    from test_training import make_dataset

    manifest = make_dataset(tmp_path)
    model_cfg = {"arch": "vgg11", "head": "gap", "weights": "none", "input_size": 32, "head_dropout": head_dropout}
    train_cfg = {"epochs": 1, "batch_size": 4, "lr": 1e-3, "bootstrap": 100, "augment": False}
    out = tmp_path / "model"
    metrics = train_model(manifest, out, model_cfg, train_cfg, 3, device="cpu",
                          uncertainty_cfg={"mc_samples": mc_samples})
    assert json.loads((out / "metrics.json").read_text())["uncertainty"] == json.loads(json.dumps(
        metrics["uncertainty"]))
    return out, pd.read_parquet(out / "predictions.parquet"), metrics


def test_stage_writes_mc_columns_equal_to_the_library(tmp_path):
    import pyarrow.parquet as pq

    from ais import io
    from ais.images import load_batch
    from ais.models import load_trained
    from ais.tables import PREDICTIONS_SCHEMA

    out, pred, metrics = _train(tmp_path, 0.3, 16)
    assert pq.read_table(out / "predictions.parquet").schema.remove_metadata() == PREDICTIONS_SCHEMA
    assert pred["mc_std"].notna().all() and (pred["mc_std"] > 0).all() and pred["mc_entropy"].isna().all()
    info = io.read_metadata(out / "predictions.parquet")["uncertainty"]
    assert info["status"] == "sampled" and info["mc_samples"] == 16 and info["dropout_layers"] == ["classifier.dropout"]
    assert set(metrics["uncertainty"]) >= {"test_srcc_std_abs_error", "test_mean_std", "test_n"}
    # the checkpoint reloads with its head dropout (model.json records it), so the samples are reproduced
    model, spec = load_trained(out)
    assert spec["head_dropout"] == 0.3 and uncertainty.has_dropout(model)
    x = load_batch(pred_paths(tmp_path)[:4], 32, "imagenet")
    samples = mc_samples(model, x, 16, seed=3)[..., 0].double().numpy()  # batch 0 of the stage: seed + 0
    np.testing.assert_allclose(pred["mc_mean"][:4], samples.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred["mc_std"][:4], samples.std(0), rtol=1e-4, atol=1e-6)


def pred_paths(root):
    import pandas as pd

    return pd.read_parquet(root / "manifest.parquet")["path"].tolist()


def test_no_dropout_head_says_so_in_metadata_summary_and_page(tmp_path):
    import pandas as pd

    from ais import io
    from ais.reporting.page import uncertainty_section
    from ais.reporting.summary import uncertainty_block
    from ais.tasks import get_task

    out, pred, metrics = _train(tmp_path, None, 200)
    assert pred["mc_mean"].isna().all() and pred["mc_std"].isna().all()
    info = io.read_metadata(out / "predictions.parquet")["uncertainty"]
    assert info["status"] == "no dropout" and "head_dropout" in info["reason"]
    block = uncertainty_block(metrics, pred, pd.DataFrame({"image_id": []}))
    assert block["status"] == "no dropout" and block["review"] == []
    html = "\n".join(uncertainty_section(block, {}, {}, get_task("regression").words))
    assert "no dropout" in html and "head_dropout" in html


def test_report_block_ranks_the_most_uncertain_images():
    import pandas as pd

    from ais.reporting.page import uncertainty_section
    from ais.reporting.summary import uncertainty_block
    from ais.tasks import get_task

    pred = pd.DataFrame({"image_id": list("abcde"), "split": ["test"] * 4 + ["train"],
                         "y_true": [1.0, 2.0, 3.0, 4.0, 5.0], "y_pred": [1.1, 2.5, 3.0, 2.0, 5.0],
                         "mc_mean": [1.0, 2.4, 3.1, 2.2, 5.0], "mc_std": [0.1, 0.3, 0.05, 0.9, 2.0]})
    metrics = {"uncertainty": {"status": "sampled", "mc_samples": 50, "dropout_layers": ["classifier.dropout"]}}
    block = uncertainty_block(metrics, pred, pd.DataFrame({"image_id": list("abcd")}), n_review=2)
    assert [r["image_id"] for r in block["review"]] == ["d", "b"]  # e has no panel (not in the heatmaps)
    assert block["test_n"] == 4 and block["test_srcc_std_abs_error"] == pytest.approx(1.0)  # errors .1 .5 0 2
    html = "\n".join(uncertainty_section(block, {}, {}, get_task("regression").words))
    assert "1.000" in html and ">d<" in html
