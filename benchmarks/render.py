"""Benchmark: per-image heatmap panels (ais.render.panel + save_png) on one core.

Renders ``--n`` random ``--size``-pixel images with the full set of maps that
:func:`ais.methods.compute_maps` returns (layer-resolution maps upsampled to
the image, as there) and writes each panel as PNG. The images are smooth
random fields plus pixel noise (like photographs, unlike pure noise, which no
PNG encoder compresses). Prints a JSON line last:
``{"images": ..., "seconds": ..., "images_per_s": ..., "threads": ...}`` where
``images_per_s`` is per core (the run is single-threaded; wall clock).
``cpu_seconds`` / ``images_per_cpu_s`` count the process's own CPU time, which
stays meaningful when other jobs share the cores.

The reference, timed in the same run on ``--reference`` of the same images:
the obvious way, one matplotlib figure per image (the image and an
``imshow`` overlay of each of the six maps, ``bwr`` with a ``TwoSlopeNorm``
centred at 0, Grad-CAM with ``jet``, saved as PNG at the same pixel size:
seven tiles against the panel's nine, so the ratio errs low);
``speedup_vs_matplotlib`` is the ratio of the two rates.

    .venv/bin/python benchmarks/render.py --n 200
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ais import render  # noqa: E402

MAP_KEYS = ("ais", "helpful", "harmful", "direction", "gradcam", "gradcampp")


def _smooth(rng: np.random.Generator, shape: tuple[int, ...], size: int) -> np.ndarray:
    """A random low-resolution field bilinearly upsampled to ``size`` x ``size``, float32."""
    low = rng.normal(size=shape).astype(np.float32)
    chans = [np.asarray(Image.fromarray(low[..., c], mode="F").resize((size, size), Image.Resampling.BILINEAR))
             for c in range(low.shape[-1])]
    return np.stack(chans, axis=-1)


def make_inputs(n: int, size: int, seed: int = 0) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    layer = max(size // 16, 2)  # VGG's last conv block: 14 x 14 for 224 px
    items = []
    for _ in range(n):
        field = _smooth(rng, (8, 8, 3), size)
        img = 128 + 40 * field + rng.normal(scale=6.0, size=field.shape)
        image = np.clip(img, 0, 255).astype(np.uint8)
        raw = _smooth(rng, (layer, layer, len(MAP_KEYS)), size)
        maps = {}
        for i, key in enumerate(MAP_KEYS):
            m = raw[..., i]
            if key in ("gradcam", "gradcampp"):
                m = np.maximum(m, 0.0)
            elif key == "helpful":
                m = np.maximum(m, 0.0)
            elif key == "harmful":
                m = np.minimum(m, 0.0)
            peak = np.abs(m).max()
            maps[key] = (m / peak if peak > 0 else m).astype(np.float32)
        items.append((image, maps))
    return items


def matplotlib_panel(path: Path, image: np.ndarray, maps: dict[str, np.ndarray], alpha: float = 0.4) -> None:
    """The reference: one matplotlib figure per image, the views side by side, saved as PNG."""
    from matplotlib.colors import Normalize, TwoSlopeNorm
    from matplotlib.figure import Figure

    views = [("image", None), ("ais", "bwr"), ("direction", "bwr"), ("helpful", "bwr"), ("harmful", "bwr"),
             ("gradcam", "jet"), ("gradcampp", "jet")]
    h, w = image.shape[:2]
    dpi = 100
    fig = Figure(figsize=(len(views) * w / dpi, (h + 14) / dpi), dpi=dpi)
    for i, (key, cmap) in enumerate(views):
        ax = fig.add_axes((i / len(views), 0, 1 / len(views), h / (h + 14)))
        ax.set_axis_off()
        ax.imshow(image)
        if cmap is not None:
            norm = Normalize(0.0, 1.0) if cmap == "jet" else TwoSlopeNorm(vcenter=0.0, vmin=-1.0, vmax=1.0)
            ax.imshow(maps[key], cmap=cmap, norm=norm, alpha=alpha, interpolation="bilinear")
        fig.text((i + 0.5) / len(views), 1 - 7 / (h + 14), key, ha="center", va="center", fontsize=7)
    fig.savefig(path, dpi=dpi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="number of images")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (default: a temporary one)")
    parser.add_argument("--no-save", action="store_true", help="time the panels only, no PNG encoding")
    parser.add_argument("--reference", type=int, default=20,
                        help="images drawn the reference way (one matplotlib figure each); 0 skips it")
    args = parser.parse_args()

    items = make_inputs(args.n, args.size)
    render.panel(*items[0])  # warm the colour tables and the title band
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        panel_s = save_s = 0.0
        nbytes = 0
        t0 = time.perf_counter()
        c0 = time.process_time()
        for i, (image, maps) in enumerate(items):
            t = time.perf_counter()
            arr = render.panel(image, maps)
            panel_s += time.perf_counter() - t
            if not args.no_save:
                t = time.perf_counter()
                path = out / f"panel-{i:04d}.png"
                render.save_png(path, arr)
                save_s += time.perf_counter() - t
                nbytes += path.stat().st_size
        seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - c0
        ref_rate = None
        if args.reference > 0:
            ref = items[: args.reference]
            matplotlib_panel(out / "reference-warm.png", *ref[0])  # fonts and colormaps loaded once
            t = time.perf_counter()
            for i, (image, maps) in enumerate(ref):
                matplotlib_panel(out / f"reference-{i:04d}.png", image, maps)
            ref_rate = len(ref) / (time.perf_counter() - t)
    print(f"panel {arr.shape[1]}x{arr.shape[0]} px: {1e3 * panel_s / args.n:.1f} ms to compose, "
          f"{1e3 * save_s / args.n:.1f} ms to encode, {nbytes / max(args.n, 1) / 1e3:.0f} kB per PNG")
    print(json.dumps({
        "images": args.n,
        "seconds": round(seconds, 3),
        "images_per_s": round(args.n / seconds, 1),
        "threads": 1,
        "cpu_seconds": round(cpu_seconds, 3),
        "images_per_cpu_s": round(args.n / cpu_seconds, 1),
        "compose_ms": round(1e3 * panel_s / args.n, 2),
        "encode_ms": round(1e3 * save_s / args.n, 2),
        "size": args.size,
        "saved": not args.no_save,
        "matplotlib_images_per_s": None if ref_rate is None else round(ref_rate, 2),
        "speedup_vs_matplotlib": None if ref_rate is None else round(args.n / seconds / ref_rate, 1),
    }))


if __name__ == "__main__":
    main()
