"""Killed jobs: the workflow SIGKILLed in mid-training and in mid-ablation resumes to the uninterrupted result.

The tiny configuration, with more epochs (so that training is caught
half-way) and an earlier target layer (so that a shard takes a few seconds),
runs once uninterrupted and once killed twice: after the first epoch of
``finetune_model`` (its resume state is on disk), then while the
``ablate_shard`` jobs run. ``snakemake --unlock`` and ``--rerun-incomplete``
then finish it. Weights, predictions, metrics and shards must equal those of
the uninterrupted run, and no temporary or partial file may remain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ais import io
from ais.tables import ABLATION_SCHEMA, PREDICTIONS_SCHEMA
from conftest import REPO, SNAKEMAKE, run_snakemake

EPOCHS = 6
TARGETS = ["results/model/metrics.json", "results/ablation/shard-0.parquet", "results/ablation/shard-1.parquet"]
SHARD_LOGS = ["results/logs/ablation/shard-0.log", "results/logs/ablation/shard-1.log"]
TIMING_KEYS = {"seconds", "train_seconds"}  # wall-clock figures, the only values allowed to differ


def kill_config(work: Path) -> Path:
    cfg = yaml.safe_load((REPO / "tests" / "data" / "tiny.yaml").read_text())
    cfg["train"]["epochs"] = EPOCHS
    cfg["model"]["target_layer"] = "features.11"  # 'tail' path: a shard of 3 images takes seconds, not 0.1 s
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_snakemake(work: Path, *args: str) -> subprocess.Popen:
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(work), *TARGETS, "--cores", "2",
           "--configfile", str(work / "config.yaml"), *args]
    with open(work / "snakemake.out", "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def kill_tree(proc: subprocess.Popen) -> list[str]:
    """SIGKILL snakemake's process group and every descendant; return the descendants' command lines."""
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    names = []
    for p in family:
        try:
            names.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    os.killpg(proc.pid, signal.SIGKILL)
    for p in family:  # in case a job left the group
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=30)
    gone, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive
    return names


def log_text(work: Path, rel: str) -> str:
    path = work / rel
    return path.read_text() if path.exists() else ""


def temporaries(results: Path) -> list[Path]:
    return [p for p in results.rglob("*") if ".tmp." in p.name or p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("uninterrupted")
    run_snakemake(work, *TARGETS, "--cores", "2", "--configfile", str(kill_config(work)))
    return work


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("killed")
    kill_config(work)
    results = work / "results"
    seen: dict = {}

    # 1. SIGKILL everything once the first epoch is logged (its resume state is written before the log line).
    proc = start_snakemake(work)
    state = results / "model" / "resume" / "state.pt"
    wait_until(proc, lambda: f"epoch 1/{EPOCHS} " in log_text(work, "results/logs/model/finetune_model.log"),
               "the end of epoch 1")
    seen["finetune_killed"] = kill_tree(proc)
    seen["state_epoch"] = torch.load(state, weights_only=True)["epoch"]
    seen["finetune_log_at_kill"] = log_text(work, "results/logs/model/finetune_model.log")
    seen["model_files_at_kill"] = sorted(p.name for p in (results / "model").iterdir())

    # 2. Rerun; SIGKILL everything while the ablation shards run.
    run_snakemake(work, "--unlock", "--configfile", str(work / "config.yaml"))
    proc = start_snakemake(work, "--rerun-incomplete")
    wait_until(proc, lambda: any("ablating" in log_text(work, s) for s in SHARD_LOGS), "an ablate_shard job")
    seen["shard_killed"] = kill_tree(proc)
    seen["shards_at_kill"] = [(work / t).exists() for t in TARGETS[1:]]
    seen["metrics_at_kill"] = (results / "model" / "metrics.json").exists()

    # 3. Rerun to the end.
    run_snakemake(work, "--unlock", "--configfile", str(work / "config.yaml"))
    proc = run_snakemake(work, *TARGETS, "--cores", "2", "--configfile", str(work / "config.yaml"),
                         "--rerun-incomplete")
    seen["last_run"] = proc.stdout + proc.stderr
    seen["work"] = work
    return seen


def test_finetune_was_killed_mid_training(killed):
    assert any("finetune_model" in c for c in killed["finetune_killed"]), killed["finetune_killed"]
    assert 1 <= killed["state_epoch"] < EPOCHS
    assert f"epoch 1/{EPOCHS}" in killed["finetune_log_at_kill"]
    assert "best epoch" not in killed["finetune_log_at_kill"]
    # No output of the killed job exists, only its resume state (outside the declared outputs).
    assert killed["model_files_at_kill"] == ["resume"]


def test_training_resumed_after_the_last_finished_epoch(killed):
    log = (killed["work"] / "results" / "logs" / "model" / "finetune_model.log").read_text()
    resumed = log.split("resuming from", 1)
    assert len(resumed) == 2, log
    assert f"after epoch {killed['state_epoch']}/{EPOCHS}" in resumed[1].splitlines()[0]
    assert f"epoch 1/{EPOCHS} " not in resumed[1]  # finished epochs are not redone
    assert f"epoch {EPOCHS}/{EPOCHS} " in resumed[1]
    assert not (killed["work"] / "results" / "model" / "resume").exists()  # removed after success


def test_shard_was_killed_mid_way(killed):
    assert killed["metrics_at_kill"]
    assert any("ablate_shard" in c for c in killed["shard_killed"]), killed["shard_killed"]
    assert not all(killed["shards_at_kill"])


def test_results_equal_the_uninterrupted_run(killed, uninterrupted):
    a, b = uninterrupted / "results", killed["work"] / "results"
    wa, wb = load_file(a / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()
    for table in ["model/predictions.parquet", "ablation/shard-0.parquet", "ablation/shard-1.parquet"]:
        pd.testing.assert_frame_equal(pd.read_parquet(a / table), pd.read_parquet(b / table), check_exact=True)
    ma, mb = (json.loads((r / "model" / "metrics.json").read_text()) for r in (a, b))
    assert {k: v for k, v in ma.items() if k not in TIMING_KEYS} == {k: v for k, v in mb.items() if k not in TIMING_KEYS}
    assert json.loads((a / "model" / "model.json").read_text()) == json.loads((b / "model" / "model.json").read_text())
    ha, hb = (pd.read_csv(r / "model" / "history.csv").drop(columns="seconds") for r in (a, b))
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)


def test_no_partial_or_temporary_file_remains(killed):
    results = killed["work"] / "results"
    assert temporaries(results) == []
    assert pq.read_schema(results / "model" / "predictions.parquet").remove_metadata().equals(PREDICTIONS_SCHEMA)
    for shard in TARGETS[1:]:
        schema = pq.read_schema(killed["work"] / shard)
        assert schema.remove_metadata().equals(ABLATION_SCHEMA)
        assert pq.read_table(killed["work"] / shard).num_rows == 3 * 512  # 3 test images x 512 channels
    # Snakemake has no job left marked incomplete: a dry run has nothing to do.
    proc = run_snakemake(killed["work"], *TARGETS, "-n", "--configfile", str(killed["work"] / "config.yaml"))
    assert "Nothing to be done" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# The temporaries of a writer killed mid-write


KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from ais import io
    with io.atomic_path(sys.argv[1]) as tmp:
        tmp.write_bytes(b"half of a file")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_writer_killed_mid_write_leaves_no_file_and_its_temporary_is_swept(tmp_path):
    target = tmp_path / "out" / "table.parquet"
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not target.exists()  # never a partial file under the final name
    left = [p.name for p in target.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".table.parquet.tmp.")

    # A temporary of a live writer and one in another format are kept.
    live = target.parent / f"{io.temp_prefix(target)}livewrtr.parquet"
    live.write_bytes(b"")
    other = target.parent / ".table.parquet.tmp.abcdefgh.parquet"
    other.write_bytes(b"")
    # The next atomic write of another process into the folder removes the dead writer's temporary.
    subprocess.run([sys.executable, "-c", "import sys; from ais import io; io.write_text(sys.argv[1], 'done')",
                    str(target)], cwd=REPO, check=True)
    assert target.read_text() == "done"
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, live.name, other.name])
