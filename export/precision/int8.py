"""FP32 ONNX + calibration data -> INT8 ONNX with explicit Q/DQ placed for TensorRT (ModelOpt PTQ).

TensorRT 11 has no implicit INT8 calibration: INT8 is QuantizeLinear/DequantizeLinear pairs in
the graph, and TensorRT fuses each DQ -> MatMul/Conv into an INT8 kernel. ModelOpt's ONNX PTQ
writes them the way TensorRT wants:

* symmetric (zero point 0), INT8 weights per output channel, INT8 activations per tensor;
* only on the inputs of MatMul, Gemm and Conv (``op_types_to_quantize``), so LayerNorm, Softmax,
  GELU and the residual adds stay in the high-precision dtype; ModelOpt itself also leaves
  GEMV-shaped MatMuls (the classifier on one token) unquantized, as INT8 does not pay there;
* by default only the MatMuls with a constant (weight) operand, i.e. the linear layers: the two
  attention batched MatMuls (Q.K^T and softmax.V, both operands activations) stay in high
  precision (``quantize_attention=False``). Per-tensor INT8 on the softmax output has a step of
  1/127, and with 197 tokens most attention probabilities are below half a step and round to
  zero. Measured on the trained demo (200 held-out images, ONNX Runtime CPU, 32 calibration
  images, entropy): top-1 agreement with FP32 0.745 and minimum cosine 0.24 with them quantized,
  0.985 and 0.95 without (FP16 high precision); 0.955/0.75 against 0.995/0.99 with FP32 high
  precision. ``--int8-quantize-attention`` quantizes them anyway (for a TensorRT build whose
  fused INT8 attention kernels are wanted, after checking the drift report);
* activation ranges from the calibration images, ``entropy`` (KL threshold) or ``max``
  (ModelOpt 0.47 offers no percentile calibration for INT8);
* everything not quantized runs in ``high_precision``: FP16 when the graph is meant for a
  TensorRT engine, FP32 when it is meant for ONNX Runtime on CPU (an FP16 graph runs about 3x
  slower than FP32 there).

``exclude`` keeps named nodes, module scopes (``vit.encoder.layer.3``) or whole encoder blocks
(``block:3``, ``block:0-2``) out of quantization; they are resolved to node names through the
exporter's ``pkg.torch.onnx.name_scopes`` node metadata.
"""

from __future__ import annotations

import ast
import logging
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from vitmsn.calibration import CalibrationMethod, even_batch_size
from vitmsn.core.errors import InputError
from vitmsn.runtime.manifest import atomic_path

from vitmsn.export.precision.modelopt_quirks import captured_modelopt_logs

log = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")
HIGH_PRECISIONS = ("fp16", "fp32")
ENCODER_BLOCK_SCOPE = "vit.encoder.layer.{}"
_BLOCK = re.compile(r"^block:(\d+)(?:-(\d+))?$")


@dataclass(frozen=True)
class Int8Options:
    method: CalibrationMethod = CalibrationMethod.ENTROPY
    high_precision: str = "fp16"
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = QUANTIZED_OP_TYPES
    quantize_attention: bool = False  # also the activation x activation MatMuls (Q.K^T, softmax.V)
    verbose: bool = False
    calibration_batch: int = 8  # at most; a size that divides the number of images (even_batch_size)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", CalibrationMethod(self.method))
        if self.high_precision not in HIGH_PRECISIONS:
            raise InputError(f"INT8 high precision {self.high_precision!r}: choose from {', '.join(HIGH_PRECISIONS)}")


@dataclass(frozen=True)
class Int8Result:
    path: Path
    method: CalibrationMethod
    high_precision: str
    excluded_nodes: tuple[str, ...]  # the quantizable nodes the user's exclusions resolved to
    attention_nodes: tuple[str, ...]  # activation x activation MatMuls kept out (quantize_attention=False)
    quantized_nodes: tuple[str, ...]  # MatMul/Gemm/Conv nodes fed by a DequantizeLinear
    not_quantized_nodes: tuple[str, ...]  # MatMul/Gemm/Conv nodes left in high precision
    q_count: int
    dq_count: int
    calibration_batch: int
    seconds: float

    def to_manifest(self) -> dict[str, Any]:
        return {
            "quantizer": "modelopt.onnx.quantization (TensorRT placement)",
            "method": self.method.value,
            "high_precision_dtype": "float16" if self.high_precision == "fp16" else "float32",
            "symmetric": True,
            "weights": "int8 per output channel",
            "activations": "int8 per tensor",
            "quantized_op_types": list(QUANTIZED_OP_TYPES),
            "quantized_nodes": len(self.quantized_nodes),
            "not_quantized_nodes": list(self.not_quantized_nodes),
            "excluded_nodes": list(self.excluded_nodes),
            "attention_matmuls": "int8" if not self.attention_nodes else "high precision",
            "attention_nodes_not_quantized": list(self.attention_nodes),
            "quantize_linear": self.q_count,
            "dequantize_linear": self.dq_count,
            "calibration_batch": self.calibration_batch,
            "quantize_seconds": round(self.seconds, 2),
        }


