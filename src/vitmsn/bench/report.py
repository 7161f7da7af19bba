"""The benchmark report as Markdown (JSON is the report dict itself, see ``suite.run_bench``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vitmsn.runtime.manifest import write_json_atomic, write_bytes_atomic

from .correctness import TOLERANCES

VARIANT_NAMES = {"onnxruntime_optimized": "ORT-fused graph", "onnxruntime_cpu": "CPU-placed graph", "": ""}


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None:
        return none
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def row_name(r: dict[str, Any]) -> str:
    parts = [VARIANT_NAMES.get(r.get("variant", ""), r.get("variant", ""))]
    if r.get("sessions", 1) > 1:
        parts.append(f"batch split over {r['sessions']} single-thread sessions")
    detail = ", ".join(p for p in parts if p)
    return f"{r['backend']}{f' ({detail})' if detail else ''}"


def _gauge(r: dict[str, Any]) -> str:
    """Which precision's GEMM ceiling a CPU row is measured against (each row against its own)."""
    return f" of {r['gemm_ceiling_precision']}" if r.get("gemm_ceiling_precision") else ""


def results_table(rows: list[dict[str, Any]], e2e: bool = False) -> list[str]:
    """One row per timed configuration; ``e2e`` adds end to end over model only and its CPU-time bound."""
    extra_head, extra_rule = (" e2e / model | CPU-time bound |", "---:|---:|") if e2e else ("", "")
    lines = ["| backend | precision | device | batch | median ms | p90 ms | p99 ms | img/s | x eager | GFLOP/s | "
             f"of GEMM ceiling | min cosine |{extra_head} check |",
             f"|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|{extra_rule}---|"]
    for r in rows:
        lat = r["latency_ms"]
        check = r["correctness"]
        verdict = "pass" if check["passed"] else "**FAIL**: " + "; ".join(check["problems"])[:120]
        if r.get("verified") is False:
            verdict += " (unverified path)"
        if r.get("noisy"):
            verdict += f" **NOISY**: {r['noisy']}"
        frac = r.get("roofline_fraction")
        cosines = [m["cosine_min"] for m in check.get("metrics", {}).values()]
        extra = (f" {_fmt(r.get('e2e_vs_model'), '.2f')}x | {_fmt(r.get('cpu_time_bound'), '.2f')}"
                 f"{'x' if r.get('cpu_time_bound') is not None else ''} |") if e2e else ""
        lines.append(
            f"| {row_name(r)} | {r['precision']} | {r['device']} | {r['batch_size']} | {_fmt(lat['median'], '.1f')} | "
            f"{_fmt(lat['p90'], '.1f')} | {_fmt(lat['p99'], '.1f')} | {_fmt(r['throughput'])} | "
            f"{_fmt(r.get('ratio_to_pytorch_eager'), '.2f')}x | {_fmt(r.get('gflops_per_s'), '.1f')} | "
            f"{_fmt(frac * 100 if frac is not None else None, '.0f')}%{_gauge(r)} | {_fmt(min(cosines) if cosines else None, '.4f')} |{extra} {verdict} |")
    return lines


def e2e_preamble(rows: list[dict[str, Any]]) -> list[str]:
    pre = sorted({(r["batch_size"], r["preprocess_ms_per_image"]) for r in rows if r.get("preprocess_ms_per_image")})
    n = next((r.get("stream_batches") for r in rows if r.get("stream_batches")), None)
    return [f"Each call runs a stream of {n or '?'} batches of distinct JPEGs (500x375, quality 90) the way "
            "`Predictor.predict` does: the next batch decodes on the preprocessing threads while this one is "
            "inferred; latencies are per batch, amortised over the stream. Preprocessing alone, one core: "
            + ", ".join(f"{ms:.2f} ms per image (batch {b})" for b, ms in pre) + ". "
            "CPU-time bound: the most end to end can reach over model only when inference keeps every "
            "thread's core busy, threads x model ms per image / (that + preprocessing ms per image).", ""]


