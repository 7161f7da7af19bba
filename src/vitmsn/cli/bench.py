"""``vitmsn bench ARTIFACTS``: latency and throughput per backend, precision and batch size.

A thin layer over :func:`vitmsn.bench.suite.run_bench`. Exit codes: 0 all rows passed their
correctness check; 1 a row failed it (the reports are still written); 2 bad usage or input.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .common import artifacts_argument, handle_errors, need_artifacts
from .options import positive_ints

if TYPE_CHECKING:
    from vitmsn.bench.timing import TimingPlan

BACKEND_NAMES = ("pytorch", "pytorch-eager", "pytorch-sdpa", "pytorch-compile", "onnxruntime", "openvino", "tensorrt", "all")


def timing_plan(thorough: bool, warmup: int | None, iterations: int | None, rounds: int | None,
                min_seconds: float) -> "TimingPlan":
    """The default adaptive plan, or --thorough's fixed one; explicit --warmup/--iterations/--rounds win, and an
    explicit --iterations makes the plan fixed (exactly that many calls per row)."""
    from vitmsn.bench.timing import TimingPlan

    base = (TimingPlan(warmup=3, iterations=20, rounds=3) if thorough
            else TimingPlan(warmup=2, iterations=4, rounds=2, ci_target=0.03, max_seconds=20.0))
    return TimingPlan(warmup=base.warmup if warmup is None else warmup,
                      iterations=base.iterations if iterations is None else iterations,
                      rounds=base.rounds if rounds is None else rounds, min_seconds=min_seconds,
                      ci_target=base.ci_target if iterations is None else 0.0, max_seconds=base.max_seconds)


@click.command("bench")
@artifacts_argument()
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKEND_NAMES),
              help="Backends to time (repeatable; prefixes: 'pytorch' is all three PyTorch rows). PyTorch eager always "
                   "runs: it is the baseline of every ratio. [default: all]")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
              help="Precisions to time (repeatable). [default: all exported]")
@click.option("--batch-sizes", default="1,8", show_default=True, callback=positive_ints, help="Comma-separated batch sizes.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON report here.")
@click.option("--markdown", "md_path", type=click.Path(path_type=Path), help="Write the Markdown report here.")
@click.option("--thorough", is_flag=True,
              help="The long fixed plan (3 warm-up calls, 20 timed calls in 3 rounds per row; 7 min for ViT-S at "
                   "batch 1 and 8 on 2 cores) instead of the default adaptive one (2 rounds, then more until each median is known "
                   "within +/-3%, at most 20 s per batch size and mode; 3 min there; benchmarks/bench-default-vs-thorough.md).")
@click.option("--warmup", type=click.IntRange(min=0), default=None, help="Untimed calls per row [default: 2; --thorough 3].")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="Timed calls per row (at least; given, no adaptive rounds) [default: 4, then adaptive; --thorough 20].")
@click.option("--rounds", type=click.IntRange(min=1), default=None,
              help="Interleaved rounds the iterations are spread over [default: 2; --thorough 3].")
@click.option("--min-seconds", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keep timing until every row has this much timed work.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for PyTorch and ONNX Runtime [default: CPUs available].")
@click.option("--e2e/--no-e2e", default=True, show_default=True, help="Also time decode + preprocess + inference.")
@click.option("--compile", "compile_", is_flag=True, help="Add torch.compile rows (minutes of compiling on small CPUs).")
@click.option("--compile-mode", type=click.Choice(["default", "reduce-overhead", "max-autotune"]), default=None)
@click.option("--ort-fused/--no-ort-fused", default=True, show_default=True,
              help="Also time the ONNX Runtime-fused FP32 graph (built on the fly when the manifest has none).")
@click.option("--data-parallel/--no-data-parallel", default=True, show_default=True,
              help="CPU: also time the ORT-fused FP32 and CPU-placed INT8 graphs with the batch split over "
                   "single-thread sessions run side by side.")
@click.option("--cpu-only", is_flag=True, help="No GPU rows even when a GPU is present.")
@click.option("--trt-streams", type=click.IntRange(min=1), default=2, show_default=True,
              help="TensorRT execution contexts/streams for the throughput figure.")
@click.option("--no-cuda-graphs", is_flag=True, help="TensorRT: plain enqueues instead of CUDA graph replays.")
@click.option("--gemm-size", type=click.IntRange(min=16), default=2048, show_default=True,
              help="Side of the square FP32 GEMM that measures the ceiling.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@handle_errors
def command(artifacts: Path | None, backends: tuple[str, ...], precisions: tuple[str, ...], batch_sizes: tuple[int, ...],
            json_path: Path | None, md_path: Path | None, thorough: bool, warmup: int | None, iterations: int | None,
            rounds: int | None, min_seconds: float,
            threads: int | None, e2e: bool, compile_: bool, compile_mode: str | None, ort_fused: bool, data_parallel: bool, cpu_only: bool,
            trt_streams: int, no_cuda_graphs: bool, gemm_size: int, quiet: bool) -> None:
    """Latency and throughput of every backend, precision and batch size, against PyTorch in the same run."""
    artifacts = need_artifacts(artifacts)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from vitmsn.bench.report import markdown, write_reports
    from vitmsn.bench.suite import BenchOptions, run_bench
    from vitmsn.core.errors import ValidationFailed

    if "all" in backends:
        backends = ()
    wants_compile = compile_ or "pytorch-compile" in backends
    options = BenchOptions(
        batch_sizes=batch_sizes, backends=backends, precisions=precisions, threads=threads, e2e=e2e,
        plan=timing_plan(thorough, warmup, iterations, rounds, min_seconds),
        compile=wants_compile, compile_mode=None if compile_mode == "default" else compile_mode, ort_fused=ort_fused,
        data_parallel=data_parallel,
        cuda=not cpu_only, trt_streams=trt_streams, cuda_graphs=not no_cuda_graphs, gemm_n=gemm_size,
    )
    say = (lambda s: None) if quiet else (lambda s: click.echo(f"bench: {s}", err=True))
    report = run_bench(artifacts, options, say=say)
    write_reports(report, json_path, md_path)
    click.echo(markdown(report))
    if not report["passed"]:
        failed = [f"{r['backend']} {r['precision']} {r['device']}" for r in report["results"] if not r["correctness"]["passed"]]
        raise ValidationFailed(f"correctness check failed for: {', '.join(sorted(set(failed)))}")
