"""The final report: summary.json against the inputs it summarises, the page in headless Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
import pytest

from ais.fusion import QUADRANTS
from ais.map_figures import GALLERY_GROUPS, gallery_selection
from ais.reporting.summary import quadrant_counts, stage_times
from ais.stages.build_report import read_benchmarks, read_gallery
from conftest import run_snakemake

# --------------------------------------------------------------------------- units


def test_stage_times_from_benchmark_files(tmp_path):
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    files = {
        "model/finetune_model.tsv": "12.5\t0:00:12\t900.0\t0\t0\t0\t0\t0\t0\t12\n",
        "ablation/shard-0.tsv": "3.0\t0:00:03\t500.0\t0\t0\t0\t0\t0\t0\t3\n",
        "ablation/shard-1.tsv": "5.0\t0:00:05\t700.0\t0\t0\t0\t0\t0\t0\t5\n",
        "heatmaps/shard-0/maps.tsv": "2.0\t0:00:02\t-\t0\t0\t0\t0\t0\t0\t2\n",
        "odd/empty.tsv": "",
    }
    for name, body in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + body if body else "")
    bench = read_benchmarks(tmp_path)
    assert sorted(bench["job"]) == ["ablation/shard-0.tsv", "ablation/shard-1.tsv", "heatmaps/shard-0/maps.tsv",
                                    "model/finetune_model.tsv"]
    stages = stage_times(bench)
    assert [s["stage"] for s in stages] == ["model", "ablation", "heatmaps"]  # workflow order
    ablation = stages[1]
    assert (ablation["jobs"], ablation["seconds_total"], ablation["seconds_longest_job"], ablation["max_rss_mb"]) == (
        2, 8.0, 5.0, 700.0)
    assert stages[2]["max_rss_mb"] is None  # "-" is no number
    assert stage_times(read_benchmarks(tmp_path / "missing")) == []


def test_quadrant_counts_and_unknown_labels(tmp_path):
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"quadrant": ["helpful-raises"] * 3 + ["harmful-lowers"]}).to_parquet(path)
    counts = quadrant_counts(pd.read_parquet(path)["quadrant"])
    assert set(counts) == set(QUADRANTS) and sum(counts.values()) == 4
    assert counts["helpful-raises"] == 3 and counts["harmful-lowers"] == 1
    pd.DataFrame({"quadrant": ["sideways"]}).to_parquet(path)
    with pytest.raises(ValueError, match="sideways"):
        quadrant_counts(pd.read_parquet(path)["quadrant"])


def _gallery_choice(tmp_path: Path, agreement: pd.DataFrame, per_group: int) -> dict[str, list[str]]:
    """The report's gallery groups, read from a gallery.json of :func:`gallery_selection`'s images.

    The JSON is the gallery stage's (``{"n_per_group", "groups", "provenance"}``,
    keys sorted as :func:`ais.io.write_json` writes them; empty groups empty lists).
    """
    chosen = gallery_selection(agreement, per_group)
    names = dict.fromkeys(group for group, _ in chosen) or dict.fromkeys(GALLERY_GROUPS)
    groups = {name: [i for g, i in chosen if g == name] for name in names}
    path = tmp_path / "gallery.json"
    path.write_text(json.dumps({"n_per_group": per_group, "groups": groups, "provenance": {}}, sort_keys=True))
    return read_gallery(str(path))


def test_gallery_choice_best_median_worst(tmp_path):
    agreement = pd.DataFrame({
        "image_id": list("abcdefg"),
        "abs_error": [0.5, 0.1, np.nan, 0.9, 0.3, 0.7, 0.2],
    })
    choice = _gallery_choice(tmp_path, agreement, 2)
    # labelled, by error: b .1, g .2, e .3, a .5, f .7, d .9
    assert choice == {"best": ["b", "g"], "median": ["e", "a"], "worst": ["d", "f"]}
    assert _gallery_choice(tmp_path, agreement.iloc[:0], 2) == {"best": [], "median": [], "worst": []}


def test_gallery_choice_is_the_gallery_figures(tmp_path):
    """The panels under the gallery are the images the gallery figure shows, median included."""
    agreement = pd.DataFrame({"image_id": [f"i{k}" for k in range(10)], "abs_error": np.arange(10) / 10})
    choice = _gallery_choice(tmp_path, agreement, 3)
    assert choice == {"best": ["i0", "i1", "i2"], "median": ["i3", "i4", "i5"], "worst": ["i9", "i8", "i7"]}
    assert [i for ids in choice.values() for i in ids] == [i for _, i in gallery_selection(agreement, 3)]
    unlabelled = agreement.assign(abs_error=np.nan, y_pred=np.arange(10.0))
    assert _gallery_choice(tmp_path, unlabelled, 1) == {"highest": ["i9"], "median": ["i5"], "lowest": ["i0"]}
    assert list(_gallery_choice(tmp_path, unlabelled, 1)) == ["highest", "median", "lowest"]  # the figure's order


# --------------------------------------------------------------------------- the tiny run


def test_summary_matches_its_inputs(tiny_workflow: Path):
    results = tiny_workflow / "results"
    summary = json.loads((results / "report" / "summary.json").read_text())
    manifest = pd.read_parquet(results / "data" / "manifest.parquet")
    metrics = json.loads((results / "model" / "metrics.json").read_text())
    scores = pd.read_parquet(results / "fusion" / "scores.parquet")
    channels = pd.read_parquet(results / "fusion" / "channels.parquet")
    localization = json.loads((results / "heatmaps" / "localization.json").read_text())
    agreement = pd.read_parquet(results / "heatmaps" / "agreement.parquet")

    data = summary["data"]
    assert data["n_images"] == len(manifest)
    assert data["per_split"] == {s: int((manifest["split"] == s).sum()) for s in ("train", "val", "test", "unlabelled")}
    assert data["score"]["mean"] == pytest.approx(manifest["y_true"].mean())
    assert data["n_rejected"] == 0

    test = summary["training"]["test"]
    for name in ("mae", "rmse", "plcc", "srcc", "krcc"):
        assert test[name]["value"] == pytest.approx(metrics["test"][name]["value"])
        assert test[name]["ci95"] == pytest.approx(metrics["test"][name]["ci95"])

    fusion = summary["fusion"]
    assert fusion["n_pairs"] == len(scores)
    assert fusion["quadrants"] == {q: int((scores["quadrant"] == q).sum()) for q in QUADRANTS}
    assert fusion["n_flipped"] == int(scores["flipped"].sum())
    best = channels.sort_values(["mean_ais_score", "channel"], ascending=[False, True]).iloc[0]
    assert fusion["top_helpful"][0]["channel"] == int(best["channel"])
    assert fusion["top_helpful"][0]["mean_ais_score"] == pytest.approx(best["mean_ais_score"])

    maps = summary["heatmaps"]
    for key in ("ais_pos_auc", "ais_neg_auc", "gradcam_auc"):
        assert maps["localization"][key] == localization[key]
    assert maps["agreement"]["n_images"] == len(agreement)
    assert maps["agreement"]["cc_gradcam"]["mean"] == pytest.approx(agreement["cc_gradcam"].mean())
    worst = agreement.loc[agreement["abs_error"].idxmax(), "image_id"]
    assert maps["gallery"]["worst"][0] == worst
    # The report's panels are the gallery figure's images (plot_gallery draws gallery_selection's).
    shown = [i for ids in maps["gallery"].values() for i in ids]
    assert shown == [i for _, i in gallery_selection(agreement, 2)]  # tiny.yaml: heatmaps.gallery 2

    stages = {s["stage"]: s for s in summary["run"]["stages"]}
    assert {"model", "ablation", "fusion", "heatmaps"} <= set(stages)
    assert stages["ablation"]["jobs"] == 2  # tiny.yaml: two shards
    assert summary["run"]["config"]["ablation"]["shards"] == 2


def test_snakemake_report(tiny_workflow: Path, tmp_path: Path):
    out = tmp_path / "report.html"  # outside the shared run: it stays a clean run
    run_snakemake(tiny_workflow, "--cores", "1", "--configfile", str(tiny_workflow / "config.yaml"),
                  "--report", str(out))
    text = out.read_text(errors="replace")
    assert out.stat().st_size > 10_000
    for name in ("training_curve.png", "top_channels.png", "gallery.png", "predicted.png", "channel_scores.png"):
        assert name in text, name


def test_report_page_in_headless_chromium(tiny_workflow: Path, tmp_path: Path):
    from browser import Browser, find_chromium

    if os.environ.get("AIS_SKIP_BROWSER"):
        pytest.skip("AIS_SKIP_BROWSER is set")
    executable = find_chromium()
    assert executable, ("chromium not found: `make test` installs it as root (tests/tools/ensure_chromium.sh); "
                        "or set AIS_CHROMIUM, or AIS_SKIP_BROWSER=1 to skip")
    page = tiny_workflow / "results" / "report" / "index.html"
    shot = tmp_path / "report-screenshot.png"
    with Browser(executable) as browser:
        browser.open(page)
        images = browser.evaluate(
            "Array.from(document.images).map(i => ({src: i.src.slice(0, 40), ok: i.complete && i.naturalWidth > 0,"
            " w: i.naturalWidth}))"
        )
        links = browser.evaluate("Array.from(document.links).map(a => a.href)")
        ids = set(browser.evaluate("Array.from(document.querySelectorAll('[id]')).map(e => e.id)"))
        title = browser.evaluate("document.title")
        browser.screenshot(shot)
    assert title == "AIS report"
    assert len(images) >= 8, images  # scores, curve, predicted, channels, crops, scale, gallery, agreement, panels
    broken = [i for i in images if not i["ok"]]
    assert not broken, broken
    assert links, "the page links its tables"
    for href in links:
        url = urlparse(href)
        if url.scheme == "file" and url.fragment and unquote(url.path) == str(page.resolve()):
            assert url.fragment in ids, href
        else:
            assert url.scheme == "file", f"{href}: the page must not depend on the network"
            assert Path(unquote(url.path)).exists(), f"{href}: broken link"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
