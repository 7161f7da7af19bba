"""The correctness spot check: every benchmarked backend against PyTorch FP32 on the same inputs.

A fast backend that computes the wrong function is worse than a slow one, so no row is reported
as passed unless its outputs agree with the reference. Tolerances, per precision (stated in
every report):

* ``fp32`` on CPU: every element within ``atol + rtol * |reference|`` (numpy.allclose), the same
  rule and figures as the export's ONNX Runtime parity stage (``vitmsn.export.fp32.tolerances``).
* ``fp32`` on a GPU: cosine similarity >= 0.9999 per sample and output (cuDNN convolutions may use
  TF32 by PyTorch's default, and GPU kernels sum in other orders).
* ``fp16``: cosine >= 0.999 per sample and output.
* ``int8``: on the embedding output, cosine >= 0.8 per sample, and every sample's output is
  nearer (by cosine) to its own reference than to any other sample's. This checks that the graph
  computes this model on these inputs (a wrong graph, a sign error or a mixed-up batch fails it),
  not its accuracy: that is ``vitmsn validate``'s drift gate. On a randomly initialised ViT-S,
  where every image's embedding looks alike (mean inter-image cosine 0.72), a correct Q/DQ INT8
  graph measured cosine 0.89 and a mixed-up batch would still score about 0.7-0.97, hence the
  nearest-reference rule rather than a higher cosine bar. The measured cosines are in every row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vitmsn.export.fp32.tolerances import ATOL_FP32, RTOL_FP32  # the export's own parity rule
from vitmsn.export.validation import metrics as drift



@dataclass(frozen=True)
class Tolerance:
    name: str
    atol: float | None = None  # elementwise allclose, when set
    rtol: float | None = None
    min_cosine: float | None = None
    nearest_own: bool = False  # each sample's output is nearest (cosine) to its own reference
    outputs: tuple[str, ...] | None = None  # outputs the rule applies to (None: all)

    def describe(self) -> str:
        parts = []
        if self.atol is not None:
            parts.append(f"|x - ref| <= {self.atol:g} + {self.rtol:g}*|ref|")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.nearest_own:
            parts.append("each sample nearest its own reference")
        where = f" on {', '.join(self.outputs)}" if self.outputs else ""
        return " and ".join(parts) + where


TOLERANCES = {
    ("fp32", "cpu"): Tolerance("fp32-cpu", atol=ATOL_FP32, rtol=RTOL_FP32),
    ("fp32", "cuda"): Tolerance("fp32-gpu", min_cosine=0.9999),
    ("fp16", "cpu"): Tolerance("fp16", min_cosine=0.999),
    ("bf16", "cpu"): Tolerance("bf16", min_cosine=0.999),  # a spot check; the gate is vitmsn validate's (0.9999)
    ("fp16", "cuda"): Tolerance("fp16", min_cosine=0.999),
    ("int8", "cpu"): Tolerance("int8", min_cosine=0.8, nearest_own=True, outputs=("embedding",)),
    ("int8", "cuda"): Tolerance("int8", min_cosine=0.8, nearest_own=True, outputs=("embedding",)),
}


def tolerance_for(precision: str, device: str) -> Tolerance:
    return TOLERANCES.get((precision, "cuda" if device.startswith("cuda") else "cpu"), TOLERANCES[("fp16", "cpu")])


def _nearest_reference(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    a = got.reshape(len(got), -1).astype(np.float64)
    b = ref.reshape(len(ref), -1).astype(np.float64)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    return (a @ b.T).argmax(axis=1)


def compare_outputs(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], tol: Tolerance) -> dict[str, Any]:
    """Metrics per output and the verdict. Missing outputs, wrong shapes and non-finite values fail."""
    problems: list[str] = []
    metrics: dict[str, dict[str, float]] = {}
    for name, ref in reference.items():
        if name not in outputs:
            problems.append(f"output {name!r} missing")
            continue
        got = np.asarray(outputs[name])
        if got.shape != ref.shape:
            problems.append(f"{name}: shape {got.shape}, reference {ref.shape}")
            continue
        got = got.astype(np.float32)
        if not np.isfinite(got).all():
            problems.append(f"{name}: non-finite values")
            continue
        per = drift.per_image(got, ref, classification=ref.ndim == 2 and name == "logits")  # the verdict's figures
        cos = per["cosine"]
        m = {"max_abs": float(per["max_abs"].max()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
        if "top1_agree" in per:
            m["top1_agreement"] = float(per["top1_agree"].mean())
        metrics[name] = m
        if tol.outputs is not None and name not in tol.outputs:
            continue
        if tol.atol is not None:
            bad = int(drift.allclose_violations(got, ref, tol.atol, tol.rtol or 0.0).sum())
            if bad:
                problems.append(f"{name}: {bad} elements outside {tol.describe()} (max abs {m['max_abs']:.3g})")
        if tol.min_cosine is not None and cos.min() < tol.min_cosine:
            problems.append(f"{name}: cosine {cos.min():.6f} < {tol.min_cosine:g}")
        if tol.nearest_own and len(ref) > 1:
            own = _nearest_reference(got, ref) == np.arange(len(ref))
            m["nearest_own_reference"] = float(own.mean())
            if not own.all():
                problems.append(f"{name}: {int((~own).sum())} of {len(ref)} samples are nearer another sample's reference")
    return {"passed": not problems, "tolerance": tol.describe(), "metrics": metrics, "problems": problems}
