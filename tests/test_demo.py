"""The synthetic demo data set: deterministic bytes, masks that line up with the artefacts, a usable sheet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ais.demo import ARTEFACTS, generate_demo, load_mask, make_image


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path):
    generate_demo(tmp_path / "a", n_images=6, size=48, seed=3)
    generate_demo(tmp_path / "b", n_images=6, size=48, seed=3)
    generate_demo(tmp_path / "c", n_images=6, size=48, seed=4)
    a, b, c = (_digest(tmp_path / k) for k in "abc")
    assert a == b and len(a) >= 13  # 6 images, 6 masks, sheet (+ demo.json)
    assert a["images/demo-0000.png"] != c["images/demo-0000.png"]
    # An image does not depend on how many are generated.
    generate_demo(tmp_path / "d", n_images=3, size=48, seed=3)
    assert _digest(tmp_path / "d")["images/demo-0002.png"] == a["images/demo-0002.png"]


def test_masks_line_up_with_the_artefacts():
    """Outside every mask the image is the clean scene exactly; inside each region it is changed."""
    seen = set()
    for i in range(30):
        demo = make_image(0, i, 64)
        diff = np.abs(demo.image.astype(int) - demo.clean.astype(int)).max(axis=-1)
        marked = demo.mask > 0
        assert diff[~marked].max(initial=0) == 0, f"image {i}: pixels changed outside the masks"
        for region in demo.regions:
            inside = (demo.mask & (1 << ARTEFACTS[region.type].bit)) != 0
            assert inside.any(), f"image {i}: {region.type} placed but its mask is empty"
            assert diff[inside].mean() > 3, f"image {i}: {region.type} region barely differs from the clean scene"
            seen.add(region.type)
        placed = {r.type for r in demo.regions}
        for name, art in ARTEFACTS.items():
            if name not in placed:
                assert not ((demo.mask & (1 << art.bit)) != 0).any(), f"image {i}: {name} mask set but not placed"
    assert seen == set(ARTEFACTS), f"artefact types never placed in 30 images: {set(ARTEFACTS) - seen}"


def test_sheet_scores_masks_and_unlabelled(tmp_path: Path):
    sheet = generate_demo(tmp_path, n_images=20, size=32, seed=0, unlabelled_fraction=0.25)
    df = pd.read_csv(sheet, dtype=str, keep_default_na=False)
    assert list(df.columns) == ["path", "score", "mask"]
    assert (df["score"] == "").sum() == 5
    scores = df.loc[df["score"] != "", "score"].astype(float)
    assert scores.between(1, 5).all()
    meta = json.loads((tmp_path / "demo.json").read_text())
    for rec, row in zip(meta["images"], df.itertuples()):
        assert rec["path"] == row.path
        with Image.open(tmp_path / row.path) as im:
            assert im.size == (32, 32) and im.mode == "RGB"
        masks = load_mask(tmp_path / row.mask)
        assert set(masks) == set(ARTEFACTS) | {"raise", "lower"}
        assert all(m.shape == (32, 32) and m.dtype == bool for m in masks.values())
        kinds = {r["effect"] for r in rec["regions"]}
        assert masks["raise"].any() == ("raise" in kinds) and masks["lower"].any() == ("lower" in kinds)
