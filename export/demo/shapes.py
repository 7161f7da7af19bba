"""A deterministic, procedural, labelled image set: one filled shape per image (numpy + Pillow only).

Each image shows one large shape of its class (``LABELS``): a random light fill colour with a
slight shading ramp, random size and position near the centre, the class's upright pose turned
by up to +-15 degrees, on a dark solid, gradient or blotchy background, with small distractor
clutter (thin lines and dots, always much smaller than the shape), sometimes a slight blur, and
mild pixel noise. Source images are 200-320 px on each side, aspect ratio up to 1.3, so the
runtime's (aspect-changing) resize really runs. :func:`write_dataset` writes them as real JPEG
and PNG files, one folder per class.

Why these choices: the demo model is a small ViT trained from scratch on two CPU cores in
minutes. Full rotations, random light/dark polarity and near-identical classes (a hexagon next
to a circle) each slowed that training several-fold in measurements, so the set keeps upright
poses, one polarity and classes that differ in outline.

The same ``(seed, split)`` always gives byte-identical files: every image draws from its own
``numpy.random.Generator`` seeded by ``(seed, split, class, index)``, and the train and held-out
splits use different split tags, so their random streams never coincide.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LABELS: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring", "arrow", "crescent")
# Classes the demo model never saw in training: the few-shot demo (``vitmsn-export --fewshot``) and its benchmark.
FEWSHOT_LABELS: tuple[str, ...] = ("pentagon", "diamond", "ellipse", "semicircle", "heart", "chevron")
ALL_LABELS = LABELS + FEWSHOT_LABELS
Split = Literal["train", "heldout", "fewshot", "fewshot-heldout"]
# Split tags mixed into every image's seed: no two splits share a random stream.
SPLIT_TAGS: dict[str, int] = {"train": 0x7261696E, "heldout": 0x68656C64, "fewshot": 0x66657773,
                              "fewshot-heldout": 0x66776864}
DEFAULT_HELDOUT_SEED = 20240601
SOURCE_SIZE_RANGE = (200, 320)
MAX_ASPECT = 1.3  # source width/height within [1/1.3, 1.3]
SHAPE_RADIUS = (0.26, 0.44)  # circumscribed radius, as a fraction of the shorter side
POSITION_JITTER = 0.12  # centre offset, as a fraction of the side, kept inside the image
DARK, LIGHT = (0.0, 95.0), (150.0, 255.0)  # luma bands of background and shape (one each)
# Each class has an upright pose (triangle and star point up, square and cross axis-aligned,
# arrow pointing right, crescent opening to the right), turned by a random angle up to this.
BASE_ANGLE = {"circle": 0.0, "square": math.pi / 4, "triangle": -math.pi / 2, "star": -math.pi / 2,
              "cross": 0.0, "ring": 0.0, "arrow": 0.0, "crescent": 0.0,
              "pentagon": -math.pi / 2, "diamond": 0.0, "ellipse": 0.0, "semicircle": 0.0, "heart": 0.0,
              "chevron": 0.0}
ROTATION_JITTER_DEGREES = 15.0
POLARITY = "light-on-dark"  # a light shape on a dark background; or "dark-on-light", "random"
_SUPERSAMPLE = 2  # shapes are drawn at 2x and downsampled, for anti-aliased edges


def image_rng(seed: int, split: Split, label_index: int, index: int) -> np.random.Generator:
    """The generator that renders image ``index`` of class ``label_index`` in ``split``."""
    if split not in SPLIT_TAGS:
        raise ValueError(f"split must be one of {sorted(SPLIT_TAGS)}, got {split!r}")
    return np.random.default_rng([int(seed), SPLIT_TAGS[split], int(label_index), int(index)])


# ---- geometry -------------------------------------------------------------------------------
def _polygon(n: int, radius: float, angle: float, cx: float, cy: float, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular n-gon (or an n-pointed star when ``inner`` is the inner radius ratio)."""
    points = []
    steps = 2 * n if inner is not None else n
    for k in range(steps):
        r = radius * (inner if inner is not None and k % 2 else 1.0)
        a = angle + 2 * math.pi * k / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def _rotated(points: Sequence[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _shape_mask(label: str, size: tuple[int, int], cx: float, cy: float, r: float, angle: float,
                rng: np.random.Generator) -> Image.Image:
    """An L-mode mask (255 inside the shape) of ``size``; ``r`` is the circumscribed radius."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    box = (cx - r, cy - r, cx + r, cy + r)
    if label == "circle":
        draw.ellipse(box, fill=255)
    elif label == "square":
        draw.polygon(_polygon(4, r, angle, cx, cy), fill=255)
    elif label == "triangle":
        draw.polygon(_polygon(3, r, angle, cx, cy), fill=255)
    elif label == "arrow":
        shaft, head, neck = r * float(rng.uniform(0.18, 0.28)), r * float(rng.uniform(0.55, 0.75)), r * float(rng.uniform(-0.1, 0.2))
        outline = [(-r, -shaft), (neck, -shaft), (neck, -head), (r, 0.0), (neck, head), (neck, shaft), (-r, shaft)]
        draw.polygon(_rotated(outline, angle, cx, cy), fill=255)
    elif label == "star":
        draw.polygon(_polygon(5, r, angle, cx, cy, inner=float(rng.uniform(0.36, 0.46))), fill=255)
    elif label == "cross":
        w = r * float(rng.uniform(0.22, 0.32))  # half the arm width
        arm = [(-r, -w), (r, -w), (r, w), (-r, w)]
        draw.polygon(_rotated(arm, angle, cx, cy), fill=255)
        draw.polygon(_rotated([(y, x) for x, y in arm], angle, cx, cy), fill=255)
    elif label == "ring":
        inner = r * float(rng.uniform(0.45, 0.65))
        draw.ellipse(box, fill=255)
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    elif label == "crescent":
        draw.ellipse(box, fill=255)
        offset = r * float(rng.uniform(0.45, 0.65))
        inner = r * float(rng.uniform(0.8, 0.95))
        ox, oy = cx + offset * math.cos(angle), cy + offset * math.sin(angle)
        draw.ellipse((ox - inner, oy - inner, ox + inner, oy + inner), fill=0)
    elif label == "pentagon":
        draw.polygon(_polygon(5, r, angle, cx, cy), fill=255)
    elif label == "diamond":  # a rhombus, taller than wide
        half = r * float(rng.uniform(0.45, 0.6))
        draw.polygon(_rotated([(0.0, -r), (half, 0.0), (0.0, r), (-half, 0.0)], angle, cx, cy), fill=255)
    elif label == "ellipse":  # wider than tall
        ry = r * float(rng.uniform(0.45, 0.6))
        draw.polygon(_rotated([(r * math.cos(t), ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 72)],
                              angle, cx, cy), fill=255)
    elif label == "semicircle":  # flat side down
        draw.polygon(_rotated([(r * math.cos(t), r * 0.5 - r * math.sin(t)) for t in np.linspace(0, math.pi, 48)],
                              angle, cx, cy), fill=255)
    elif label == "heart":  # the classic parametric heart, lobes up
        ts = np.linspace(0, 2 * math.pi, 96)
        outline = [(r * 16 * math.sin(t) ** 3 / 17, -r * (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                                         - math.cos(4 * t)) / 17) for t in ts]
        draw.polygon(_rotated(outline, angle, cx, cy), fill=255)
    elif label == "chevron":  # an arrowhead outline pointing right, open at the back
        t, depth = r * float(rng.uniform(0.3, 0.42)), r * float(rng.uniform(0.5, 0.8))
        outline = [(-r + depth, -r), (-r + depth + t, -r), (r, 0.0), (-r + depth + t, r), (-r + depth, r), (r - t, 0.0)]
        draw.polygon(_rotated(outline, angle, cx, cy), fill=255)
    else:
        raise ValueError(f"unknown label {label!r}; expected one of {ALL_LABELS}")
    return mask


# ---- colours and backgrounds ----------------------------------------------------------------
def _luma(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _colour_in(rng: np.random.Generator, band: tuple[float, float]) -> np.ndarray:
    """A random RGB colour whose luma (BT.601) lies in ``band``."""
    for _ in range(256):
        c = rng.integers(0, 256, size=3).astype(np.float32)
        if band[0] <= _luma(c) <= band[1]:
            return c
    return np.full(3, sum(band) / 2, dtype=np.float32)


def _background(rng: np.random.Generator, w: int, h: int, band: tuple[float, float]) -> np.ndarray:
    """A float32 HxWx3 background: solid, a linear gradient or blotches, colours in ``band``."""
    kind = int(rng.integers(0, 3))
    a = _colour_in(rng, band)
    if kind == 0:  # solid
        return np.broadcast_to(a, (h, w, 3)).astype(np.float32)
    b = _colour_in(rng, band)
    if kind == 1:  # linear gradient between two colours
        theta = float(rng.uniform(0, 2 * math.pi))
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xs * math.cos(theta) + ys * math.sin(theta)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    else:  # blotches: a coarse random field, upsampled smoothly
        coarse = rng.random((int(rng.integers(3, 8)), int(rng.integers(3, 8)))).astype(np.float32)
        t = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8), "L").resize((w, h), Image.BICUBIC),
                       dtype=np.float32) / 255.0
    return (a + (b - a) * t[..., None]).astype(np.float32)


def _draw_clutter(image: Image.Image, rng: np.random.Generator, r: float) -> None:
    """Distractors much smaller than the shape, drawn in place: thin line segments and small dots."""
    w, h = image.size
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(0, 6))):
        colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
        x0, y0 = float(rng.uniform(0, w)), float(rng.uniform(0, h))
        if rng.random() < 0.5:
            length, a = float(rng.uniform(0.2, 0.6)) * r, float(rng.uniform(0, 2 * math.pi))
            draw.line([(x0, y0), (x0 + length * math.cos(a), y0 + length * math.sin(a))],
                      fill=colour, width=int(rng.integers(1, 4)))
        else:
            d = float(rng.uniform(0.04, 0.12)) * r
            draw.ellipse((x0 - d, y0 - d, x0 + d, y0 + d), fill=colour)


# ---- rendering ------------------------------------------------------------------------------
def render(label: str, rng: np.random.Generator, size: tuple[int, int] | None = None) -> Image.Image:
    """One RGB image of ``label``; ``size`` is (width, height), random in 200-320 px when None."""
    return render_with_mask(label, rng, size)[0]


def render_with_mask(label: str, rng: np.random.Generator,
                     size: tuple[int, int] | None = None) -> tuple[Image.Image, Image.Image]:
    """:func:`render` and the shape's anti-aliased coverage mask (mode ``L``, 255 = inside)."""
    if label not in ALL_LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {ALL_LABELS}")
    if size is None:
        lo, hi = SOURCE_SIZE_RANGE
        w = int(rng.integers(lo, hi + 1))
        h = int(np.clip(round(w * float(rng.uniform(1 / MAX_ASPECT, MAX_ASPECT))), lo, hi))
        size = (w, h)
    w, h = size

    # Light shape on a dark background or the reverse: the outline always has luma contrast.
    light_shape = rng.random() < 0.5 if POLARITY == "random" else POLARITY == "light-on-dark"
    bg_band, fill_band = (DARK, LIGHT) if light_shape else (LIGHT, DARK)
    bg = _background(rng, w, h, bg_band)
    r = min(w, h) * float(rng.uniform(*SHAPE_RADIUS))
    cx = float(np.clip(w * (0.5 + rng.uniform(-POSITION_JITTER, POSITION_JITTER)), r, w - r))
    cy = float(np.clip(h * (0.5 + rng.uniform(-POSITION_JITTER, POSITION_JITTER)), r, h - r))
    jitter = math.radians(ROTATION_JITTER_DEGREES)
    angle = BASE_ANGLE[label] + float(rng.uniform(-jitter, jitter))
    fill = _colour_in(rng, fill_band)

    # Background, then clutter, then the shape on top (clutter never changes its outline).
    image = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    _draw_clutter(image, rng, r)
    # The mask is drawn at _SUPERSAMPLE x and box-filtered down: anti-aliased edges.
    s = _SUPERSAMPLE
    mask = _shape_mask(label, (w * s, h * s), cx * s, cy * s, r * s, angle, rng).resize((w, h), Image.BOX)
    shade = 1.0 + float(rng.uniform(-0.15, 0.15)) * np.linspace(-1, 1, w, dtype=np.float32)[None, :, None]
    fill_layer = np.broadcast_to(np.clip(fill * shade, 0, 255).astype(np.uint8), (h, w, 3))
    image = Image.composite(Image.fromarray(np.ascontiguousarray(fill_layer), "RGB"), image, mask)

    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    sigma = float(rng.uniform(0, 6))
    if sigma > 0.5:
        noise = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma)
        noisy = np.asarray(image, dtype=np.float32) + noise
        image = Image.fromarray(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), "RGB")
    return image, mask


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode as JPEG and decode again, as a file written by :func:`write_dataset` would be read."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


