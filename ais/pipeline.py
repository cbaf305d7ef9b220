"""The image pipeline of the stages that run a model over many images: decoding overlapped with compute.

:func:`iter_batches` reads a table's images (column ``path``) through a
``torch.utils.data.DataLoader``: with ``workers > 0``, worker processes decode
and resize the next batches while the model runs on the current one
(``prefetch_factor`` batches each), into pinned memory when the batches go to
a CUDA device, copied without blocking. Batches come in table order and hold
exactly the tensors of :func:`ais.images.load_batch` (the same decoding, in
another process), so results are bit-identical whatever the number of
workers. ``workers=0`` decodes in the calling process, one batch at a time.

How many workers a job gets: :func:`loader_workers` (its threads minus the
one that computes; none for a one-thread job).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ais.images import load_tensor, model_view

if TYPE_CHECKING:
    import pandas as pd

MAX_WORKERS = 8
PREFETCH = 2  # batches in flight per worker


class _Images(Dataset):
    """Item ``i``: ``(x (3, size, size) float32, view (size, size, 3) uint8 or an empty array)``."""

    def __init__(self, paths: Sequence[str], size: int, normalization: str, views: bool) -> None:
        self.paths, self.size, self.normalization, self.views = list(paths), size, normalization, views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.views:
            view, x = model_view(self.paths[i], self.size, self.normalization)
            return x, torch.from_numpy(view.copy())  # the PIL-backed array is read-only
        return load_tensor(self.paths[i], self.size, self.normalization), torch.empty(0, dtype=torch.uint8)


def loader_workers(threads: int) -> int:
    """Decoding workers for a job with ``threads`` threads: one thread computes, the rest decode."""
    return max(0, min(MAX_WORKERS, int(threads) - 1))


def iter_batches(
    rows: "pd.DataFrame",
    size: int,
    normalization: str,
    batch_size: int,
    columns: Sequence[str] = (),
    workers: int = 0,
    device: torch.device | str | None = None,
    views: bool = False,
) -> Iterator[tuple]:
    """Batches ``(x (B, 3, size, size), [views (B, size, size, 3) uint8,] *values of columns)`` in row order.

    ``x`` is on ``device`` (default: the CPU); with ``views`` the images as
    the model sees them (uint8, before normalisation) come second, as a
    numpy array. Each extra item is the list of that column's values.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    dataset = _Images(rows["path"].tolist(), size, normalization, views)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
        prefetch_factor=PREFETCH if workers else None, pin_memory=device.type == "cuda",
    )
    start = 0
    for x, view in loader:
        batch = rows.iloc[start:start + len(x)]
        start += len(x)
        head = (x.to(device, non_blocking=True),) + ((view.numpy(),) if views else ())
        yield (*head, *[batch[c].tolist() for c in columns])
