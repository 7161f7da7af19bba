"""Helpers for the FP16 / INT8 / calibration / engine tests (imported by those test modules).

:func:`demo_precision_run` runs ONE real export of the trained demo checkpoint with everything
switched on (FP16, INT8 for TensorRT and for ONNX Runtime CPU, TensorRT-RTX engines for all
three, comparison on held-out images) and memoizes it for the whole test session, so the FP16,
INT8 and engine test modules share its artifacts instead of re-exporting. The drift figures the
tests assert are recomputed here independently of the pipeline's own report.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import onnx

CALIB_SAMPLES = 32
CALIB_PER_CLASS = 6  # 8 classes x 6 = 48 candidates, 32 sampled (stratified: 4 per class)
HELDOUT_PER_CLASS = 25
BATCH = "1:4:16"
AOT_TARGET = "sm86"  # one compute capability keeps the ahead-of-time builds short




@functools.lru_cache(maxsize=None)
def demo_precision_run(base: Path) -> dict[str, Any]:
    """Export the demo at ``base/artifacts``: fp32+fp16+int8, int8 cpu flavour, RTX engines, held-out comparison."""
    from vitmsn.export.demo import write_dataset
    from vitmsn.export.engines.builder import EngineOptions
    from vitmsn.export.pipeline import ExportOptions, run_export
    from vitmsn.export.fp32.spec import BatchRange

    base.mkdir(parents=True, exist_ok=True)
    calib, heldout = base / "calib", base / "heldout"
    write_dataset(calib, per_class=CALIB_PER_CLASS, split="train")  # calibration never sees held-out images
    write_dataset(heldout, per_class=HELDOUT_PER_CLASS, split="heldout")
    out = base / "artifacts"
    from vitmsn.core.errors import ValidationFailed

    try:
        result = run_export(ExportOptions(
            model="demo", out=out, precisions=("fp32", "fp16", "int8"), batch=BatchRange.parse(BATCH),
            calib_images=calib, calib_samples=CALIB_SAMPLES, calib_cache=base / "cache", validate_images=heldout,
            engine="require", target="tensorrt-rtx", engine_options=EngineOptions(aot_targets=(AOT_TARGET,)),
        ))
        failure = None
    except ValidationFailed as exc:  # artifacts are written; each test checks what it covers
        result, failure = None, str(exc)
    return {"out": out, "calib": calib, "heldout": heldout, "result": result, "failure": failure}


@functools.lru_cache(maxsize=None)
def heldout_tensors(heldout: Path, manifest_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Held-out images preprocessed by the runtime's code as the manifest says, and their class indices."""
    from vitmsn.runtime.manifest import Manifest
    from vitmsn.runtime.images.preprocess import PreprocessConfig

    m = Manifest.load(manifest_dir)
    index = {name: i for i, name in m.labels.items()}
    files = sorted(p for p in heldout.rglob("*") if p.is_file())
    x = PreprocessConfig.from_manifest(m.preprocess).batch(files)
    return x, np.array([index[f.parent.name] for f in files])


def onnx_logits(path: Path, x: np.ndarray, batch: int = 16) -> np.ndarray:
    import onnxruntime as ort

    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    dtype = np.float16 if s.get_inputs()[0].type == "tensor(float16)" else np.float32
    return np.concatenate([s.run(["logits"], {"pixel_values": x[i:i + batch].astype(dtype)})[0].astype(np.float32)
                           for i in range(0, len(x), batch)])


def drift(got: np.ndarray, ref: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Top-1 agreement, per-image cosine min/mean and accuracy drop (computed here, not by vitmsn)."""
    g, r = got.astype(np.float64), ref.astype(np.float64)
    cos = (g * r).sum(1) / (np.linalg.norm(g, axis=1) * np.linalg.norm(r, axis=1))
    acc, acc_ref = float((g.argmax(1) == labels).mean()), float((r.argmax(1) == labels).mean())
    return {"top1_agreement": float((g.argmax(1) == r.argmax(1)).mean()), "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()), "accuracy": acc, "accuracy_reference": acc_ref,
            "accuracy_drop": acc_ref - acc}


# ---- graph structure ----------------------------------------------------------------------------
def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def consumers_of_dq(model: onnx.ModelProto) -> set[str]:
    """Op types fed directly by a DequantizeLinear output."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.op_type for n in model.graph.node if any(i in dq_out for i in n.input)}


def zero_points(model: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: i for i in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits:
            out.append(onnx.numpy_helper.to_array(inits[n.input[2]]))
    return out


def io_elem_types(model: onnx.ModelProto) -> set[int]:
    return {v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}


# ---- engine plans -------------------------------------------------------------------------------
def plan_profile_batches(plan: bytes, chw: tuple[int, int, int]) -> list[int]:
    """Batch sizes of the rank-4 ``[n, C, H, W]`` shapes serialized in a plan, in file order.

    Observed in TensorRT-RTX 1.7 plans: each optimization-profile shape is stored as int64
    ``[4, n, C, H, W]`` (rank, then dims), min, opt and max in that order. The tests compare
    them with the manifest's profile, since no engine can be deserialized without a GPU.
    """
    found = []
    for shift in range(8):  # the shapes need not be 8-byte aligned in the file
        w = np.frombuffer(plan[shift: shift + (len(plan) - shift) // 8 * 8], dtype=np.int64)
        hits = np.flatnonzero((w[:-4] == 4) & (w[2:-2] == chw[0]) & (w[3:-1] == chw[1]) & (w[4:] == chw[2]))
        found += [(int(h) * 8 + shift, int(w[h + 1])) for h in hits if w[h + 1] > 0]  # not symbolic (< 0) dims
    return [n for _, n in sorted(found)]
