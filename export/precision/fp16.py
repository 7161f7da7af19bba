"""FP32 ONNX -> FP16 ONNX with NVIDIA ModelOpt's AutoCast, keeping what must stay FP32 in FP32.

TensorRT 11 has no FP16 builder flag: precision is written into the graph, and a strongly typed
network runs each layer in the type the graph gives it. AutoCast converts node by node and keeps
a node in FP32 when a rule says so. The rules used here guard the known ViT FP16 failure, a
LayerNorm (or any reduction over the hidden axis) whose sum of squares or residual input
overflows FP16's 65504:

* op types: ``LayerNormalization`` and the ops of a decomposed LayerNorm (ReduceMean, Pow, Sqrt,
  ReduceSumSquare, ...) always stay FP32 (TensorRT then runs the normalisation in FP32, its own
  recommendation for transformer models);
* values: AutoCast runs the FP32 graph with ONNX Runtime on reference inputs (real calibration
  images when there are some) and keeps every node whose inputs or outputs exceed ``data_max``
  in magnitude (default 512, so that a x128 growth inside the node still fits FP16) in FP32;
* initializers larger than FP16's range keep their node in FP32.

Every node that stayed FP32 is read from the converted graph (ONNX type inference) and returned with
AutoCast's reason where its log gives one, for the manifest.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vitmsn.runtime.manifest import atomic_path

from vitmsn.export.precision.modelopt_quirks import captured_modelopt_logs
from vitmsn.export.onnx_file import save_onnx

log = logging.getLogger(__name__)

IO_DTYPES = ("float32", "float16")
# LayerNorm and the pieces of a decomposed LayerNorm: the reductions that overflow in FP16.
LAYERNORM_OP_TYPES = ("LayerNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt")
DEFAULT_DATA_MAX = 512.0
DEFAULT_REFERENCE_SAMPLES = 16
_SKIPPED = re.compile(r"^Skipping node (\S+): (.*)$")
_RULE_REASONS = {
    "DisabledOpTypes": "op type kept in FP32 (LayerNorm/reduction overflow protection)",
    "DisabledNodeNameRegexRule": "excluded by name",
}


@dataclass(frozen=True)
class Fp16Options:
    io_dtype: str = "float32"  # "float16": the graph's inputs and outputs become FP16 too
    keep_fp32_op_types: tuple[str, ...] = LAYERNORM_OP_TYPES
    keep_fp32_nodes: tuple[str, ...] = ()  # regular expressions over node names
    data_max: float = DEFAULT_DATA_MAX
    reference_samples: int = DEFAULT_REFERENCE_SAMPLES  # images AutoCast's range check runs on (see reference_samples)
    range_check_skipped: str | None = None  # why the range check does not run (it cannot fit), or None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.io_dtype not in IO_DTYPES:
            raise ValueError(f"io_dtype must be one of {IO_DTYPES}, got {self.io_dtype!r}")


@dataclass(frozen=True)
class Fp16Result:
    path: Path
    io_dtype: str
    kept_fp32: tuple[dict[str, str], ...]  # {"node", "op_type", "reason"}
    converted_nodes: int
    total_nodes: int
    reference: str  # what the range check ran on
    seconds: float
    warnings: tuple[str, ...] = field(default=())

    def to_manifest(self) -> dict[str, Any]:
        by_op: dict[str, int] = {}
        for k in self.kept_fp32:
            by_op[k["op_type"]] = by_op.get(k["op_type"], 0) + 1
        return {
            "converter": "modelopt.onnx.autocast",
            "io_dtype": self.io_dtype,
            "converted_nodes": self.converted_nodes,
            "total_nodes": self.total_nodes,
            "kept_fp32": {"count": len(self.kept_fp32), "by_op_type": dict(sorted(by_op.items())),
                          "nodes": list(self.kept_fp32)},
            "range_check": {"reference": self.reference},
            "convert_seconds": round(self.seconds, 2),
        }


def reference_samples(arch: Any, usable_bytes: int, most: int = DEFAULT_REFERENCE_SAMPLES) -> tuple[int, str | None]:
    """How many images AutoCast's range check can run on in ``usable_bytes``, and why none when none fits.

    It runs the graph with every intermediate output exposed and holds all of them, for every image, until it
    has its statistics (Polygraphy's Comparator keeps each run's outputs): about four times the number of layers
    times one forward pass's peak per image, beside about four copies of the weights (its copy of the graph, the
    session's). Measured: ViT-L/7 on its one random image peaked at 22.3 GB in a fresh process (estimate: 16.8 GB of
    outputs + 4.8 GB of weights). With none, the FP16 graph is converted without it (nodes whose
    values exceed FP16's range are then not kept in FP32 by it) and the drift gate still compares it with PyTorch.
    """
    from vitmsn.export.fp32.memory import activation_bytes, size_text

    per_image = activation_bytes(arch, 1) * arch.num_hidden_layers * 4
    weights = 4 * 12 * arch.hidden_size**2 * arch.num_hidden_layers  # FP32 bytes of the encoder's linear layers
    n = int(min(most, max(0, usable_bytes - 4 * weights) // per_image))
    if n >= 1:
        return n, None
    return 0, (f"AutoCast's range check not run: it holds every intermediate output, about {size_text(per_image)} "
               f"for one image beside {size_text(4 * weights)} of graph copies, {size_text(usable_bytes)} usable "
               "here; the FP16 drift gate still runs")


def _write_reference_batches(tensors: np.ndarray, input_name: str, folder: Path, batch: int = 4) -> None:
    """AutoCast reads a folder of .npz files as several batches and keeps only per-tensor statistics."""
    for i, start in enumerate(range(0, len(tensors), batch)):
        np.savez(folder / f"batch_{i:04d}.npz", **{input_name: np.ascontiguousarray(tensors[start:start + batch])})


def fp16_onnx_from_fp32(fp32_path: str | Path, out_path: str | Path, *, options: Fp16Options = Fp16Options(),
                        reference_inputs: np.ndarray | None = None, input_name: str = "pixel_values") -> Fp16Result:
    """Convert ``fp32_path`` to FP16 at ``out_path`` (written atomically).

    ``reference_inputs`` (preprocessed images, float32 [N,3,H,W]) feed AutoCast's range check;
    without them it runs on random inputs in [-1, 1], which is weaker (the report says so).
    """
    from modelopt.onnx.autocast import convert_to_mixed_precision

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitmsn-fp16-") as tmp:
        calibration_data = None
        reference = "random inputs in [-1, 1] (no calibration images)"
        if options.range_check_skipped:
            reference = options.range_check_skipped
        elif reference_inputs is not None and len(reference_inputs):
            ref = reference_inputs[: options.reference_samples]
            _write_reference_batches(ref, input_name, Path(tmp))
            calibration_data = tmp
            reference = f"{len(ref)} calibration images"
        with captured_modelopt_logs(options.verbose) as messages:
            model = convert_to_mixed_precision(
                str(fp32_path),
                low_precision_type="fp16",
                op_types_to_exclude=list(options.keep_fp32_op_types),
                nodes_to_exclude=list(options.keep_fp32_nodes) or None,
                data_max=np.inf if options.range_check_skipped else options.data_max,  # inf: no reference run
                keep_io_types=options.io_dtype == "float32",
                calibration_data=calibration_data,
                providers=["cpu"],
            )
    kept = _kept_fp32(model, messages, options.keep_fp32_op_types)
    total = sum(1 for n in model.graph.node if n.op_type != "Cast")
    with atomic_path(out_path) as tmp_out:
        save_onnx(model, tmp_out)
    warnings = tuple(m for m in messages if "smaller than smallest fp16" in m or "out of range" in m)
    result = Fp16Result(Path(out_path), options.io_dtype, kept, total - len(kept), total, reference,
                        time.perf_counter() - started, warnings)
    log.info("fp16: %d of %d nodes converted, %d kept in FP32", result.converted_nodes, total, len(kept))
    return result


def _fp32_compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The non-Cast nodes of the converted graph that still produce FP32 tensors (by ONNX type inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in
            list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    return [n for n in model.graph.node if n.op_type != "Cast" and any(elem.get(o) == onnx.TensorProto.FLOAT for o in n.output)]


def _kept_fp32(model: onnx.ModelProto, messages: list[str], keep_op_types: tuple[str, ...]) -> tuple[dict[str, str], ...]:
    """The nodes AutoCast left in FP32, read from the converted graph itself; each gets the reason AutoCast's log
    gave when it names the node (a reworded log line costs the detail, never the entry)."""
    logged: dict[str, str] = {}
    for message in messages:
        m = _SKIPPED.match(message)
        if m:
            logged[m.group(1)] = m.group(2)
    kept = []
    for node in _fp32_compute_nodes(model):
        detail = logged.get(node.name, "")
        if "reference IO out of range" in detail:
            reason = f"values beyond FP16-safe range on the reference inputs ({detail.split(': ', 1)[-1]})"
        elif "initializer" in detail:
            reason = f"initializer beyond FP16 range ({detail})"
        elif detail in _RULE_REASONS or node.op_type in keep_op_types:
            reason = _RULE_REASONS.get(detail, _RULE_REASONS["DisabledOpTypes"])
        else:
            reason = detail or "kept in FP32 by AutoCast (its log gave no reason)"
        kept.append({"node": node.name, "op_type": node.op_type, "reason": reason})
    return tuple(kept)
