"""The synthetic demo data set: deterministic, masks that match the artefacts, a usable sheet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from ais import demo
from ais.demo import ARTEFACTS, LOWER, RAISE, load_mask, make_image
from ais.errors import UserError
from ais.stages import make_demo

SIZE = 48


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    make_demo.run(out, n_images=12, size=SIZE, seed=3, unlabelled_fraction=0.25)
    return out


def _records(root: Path) -> list[dict]:
    return json.loads((root / "demo.json").read_text())["images"]


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(tmp_path, demo_dir):
    again = tmp_path / "again"
    sheet = make_demo.run(again, n_images=12, size=SIZE, seed=3, unlabelled_fraction=0.25)
    assert sheet == again / "sheet.csv"
    first, second = _files(demo_dir), _files(again)
    assert sorted(first) == sorted(second)
    assert len([k for k in first if k.startswith("images/")]) == 12
    assert len([k for k in first if k.startswith("masks/")]) == 12
    assert first == second
    assert not any(".tmp." in name for name in first)  # atomic writes left nothing behind


def test_different_seed_different_data(tmp_path, demo_dir):
    other = tmp_path / "other"
    make_demo.run(other, n_images=12, size=SIZE, seed=4, unlabelled_fraction=0.25)
    first, second = _files(demo_dir), _files(other)
    for name in ("images/demo-0000.png", "images/demo-0005.png", "sheet.csv"):
        assert first[name] != second[name]


def test_image_does_not_depend_on_n_images_or_ratings(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    make_demo.run(a, n_images=3, size=32, seed=1)
    make_demo.run(b, n_images=5, size=32, seed=1, n_raters=3, rater_noise=1.0, unlabelled_fraction=0.4)
    for i in range(3):
        name = f"demo-{i:04d}.png"
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
        assert (a / "masks" / name).read_bytes() == (b / "masks" / name).read_bytes()


# --------------------------------------------------------------------------- sheet and files


def test_sheet_is_an_ordinary_image_sheet(demo_dir):
    with open(demo_dir / "sheet.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "score", "mask", "label"]
    assert len(rows) == 12
    for row in rows:
        image = demo_dir / row["path"]
        assert image.is_file() and row["path"].startswith("images/")
        assert (demo_dir / row["mask"]).is_file() and row["mask"].startswith("masks/")
        with Image.open(image) as im:
            assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    # Unlabelled rows have an empty score, which pandas reads as NaN.
    sheet = pd.read_csv(demo_dir / "sheet.csv")
    assert sheet["score"].isna().sum() == 3  # round(0.25 * 12)
    labelled = sheet["score"].dropna()
    assert ((labelled >= 1.0) & (labelled <= 5.0)).all()


def test_unlabelled_fraction_bounds(tmp_path):
    make_demo.run(tmp_path / "all", n_images=4, size=32, unlabelled_fraction=1.0)
    assert pd.read_csv(tmp_path / "all" / "sheet.csv")["score"].isna().all()
    make_demo.run(tmp_path / "none", n_images=4, size=32)
    assert pd.read_csv(tmp_path / "none" / "sheet.csv")["score"].notna().all()


def test_json_describes_parameters_and_artefacts(demo_dir):
    meta = json.loads((demo_dir / "demo.json").read_text())
    assert meta["parameters"] == {
        "n_images": 12,
        "size": SIZE,
        "seed": 3,
        "n_raters": 20,
        "rater_noise": 0.5,
        "unlabelled_fraction": 0.25,
    }
    assert set(meta["artefacts"]) == set(ARTEFACTS)
    assert {a["effect"] for a in meta["artefacts"].values()} == {"raise", "lower"}
    sheet = pd.read_csv(demo_dir / "sheet.csv")
    for record, (_, row) in zip(meta["images"], sheet.iterrows()):
        assert record["path"] == row["path"] and record["mask"] == row["mask"]
        if record["score"] is None:
            assert np.isnan(row["score"])
        else:
            assert record["score"] == pytest.approx(row["score"], abs=1e-4)


def test_invalid_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unlabelled_fraction"):
        make_demo.run(tmp_path, n_images=2, size=32, unlabelled_fraction=1.5)
    with pytest.raises(ValueError, match="n_raters"):
        make_demo.run(tmp_path, n_images=2, size=32, n_raters=0)
    with pytest.raises(UserError):  # the config's to fix: the job logs the message alone
        demo.DemoParams(size=8)
    assert not any(tmp_path.iterdir())  # checked before anything is written


def test_library_part_returns_what_the_stage_writes(demo_dir):
    entries = list(demo.demo_entries(demo.DemoParams(n_images=12, size=SIZE, seed=3, unlabelled_fraction=0.25)))
    assert [e.path for e in entries] == [f"images/demo-{i:04d}.png" for i in range(12)]
    for entry in entries[:3]:
        assert entry.demo.image.shape == (SIZE, SIZE, 3) and entry.demo.mask.shape == (SIZE, SIZE)
        assert demo.png_bytes(entry.demo.image) == (demo_dir / entry.path).read_bytes()
        assert demo.png_bytes(entry.demo.mask) == (demo_dir / entry.mask_path).read_bytes()
    assert demo.sheet_csv(e.sheet_row() for e in entries) == (demo_dir / "sheet.csv").read_text()
    assert [e.record() for e in entries] == _records(demo_dir)


# --------------------------------------------------------------------------- scores


def test_score_is_latent_without_rater_noise(tmp_path):
    make_demo.run(tmp_path, n_images=20, size=32, seed=2, rater_noise=0.0)
    meta = json.loads((tmp_path / "demo.json").read_text())
    for record in meta["images"]:
        latent = demo.BASE_REALISM + sum(
            (1 if r["effect"] == "raise" else -1) * ARTEFACTS[r["type"]].weight * r["strength"] * r["area"]
            for r in record["regions"]
        )
        assert record["latent"] == pytest.approx(latent, abs=1e-4)
        assert record["score"] == pytest.approx(np.clip(latent, 1.0, 5.0), abs=1e-4)


def test_rater_noise_averages_out():
    # The mean of n raters has standard deviation rater_noise / sqrt(n).
    errors = [demo.rate(0, i, 3.0, n_raters=20, rater_noise=0.5) - 3.0 for i in range(400)]
    assert np.std(errors) == pytest.approx(0.5 / np.sqrt(20), rel=0.15)
    assert demo.rate(0, 1, 7.0) == 5.0 and demo.rate(0, 1, -2.0) == 1.0


def test_scores_follow_the_regions():
    # More raising area, higher latent realism; more lowering area, lower.
    imgs = [make_image(0, i, 32) for i in range(200)]
    net = [
        sum(r.area * (1 if ARTEFACTS[r.type].effect == "raise" else -1) for r in d.regions) for d in imgs
    ]
    assert np.corrcoef(net, [d.latent for d in imgs])[0, 1] > 0.9


# --------------------------------------------------------------------------- masks


def test_load_mask_keys_and_shapes(demo_dir):
    m = load_mask(demo_dir / "masks" / "demo-0000.png")
    assert set(m) == set(ARTEFACTS) | {"raise", "lower"}
    for value in m.values():
        assert value.dtype == bool and value.shape == (SIZE, SIZE)
    assert np.array_equal(m["raise"], np.logical_or.reduce([m[k] for k in RAISE]))
    assert np.array_equal(m["lower"], np.logical_or.reduce([m[k] for k in LOWER]))
    assert not (m["raise"] & m["lower"]).any()  # regions do not overlap


def test_mask_bits_hand_made(tmp_path):
    bits = np.zeros((4, 4), dtype=np.uint8)
    bits[0, 0] = 1 << ARTEFACTS["grain"].bit
    bits[1, 1] = 1 << ARTEFACTS["waxy"].bit
    bits[2, 2] = (1 << ARTEFACTS["checkerboard"].bit) | (1 << ARTEFACTS["defocus"].bit)
    Image.fromarray(bits, "L").save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m["grain"].sum() == 1 and m["grain"][0, 0]
    assert m["waxy"][1, 1] and m["lower"][1, 1] and not m["raise"][1, 1]
    assert m["checkerboard"][2, 2] and m["defocus"][2, 2] and m["raise"][2, 2] and m["lower"][2, 2]
    assert m["raise"].sum() == 2 and m["lower"].sum() == 2


def test_mask_nonempty_iff_region_placed(demo_dir):
    for record in _records(demo_dir):
        m = load_mask(demo_dir / record["mask"])
        placed = {r["type"] for r in record["regions"]}
        for name in ARTEFACTS:
            assert m[name].any() == (name in placed), (record["path"], name)
        covered = sum(m[name].mean() for name in ARTEFACTS)
        assert covered == pytest.approx(sum(r["area"] for r in record["regions"]), abs=1e-5)
        for r in record["regions"]:
            y0, x0, y1, x1 = r["box"]
            inside = np.zeros((SIZE, SIZE), dtype=bool)
            inside[y0:y1, x0:x1] = True
            assert not (m[r["type"]] & inside).sum() == 0
        assert covered < 0.7  # never the whole image


def test_pixels_change_only_inside_the_masks():
    for i in range(30):
        d = make_image(5, i, SIZE)
        changed = np.abs(d.image.astype(int) - d.clean.astype(int)).max(axis=2) > 0
        assert not (changed & (d.mask == 0)).any()
        for r in d.regions:
            region = (d.mask & (1 << ARTEFACTS[r.type].bit)) != 0
            assert changed[region].mean() > 0.5, r.type


def _hf_energy(img: np.ndarray) -> np.ndarray:
    """Per-pixel energy of the finest scale: (image - its 3x3 box mean)**2, summed over RGB."""
    x = img.astype(np.float64) / 255.0
    return ((x - ndimage.uniform_filter(x, size=(3, 3, 1))) ** 2).sum(axis=2)


def _region_stats(n: int = 80, size: int = 64) -> dict[str, list[tuple[float, float, float]]]:
    """Per region: (fine energy in the image, in the clean scene, colour misregistration ratio)."""
    out: dict[str, list] = {k: [] for k in ARTEFACTS}
    for i in range(n):
        d = make_image(11, i, size)
        e_img, e_clean = _hf_energy(d.image), _hf_energy(d.clean)
        for r in d.regions:
            m = ndimage.binary_erosion((d.mask & (1 << ARTEFACTS[r.type].bit)) != 0, iterations=2)
            if m.sum() < 20:
                continue
            out[r.type].append((e_img[m].mean(), e_clean[m].mean(), _misregistration(d.image, d.clean, m)))
    return out


def _misregistration(image: np.ndarray, clean: np.ndarray, m: np.ndarray) -> float:
    """Mean |R - B| after removing the green channel's structure, image over clean."""
    def rb(x):
        x = ndimage.gaussian_filter(x.astype(np.float64), (1, 1, 0))
        return np.abs(x[..., 0] - x[..., 2] - np.mean(x[..., 0][m] - x[..., 2][m]))[m].mean()

    return rb(image) / (rb(clean) + 1e-9)


