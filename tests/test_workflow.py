"""End-to-end: the real workflow on a tiny configuration in a temporary directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest

from ais.tables import ABLATION_SCHEMA
from conftest import REPO, run_snakemake

TINY = REPO / "tests" / "data" / "tiny.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("tiny")
    shutil.copy(TINY, work / "config.yaml")
    run_snakemake(work, "--cores", "2", "--configfile", str(work / "config.yaml"))
    return work


def test_outputs_exist_and_agree(tiny_run: Path):
    results = tiny_run / "results"
    manifest = pd.read_parquet(results / "data" / "manifest.parquet")
    assert len(manifest) == 24 and set(manifest["split"]) == {"train", "val", "test"}
    metrics = json.loads((results / "model" / "metrics.json").read_text())
    assert metrics["test"]["n"] == (manifest["split"] == "test").sum()
    shards = ds.dataset([str(results / "ablation" / f"shard-{i}.parquet") for i in range(2)], format="parquet")
    table = shards.to_table()
    assert table.schema.remove_metadata().equals(ABLATION_SCHEMA)
    test_ids = sorted(manifest.loc[manifest["split"] == "test", "image_id"])
    df = table.to_pandas()
    assert sorted(df["image_id"].unique()) == test_ids
    spec = json.loads((results / "model" / "model.json").read_text())
    assert (df.groupby("image_id")["channel"].nunique() == spec["target_channels"]).all()
    for log in ["data/manifest.log", "model/finetune_model.log", "ablation/shard-0.log"]:
        assert (results / "logs" / log).stat().st_size > 0, log


def test_nothing_reruns_when_nothing_changed(tiny_run: Path):
    proc = run_snakemake(tiny_run, "-n", "--cores", "2", "--configfile", str(tiny_run / "config.yaml"))
    assert "Nothing to be done" in proc.stdout + proc.stderr
