"""Image loading and preprocessing shared by training, ablation and heatmaps.

Every image is opened the same way: EXIF orientation applied, converted to
8-bit RGB (palette, greyscale, CMYK, 16-bit and alpha images included; alpha
is composited on white), resized to ``size`` x ``size`` with bilinear
antialiasing and, optionally, normalised with the ImageNet statistics.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 178_956_970  # data.max_image_pixels default: Pillow's own limit (2x its warning size)


class BadImageError(ValueError):
    """An image file that cannot be used; the message names the file and the reason."""


def open_image(path: str | os.PathLike, max_pixels: int | None = None) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image with its EXIF orientation applied.

    Raises :class:`BadImageError` (message: ``"<path>: <reason>"``) for
    missing, empty, truncated, corrupt or non-image files, and for images
    with more than ``max_pixels`` pixels (decompression-bomb guard, checked on
    the header before any pixel is decoded; Pillow's own
    ``DecompressionBombError``/``Warning`` use the same limit and become the
    same error). Intake passes ``data.max_image_pixels``; ``None`` (for
    images intake already accepted) applies no limit, so later stages never
    refuse an image intake let through. Multi-frame files give their first
    frame.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadImageError(f"{path}: file not found")
    if not os.path.isfile(path):
        raise BadImageError(f"{path}: not a file (a folder or a special file)")
    if os.path.getsize(path) == 0:
        raise BadImageError(f"{path}: file is empty (0 bytes)")
    try:
        with _PILLOW_LIMIT_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            saved_limit = Image.MAX_IMAGE_PIXELS
            try:
                Image.MAX_IMAGE_PIXELS = None  # the header first, checked here with a clearer message
                with Image.open(path) as im:
                    w, h = im.size
                    if max_pixels is not None and w * h > max_pixels:
                        raise BadImageError(_too_large(path, f"{w}x{h} = {w * h} pixels", max_pixels))
                    Image.MAX_IMAGE_PIXELS = max_pixels  # what plugins check while decoding frames and tiles
                    im.load()
                    im = ImageOps.exif_transpose(im)
                    return to_rgb(im)
            finally:
                Image.MAX_IMAGE_PIXELS = saved_limit
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(_too_large(path, f"{exc}".rstrip("."), max_pixels)) from exc
    except Exception as exc:  # Pillow raises many types for corrupt files (OSError, SyntaxError, struct.error, ...)
        raise BadImageError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc


def _too_large(path: str, what: str, max_pixels: int | None) -> str:
    return (
        f"{path}: image too large ({what}); the limit is data.max_image_pixels={max_pixels} "
        "(decompression-bomb guard); raise it if the image is genuine"
    )


# Pillow's bomb limit is a module global: the lock keeps threads from seeing each other's limit.
_PILLOW_LIMIT_LOCK = threading.Lock()


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (alpha composited on white, 16-bit scaled)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(np.round(arr / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        arr8 = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def resize_square(im: Image.Image, size: int) -> Image.Image:
    """``im`` resized to ``size`` x ``size`` (bilinear, antialiased): the image as the model sees it."""
    if im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    return im


def to_tensor(im: Image.Image, size: int, normalization: str = "imagenet") -> torch.Tensor:
    """Resize an RGB image to ``size`` x ``size`` and return a float32 tensor ``(3, size, size)``."""
    arr = np.asarray(resize_square(im, size), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr.transpose(2, 0, 1).copy())
    return normalize(x, normalization)


def model_view(path: str | os.PathLike, size: int, normalization: str = "imagenet") -> tuple[np.ndarray, torch.Tensor]:
    """The image as the model sees it: ``(size, size, 3)`` uint8 and the input tensor ``(3, size, size)``.

    One decode for both; the tensor equals :func:`load_tensor`'s.
    """
    im = resize_square(open_image(path), size)
    return np.asarray(im, dtype=np.uint8), to_tensor(im, size, normalization)


def normalize(x: torch.Tensor, normalization: str = "imagenet") -> torch.Tensor:
    """Apply the input normalisation to ``(..., 3, H, W)`` values in [0, 1]."""
    if normalization == "none":
        return x
    if normalization != "imagenet":
        raise ValueError(f"unknown normalization {normalization!r} (imagenet or none)")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std


def denormalize(x: torch.Tensor, normalization: str = "imagenet") -> torch.Tensor:
    """Invert :func:`normalize`."""
    if normalization == "none":
        return x
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(3, 1, 1)
    return x * std + mean


def load_tensor(path: str | os.PathLike, size: int, normalization: str = "imagenet") -> torch.Tensor:
    """Open and preprocess one image: ``(3, size, size)`` float32."""
    return to_tensor(open_image(path), size, normalization)


def load_batch(paths: Sequence[str | os.PathLike], size: int, normalization: str = "imagenet") -> torch.Tensor:
    """Open and preprocess several images: ``(N, 3, size, size)`` float32."""
    if len(paths) == 0:
        return torch.empty(0, 3, size, size)
    return torch.stack([load_tensor(p, size, normalization) for p in paths])


class ImageDataset(torch.utils.data.Dataset):
    """Images (and optional targets) preprocessed on access.

    Items are ``(x, y, index)`` with ``x`` of shape ``(3, size, size)`` and
    ``y`` a float32 scalar tensor (NaN when no targets are given).
    """

    def __init__(
        self,
        paths: Sequence[str],
        size: int,
        normalization: str = "imagenet",
        targets: Sequence[float] | None = None,
        augment: bool = False,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        self.paths = list(paths)
        self.size = size
        self.normalization = normalization
        self.targets = None if targets is None else np.asarray(targets, dtype=np.float32)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.cache = cache  # keep decoded images for later epochs (off with decoding workers: each has its own copy)
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def set_epoch(self, epoch: int) -> None:
        """Augmentations depend on (seed, epoch, index) only: reproducible and resumable."""
        self.epoch = epoch

    def __getitem__(self, index: int):
        x = self._cache.get(index)
        if x is None:
            x = load_tensor(self.paths[index], self.size, self.normalization)
            if self.cache:
                self._cache[index] = x
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            if rng.random() < 0.5:
                x = torch.flip(x, dims=[2])
        y = torch.tensor(np.nan if self.targets is None else self.targets[index], dtype=torch.float32)
        return x, y, index