@pytest.fixture(scope="module")
def region_stats():
    return _region_stats()


def test_every_artefact_type_occurs(region_stats):
    for name, values in region_stats.items():
        assert len(values) >= 5, name


@pytest.mark.parametrize("name", ["grain", "chromatic_aberration"])
def test_camera_noise_raises_fine_energy(region_stats, name):
    ratio = np.median([a / b for a, b, _ in region_stats[name]])
    assert ratio > 2.0, ratio


@pytest.mark.parametrize("name", ["waxy", "banding"])
def test_generator_regions_lose_the_noise(region_stats, name):
    ratio = np.median([a / b for a, b, _ in region_stats[name]])
    assert ratio < 0.7, ratio


def test_grid_noise_is_a_grid():
    # What the grid adds is concentrated on the axes of the spectrum, at a period of size/14 to size/10.
    size = 64
    f = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(f, f, indexing="ij")

    def band(g):
        return (np.abs(g) >= 8.5 / size) & (np.abs(g) <= 15.5 / size)

    on_axis = (band(fx) & (np.abs(fy) <= 1.5 / size)) | (band(fy) & (np.abs(fx) <= 1.5 / size))
    fractions: dict[str, list[float]] = {"grid_noise": [], "other": []}
    for i in range(60):
        d = make_image(11, i, size)
        for r in d.regions:
            m = (d.mask & (1 << ARTEFACTS[r.type].bit)) != 0
            diff = (d.image.astype(float) - d.clean.astype(float)).mean(axis=2) * m
            power = np.abs(np.fft.fft2(diff)) ** 2
            power[0, 0] = 0.0
            fractions["grid_noise" if r.type == "grid_noise" else "other"].append(power[on_axis].sum() / power.sum())
    assert len(fractions["grid_noise"]) >= 5
    assert min(fractions["grid_noise"]) > 0.2
    assert np.median(fractions["other"]) < 0.1


