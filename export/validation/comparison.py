"""A converted graph's outputs against the FP32 reference on the same images, and its drift gates.

The export run compares every precision it wrote (FP16, INT8 for TensorRT, INT8 for ONNX Runtime
CPU) with the PyTorch FP32 model, on ONNX Runtime's CPU provider, image by image:

* inputs: ``--validate-images`` when given (labels from class folders named as the model's
  labels, so accuracy is known), else the calibration images (in-sample for INT8: the report says
  so), else seeded N(0, 1) tensors (only a smoke test: its gates are reported, and enforced only
  with ``--fail-on-drift``);
* figures: :mod:`.drift_metrics` (top-1 agreement, cosine min/mean, max abs, accuracy);
* gates: :mod:`.drift_gates` (defaults per precision, overridable), the same as ``vitmsn validate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitmsn.calibration import CalibrationSet
from vitmsn.runtime.preprocess import ImageError, PreprocessConfig

from vitmsn.export.validation import metrics as dm
from vitmsn.export.fp32.checks import StageResult
from vitmsn.export.validation.gates import Gates, evaluate

SYNTHETIC_IMAGES = 16
MAX_VALIDATION_IMAGES = 1000


@dataclass(frozen=True)
class ComparisonInputs:
    tensors: np.ndarray  # float32 [N, 3, H, W], preprocessed as the manifest says
    labels: np.ndarray  # class index per image, -1 unknown
    source: str
    real: bool  # real images (gates enforced) or synthetic tensors

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "count": int(len(self.tensors)), "real_images": self.real,
                "labelled": int((self.labels >= 0).sum())}


def comparison_inputs(preprocess_block: dict[str, Any], labels: dict[int, str], chw: tuple[int, ...], *,
                      validate_images: Path | None = None, calibration: CalibrationSet | None = None,
                      seed: int = 0) -> ComparisonInputs:
    if validate_images is not None:
        from vitmsn.export.validation.inputs import image_set

        images = image_set(validate_images, labels)
        pre = PreprocessConfig.from_manifest(preprocess_block)
        keep, rows = [], []
        for i, f in enumerate(images.files[:MAX_VALIDATION_IMAGES]):
            try:
                rows.append(pre(f))
            except ImageError:
                continue  # listed by `vitmsn validate`; here it is simply not compared
            keep.append(i)
        if rows:
            return ComparisonInputs(np.stack(rows), images.labels[keep], f"validation images {validate_images}", True)
    if calibration is not None and len(calibration):
        index = {name: i for i, name in labels.items()}
        y = np.array([index.get(c, -1) for c in calibration.classes], dtype=np.int64)
        return ComparisonInputs(calibration.tensors, y, f"calibration images {calibration.source} (in-sample for int8)",
                                True)
    x = np.random.default_rng(seed).standard_normal((SYNTHETIC_IMAGES, *chw), dtype=np.float32)
    return ComparisonInputs(x, -np.ones(len(x), dtype=np.int64), f"{SYNTHETIC_IMAGES} synthetic N(0,1) tensors", False)


def outputs_in_batches(run: Callable[[np.ndarray], dict[str, np.ndarray]], x: np.ndarray,
                       batch: int = 8) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch):
        for k, v in run(np.ascontiguousarray(x[start:start + batch])).items():
            parts.setdefault(k, []).append(np.asarray(v, dtype=np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def onnxruntime_outputs(path: Path, x: np.ndarray, input_name: str, batch: int = 8) -> dict[str, np.ndarray]:
    """Outputs of ``path`` on ONNX Runtime CPU; an FP16-I/O graph is fed FP16 and its outputs widened."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32

    def run(b: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, {input_name: b.astype(dtype)})))

    return outputs_in_batches(run, x, batch)


def compare_with_reference(label: str, precision: str, got: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                           inputs: ComparisonInputs, gates: Gates, *, enforce: bool) -> tuple[StageResult, dict[str, Any]]:
    """Figures and gates of one converted graph; the stage fails when an enforced gate fails."""
    primary = "logits" if "logits" in reference else "embedding"
    classification = primary == "logits"
    summary = dm.summarize(dm.per_image(got[primary], reference[primary], classification=classification))
    metrics = {k: summary[k] for k in ("top1_agreement", "cosine_min", "cosine_mean", "max_abs", "mean_abs", "kl_mean")
               if k in summary}
    if classification and (inputs.labels >= 0).any():
        acc, ref = dm.accuracy(got["logits"], inputs.labels), dm.accuracy(reference["logits"], inputs.labels)
        if acc is not None and ref is not None:
            metrics.update(accuracy=acc, accuracy_reference=ref, accuracy_drop=round(ref - acc, 10))
    results = evaluate(gates, precision, metrics)
    failed = [r for r in results if not r.passed]
    enforced = enforce or inputs.real
    passed = not failed or not enforced
    # cosine with 7 decimals: comparable with gates such as 0.999999 (4 significant digits printed "1")
    figures = ", ".join(f"{k} {metrics[k]:.7f}" if k == "cosine_min" else f"{k} {metrics[k]:.4g}"
                        for k in ("top1_agreement", "cosine_min", "accuracy_drop") if k in metrics)
    if failed:
        detail = "; ".join(r.describe(label, precision) for r in failed)
        detail += "" if enforced else " (synthetic inputs: reported, not enforced; --fail-on-drift enforces)"
    else:
        detail = f"{label} vs PyTorch FP32 on {inputs.source}: {figures}; gates passed"
    stage = StageResult(f"drift_{label}", passed, detail, {"metrics": metrics, "gates": [r.to_dict() for r in results]})
    row = {"backend": "onnxruntime", "precision": precision, "variant": label, "passed": passed, "metrics": metrics,
           "gates": [r.to_dict() for r in results], "inputs": inputs.describe()}
    return stage, row