def machine_lines(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    cpu = m.get("cpu", {})
    threads = m.get("threads", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    gpus = "; ".join(f"{g['name']} (sm {g['compute_capability']})" for g in m.get("gpus", [])) or "none"
    ceilings = "; ".join(f"{k}: {v.get('gflops_per_s', '-')} GFLOP/s alone, "
                         f"{v.get('gflops_per_s_interleaved_median', '-')} interleaved with the rows "
                         f"({v.get('library')}, n={v.get('n')})" for k, v in m.get("gemm_ceiling", {}).items())
    model = report["model"]
    cfg = model.get("config") or {}
    return [
        f"- CPU: {cpu.get('model')}, {cpu.get('available_cpus')} CPUs available "
        f"({cpu.get('physical_cores')} physical cores), flags: {' '.join(cpu.get('flags', [])) or '?'}",
        f"- GPU: {gpus}",
        f"- Threads: {threads.get('bench_threads')} (PyTorch intra-op {threads.get('torch_num_threads')}, "
        f"ONNX Runtime intra-op {threads.get('onnxruntime_intra_op_threads')} / inter-op "
        f"{threads.get('onnxruntime_inter_op_threads')}; env {threads.get('env') or 'none set'})",
        f"- Versions: {versions}",
        f"- GEMM ceiling (measured in this run): {ceilings}",
        f"- Load average at start / end: {m.get('load_average_start')} / {m.get('load_average_end')}",
        f"- Model: {model.get('source')} ({model.get('task')}; hidden {cfg.get('hidden_size')}, "
        f"{cfg.get('num_hidden_layers')} layers, {cfg.get('num_attention_heads')} heads, image {cfg.get('image_size')}), "
        f"{model.get('gflops_per_image'):.3f} GFLOP per image (dense layers, 2 x MACs; "
        f"{model.get('gflops_per_image_with_attention') or 0:.3f} with the attention matmuls), used for GFLOP/s and the roofline",
    ]


def _adaptive(timing: dict[str, Any]) -> str:
    if not timing.get("ci_target"):
        return ""
    return (f", then more rounds until every median's 95% confidence interval is within +/-{timing['ci_target']:.0%} "
            f"(at most {timing['max_seconds']:g} s per batch size and mode)")


def markdown(report: dict[str, Any], title: str = "vitmsn bench") -> str:
    opts = report["options"]
    timing = opts["timing"]
    out = [f"# {title}", ""]
    out += machine_lines(report)
    out += ["", f"Timing: {timing['warmup']} warm-up calls, then at least {timing['iterations']} timed calls per row "
                f"in {timing['rounds']} interleaved rounds"
                f"{_adaptive(timing)}; latency is per batch; throughput = batch / median latency. "
                f"Reference for the correctness check and the ratios: {report['reference']}.", ""]
    for mode, heading in (("model", "Model only (pixel values in, outputs out)"),
                          ("e2e", "End to end (JPEG bytes in: decode, resize, normalise, infer)")):
        rows = [r for r in report["results"] if r["mode"] == mode]
        if rows:
            out += [f"## {heading}", ""] + (e2e_preamble(rows) if mode == "e2e" else [])
            out += results_table(rows, e2e=mode == "e2e") + [""]
    if report.get("warnings"):
        out += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    if report.get("skipped"):
        out += ["## Not run here", ""]
        for s in report["skipped"]:
            where = f" batch {s['batch_size']}" if "batch_size" in s else ""
            variant = f" ({VARIANT_NAMES.get(s.get('variant', ''), s.get('variant'))})" if s.get("variant") else ""
            out.append(f"- {s['backend']}{variant} {s['precision']} {s['device']}{where}: {s['reason']}")
        out.append("")
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    out += ["## Correctness tolerances (each backend vs PyTorch FP32, same inputs)", ""]
    out += sorted({f"- {p} on {d}: {t.describe()}" for (p, d), t in TOLERANCES.items()}) + [""]
    return "\n".join(out)


def write_reports(report: dict[str, Any], json_path: Path | None = None, md_path: Path | None = None) -> None:
    if json_path is not None:
        write_json_atomic(json_path, report)
    if md_path is not None:
        write_bytes_atomic(md_path, markdown(report).encode())

