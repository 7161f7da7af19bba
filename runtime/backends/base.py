"""The one protocol every inference backend implements, and the choice that names what a runner loads.

A runner turns a feed ``{input name: array}`` into ``{output name: array}``. It owns whatever the
backend needs (an ONNX Runtime session, a TensorRT engine with its device buffers) between
``activate()`` and ``deactivate()``, and is a context manager doing both. ``infer`` may be called
from several threads at once: a runner whose backend is not re-entrant serialises internally.
The conformance test (tests/test_runtime_runners.py) runs every available backend through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..manifest.entries import EngineEntry, FileRef


@dataclass(frozen=True)
class TensorMeta:
    """One input or output as the backend declares it; symbolic dims are strings (e.g. ``batch``)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str, ...]


@dataclass(frozen=True)
class Choice:
    """What to run: a backend, a precision and the file it loads (selection makes one; the registry loads it)."""

    backend: str  # "onnxruntime", "openvino" or "tensorrt"
    precision: str
    file: str  # relative to the artifacts directory
    sha256: str
    engine: EngineEntry | None = None
    providers: tuple[str, ...] = ()
    inference_precision: str | None = None  # OpenVINO only: "f32" or "bf16", what the CPU runs
    notes: tuple[str, ...] = field(default=())
    verdict: str | None = None  # the line for a precision whose latest verdict is not plainly passed (selection's)

    @property
    def ref(self) -> FileRef:
        """The file to load, as the manifest names it (verify it with :meth:`Manifest.verify`)."""
        return FileRef(self.file, self.sha256)


@runtime_checkable
class Runner(Protocol):
    name: str  # the backend as reports name it: "onnxruntime", "tensorrt", "tensorrt-rtx"
    precision: str  # "fp32", "fp16" or "int8"
    max_batch: int | None  # the largest batch one infer call accepts (None: unbounded)

    @property
    def is_active(self) -> bool: ...

    def activate(self) -> None: ...

    def get_input_metadata(self) -> dict[str, TensorMeta]: ...

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate(self) -> None: ...

    def __enter__(self) -> "Runner": ...

    def __exit__(self, *exc: Any) -> None: ...


class RunnerBase:
    """Shared lifecycle: activation state and the context manager. Subclasses implement
    ``_activate``, ``_deactivate``, ``get_input_metadata`` and ``_infer``."""

    name = "base"
    precision = "fp32"
    max_batch: int | None = None

    def __init__(self) -> None:
        self._active = False
        self._inputs: dict[str, TensorMeta] = {}  # filled by _activate
        self._output_names: list[str] = []

    def get_input_metadata(self) -> dict[str, TensorMeta]:
        if not self._inputs:
            raise RuntimeError("activate the runner before asking for its input metadata")
        return dict(self._inputs)

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    @property
    def is_active(self) -> bool:
        return self._active

    def activate(self) -> None:
        if not self._active:
            self._activate()
            self._active = True

    def deactivate(self) -> None:
        if self._active:
            self._active = False
            self._deactivate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise RuntimeError(f"{self.name} runner is not active; call activate() or use it in a with block")
        return self._infer(feed)

    def __enter__(self) -> "RunnerBase":
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"<{type(self).__name__} {self.name} {self.precision} {state}>"

    # ---- for subclasses ------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


def cast_feed(inputs: dict[str, TensorMeta], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` as the model's input dtypes, contiguous; InputError naming a missing input."""
    from vitmsn.core.errors import InputError

    cast = {}
    for name, meta in inputs.items():
        if name not in feed:
            raise InputError(f"missing input {name!r}; the model takes {sorted(inputs)}")
        cast[name] = np.ascontiguousarray(feed[name], dtype=meta.dtype)
    return cast
