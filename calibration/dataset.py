"""A calibration set: N preprocessed images as one float32 tensor, built once and cached.

The images are preprocessed by :class:`vitmsn.runtime.images.preprocess.PreprocessConfig` built from
the manifest's ``preprocess`` block, the same code the runtime serves with, so
INT8 scales are calibrated on exactly the inputs the deployed model will see.

The cache is one ``.npz`` per (file list, preprocess block, sample count, seed, hold-out), read back
with ``np.load(allow_pickle=False)`` and verified before use (:mod:`.cache`); a cache that fails is
rebuilt from the images with a warning naming it.

With ``hold_out`` a seeded, stratified part of the folder is set aside (``heldout``) and never
calibrates: the export's drift gates run on it, out of sample.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vitmsn.core.errors import InputError
from vitmsn.core.progress import Progress
from vitmsn.runtime.images.preprocess import PreprocessConfig, preprocess_files

from . import cache
from .cache import tensor_sha256, tensor_stats
from .images import discover_images, file_list_digest, heldout_split, sample_order, strata_of

if TYPE_CHECKING:
    from .reader import CalibrationReader

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 128
DEFAULT_MIN_IMAGES = 16
DEFAULT_SEED = 0


def default_cache_dir() -> Path:
    """``calibration/`` in vitmsn's cache directory (:func:`vitmsn.core.cache_dir.cache_root`)."""
    from vitmsn.core.cache_dir import cache_root

    return cache_root() / "calibration"


@dataclass(frozen=True)
class CalibrationOptions:
    """How to draw a calibration set from an image directory."""

    samples: int = DEFAULT_SAMPLES
    seed: int = DEFAULT_SEED
    min_images: int = DEFAULT_MIN_IMAGES  # fewer usable images than this is an error (exit 2)
    cache_dir: Path | None = None  # None: default_cache_dir(); use_cache=False: no cache at all
    use_cache: bool = True
    progress: bool = True
    hold_out: bool = False  # set images aside for the drift gates (images.heldout_split); they never calibrate

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise InputError(f"--calib-samples {self.samples}: must be at least 1")
        if self.min_images < 1:
            raise InputError(f"calibration min_images {self.min_images}: must be at least 1")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration images and where they came from.

    ``tensors`` is float32 [N, 3, H, W]; ``files`` are paths relative to ``source``;
    ``classes`` is each image's class folder ("" when the folder is not class-structured);
    ``skipped`` lists ``(relative path, reason)`` of unreadable images that were replaced.
    """

    tensors: np.ndarray
    files: tuple[str, ...]
    classes: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    source: str
    seed: int
    requested: int
    candidates: int
    stratified: bool
    cache_file: str | None = None
    from_cache: bool = False
    heldout: tuple[str, ...] = ()  # relative paths set aside for the drift gates (hold_out)
    heldout_classes: tuple[str, ...] = ()
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha256", tensor_sha256(self.tensors))

    def __len__(self) -> int:
        return int(self.tensors.shape[0])

    def reader(self, batch_size: int = 8, input_name: str = "pixel_values") -> "CalibrationReader":
        from .reader import CalibrationReader

        return CalibrationReader(self.tensors, batch_size=batch_size, input_name=input_name)

    def per_class(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for c in self.classes:
            counts[c] = counts.get(c, 0) + 1
        return dict(sorted(counts.items()))

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's record of this set (what the INT8 entry and the report cite)."""
        return {
            "source": self.source,
            "count": len(self),
            "requested": self.requested,
            "candidates": self.candidates,
            "seed": self.seed,
            "stratified": self.stratified,
            "per_class": self.per_class() if self.stratified else {},
            "tensor_sha256": self.sha256,
            "shape": list(self.tensors.shape),
            "skipped_count": len(self.skipped),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "cache_file": self.cache_file,
            "from_cache": self.from_cache,
            "dtype": str(self.tensors.dtype),
            "stats": tensor_stats(self.tensors),
            "heldout": {"count": len(self.heldout), "seed": self.seed, "source": self.source,
                        "rule": "seeded split, stratified by class folder; never calibrates"} if self.heldout else None,
        }


