"""The whole export run behind ``vitmsn-export``: checkpoint -> ONNX (FP32, FP16, INT8) -> engines ->
checks and drift gates -> manifest, verdicts and report. Each step is a function of another module (:mod:`.steps`
the FP16, INT8 and engine steps); this module sequences them, records them and decides the outcome: bad options or
input -> :class:`InputError` before anything is written (exit 2); artifacts written but a check, an engine build or
a drift gate failed -> :class:`ValidationFailed` (exit 1). Output is staged and swapped in whole (:mod:`.staging`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vitmsn.core import third_party_output
from vitmsn.calibration import CalibrationMethod, CalibrationOptions, CalibrationSet, calibration_set_from_directory
from vitmsn.core.errors import InputError, ValidationFailed
from vitmsn.core.interrupts import import_deferred
from vitmsn.runtime.manifest import (MANIFEST_NAME, CalibrationRecord, EngineEntry, FlavourEntry, LogEntry, Manifest,
                                     PrecisionEntry, Where)

from vitmsn.export.fp32 import checks
from vitmsn.export.fp32.checkpoint import load_checkpoint
from vitmsn.export.fp32.checks import outputs_in_batches
from vitmsn.export.validation.comparison import calibration_content, comparison_inputs
from vitmsn.export.validation.drift_report import VALIDATION_STAGE, validation_stage, write_drift_reports
from vitmsn.export.engines.builder import builder_status, check_engine_options
from vitmsn.export.options import ExportOptions
from vitmsn.export.precision.fp16 import Fp16Options, reference_samples
from vitmsn.export.precision.int8 import Int8Options
from vitmsn.export.fp32.memory import available_memory, batch_within_memory, release_memory
from vitmsn.export.fp32.onnx_export import onnx_from_model
from vitmsn.export.steps import (StepContext, engine_step, file_ref, fp16_step, int8_calibration_batch, int8_step,
                                 validation_record)
from vitmsn.export.staging import StagedOutput
from vitmsn.export.validation.report import write_export_report
from vitmsn.export.fp32.spec import ExportSpec
from vitmsn.export.validation.validate import ValidationResult, validate_artifacts
from vitmsn.export.validation.verdict import ReferenceCache
from vitmsn.export.validation.recording import records_from_export, records_from_validation, with_verdicts
from vitmsn.export.validation.inputs import image_set
from vitmsn.export.fp32.stages import FUSED_FP32_FILE, fp32_stages, fused_fp32_step, torch_runner
from vitmsn.export.manifest_skeleton import manifest_skeleton
from vitmsn.core.progress import PeakRss, StageLog, activity, say

log = logging.getLogger(__name__)

@dataclass
class ExportResult:
    out: Path
    manifest: Manifest
    stages: list[checks.StageResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.stages)

    @property
    def failures(self) -> list[checks.StageResult]:
        return [s for s in self.stages if not s.passed]


def _calibration(opts: ExportOptions, preprocess_block: dict[str, Any]) -> CalibrationSet | None:
    if opts.calib_images is None or not {"fp16", "int8"} & set(opts.precisions):
        return None
    return calibration_set_from_directory(opts.calib_images, preprocess_block, CalibrationOptions(
        samples=opts.calib_samples, seed=opts.calib_seed, min_images=opts.calib_min_images, cache_dir=opts.calib_cache,
        # the drift gates never run in-sample: without --validate-images they run on images held out from calibration
        hold_out=opts.validate_images is None))


def drift_validation(manifest: Manifest, opts: ExportOptions, stages: list[checks.StageResult],
                     reference_cache: ReferenceCache | None = None) -> tuple[ValidationResult | None, checks.StageResult]:
    """``--validate-images``: the full ``vitmsn validate`` run on the artifacts just written (every precision and
    flavour, every engine this machine can run, against PyTorch FP32), as the ``drift_validation`` stage.

    The stage fails exactly when ``vitmsn validate`` would exit 1 on these images: a drift gate failed. The
    images are real, so the gates are enforced whatever ``--fail-on-drift`` says (as the ``drift_*`` stages
    enforce them on real images). Skipped when a graph or engine check failed (what would be compared is
    not sound); an input problem found only now (e.g. no image readable) fails the stage, since the
    artifacts are already written.
    """
    broken = [s.stage for s in stages if not s.passed and not s.stage.startswith(("drift_", "requantize_"))]
    if broken:
        return None, checks.skipped(VALIDATION_STAGE, f"{', '.join(broken)} failed")
    int8 = manifest.precisions.get("int8")
    requantization = int8.extra.get("requantization") if int8 is not None else None
    try:
        # OpenVINO is gated here for bf16, the precision only it runs; its fp32/int8 runs: `vitmsn validate`
        v = validate_artifacts(manifest, opts.validate_images, gates=opts.gates, openvino=("bf16",),
                               reference_cache=reference_cache)
    except InputError as exc:
        return None, checks.StageResult(VALIDATION_STAGE, False, f"--validate-images {opts.validate_images}: {exc}")
    if requantization:  # shown in report.md/.html next to the figures of the graph kept
        v.extra["requantization"] = {k: val for k, val in requantization.items() if k != "sensitivity"}
        v.extra["sensitivity"] = requantization["sensitivity"]
    stage = validation_stage(v, opts.validate_images)
    return v, checks.StageResult(VALIDATION_STAGE, stage["passed"], stage["detail"], stage["metrics"])


def run_export(opts: ExportOptions) -> ExportResult:
    """Run the export into a staging directory beside ``--out`` (:class:`.staging.StagedOutput`), which replaces
    ``--out`` whole at the end, also when a check failed (exit 1 leaves the failing artifacts for inspection).
    Raises InputError (nothing written) or ValidationFailed (artifacts written)."""
    started = time.perf_counter()
    with StagedOutput(opts.out) as staged:
        try:
            result, failed = _export_into(opts, staged.path, started)
        finally:
            third_party_output.stop()
        staged.commit({f.file for f in result.manifest.files()} | {MANIFEST_NAME})
    result.out = Path(opts.out)
    result.manifest = replace(result.manifest, root=result.out)
    if failed is not None:
        raise ValidationFailed(failed, result.manifest.verdict or "failed")
    return result


def _preload(opts: ExportOptions, build_engines: bool) -> None:
    """Import the C++ extensions the run will need now, with SIGINT/SIGTERM held: an interrupt that lands
    inside such an import (pybind11 calling back into Python) would abort the process instead of
    unwinding (exit 134)."""
    names = ["onnx", "onnxruntime"]
    if {"fp16", "int8"} & set(opts.precisions):
        names += ["modelopt.onnx.autocast", "modelopt.onnx.quantization", "onnxruntime.quantization"]
    if build_engines:
        names += ["tensorrt_rtx" if opts.target == "tensorrt-rtx" else "tensorrt"]
    import_deferred(names)


def _export_into(opts: ExportOptions, out: Path, started: float) -> tuple[ExportResult, str | None]:
    """The run, written into ``out`` (the staging directory); the second value is the ValidationFailed
    message when a check failed."""
    stages = StageLog()  # each check as it finishes, and every step of the run, with its time and peak RSS
    activity(f"loading checkpoint {opts.model}")
    fewshot = None
    if opts.fewshot is not None or opts.fewshot_labels is not None:
        from vitmsn.export.fewshot import fewshot_checkpoint

        fewshot = fewshot_checkpoint(opts.model, opts.fewshot, opts.fewshot_labels, out, replace_head=opts.replace_head,
                                     skip_unreadable=opts.skip_unreadable, alpha_background=opts.alpha_background,
                                     revision=opts.revision)
        ck = load_checkpoint(str(fewshot.directory))
        ck.directory = Path(opts.out).resolve() / fewshot.directory.name  # where it will be once --out is replaced
    else:
        ck = load_checkpoint(opts.model, revision=opts.revision)
    if opts.alpha_background is not None:
        ck.preprocess = replace(ck.preprocess, alpha_background=opts.alpha_background)
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    try:  # before anything is written: e.g. a preprocess size the model input cannot take, std 0
        manifest_skeleton(opts, ck, spec).check_consistency()
    except InputError as exc:
        raise InputError(f"{ck.directory}: the checkpoint does not make a valid manifest ({exc}); fix its config.json "
                         f"or {ck.preprocess_source}") from None
    assert opts.engine_options is not None
    notes: list[str] = []
    build_engines = False
    if opts.engine != "skip":  # decided before anything is written: --engine require fails here
        status = builder_status(opts.target)
        build_engines = status.available
        if not status.available:
            if opts.engine == "require":
                raise InputError(f"--engine require: no engine can be built: {status.reason}")
            notes.append(f"no engine built (--engine auto): {status.reason}")
        check_engine_options(opts.engine_options)  # every engine option, before anything is written (exit 2)
    preprocess_block = dict(ck.preprocess.to_manifest(), source=ck.preprocess_source)
    # Input problems surface before anything is written: too few calibration images, or
    # validation folders that are not the model's labels, are InputError (exit 2).
    if opts.calib_images is not None and {"fp16", "int8"} & set(opts.precisions):
        activity(f"reading calibration images from {opts.calib_images}")
    calibration = _calibration(opts, preprocess_block)
    if calibration is not None and "int8" in opts.precisions:  # refused now, not after minutes of FP32 export and checks
        int8_calibration_batch(spec.arch, len(calibration), 4 * sum(t.numel() for t in ck.state_dict.values()))
    sample = calibration_content(calibration, preprocess_block) if calibration is not None else None
    converted = [p for p in opts.precisions if p != "fp32"]
    inputs = None
    if converted:
        inputs = comparison_inputs(preprocess_block, ck.labels, tuple(int(d) for d in spec.input.shape[1:]),
                                   validate_images=opts.validate_images, calibration=calibration, sample=sample)
    elif opts.validate_images is not None:  # the drift validation reads it at the end: refuse a bad folder now
        image_set(opts.validate_images, ck.labels if spec.task == "image-classification" else {})

    log_path = third_party_output.start(out / third_party_output.LOG_FILE)  # third-party output from here on, imports included
    _preload(opts, build_engines)
    model = ck.build_model(opts.attention)
    ck = replace(ck, state_dict={})  # the model holds the weights now: one copy in memory, not two
    fp32_path = out / "model.fp32.onnx"
    log.info("exporting %s (%s, %s attention) to %s", opts.model, spec.task, opts.attention,
             Path(opts.out) / fp32_path.name)  # the final path, not the staging directory's
    activity(f"exporting {fp32_path.name} (torch.onnx, dynamo; third-party output goes to "
             f"{Path(opts.out) / third_party_output.LOG_FILE})")  # the final path: the staging directory is gone by the end
    t0, export_rss = time.perf_counter(), PeakRss().start()
    onnx_from_model(model, spec, fp32_path, opset=opts.opset, batch=opts.batch)
    export_seconds = time.perf_counter() - t0
    export_resources = {"seconds": round(export_seconds, 2), "peak_rss_mb": round(export_rss.peak() / 1e6)}

    parity = opts.parity_batch or checks.parity_batch_sizes(opts.batch.min, opts.batch.opt, opts.batch.max)
    activity(f"checking {fp32_path.name}: onnx.checker, I/O signature, ONNX Runtime parity at batch "
             f"{', '.join(map(str, parity))} (within memory)")
    parity_rows: list[checks.Reference] = []  # the fused CPU flavour is checked against them
    fp32_stages(fp32_path, spec, model, opts.batch, parity_sizes=parity, into=stages, keep=parity_rows)
    reference_cache, reference = ReferenceCache(), None
    if inputs is not None and all(s.passed for s in stages):
        activity(f"PyTorch FP32 reference outputs on {len(inputs.tensors)} comparison inputs")
        reference = outputs_in_batches(torch_runner(model, spec), inputs.tensors,
                                       batch_within_memory(spec.arch, 8, runtime="pytorch"))
        reference_cache.add(inputs.tensors, reference)  # --validate-images reads these again at the end
    del model  # nothing runs PyTorch after this: its weights are not held beside the fusions, FP16 or INT8
    release_memory()  # nor the parity check's ONNX Runtime session
    skeleton = manifest_skeleton(opts, ck, spec, root=out)
    if fewshot is not None:  # the fitted checkpoint's files, and what a user needs to trust the head
        skeleton = replace(skeleton, checkpoint=fewshot.files(out), extra={**skeleton.extra, "fewshot": fewshot.block})
    ref = file_ref(fp32_path)
    flavours: dict[str, FlavourEntry] = {}
    fp32_validation = validation_record(stages)
    if opts.fp32_cpu and all(s.passed for s in stages):
        activity(f"ONNX Runtime transformer fusions -> {FUSED_FP32_FILE}")
        fused_stage, fused = fused_fp32_step(out, fp32_path, ck, parity_rows[0] if parity_rows else None)
        if fused is not None:
            stages.append(fused_stage)
            flavours["onnxruntime_optimized"] = fused
        else:  # an optional speed-up: said in the report's notes, never a failed run
            notes.append(f"no ONNX Runtime-fused FP32 graph: {fused_stage.detail}")
        release_memory()  # the fusions' graphs and sessions, before FP16 and INT8 size themselves (ViT-B: 0.7 GB)
    precisions: dict[str, PrecisionEntry] = {"fp32": PrecisionEntry(
        ref.file, ref.sha256, ref.size_bytes, "float32", flavours=flavours,
        extra={"export_seconds": round(export_seconds, 2), "validation": fp32_validation})}
    engines: list[EngineEntry] = []
    if calibration is not None and sample is not None:
        skeleton = replace(skeleton, calibration=CalibrationRecord.from_json(
            dict(calibration.to_manifest(), **sample.to_manifest()), Where(str(skeleton.path), "calibration")))
    result = ExportResult(out, replace(skeleton, precisions=precisions), stages, notes)
    rows: list[dict[str, Any]] = []
    if inputs is not None and reference is not None:  # the FP32 graph passed its checks
        ctx = StepContext(out, fp32_path, spec, inputs, reference, opts.gates, opts.fail_on_drift, opts.verbose)
        if "fp16" in opts.precisions:
            activity("FP16: ModelOpt AutoCast, then checks and drift against PyTorch FP32")
            samples, skipped = reference_samples(spec.arch, available_memory().usable)
            if skipped:  # said before it runs, and recorded (range_check.reference)
                say(f"note: {skipped}")
                notes.append(skipped)
            entry, new, r = fp16_step(ctx, Fp16Options(io_dtype="float16" if opts.fp16_io else "float32",
                                                       reference_samples=samples, range_check_skipped=skipped,
                                                       verbose=opts.verbose), calibration)
            precisions["fp16"] = entry
            release_memory()
            stages += new
            rows += r
        if "bf16" in opts.precisions:  # OpenVINO's BF16 inference of model.fp32.onnx: no graph, no engine
            from vitmsn.export.precision.bf16 import bf16_step

            entry, new, r = bf16_step(ctx)
            precisions["bf16"] = PrecisionEntry.from_json(entry, Where(str(skeleton.path), "precisions.bf16"))
            stages += new
            rows += r
        if "int8" in opts.precisions:
            assert calibration is not None
            high = opts.int8_high_precision if opts.int8_high_precision != "auto" else ("fp16" if build_engines else "fp32")
            int8_options = Int8Options(method=CalibrationMethod(opts.int8_method), high_precision=high,
                                       exclude=tuple(opts.int8_exclude),
                                       quantize_attention=opts.int8_quantize_attention, verbose=opts.verbose)
            activity(f"INT8: ModelOpt {opts.int8_method} calibration on {len(calibration)} images, then checks and drift")
            entry, new, r = int8_step(ctx, int8_options, calibration, cpu_flavour=opts.int8_cpu,
                                      max_tries=opts.int8_max_tries)
            if "cpu_flavour_not_built" in entry.extra:
                notes.append(f"no model.int8.cpu.onnx: {entry.extra['cpu_flavour_not_built']}")
            precisions["int8"] = entry
            release_memory()
            stages += new
            rows += r
    elif converted:
        stages += [checks.skipped(f"convert_{p}", "the FP32 reference graph failed its checks") for p in converted]

    # A drift gate that fails (after any re-quantization) still gets its engines: artifacts are written and the
    # run exits 1 naming the gate; a graph that failed its checks gets none.
    if build_engines and all(s.passed for s in stages if not s.stage.startswith(("drift_", "requantize_"))):
        engine_versions = {}
        for precision in (p for p in opts.precisions if p != "bf16"):  # bf16 is OpenVINO's, no engine
            entry = precisions[precision]
            activity(f"building engine.{precision}.{opts.target}.plan from {entry.file}")
            built, stage = engine_step(out, precision, entry.file, spec, entry.io_dtype, opts.engine_options)
            stages.append(stage)
            if built is not None:
                engines.append(built)
                engine_versions[opts.target] = built.tensorrt_version
        skeleton = replace(skeleton, versions={**skeleton.versions, **engine_versions})
    elif build_engines:
        notes.append("no engine built: an earlier check failed")

    result.manifest = replace(skeleton, precisions=precisions, engines=tuple(engines))
    validation = None
    extra = dict(skeleton.extra)
    if opts.validate_images is not None:
        activity(f"drift validation on {opts.validate_images} (vitmsn validate)")
        validation, stage = drift_validation(result.manifest, opts, stages, reference_cache)
        stages.append(stage)
        extra["drift_validation"] = {"passed": stage.passed, "detail": stage.detail, **stage.metrics}

    extra.update(notes=list(notes), total_seconds=round(time.perf_counter() - started, 2),
                 # where time and memory went: the torch.onnx export, then each stage (stage_table prints them)
                 resources={"peak_rss_mb": round(PeakRss.high_water() / 1e6), "onnx_export": export_resources,
                            "stages": stages.resources(), "steps": stages.step_resources()})
    result.manifest = replace(result.manifest, extra=extra)
    # the one verdict (manifest.json "verdicts"): the drift rows on held-out images, then --validate-images' run
    records = records_from_export(rows, result.manifest, inputs.describe() if inputs else None, opts.fail_on_drift)
    records += records_from_validation(validation, by="export") if validation is not None else []
    checks_passed = all(s.passed for s in stages if not s.stage.startswith(("drift_", "requantize_")))
    result.manifest = with_verdicts(result.manifest, records, checks_passed)
    reports = write_export_report(out, result.manifest.to_json(), stages, rows, inputs.describe() if inputs else None)
    if validation is not None:
        # report.json/.md/.html of `vitmsn validate`, merged over the export report (its stages are kept, and
        # the top-level "passed" covers both), so the directory holds one report of the whole run.
        reports.update(write_drift_reports(out, validation, verdicts=result.manifest))
    third_party_output.stop()  # the log is complete: its hash goes in the manifest
    logs = LogEntry.from_json(third_party_output.manifest_entry(log_path), Where(str(result.manifest.path), "logs"))
    word = "failed" if not checks_passed else (result.manifest.verdict or "passed")
    if word == "passed" and not result.passed:  # an unenforced stage is never failed; a failed stage is not passed
        word = "failed"
    result.manifest = replace(result.manifest.with_reports(reports), passed=word == "passed", verdict=word, logs=logs)
    result.manifest.save()
    if word != "passed":
        failed = "; ".join(f"{s.stage}: {s.detail}" for s in result.failures)
        return result, f"{opts.out}: artifacts written, but {word} ({failed}); see {Path(opts.out) / 'report.md'}"
    return result, None
