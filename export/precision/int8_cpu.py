"""FP32 ONNX + the same calibration data -> an INT8 graph laid out for ONNX Runtime on CPU.

The TensorRT-placed graph (:mod:`.int8`) is the wrong shape for ONNX Runtime's CPU kernels:
symmetric INT8 activations take MLAS's slower s8 x s8 path on CPUs without VNNI, and a
DequantizeLinear shared by the Q, K and V projections blocks ONNX Runtime's fusion, so those
MatMuls run in FP32 on freshly dequantized weights. Measured on a ViT-S shape at batch 8 it was
only ~1.2x faster than FP32. This flavour is placed for ONNX Runtime instead:

* ``onnxruntime.quantization.quantize_static`` in QDQ format, calibrated on the same tensors as
  the TensorRT graph (entropy or max);
* the weight-bearing MatMuls (the encoder's linear layers, ~92% of the FLOPs) and attention's
  Q.K^T (:func:`score_matmuls`: +8% throughput on ViT-S batch 8, demo drift unchanged: minimum
  cosine 0.99898 against 0.99894 without); the patch embedding Conv, the classifier Gemm (one
  token: INT8 does not pay) and softmax.V (INT8 attention probabilities round to zero) stay FP32;
* activations uint8 (asymmetric, per tensor), weights int8 per output channel. The weight range
  is chosen from the exporting CPU and recorded (``weight_range``, ``cpu_vnni``): with VNNI
  (``vpdpbusd``, int32 accumulation) full 8-bit weights; without it 7-bit (``reduce_range``),
  because the u8 x s8 AVX2 path multiplies pairs into int16 (``vpmaddubsw``), which saturates
  with full-range weights: on a 1-layer test model full range gave a minimum cosine of 0.09
  against FP32 there, 7-bit weights 0.989. The runtime never loads an 8-bit-weight graph on a
  CPU without VNNI (``vitmsn.runtime.selection`` falls back to the Q/DQ graph and says why);
  ``weight_range="7bit"`` forces the graph that is right on both kinds of CPU;
* a dedicated DequantizeLinear per consumer and no QuantizeLinear on MatMul outputs, so ONNX
  Runtime fuses each ``Q -> DQ -> MatMul`` into one ``MatMulIntegerToFloat`` (integer GEMM,
  float output, scales folded in) and nothing is requantized between layers;
* then what stays FP32 between the integer GEMMs is fused by ONNX Runtime's transformer optimizer
  (bias + GELU -> ``BiasGelu``, residual add + LayerNorm -> ``SkipLayerNormalization``), kept only
  when it matches the unfused graph (``ort_fusion`` in the manifest). Profiled on ViT-S at batch 8,
  the integer GEMMs (``MatMulIntegerToFloat``) are 69% of the INT8 graph's kernel time; on AVX2
  without VNNI (``vpmaddubsw``) they run at most about 2x FP32, which holds the whole-model ratio
  near 1.5x. Merging the Q/K/V GEMMs into one and folding the score scale into a dequantize
  scale were measured too: bit-identical output, no speed-up (0.99x), so neither is done.

``benchmarks/int8_cpu.py`` measures it against FP32 on ONNX Runtime in the same run.

The quantization runs in a fresh Python process: ModelOpt's first ``quantize()`` monkeypatches
ONNX Runtime's calibrators process-wide (``ort_patching.patch_ort_modules``) and never restores
them, and with its patches in place ``quantize_static`` collects no histogram at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from vitmsn.calibration import CalibrationMethod, CalibrationReader, as_ort_reader, even_batch_size
from vitmsn.runtime.manifest import atomic_path
from vitmsn.export.onnx_file import save_onnx


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CpuInt8Result:
    path: Path
    method: CalibrationMethod
    quantized_nodes: tuple[str, ...]
    excluded_nodes: tuple[str, ...]
    counts: dict[str, int]
    seconds: float
    fusion: dict[str, Any] | None = None
    weight_range: str = "7bit"  # "8bit" (VNNI CPUs only) or "7bit" (right on every x86 CPU)

    def to_manifest(self) -> dict[str, Any]:
        return {
            "quantizer": "onnxruntime.quantization.quantize_static (QDQ, placed for ONNX Runtime CPU)",
            "method": self.method.value,
            "activations": "uint8 asymmetric per tensor",
            "weights": f"int8 symmetric per output channel, {self.weight_range[0]}-bit range"
                       + (" (reduce_range)" if self.weight_range == "7bit" else ""),
            "weight_range": self.weight_range,
            "needs_vnni": self.weight_range == "8bit",
            "high_precision_dtype": "float32",
            "quantized_nodes": len(self.quantized_nodes),
            "excluded_nodes": list(self.excluded_nodes),
            "quantize_linear": self.counts.get("QuantizeLinear", 0),
            "dequantize_linear": self.counts.get("DequantizeLinear", 0),
            "quantize_seconds": round(self.seconds, 2),
            "ort_fusion": self.fusion or {"applied": False, "reason": "nothing quantized"},
        }


def linear_nodes(model: onnx.ModelProto) -> list[str]:
    """MatMul nodes with a constant (initializer) operand: the linear layers, worth INT8 on CPU."""
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and any(i in inits for i in n.input)]


def score_matmuls(model: onnx.ModelProto) -> list[str]:
    """Attention's Q.K^T MatMuls: activation x activation, neither operand a softmax output. Their
    operands are projections with the spread of any linear layer's output, so uint8 per tensor holds
    them; softmax.V stays FP32 (INT8 probabilities lose most attention weights, see :mod:`.int8`)."""
    from vitmsn.export.precision.int8 import activation_matmuls

    producer = {o: n for n in model.graph.node for o in n.output}

    def from_softmax(name: str) -> bool:
        while name in producer and producer[name].op_type in ("Transpose", "Reshape", "Cast", "Div", "Mul"):
            name = producer[name].input[0]
        return name in producer and producer[name].op_type == "Softmax"

    candidates = set(activation_matmuls(model))
    return [n.name for n in model.graph.node if n.name in candidates and not any(from_softmax(i) for i in n.input)]


def cpu_int8_onnx_from_calibration(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *,
                                   method: CalibrationMethod = CalibrationMethod.ENTROPY,
                                   exclude_nodes: Sequence[str] = (), input_name: str = "pixel_values",
                                   batch_size: int = 8, verbose: bool = False,
                                   weight_range: str = "auto") -> CpuInt8Result:
    """Quantize ``fp32_path`` for ONNX Runtime CPU with ``calibration`` (float32 [N,3,H,W]).

    ``weight_range``: "auto" (8bit on a CPU with VNNI, else 7bit), "8bit" or "7bit".

    Runs :func:`_quantize` in a child interpreter (see the module docstring); raises RuntimeError
    with the child's last lines when it fails.
    """
    method = CalibrationMethod(method)
    weight_range = weight_range_for_cpu(weight_range)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vitmsn-int8cpu-") as tmp:
        data, summary = Path(tmp) / "calibration.npy", Path(tmp) / "result.json"
        np.save(data, np.ascontiguousarray(calibration, dtype=np.float32), allow_pickle=False)
        (Path(tmp) / "exclude.json").write_text(json.dumps(list(exclude_nodes)))
        cmd = [sys.executable, "-m", "vitmsn.export.precision.int8_cpu", str(fp32_path), str(out_path), str(data),
               "--method", method.value, "--exclude", str(Path(tmp) / "exclude.json"), "--input-name", input_name,
               "--batch-size", str(batch_size), "--summary", str(summary), "--weight-range", weight_range]
        proc = subprocess.run(cmd, capture_output=not verbose, text=True, env=dict(os.environ, PYTHONWARNINGS="ignore"))
        if proc.returncode != 0:
            tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-5:])
            raise RuntimeError(f"INT8 (ONNX Runtime CPU) quantization of {Path(fp32_path).name} failed: {tail}")
        done = json.loads(summary.read_text())
    result = CpuInt8Result(Path(out_path), method, tuple(done["quantized_nodes"]), tuple(exclude_nodes),
                           dict(done["counts"]), time.perf_counter() - started, done.get("fused"), weight_range)
    log.info("int8 (onnxruntime cpu): %d nodes quantized in %.1fs", len(result.quantized_nodes), result.seconds)
    return result


def weight_range_for_cpu(weight_range: str = "auto", flags: frozenset[str] | None = None) -> str:
    """``auto`` -> "8bit" where this CPU has VNNI (no int16 saturation), else "7bit"."""
    from vitmsn.runtime.backends.cpu import vnni_capable

    if weight_range == "auto":
        return "8bit" if vnni_capable(flags) else "7bit"
    if weight_range not in ("8bit", "7bit"):
        raise ValueError(f"weight_range {weight_range!r}: choose from auto, 8bit, 7bit")
    return weight_range


def _quantize(fp32_path: Path, out_path: Path, calibration: np.ndarray, method: CalibrationMethod,
              exclude_nodes: Sequence[str], input_name: str, batch_size: int, weight_range: str = "7bit") -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod as OrtMethod
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    model = onnx.load(str(fp32_path))
    # ONNX Runtime's quantizer re-runs shape inference and fails on the dynamo exporter's
    # value_info ("Inferred shape and existing shape differ"); the graph's own shapes are
    # enough for it, so the stale intermediate annotations are dropped first.
    del model.graph.value_info[:]
    nodes = [n for n in linear_nodes(model) + score_matmuls(model) if n not in set(exclude_nodes)]
    if not nodes:  # every linear layer excluded: quantize_static reads nodes_to_quantize=[] as "all of them"
        with atomic_path(out_path) as tmp_out:
            save_onnx(model, tmp_out)
        return {"quantized_nodes": [], "counts": dict(Counter(n.op_type for n in model.graph.node))}
    batch = even_batch_size(len(calibration), batch_size)  # the histogram collector cannot stack ragged batches
    reader = as_ort_reader(CalibrationReader(calibration, batch_size=batch, input_name=input_name))
    with tempfile.TemporaryDirectory(prefix="vitmsn-int8cpu-") as tmp:
        clean = Path(tmp) / "fp32.onnx"
        save_onnx(model, clean)
        with atomic_path(out_path) as tmp_out:
            quantize_static(
                str(clean), str(tmp_out), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul"],
                nodes_to_quantize=nodes,
                per_channel=True,
                reduce_range=weight_range == "7bit",  # see the module docstring: int16 saturation without VNNI
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=OrtMethod.Entropy if method is CalibrationMethod.ENTROPY else OrtMethod.MinMax,
                extra_options={
                    "DedicatedQDQPair": True,  # one DQ per consumer: each MatMul can fuse on its own
                    "OpTypesToExcludeOutputQuantization": ["MatMul"],  # float out, no requantize
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                    # one batch's activations at a time into the histograms (all batches at once held every
                    # quantized MatMul's inputs for the whole calibration set: ViT-S 3.9 GB peak, see below)
                    "CalibStridedMinMax": 1,
                },
            )
            fused = _fuse_for_ort(Path(tmp_out), Path(fp32_path), calibration[:8], input_name)
            counts = Counter(n.op_type for n in onnx.load(str(tmp_out), load_external_data=False).graph.node)
    return {"quantized_nodes": nodes, "counts": dict(counts), "fused": fused}


def _fuse_for_ort(path: Path, fp32_path: Path, sample: np.ndarray, input_name: str) -> dict[str, Any]:
    """Fuse what stays FP32 around the integer GEMMs, in place: bias + GELU -> ``BiasGelu``, residual
    add + LayerNorm -> ``SkipLayerNormalization`` (ONNX Runtime's transformer optimizer, attention
    fusion off: the Q/DQ projections do not match it). Kept only when, on ``sample``, the fused graph
    stays within cosine 0.999 of the unfused one and its mean cosine to the FP32 graph is no more
    than 5e-4 below the unfused graph's: fusing changes float rounding in front of each
    QuantizeLinear, which moves a few values to the next INT8 step, so an exact match is not the
    bar; staying as close to FP32 as before is. The result says which, with the figures.
    """
    from onnx import helper
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from vitmsn.export.validation.comparison import onnxruntime_outputs
    from vitmsn.export.validation.metrics import cosine_similarity
    from vitmsn.export.precision.ort_optimize import rewrite_for_ort_fusion

    def outputs(p: Path) -> np.ndarray:  # the graph's first output (logits or last_hidden_state)
        return next(iter(onnxruntime_outputs(p, sample, input_name).values()))

    model = onnx.load(str(path))
    rewrite_for_ort_fusion(model)
    options = FusionOptions("vit")
    options.enable_attention = False
    with tempfile.TemporaryDirectory(prefix="vitmsn-int8cpu-fuse-") as tmp:
        rewritten, candidate = Path(tmp) / "rewritten.onnx", Path(tmp) / "fused.onnx"
        save_onnx(model, rewritten)
        try:
            fused = optimize_model(str(rewritten), model_type="vit", num_heads=0, hidden_size=0,
                                   optimization_options=options, opt_level=0, use_gpu=False).model
        except Exception as exc:  # noqa: BLE001 - an optimizer failure keeps the unfused graph, said in the manifest
            return {"applied": False, "reason": f"ONNX Runtime's transformer optimizer failed: {exc}"}
        if any(n.domain == "com.microsoft" for n in fused.graph.node) and \
                not any(o.domain == "com.microsoft" for o in fused.opset_import):
            fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        ops = Counter(n.op_type for n in fused.graph.node)
        done = {op: ops[op] for op in ("BiasGelu", "SkipLayerNormalization") if ops.get(op)}
        if not done:
            return {"applied": False, "reason": "no fusion pattern matched"}
        save_onnx(fused, candidate)
        ref, a, b = outputs(fp32_path), outputs(path), outputs(candidate)
        cos = float(np.min(cosine_similarity(b, a)))
        to_fp32 = {"unfused": float(np.mean(cosine_similarity(a, ref))), "fused": float(np.mean(cosine_similarity(b, ref)))}
        figures = {"cosine_vs_unfused_min": round(cos, 6),
                   "cosine_vs_fp32_mean": {k: round(v, 6) for k, v in to_fp32.items()}}
        if cos < 0.999 or to_fp32["fused"] < to_fp32["unfused"] - 5e-4:
            return {"applied": False, "reason": "the fused graph drifted from the unfused one", **figures}
        path.write_bytes(candidate.read_bytes())  # path is the atomic_path temp file: the rename comes after
    return {"applied": True, "fused_ops": done, **figures}


def _main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="INT8 for ONNX Runtime CPU (run by cpu_int8_onnx_from_calibration)")
    p.add_argument("fp32", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("calibration", type=Path, help=".npy float32 [N,3,H,W]")
    p.add_argument("--method", default="entropy", choices=[m.value for m in CalibrationMethod])
    p.add_argument("--exclude", type=Path, help="JSON list of node names")
    p.add_argument("--input-name", default="pixel_values")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--weight-range", default="7bit", choices=["8bit", "7bit"])
    a = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # ONNX Runtime's quantizer warns through the root logger
    exclude = json.loads(a.exclude.read_text()) if a.exclude else []
    calibration = np.load(a.calibration, allow_pickle=False)
    with contextlib.redirect_stdout(sys.stderr):  # its calibration progress goes to stdout
        summary = _quantize(a.fp32, a.out, calibration, CalibrationMethod(a.method), exclude, a.input_name,
                            a.batch_size, a.weight_range)
    a.summary.write_text(json.dumps(summary))


if __name__ == "__main__":
    _main()