def calibration_set_from_directory(images: str | os.PathLike[str], preprocess_block: dict[str, Any],
                                   options: CalibrationOptions = CalibrationOptions()) -> CalibrationSet:
    """Draw ``options.samples`` images from ``images`` and preprocess them as the manifest says.

    Unreadable images are skipped and replaced by the next candidate (same class first); they
    are listed in ``skipped``. Raises :class:`InputError` when the folder has no images or fewer
    than ``options.min_images`` usable ones.
    """
    root = Path(images)
    if not root.is_dir():
        raise InputError(f"--calib-images {root}: no such directory")
    files = discover_images(root)
    if not files:
        raise InputError(f"--calib-images {root}: no images found (looked for "
                         "jpg, jpeg, png, webp, bmp, tif, tiff, recursively)")
    stratified = strata_of(root, files) is not None
    preprocess = PreprocessConfig.from_manifest(preprocess_block)
    all_files = files  # the cache key covers the whole folder
    heldout: list[Path] = []
    if options.hold_out:
        files, heldout = heldout_split(root, files, options.samples, options.seed)
    held = dict(heldout=tuple(p.relative_to(root).as_posix() for p in heldout),
                heldout_classes=tuple(p.relative_to(root).parts[0] if stratified else "" for p in heldout))
    order = sample_order(root, files, options.samples, options.seed)
    target = min(options.samples, len(files))
    cache_path = None
    if options.use_cache:
        key = cache.cache_key(file_list_digest(root, all_files), preprocess_block, options.samples, options.seed,
                              options.hold_out)
        cache_path = Path(options.cache_dir or default_cache_dir()) / f"calib-{key[:32]}.npz"
        if cache_path.is_file():
            try:
                tensors, names, classes, skipped_c = cache.load_verified(
                    cache_path, root, preprocess, [p.relative_to(root).as_posix() for p in order.candidates()], target)
            except cache.CacheRejected as exc:
                log.warning("calibration cache %s: %s; rebuilding it from the images in %s", cache_path, exc, root)
            else:
                cached = CalibrationSet(tensors, names, classes, skipped_c, str(root), options.seed, options.samples,
                                        len(files), stratified, cache_file=str(cache_path), from_cache=True, **held)
                log.info("calibration set from cache %s (%d images)", cache_path, len(cached))
                _check_minimum(root, cached, options)
                return cached

    candidates = list(order.candidates())  # the sample, then reserves read only as far as skipped images need them
    with Progress("calibration images", target, unit="img", enabled=options.progress) as bar:
        tensors, ok, bad = preprocess_files(preprocess, candidates, root, limit=target, on_read=bar.update)
    chosen = [candidates[i] for i in ok]
    skipped = [(s["image"], s["reason"]) for s in bad]
    cs = CalibrationSet(
        tensors.copy(), tuple(p.relative_to(root).as_posix() for p in chosen),
        tuple(order.stratum_of.get(p, "") for p in chosen), tuple(skipped), str(root), options.seed,
        options.samples, len(files), stratified, cache_file=str(cache_path) if cache_path else None, **held)
    for f, reason in skipped:
        log.warning("calibration: skipped %s (%s)", f, reason)
    _check_minimum(root, cs, options)
    if cache_path is not None:
        cache.save(cache_path, cs.tensors, cs.files, cs.classes, cs.skipped)
    return cs



def _check_minimum(root: Path, cs: CalibrationSet, options: CalibrationOptions) -> None:
    if len(cs) < options.min_images:
        listed = "; ".join(f"{f} ({r})" for f, r in cs.skipped[:5])
        raise InputError(
            f"--calib-images {root}: only {len(cs)} usable image{'' if len(cs) == 1 else 's'}, "
            f"at least {options.min_images} {'is' if options.min_images == 1 else 'are'} needed"
            + (f" ({len(cs.heldout)} more are held out for the drift gates; with --validate-images DIR the gates run "
               "on those images instead)" if cs.heldout else "")
            + (f"; {len(cs.skipped)} could not be read: {listed}" if cs.skipped else "")
            + "; add images or lower the minimum")
