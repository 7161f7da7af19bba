"""The ``bf16`` precision: OpenVINO's BF16 inference of the FP32 graph, gated like any precision.

No new graph is written: on CPUs with AVX512_BF16 or AMX, OpenVINO runs ``model.fp32.onnx`` with
``INFERENCE_PRECISION_HINT=bf16`` (matmul inputs rounded to BF16, FP32 accumulation). A BF16 ONNX
graph was not faster there: OpenVINO converts its weights back to its own BF16 layout, so the
gain is all in the inference precision. The manifest entry ``precisions["bf16"]`` names the FP32
file (same SHA-256), records the inference precision really used and the drift figures against
PyTorch FP32 (gates: ``vitmsn.export.validation.gates``, ``bf16``).

On a CPU without BF16 OpenVINO can only run f32: the entry then says ``inference_precision: f32``
and the runtime never picks bf16 by itself from such an entry (its figures are not BF16's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitmsn.core.errors import InputError
from vitmsn.runtime.manifest import sha256_file
from vitmsn.runtime.backends.openvino import OpenVINORunner, bf16_capable, openvino_available

from vitmsn.export.fp32 import checks
from vitmsn.export.fp32.checks import outputs_in_batches
from vitmsn.export.validation.comparison import compare_with_reference

BF16_LABEL = "bf16_openvino"


def require_openvino() -> None:
    """Raise the one-line install hint when ``--precision bf16`` is asked for without OpenVINO."""
    if not openvino_available():
        raise InputError("--precision bf16 runs on OpenVINO, which is not installed: pip install 'vitmsn[openvino]'")


def openvino_bf16_outputs(fp32_path: Path, x: Any, input_name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Outputs of OpenVINO's BF16 inference of ``fp32_path`` on ``x``, and what ran (precision, version)."""
    with OpenVINORunner(fp32_path, precision="bf16", inference_precision="bf16") as runner:
        got = outputs_in_batches(lambda b: runner.infer({input_name: b}), x)
        return got, {"inference_precision": runner.inference_precision, "openvino_version": runner.version}


def bf16_step(ctx: Any) -> tuple[dict[str, Any], list[checks.StageResult], list[dict[str, Any]]]:
    """Validate BF16 inference of ``ctx.fp32_path`` against ``ctx.reference``; the manifest entry, stages, rows."""
    got, ran = openvino_bf16_outputs(ctx.fp32_path, ctx.inputs.tensors, ctx.spec.input.name)
    stage, row = compare_with_reference(BF16_LABEL, "bf16", got, ctx.reference, ctx.inputs, ctx.gates,
                                        enforce=ctx.fail_on_drift)
    row["backend"] = "openvino"
    stages = [stage]
    if ran["inference_precision"] != "bf16":
        note = ("this CPU has no AVX512_BF16 or AMX: OpenVINO ran f32, so these figures are not BF16's; "
                "re-export on a BF16 CPU")
        stages[0] = checks.StageResult(stage.stage, stage.passed, f"{stage.detail} ({note})", stage.metrics)
    entry = {"file": ctx.fp32_path.name, "sha256": sha256_file(ctx.fp32_path), "size_bytes": ctx.fp32_path.stat().st_size,
             "io_dtype": "float32", "backend": "openvino", **ran, "cpu_bf16": bf16_capable(),
             "validation": {s.stage: {"passed": s.passed, "detail": s.detail} for s in stages}}
    return entry, stages, [row]
