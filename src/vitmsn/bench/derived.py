"""What the bench derives from the timed rows: which rows run what the runtime would load, each row's
ratio to PyTorch eager, GFLOP/s and fraction of its own precision's GEMM ceiling, and the warning
where the INT8 graph the runtime would load is not faster than the FP32/FP16 one it would load."""

from __future__ import annotations

from typing import Any

from .ceilings import ceiling_precision

ORT_FUSED = "onnxruntime_optimized"  # the manifest key (inside precisions["fp32"]) of the ONNX Runtime-fused graph


def mark_runtime_choices(rows: list[dict[str, Any]], manifest: Any) -> None:
    """``runtime_choice``: the row runs the graph the runtime loads for its backend and precision on this
    device (the registry's rule: ONNX Runtime CPU: the precision's CPU flavour, one session; OpenVINO: the
    inference precision the runtime picks for that precision). The INT8 warning compares these rows."""
    from vitmsn.runtime.backends.registry import cpu_flavour, inference_precision_for

    for r in rows:
        if r["backend"] == "onnxruntime" and r["device"] == "cpu":
            entry = manifest.precisions.get(r["precision"])
            flavour = (cpu_flavour(entry) if entry is not None else None) or ""
            r["runtime_choice"] = r.get("sessions", 1) == 1 and r["variant"] == flavour
        elif r["backend"] == "openvino":
            r["runtime_choice"] = r["variant"] == f"inference {inference_precision_for(r['precision'])}"
        else:
            r["runtime_choice"] = r["backend"] in ("onnxruntime", "tensorrt")


def derive(rows: list[dict[str, Any]], gflops_per_image: float, ceilings: dict[str, float]) -> list[str]:
    """Add ratio_to_pytorch_eager, gflops_per_s, roofline_fraction to every row; return warnings."""
    warnings = []
    for r in rows:
        key = (r["device"], r["mode"], r["batch_size"])
        eager = next((e for e in rows if e["backend"] == "pytorch-eager" and e["precision"] == "fp32"
                      and (e["device"], e["mode"], e["batch_size"]) == key), None)
        r["ratio_to_pytorch_eager"] = round(r["throughput"] / eager["throughput"], 3) if eager else None
        r["gflops_per_s"] = round(gflops_per_image * r["throughput"], 2)
        own = "fp16" if r["precision"] == "fp16" and r["device"] != "cpu" else ceiling_precision(r)
        ceiling = r.get("gemm_ceiling_gflops_per_s") or ceilings.get(f"{r['device']}-{own}") or ceilings.get(f"{r['device']}-fp32")
        r["roofline_fraction"] = round(r["gflops_per_s"] / ceiling, 3) if ceiling else None
    for r in rows:
        if r["precision"] != "int8" or not r.get("runtime_choice"):
            continue
        same = [o for o in rows if o["backend"] == r["backend"] and o["device"] == r["device"] and o["mode"] == r["mode"]
                and o["batch_size"] == r["batch_size"] and o["precision"] in ("fp16", "fp32") and o.get("runtime_choice")]
        for o in same:
            if r["throughput"] <= o["throughput"]:
                warnings.append(f"INT8 is not faster than {o['precision'].upper()}{' [' + o['variant'] + ']' if o['variant'] else ''} "
                                f"on this device: {r['backend']} {r['device']} {r['mode']} batch {r['batch_size']}: "
                                f"{r['throughput']:.2f} vs {o['throughput']:.2f} img/s")
    return warnings
