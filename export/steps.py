"""The FP16, INT8 and engine steps of an export run: each writes its artifact, checks it, and
returns the manifest entry and the report stages (the pipeline only sequences them).

Artifacts (all named in manifest.json with their SHA-256):

* ``model.fp16.onnx``: AutoCast FP16 (:mod:`.fp16`), ``precisions["fp16"]``;
* ``model.int8.onnx``: Q/DQ placed for TensorRT (:mod:`.int8`), ``precisions["int8"]``; its
  high-precision dtype is FP16 when an engine is built from it, FP32 otherwise (it is then meant
  for ONNX Runtime);
* ``model.int8.cpu.onnx``: the same calibration, placed for ONNX Runtime on CPU
  (:mod:`.int8_cpu`), ``precisions["int8"]["onnxruntime_cpu"]``: what a CPU runtime should load;
* ``engine.<precision>.<target>.plan`` (:mod:`.engine`), one ``engines`` entry each.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx

from vitmsn.calibration import CalibrationMethod, CalibrationSet
from vitmsn.runtime.manifest import CalibrationRecord, EngineEntry, FileRef, FlavourEntry, PrecisionEntry, sha256_file

from vitmsn.export.fp32 import checks
from vitmsn.export.validation.comparison import ComparisonInputs, compare_with_reference, onnxruntime_outputs
from vitmsn.export.validation.gates import Gates
from vitmsn.export.engines.builder import BUILD_ERRORS, EngineOptions, engine_from_onnx
from vitmsn.export.precision.fp16 import Fp16Options, fp16_onnx_from_fp32
from vitmsn.export.precision.int8 import Int8Options, Int8Result, qdq_onnx_from_calibration
from vitmsn.export.precision.int8_cpu import CpuInt8Result, cpu_int8_onnx_from_calibration
from vitmsn.export.fp32.memory import batch_within_memory, calibration_batch
from vitmsn.export.fp32.spec import ExportSpec
from vitmsn.export.fp32.model import ViTMSNArch
from vitmsn.core.errors import InputError
from vitmsn.core.progress import activity, say

log = logging.getLogger(__name__)

FILES = {"fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
CPU_INT8_FILE = "model.int8.cpu.onnx"

R = TypeVar("R", Int8Result, CpuInt8Result)


@dataclass(frozen=True)
class StepContext:
    out: Path
    fp32_path: Path
    spec: ExportSpec
    inputs: ComparisonInputs
    reference: dict[str, np.ndarray]  # PyTorch FP32 outputs on ``inputs``
    gates: Gates
    fail_on_drift: bool
    verbose: bool = False


def file_ref(path: Path) -> FileRef:
    return FileRef(path.name, sha256_file(path), path.stat().st_size)


def validation_record(stages: list[checks.StageResult]) -> dict[str, Any]:
    return {s.stage: {"passed": s.passed, "detail": s.detail} for s in stages}


def _graph_stages(path: Path, spec: ExportSpec, io_dtype: str) -> list[checks.StageResult]:
    """onnx.checker and the I/O signature of one converted graph; stage names carry its tag (``int8_cpu``)."""
    tag = path.name.removeprefix("model.").removesuffix(".onnx").replace(".", "_")
    checked = checks.check_onnx_checker(path)
    stages = [checks.StageResult(f"onnx_checker_{tag}", checked.passed, checked.detail)]
    if checked.passed:
        sig = checks.check_io_signature(onnx.load(str(path), load_external_data=False), spec, io_dtype)
        stages.append(checks.StageResult(f"io_signature_{tag}", sig.passed, sig.detail))
    return stages


def _drift(ctx: StepContext, label: str, precision: str, path: Path) -> tuple[checks.StageResult, dict[str, Any]]:
    got = onnxruntime_outputs(path, ctx.inputs.tensors, ctx.spec.input.name, batch_within_memory(ctx.spec.arch, 8))
    return compare_with_reference(label, precision, got, ctx.reference, ctx.inputs, ctx.gates, enforce=ctx.fail_on_drift)


def fp16_step(ctx: StepContext, options: Fp16Options,
              calibration: CalibrationSet | None) -> tuple[PrecisionEntry, list[checks.StageResult], list[dict[str, Any]]]:
    path = ctx.out / FILES["fp16"]
    reference = calibration.tensors if calibration is not None else (ctx.inputs.tensors if ctx.inputs.real else None)
    result = fp16_onnx_from_fp32(ctx.fp32_path, path, options=options, reference_inputs=reference,
                                 input_name=ctx.spec.input.name)
    stages, rows = _checked(ctx, path, "fp16", "fp16", options.io_dtype)
    ref, record = file_ref(path), result.to_manifest()
    io_dtype = record.pop("io_dtype")
    entry = PrecisionEntry(ref.file, ref.sha256, ref.size_bytes, io_dtype,
                           extra={**record, "validation": validation_record(stages)})
    return entry, stages, rows


def _checked(ctx: StepContext, path: Path, label: str, precision: str,
             io_dtype: str = "float32") -> tuple[list[checks.StageResult], list[dict[str, Any]]]:
    """The graph stages of a converted graph (``label``: fp16, int8 or int8_cpu) and, when they pass, its drift
    stage and report row."""
    stages = _graph_stages(path, ctx.spec, io_dtype)
    rows = []
    if all(s.passed for s in stages):
        stage, row = _drift(ctx, label, precision, path)
        stages.append(stage)
        rows.append(row)
    return stages, rows


def _gate_check(ctx: StepContext) -> Any:
    """The export's own drift gate as a re-quantization check: the same inputs, reference, thresholds and labels."""
    from vitmsn.export.precision.requantize import GateCheck

    known = ctx.inputs.labels >= 0
    return GateCheck(ctx.inputs.tensors, ctx.reference, ctx.gates, ctx.inputs.labels if known.any() else None,
                     precision="int8", input_name=ctx.spec.input.name, batch=batch_within_memory(ctx.spec.arch, 16))


