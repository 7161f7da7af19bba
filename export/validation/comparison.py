"""A converted graph's outputs against the FP32 reference on the same images, and its drift gates.

The export run compares every precision it wrote (FP16, INT8 for TensorRT, INT8 for ONNX Runtime
CPU) with the PyTorch FP32 model, on ONNX Runtime's CPU provider, image by image:

* inputs, never in-sample: ``--validate-images`` when given (labels from class folders named as the
  model's labels, so accuracy is known; images that are also in the calibration sample, by the
  SHA-256 of their bytes or of their decoded pixels (:mod:`vitmsn.calibration.content`), are left
  out and counted), else the images of ``--calib-images`` held out from calibration (a seeded, stratified,
  disjoint split: :func:`vitmsn.calibration.heldout_split`), else seeded N(0, 1) tensors (only a
  smoke test: its gates are reported, and enforced only with ``--fail-on-drift``). ``describe()``
  records which images gated (count, source, how they were chosen, the split's seed);
* figures and gates: :func:`.verdict.compare_outputs`, the one verdict ``vitmsn validate`` and the
  re-quantization loop use too (defaults per precision, overridable).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitmsn.calibration import CalibrationSet
from vitmsn.runtime.images.preprocess import PreprocessConfig, preprocess_files
from vitmsn.calibration.content import SampleDigests

from vitmsn.export.fp32.checks import StageResult, outputs_in_batches
from vitmsn.export.validation.gates import Gates
from vitmsn.export.validation.verdict import compare_outputs

SYNTHETIC_IMAGES = 16
MAX_VALIDATION_IMAGES = 1000


@dataclass(frozen=True)
class ComparisonInputs:
    tensors: np.ndarray  # float32 [N, 3, H, W], preprocessed as the manifest says
    labels: np.ndarray  # class index per image, -1 unknown
    source: str
    real: bool  # real images (gates enforced) or synthetic tensors
    selection: str = "synthetic"  # validate-images | heldout-from-calibration | synthetic
    split_seed: int | None = None  # the seed of the held-out split (heldout-from-calibration)
    excluded_in_sample: int = 0  # validate-images also in the calibration sample, left out

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "count": int(len(self.tensors)), "real_images": self.real,
                "sha256": hashlib.sha256(np.ascontiguousarray(self.tensors).tobytes()).hexdigest(),
                "labelled": int((self.labels >= 0).sum()), "selection": self.selection, "split_seed": self.split_seed,
                "in_sample": False, "excluded_in_sample": self.excluded_in_sample}


def calibration_content(calibration: CalibrationSet, preprocess_block: dict[str, Any]) -> SampleDigests:
    """The calibration sample by content (what the manifest records, and what gating images are matched with)."""
    pre = PreprocessConfig.from_manifest(preprocess_block)
    return SampleDigests.of_images([Path(calibration.source) / f for f in calibration.files], pre)


def comparison_inputs(preprocess_block: dict[str, Any], labels: dict[int, str], chw: tuple[int, ...], *,
                      validate_images: Path | None = None, calibration: CalibrationSet | None = None,
                      sample: SampleDigests | None = None, seed: int = 0) -> ComparisonInputs:
    """``sample``: the calibration images' digests (:func:`calibration_content`, computed here when not given)."""
    pre = PreprocessConfig.from_manifest(preprocess_block)
    if calibration is not None and sample is None:
        sample = calibration_content(calibration, preprocess_block)
    if validate_images is not None:
        from vitmsn.export.validation.inputs import image_set

        images = image_set(validate_images, labels)
        # in sample by bytes or by pixels, whatever the path
        chosen = sample.outside(images.files, pre) if sample is not None else list(range(len(images.files)))
        excluded = len(images.files) - len(chosen)
        chosen = chosen[:MAX_VALIDATION_IMAGES]
        x, keep, _ = preprocess_files(pre, [images.files[i] for i in chosen])  # unreadable ones: not compared
        if len(keep):
            note = f", {excluded} left out as they are in the calibration sample" if excluded else ""
            return ComparisonInputs(x, images.labels[[chosen[i] for i in keep]],
                                    f"validation images {validate_images}{note}", True, "validate-images",
                                    excluded_in_sample=excluded)
    if calibration is not None and sample is not None and calibration.heldout:
        held = [Path(calibration.source) / f for f in calibration.heldout]
        distinct = sample.outside(held, pre)  # a copy of a calibrated image in the same folder stays out
        x, keep, _ = preprocess_files(pre, [held[i] for i in distinct])
        if len(keep):
            index = {name: i for i, name in labels.items()}
            y = np.array([index.get(calibration.heldout_classes[distinct[i]], -1) for i in keep], dtype=np.int64)
            excluded = len(held) - len(distinct)
            note = f"; {excluded} left out as copies of calibration images" if excluded else ""
            return ComparisonInputs(
                x, y, f"{len(keep)} images of {calibration.source} held out from calibration (seeded split, seed "
                f"{calibration.seed}; {len(calibration)} others calibrated{note})", True, "heldout-from-calibration",
                split_seed=calibration.seed, excluded_in_sample=excluded)
    x = np.random.default_rng(seed).standard_normal((SYNTHETIC_IMAGES, *chw), dtype=np.float32)
    return ComparisonInputs(x, -np.ones(len(x), dtype=np.int64), f"{SYNTHETIC_IMAGES} synthetic N(0,1) tensors", False)


def onnxruntime_outputs(path: Path, x: np.ndarray, input_name: str, batch: int = 8) -> dict[str, np.ndarray]:
    """Outputs of ``path`` through the runtime's ONNX Runtime runner on the CPU provider (the code users
    deploy); an FP16-I/O graph is fed FP16 and its outputs widened."""
    from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

    with OnnxRuntimeRunner(path, providers="CPUExecutionProvider", allow_spinning=False) as runner:
        return outputs_in_batches(lambda b: runner.infer({input_name: b}), x, batch)


def compare_with_reference(label: str, precision: str, got: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                           inputs: ComparisonInputs, gates: Gates, *, enforce: bool) -> tuple[StageResult, dict[str, Any]]:
    """Figures and gates of one converted graph; the stage fails when an enforced gate fails."""
    verdict = compare_outputs(got, reference, gates, precision, inputs.labels)
    metrics, results, failed = verdict.metrics, verdict.gates, verdict.failed
    enforced = enforce or inputs.real
    passed = not failed or not enforced
    # cosine with 7 decimals: comparable with gates such as 0.999999 (4 significant digits printed "1")
    figures = ", ".join(f"{k} {metrics[k]:.7f}" if k.startswith("cosine") else f"{k} {metrics[k]:.4g}"
                        for k in ("top1_agreement", "cosine_p5", "cosine_min", "accuracy_drop")
                        if metrics.get(k) is not None)
    if failed:
        detail = "; ".join(r.describe(label, precision) for r in failed)
        detail += "" if enforced else " (synthetic inputs: reported, not enforced; --fail-on-drift enforces)"
    else:
        detail = f"{label} vs PyTorch FP32 on {inputs.source}: {figures}; gates passed"
    stage = StageResult(f"drift_{label}", passed, detail, {"metrics": metrics, "gates": [r.to_dict() for r in results]})
    row = {"backend": "onnxruntime", "precision": precision, "variant": label, "passed": passed, "metrics": metrics,
           "gates": [r.to_dict() for r in results], "inputs": inputs.describe()}
    return stage, row
