"""The correctness spot check: every benchmarked backend against PyTorch FP32 on the same inputs.

A fast backend that computes the wrong function is worse than a slow one, so no row is reported
as passed unless its outputs agree with the reference. Tolerances, per precision (stated in
every report):

* ``fp32`` on CPU: every element within ``atol + rtol * |reference|`` (numpy.allclose), the same
  rule and figures as the export's ONNX Runtime parity stage (``vitmsn.export.spec``).
* ``fp32`` on a GPU: cosine similarity >= 0.9999 per sample and output (cuDNN convolutions may use
  TF32 by PyTorch's default, and GPU kernels sum in other orders).
* ``fp16``: cosine >= 0.999 per sample and output.
* ``int8``: cosine >= 0.95 on the embedding output only. This is a spot check that the graph
  computes the model, not an accuracy gate (``vitmsn validate`` is that): logits of a randomly
  initialised model carry almost no signal, so their int8 cosine is meaningless (ENVIRONMENT.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

ATOL_FP32 = 1e-4  # vitmsn.export.spec.ATOL_FP32 / RTOL_FP32 (kept import-free here; a test checks they agree)
RTOL_FP32 = 1e-3


@dataclass(frozen=True)
class Tolerance:
    name: str
    atol: float | None = None  # elementwise allclose, when set
    rtol: float | None = None
    min_cosine: float | None = None
    outputs: tuple[str, ...] | None = None  # outputs the rule applies to (None: all)

    def describe(self) -> str:
        parts = []
        if self.atol is not None:
            parts.append(f"|x - ref| <= {self.atol:g} + {self.rtol:g}*|ref|")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        where = f" on {', '.join(self.outputs)}" if self.outputs else ""
        return " and ".join(parts) + where


TOLERANCES = {
    ("fp32", "cpu"): Tolerance("fp32-cpu", atol=ATOL_FP32, rtol=RTOL_FP32),
    ("fp32", "cuda"): Tolerance("fp32-gpu", min_cosine=0.9999),
    ("fp16", "cpu"): Tolerance("fp16", min_cosine=0.999),
    ("fp16", "cuda"): Tolerance("fp16", min_cosine=0.999),
    ("int8", "cpu"): Tolerance("int8", min_cosine=0.95, outputs=("embedding",)),
    ("int8", "cuda"): Tolerance("int8", min_cosine=0.95, outputs=("embedding",)),
}


def tolerance_for(precision: str, device: str) -> Tolerance:
    return TOLERANCES.get((precision, "cuda" if device.startswith("cuda") else "cpu"), TOLERANCES[("fp16", "cpu")])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    out = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(a).sum(1) + np.abs(b).sum(1) == 0, 1.0, 0.0))
    return out


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
        diff = np.abs(got - ref)
        cos = _cosines(got, ref)
        m = {"max_abs": float(diff.max()), "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
        if ref.ndim == 2 and name == "logits":
            m["top1_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).mean())
        metrics[name] = m
        if tol.outputs is not None and name not in tol.outputs:
            continue
        if tol.atol is not None:
            limit = tol.atol + (tol.rtol or 0.0) * np.abs(ref)
            bad = diff > limit
            if bad.any():
                problems.append(f"{name}: {int(bad.sum())} elements outside {tol.describe()} (max abs {diff.max():.3g})")
        if tol.min_cosine is not None and cos.min() < tol.min_cosine:
            problems.append(f"{name}: cosine {cos.min():.6f} < {tol.min_cosine:g}")
    return {"passed": not problems, "tolerance": tol.describe(), "metrics": metrics, "problems": problems}
