"""The offline synthetic realism data set ("demo"): plainly synthetic images with known answers.

Every image is a synthetic scene with natural-image statistics (a 1/f
amplitude spectrum, colour, smooth illumination, soft and hard-edged shapes)
into which a few non-overlapping rectangular or elliptical regions are
painted. Each region carries one artefact type (see :data:`ARTEFACTS`):

- *lower* realism, imitating image-generator artefacts: ``checkerboard``
  (nearest-neighbour upsampling into cells of about size/24 px, alternate
  cells offset up and down as by a transposed convolution), ``grid_noise``
  (a smooth periodic grid of period size/14 to size/10 px), ``waxy``
  (over-smoothed, slightly over-saturated "plastic" patch) and ``banding``
  (a smooth gradient quantised into flat bands with sharp steps);
- *raise* realism, imitating camera traits: ``grain`` (signal-dependent sensor
  noise), ``defocus`` (slight Gaussian blur) and ``chromatic_aberration``
  (red and blue channels shifted apart along the radius of the lens).

Each image also has a **label** for real-vs-generated detectors (:func:`label_of`):
``generated`` when at least one region carries a generator artefact (a region
that lowers realism), ``real`` when it carries only camera traits or no
region at all. The evidence of each class is the union mask of its regions
(:data:`CLASS_EVIDENCE`: ``generated`` -> the ``lower`` mask, ``real`` -> the
``raise`` mask), so localisation can be measured for the explained class.

The latent realism of an image is ``BASE_REALISM + sum over raise regions of
weight * strength * area - sum over lower regions of weight * strength *
area`` with ``area`` the region's fraction of the image, ``strength`` in
[0.5, 1] (it also sets how visible the artefact is) and ``weight`` the
artefact type's realism points (:data:`LOWER_WEIGHT` for generator
artefacts, :data:`RAISE_WEIGHT` for camera traits). Each of ``n_raters`` simulated raters reports
the latent realism plus Gaussian noise of standard deviation
``rater_noise``; the score is their mean, clipped to [1, 5].

The files (written by :mod:`ais.stages.make_demo`; this module returns
arrays, rows and records), under the output folder:

- ``images/demo-0000.png``: 8-bit RGB PNG, ``size`` x ``size``;
- ``masks/demo-0000.png``: 8-bit greyscale PNG of the same size whose pixel
  value is a bit field, bit ``ARTEFACTS[name].bit`` set where artefact
  ``name`` was painted; read it with :func:`load_mask`;
- ``sheet.csv``: columns ``path``, ``score`` (empty for unlabelled images),
  ``mask`` (both paths relative to ``out_dir``) and ``label`` (``real`` or
  ``generated``; empty for unlabelled images) -- an ordinary image sheet;
- ``demo.json``: the generator parameters, the artefact types and, per
  image, the regions placed (type, shape, box, strength, area), the latent
  realism, the score and the label.

Everything is a deterministic function of the parameters: image ``i`` uses
its own ``numpy.random.default_rng([seed, i, ...])`` streams, so an image does
not depend on ``n_images``, and the ratings do not change the pixels.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from scipy import ndimage

from ais.errors import UserError

BASE_REALISM = 3.3
# Realism points per unit of strength * image fraction: artefacts weigh more than camera traits.
LOWER_WEIGHT = 10.0
RAISE_WEIGHT = 6.5
SCORE_RANGE = (1.0, 5.0)
SIDE_RANGE = (0.28, 0.48)  # region height and width, as fractions of the image side
STRENGTH_RANGE = (0.5, 1.0)
BACKGROUND_NOISE = 0.03  # the scene's own faint sensor noise; generator artefacts are painted noise-free
CAMERA_NOISE_FLOOR = 0.06  # sensor noise that comes with the other camera traits (defocus, aberration)
REGION_COUNT_P = (0.25, 0.35, 0.25, 0.15)  # P(0, 1, 2, 3 regions) for each of lower and raise
PNG_OPTIONS = {"format": "PNG", "optimize": False, "compress_level": 6}

# Streams of the per-image generators: default_rng([seed, index, stream]).
_STREAM_IMAGE = 0
_STREAM_RATERS = 1
_STREAM_UNLABELLED = 2


@dataclass(frozen=True)
class Artefact:
    """One region type: its bit in the mask, its effect on realism, what it imitates."""

    bit: int
    effect: str  # "raise" or "lower"
    weight: float  # realism points per unit of strength * image fraction (sign from ``effect``)
    imitates: str


ARTEFACTS: dict[str, Artefact] = {
    "checkerboard": Artefact(0, "lower", LOWER_WEIGHT, "transposed-convolution upsampling: 2x2 blocks plus a period-4 checkerboard"),
    "grid_noise": Artefact(1, "lower", LOWER_WEIGHT, "periodic high-frequency gridding (period 4-6 px) of generator outputs"),
    "waxy": Artefact(2, "lower", LOWER_WEIGHT, "over-smoothed, over-saturated 'plastic' patch without texture"),
    "banding": Artefact(3, "lower", LOWER_WEIGHT, "colour banding: posterisation into a few flat levels"),
    "grain": Artefact(4, "raise", RAISE_WEIGHT, "camera sensor grain: fine signal-dependent noise"),
    "defocus": Artefact(5, "raise", RAISE_WEIGHT, "slight lens blur / defocus"),
    "chromatic_aberration": Artefact(6, "raise", RAISE_WEIGHT, "lateral chromatic aberration: red and blue shifted radially"),
}
LOWER = tuple(k for k, a in ARTEFACTS.items() if a.effect == "lower")
RAISE = tuple(k for k, a in ARTEFACTS.items() if a.effect == "raise")

#: The demo's classes for real-vs-generated detectors, in ``data.classes`` order.
CLASSES = ("real", "generated")
#: Per class, the :func:`load_mask` union whose regions carry its evidence: generator
#: artefacts (the regions that lower realism) for ``generated``, camera traits for ``real``.
CLASS_EVIDENCE = {"generated": "lower", "real": "raise"}


@dataclass
class Region:
    """One painted region; ``box`` is ``(y0, x0, y1, x1)`` in pixels, end exclusive."""

    type: str
    shape: str  # "rect" or "ellipse"
    box: tuple[int, int, int, int]
    strength: float
    area: float = 0.0  # fraction of the image's pixels inside the mask

    def to_json(self) -> dict:
        return {
            "type": self.type,
            "effect": ARTEFACTS[self.type].effect,
            "shape": self.shape,
            "box": list(self.box),
            "strength": round(self.strength, 6),
            "area": round(self.area, 6),
        }


@dataclass
class DemoImage:
    """One generated image: ``image`` and ``clean`` ``(H, W, 3)`` uint8, ``mask`` ``(H, W)`` uint8 bit field."""

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray
    regions: list[Region] = field(default_factory=list)
    latent: float = BASE_REALISM

    @property
    def label(self) -> str:
        """``generated`` or ``real``: :func:`label_of` the image's regions."""
        return label_of(self.regions)


