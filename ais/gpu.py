"""Give each concurrent GPU job its own GPU, before torch initialises CUDA.

Snakemake's ``--resources gpu=N`` bounds how many GPU jobs run at once but
assigns no device ids. Each job therefore claims a *slot* (one per GPU) by
taking a non-blocking ``flock`` on ``<lock_dir>/gpu-<i>.lock`` and sets
``CUDA_VISIBLE_DEVICES`` to that GPU. The lock lives as long as the process:
when a job ends, or dies (even by SIGKILL), the kernel releases it.

Where a scheduler already chose the devices (SLURM sets
``CUDA_VISIBLE_DEVICES`` for jobs with GPUs), nothing is changed.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, MutableMapping

logger = logging.getLogger(__name__)

#: Number of GPU slots (overrides detection; also how tests simulate GPUs).
ENV_SLOTS = "AIS_GPU_SLOTS"
#: Folder of the lock files (default: a per-user folder in the temp dir).
ENV_LOCK_DIR = "AIS_GPU_LOCK_DIR"


@dataclass
class GpuSlot:
    """A claimed GPU slot; the claim holds while this object (its open lock file) lives."""

    index: int
    device: str
    lock_path: Path
    _handle: IO[str]

    def release(self) -> None:
        if self in _held:
            _held.remove(self)
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


#: Every slot this process holds: a claim lasts until ``release()`` or the process ends, even
#: when the caller drops the returned object (the workflow scripts call ``claim_gpu()`` and go on).
_held: list[GpuSlot] = []


def detect_gpus(env: MutableMapping[str, str] = os.environ) -> list[str]:
    """Physical GPU ids this machine offers, without initialising CUDA.

    ``AIS_GPU_SLOTS=N`` gives ``0..N-1``; otherwise ``nvidia-smi -L`` is asked;
    otherwise there are none.
    """
    if env.get(ENV_SLOTS):
        return [str(i) for i in range(int(env[ENV_SLOTS]))]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def default_lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"ais-gpu-locks-{os.getuid()}"


def claim_gpu(
    env: MutableMapping[str, str] = os.environ,
    lock_dir: str | os.PathLike | None = None,
    wait_s: float = 3600.0,
    poll_s: float = 1.0,
) -> GpuSlot | None:
    """Claim a free GPU slot and set ``CUDA_VISIBLE_DEVICES`` in ``env``; ``None`` if there is nothing to do.

    Call it before anything initialises CUDA. The claim holds until the
    returned slot's ``release()`` or the end of the process, whether or not
    the caller keeps the returned object. When every slot is taken
    (more GPU jobs than GPUs, e.g. ``--resources gpu`` larger than the real
    count) it waits up to ``wait_s`` seconds for one to free up.
    """
    if env.get("CUDA_VISIBLE_DEVICES") is not None and not env.get(ENV_SLOTS):
        logger.info("CUDA_VISIBLE_DEVICES=%s set by the scheduler; keeping it", env["CUDA_VISIBLE_DEVICES"])
        return None
    gpus = detect_gpus(env)
    if not gpus:
        return None
    folder = Path(lock_dir or env.get(ENV_LOCK_DIR) or default_lock_dir())
    folder.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        for index, device in enumerate(gpus):
            path = folder / f"gpu-{index}.lock"
            handle = open(path, "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            env["CUDA_VISIBLE_DEVICES"] = device
            logger.info("claimed GPU slot %d (CUDA_VISIBLE_DEVICES=%s, lock %s)", index, device, path)
            slot = GpuSlot(index, device, path, handle)
            _held.append(slot)
            return slot
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"no free GPU slot among {len(gpus)} after {wait_s:.0f} s (locks in {folder}); "
                "run with --resources gpu=N where N is at most the number of GPUs"
            )
        time.sleep(poll_s)


def start_gpu_job(log_path: str | None, threads: int) -> logging.Logger:
    """What every GPU rule's script does first; returns the job's logger.

    Logging to ``log_path`` (so the slot claimed appears in the job's log),
    then :func:`claim_gpu` before torch initialises CUDA, then torch capped
    at the job's ``threads``.
    """
    from ais.logs import setup_logging

    job_log = setup_logging(log_path)
    claim_gpu()
    import torch  # only now: CUDA_VISIBLE_DEVICES is set

    torch.set_num_threads(max(1, min(threads, torch.get_num_threads())))
    return job_log
