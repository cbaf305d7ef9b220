"""Timing shared by the benchmark scripts (imported as ``_timing`` from this folder)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """Wall-clock seconds of ``fn()`` (CUDA synchronised) and its result."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result
