"""A fast PNG encoder for panels (8-bit RGB, one filter, run-length deflate)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from ais.io import write_bytes


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, 3)`` uint8 array: 8-bit RGB, "Up" filter on every row, zlib RLE.

    A minimal encoder because speed matters here: Pillow tries four filters
    on every row and then runs full deflate, ~3x slower for the same file size
    on panels. One vectorised filter plus run-length deflate (libpng's fast
    setting) keeps encoding near the cost of composing the panel. Same array,
    same bytes.
    """
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"PNG array must be uint8 (H, W, 3), got {arr.dtype} {arr.shape}")
    h, w = arr.shape[:2]
    rows = arr.reshape(h, w * 3)
    filtered = np.empty((h, w * 3 + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: each byte minus the byte above (0 above the first row)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = deflate.compress(filtered.tobytes()) + deflate.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, filter 0, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def save_png(path: str | os.PathLike, arr: np.ndarray) -> None:
    """Write an ``(H, W, 3)`` uint8 array as PNG (:func:`encode_png`) atomically."""
    write_bytes(path, encode_png(arr))
