"""vitmsn's one cache directory: ``$VITMSN_CACHE``, else ``$XDG_CACHE_HOME/vitmsn``, else ``~/.cache/vitmsn``.

It holds ``calibration/`` (preprocessed calibration tensors, about 92 MB per model at 128 images of 224x224),
``tensorrt-rtx/`` (TensorRT-RTX runtime caches) and ``ort-tensorrt/`` (ONNX Runtime's TensorRT provider
caches). ``vitmsn cache`` shows it and ``vitmsn cache --clear`` empties it. ``VITMSN_CACHE_DIR``, the
calibration cache's former variable, still works (same meaning) with a deprecation note. Standard library only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)
VARIABLE = "VITMSN_CACHE"
DEPRECATED = "VITMSN_CACHE_DIR"
_noted = False


def cache_root() -> Path:
    global _noted
    if os.environ.get(VARIABLE):
        return Path(os.environ[VARIABLE]).expanduser()
    if os.environ.get(DEPRECATED):
        if not _noted:
            log.warning("%s is deprecated: set %s instead (same directory)", DEPRECATED, VARIABLE)
            _noted = True
        return Path(os.environ[DEPRECATED]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vitmsn"
