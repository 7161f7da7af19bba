"""TensorRT's builder timing cache: attached checked, saved merged (issue 15).

TensorRT refuses a timing cache written on another GPU or release (``set_timing_cache`` returns
False); a build then starts a fresh cache and says so. Several builds may share one cache file: at
save time what another build wrote meanwhile is merged in (``ITimingCache.combine``) before the
file is replaced atomically, so no build's measured tactics are lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitmsn.runtime.manifest import write_bytes_atomic


def attach_timing_cache(config: Any, path: Path, notes: list[str]) -> Any:
    """Load ``path`` (if any) into a timing cache and attach it. TensorRT refuses a cache written on
    another GPU or release (``set_timing_cache`` returns False): then a fresh cache is used, with a note."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, False):
        return cache
    notes.append(f"timing cache {path} was refused (written on another GPU or TensorRT release); starting a fresh one")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise RuntimeError("TensorRT refused an empty timing cache")
    return cache


def save_timing_cache(config: Any, path: Path, notes: list[str]) -> None:
    """Write the build's timing cache to ``path``, merged with what another build wrote there meanwhile
    (``combine``; entries TensorRT cannot merge are dropped with a note), atomically."""
    ours = config.get_timing_cache()
    if ours is None:
        notes.append("the builder returned no timing cache; nothing saved")
        return
    if path.is_file():
        theirs = config.create_timing_cache(path.read_bytes())
        if theirs is None or not ours.combine(theirs, False):
            notes.append(f"timing cache {path}: entries written meanwhile by another GPU or release were not merged")
    write_bytes_atomic(path, bytes(memoryview(ours.serialize())))