def label_of(regions: Iterable[Region]) -> str:
    """``generated`` when any region is a generator artefact (effect ``lower``), else ``real``.

    An image with only camera traits (effect ``raise``) or with no region at all is ``real``.
    """
    return "generated" if any(ARTEFACTS[r.type].effect == "lower" for r in regions) else "real"


# --------------------------------------------------------------------------- base scene


def _pink_noise(rng: np.random.Generator, size: int, alpha: float) -> np.ndarray:
    """A ``(size, size)`` field with amplitude spectrum ``1 / f**alpha``, zero mean, unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1.0
    amp = f**-alpha
    amp[0, 0] = 0.0
    spec = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) * amp
    field_ = np.fft.irfft2(spec, s=(size, size))
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


def _random_colour_basis(rng: np.random.Generator) -> np.ndarray:
    """Two unit RGB directions orthogonal to grey (chroma axes), randomly rotated: ``(2, 3)``."""
    grey = np.ones(3) / np.sqrt(3.0)
    a = np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0)
    b = np.cross(grey, a)
    t = rng.uniform(0, 2 * np.pi)
    return np.stack([np.cos(t) * a + np.sin(t) * b, -np.sin(t) * a + np.cos(t) * b])


def _base_scene(rng: np.random.Generator, size: int) -> np.ndarray:
    """A clean synthetic scene ``(size, size, 3)`` float64 in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    chroma = _random_colour_basis(rng)
    lum = _pink_noise(rng, size, rng.uniform(1.15, 1.45))
    c1 = _pink_noise(rng, size, 2.0)
    c2 = _pink_noise(rng, size, 2.0)
    mean = rng.uniform(0.3, 0.6, size=3)
    img = mean + rng.uniform(0.08, 0.12) * lum[..., None]
    img += rng.uniform(0.03, 0.07) * (c1[..., None] * chroma[0] + c2[..., None] * chroma[1])

    # Shapes: colour/brightness offsets that keep the texture; some hard-edged (occlusions).
    for _ in range(rng.integers(3, 8)):
        cy, cx = rng.uniform(0, 1, size=2)
        ry, rx = rng.uniform(0.08, 0.3, size=2)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / rx
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / ry
        r = np.sqrt(u * u + v * v)
        soft = rng.choice([0.5, 0.7, 1.0, 4.0]) / (size * min(rx, ry))  # edge width in radius units
        alpha = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / soft, -50, 50)))
        offset = rng.choice([-1, 1]) * rng.uniform(0.08, 0.22) + rng.uniform(-0.08, 0.08, size=3)
        img += alpha[..., None] * offset

    # Illumination: a linear ramp and a vignette, multiplicative.
    t = rng.uniform(0, 2 * np.pi)
    ramp = (xx - 0.5) * np.cos(t) + (yy - 0.5) * np.sin(t)
    vignette = (xx - 0.5) ** 2 + (yy - 0.5) ** 2
    light = 1.0 + rng.uniform(0.1, 0.4) * ramp - rng.uniform(0.0, 0.4) * vignette
    img = img * light[..., None]
    return np.clip(img, 0.02, 0.98)


