"""The slim runtime: preprocessing and inference on ONNX Runtime or TensorRT.

Needs only numpy, Pillow and one backend; never imports torch, onnx, transformers or click
(tests/test_runtime_imports.py proves it in a fresh interpreter). Names are loaded lazily, so
``import vitmsn.runtime`` costs almost nothing and a backend is imported only when it is used.

    from vitmsn.runtime import Predictor
    with Predictor.from_artifacts("artifacts/demo") as p:
        print(p.predict(["cat.jpg"], top_k=3))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Predictor": "predictor",
    "Prediction": "predictor",
    "MicroBatcher": "batching",
    "QueueFull": "batching",
    "BatcherClosed": "batching",
    "PreprocessConfig": "images.preprocess",
    "ImageError": "images.preprocess",
    "Manifest": "manifest",
    "Runner": "backends.base",
    "TensorMeta": "backends.base",
    "choose": "selection",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from .batching import BatcherClosed, MicroBatcher, QueueFull
    from .manifest import Manifest
    from .predictor import Prediction, Predictor
    from .images.preprocess import ImageError, PreprocessConfig
    from .backends.base import Runner, TensorMeta
    from .selection import choose


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vitmsn.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
