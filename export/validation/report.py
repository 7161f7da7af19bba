"""The export report: report.json (machine-readable, the documented schema) and report.md (people)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitmsn.runtime.manifest import write_bytes_atomic, write_json_atomic

from vitmsn.export.fp32.checks import StageResult, stage_word
from vitmsn.export.validation.drift_report import _table, gate_verdict_text, requantization_markdown, verdict_text


def _parity_metrics(stage: StageResult) -> dict[str, Any]:
    per_batch = stage.metrics.get("per_batch", {})
    figures = [m for outputs in per_batch.values() for m in outputs.values()]
    if not figures:
        return {}
    return {
        "max_abs": max(m["max_abs"] for m in figures),
        "mean_abs": max(m["mean_abs"] for m in figures),
        "rel_l2_max": max(m["rel_l2_max"] for m in figures),
        "atol": stage.metrics["atol"],
        "rtol": stage.metrics["rtol"],
        "batch_sizes": stage.metrics["batch_sizes"],
    }


def export_report(manifest: dict[str, Any], stages: list[StageResult], rows: list[dict[str, Any]] | None = None,
                  inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json: the staged checks, then one result per (backend, precision) compared with PyTorch FP32.

    ``rows`` are the converted precisions' comparisons (:mod:`.comparison`); ``failed_stages``
    names every stage that failed, so a CI log can say which gate stopped the run.
    """
    verdict = manifest.get("verdict") or ("passed" if all(s.passed for s in stages) else "failed")
    parity = next((s for s in stages if s.stage == "onnxruntime_parity"), None)
    fp32_stages = [s for s in stages if s.stage in ("onnx_checker", "io_signature", "onnxruntime_parity")]
    fewshot = {"fewshot": manifest["fewshot"]} if manifest.get("fewshot") else {}
    return {
        **fewshot,
        "reference": {"backend": "pytorch", "precision": "fp32", "attention": manifest["model"]["attention"],
                      "source": manifest["model"]["source"]},
        "passed": all(s.passed for s in stages) and verdict == "passed",
        "verdict": verdict,
        "verdicts": manifest.get("verdicts", []),
        "failed_stages": [s.stage for s in stages if not s.passed],
        "comparison_inputs": inputs,
        "stages": [s.to_dict() for s in stages],
        "results": [{
            "backend": "onnxruntime",
            "precision": "fp32",
            "variant": "fp32",
            "passed": all(s.passed for s in fp32_stages),
            "metrics": _parity_metrics(parity) if parity else {},
        }] + list(rows or []),
        "engines": [{k: e.get(k) for k in ("file", "precision", "target", "tensorrt_version", "size_bytes",
                                             "build_seconds", "profile", "compute_capabilities")}
                    for e in manifest.get("engines", [])],
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def export_markdown(manifest: dict[str, Any], report: dict[str, Any]) -> str:
    m = manifest["model"]
    lines = [
        f"# Export report: {m['source']}",
        "",
        f"- task: {m['task']}, attention: {m['attention']}, opset {manifest['opset']}",
        f"- batch profile: {manifest['batch']}",
        f"- result: **{report.get('verdict', 'passed' if report['passed'] else 'failed').upper()}**"
        + (f" (failed: {', '.join(report['failed_stages'])})" if report.get("failed_stages") else ""),
        "",
        "## Staged checks",
        "",
    ]
    lines += _table(["stage", "result", "detail"],
                    [[s["stage"], verdict_text({"verdict": stage_word(s)}), s["detail"]] for s in report["stages"]])
    parity = next((s for s in report["stages"] if s["stage"] == "onnxruntime_parity"), None)
    if parity and parity["metrics"].get("per_batch"):
        lines += ["", f"## ONNX Runtime vs PyTorch (atol {parity['metrics']['atol']:g}, rtol {parity['metrics']['rtol']:g})", ""]
        lines += _table(["batch", "output", "max abs", "mean abs", "max rel L2", "violations"], [
            [str(batch), name, f"{f['max_abs']:.2e}", f"{f['mean_abs']:.2e}", f"{f['rel_l2_max']:.2e}",
             f"{f['violations']}/{f['elements']}"]
            for batch, outputs in parity["metrics"]["per_batch"].items() for name, f in outputs.items()], right={0, 2, 3, 4, 5})
        if parity["metrics"].get("seconds"):  # reports written before the times were recorded have none
            seconds = parity["metrics"]["seconds"]
            runs = ", ".join(f"{n}: {s:.1f} s" for n, s in seconds["onnxruntime"].items())
            lines += ["", f"Time: PyTorch reference {seconds['pytorch_reference']:.1f} s; ONNX Runtime at batch {runs}"]
    converted = [r for r in report["results"] if r.get("variant") != "fp32"]
    if converted:
        inputs = report.get("comparison_inputs") or {}
        lines += ["", f"## Precisions vs PyTorch FP32 ({inputs.get('source', '?')}, {inputs.get('count', '?')} images)", ""]
        keys = ["top1_agreement", "cosine_p5", "cosine_min", "cosine_mean", "max_abs", "accuracy", "accuracy_reference"]
        lines += _table(["graph", "precision", "top-1 agreement", "cosine p5", "cosine min", "cosine mean", "max abs",
                         "accuracy", "accuracy (FP32)"],
                        [[r["variant"], r["precision"], *(_fmt(r["metrics"].get(k)) for k in keys)] for r in converted],
                        right=range(2, 9))
        lines += ["", "Gates (each decided on its one-sided 95% bound; inconclusive: the images cannot decide):", ""]
        lines += _table(["graph", "gate", "metric", "value", "bound", "threshold", "n", "verdict"], [
            [r["variant"], g["gate"], g["metric"], _fmt(g.get("value")), _fmt(g.get("bound")),
             f"{g['op']} {g['threshold']:g}", str(g.get("n", "")), gate_verdict_text(g)]
            for r in converted for g in r.get("gates", [])], right={3, 4, 6})
    engines = report.get("engines") or []
    if engines:
        lines += ["", "## Engines", ""]
        rows = []
        for e in engines:
            prof = next(iter((e.get("profile") or {}).values()), {})
            shapes = " / ".join("x".join(str(d) for d in prof.get(k, [])) for k in ("min", "opt", "max"))
            rows.append([e["file"], str(e["precision"]), str(e["target"]), str(e["tensorrt_version"]),
                         f"{(e.get('size_bytes') or 0) / 1e6:.1f} MB", f"{_fmt(e.get('build_seconds'))}s", shapes,
                         ",".join(e.get("compute_capabilities") or [])])
        lines += _table(["file", "precision", "target", "version", "size", "build", "profile (min/opt/max)", "compute"],
                        rows, right={4, 5})
    requantization = (manifest.get("precisions", {}).get("int8") or {}).get("requantization")
    if requantization:
        lines += ["", *requantization_markdown(requantization)]
    if manifest.get("fewshot"):
        from vitmsn.export.fewshot.record import fewshot_markdown

        lines += ["", *fewshot_markdown(manifest["fewshot"])]
    calib = manifest.get("calibration")
    if calib:
        lines += ["", f"Calibration: {calib['count']} images from {calib['source']} (seed {calib['seed']}, "
                  f"{'stratified by class folder' if calib['stratified'] else 'not class-structured'}), tensors sha256 "
                  f"{calib['tensor_sha256'][:16]}..., {calib['skipped_count']} unreadable image(s) skipped"
                  + "".join(f"\n- skipped {s['file']}: {s['reason']}" for s in calib.get("skipped", [])[:20])]
    return "\n".join(lines) + "\n"


def write_export_report(out: Path, manifest: dict[str, Any], stages: list[StageResult],
                        rows: list[dict[str, Any]] | None = None, inputs: dict[str, Any] | None = None) -> dict[str, str]:
    report = export_report(manifest, stages, rows, inputs)
    write_json_atomic(out / "report.json", report)
    write_bytes_atomic(out / "report.md", export_markdown(manifest, report).encode())
    return {"json": "report.json", "md": "report.md"}
