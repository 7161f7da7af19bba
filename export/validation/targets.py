"""What ``vitmsn validate`` compares: the targets an artifacts directory holds (each backend running one of its
files, through the runtime's own runners) and the PyTorch FP32 reference they are compared with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from vitmsn.core.errors import InputError
from vitmsn.runtime.backends.registry import BACKENDS as REGISTRY
from vitmsn.runtime.images.preprocess import PreprocessConfig
from vitmsn.runtime.manifest import EngineEntry, Manifest

BACKENDS = ("all", *REGISTRY)


@dataclass
class Target:
    """One thing to compare with the reference: a backend running one artifact file."""

    backend: str
    precision: str
    file: str
    make_runner: Callable[[], Any]
    variant: str = ""  # "" for the precision's own graph, else the manifest key of a flavour of it
    sha256: str = ""  # of the file, as verified just before it runs



def targets_from_manifest(manifest: Manifest, precisions: Sequence[str] | None = None, backend: str = "all",
                          openvino: Sequence[str] | None = None) -> tuple[list[Target], list[dict[str, str]]]:
    """Every (backend, precision) the artifacts hold and this machine can run, and why not the others.
    ``openvino``: the precisions OpenVINO runs under ``backend="all"`` (None: every one it can; the export
    passes ``("bf16",)``, the precision only OpenVINO runs)."""
    if backend == "auto":
        backend = "all"
    if backend not in BACKENDS:
        raise InputError(f"--backend {backend}: choose from {', '.join(BACKENDS)}")
    wanted = [p.lower() for p in precisions] if precisions else None
    available = set(manifest.precisions) | {e.precision for e in manifest.engines}
    for p in wanted or []:
        if p not in available:
            raise InputError(f"--precision {p}: {manifest.root} has no {p} artifact (it has: {', '.join(sorted(available))})")
    targets: list[Target] = []
    skipped: list[dict[str, str]] = []
    if backend in ("all", "onnxruntime"):

        for precision, entry in manifest.precisions.items():
            if wanted and precision not in wanted or entry.extra.get("backend") == "openvino":
                continue  # bf16 is OpenVINO's inference precision: ONNX Runtime would run FP32 under its name
            # the graph itself, and any flavour recorded inside its entry (int8's "onnxruntime_cpu")
            flavours = [("", entry), *entry.flavours.items()]
            for variant, e in flavours:
                path = manifest.verify(e)
                targets.append(Target("onnxruntime", precision, e.file, _ort_factory(path, precision), variant, e.sha256))
    if backend in ("all", "tensorrt"):
        from vitmsn.runtime.backends.registry import engine_choices

        runnable, why_not = engine_choices(manifest, None)
        for entry in runnable:
            if wanted and entry.precision not in wanted:
                continue
            path = manifest.verify(entry)
            targets.append(Target(entry.target, entry.precision, entry.file, _trt_factory(path, entry), "", entry.sha256))
        from vitmsn.runtime.backends import device

        if why_not and not device.cuda_gpus():  # one reason, not one per engine, and no rebuild that cannot help
            files = ", ".join(e.file for e in manifest.engines)
            why_not = [f"{files}: TensorRT engines need an NVIDIA GPU with a CUDA driver, and none was found here"]
        skipped += [{"backend": "tensorrt", "reason": reason} for reason in why_not]
    if backend in ("all", "openvino"):
        ov_wanted = wanted if backend == "openvino" or openvino is None else [
            p for p in (wanted or manifest.precisions) if p in openvino]
        ov_targets, reason = _openvino_targets(manifest, ov_wanted) if ov_wanted != [] else ([], "")
        targets += ov_targets
        if reason:
            if backend == "openvino":
                raise InputError(f"--backend openvino: {reason}")
            skipped.append({"backend": "openvino", "reason": reason})
    if not targets:
        raise InputError(f"{manifest.root}: nothing to validate with --backend {backend}"
                         + (f" --precision {','.join(wanted)}" if wanted else "")
                         + (f" ({'; '.join(s['reason'] for s in skipped)})" if skipped else ""))
    return targets, skipped


def _ort_factory(path: Path, precision: str) -> Callable[[], Any]:
    from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

    # No spin-waiting: backends take turns on each batch, and a spinning idle session steals the
    # cores the next one (or PyTorch) needs.
    return lambda: OnnxRuntimeRunner(path, precision=precision, allow_spinning=False)


def _openvino_targets(manifest: Manifest, wanted: list[str] | None) -> tuple[list[Target], str]:
    """OpenVINO on the CPU: fp32 (f32), bf16 (BF16 inference where the CPU has it) and int8 (the Q/DQ graph),
    each with the inference precision the runtime would use here."""
    from vitmsn.runtime.backends.openvino import OpenVINORunner, inference_precision_for, openvino_available

    if not openvino_available():
        return [], "OpenVINO is not installed (pip install 'vitmsn[openvino]')"
    targets = []
    for precision, entry in manifest.precisions.items():
        if precision == "fp16" or (wanted and precision not in wanted):
            continue
        path = manifest.verify(entry)
        inference = inference_precision_for(precision)
        factory = (lambda path=path, precision=precision, inference=inference:
                   OpenVINORunner(path, precision=precision, inference_precision=inference))
        targets.append(Target("openvino", precision, entry.file, factory, f"inference {inference}", entry.sha256))
    return targets, ""


def _trt_factory(path: Path, entry: EngineEntry) -> Callable[[], Any]:
    from vitmsn.runtime.backends.tensorrt import TensorRTRunner

    return lambda: TensorRTRunner(path, entry)


def checkpoint_for(manifest: Manifest, checkpoint: str | None = None, missing_ok: bool = False,
                   mismatch: Callable[[str, Any], str] | None = None) -> Any:
    """The checkpoint the artifacts were exported from, its SHA-256 checked against the manifest's
    ``model.checkpoint_sha256`` (an :class:`InputError` where it differs, worded by ``mismatch(source, ck)`` if given).

    Where: ``checkpoint`` (``--checkpoint``) if given; else a few-shot export's fitted checkpoint inside the
    artifacts, the directory recorded at export time (if it is still there), then ``model.source``. The first
    of these is loaded and its load error raised; ``missing_ok``: the first that loads, None where none does."""
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    model_block = manifest.model
    recorded = Path(str(model_block.extra.get("directory", "")))
    sources: list[tuple[str, str]] = []
    if checkpoint:
        sources.append((checkpoint, "--checkpoint"))
    else:
        if manifest.checkpoint is not None:  # a few-shot export: the fitted checkpoint inside the artifacts
            sources.append((str(manifest.path_of(manifest.checkpoint.directory)), "manifest.json checkpoint.directory"))
        if recorded.is_absolute() and recorded.is_dir():
            sources.append((str(recorded), "manifest.json model.directory"))
        sources.append((model_block.source, "manifest.json model.source (pass the checkpoint with --checkpoint)"))
    for source, option in sources if missing_ok else sources[:1]:
        try:
            ck = load_checkpoint(str(source), option)
        except InputError:
            if missing_ok:
                continue
            raise
        expected = model_block.checkpoint_sha256
        if ck.sha256 != expected:
            raise InputError(mismatch(source, ck) if mismatch else
                             f"{ck.directory}: checkpoint SHA-256 {ck.sha256[:12]}... does not match the manifest's "
                             f"model.checkpoint_sha256 {str(expected)[:12]}...; this is not the checkpoint the artifacts "
                             "were exported from (pass the original one with --checkpoint, or re-export)")
        return ck
    return None


def reference_model(manifest: Manifest, checkpoint: str | None = None) -> tuple[Any, dict[str, Any], list[dict[str, Any]]]:
    """The PyTorch FP32 model the artifacts were exported from, its description, and its checks."""
    model_block = manifest.model
    ck = checkpoint_for(manifest, checkpoint)
    attention = str(model_block.extra.get("attention", "math"))
    model = ck.build_model(attention)
    manifest_pre = PreprocessConfig.from_manifest(manifest.preprocess)
    same = manifest_pre == ck.preprocess
    check = {"check": "preprocess_matches_checkpoint", "passed": same,
             "detail": ("manifest preprocess equals the checkpoint's " + ck.preprocess_source) if same else
             f"manifest preprocess {manifest_pre} differs from the checkpoint's ({ck.preprocess_source}: "
             f"{ck.preprocess}); images would be normalised differently from training: re-export"}
    checks = [check]
    if manifest.task == "image-classification":  # labels are not hashed: an edited manifest would misname classes
        checks.append(_labels_check(manifest.labels, ck.labels))
    info = {"backend": "pytorch", "precision": "fp32", "attention": attention, "source": model_block.source,
            "checkpoint": str(ck.directory),
            "checkpoint_sha256": ck.sha256}
    return model, info, checks


def _labels_check(manifest_labels: dict[int, str], checkpoint_labels: dict[int, str]) -> dict[str, Any]:
    differ = sorted(i for i in set(manifest_labels) | set(checkpoint_labels)
                    if manifest_labels.get(i) != checkpoint_labels.get(i))
    if not differ:
        return {"check": "labels_match_checkpoint", "passed": True,
                "detail": f"manifest labels equal the checkpoint's id2label ({len(checkpoint_labels)} classes)"}
    shown = ", ".join(f"{i} ({manifest_labels.get(i)!r}, checkpoint {checkpoint_labels.get(i)!r})" for i in differ[:5])
    return {"check": "labels_match_checkpoint", "passed": False,
            "detail": f"manifest labels differ from the checkpoint's id2label at class {shown}; predictions would be "
                      "named wrongly: restore manifest.json or re-run vitmsn-export"}
