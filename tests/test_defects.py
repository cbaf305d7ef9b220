"""Issue 18: one test (or a few) per defect found by independent runs on hostile and real data.

Each test states the right behaviour; each fails on the code before the fix
(noted per test: what the old code did).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS

import pandas as pd
import pytest
import yaml

from ais.config import (
    IMAGES_PER_SHARD, ConfigError, ablated_images, auto_shards, check_target_layer, count_sheet_rows,
    resolve_shards, validate_config,
)
from ais.data import SheetSpec, build_manifest, file_stem
from ais.io import read_metadata
from ais.stages import _heatmap_files as hf
from ais.stages import intake_sheet, job
from conftest import REPO, run_snakemake, write_image

SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}


def sheet_of(tmp: Path, rows: list[dict], name: str = "sheet.csv") -> Path:
    path = tmp / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- 1. plain decimal scores only


def test_scores_are_plain_decimal_notation_only(tmp_path: Path):
    """Old: ``float()`` took ``4_5`` as 45.0 and full-width / Arabic-Indic digits as numbers."""
    accepted = {"4.5": 4.5, "-3": -3.0, "+2": 2.0, ".5": 0.5, "5.": 5.0, "1e-3": 1e-3, " 2.5E+1 ": 25.0}
    refused = ["4_5", "４５", "٣", "1_000.5", "0x10", "1e", "--1", "4.5.1", "½"]
    rows = []
    for k, text in enumerate([*accepted, *refused]):
        write_image(tmp_path / f"s{k}.png", seed=k)
        rows.append({"path": f"s{k}.png", "score": text})
    manifest, rejected = build_manifest(SheetSpec(sheet=str(sheet_of(tmp_path, rows))), SPLITS, 0, "skip")
    got = dict(zip(manifest["sheet_row"], manifest["y_true"]))
    assert got == {k + 1: v for k, v in enumerate(accepted.values())}
    assert rejected["sheet_row"].tolist() == list(range(len(accepted) + 1, len(rows) + 1))
    assert set(rejected["column"]) == {"score"}
    assert rejected["reason"].str.contains("not a number in plain decimal notation").all()


# --------------------------------------------------------------------------- 2. one file under two paths


def test_the_same_file_under_two_paths_is_refused(tmp_path: Path):
    """Old: ``imgs/sub/../a.png`` (id ``imgs__sub__..__a``) and a link to ``imgs/a.png`` were separate images."""
    write_image(tmp_path / "imgs" / "a.png", seed=1)
    write_image(tmp_path / "imgs" / "b.png", seed=2)
    (tmp_path / "imgs" / "sub").mkdir()
    os.symlink(tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "link.png")
    os.link(tmp_path / "imgs" / "b.png", tmp_path / "imgs" / "hard.png")
    rows = [{"path": p, "score": "3"} for p in
            ["imgs/a.png", "imgs/b.png", "imgs/sub/../a.png", "imgs/link.png", "imgs/hard.png"]]
    manifest, rejected = build_manifest(SheetSpec(sheet=str(sheet_of(tmp_path, rows))), SPLITS, 0, "skip")
    assert sorted(manifest["image_id"]) == ["a", "b"]
    reasons = dict(zip(rejected["sheet_row"], rejected["reason"]))
    assert sorted(reasons) == [3, 4, 5]
    assert "duplicate image id 'a' (first on row 1)" in reasons[3]
    assert reasons[4].startswith("same file as row 1 ") and "each image must appear once" in reasons[4]
    assert reasons[5].startswith("same file as row 2 ")


# --------------------------------------------------------------------------- 3. ids that differ by case


def test_ids_differing_only_by_case_get_stems_that_differ_without_case():
    """Old: ``Cat.png`` and ``cat.png`` had the stems ``Cat.png`` and ``cat.png``: one file on macOS/Windows."""
    ids = ["Cat.png", "cat.png", "CAT.png", "dog"]
    stems = hf.image_stems(ids)
    assert len({s.casefold() for s in stems}) == len(ids)
    assert file_stem("cat.png") == "cat.png" and file_stem("dog") == "dog"  # lower-case ids are kept
    assert file_stem("Cat.png").startswith("Cat.png__")
    # A crafted id that equals another's stem up to case is still caught before any file is written.
    with pytest.raises(ValueError, match="case-insensitive file system"):
        hf.image_stems(["Cat", file_stem("Cat").lower()])


def test_case_variants_write_separate_files_on_a_case_folding_folder(tmp_path: Path):
    """The stems, used as file names in one folder, never fold onto each other."""
    folder = tmp_path / "maps"
    folder.mkdir()
    written: dict[str, str] = {}
    for image_id, stem in zip(["A", "a", "Ab", "aB", "ab"], hf.image_stems(["A", "a", "Ab", "aB", "ab"])):
        key = hf.output_file(folder, stem, ".npz").name.casefold()  # what a case-insensitive file system sees
        assert key not in written, (image_id, written.get(key))
        written[key] = image_id


# --------------------------------------------------------------------------- 4. nested values as text


def test_text_values_are_read_as_yaml_where_the_schema_wants_more():
    """Old: ``--config ablation='{shards: 4}'`` failed with "'4' is not of type 'integer'"."""
    cfg = validate_config({"ablation": {"shards": "4", "channel_batch": "16", "batch_size": "2"},
                           "model": {"input_size": "64", "weights": "none", "target_layer": "auto"},
                           "train": {"augment": "false", "lr": "1e-3"}, "heatmaps": {"views": ["ais", "gradcam"]},
                           "data": {"splits": {"train": "0.5", "val": "0.25", "test": "0.25"}}})
    assert cfg["ablation"] == {**cfg["ablation"], "shards": 4, "channel_batch": 16, "batch_size": 2}
    assert cfg["model"]["input_size"] == 64 and cfg["train"]["augment"] is False and cfg["train"]["lr"] == 1e-3
    assert cfg["model"]["weights"] == "none" and cfg["ablation"]["split"] == "test"
    assert validate_config({"ablation": {"channel_batch": "auto", "shards": "auto"}})["ablation"]["shards"] == "auto"
    # The range error is what the user sees, not the type.
    with pytest.raises(ConfigError) as err:
        validate_config({"ablation": {"shards": "0"}, "model": {"input_size": "16"}})
    msg = str(err.value)
    assert "key 'ablation.shards'" in msg and "key 'model.input_size'" in msg
    assert "less than the minimum of 32" in msg and "is not of type" not in msg
    with pytest.raises(ConfigError, match=r"key 'train.augment': 'maybe' is not of type 'boolean'"):
        validate_config({"train": {"augment": "maybe"}})


def dry_run_jobs(work: Path, *args: str) -> dict[str, int]:
    """``snakemake -n`` of the tiny configuration: the job count per rule."""
    shutil.copy(REPO / "tests" / "data" / "tiny.yaml", work / "config.yaml")
    proc = run_snakemake(work, "-n", "--configfile", str(work / "config.yaml"), *args)
    table = (proc.stdout + proc.stderr).split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_command_line_nested_config_reaches_the_dag(tmp_path: Path):
    jobs = dry_run_jobs(tmp_path, "--cores", "1", "--config", "ablation={shards: 3, batch_size: 2}",
                        "train={augment: false}")
    assert jobs["ablate_shard"] == 3 and jobs["compute_heatmaps"] == 3


# --------------------------------------------------------------------------- 5. target layer checked at parse time


def test_target_layer_is_resolved_against_the_architecture(tmp_path: Path, monkeypatch):
    """Old: a missing or non-conv layer passed the config check; ablation failed after training."""
    def cfg(layer: str, arch: str = "vgg11") -> dict:
        return validate_config({"model": {"arch": arch, "head": "gap", "target_layer": layer}})

    with pytest.raises(ConfigError, match=r"key 'model.target_layer': .*'features.99' does not exist.*"
                                          r"features.0, features.3, features.6"):
        check_target_layer(cfg("features.99"))
    with pytest.raises(ConfigError, match=r"'features.1' is a ReLU, not an explainable layer"):
        check_target_layer(cfg("features.1"))
    check_target_layer(cfg("features.3"))
    check_target_layer(cfg("auto"))
    # A name found valid is cached with the code's state: the model is not built again.
    cache = tmp_path / "cache.json"
    check_target_layer(cfg("features.6"), cache=cache)
    import ais.families

    monkeypatch.setattr(ais.families, "family_for", lambda arch: pytest.fail("built again"))
    check_target_layer(cfg("features.6"), cache=cache)
    with pytest.raises(pytest.fail.Exception):
        check_target_layer(cfg("features.8"), cache=cache)


def test_workflow_refuses_a_bad_target_layer_before_running(tmp_path: Path):
    shutil.copy(REPO / "tests" / "data" / "tiny.yaml", tmp_path / "config.yaml")
    proc = run_snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "config.yaml"),
                         "--config", "model={arch: vgg11, head: gap, target_layer: classifier.0}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Invalid configuration (nothing was run)" in out
    assert "model.target_layer='classifier.0' is a Linear" in out and "features.18" in out
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- 6. data.sheet with the demo


def test_a_sheet_with_the_demo_source_is_refused():
    """Old: ``data.sheet`` was silently ignored when ``data.source`` was ``demo``."""
    with pytest.raises(ConfigError) as err:
        validate_config({"data": {"source": "demo", "sheet": "my_images.csv"}})
    assert "key 'data.sheet'" in str(err.value) and "key 'data.source' is 'demo'" in str(err.value)
    assert validate_config({"data": {"source": "demo", "sheet": None}})["data"]["sheet"] is None


# --------------------------------------------------------------------------- 7. a split column without val


def split_sheet(tmp: Path, splits: list[str]) -> Path:
    rows = []
    for i, split in enumerate(splits):
        write_image(tmp / "photos" / f"p{i:02d}.png", seed=i)
        rows.append({"path": f"photos/p{i:02d}.png", "score": f"{1 + i % 5}", "split": split})
    return sheet_of(tmp, rows)


def test_a_split_column_without_val_gets_a_seeded_val_part_of_train(tmp_path: Path):
    """Old: accepted, then training failed with "no labelled val images ... (data.splits.val > 0)"."""
    sheet = split_sheet(tmp_path, ["train"] * 14 + ["test"] * 6)
    spec = SheetSpec(sheet=str(sheet), split_column="split")
    m1, _ = build_manifest(spec, SPLITS, seed=3)
    m2, _ = build_manifest(spec, SPLITS, seed=3)
    m3, _ = build_manifest(spec, SPLITS, seed=4)
    assert m1["split"].value_counts().to_dict() == {"train": 11, "val": 3, "test": 6}  # round(0.15 * 20) = 3
    assert m1.equals(m2) and not m1["split"].equals(m3["split"])
    was = dict(zip(m1["sheet_row"], ["train"] * 14 + ["test"] * 6))
    assert all(was[r] == "train" for r in m1.loc[m1["split"] == "val", "sheet_row"])  # carved out of train only
    assert m1.loc[m1["split"] == "test", "sheet_row"].tolist() == list(range(15, 21))
    assert "3 of the 14 train rows became val" in m1.attrs["split_notes"][0]
    # data.splits.val sets its size; 0 carves nothing (training then says data.splits.val > 0).
    assert (build_manifest(spec, {"train": 0.6, "val": 0.3, "test": 0.1}, 3)[0]["split"] == "val").sum() == 6
    m0, _ = build_manifest(spec, {"train": 0.85, "val": 0.0, "test": 0.15}, 3)
    assert "val" not in set(m0["split"]) and m0.attrs["split_notes"] == []


def test_blank_split_cells_are_assigned(tmp_path: Path):
    """Old: a blank split cell of a scored row was refused ("split '' is not one of train, val, test")."""
    sheet = split_sheet(tmp_path, ["train"] * 6 + ["val", "test"] + [""] * 12)
    manifest, rejected = build_manifest(SheetSpec(sheet=str(sheet), split_column="split"), SPLITS, seed=0)
    assert rejected.empty
    blank = manifest[manifest["sheet_row"] > 8]
    assert blank["split"].value_counts().to_dict() == {"train": 8, "val": 2, "test": 2}  # data.splits of 12
    assert manifest.loc[manifest["sheet_row"] <= 8, "split"].tolist() == ["train"] * 6 + ["val", "test"]
    assert manifest.attrs["split_notes"] == [
        "12 labelled row(s) with an empty 'split' cell were assigned by the seeded split (data.splits)"]


def test_the_intake_stage_logs_and_records_the_carved_val(tmp_path: Path, caplog):
    sheet = split_sheet(tmp_path, ["train"] * 14 + ["test"] * 6)
    data = validate_config({"data": {"source": "sheet", "sheet": str(sheet), "split_column": "split"}})["data"]
    with caplog.at_level(logging.INFO, logger="ais.stages.intake_sheet"):
        intake_sheet.run(data, 0, tmp_path / "m.parquet", tmp_path / "r.csv")
    notes = read_metadata(tmp_path / "m.parquet")["split_notes"]
    assert len(notes) == 1 and "train rows became val" in notes[0]
    assert f"intake: {notes[0]}" in caplog.text


def test_a_failing_rule_writes_its_error_to_its_own_log(tmp_path: Path):
    """A rule that fails under snakemake (training: one train image) has its error in its own log."""
    sheet = split_sheet(tmp_path, ["train", "val", "test"])
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg["data"] = {"source": "sheet", "sheet": str(sheet), "split_column": "split"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = run_snakemake(tmp_path, "results/model/metrics.json", "--cores", "1", "--configfile",
                         str(tmp_path / "config.yaml"), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Error in rule finetune_model" in out
    log = (tmp_path / "results" / "logs" / "model" / "finetune_model.log").read_text()
    why = "1 labelled train image(s); training needs at least 2"
    assert f"ERROR ais.stages: results/data/manifest.parquet: {why}" in log and why in out


# --------------------------------------------------------------------------- 8. ids without shared folders


def test_derived_ids_leave_out_the_folders_every_row_shares(tmp_path: Path):
    """Old: ``dataset/images/test_images/f351.png`` became ``dataset__images__test_images__f351``."""
    rows = []
    for i, rel in enumerate(["dataset/images/test_images/f351.png", "dataset/images/train_images/f1.png",
                             "dataset/images/train_images/deep/f2.png"]):
        write_image(tmp_path / rel, seed=i)
        rows.append({"path": rel, "score": "2"})
    manifest, _ = build_manifest(SheetSpec(sheet=str(sheet_of(tmp_path, rows))), SPLITS, 0)
    assert sorted(manifest["image_id"]) == ["test_images__f351", "train_images__deep__f2", "train_images__f1"]
    # One folder for all: the file names alone; a row outside it keeps every id's folders.
    write_image(tmp_path / "top.png", seed=9)
    only = build_manifest(SheetSpec(sheet=str(sheet_of(tmp_path, rows[1:2] + rows[2:], "b.csv"))), SPLITS, 0)[0]
    assert sorted(only["image_id"]) == ["deep__f2", "f1"]
    mixed = build_manifest(SheetSpec(sheet=str(sheet_of(tmp_path, rows[:1] + [{"path": "top.png", "score": "1"}],
                                                        "c.csv"))), SPLITS, 0)[0]
    assert sorted(mixed["image_id"]) == ["dataset__images__test_images__f351", "top"]


# --------------------------------------------------------------------------- 9. ablation.shards: auto


def test_auto_shards_follow_the_images_and_the_workers(tmp_path: Path):
    """Old: only a fixed number (8 by default): 8 jobs for 90 images on 2 cores, each mostly start-up."""
    assert IMAGES_PER_SHARD == 64
    assert [auto_shards(n, 2) for n in (0, 1, 64, 65, 90, 10_000)] == [1, 1, 1, 2, 2, 2]
    assert [auto_shards(n, 16) for n in (90, 640, 641, 100_000)] == [2, 10, 11, 16]
    demo = validate_config({})
    assert demo["ablation"]["shards"] == "auto"
    assert ablated_images(demo) == 90  # 600 demo images, 15 % test
    assert resolve_shards(demo, cores=2, gpus=None) == 2 and resolve_shards(demo, cores=8, gpus=1) == 1
    assert resolve_shards(validate_config({"ablation": {"shards": 5}}), cores=1, gpus=None) == 5
    sheet = tmp_path / "s.csv"
    sheet.write_text("path,score\n" + "".join(f"i{i}.png,1\n\n" for i in range(1000)))
    cfg = validate_config({"data": {"source": "sheet", "sheet": str(sheet)}, "ablation": {"split": "all"}})
    assert count_sheet_rows(sheet) == 1000 and resolve_shards(cfg, 4, None, count_sheet_rows(sheet)) == 4
    pd.DataFrame({"path": [f"{i}.png" for i in range(70)]}).to_parquet(tmp_path / "s.parquet")
    assert count_sheet_rows(tmp_path / "s.parquet") == 70 and count_sheet_rows(tmp_path / "missing.csv") == 0


def test_auto_shards_in_the_dag(tmp_path: Path):
    """The tiny run (24 images, 25 % test) on 4 cores: one shard; a fixed number stays as given."""
    auto = tmp_path / "auto"
    auto.mkdir()
    assert dry_run_jobs(auto, "--cores", "4", "--config", "ablation={shards: auto}")["ablate_shard"] == 1
    demo = tmp_path / "demo"
    demo.mkdir()
    jobs = dry_run_jobs(demo, "--cores", "2", "--config", "ablation={shards: auto}", "demo={n_images: 1000}",
                        "data={splits: {train: 0.5, val: 0.25, test: 0.25}}")
    assert jobs["ablate_shard"] == 2  # 250 test images, 2 cores


def test_dag_benchmark_runs_with_auto_shards():
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else "python",
                           str(REPO / "benchmarks" / "dag.py"), "--images", "300", "--shards", "auto",
                           "--repeats", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shards"] == "auto" and result["jobs_per_rule"]["ablate_shard"] == 1  # 45 test images


# --------------------------------------------------------------------------- 10. results ignored by git


def test_every_job_makes_its_results_folder_ignored_by_git(tmp_path: Path):
    """Old: a ``results:`` folder outside ``results/`` was swept in by ``git add -A``."""
    out = tmp_path / "clone" / "runs" / "exp1"
    smk = NS(log=[], threads=1, rule="demo_rule", config={"results": str(out)})
    with job(smk):
        (out / "data").mkdir(parents=True)
        (out / "data" / "manifest.parquet").write_bytes(b"x")
    assert (out / ".gitignore").read_text() == "*\n"
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    clone = tmp_path / "clone"
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    (clone / "code.py").write_text("x = 1\n")
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--untracked-files=all"],
                            capture_output=True, text=True, check=True).stdout
    assert status.split() == ["??", "code.py"]


# --------------------------------------------------------------------------- progress inside long steps


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_progress_lines_every_30_s_with_rate_and_eta(monkeypatch, caplog):
    from ais import logs

    monkeypatch.setattr(logs.time, "perf_counter", FakeClock(11.0))  # each call: 11 s later
    log = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        p = logs.Progress(10, "images", log, every=30.0)
        for done in range(1, 11):
            p.update(done)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("images 1/10, ") and lines[-1].startswith("images 10/10, ")
    assert all(re.search(r"\d+/10, [\d.]+/s, elapsed \d+ s, ETA \d+ s$", line) for line in lines)
    assert 3 <= len(lines) <= 5  # 110 s of work: about one line per 30 s, not one per item
    caplog.clear()
    monkeypatch.setattr(logs.time, "perf_counter", FakeClock(1.0))
    with caplog.at_level(logging.INFO, logger="test.progress"):
        quiet = logs.Progress(10, "validation: images", log, every=30.0, start_after=30.0)
        for done in range(1, 11):
            quiet.update(done)
    assert caplog.records == []  # a short validation says nothing; the epoch's line follows


def test_ablation_progress_is_paced_not_per_batch(monkeypatch, caplog):
    """Old: a line per batch (``every=0``): thousands of lines on a large shard."""
    import torch

    from ais import logs
    from ais.ablation.table import ablate_batches

    monkeypatch.setattr(logs.time, "perf_counter", FakeClock(2.0))
    class Engine:
        n_channels, layer_name, device, path = 3, "features.0", "cpu", "generic"

        def __call__(self, x):
            return torch.zeros(len(x)), torch.zeros(len(x), 3)

    batches = [(torch.zeros(2, 3, 4, 4), [f"i{b}{j}" for j in range(2)], [1.0, 2.0]) for b in range(50)]
    with caplog.at_level(logging.INFO, logger="ais.ablation.table"):
        table = ablate_batches(Engine(), batches, 100)
    assert table.num_rows == 300
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("images ")]
    assert lines[-1].startswith("images 100/100") and 2 <= len(lines) <= 8


def test_a_long_validation_logs_its_progress(monkeypatch, caplog):
    """Old: a validation pass logged nothing until the epoch's line (minutes on real photographs)."""
    import torch

    from ais import logs, training

    class Images:
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):
            return torch.full((3, 4, 4), float(i)), 0.0, i

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 1))
    setup = NS(model=model, device=torch.device("cpu"), amp=None, batch_size=3, task=NS(n_outputs=1), workers=0)
    monkeypatch.setattr(logs.time, "perf_counter", FakeClock(31.0))  # every batch takes 31 s
    with caplog.at_level(logging.INFO, logger="ais.training"):
        out = training._raw_outputs(setup, Images())
    assert out.shape == (10,)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("validation: images ")]
    assert [line.split(",")[0] for line in lines] == [f"validation: images {n}/10" for n in (3, 6, 9, 10)]
    assert all("ETA" in line for line in lines)
