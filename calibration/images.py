"""Finding calibration images and drawing a deterministic, stratified sample of them.

numpy only (no Pillow here: decoding happens in :mod:`.dataset` through the runtime's
preprocessing). A folder is *class-structured* when every image sits in a first-level
sub-folder and there are at least two of them (``root/<class>/.../*.jpg``); sampling is then
stratified by that sub-folder, so every class keeps its share of the sample.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
HELDOUT_FRACTION = 0.25  # of a folder too small to give both the calibration sample and gating images in full
HELDOUT_MAX = 256  # images the drift gates run on, at most (each is run through every graph)


def discover_images(root: str | os.PathLike[str]) -> list[Path]:
    """Every image file under ``root`` (recursive, extension case-insensitive), sorted by relative path.

    Hidden files and folders (name starting with ".") are skipped. Symbolic links to files are
    followed; links to folders are not (no cycles).
    """
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def strata_of(root: str | os.PathLike[str], files: Sequence[Path]) -> dict[str, list[Path]] | None:
    """``{sub-folder name: files}`` when the folder is class-structured, else None."""
    root = Path(root)
    groups: dict[str, list[Path]] = {}
    for f in files:
        parts = f.relative_to(root).parts
        if len(parts) < 2:
            return None  # an image at the top level: not class-structured
        groups.setdefault(parts[0], []).append(f)
    return groups if len(groups) >= 2 else None


def _stable_seed(seed: int, key: str) -> list[int]:
    """A seed sequence for ``np.random.default_rng`` that depends only on ``seed`` and ``key``."""
    digest = hashlib.sha256(key.encode()).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def allocate(total: int, sizes: dict[str, int]) -> dict[str, int]:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder, ties by name).

    No group gets more than it has; what a small group cannot take goes to the others.
    """
    quota = {k: 0 for k in sizes}
    remaining = min(total, sum(sizes.values()))
    while remaining > 0:
        open_groups = {k: n - quota[k] for k, n in sizes.items() if n > quota[k]}
        weight = sum(open_groups.values())
        shares = {k: remaining * n / weight for k, n in open_groups.items()}
        granted = {k: min(int(s), open_groups[k]) for k, s in shares.items()}
        left = remaining - sum(granted.values())
        by_remainder = sorted(open_groups, key=lambda k: (-(shares[k] - int(shares[k])), k))
        for k in by_remainder:
            if left == 0:
                break
            if granted[k] < open_groups[k]:
                granted[k] += 1
                left -= 1
        for k, g in granted.items():
            quota[k] += g
        remaining = left if sum(granted.values()) else 0
    return quota


@dataclass(frozen=True)
class SampleOrder:
    """The order in which candidate images are tried: ``primary`` first, then ``reserve``.

    ``primary`` is the stratified sample of the requested size (classes interleaved, so any
    prefix stays balanced); ``reserve`` replaces images that turn out to be unreadable,
    same-class reserves first.
    """

    primary: tuple[Path, ...]
    reserve_by_stratum: dict[str, tuple[Path, ...]]
    stratum_of: dict[Path, str]

    def candidates(self) -> Iterator[Path]:
        yield from self.primary
        # Reserves: round-robin over strata so replacements keep the balance as far as possible.
        queues = [list(v) for _, v in sorted(self.reserve_by_stratum.items())]
        while any(queues):
            for q in queues:
                if q:
                    yield q.pop(0)


def sample_order(root: str | os.PathLike[str], files: Sequence[Path], samples: int, seed: int) -> SampleOrder:
    """A deterministic sample of ``samples`` files (all of them when fewer), stratified by class folder."""
    strata = strata_of(root, files) or {"": list(files)}
    permuted = {}
    for name, group in sorted(strata.items()):
        rng = np.random.default_rng(_stable_seed(seed, name))
        permuted[name] = [group[i] for i in rng.permutation(len(group))]
    quota = allocate(samples, {k: len(v) for k, v in permuted.items()})
    chosen = {k: v[: quota[k]] for k, v in permuted.items()}
    primary: list[Path] = []
    for i in range(max((len(v) for v in chosen.values()), default=0)):
        primary.extend(v[i] for _, v in sorted(chosen.items()) if i < len(v))
    reserve = {k: tuple(v[quota[k]:]) for k, v in permuted.items()}
    stratum_of = {f: k for k, v in permuted.items() for f in v}
    return SampleOrder(tuple(primary), reserve, stratum_of)


def heldout_count(n: int, samples: int) -> int:
    """How many of ``n`` images to hold out for the drift gates when ``samples`` are wanted for calibration:
    what the sample leaves (at most :data:`HELDOUT_MAX`), but never less than a quarter of the folder."""
    if n < 2:
        return 0
    return min(HELDOUT_MAX, max(math.ceil(n * HELDOUT_FRACTION), n - samples), n - 1)


def heldout_split(root: str | os.PathLike[str], files: Sequence[Path], samples: int,
                  seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded, disjoint split of ``files`` into (calibration candidates, held-out images), stratified by
    class folder like :func:`sample_order`, both in ``files`` order. The held-out images never calibrate:
    the export's drift gates run on them, out of sample."""
    strata = strata_of(root, files) or {"": list(files)}
    quota = allocate(heldout_count(len(files), samples), {k: len(v) for k, v in strata.items()})
    held: set[Path] = set()
    for name, group in sorted(strata.items()):
        rng = np.random.default_rng(_stable_seed(seed, f"heldout/{name}"))
        held.update(group[i] for i in rng.permutation(len(group))[: quota[name]])
    return [f for f in files if f not in held], [f for f in files if f in held]


def file_list_digest(root: str | os.PathLike[str], files: Sequence[Path]) -> str:
    """SHA-256 over the relative path, size and modification time of every candidate file.

    Any added, removed, renamed, rewritten or touched image changes it (and so the cache key).
    """
    root = Path(root)
    digest = hashlib.sha256()
    for f in files:
        st = f.stat()
        digest.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()