def test_checkerboard_is_periodic():
    # The checkerboard adds energy at its cell period: the image minus itself shifted by one cell.
    hits = 0
    total = 0
    for i in range(60):
        d = make_image(11, i, 48)
        cell = max(2, round(48 / 24))
        for r in d.regions:
            if r.type != "checkerboard":
                continue
            y0, x0, y1, x1 = r.box
            crop = d.image[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].astype(float).mean(axis=2)
            clean = d.clean[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].astype(float).mean(axis=2)
            if min(crop.shape) < 2 * cell + 2:
                continue

            def alternation(x):
                # Cell-level alternation: difference between neighbouring cells, both axes.
                return np.abs(x[:, cell:] - x[:, :-cell]).mean() + np.abs(x[cell:] - x[:-cell]).mean()

            total += 1
            hits += alternation(crop) > 1.3 * alternation(clean)
    assert total >= 3 and hits / total > 0.8


def test_defocus_blurs_the_scene():
    # Defocus removes the scene's structure (noise aside): the region, smoothed, is smoother than the clean one.
    ratios = []
    for i in range(60):
        d = make_image(11, i, 64)
        for r in d.regions:
            if r.type != "defocus":
                continue
            m = ndimage.binary_erosion((d.mask & (1 << ARTEFACTS["defocus"].bit)) != 0, iterations=3)
            if m.sum() < 20:
                continue

            def structure(x):
                x = ndimage.gaussian_filter(x.astype(np.float64).mean(axis=2), 1.5)  # noise averaged out
                return np.hypot(*np.gradient(x))[m].mean()

            ratios.append(structure(d.image) / structure(d.clean))
    assert len(ratios) >= 5 and np.median(ratios) < 0.8


