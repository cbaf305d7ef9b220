"""GPU slots: concurrent jobs never share one; a killed job frees its slot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ais.gpu import claim_gpu

CHILD = """
import gc, os, sys, time
from ais.gpu import claim_gpu
claim_gpu(wait_s=60, poll_s=0.05)  # as the workflow scripts call it: the returned slot is dropped
gc.collect()
start = time.time()
print(f"{os.environ['CUDA_VISIBLE_DEVICES']} {start:.6f}", flush=True)
time.sleep(float(sys.argv[1]))
print(f"{time.time():.6f}", flush=True)
"""


def _env(tmp_path: Path, slots: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(AIS_GPU_SLOTS=str(slots), AIS_GPU_LOCK_DIR=str(tmp_path / "locks"))
    return env


def test_concurrent_jobs_never_share_a_slot(tmp_path: Path):
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, "0.4"], stdout=subprocess.PIPE, text=True,
                              env=_env(tmp_path, 2)) for _ in range(5)]
    spans: dict[str, list[tuple[float, float]]] = {}
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        first, end = out.split("\n")[:2]
        device, start = first.split()
        spans.setdefault(device, []).append((float(start), float(end)))
    assert set(spans) <= {"0", "1"} and sum(len(v) for v in spans.values()) == 5
    for device, intervals in spans.items():
        intervals.sort()
        for (s1, e1), (s2, _) in zip(intervals, intervals[1:]):
            assert s2 >= e1 - 1e-3, f"GPU {device} shared by two jobs at once"


def test_killed_job_frees_its_slot(tmp_path: Path):
    env = _env(tmp_path, 1)
    holder = subprocess.Popen([sys.executable, "-c", CHILD, "60"], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().split()[0] == "0"
    with pytest.raises(TimeoutError, match="no free GPU slot"):
        claim_gpu(env=dict(env), wait_s=0.2, poll_s=0.05)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    env2 = dict(env)
    slot = claim_gpu(env=env2, wait_s=5, poll_s=0.05)
    assert slot is not None and env2["CUDA_VISIBLE_DEVICES"] == "0"
    slot.release()


def test_scheduler_choice_is_kept(tmp_path: Path):
    env = {"CUDA_VISIBLE_DEVICES": "3"}
    assert claim_gpu(env=env, lock_dir=tmp_path) is None and env["CUDA_VISIBLE_DEVICES"] == "3"
    env = {"AIS_GPU_SLOTS": "0"}
    assert claim_gpu(env=env, lock_dir=tmp_path) is None and "CUDA_VISIBLE_DEVICES" not in env


JOB = """
import os, sys, types, torch
from ais.stages import job
smk = types.SimpleNamespace(log=[sys.argv[1]], threads=1, rule="gpu_test")  # what a rule's script gets
with job(smk, gpu=True):
    print(os.environ["CUDA_VISIBLE_DEVICES"], torch.get_num_threads(), flush=True)
    sys.stdin.readline()  # hold the slot until the test is done
"""


def test_gpu_job_start_logs_its_slot_holds_it_and_caps_threads(tmp_path: Path):
    env = _env(tmp_path, 1)
    log = tmp_path / "job.log"
    job = subprocess.Popen([sys.executable, "-c", JOB, str(log)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, env=env)
    try:
        assert job.stdout.readline().split() == ["0", "1"]
        assert "claimed GPU slot 0 (CUDA_VISIBLE_DEVICES=0" in log.read_text()
        with pytest.raises(TimeoutError, match="no free GPU slot"):
            claim_gpu(env=dict(env), wait_s=0.2, poll_s=0.05)
    finally:
        job.communicate("\n", timeout=30)
    assert job.returncode == 0
