"""The shots' embeddings: each image decoded once through the runtime's own preprocessing, the FP32 PyTorch
backbone run on batches of them, the CLS token after the final LayerNorm kept.

Memory is bounded: pixels live one batch at a time; the embeddings go into one float32 [N, D] array; a
SHA-256 of each image's (decoded, resized) pixels finds duplicates. The decoded pixels decide what
is a duplicate, not the file bytes (the same picture saved twice is the same shot):

* the same pixels in two classes: refused, naming both files (one of the labels is wrong);
* the same pixels twice in one class: the copy is dropped, with a warning (it would weigh twice);
* an unreadable image: refused, listing them, unless ``skip_unreadable``; a class left with no readable
  image is refused either way;
* a class with over :data:`MAX_IMBALANCE` times the shots of another: a warning (class_weight="balanced"
  evens the loss, but the small class's few shots still set its boundary).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vitmsn.core.errors import InputError
from vitmsn.runtime.images.read import ImageError
from vitmsn.runtime.images.preprocess import PreprocessConfig

from .shots import Shots

log = logging.getLogger(__name__)

BATCH = 32
MAX_IMBALANCE = 5.0


@dataclass
class EmbeddedShots:
    embeddings: np.ndarray  # float32 [n, D], one row per kept shot
    labels: list[str]
    files: list[Path]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)  # (dropped, kept: same pixels, same class)
    ignored: int = 0  # files that are not images
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def _readable(shots: Shots, preprocess: PreprocessConfig, found: EmbeddedShots,
              skip_unreadable: bool) -> Iterator[tuple[int, np.ndarray]]:
    """(index into shots, resized uint8 pixels) of each image kept: readable and not a duplicate."""
    seen: dict[bytes, int] = {}
    for i, (path, label) in enumerate(zip(shots.files, shots.labels)):
        try:
            rgb = preprocess.pixels(path)
        except ImageError as exc:
            found.unreadable.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        digest = hashlib.sha256(rgb.tobytes()).digest()
        if digest in seen:
            first = seen[digest]
            if shots.labels[first] != label:
                raise InputError(f"{shots.source}: {path} ({label}) and {shots.files[first]} ({shots.labels[first]}) are "
                                 "the same image (identical decoded pixels) under two classes; keep it in one")
            found.duplicates.append((path, shots.files[first]))
            continue
        seen[digest] = i
        yield i, rgb
    if found.unreadable and not skip_unreadable:
        listed = "; ".join(f"{p} ({why})" for p, why in found.unreadable[:3])
        more = f" and {len(found.unreadable) - 3} more" if len(found.unreadable) > 3 else ""
        raise InputError(f"{shots.source}: {len(found.unreadable)} unreadable image(s): {listed}{more}; "
                         "fix or remove them, or pass --skip-unreadable to go on without them")


def embed_shots(backbone: torch.nn.Module, preprocess: PreprocessConfig, shots: Shots, batch: int = BATCH,
                skip_unreadable: bool = False) -> EmbeddedShots:
    """Embed every readable, distinct shot with ``backbone`` (``(hidden, cls_embedding) = backbone(pixels)``)."""
    started = time.perf_counter()
    found = EmbeddedShots(np.empty((0, 0), np.float32), [], [], ignored=len(shots.ignored))
    rows: np.ndarray | None = None
    kept: list[int] = []
    pixels = np.empty((batch, 3, preprocess.height, preprocess.width), dtype=np.float32)

    def flush(count: int) -> None:
        nonlocal rows
        with torch.inference_mode():
            _, cls = backbone(torch.from_numpy(pixels[:count]))
        if rows is None:  # D is known from the first batch: one array for every shot listed
            rows = np.empty((len(shots.files), cls.shape[1]), dtype=np.float32)
        rows[len(kept) - count:len(kept)] = cls.numpy()

    filled = 0
    for i, rgb in _readable(shots, preprocess, found, skip_unreadable):
        preprocess.normalize_into(rgb, pixels[filled])
        kept.append(i)
        filled += 1
        if filled == batch:
            flush(filled)
            filled = 0
    if filled:
        flush(filled)
    found.labels = [shots.labels[i] for i in kept]
    found.files = [shots.files[i] for i in kept]
    found.embeddings = rows[:len(kept)] if rows is not None else np.empty((0, 0), np.float32)
    found.seconds = time.perf_counter() - started
    _check_classes(shots, found)
    return found


def _check_classes(shots: Shots, found: EmbeddedShots) -> None:
    counts = Counter(found.labels)
    empty = [c for c in shots.classes if counts[c] == 0]
    if empty:
        raise InputError(f"{shots.source}: class {empty[0]!r} has no readable image left "
                         f"({len(found.unreadable)} unreadable skipped); add readable images or remove the class")
    if found.unreadable:
        found.warnings.append(f"{len(found.unreadable)} unreadable image(s) skipped (--skip-unreadable), e.g. "
                              f"{found.unreadable[0][0]} ({found.unreadable[0][1]})")
    for dropped, kept in found.duplicates[:5]:
        found.warnings.append(f"{dropped}: the same image as {kept} (identical pixels, same class); dropped")
    if len(found.duplicates) > 5:
        found.warnings.append(f"{len(found.duplicates) - 5} more duplicate image(s) dropped")
    small, large = min(counts.values()), max(counts.values())
    if large > MAX_IMBALANCE * small:
        found.warnings.append(f"class imbalance {large}:{small} ({counts.most_common()[0][0]!r} vs "
                              f"{counts.most_common()[-1][0]!r}): over {MAX_IMBALANCE:g}x; the small class's few "
                              "shots set its boundary, add shots to it")
    for line in found.warnings:
        log.warning("%s: %s", shots.source, line)
