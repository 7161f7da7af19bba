"""The calibration data reader: a plain iterable of ``{input_name: batch}`` feeds.

It is also an ONNX Runtime ``CalibrationDataReader`` in all but name: ``get_next()`` returns the
next feed or None, ``rewind()`` starts over. ModelOpt and ``onnxruntime.quantization`` accept
it through :func:`as_ort_reader`, which wraps it in their base class only when asked (so this
module imports neither).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np


def even_batch_size(n: int, preferred: int = 8) -> int:
    """The largest batch size <= ``preferred`` that divides ``n``.

    Calibrators that stack per-batch statistics (ONNX Runtime's histogram collector) or drop a
    ragged last batch (ModelOpt's data provider) then see every image exactly once.
    """
    if n < 1:
        raise ValueError(f"need at least one sample, got {n}")
    return max(b for b in range(1, min(preferred, n) + 1) if n % b == 0)


class CalibrationReader:
    def __init__(self, tensors: np.ndarray, batch_size: int = 8, input_name: str = "pixel_values") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tensors = np.ascontiguousarray(tensors, dtype=np.float32)
        self.batch_size = batch_size
        self.input_name = input_name
        self._next = 0
        self._end = len(self.tensors)

    def __len__(self) -> int:
        """Number of batches."""
        return -(-len(self.tensors) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only batches ``start_index`` to ``end_index`` (exclusive) from now on: ONNX Runtime's strided
        calibration (``CalibStridedMinMax``) collects one range at a time."""
        self._next, self._end = start_index * self.batch_size, min(end_index * self.batch_size, len(self.tensors))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.tensors), self.batch_size):
            yield {self.input_name: self.tensors[start:start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        batch = self.tensors[self._next:self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._next, self._end = 0, len(self.tensors)


def as_ort_reader(reader: CalibrationReader) -> Any:
    """``reader`` as an ``onnxruntime.quantization.CalibrationDataReader`` (which checks isinstance)."""
    from onnxruntime.quantization import CalibrationDataReader

    class _OrtReader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return reader.get_next()

        def rewind(self) -> None:
            reader.rewind()

        def set_range(self, start_index: int, end_index: int) -> None:
            reader.set_range(start_index, end_index)

        def __len__(self) -> int:
            return len(reader)

    reader.rewind()
    return _OrtReader()
