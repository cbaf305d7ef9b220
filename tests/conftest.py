"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))


def write_image(path: Path, size=(20, 16), seed: int = 0, mode: str = "RGB", fmt: str | None = None) -> Path:
    """A small random image written by the test."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr, "RGB").convert(mode).save(path, format=fmt)
    return path


def run_snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 1200) -> subprocess.CompletedProcess:
    """Run this repo's workflow with ``workdir`` as the working directory."""
    cmd = [SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def small_cnn():
    """A seeded two-conv CNN (BatchNorm, in-place ReLUs, pooled head) in eval mode, for method tests."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 1),
    ).eval()


@pytest.fixture
def repo() -> Path:
    return REPO


TINY = REPO / "tests" / "data" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> Path:
    """The whole workflow run once on the tiny configuration, shared by the tests that only read its outputs."""
    import shutil

    work = tmp_path_factory.mktemp("tiny-session")
    shutil.copy(TINY, work / "config.yaml")
    run_snakemake(work, "--cores", "2", "--configfile", str(work / "config.yaml"))
    return work
