"""The export report: report.json (machine-readable, CONTRACT.md schema) and report.md (people)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitmsn.runtime.manifest import write_bytes_atomic, write_json_atomic

from .checks import StageResult


def _parity_metrics(stage: StageResult) -> dict[str, Any]:
    per_batch = stage.metrics.get("per_batch", {})
    figures = [m for outputs in per_batch.values() for m in outputs.values()]
    if not figures:
        return {}
    return {
        "max_abs": max(m["max_abs"] for m in figures),
        "mean_abs": max(m["mean_abs"] for m in figures),
        "max_rel": max(m["max_rel"] for m in figures),
        "atol": stage.metrics["atol"],
        "rtol": stage.metrics["rtol"],
        "batch_sizes": stage.metrics["batch_sizes"],
    }


def export_report(manifest: dict[str, Any], stages: list[StageResult]) -> dict[str, Any]:
    parity = next((s for s in stages if s.stage == "onnxruntime_parity"), None)
    return {
        "reference": {"backend": "pytorch", "precision": "fp32", "attention": manifest["model"]["attention"],
                      "source": manifest["model"]["source"]},
        "passed": all(s.passed for s in stages),
        "stages": [s.to_dict() for s in stages],
        "results": [{
            "backend": "onnxruntime",
            "precision": "fp32",
            "passed": all(s.passed for s in stages),
            "metrics": _parity_metrics(parity) if parity else {},
        }],
    }


def export_markdown(manifest: dict[str, Any], report: dict[str, Any]) -> str:
    m = manifest["model"]
    lines = [
        f"# Export report: {m['source']}",
        "",
        f"- task: {m['task']}, attention: {m['attention']}, opset {manifest['opset']}",
        f"- batch profile: {manifest['batch']}",
        f"- result: **{'PASSED' if report['passed'] else 'FAILED'}**",
        "",
        "## Staged checks (reference graph, model.fp32.onnx)",
        "",
        "| stage | result | detail |",
        "|---|---|---|",
    ]
    for s in report["stages"]:
        detail = s["detail"].replace("|", "\\|")
        lines.append(f"| {s['stage']} | {'pass' if s['passed'] else '**FAIL**'} | {detail} |")
    parity = next((s for s in report["stages"] if s["stage"] == "onnxruntime_parity"), None)
    if parity and parity["metrics"].get("per_batch"):
        lines += ["", f"## ONNX Runtime vs PyTorch (atol {parity['metrics']['atol']:g}, rtol {parity['metrics']['rtol']:g})", "",
                  "| batch | output | max abs | mean abs | max rel | violations |", "|---:|---|---:|---:|---:|---:|"]
        for batch, outputs in parity["metrics"]["per_batch"].items():
            for name, f in outputs.items():
                lines.append(f"| {batch} | {name} | {f['max_abs']:.2e} | {f['mean_abs']:.2e} | {f['max_rel']:.2e} | "
                             f"{f['violations']}/{f['elements']} |")
    return "\n".join(lines) + "\n"


def write_export_report(out: Path, manifest: dict[str, Any], stages: list[StageResult]) -> dict[str, str]:
    report = export_report(manifest, stages)
    write_json_atomic(out / "report.json", report)
    write_bytes_atomic(out / "report.md", export_markdown(manifest, report).encode())
    return {"json": "report.json", "md": "report.md"}