# --------------------------------------------------------------------------- artefacts
# Each takes the scene (H, W, 3) float64, the rng, the strength in [0.5, 1] and the
# region's centre (y, x) in pixels, and returns the fully artefacted scene; the caller
# blends it in under the region's feathered mask.


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(img, sigma=(sigma, sigma, 0), mode="reflect")


def _checkerboard(img, rng, s, centre):
    # Nearest-neighbour upsampling (cells of ~size/24 px) with the uneven overlap of a
    # transposed convolution: alternate cells are offset up and down, a checkerboard.
    h, w = img.shape[:2]
    cell = max(2, int(round(h / 24)))
    iy = (np.arange(h) // cell) * cell
    ix = (np.arange(w) // cell) * cell
    blocky = img[iy][:, ix]
    parity = ((np.arange(h) // cell)[:, None] + (np.arange(w) // cell)[None, :]) % 2
    tint = rng.uniform(0.7, 1.0, size=3)
    return blocky + (0.06 + 0.06 * s) * (2.0 * parity - 1.0)[..., None] * tint


def _grid_noise(img, rng, s, centre):
    # A smooth periodic grid of ~size/14 to size/10 px, as left by some generators' upsamplers.
    h, w = img.shape[:2]
    period = rng.uniform(h / 14, h / 10)
    yy, xx = np.mgrid[0:h, 0:w]
    p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
    pattern = 0.5 * (np.cos(2 * np.pi * xx / period + p1) + np.cos(2 * np.pi * yy / period + p2))
    tint = rng.uniform(0.5, 1.0, size=3)
    return img + (0.08 + 0.08 * s) * pattern[..., None] * tint


def _waxy(img, rng, s, centre):
    size = img.shape[0]
    smooth = _gauss(img, (0.05 + 0.04 * s) * size)
    grey = smooth.mean(axis=2, keepdims=True)
    waxy = grey + (1.4 + 0.6 * s) * (smooth - grey)
    # A soft specular sheen off the region's centre: the "plastic" look.
    yy, xx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    cy, cx = centre[0] + rng.uniform(-0.05, 0.05) * size, centre[1] + rng.uniform(-0.05, 0.05) * size
    sheen = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.06 * size) ** 2))
    return waxy + (0.10 + 0.10 * s) * sheen[..., None]  # over-saturated, slightly glossy


def _banding(img, rng, s, centre):
    # A smooth gradient (sky, wall) rendered with too few levels: flat bands, sharp steps.
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    t = rng.uniform(0, 2 * np.pi)
    ramp = ((yy - centre[0]) * np.sin(t) + (xx - centre[1]) * np.cos(t)) / (0.15 * h)
    smooth = _gauss(img, 0.05 * h) + 0.12 * ramp[..., None]
    step = 0.06 + 0.04 * s
    return np.floor(smooth / step + 0.5) * step


def _sensor_noise(img, rng, level):
    """Signal-dependent (shot-like) luma noise plus weaker chroma noise of std ~``level``."""
    h, w = img.shape[:2]
    sigma = level * np.sqrt(np.clip(img, 0, 1) + 0.1) / np.sqrt(0.6)
    luma = rng.standard_normal((h, w, 1))
    chroma = 0.5 * rng.standard_normal((h, w, 3))
    return img + sigma * (luma + chroma)


def _grain(img, rng, s, centre):
    return _sensor_noise(img, rng, 0.07 + 0.05 * s)


def _defocus(img, rng, s, centre):
    # A camera's out-of-focus patch still carries the sensor's noise floor.
    return _sensor_noise(_gauss(img, 1.5 + 1.0 * s), rng, CAMERA_NOISE_FLOOR)


def _chromatic_aberration(img, rng, s, centre):
    size = img.shape[0]
    dy, dx = centre[0] - (size - 1) / 2, centre[1] - (size - 1) / 2
    norm = np.hypot(dy, dx)
    if norm < 1e-6:
        t = rng.uniform(0, 2 * np.pi)
        dy, dx, norm = np.sin(t), np.cos(t), 1.0
    d = 2.0 + 2.0 * s  # pixels
    uy, ux = d * dy / norm, d * dx / norm
    out = img.copy()
    out[..., 0] = ndimage.shift(img[..., 0], (uy, ux), order=1, mode="nearest")
    out[..., 2] = ndimage.shift(img[..., 2], (-uy, -ux), order=1, mode="nearest")
    return _sensor_noise(out, rng, CAMERA_NOISE_FLOOR)


_PAINTERS: dict[str, Callable] = {
    "checkerboard": _checkerboard,
    "grid_noise": _grid_noise,
    "waxy": _waxy,
    "banding": _banding,
    "grain": _grain,
    "defocus": _defocus,
    "chromatic_aberration": _chromatic_aberration,
}


# --------------------------------------------------------------------------- regions


def _region_mask(shape: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    y0, x0, y1, x1 = box
    mask = np.zeros((size, size), dtype=bool)
    if shape == "rect":
        mask[y0:y1, x0:x1] = True
        return mask
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ry, rx = (y1 - y0) / 2, (x1 - x0) / 2
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _place_regions(rng: np.random.Generator, size: int) -> list[Region]:
    """Draw the regions' types, shapes, strengths and non-overlapping boxes (a 2-px gap)."""
    types = list(rng.choice(LOWER, size=rng.choice(4, p=REGION_COUNT_P)))
    types += list(rng.choice(RAISE, size=rng.choice(4, p=REGION_COUNT_P)))
    types = [str(types[i]) for i in rng.permutation(len(types))]
    taken = np.zeros((size, size), dtype=bool)
    regions = []
    gap = 2
    for kind in types:
        shape = str(rng.choice(["rect", "ellipse"]))
        strength = float(rng.uniform(*STRENGTH_RANGE))
        for _ in range(30):
            h, w = (np.round(rng.uniform(*SIDE_RANGE, size=2) * size).astype(int)).clip(4, size)
            y0 = int(rng.integers(0, size - h + 1))
            x0 = int(rng.integers(0, size - w + 1))
            if not taken[max(y0 - gap, 0) : y0 + h + gap, max(x0 - gap, 0) : x0 + w + gap].any():
                taken[y0 : y0 + h, x0 : x0 + w] = True
                regions.append(Region(kind, shape, (y0, x0, y0 + int(h), x0 + int(w)), strength))
                break
    return regions


def make_image(seed: int, index: int, size: int = 96) -> DemoImage:
    """Generate image ``index`` of the demo with ``seed``; depends on nothing else."""
    rng = np.random.default_rng([seed, index, _STREAM_IMAGE])
    scene = _base_scene(rng, size)
    clean = _sensor_noise(scene, rng, BACKGROUND_NOISE)
    img = clean.copy()
    mask = np.zeros((size, size), dtype=np.uint8)
    regions = _place_regions(rng, size)
    for region in regions:
        hard = _region_mask(region.shape, region.box, size)
        # Feathered inwards only: nothing changes outside the mask.
        soft = np.where(hard, ndimage.gaussian_filter(hard.astype(np.float64), 0.7), 0.0)
        y0, x0, y1, x1 = region.box
        centre = ((y0 + y1 - 1) / 2, (x0 + x1 - 1) / 2)
        # Painted from the noise-free scene (regions do not overlap).
        painted = _PAINTERS[region.type](scene, rng, region.strength, centre)
        img = img + soft[..., None] * (painted - img)
        mask[hard] |= np.uint8(1 << ARTEFACTS[region.type].bit)
        region.area = float(hard.mean())
    latent = BASE_REALISM + sum(_signed_weight(r.type) * r.strength * r.area for r in regions)
    return DemoImage(_to_uint8(img), _to_uint8(clean), mask, regions, float(latent))


def _signed_weight(name: str) -> float:
    art = ARTEFACTS[name]
    return art.weight if art.effect == "raise" else -art.weight


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def rate(seed: int, index: int, latent: float, n_raters: int = 20, rater_noise: float = 0.5) -> float:
    """The mean of ``n_raters`` noisy ratings of ``latent``, clipped to [1, 5]."""
    rng = np.random.default_rng([seed, index, _STREAM_RATERS])
    ratings = latent + rater_noise * rng.standard_normal(n_raters)
    return float(np.clip(ratings.mean(), *SCORE_RANGE))


# --------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class DemoParams:
    """The generator's parameters (the config's ``demo`` section), checked on creation."""

    n_images: int = 600
    size: int = 96
    seed: int = 0
    n_raters: int = 20
    rater_noise: float = 0.5
    unlabelled_fraction: float = 0.0

    def __post_init__(self) -> None:
        if (self.n_images < 1 or self.size < 16 or self.n_raters < 1 or self.rater_noise < 0
                or not 0 <= self.unlabelled_fraction <= 1):
            raise UserError(
                f"invalid demo parameters: n_images={self.n_images} (>= 1), size={self.size} (>= 16), "
                f"n_raters={self.n_raters} (>= 1), rater_noise={self.rater_noise} (>= 0), "
                f"unlabelled_fraction={self.unlabelled_fraction} (0 to 1)"
            )


@dataclass
class DemoEntry:
    """One image of the data set: its file name, pixels and mask (``demo``), its score (``None``: unlabelled)."""

    name: str
    demo: DemoImage
    score: float | None

    @property
    def path(self) -> str:
        return f"images/{self.name}"

    @property
    def mask_path(self) -> str:
        return f"masks/{self.name}"

    @property
    def label(self) -> str | None:
        """The image's class (:func:`label_of`); ``None`` when unlabelled, as its score."""
        return None if self.score is None else self.demo.label

    def sheet_row(self) -> tuple[str, str, str, str]:
        """The row of ``sheet.csv``: path, score (4 decimals; empty when unlabelled), mask, label (empty when unlabelled)."""
        return (self.path, "" if self.score is None else f"{self.score:.4f}", self.mask_path, self.label or "")

    def record(self) -> dict:
        """The image's entry in ``demo.json``."""
        return {
            "path": self.path,
            "mask": self.mask_path,
            "latent": round(self.demo.latent, 6),
            "score": None if self.score is None else round(self.score, 4),
            "label": self.label,
            "regions": [r.to_json() for r in self.demo.regions],
        }


def demo_entries(params: DemoParams) -> Iterator[DemoEntry]:
    """The images of the data set in order, generated one at a time (file names ``demo-0000.png``, ...)."""
    width = max(4, len(str(params.n_images - 1)))
    unlabelled = unlabelled_indices(params)
    for i in range(params.n_images):
        image = make_image(params.seed, i, params.size)
        score = None if i in unlabelled else rate(params.seed, i, image.latent, params.n_raters, params.rater_noise)
        yield DemoEntry(f"demo-{i:0{width}d}.png", image, score)


def unlabelled_indices(params: DemoParams) -> set[int]:
    """The indices of the images left without a score: ``round(unlabelled_fraction * n_images)`` of them."""
    n = int(round(params.unlabelled_fraction * params.n_images))
    rng = np.random.default_rng([params.seed, params.n_images, _STREAM_UNLABELLED])
    return set(int(i) for i in rng.permutation(params.n_images)[:n])


def png_bytes(arr: np.ndarray) -> bytes:
    """An RGB ``(H, W, 3)`` or greyscale ``(H, W)`` uint8 array as PNG bytes (fixed options: same array, same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB" if arr.ndim == 3 else "L").save(buf, **PNG_OPTIONS)
    return buf.getvalue()


def sheet_csv(rows: Iterable[tuple[str, str, str, str]]) -> str:
    """The text of ``sheet.csv``: header ``path,score,mask,label``, then ``rows`` (:meth:`DemoEntry.sheet_row`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "score", "mask", "label"])
    writer.writerows(rows)
    return buf.getvalue()


def describe(params: DemoParams, records: list[dict]) -> dict:
    """The content of ``demo.json``: parameters, how scores are made, the artefacts, ``records`` per image."""
    return {
        "description": "Synthetic images for AIS (plainly synthetic; see ais/demo.py). Regions that lower "
        "realism imitate generator artefacts; regions that raise it imitate camera traits.",
        "parameters": dataclasses.asdict(params),
        "score": {
            "latent": "base + sum over raise regions of weight * strength * area "
            "- sum over lower regions of weight * strength * area",
            "base": BASE_REALISM,
            "score": "mean of n_raters ratings latent + N(0, rater_noise), clipped to range",
            "range": list(SCORE_RANGE),
        },
        "mask_encoding": "8-bit greyscale PNG; bit `bit` of a pixel is set inside a region of that artefact",
        "label": {
            "classes": list(CLASSES),
            "rule": "generated when the image has at least one region that lowers realism (a generator "
            "artefact); real when it has only camera traits or no region; empty when unlabelled",
            "evidence": dict(CLASS_EVIDENCE),
        },
        "artefacts": {
            k: {"bit": a.bit, "effect": a.effect, "weight": a.weight, "imitates": a.imitates}
            for k, a in ARTEFACTS.items()
        },
        "images": records,
    }


def load_mask(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a demo mask PNG: ``{artefact: (H, W) bool}`` plus the unions ``"raise"`` and ``"lower"``."""
    with Image.open(path) as im:
        bits = np.asarray(im.convert("L"), dtype=np.uint8)
    out = {name: (bits & (1 << a.bit)) != 0 for name, a in ARTEFACTS.items()}
    out["raise"] = np.logical_or.reduce([out[k] for k in RAISE])
    out["lower"] = np.logical_or.reduce([out[k] for k in LOWER])
    return out
