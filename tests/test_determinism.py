"""Determinism: the tiny workflow run twice on CPU, in two working directories, gives identical tables.

Every Parquet table under ``results/`` must be equal (pandas), the two runs
must write the same set of files, and the model files must be byte-identical
(``ais.io.safetensors_bytes`` sorts the header metadata that safetensors
would otherwise write in a per-process hash order).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import REPO, SNAKEMAKE

TINY = REPO / "tests" / "data" / "tiny.yaml"  # the config of conftest's tiny_workflow


@pytest.fixture(scope="module")
def two_runs(request, tmp_path_factory) -> tuple[Path, Path]:
    """The suite's shared tiny run (conftest ``tiny_workflow``) and a second run of the same config.

    The second run starts first, so that it overlaps with the shared one when
    this test is the first to need it.
    """
    work = tmp_path_factory.mktemp("second")
    shutil.copy(TINY, work / "config.yaml")
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "2",
           "--configfile", str(work / "config.yaml")]  # as tiny_workflow: same cores, same torch threads
    with open(work / "snakemake.out", "wb") as out:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            first = request.getfixturevalue("tiny_workflow")
        finally:
            returncode = proc.wait(timeout=1200)
    assert returncode == 0, (work / "snakemake.out").read_text()[-5000:]
    return first, work


def files(results: Path) -> set[str]:
    return {str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()}


def test_same_files(two_runs):
    a, b = (w / "results" for w in two_runs)
    assert files(a) == files(b)
    tables = {f for f in files(a) if f.endswith(".parquet")}
    # At least the tables of intake, training and ablation; later stages add theirs.
    assert {"data/manifest.parquet", "model/predictions.parquet", "ablation/shard-0.parquet",
            "ablation/shard-1.parquet"} <= tables


def test_every_parquet_table_is_identical(two_runs):
    a, b = (w / "results" for w in two_runs)
    tables = sorted(f for f in files(a) if f.endswith(".parquet"))
    for rel in tables:
        ta, tb = pq.read_table(a / rel), pq.read_table(b / rel)
        assert ta.schema.remove_metadata().equals(tb.schema.remove_metadata()), rel
        da, db = ta.to_pandas(), tb.to_pandas()
        assert da.equals(db), rel
        pd.testing.assert_frame_equal(da, db, check_exact=True, obj=rel)
        assert len(da) > 0 or rel.startswith("ablation/"), f"{rel} is empty"


def test_model_files_are_byte_identical(two_runs):
    a, b = (w / "results" / "model" for w in two_runs)
    for name in ("model.safetensors", "model.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