def name_scopes(node: onnx.NodeProto) -> list[str]:
    """The module path of a node as the dynamo exporter recorded it (empty when absent)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                value = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [str(v) for v in value] if isinstance(value, list) else []
    return []


def resolve_exclusions(model: onnx.ModelProto, patterns: Sequence[str],
                       op_types: Sequence[str] = QUANTIZED_OP_TYPES) -> list[str]:
    """Names of the quantizable nodes that ``patterns`` exclude.

    A pattern is ``block:N`` or ``block:N-M`` (encoder blocks), a module scope as the exporter
    names it (``vit.encoder.layer.11.intermediate``, ``classifier``), or a regular expression
    matched against whole node names. A pattern that matches no quantizable node is an error,
    so a typo never silently quantizes what was meant to stay out.
    """
    candidates = [n for n in model.graph.node if n.op_type in op_types]
    excluded: list[str] = []
    for pattern in patterns:
        block = _BLOCK.match(pattern.strip())
        if block:
            first = int(block.group(1))
            last = int(block.group(2) or first)
            scopes = {ENCODER_BLOCK_SCOPE.format(i) for i in range(first, last + 1)}
            hits = [n.name for n in candidates if scopes & set(name_scopes(n))]
        else:
            try:
                regex = re.compile(pattern)
            except re.error as exc:
                raise InputError(f"--int8-exclude {pattern!r}: not a node name, scope or block:N ({exc})") from None
            hits = [n.name for n in candidates if pattern in name_scopes(n) or regex.fullmatch(n.name)]
        if not hits:
            raise InputError(f"--int8-exclude {pattern!r}: matches no {'/'.join(op_types)} node; use block:N "
                             "(encoder block N), a module scope such as vit.encoder.layer.0.attention, or a node name")
        excluded.extend(h for h in hits if h not in excluded)
    return excluded


def constant_names(model: onnx.ModelProto) -> set[str]:
    """Tensors that do not depend on a graph input: initializers, Constant outputs and whatever is
    computed from those alone (a Transpose or Cast of a weight)."""
    const = {i.name for i in model.graph.initializer}
    for n in model.graph.node:  # nodes are topologically sorted in a valid graph
        if n.op_type == "Constant" or (n.input and all(i in const or i == "" for i in n.input)):
            const.update(n.output)
    return const


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes whose two operands are both activations: in a ViT, attention's Q.K^T and softmax.V."""
    const = constant_names(model)
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not any(i in const for i in n.input)]


def qdq_structure(model: onnx.ModelProto, op_types: Sequence[str] = QUANTIZED_OP_TYPES) -> tuple[list[str], list[str]]:
    """(nodes of ``op_types`` with a DequantizeLinear input, those without)."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    quantized, plain = [], []
    for n in model.graph.node:
        if n.op_type in op_types:
            (quantized if any(producer.get(i) == "DequantizeLinear" for i in n.input) else plain).append(n.name)
    return quantized, plain


def qdq_onnx_from_calibration(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                              options: Int8Options = Int8Options(), input_name: str = "pixel_values") -> Int8Result:
    """Quantize ``fp32_path`` with ``calibration`` (float32 [N,3,H,W]) and write ``out_path`` atomically."""
    from modelopt.onnx.quantization import quantize

    if len(calibration) == 0:
        raise InputError("INT8 calibration needs at least one image")
    started = time.perf_counter()
    source = onnx.load(str(fp32_path), load_external_data=False)
    excluded = resolve_exclusions(source, options.exclude, options.op_types)
    attention = [] if options.quantize_attention else [n for n in activation_matmuls(source) if n not in excluded]
    batch = even_batch_size(len(calibration), options.calibration_batch)
    shape = "x".join(str(d) for d in (batch,) + tuple(calibration.shape[1:]))
    # ModelOpt rewrites its input file in place (shape inference, infer_shapes_path) and writes its intermediate
    # graphs (<input>_named.onnx, ...) beside it, removed only when it finishes: it gets a private copy in a private
    # folder, never a file of the artifacts directory.
    with atomic_path(out_path) as tmp, tempfile.TemporaryDirectory(prefix="vitmsn-int8-") as work, \
            captured_modelopt_logs(options.verbose):
        produced, source_copy = Path(work) / "model.int8.onnx", Path(work) / "model.fp32.onnx"
        shutil.copyfile(fp32_path, source_copy)
        quantize(
            str(source_copy),
            quantize_mode="int8",
            calibration_data={input_name: np.ascontiguousarray(calibration, dtype=np.float32)},
            calibration_shapes=f"{input_name}:{shape}",
            calibration_method=options.method.value,
            calibration_eps=["cpu"],
            op_types_to_quantize=list(options.op_types),
            nodes_to_exclude=[f"^{re.escape(n)}$" for n in excluded + attention],
            high_precision_dtype=options.high_precision,
            output_path=str(produced),
            log_level="INFO" if options.verbose else "WARNING",
        )
        shutil.move(produced, tmp)
        model = onnx.load(str(tmp))
    quantized, plain = qdq_structure(model, options.op_types)
    counts = Counter(n.op_type for n in model.graph.node)
    result = Int8Result(Path(out_path), options.method, options.high_precision, tuple(excluded), tuple(attention),
                        tuple(quantized),
                        tuple(plain), counts["QuantizeLinear"], counts["DequantizeLinear"], batch,
                        time.perf_counter() - started)
    log.info("int8: %d nodes quantized, %d left in %s", len(quantized), len(plain), options.high_precision)
    return result