def write_dataset(out_dir: str | Path, per_class: int, seed: int = DEFAULT_HELDOUT_SEED, split: Split = "heldout",
                  formats: Iterable[str] = ("jpg", "png"), labels: Sequence[str] = LABELS) -> list[Path]:
    """Write ``per_class`` images per label into ``out_dir/<label>/<label>_NNNN.<ext>``.

    Formats alternate per image (``formats[i % len(formats)]``); JPEG quality is random in 75-95.
    Returns the written paths, class by class in ``labels`` order. The same arguments always
    write byte-identical files.
    """
    formats = tuple(f.lower().lstrip(".") for f in formats)
    if not formats or any(f not in ("jpg", "jpeg", "png") for f in formats):
        raise ValueError(f"formats must be a non-empty subset of ('jpg', 'jpeg', 'png'), got {formats}")
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, got {per_class}")
    out = Path(out_dir)
    paths: list[Path] = []
    for label in labels:
        label_index = ALL_LABELS.index(label)  # the seed depends on the class, not on the subset asked for
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = image_rng(seed, split, label_index, i)
            image = render(label, rng)
            ext = formats[i % len(formats)]
            path = folder / f"{label}_{i:04d}.{ext}"
            if ext in ("jpg", "jpeg"):
                image.save(path, format="JPEG", quality=int(rng.integers(75, 96)))
            else:
                image.save(path, format="PNG", compress_level=1)
            paths.append(path)
    return paths

