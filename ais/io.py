"""Atomic file output and Parquet tables with key-value metadata.

Every file the workflow writes appears atomically: it is written to a
temporary name in the same folder and renamed into place, so a killed job
never leaves a partly written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa
import pyarrow.parquet as pq


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is untouched.
    ``suffix`` defaults to the suffix of ``path`` (some writers infer the
    format from it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.tmp.", suffix=path.suffix if suffix is None else suffix, dir=path.parent
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


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


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
