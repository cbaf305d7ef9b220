"""The tiny workflow on a real SLURM cluster through profiles/slurm, compared with a local run.

Needs the single-node cluster of ``tests/slurm/setup_slurm.sh`` and the executor plugin
(``pip install -e '.[slurm]'``): ``make test-slurm`` does both, then runs this module.
Deselected from ``make test`` (marker ``slurm``, see pyproject.toml).

The cluster has no accounting database, so ``sacct`` cannot answer there: that the run
finishes at all shows that ``slurm-status-command: squeue`` from the profile is in effect.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import REPO, run_snakemake

pytestmark = pytest.mark.slurm

TINY = REPO / "tests" / "data" / "tiny.yaml"
PROFILES = [
    "--profile", str(REPO / "profiles" / "slurm"),
    "--profile", str(REPO / "tests" / "slurm" / "profile"),
    # profiles/default would otherwise be applied last and replace the SLURM resources.
    "--workflow-profile", "none",
]  # fmt: skip
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


def _sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def cluster() -> None:
    """A SLURM controller that answers, and the executor plugin."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("the SLURM executor plugin is missing: pip install -e '.[slurm]' (make test-slurm does)")
    if not shutil.which("sbatch") or _sh("scontrol", "ping").returncode != 0:
        pytest.fail("no SLURM controller answers: run tests/slurm/setup_slurm.sh first (make test-slurm does)")


def _run_tiny(work: Path, *args: str) -> str:
    shutil.copy(TINY, work / "config.yaml")
    proc = run_snakemake(work, "--configfile", str(work / "config.yaml"), *args, timeout=1800)
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("local")
    _run_tiny(work, "--cores", "2")
    return work


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory) -> tuple[Path, str]:
    work = tmp_path_factory.mktemp("slurm")
    return work, _run_tiny(work, *PROFILES)


def _jobs(output: str) -> dict[str, tuple[str, str]]:
    """Snakemake job id -> (rule, resources line), from a run's job listings."""
    jobs = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", output, flags=re.M):
        head = re.match(r"(?:local)?rule (\w+):$", block, flags=re.M)
        jobid = re.search(r"^    jobid: (\d+)$", block, flags=re.M)
        if head and jobid:
            resources = re.search(r"^    resources: (.*)$", block, flags=re.M)
            jobs[jobid[1]] = (head[1], resources[1] if resources else "")
    return jobs


def _scontrol_job(slurm_id: str) -> dict[str, str]:
    out = _sh("scontrol", "show", "job", "-o", slurm_id).stdout
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def test_no_accounting_here_so_only_squeue_can_track_jobs():
    assert _sh("sacct", "-X", "-n").returncode != 0  # "Slurm accounting storage is disabled"
    assert _sh("squeue", "--states=all", "-h").returncode == 0


def test_every_job_went_through_sbatch(slurm_run, local_run):
    work, output = slurm_run
    submitted = dict(SUBMITTED.findall(output))  # snakemake job id -> SLURM job id
    jobs = _jobs(output)
    assert submitted, output[-3000:]

    # Every job of the DAG (as the local run of the same config ran them) went through sbatch.
    local_log = next((local_run / ".snakemake" / "log").glob("*.snakemake.log")).read_text()
    local_rules = Counter(rule for rule, _ in _jobs(local_log).values() if rule != "all")
    assert Counter(jobs[jobid][0] for jobid in submitted) == local_rules

    # SLURM's own records: each job left its SLURM log, completed, and was given what the
    # profile asked for: runtime and memory, cpus-per-task = threads, a GPU (the fake gres of
    # setup_slurm.sh) for the rules that declare gpu=1.
    for jobid, slurm_id in submitted.items():
        rule, resources = jobs[jobid]
        assert list((work / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob(f"{slurm_id}.log")), (rule, slurm_id)
        job = _scontrol_job(slurm_id)
        if not job:  # purged by slurmctld after MinJobAge (600 s here): the SLURM log is the record
            continue
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), (rule, job)
        assert job["TimeLimit"] == "01:00:00", (rule, job)  # runtime 60 * attempt
        gpu = re.search(r"\bgpu=1\b", resources) is not None
        assert (job.get("TresPerJob") == "gres:gpu:1") == gpu, (rule, resources, job)
        if rule == "finetune_model":
            assert (job["NumCPUs"], job["MinMemoryNode"]) == ("2", "3000M"), job  # set-threads 2; set-resources


def _parquet_tables(results: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(results)): pq.read_table(p).to_pandas() for p in sorted(results.rglob("*.parquet"))}


def test_outputs_equal_a_local_run(slurm_run, local_run):
    work, _ = slurm_run
    remote = _parquet_tables(work / "results")
    local = _parquet_tables(local_run / "results")
    assert set(remote) == set(local)
    for name in ("data/manifest.parquet", "model/predictions.parquet", "ablation/shard-0.parquet", "ablation/shard-1.parquet"):
        assert name in remote
    for name, frame in local.items():
        pd.testing.assert_frame_equal(remote[name], frame, check_exact=True, obj=name)


def test_retries_grow_memory_and_runtime(tmp_path):
    """A job failing on attempt 1 is resubmitted with the profile's runtime and mem_mb for attempt 2."""
    proc = run_snakemake(tmp_path, "--snakefile", str(REPO / "tests" / "slurm" / "retry.smk"), *PROFILES, timeout=600)
    # (the second --snakefile wins over run_snakemake's own)
    granted = dict(kv.split("=", 1) for kv in (tmp_path / "retry" / "granted.txt").read_text().split())
    attempts = (tmp_path / "retry" / "attempts.txt").read_text().splitlines()
    assert len(attempts) == 2, proc.stdout[-3000:]
    # profiles/slurm's default-resources: mem_mb 4000 * attempt, runtime 60 * attempt (minutes)
    assert "mem_mb=4000 runtime=60 slurm_mem=4000M slurm_limit=1:00:00" in attempts[0]
    assert granted["mem_mb"] == "8000" and granted["runtime"] == "120"
    assert granted["slurm_mem"] == "8000M"  # what sbatch --mem gave the job
    assert granted["slurm_limit"] == "2:00:00"  # sbatch -t 120
