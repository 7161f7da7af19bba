"""The calibration cache: one ``.npz`` per calibration set, verified before it is used.

A cache is a file anyone who can write the cache folder can replace, and an INT8 graph calibrated
on replaced tensors is wrong in ways a drift gate may not see. So a cache records what its tensors
are (SHA-256, shape, dtype, min/max/mean/std, all finite) in a JSON ``meta`` entry, and
:func:`load_verified` uses it only when all of this holds:

* plain arrays (``np.load(allow_pickle=False)``: nothing that can run code), float32 exactly;
* the shape the preprocess block makes, ``[N, 3, H, W]``, with N the count the sample must have
  (no fewer rows than the images give) and the very files the seeded sample draws;
* SHA-256 and statistics as recorded; every value finite and inside the range the preprocessing
  can produce from 8-bit pixels;
* a few rows, chosen at random on every load, equal to their images preprocessed afresh (a cache
  whose tensors and record were both rewritten, zeros say, fails here).

Anything else is reported (a warning naming the cache file and what is wrong) and the set is
rebuilt from the images, overwriting the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitmsn.runtime.manifest import atomic_path
from vitmsn.runtime.images.preprocess import PreprocessConfig

log = logging.getLogger(__name__)

CACHE_FORMAT = 2
SPOT_CHECK_ROWS = 4
SPOT_CHECK_ATOL = 1e-3  # a Pillow upgrade may move resampled values by a few 1e-6; poisoning moves them by far more


class CacheRejected(Exception):
    """Why a cache file cannot be used (the message is the warning's reason)."""


def tensor_sha256(tensors: np.ndarray) -> str:
    """SHA-256 of the calibration tensors: dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(tensors)
    digest = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    digest.update(a.tobytes())
    return digest.hexdigest()


def tensor_stats(tensors: np.ndarray) -> dict[str, Any]:
    """min, max, mean, std (float64) and whether every value is finite."""
    a = np.asarray(tensors, dtype=np.float64)
    finite = bool(np.isfinite(a).all())
    if not finite or a.size == 0:
        return {"finite": finite, "min": None, "max": None, "mean": None, "std": None}
    return {"finite": True, "min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()), "std": float(a.std())}


def cache_key(files_digest: str, preprocess_block: dict[str, Any], samples: int, seed: int, hold_out: bool) -> str:
    block = json.dumps(preprocess_block, sort_keys=True, default=str)
    text = (f"format={CACHE_FORMAT}\nfiles={files_digest}\npreprocess={block}\nsamples={samples}\nseed={seed}\n"
            f"hold_out={hold_out}\n")
    return hashlib.sha256(text.encode()).hexdigest()


def save(path: Path, tensors: np.ndarray, files: Sequence[str], classes: Sequence[str],
         skipped: Sequence[tuple[str, str]]) -> None:
    meta = {"format": CACHE_FORMAT, "sha256": tensor_sha256(tensors), "shape": list(tensors.shape),
            "dtype": str(tensors.dtype), "stats": tensor_stats(tensors)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # np.savez would append ".npz" to a path without it
            np.savez(f, tensors=tensors, files=np.array(list(files), dtype=str),
                     classes=np.array(list(classes), dtype=str),
                     skipped=np.array([list(s) for s in skipped], dtype=str).reshape(-1, 2),
                     meta=np.array(json.dumps(meta)))


def load_verified(path: Path, root: Path, preprocess: PreprocessConfig, expected_files: list[str],
                  count: int) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(tensors, files, classes, skipped) of a cache that passes every check above; else :class:`CacheRejected`.

    ``expected_files``: the sample's candidates in the order they are tried (relative POSIX paths);
    ``count``: the number of images the sample wants (``min(samples, candidates)``).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"tensors", "files", "classes", "skipped", "meta"} - set(z.files)
            if missing:
                raise CacheRejected(f"no {', '.join(sorted(missing))} (written by an older vitmsn or another tool)")
            tensors = z["tensors"]
            files = tuple(str(f) for f in z["files"])
            classes = tuple(str(c) for c in z["classes"])
            skipped = tuple((str(f), str(r)) for f, r in z["skipped"].reshape(-1, 2))
            meta = json.loads(str(z["meta"]))
    except CacheRejected:
        raise
    except (OSError, KeyError, ValueError, EOFError, TypeError) as exc:
        raise CacheRejected(f"unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise CacheRejected(f"format {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {CACHE_FORMAT}")
    if tensors.dtype != np.float32:
        raise CacheRejected(f"tensors are {tensors.dtype}, expected float32")
    shape = (3, preprocess.height, preprocess.width)
    if tensors.ndim != 4 or tuple(tensors.shape[1:]) != shape:
        raise CacheRejected(f"tensors have shape {list(tensors.shape)}, expected [N, {', '.join(map(str, shape))}]")
    skipped_names = {f for f, _ in skipped}
    if not skipped_names <= set(expected_files):
        raise CacheRejected("it lists skipped images that are not candidates of this sample")
    for name in sorted(skipped_names):  # an image marked unreadable that reads fine would shrink the sample
        try:
            preprocess(root / name)
        except Exception:  # noqa: BLE001 - unreadable, as recorded
            continue
        raise CacheRejected(f"it lists {name} as unreadable, but it reads fine")
    usable = [f for f in expected_files if f not in skipped_names]
    want = min(count, len(usable))
    if tensors.shape[0] != want:
        raise CacheRejected(f"{tensors.shape[0]} rows, the sample has {want} images")
    if list(files) != usable[:want] or len(classes) != want:
        raise CacheRejected("its file list is not the seeded sample of these images")
    if meta.get("sha256") != tensor_sha256(tensors) or meta.get("shape") != list(tensors.shape):
        raise CacheRejected("tensors do not match their recorded SHA-256 and shape")
    stats = tensor_stats(tensors)
    if not stats["finite"]:
        raise CacheRejected("tensors hold NaN or infinite values")
    recorded = meta.get("stats") or {}
    if any(not isinstance(recorded.get(k), (int, float)) or not math.isclose(stats[k], recorded[k], rel_tol=1e-9,
                                                                                abs_tol=1e-12)
           for k in ("min", "max", "mean", "std")):
        raise CacheRejected("tensor statistics differ from the recorded ones")
    _check_range(tensors, preprocess)
    _spot_check(tensors, files, root, preprocess)
    return np.ascontiguousarray(tensors), files, classes, skipped


def _check_range(tensors: np.ndarray, preprocess: PreprocessConfig) -> None:
    """Every value inside what the preprocessing makes of 8-bit pixels ([0, 255] rescaled, normalized)."""
    scale = float(preprocess.rescale_factor) if preprocess.do_rescale else 1.0
    mean = np.asarray(preprocess.image_mean if preprocess.do_normalize else (0, 0, 0), dtype=np.float64).reshape(3)
    std = np.asarray(preprocess.image_std if preprocess.do_normalize else (1, 1, 1), dtype=np.float64).reshape(3)
    lo, hi = (0.0 - mean) / std, (255.0 * scale - mean) / std
    lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
    tol = 1e-3 * np.maximum(1.0, hi - lo)
    for c in range(3):
        ch = tensors[:, c]
        if ch.size and (ch.min() < lo[c] - tol[c] or ch.max() > hi[c] + tol[c]):
            raise CacheRejected(f"channel {c} holds values outside [{lo[c]:.4g}, {hi[c]:.4g}], which the "
                                "preprocessing cannot produce")


def _spot_check(tensors: np.ndarray, files: Sequence[str], root: Path, preprocess: PreprocessConfig) -> None:
    rows = list(range(len(files)))
    for _ in range(min(SPOT_CHECK_ROWS, len(rows))):
        i = rows.pop(secrets.randbelow(len(rows)))  # unpredictable: a partly rewritten cache cannot dodge it
        try:
            fresh = preprocess(root / files[i])
        except Exception as exc:  # noqa: BLE001 - the image changed under the cache (its mtime would say so)
            raise CacheRejected(f"row {i} ({files[i]}) cannot be checked: {exc}") from None
        if not np.allclose(tensors[i], fresh, rtol=0.0, atol=SPOT_CHECK_ATOL):
            raise CacheRejected(f"row {i} differs from {files[i]} preprocessed afresh "
                                f"(max abs diff {float(np.abs(tensors[i] - fresh).max()):.3g})")
