"""The one definition of an exported ViTMSN's I/O: names, symbolic axes, dtypes and tolerances.

Everything else (the dynamo export call, the staged ONNX checks, the manifest's ``inputs`` and
``outputs``, the TensorRT optimization profile) is derived from an :class:`ExportSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vitmsn.export.fp32.model import ViTMSNArch
from vitmsn.export.fp32.tolerances import ATOL_FP32, RTOL_FP32  # noqa: F401  (part of the spec)

Task = Literal["image-classification", "feature-extraction"]
TASKS: tuple[Task, ...] = ("image-classification", "feature-extraction")

BATCH_AXIS = "batch"
INPUT_NAME = "pixel_values"
DEFAULT_OPSET = 18
SUPPORTED_OPSETS = range(17, 21)

# Batch sizes the export is re-validated at, proving the batch axis is really dynamic.
CHECK_BATCH_SIZES = (1, 3, 8)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class BatchRange:
    """A TensorRT-style optimization profile for the batch axis."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {self.min}:{self.opt}:{self.max}")

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        parts = text.split(":")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"expected MIN:OPT:MAX with three positive integers (e.g. 1:8:32), got {text!r}")
        return cls(*(int(p) for p in parts))

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class ExportSpec:
    arch: ViTMSNArch
    task: Task
    num_labels: int = 0

    @property
    def input(self) -> TensorSpec:
        a = self.arch
        return TensorSpec(INPUT_NAME, (BATCH_AXIS, a.num_channels, a.image_size, a.image_size))

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        d = self.arch.hidden_size
        embedding = TensorSpec("embedding", (BATCH_AXIS, d))
        if self.task == "image-classification":
            return (TensorSpec("logits", (BATCH_AXIS, self.num_labels)), embedding)
        return (TensorSpec("last_hidden_state", (BATCH_AXIS, self.arch.num_patches + 1, d)), embedding)

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    def io_dict(self) -> dict[str, list[dict[str, object]]]:
        return {"inputs": [self.input.to_dict()], "outputs": [o.to_dict() for o in self.outputs]}
