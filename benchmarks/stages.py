"""Benchmark: per-image cost of each part of the image-consuming stages, and the decode/compute overlap.

On JPEG photographs of a realistic size (written by the benchmark: smooth
random scenes, ``--width`` x ``--height``, quality 90) and a random
``--arch`` regressor at ``--size`` px (vgg16 at 224 px by default):

- ``decode_s``: open + EXIF + RGB + resize + tensor (:func:`ais.images.load_tensor`);
- ``forward_s``: one plain forward pass;
- ``engine_s``: :class:`ais.ablation.ChannelAblation` over every unit of the default layer;
- ``table_s``: building and writing the ablation rows (:func:`ais.ablation.ablation_table`, Parquet);
- ``maps_s``: the default run's map methods (:func:`ais.methods.compute_maps`; optional ones such as occlusion left out);
- ``panel_s``: one PNG panel (:func:`ais.render.panel` + :func:`ais.render.save_png`);

each per image, also as a multiple of ``forward_s`` and as images per second.
The overlap check runs the ablation stage's loop (:func:`ais.pipeline.iter_batches`
into the engine) with one decoding worker and one compute thread and compares
it with decode alone and the engine alone (both also on one thread):
``overlap_ratio`` = stage / max(decode, engine), at most 1.15 when decoding
hides behind compute. The last line printed is one JSON object.

    .venv/bin/python benchmarks/stages.py --images 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from ais import io, render
from ais.ablation import ChannelAblation, ablation_table
from ais.families import family_for
from ais.images import load_tensor, model_view
from ais.methods import compute_maps, configured_methods
from ais.models import build_model
from ais.pipeline import iter_batches


def write_photos(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[str]:
    """``n`` smooth random RGB scenes as JPEG files (what decoding a photograph costs)."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        coarse = rng.integers(0, 256, size=(height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, size=(height, width, 3))
        arr = np.clip(np.asarray(im, np.int16) + noise, 0, 255).astype(np.uint8)
        path = folder / f"photo-{i:03d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    return paths


def per_image(fn, n: int) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n


def part_costs(model, layer: str, paths: list[str], size: int, folder: Path) -> dict[str, float]:
    """Seconds per image of each part, on the threads torch has now."""
    n = len(paths)
    x = torch.stack([load_tensor(p, size) for p in paths])
    with torch.no_grad():
        model(x[:1])  # warm-up
    out = {"decode_s": per_image(lambda: [load_tensor(p, size) for p in paths], n)}
    with torch.no_grad():
        out["forward_s"] = per_image(lambda: model(x), n)
    with ChannelAblation(model, layer) as engine:
        engine(x[:1])
        t0 = time.perf_counter()
        y, y_abl = engine(x)
        out["engine_s"] = (time.perf_counter() - t0) / n
        path = engine.path
    ids = [Path(p).stem for p in paths]
    out["table_s"] = per_image(lambda: io.write_table(folder / "shard.parquet",
                                                      ablation_table(ids, np.zeros(n), y, y_abl)), n)
    c = y_abl.shape[1]
    inputs = {"ais_weights": np.random.default_rng(1).normal(size=(n, c)).astype(np.float32),
              "direction_weights": np.random.default_rng(2).normal(size=(n, c)).astype(np.float32)}
    maps: dict = {}
    methods = configured_methods()  # the default run's methods (optional ones such as occlusion excluded)
    out["maps_s"] = per_image(lambda: maps.update(compute_maps(model, layer, x, inputs, methods=methods)), n)
    views = [model_view(p, size)[0] for p in paths]
    out["panel_s"] = per_image(lambda: [render.save_png(folder / f"{i}.png", render.panel(v, {k: m[i] for k, m in maps.items()}))
                                        for i, v in enumerate(views)], n)
    out["path"] = path
    return out


def overlap(model, layer: str, paths: list[str], size: int, batch: int) -> dict[str, float]:
    """Stage loop with one worker and one compute thread, against decode alone and engine alone."""
    rows = pd.DataFrame({"path": paths})
    decode = per_image(lambda: [None for _ in iter_batches(rows, size, "imagenet", batch, workers=0)], len(paths))
    x = torch.stack([load_tensor(p, size) for p in paths])
    with ChannelAblation(model, layer) as engine:
        engine(x[:1])
        compute = per_image(lambda: [engine(x[i:i + batch]) for i in range(0, len(x), batch)], len(paths))
        stage = per_image(lambda: [engine(xb) for (xb,) in iter_batches(rows, size, "imagenet", batch, workers=1)],
                          len(paths))
    return {"overlap_decode_s": decode, "overlap_engine_s": compute, "overlap_stage_s": stage,
            "overlap_ratio": stage / max(decode, compute)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--head", default="classifier")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="images per batch in the overlap check")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model = build_model(args.arch, args.head).eval()
    layer = family_for(args.arch).resolve_layer(model, "auto")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_photos(folder, args.images, args.width, args.height)
        result: dict[str, object] = {"arch": args.arch, "layer": layer, "size": args.size, "images": args.images,
                                     "photo": f"{args.width}x{args.height} JPEG", "threads": torch.get_num_threads()}
        costs = part_costs(model, layer, paths, args.size, folder)
        result.update(costs)
        for key in ("decode_s", "engine_s", "table_s", "maps_s", "panel_s"):
            result[key.replace("_s", "_x_forward")] = costs[key] / costs["forward_s"]
            result[key.replace("_s", "_images_per_s")] = 1.0 / costs[key]
        torch.set_num_threads(1)
        result.update(overlap(model, layer, paths, args.size, args.batch))
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))
    return result


if __name__ == "__main__":
    main()
