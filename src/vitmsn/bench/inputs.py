"""Deterministic benchmark inputs: synthetic photographs as JPEG bytes, and their pixel values.

The images are smooth colour fields with texture (not white noise), 500x375 like a typical
photo, encoded as JPEG at quality 90, so the end-to-end mode decodes, resizes and normalises
what a server would receive. Pixel values come from the same images through the manifest's
preprocessing, so the model-only rows and the correctness check see realistic value ranges.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PHOTO_SIZE = (500, 375)


def jpeg_images(count: int, seed: int = 0, size: tuple[int, int] = PHOTO_SIZE, quality: int = 90) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC)
        texture = rng.normal(0, 12, size=(size[1], size[0], 3))
        pixels = np.clip(np.asarray(smooth, dtype=np.float64) + texture, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out