def requantize_within_gate(ctx: StepContext, options: Int8Options, calibration: CalibrationSet, path: Path,
                           max_tries: int) -> tuple[Int8Result | None, dict[str, Any]]:
    """The INT8 graph at ``path`` failed its drift gate: rank its encoder blocks by sensitivity, re-quantize with
    the worst ones kept in high precision until the gate holds (:func:`.requantize.int8_within_gate`).

    The gate is the export's own: the same comparison inputs, PyTorch reference outputs, thresholds
    and labels as the ``drift_int8`` stage. When a try passes, its graph replaces ``path``
    (``os.replace``) and its :class:`Int8Result` is returned; otherwise ``path`` is left as it was
    and None is returned. The tries are written in a temporary folder inside the artifacts
    directory (same file system, so the replacement is atomic) and removed afterwards. The second
    value is the manifest's ``requantization`` record: :meth:`RequantResult.to_dict` (each try's
    exclusions, gate figures and ONNX Runtime speed) plus the sensitivity ranking.
    """
    from vitmsn.export.precision.requantize import int8_within_gate

    check = _gate_check(ctx)
    built: dict[Path, Int8Result] = {}
    log.info("int8: drift gate failed; re-quantizing with the most sensitive blocks excluded (at most %d tries)", max_tries)
    with tempfile.TemporaryDirectory(prefix=".requantize-", dir=ctx.out) as tmp:
        sens, rq = int8_within_gate(ctx.fp32_path, path, calibration.tensors, check, tmp, options=options,
                                    max_tries=max_tries, input_name=ctx.spec.input.name, built=built)
        final, record = _keep_passing(rq, built, path)
    record["exclude"] = list(options.exclude) + list(rq.excluded) if final is not None else list(options.exclude)
    record["sensitivity"] = sens.to_dict()
    return final, record


