"""``vitmsn validate``: every precision and backend of an artifacts directory against PyTorch FP32.

The reference is the exported checkpoint itself (``load_checkpoint(...).build_model()``, its
SHA-256 checked against the manifest), fed exactly the float32 tensors every backend gets: each
image is preprocessed once, by the runtime's :class:`PreprocessConfig` built from the manifest.
Each backend runs through the runtime's runners (``OnnxRuntimeRunner`` for every ONNX graph,
``TensorRTRunner`` for every engine this machine can run), i.e. the code users deploy.

What runs, and the reference, come from :mod:`.targets`. Images stream through in batches, so memory
stays flat whatever the image count; figures are computed per image (:mod:`.metrics`) and gated per
precision (:mod:`.gates`). Unreadable images are listed and skipped. Labels come from class sub-folders
named as the model's labels, or from a CSV ``path,label`` file (:mod:`.inputs`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitmsn.core.errors import InputError
from vitmsn.core.progress import Progress, say
from vitmsn.runtime.manifest import Manifest
from vitmsn.runtime.images.preprocess import PreprocessConfig, preprocess_files

from vitmsn.export.validation import metrics as dm
from vitmsn.export.validation.gates import Gates, GateResult, worst
from vitmsn.export.validation.stats import Verdict
from vitmsn.export.validation.inputs import ImageSet, image_set, without_calibration_images
from vitmsn.export.validation.targets import reference_model, targets_from_manifest
from vitmsn.export.validation.verdict import ReferenceCache, drift_verdict

log = logging.getLogger(__name__)

WORST_IMAGES = 12


@dataclass
class BackendResult:
    backend: str
    precision: str
    file: str
    per_output: dict[str, dict[str, np.ndarray]]  # output -> per-image metric arrays
    logits: np.ndarray | None
    metrics: dict[str, Any]
    outputs: dict[str, dict[str, Any]]
    gates: list[GateResult]
    worst_images: list[dict[str, Any]]
    seconds: float
    providers: list[str] = field(default_factory=list)
    variant: str = ""

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision}" + (f" ({self.variant})" if self.variant else "")

    sha256: str = ""  # of the file that ran (read before it ran)

    @property
    def verdict(self) -> Verdict:
        return worst([g.verdict for g in self.gates])

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def to_dict(self) -> dict[str, Any]:
        n = self.metrics.get("images", 0)
        return {
            "backend": self.backend, "precision": self.precision, "variant": self.variant, "file": self.file,
            "sha256": self.sha256, "providers": self.providers,
            "passed": self.passed, "verdict": self.verdict, "metrics": self.metrics, "outputs": self.outputs,
            "gates": [g.to_dict() for g in self.gates], "worst_images": self.worst_images,
            "timing": {"seconds": round(self.seconds, 3),
                       "images_per_second": round(n / self.seconds, 2) if self.seconds > 0 else None},
        }


@dataclass
class ValidationResult:
    artifacts: Path
    task: str
    primary_output: str
    reference: dict[str, Any]
    images: ImageSet
    evaluated: list[str]  # relative paths of the images compared, in order
    evaluated_labels: np.ndarray  # their class indices (-1 unknown)
    skipped_images: list[dict[str, str]]
    results: list[BackendResult]
    skipped_backends: list[dict[str, str]]
    gates: Gates
    checks: list[dict[str, Any]] = field(default_factory=list)  # reference-level checks (preprocess)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. "sensitivity", added by callers

    manifest_sha256: str = ""  # of the manifest content it read (runtime.verdicts.manifest_content_sha256)
    images_sha256: str = ""  # of the evaluated images' bytes, in order

    @property
    def verdict(self) -> Verdict:
        checks = ["passed" if c["passed"] else "failed" for c in self.checks]
        return worst([r.verdict for r in self.results] + checks)

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"

    def failures(self) -> list[str]:
        out = [f"{c['check']}: {c['detail']}" for c in self.checks if not c["passed"]]
        for r in self.results:
            out += [g.describe(r.backend, r.precision + (f" ({r.variant})" if r.variant else ""))
                    for g in r.gates if not g.passed]
        return out

    def result(self, precision: str, backend: str = "onnxruntime", variant: str = "") -> BackendResult:
        for r in self.results:
            if r.precision == precision and r.backend == backend and r.variant == variant:
                return r
        raise KeyError(f"no {backend} {precision} result")

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "passed": self.passed,
            "verdict": self.verdict,
            "manifest_sha256": self.manifest_sha256,
            "task": self.task,
            "primary_output": self.primary_output,
            "results": [r.to_dict() for r in self.results],
            "checks": self.checks,
            "images": {**self.images.describe(), "evaluated": len(self.evaluated),
                       "labelled": int((self.evaluated_labels >= 0).sum()), "sha256": self.images_sha256,
                       "skipped_count": len(self.skipped_images), "skipped": self.skipped_images},
            "skipped_backends": self.skipped_backends,
            "thresholds": self.gates.to_dict(),
            **self.extra,
        }


# ---- running --------------------------------------------------------------------------------
def _prediction(logits: np.ndarray, labels: dict[int, str]) -> dict[str, Any]:
    p = np.exp(dm.log_softmax(logits))
    i = int(np.argmax(logits))
    return {"index": i, "label": labels.get(i, str(i)), "score": round(float(p[i]), 6)}


def _worst(per: dict[str, np.ndarray], classification: bool, n: int) -> np.ndarray:
    if classification:  # disagreements first, then by divergence
        return np.lexsort((-per["kl"], per["top1_agree"].astype(int)))[:n]
    return np.argsort(per["cosine"], kind="stable")[:n]


def _batch_within_memory(manifest: Manifest, wanted: int, attention: str) -> int:
    """``wanted``, or the largest batch PyTorch and ONNX Runtime both fit in the memory available here (said)."""
    from vitmsn.export.fp32.memory import available_memory, batch_within_memory, cannot_fit_either
    from vitmsn.export.fp32.model import ViTMSNArch

    arch, memory = ViTMSNArch.from_config(manifest.model.config), available_memory()
    bs = min(batch_within_memory(arch, wanted, runtime=rt, memory=memory, attention=attention)  # type: ignore[arg-type]
             for rt in ("pytorch", "onnxruntime"))
    if bs < wanted:
        why = cannot_fit_either(arch, wanted, memory=memory, attention=attention)  # type: ignore[arg-type]
        say(f"validate: batch {wanted} does not fit ({why}); {bs} images at a time instead")
    return bs


def validate_artifacts(artifacts_dir: str | Path | Manifest, images_dir: str | Path, labels_file: str | Path | None = None,
                       gates: Gates | None = None, *, precisions: Sequence[str] | None = None, backend: str = "all",
                       checkpoint: str | None = None, batch_size: int | None = None, progress: bool = True,
                       worst_images: int = WORST_IMAGES, openvino: Sequence[str] | None = None,
                       reference_cache: ReferenceCache | None = None) -> ValidationResult:
    """Compare every runnable precision/backend of ``artifacts_dir`` with PyTorch FP32 on ``images_dir``.

    Raises InputError for bad input (exit 2); returns the result whatever the gates say (the
    caller decides: ``vitmsn validate`` exits 1 when ``not result.passed``).
    """
    import torch

    gates = gates or Gates()
    # a Manifest object lets the export pipeline validate before it writes manifest.json (it is written last)
    manifest = artifacts_dir if isinstance(artifacts_dir, Manifest) else Manifest.load(artifacts_dir)
    labels = manifest.labels
    images = image_set(images_dir, labels if manifest.task == "image-classification" else {}, labels_file)
    pre = PreprocessConfig.from_manifest(manifest.preprocess)
    images = without_calibration_images(images, manifest.calibration, pre)  # never gate in sample
    targets, skipped_backends = targets_from_manifest(manifest, precisions, backend, openvino)
    model, reference, checks = reference_model(manifest, checkpoint)
    classification = manifest.task == "image-classification"
    names = manifest.output_names
    primary = "logits" if classification else "embedding"
    bs = _batch_within_memory(manifest, batch_size or manifest.batch.opt, str(reference["attention"]))
    cache = reference_cache if reference_cache is not None else ReferenceCache()

    per: dict[int, dict[str, list[dict[str, np.ndarray]]]] = {i: {o: [] for o in names} for i in range(len(targets))}
    logits: dict[int, list[np.ndarray]] = {i: [] for i in range(-1, len(targets))}
    seconds = {i: 0.0 for i in range(-1, len(targets))}
    evaluated: list[int] = []
    skipped_images: list[dict[str, str]] = []
    files = images.files
    first_x = None  # the first batch, for the Polygraphy cross-check of engines
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(t.make_runner()) for t in targets]
        with Progress(f"validate {len(targets)} backend(s) against pytorch fp32", len(files), unit="img",
                      enabled=progress) as bar:
            for start in range(0, len(files), bs):
                chunk = files[start:start + bs]
                x, ok, bad = preprocess_files(pre, chunk, images.root)
                skipped_images += bad
                evaluated += [start + i for i in ok]
                if len(ok):
                    first_x = x if first_x is None else first_x
                    t0 = time.perf_counter()

                    def pytorch(batch: np.ndarray) -> dict[str, np.ndarray]:
                        with torch.inference_mode():
                            return {n: t.numpy() for n, t in zip(names, model(torch.from_numpy(batch)))}

                    ref = cache.outputs(x, pytorch)
                    seconds[-1] += time.perf_counter() - t0
                    if classification:
                        logits[-1].append(ref["logits"])
                    for i, runner in enumerate(runners):
                        t0 = time.perf_counter()
                        got = runner.infer({manifest.input_name: x})
                        seconds[i] += time.perf_counter() - t0
                        for o in names:
                            if o not in got:
                                raise InputError(f"{targets[i].file}: output {o!r} missing ({targets[i].backend} returned "
                                                 f"{sorted(got)}); re-run vitmsn-export")
                            per[i][o].append(dm.per_image(got[o], ref[o], classification=classification and o == "logits"))
                        if classification:
                            logits[i].append(np.asarray(got["logits"], dtype=np.float32))
                bar.update(len(chunk))
        providers = [list(getattr(r, "providers", [])) for r in runners]
        # OpenVINO: the inference precision the compiled model really ran (f32 or bf16), not the one asked for
        ran = [str(getattr(r, "inference_precision", "") or "") for r in runners]
    for s in skipped_images:
        log.info("validate: skipped %s (%s)", s["image"], s["reason"])
    if not evaluated:
        raise InputError(f"--images {images.root}: none of the {len(files)} images could be read "
                         f"(first: {skipped_images[0]['image']}: {skipped_images[0]['reason']})")

    truth = images.labels[evaluated]
    rel = [images.relative(i) for i in evaluated]
    ref_logits = np.concatenate(logits[-1]) if classification else np.zeros((len(evaluated), 0), np.float32)
    acc_ref = dm.accuracy(ref_logits, truth) if classification else None
    reference.update(images=len(evaluated), seconds=round(seconds[-1], 3), accuracy=acc_ref, batch_size=bs)
    results = []
    for i, t in enumerate(targets):
        per_output = {o: dm.concat(per[i][o]) for o in names}
        outputs = {o: dm.summarize(per_output[o]) for o in names}
        got_logits = np.concatenate(logits[i]) if classification else np.zeros((len(evaluated), 0), np.float32)
        verdict = drift_verdict(per_output[primary], gates, t.precision, classification=classification,
                                got_logits=got_logits, ref_logits=ref_logits, labels=truth)
        metrics = dict(verdict.metrics, output=primary)
        worst = []
        for j in _worst(per_output[primary], classification, worst_images):
            item: dict[str, Any] = {"image": rel[j], **{k: dm.finite_or_none(v[j]) if v.dtype.kind == "f" else bool(v[j])
                                                        for k, v in per_output[primary].items()}}
            if classification:
                item["reference"] = _prediction(ref_logits[j], labels)
                item["prediction"] = _prediction(got_logits[j], labels)
                item["label"] = labels.get(int(truth[j])) if truth[j] >= 0 else None
            worst.append(item)
        results.append(BackendResult(t.backend, t.precision, t.file, per_output,
                                     got_logits if classification else None, metrics, outputs,
                                     verdict.gates, worst, seconds[i], providers[i],
                                     f"inference {ran[i]}" if ran[i] else t.variant, t.sha256))
    from vitmsn.export.validation.polygraphy_check import cross_check_engines

    crosses, cross_checks = cross_check_engines(manifest, targets, first_x)  # engines only; see the module
    from vitmsn.export.validation.recording import files_sha256
    from vitmsn.runtime.manifest.verdicts import manifest_content_sha256

    return ValidationResult(manifest.root, manifest.task, primary, reference, images, rel, truth, skipped_images,
                            results, skipped_backends, gates, checks + cross_checks,
                            extra={"polygraphy": [c.to_dict() for c in crosses]} if crosses else {},
                            manifest_sha256=manifest_content_sha256(manifest.to_json()),
                            images_sha256=files_sha256([files[i] for i in evaluated]))
