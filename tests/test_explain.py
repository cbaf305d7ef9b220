"""``ais explain``: new images explained as the workflow explains unlabelled images; bad images and runs refused.

The end-to-end test runs the tiny workflow once on a sheet it writes, with
unlabelled rows and ``ablation.split: all`` (plus the ``export_onnx`` rule),
then explains the unlabelled images with ``ais explain`` and compares the
predictions and maps with the workflow's own for the same images.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, SNAKEMAKE, write_image
from PIL import Image
from torch import nn

from ais import uncertainty
from ais.ablation import naive_ablation
from ais.cli import build_parser, main
from ais.explain import Explainer, LoadedRun, channel_weights, image_row, table_schema
from ais.fusion import CHANNELS_SCHEMA
from ais.images import BadImageError, open_image
from ais.io import read_maps
from ais.methods import configured_methods, map_keys
from ais.stages import explain as explain_stage
from ais.tasks import get_task

N_LABELLED, N_UNLABELLED = 16, 4
UNLABELLED_DIR = "new"


def _snakefile(work: Path) -> Path:
    """The repository's Snakefile, with rules/export.smk included when it is not (yet) wired in."""
    main_snakefile = (REPO / "Snakefile").read_text()
    if "rules/export.smk" in main_snakefile:
        return REPO / "Snakefile"
    path = work / "Snakefile.test"
    path.write_text(f'include: "{REPO / "Snakefile"}"\ninclude: "{REPO / "rules" / "export.smk"}"\n')
    return path