def test_aberration_misregisters_red_and_blue(region_stats):
    ratio = np.median([c for _, _, c in region_stats["chromatic_aberration"]])
    others = np.median([c for name in ("grain", "waxy") for _, _, c in region_stats[name]])
    assert ratio > 1.3 and ratio > others, (ratio, others)


def test_both_kinds_are_common():
    imgs = [make_image(0, i, 32) for i in range(200)]
    has_raise = np.mean([any(ARTEFACTS[r.type].effect == "raise" for r in d.regions) for d in imgs])
    has_lower = np.mean([any(ARTEFACTS[r.type].effect == "lower" for r in d.regions) for d in imgs])
    both = np.mean([len({ARTEFACTS[r.type].effect for r in d.regions}) == 2 for d in imgs])
    assert has_raise > 0.6 and has_lower > 0.6 and both > 0.35


# --------------------------------------------------------------------------- labels (real vs generated)


def test_label_rule_hand_made():
    def region(kind: str) -> demo.Region:
        return demo.Region(kind, "rect", (0, 0, 4, 4), 0.7)

    assert demo.label_of([]) == "real"  # nothing planted
    assert demo.label_of([region("grain"), region("defocus"), region("chromatic_aberration")]) == "real"
    for kind in LOWER:
        assert demo.label_of([region(kind)]) == "generated"
        assert demo.label_of([region("grain"), region(kind)]) == "generated"  # camera traits do not save it
    assert set(demo.CLASS_EVIDENCE) == set(demo.CLASSES) == {"real", "generated"}
    assert demo.CLASSES[-1] == "generated"  # the default explained class is the last one


def test_labels_in_sheet_follow_the_regions(demo_dir):
    sheet = pd.read_csv(demo_dir / "sheet.csv", dtype=str, keep_default_na=False)
    records = _records(demo_dir)
    assert len(records) == len(sheet)
    for record, label in zip(records, sheet["label"]):
        effects = {r["effect"] for r in record["regions"]}
        if record["score"] is None:
            assert label == "" and record["label"] is None  # unlabelled: neither score nor label
        else:
            assert label == record["label"] == ("generated" if "lower" in effects else "real")
    meta = json.loads((demo_dir / "demo.json").read_text())
    assert meta["label"]["classes"] == ["real", "generated"]
    assert meta["label"]["evidence"] == {"generated": "lower", "real": "raise"}


def test_generated_images_carry_their_evidence_mask(demo_dir):
    # A generated image has a non-empty generator-artefact mask (its evidence); a real one has none.
    seen = set()
    for record in _records(demo_dir):
        if record["label"] is None:
            continue
        m = load_mask(demo_dir / record["mask"])
        evidence = m[demo.CLASS_EVIDENCE["generated"]]
        assert evidence.any() == (record["label"] == "generated"), record["path"]
        seen.add(record["label"])
    assert seen == {"real", "generated"}


def test_both_labels_are_common():
    labels = [make_image(0, i, 32).label for i in range(200)]
    share = labels.count("generated") / len(labels)
    assert 0.6 < share < 0.85, share  # P(at least one generator region) = 0.75, before placement failures
