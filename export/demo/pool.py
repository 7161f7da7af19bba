"""The demo's training data: a pool of rendered shape images (split ``train``), resized once and normalised
per batch by the runtime's own :class:`PreprocessConfig`, and their augmentation."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Sequence

import numpy as np
import torch

from vitmsn.runtime.images.preprocess import PreprocessConfig, to_rgb

from .shapes import LABELS, image_rng, jpeg_roundtrip, render


def _render_chunk(seed: int, jpeg_fraction: float, preprocess: PreprocessConfig, labels: Sequence[str],
                  items: Sequence[tuple[int, int]]) -> np.ndarray:
    out = np.empty((len(items), preprocess.height, preprocess.width, 3), dtype=np.uint8)
    for j, (index, label_index) in enumerate(items):
        rng = image_rng(seed, "train", label_index, index)
        image = render(labels[label_index], rng)
        if rng.random() < jpeg_fraction:
            image = jpeg_roundtrip(image, int(rng.integers(70, 96)))
        out[j] = np.asarray(preprocess.resize(to_rgb(image)))
    return out


def render_pool(count: int, seed: int, jpeg_fraction: float, preprocess: PreprocessConfig,
                labels: Sequence[str] = LABELS, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``count`` class-balanced, shuffled training images, resized (uint8 [N,H,W,3]), and their labels.

    A ``jpeg_fraction`` of them goes through a JPEG encode/decode first, like the held-out files.
    The images are decoded and resized by ``preprocess`` exactly as :meth:`PreprocessConfig.batch`
    does; :func:`normalized` applies the rest (its per-channel lookup table) per batch. Every
    image has its own seeded generator, so ``workers`` processes give the same pool as one.
    """
    order = np.random.default_rng([seed, 1]).permutation(np.arange(count) % len(labels))
    items = [(i, int(k)) for i, k in enumerate(order)]
    chunks = [items[i:i + 250] for i in range(0, len(items), 250)]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool_exec:
            parts = list(pool_exec.map(partial(_render_chunk, seed, jpeg_fraction, preprocess, tuple(labels)), chunks))
    else:
        parts = [_render_chunk(seed, jpeg_fraction, preprocess, labels, c) for c in chunks]
    pool = np.concatenate(parts) if parts else np.empty((0, preprocess.height, preprocess.width, 3), np.uint8)
    return pool, order.astype(np.int64)


def normalized(pool: np.ndarray, idx: np.ndarray, preprocess: PreprocessConfig) -> torch.Tensor:
    out = np.empty((len(idx), 3, preprocess.height, preprocess.width), dtype=np.float32)
    for j, i in enumerate(idx):
        preprocess.normalize_into(pool[i], out[j])
    return torch.from_numpy(out)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip per image (every class keeps its label and its upright pose)."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