@pytest.fixture(scope="module")
def sheet_run(tmp_path_factory) -> Path:
    """The tiny workflow on a written sheet: 16 labelled and 4 unlabelled images, every image ablated."""
    work = tmp_path_factory.mktemp("explain-run")
    rows = []
    for i in range(N_LABELLED + N_UNLABELLED):
        labelled = i < N_LABELLED
        rel = f"{'img' if labelled else UNLABELLED_DIR}/{'a' if labelled else 'u'}{i:02d}.png"
        write_image(work / "data" / rel, size=(40, 32), seed=i)
        rows.append({"path": rel, "score": f"{1 + 4 * (i % 7) / 6:.3f}" if labelled else ""})
    pd.DataFrame(rows).to_csv(work / "data" / "sheet.csv", index=False)
    config = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    config["data"] = {"source": "sheet", "sheet": "data/sheet.csv", "splits": {"train": 0.5, "val": 0.25, "test": 0.25}}
    config["model"]["head_dropout"] = 0.3  # Monte-Carlo dropout has something to sample
    config["uncertainty"] = {"mc_samples": 16}
    config["ablation"] = {"split": "all", "shards": 2, "batch_size": 4}
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [SNAKEMAKE, "all", "results/model/onnx.json", "--snakefile", str(_snakefile(work)), "--directory",
           str(work), "--cores", "2", "--configfile", str(work / "config.yaml")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return work


def test_explain_gives_the_workflows_predictions_and_maps_for_unlabelled_images(sheet_run: Path, tmp_path: Path):
    results = sheet_run / "results"
    out = tmp_path / "explained"
    assert main(["explain", str(sheet_run / "data" / UNLABELLED_DIR), "--run", str(results), "--out", str(out),
                 "--batch-size", "3", "--workers", "1", "--progress-bar"]) == 0  # tqdm; decoding in a worker
    table = pd.read_parquet(out / "explain.parquet")
    assert len(table) == N_UNLABELLED and (table["weights"] == "dataset").all()
    assert pd.read_csv(out / "explain.csv")["prediction"].to_numpy() == pytest.approx(table["prediction"].to_numpy())
    agreement = pd.read_parquet(results / "heatmaps" / "agreement.parquet")
    workflow = agreement[agreement["split"] == "unlabelled"].copy()
    workflow["file"] = workflow["path"].map(lambda p: Path(p).name)
    assert len(workflow) == N_UNLABELLED and (workflow["weights"] == "dataset").all()
    mine = table.assign(file=table["path"].map(lambda p: Path(p).name)).set_index("file")
    workflow = workflow.set_index("file").loc[mine.index]
    predictions = pd.read_parquet(results / "model" / "predictions.parquet").set_index("image_id")
    np.testing.assert_allclose(mine["prediction"], workflow["y_pred"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(mine["prediction"], predictions.loc[workflow["image_id"], "y_pred"], rtol=0, atol=1e-5)
    for col in [c for c in mine.columns if c.endswith("_scale") or c.startswith(("cc_", "sim_", "kld_"))]:
        np.testing.assert_allclose(mine[col], workflow[col], rtol=1e-3, atol=1e-6, err_msg=col)
    for file, rec in mine.iterrows():
        theirs = read_maps(results / "heatmaps" / f"shard-{workflow.loc[file, 'shard']}" / "maps"
                           / f"{workflow.loc[file, 'file_stem']}.npz")
        ours = read_maps(out / "maps" / f"{rec['file_stem']}.npz")
        keys = set(theirs) - {"image", "image_id"}
        expected = set(map_keys(configured_methods(()))) - {"spatial_attention"}  # VGG has no attention branch
        assert set(ours) == set(theirs) and keys == expected, keys
        np.testing.assert_array_equal(ours["image"], theirs["image"])
        for key in keys:
            np.testing.assert_allclose(ours[key], theirs[key], rtol=0, atol=2e-3, err_msg=f"{file} {key}")
        with Image.open(out / "panels" / f"{rec['file_stem']}.png") as im, \
                Image.open(results / "heatmaps" / f"shard-{workflow.loc[file, 'shard']}" / "panels"
                           / f"{workflow.loc[file, 'file_stem']}.png") as ref:
            assert im.size == ref.size
    assert {"mc_mean", "mc_std"} <= set(table.columns) and (table["mc_std"] > 0).all()


def test_the_export_rule_ran_with_parity(sheet_run: Path):
    from ais.provenance import file_hash

    model = sheet_run / "results" / "model"
    summary = json.loads((model / "onnx.json").read_text())
    assert summary["parity"]["max_abs_difference"] <= 1e-4 and summary["opset"] == 18
    assert summary["onnx"]["sha256"] == file_hash(model / "model.onnx")
    assert summary["int8"]["sha256"] == file_hash(model / "model.int8.onnx")
    assert set(summary["int8"]["metrics"]) >= {"mae", "srcc"}
    assert (sheet_run / "results" / "logs" / "export" / "export_onnx.log").exists()


def test_a_broken_image_gives_intakes_message_and_exit_2(sheet_run: Path, tmp_path: Path, capsys):
    good = write_image(tmp_path / "good.png", seed=3)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(BadImageError) as intake:
        open_image(broken)
    code = main(["explain", str(good), str(broken), "--run", str(sheet_run / "results"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and str(intake.value) in err and "1 bad image(s)" in err
    assert not (tmp_path / "o").exists()  # refused before any compute


def test_a_missing_or_unfinished_run_gives_what_is_missing_and_exit_2(sheet_run: Path, tmp_path: Path, capsys):
    image = write_image(tmp_path / "a.png")
    assert main(["explain", str(image), "--run", str(tmp_path / "nowhere")]) == 2
    assert "not a finished AIS run (no such folder)" in capsys.readouterr().err
    partial = tmp_path / "partial"
    shutil.copytree(sheet_run / "results" / "model", partial / "model")
    assert main(["explain", str(image), "--run", str(partial)]) == 2
    assert "missing fusion/channels.parquet, report/summary.json" in capsys.readouterr().err


def test_a_run_of_another_version_is_refused(sheet_run: Path, tmp_path: Path):
    import pyarrow.parquet as pq

    copy = tmp_path / "results"
    shutil.copytree(sheet_run / "results", copy, ignore=shutil.ignore_patterns("heatmaps", "logs", "benchmarks"))
    path = copy / "fusion" / "channels.parquet"
    table = pq.read_table(path)
    meta = dict(table.schema.metadata)
    prov = json.loads(meta[b"provenance"])
    prov["versions"]["ais"] = "0.0.1"
    meta[b"provenance"] = json.dumps(prov).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    with pytest.raises(explain_stage.RunError, match="written by ais 0.0.1"):
        explain_stage.load_run(copy, "cpu")


def test_the_console_script_documents_every_option():
    script = Path(sys.executable).with_name("ais")
    top = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "explain" in top.stdout
    sub = subprocess.run([sys.executable, "-m", "ais", "explain", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert sub.returncode == 0
    explain = next(a for a in build_parser()._actions if a.dest == "command").choices["explain"]
    for action in explain._actions:
        assert all(opt in sub.stdout for opt in action.option_strings), action.option_strings
        assert action.help, action.dest
    assert "ais explain photos/" in sub.stdout


# --------------------------------------------------------------------------- the library on hand-made runs


class _Net(nn.Module):
    """conv -> ReLU -> mean pool -> dropout -> Linear(4, K)."""

    def __init__(self, k: int = 1, p: float = 0.5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(4, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3))))


def _channels(n: int = 4) -> pd.DataFrame:
    ais = np.array([0.5, -1.0, 2.0, 0.0])[:n]
    frame = pd.DataFrame({f.name: np.zeros(n) for f in CHANNELS_SCHEMA})
    return frame.assign(channel=np.arange(n, dtype=np.int32), mean_ais_score=ais, mean_direction=9.0)


def _run(task_name: str = "regression", k: int = 1, task=None, class_names=()) -> LoadedRun:
    from ais.config import validate_config
    from ais.families import Family

    config = validate_config({"data": {"source": "demo"}})
    model = _Net(k).eval()
    return LoadedRun(model, {"arch": "toy", "input_size": 8}, Family(), "conv", 4, task or get_task(task_name),
                     _channels(), config, torch.device("cpu"), class_names)


def test_channel_weights_are_the_images_own_minus_dy_and_the_data_set_ais():
    run = _run()
    x = torch.rand(3, 3, 8, 8)
    y, y_abl = naive_ablation(run.model, "conv", x)  # the oracle: zero each channel's weights
    ais, direction = channel_weights(run, ["a", "b", "c"], y, y_abl)
    np.testing.assert_allclose(direction, -(y_abl - y[:, None]).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ais, np.tile([0.5, -1.0, 2.0, 0.0], (3, 1)).astype(np.float32))
    with Explainer(run) as explainer:
        batch = explainer.explain(x, ["a", "b", "c"])
    np.testing.assert_allclose(batch.direction_weights, direction, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batch.prediction, run.model(x)[:, 0].detach().numpy(), rtol=0, atol=1e-6)
    assert batch.mc == {} and not set(table_schema(run, False).names) & {"mc_mean", "mc_std"}


def test_monte_carlo_columns_are_the_uncertainty_modules_samples():
    run = _run()
    x = torch.rand(5, 3, 8, 8)
    with Explainer(run, mc_samples=50, seed=7) as explainer:
        first = explainer.explain(x[:3], list("abc"))
        second = explainer.explain(x[3:], list("de"))
    for batch, xb, seed in ((first, x[:3], 7), (second, x[3:], 8)):  # batch b: seed + b
        ref = uncertainty.mc_full_passes(run.model, xb, 50, seed)[..., 0].numpy()
        np.testing.assert_allclose(batch.mc["mc_mean"], ref.mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(batch.mc["mc_std"], ref.std(0), rtol=0, atol=1e-6)
    assert {"mc_mean", "mc_std"} <= set(table_schema(run, True).names)
    row = image_row(second, 1, ())
    assert row["mc_std"] == pytest.approx(float(second.mc["mc_std"][1])) and row["weights"] == "dataset"


class _ToyClassifier:
    """A three-class task as far as explaining needs: predictions, probabilities, target, error."""

    name = "toy_classes"
    n_outputs = 3
    class_names = ("real", "gan", "diffusion")

    def predictions(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=1)[:, 0]

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        return torch.softmax(output, dim=1)

    def target(self):
        from ais.targets import ClassLogitTarget

        return ClassLogitTarget(0)

    def error(self, y_pred: np.ndarray, y_true: np.ndarray) -> np.ndarray:
        return np.abs(y_pred - y_true)


def test_a_classifier_gets_class_probabilities_and_their_uncertainty():
    task = _ToyClassifier()
    run = _run(k=3, task=task, class_names=task.class_names)
    x = torch.rand(4, 3, 8, 8)
    with Explainer(run, mc_samples=20, seed=0) as explainer:
        batch = explainer.explain(x, list("abcd"))
    p = torch.softmax(run.model(x), dim=1).detach().numpy()
    np.testing.assert_allclose(batch.probabilities, p, rtol=0, atol=1e-6)
    row = image_row(batch, 2, task.class_names)
    assert row["predicted_class"] == task.class_names[int(np.argmax(p[2]))]
    assert row["confidence"] == pytest.approx(float(p[2].max()))
    assert sum(row[f"p_{c}"] for c in task.class_names) == pytest.approx(1.0)
    assert sum(row[f"mc_p_{c}"] for c in task.class_names) == pytest.approx(1.0)
    assert row["mc_entropy"] >= row["mc_mutual_information"] >= 0
    names = table_schema(run, True).names
    assert {"predicted_class", "confidence", "p_gan", "mc_entropy", "mc_p_diffusion"} <= set(names)