def cpu_requantize_within_gate(ctx: StepContext, options: Int8Options, calibration: CalibrationSet, path: Path,
                               excluded_nodes: tuple[str, ...], qdq_record: dict[str, Any] | None,
                               max_tries: int) -> tuple[CpuInt8Result | None, dict[str, Any]]:
    """``model.int8.cpu.onnx`` failed its drift gate: rebuild it with the next encoder blocks of the sensitivity
    ranking kept in FP32, one more per try, until the gate holds (at most ``max_tries``).

    The ranking is the Q/DQ graph's (``qdq_record``, when it was re-quantized; else measured now on it), minus the
    blocks that graph already excludes (``excluded_nodes`` stay out of this one too). As for the Q/DQ graph, a try
    that passes replaces ``path``; otherwise ``path`` is left as it was."""
    from vitmsn.export.precision.int8 import resolve_exclusions
    from vitmsn.export.precision.requantize import requantize_until
    from vitmsn.export.precision.sensitivity import sensitivity_analysis

    check = _gate_check(ctx)
    if qdq_record is not None:
        sensitivity, done = qdq_record["sensitivity"], set(qdq_record["excluded"])
    else:
        sensitivity = sensitivity_analysis(ctx.out / FILES["int8"], ctx.fp32_path, calibration.tensors,
                                           granularity="block", input_name=ctx.spec.input.name,
                                           batch=check.batch).to_dict()
        done = set()
    ranking = [g["group"] for g in sensitivity["ranking"]
               if g["group"].startswith("block:") and g["score"] > 0 and g["group"] not in done]
    fp32 = onnx.load(str(ctx.fp32_path), load_external_data=False)
    built: dict[Path, CpuInt8Result] = {}

    def build(groups: list[str], out: Path) -> Path:
        nodes = tuple(excluded_nodes) + tuple(resolve_exclusions(fp32, groups, ("MatMul",)) if groups else ())
        built[out] = cpu_int8_onnx_from_calibration(ctx.fp32_path, out, calibration.tensors,
                                                    method=CalibrationMethod(options.method), exclude_nodes=nodes,
                                                    input_name=ctx.spec.input.name,
                                                    batch_size=options.calibration_batch, verbose=ctx.verbose)
        return out

    log.info("int8_cpu: drift gate failed; re-quantizing with the most sensitive blocks in FP32 (at most %d tries)",
             max_tries)
    with tempfile.TemporaryDirectory(prefix=".requantize-cpu-", dir=ctx.out) as tmp:
        rq = requantize_until(path, ranking, check, build, tmp, max_tries=max_tries, measure_speed=False, progress=True)
        final, record = _keep_passing(rq, built, path)
    record.update(sensitivity=sensitivity, exclude=sorted(done) + (list(rq.excluded) if final is not None else []))
    return final, record


def _keep_passing(rq: Any, built: dict[Path, R], path: Path) -> tuple[R | None, dict[str, Any]]:
    """A try that passed (a :class:`.requantize.RequantResult`) replaces ``path`` and its build result is returned
    (else None); the record: ``rq.to_dict()``, each try's file (only the one kept is not temporary) and ``kept_try``."""
    final = None
    if rq.passed and Path(rq.path) != path:
        os.replace(rq.path, path)
        final = replace(built[Path(rq.path)], path=path)
    record = rq.to_dict()
    kept = len(record["tries"]) - 1 if final is not None else 0  # the try whose graph is at ``path`` now
    for i, t in enumerate(record["tries"]):  # the other tries' files were temporary
        t["file"] = path.name if i == kept else None
    record["kept_try"] = kept
    return final, record


def _a_gate_failed(drift: checks.StageResult | None) -> bool:
    """Only a gate that failed is re-quantized for; an inconclusive one needs more held-out images, not fewer INT8
    blocks."""
    return drift is not None and not drift.passed and any(g.get("verdict") == "failed"
                                                           for g in drift.metrics.get("gates", []))


def _requantization_stage(record: dict[str, Any], label: str = "int8") -> checks.StageResult:
    tries = record["tries"]
    n = len(tries) - 1  # try 0 is the graph as first quantized
    excluded = ", ".join(record["excluded"]) or "nothing"
    if record["passed"] and n == 0:
        detail = "the re-quantization's gate check passes the first INT8 graph (borderline figures); nothing re-quantized"
    elif record["passed"]:
        detail = f"gate holds after {n} re-quantization(s) with {excluded} kept in high precision"
        if record.get("images_per_second") is not None:
            detail += (f" ({_speed(record.get('images_per_second'))} vs "
                       f"{_speed(record.get('images_per_second_all_int8'))} fully quantized)")
    elif not record["sensitivity"]["ranking"] or n == 0:
        detail = "no re-quantization possible: no encoder block adds measurable drift"
    else:
        last = tries[-1]["metrics"]
        figures = ", ".join(f"{k} {last[k]:.{8 if k == 'cosine_min' else 4}g}"
                            for k in ("top1_agreement", "cosine_min", "accuracy_drop") if last.get(k) is not None)
        detail = (f"gate still fails after {n} re-quantization(s) (at most {record['max_tries']}; last try kept "
                  f"{excluded} in high precision: {figures}); the first INT8 graph is kept")
    return checks.StageResult(f"requantize_{label}", bool(record["passed"]), detail, {"requantization": record})


