"""Atomic file output and Parquet tables with key-value metadata.

Every file the workflow writes appears atomically: it is written to a
temporary name in the same folder and renamed into place, so a killed job
never leaves a partly written file under the final name. Temporary names
(``.<name>.tmp.<host>.<pid>.<random>``) say who wrote them: the first atomic
write of a process into a folder removes the temporaries of writers on this
host that no longer run (left by a SIGKILL), so a rerun leaves none behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

_UMASK = os.umask(0)
os.umask(_UMASK)

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMP_NAME = re.compile(r"^\..+\.tmp\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.")
_swept: set[str] = set()
_swept_lock = threading.Lock()


def temp_prefix(path: str | os.PathLike) -> str:
    """The prefix of temporary names for ``path``: ``.<name>.tmp.<host>.<pid>.`` (hidden, writer recorded)."""
    return f".{Path(path).name}.tmp.{_HOST}.{os.getpid()}."


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writer ran on this host and is gone; return them.

    Temporaries of running processes, of other hosts (a shared file system)
    and names in another format are left alone.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m or m["host"] != _HOST or int(m["pid"]) == os.getpid() or _running(int(m["pid"])):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        removed.append(Path(entry.path))
    return removed


def _sweep_once(folder: Path) -> None:
    """:func:`remove_stale_temps` on the first atomic write of this process into ``folder``."""
    key = os.path.abspath(folder)
    with _swept_lock:
        if key in _swept:
            return
        _swept.add(key)
    remove_stale_temps(folder)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` defaults to the suffix of ``path`` (some writers infer the
    format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    fd, tmp = tempfile.mkstemp(
        prefix=temp_prefix(path), suffix=path.suffix if suffix is None else suffix, dir=path.parent
    )
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` (a folder) by renames.

    For outputs that are folders of many files (per-image maps and panels):
    a killed job leaves only a hidden ``.<name>.tmp.*`` folder, never a partly
    filled ``path``. On any exception the temporary folder is removed and
    ``path`` is untouched. Temporaries left by killed writers are swept as
    for :func:`atomic_path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep_once(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; give the usual mode
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(path)}old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None``, recursively: strict JSON."""
    if isinstance(obj, float) or (hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0):
        value = obj.item() if hasattr(obj, "item") else obj
        return None if isinstance(value, float) and not math.isfinite(value) else value
    if isinstance(obj, Mapping):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def ignore_in_git(folder: str | os.PathLike) -> Path:
    """Create ``folder`` (and parents) with a ``.gitignore`` holding ``*``; return the ``.gitignore``'s path.

    Git then ignores everything in it (the ``.gitignore`` too), wherever the
    folder is: ``git add -A`` in a clone never sweeps the workflow's outputs
    in. An existing ``.gitignore`` is left as it is.
    """
    path = Path(folder) / ".gitignore"
    if not path.exists():
        write_text(path, "*\n")
    return path


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def encode_metadata(metadata: Mapping[str, Any]) -> dict[bytes, bytes]:
    """Encode Parquet key-value metadata: strings stay, anything else becomes JSON."""
    out = {}
    for key, value in metadata.items():
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=_json_default)
        out[key.encode()] = text.encode()
    return out


def write_table(
    path: str | os.PathLike,
    table: pa.Table,
    schema: pa.Schema | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``table`` to Parquet at ``path`` atomically.

    If ``schema`` is given the table is cast to it (column order, types and
    nullability checked by pyarrow). ``metadata`` is added to the schema's
    key-value metadata (non-string values JSON-encoded).
    """
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    meta = dict(table.schema.metadata or {})
    if metadata:
        meta.update(encode_metadata(metadata))
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        # No write timestamps and a fixed writer: same inputs, same bytes.
        pq.write_table(table, tmp, compression="zstd", write_statistics=True)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read the key-value metadata of a Parquet file, JSON-decoding values that parse."""
    raw = pq.read_schema(path).metadata or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.decode()
        if k == "ARROW:schema" or k == "pandas":
            continue
        v = value.decode()
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def safetensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """``safetensors.torch.save`` with the header's metadata in sorted order: same tensors, same bytes.

    safetensors writes ``__metadata__`` from a hash map, whose order changes
    from process to process; the file's bytes (and every SHA-256 of it
    recorded downstream) would change with it.
    """
    import struct

    from safetensors.torch import save

    data = save(dict(tensors), metadata=None if metadata is None else dict(metadata))
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen: the same JSON, reordered
        raise ValueError("safetensors header grew when sorted")
    return data[:8] + text + b" " * (n - len(text)) + data[8 + n :]


def write_maps(path: str | os.PathLike, maps: Mapping[str, Any]) -> None:
    """Save one image's maps to a compressed ``.npz`` atomically; floating arrays as float16.

    float16 keeps ~3 significant digits, ample for maps in [-1, 1]; other
    arrays (the ``image`` as uint8, the ``image_id`` string) are stored as they are.
    """
    import numpy as np

    arrays = {}
    for name, arr in maps.items():
        arr = np.asarray(arr)
        arrays[name] = arr.astype(np.float16) if np.issubdtype(arr.dtype, np.floating) else arr
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def read_maps(path: str | os.PathLike) -> dict[str, Any]:
    """Read maps saved by :func:`write_maps`: floating arrays as float32, the rest as stored; no pickles."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return {k: data[k].astype(np.float32) if np.issubdtype(data[k].dtype, np.floating) else data[k]
                for k in data.files}
