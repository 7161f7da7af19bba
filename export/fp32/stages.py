"""The FP32 reference graph's staged checks (onnx.checker, I/O signature, ONNX Runtime parity with PyTorch)
and its ONNX Runtime-fused CPU flavour, as export stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vitmsn.export.fp32 import checks
from vitmsn.export.fp32.checkpoint import Checkpoint
from vitmsn.export.fp32.memory import Memory, available_memory, size_text
from vitmsn.export.fp32.spec import CHECK_BATCH_SIZES, BatchRange, ExportSpec
from vitmsn.core.progress import say
from vitmsn.runtime.manifest import FlavourEntry

FUSED_FP32_FILE = "model.fp32.ort.onnx"
# Peak memory of ONNX Runtime's transformer fusions, in copies of the FP32 graph, with the weight matrices a pass
# does not read on disk (ort_optimize): 2.5 measured on ViT-L/16 (3.07 GB above the process for a 1.21 GB graph), the
# load and the final check's ONNX Runtime sessions setting it.
FUSION_COPIES = 3


def ort_runner(path: Path, input_name: str):
    """The runtime's ONNX Runtime runner on the CPU provider: the staged parity check runs what users deploy."""
    from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path, providers="CPUExecutionProvider", allow_spinning=False, cpu_arena=False)
    runner.activate()  # released with the runner when the parity check drops it

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        return runner.infer({input_name: x})

    return run


def torch_runner(model: torch.nn.Module, spec: ExportSpec):
    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outs = model(torch.from_numpy(x))
        return {name: t.numpy() for name, t in zip(spec.output_names, outs)}

    return run


def fp32_stages(path: Path, spec: ExportSpec, model: torch.nn.Module, batch: BatchRange | None = None, *,
                parity_sizes: tuple[int, ...] = (), memory: Memory | None = None,
                into: list[checks.StageResult] | None = None,
                keep: list[checks.Reference] | None = None) -> list[checks.StageResult]:
    """The staged checks of the reference graph; a failed stage skips the ones after it. ONNX Runtime parity runs
    at ``parity_sizes``, else :func:`.checks.parity_batch_sizes` of ``batch`` (the checks' default sizes without
    one), each within ``memory`` (:func:`.checks.parity_plan`; measured now when not given). Each stage is
    appended to ``into`` (a :class:`vitmsn.progress.StageLog` times each one) as it finishes; returned. ``keep``
    receives the parity check's first reference rows (:func:`.checks.check_runtime_parity`)."""
    import onnx

    stages = into if into is not None else []
    stages.append(checks.check_onnx_checker(path))
    if not stages[-1].passed:
        stages.extend([checks.skipped("io_signature", "onnx_checker failed"),
                       checks.skipped("onnxruntime_parity", "onnx_checker failed")])
        return stages
    stages.append(checks.check_io_signature(onnx.load(str(path), load_external_data=False), spec))
    if not stages[-1].passed:
        stages.append(checks.skipped("onnxruntime_parity", "io_signature failed"))
        return stages
    requested = parity_sizes or (CHECK_BATCH_SIZES if batch is None else
                                 checks.parity_batch_sizes(batch.min, batch.opt, batch.max))
    run_onnx = ort_runner(path, spec.input.name)  # the session's weights count before the memory is measured
    plan = checks.parity_plan(tuple(requested), spec.arch, memory or available_memory())
    for note in plan.notes + ((plan.refusal,) if plan.refusal else ()):  # before the run, not after it
        say(f"onnxruntime_parity: {note}")
    if plan.refusal is not None:
        stages.append(checks.StageResult("onnxruntime_parity", False, f"not run: {plan.refusal}",
                                         {"plan": plan.to_dict()}))
        return stages
    stage = checks.check_runtime_parity(run_onnx, torch_runner(model, spec), spec, batch_sizes=plan.sizes,
                                        torch_chunk=plan.torch_chunk, keep=keep)
    stage.metrics["plan"] = plan.to_dict()
    if plan.notes:
        stage.detail += f"; {'; '.join(plan.notes)}"
    stages.append(stage)
    return stages


def fused_fp32_step(out: Path, fp32_path: Path, ck: Checkpoint, reference: checks.Reference | None = None
                    ) -> tuple[checks.StageResult, FlavourEntry | None]:
    """``model.fp32.ort.onnx``: ONNX Runtime's transformer fusions (Attention, SkipLayerNorm, BiasGelu) on the
    reference graph, checked (atol 1e-4, rtol 1e-3) before it is written against ``reference`` (the rows PyTorch
    computed for the parity check), or against the reference graph without one; recorded as the fp32 entry's
    ``onnxruntime_optimized`` flavour, which the runtime loads on ONNX Runtime's CPU provider (about 1.1x the
    plain graph's throughput on a ViT-S shape, ``benchmarks/``)."""
    from vitmsn.export.precision.ort_optimize import ort_optimized_onnx_from_fp32

    path = out / FUSED_FP32_FILE
    need, memory = FUSION_COPIES * fp32_path.stat().st_size, available_memory()
    if need > memory.usable:  # said before it starts, never an out-of-memory kill
        return checks.StageResult("ort_fused_fp32", False, f"not run: ONNX Runtime's transformer optimizer needs about "
                                  f"{size_text(need)} for this graph, {size_text(memory.usable)} usable of "
                                  f"{memory.describe()}"), None
    try:
        result = ort_optimized_onnx_from_fp32(fp32_path, path, ck.arch, reference)
    except Exception as exc:  # noqa: BLE001 - the optimizer is third-party code on a user's graph: report, go on
        return checks.StageResult("ort_fused_fp32", False, f"{type(exc).__name__}: {exc}"), None
    from vitmsn.export.steps import file_ref

    ref = file_ref(path)
    flavour = FlavourEntry(ref.file, ref.sha256, ref.size_bytes, "float32",
                           {"runtime": "onnxruntime (com.microsoft fused operators)", **result.to_manifest()})
    fused = ", ".join(f"{k} x{v}" for k, v in result.fused.items())
    return checks.StageResult("ort_fused_fp32", True,
                              f"{fused}; max abs diff vs {result.compared_with} {result.max_abs_diff:.2e}"), flavour