def _speed(value: float | None) -> str:
    return "n/a img/s" if value is None else f"{value:.1f} img/s"


def _cpu_int8(ctx: StepContext, options: Int8Options, calibration: CalibrationSet, excluded_nodes: tuple[str, ...],
              graph_bytes: int) -> tuple[CpuInt8Result | None, int, str | None]:
    """``model.int8.cpu.onnx``, the batch it calibrated at, and why not when it cannot be built: ONNX Runtime's
    calibration also bins the attention scores, so one image may not fit, and its child interpreter may fail."""
    batch, note = calibration_batch(ctx.spec.arch, len(calibration), graph_bytes, scores=True)
    if batch == 0:
        return None, 0, f"ONNX Runtime's calibration also bins the attention scores: {note}"
    if note:
        say(f"note: {CPU_INT8_FILE}: {note}")
    activity(f"INT8 placed for ONNX Runtime on CPU -> {CPU_INT8_FILE}")
    try:
        return cpu_int8_onnx_from_calibration(ctx.fp32_path, ctx.out / CPU_INT8_FILE, calibration.tensors,
                                              method=CalibrationMethod(options.method), exclude_nodes=excluded_nodes,
                                              input_name=ctx.spec.input.name, batch_size=batch,
                                              verbose=ctx.verbose), batch, None
    except RuntimeError as exc:  # its child interpreter failed (or was killed)
        return None, batch, str(exc)


def int8_calibration_batch(arch: ViTMSNArch, images: int, graph_bytes: int) -> tuple[int, str | None]:
    """:func:`.calibration_batch` within the memory available now; InputError (exit 2) when one image cannot fit."""
    batch, note = calibration_batch(arch, images, graph_bytes)
    if batch == 0:
        raise InputError(f"INT8: {note}; free memory or export without --precision int8")
    return batch, note


