"""Provenance stamped into every output: config, library versions, git revision."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import subprocess
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Mapping

_PACKAGES = ("ais", "torch", "torchvision", "numpy", "pandas", "pyarrow", "snakemake", "pillow", "scipy")


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the results."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.lru_cache(maxsize=None)
def git_revision(path: str = ".") -> str:
    """The git commit of the working tree at ``path`` (``+dirty`` when it has changes), or ``unknown``."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable hash of a (JSON-serialisable) config mapping."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(config: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance record stored in output metadata.

    Deliberately holds no timestamps or host names, so that the same inputs
    give byte-identical outputs.
    """
    record: dict[str, Any] = {
        "versions": library_versions(),
        "git_revision": git_revision(str(Path(__file__).resolve().parent.parent)),
    }
    if config is not None:
        record["config"] = dict(config)
    record.update(extra)
    return record