def int8_step(ctx: StepContext, options: Int8Options, calibration: CalibrationSet, *,
              cpu_flavour: bool = True,
              max_tries: int = 0) -> tuple[PrecisionEntry, list[checks.StageResult], list[dict[str, Any]]]:
    """Quantize, check, compare; with ``max_tries`` > 0, a graph that fails its drift gate is re-quantized
    with its most sensitive blocks in high precision (:func:`requantize_within_gate`), and the stages
    and figures reported are those of the file finally written."""
    path = ctx.out / FILES["int8"]
    graph_bytes = ctx.fp32_path.stat().st_size
    batch, note = int8_calibration_batch(ctx.spec.arch, len(calibration), graph_bytes)
    if note:  # said before it runs
        say(f"note: INT8 {note}")
    options = replace(options, calibration_batch=batch)  # the re-quantization tries and the CPU flavour too
    result = qdq_onnx_from_calibration(ctx.fp32_path, path, calibration.tensors, options=options,
                                       input_name=ctx.spec.input.name)
    stages, rows = _checked(ctx, path, "int8", "int8")
    requantization = None
    exclude = list(options.exclude)
    drift = next((s for s in stages if s.stage == "drift_int8"), None)
    if max_tries > 0 and _a_gate_failed(drift):
        requantized, requantization = requantize_within_gate(ctx, options, calibration, path, max_tries)
        if requantized is not None:  # model.int8.onnx was replaced: check and compare the file kept
            result = requantized
            exclude = requantization["exclude"]
            stages, rows = _checked(ctx, path, "int8", "int8")
        stages.insert(len(stages) - 1 if stages and stages[-1].stage == "drift_int8" else len(stages),
                      _requantization_stage(requantization))
    quant = result.to_manifest()
    extra: dict[str, Any] = {"method": quant["method"], "high_precision_dtype": quant["high_precision_dtype"],
                             "exclude": exclude, "excluded_nodes": quant["excluded_nodes"], "quantization": quant}
    calib_extra = {k: v for k, v in calibration.to_manifest().items() if k not in ("source", "count", "tensor_sha256")}
    record = CalibrationRecord(calibration.source, len(calibration), calibration.sha256, quant["method"],
                               {"skipped_images": len(calibration.skipped), **calib_extra})
    if requantization is not None:
        extra["requantization"] = requantization
    flavours: dict[str, FlavourEntry] = {}
    cpu, cpu_path = None, ctx.out / CPU_INT8_FILE
    if cpu_flavour:  # optional: when it cannot be built, the run says why and goes on without it
        cpu, cpu_batch, why = _cpu_int8(ctx, options, calibration, result.excluded_nodes, graph_bytes)
        if why is not None:
            extra["cpu_flavour_not_built"] = why
            say(f"note: no {CPU_INT8_FILE}: {why}")
    if cpu is not None:
        options = replace(options, calibration_batch=cpu_batch)  # its re-quantization tries
        cpu_stages, cpu_rows = _checked(ctx, cpu_path, "int8_cpu", "int8")
        cpu_drift = next((s for s in cpu_stages if s.stage == "drift_int8_cpu"), None)
        cpu_requantization = None
        if max_tries > 0 and _a_gate_failed(cpu_drift):
            # the same sensitivity-guided exclusions as the Q/DQ graph's, continued down the same ranking
            requantized_cpu, cpu_requantization = cpu_requantize_within_gate(
                ctx, options, calibration, cpu_path, result.excluded_nodes, requantization, max_tries)
            if requantized_cpu is not None:
                cpu = requantized_cpu
                cpu_stages, cpu_rows = _checked(ctx, cpu_path, "int8_cpu", "int8")
            cpu_stages.insert(len(cpu_stages) - 1, _requantization_stage(cpu_requantization, "int8_cpu"))
        rows += cpu_rows
        stages += cpu_stages
        ref = file_ref(cpu_path)
        flavours["onnxruntime_cpu"] = FlavourEntry(ref.file, ref.sha256, ref.size_bytes, "float32", {
            **cpu.to_manifest(), "calibration_sha256": calibration.sha256, "validation": validation_record(cpu_stages),
            **({"requantization": cpu_requantization} if cpu_requantization is not None else {})})
    ref = file_ref(path)
    entry = PrecisionEntry(ref.file, ref.sha256, ref.size_bytes, "float32", record, flavours,
                           {**extra, "validation": validation_record(stages)})
    return entry, stages, rows


def engine_step(out: Path, precision: str, onnx_file: str, spec: ExportSpec, io_dtype: str,
                options: EngineOptions) -> tuple[EngineEntry | None, checks.StageResult]:
    target = options.target
    plan = out / f"engine.{precision}.{target}.plan"
    try:
        r = engine_from_onnx(out / onnx_file, plan, precision=precision, input_name=spec.input.name,
                             input_chw=tuple(int(d) for d in spec.input.shape[1:]), options=options)
    except BUILD_ERRORS as exc:  # what TensorRT's bindings raise, not only RuntimeError
        return None, checks.StageResult(f"engine_{precision}", False, f"{type(exc).__name__}: {exc}")
    ref, ccs = file_ref(plan), tuple(str(c) for c in r.compute_capabilities)
    entry = EngineEntry(ref.file, ref.sha256, ref.size_bytes, precision, target, str(r.tensorrt_version), onnx_file,
                        io_dtype, compute_capabilities=ccs, aot_targets=ccs if r.aot else (), profile=dict(r.profile),
                        version_compatible=bool(options.version_compatible),
                        hardware_compatible=options.hardware_compatibility is not None,
                        extra={"build_seconds": round(r.build_seconds, 2), "strongly_typed": r.strongly_typed,
                               "precision_flags": list(r.precision_flags), "options": r.options.to_manifest(),
                               "notes": list(r.notes), **r.manifest_fields()})
    detail = (f"{plan.name}: {(ref.size_bytes or 0) / 1e6:.1f} MB in {r.build_seconds:.1f}s, {target} {r.tensorrt_version}, "
              f"{'AOT ' if r.aot else ''}{','.join(r.compute_capabilities)}, profile {r.profile[spec.input.name]}")
    return entry, checks.StageResult(f"engine_{precision}", True, detail)
