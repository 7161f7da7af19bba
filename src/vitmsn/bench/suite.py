"""``vitmsn bench``: every backend x precision x batch size, timed against PyTorch in the same run.

The run, in order:

1. describe the machine (CPU flags, GPUs, library versions, thread settings) and measure the
   GEMM ceiling on the same thread count;
2. open every backend the artifacts and this machine allow (the others are listed as skipped,
   with the reason) and spot-check each against PyTorch FP32 on the same inputs;
3. time all rows of one batch size together, interleaved in rounds (``timing.py``), first the
   model alone (pixel values in, outputs out), then end to end (JPEG bytes in: decode, resize,
   normalise, infer, a stream of batches with decoding overlapped as ``Predictor.predict`` does it:
   :mod:`.e2e`, which also times preprocessing alone for each CPU row's bound);
4. derive each row's ratio to PyTorch eager (same device, mode and batch size), GFLOP/s and
   fraction of its own precision's GEMM ceiling (FP32, BF16, INT8: :mod:`.ceilings`), and warn
   where the INT8 graph the runtime would load is not faster than the FP32 one it would load.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vitmsn.core.errors import InputError
from vitmsn.runtime.images.prefetch import DEFAULT_PREPROCESS_WORKERS

from . import e2e
from . import machine as machine_info
from .backends import BenchRow, onnxruntime_row, openvino_rows, tensorrt_row, torch_row
from .ceilings import ceiling_precision, gemm_probes
from .correctness import compare_outputs, tolerance_for
from .derived import ORT_FUSED, derive, mark_runtime_choices
from .inputs import jpeg_images
from .tensorrt_timing import time_engine
from .noisy_rows import recheck_pytorch, row_line
from .timing import TimingPlan, time_interleaved

log = logging.getLogger(__name__)
MODES = ("model", "e2e")


@dataclass(frozen=True)
class BenchOptions:
    batch_sizes: tuple[int, ...] = (1, 8)
    backends: tuple[str, ...] = ()  # name prefixes to keep, e.g. ("onnxruntime", "pytorch-sdpa"); empty: all
    precisions: tuple[str, ...] = ()  # empty: all
    plan: TimingPlan = TimingPlan()
    threads: int | None = None  # CPU threads for PyTorch and ONNX Runtime (default: CPUs available)
    e2e: bool = True
    compile: bool = False
    compile_mode: str | None = None
    ort_fused: bool = True  # also time the ONNX Runtime-fused FP32 graph (vitmsn.export.precision.ort_optimize)
    cuda: bool = True  # GPU rows when a GPU is present
    trt_streams: int = 2
    cuda_graphs: bool = True
    data_parallel: bool = True  # CPU: also time the fastest graphs as the batch split over single-thread sessions
    check_batch: int = 4
    gemm_n: int = 2048
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise InputError(f"--batch-sizes: positive integers required, got {self.batch_sizes}")

    def wants(self, backend: str, precision: str) -> bool:
        ok_backend = not self.backends or any(backend.startswith(b) for b in self.backends)
        return ok_backend and (not self.precisions or precision in self.precisions)


@dataclass(frozen=True)
class _Stream:
    """The end-to-end rows' inputs: the JPEGs, the manifest's preprocessing and the threads that run it."""

    jpegs: list[bytes]
    preprocess: Any
    pool: Executor


@dataclass
class _Prepared:
    backends: list[BenchRow] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _load_checkpoint(manifest: Any) -> Any:
    """The checkpoint the artifacts were exported from (None when it is not on this machine)."""
    from vitmsn.export.validation.targets import checkpoint_for

    return checkpoint_for(manifest, missing_ok=True, mismatch=lambda source, ck: (
        f"{source}: the checkpoint changed since the export (its SHA-256 differs from "
        f"{manifest.root / 'manifest.json'}); re-export, or restore the checkpoint the artifacts came from"))


def _skipped(b: BenchRow, reason: str, **extra: Any) -> dict[str, Any]:
    """A ``skipped`` entry for a backend that was set up but could not open or run."""
    return {"backend": b.backend, "precision": b.precision, "device": b.device, "variant": b.variant,
            "reason": reason, **extra}


def flavours(manifest: Any, precision: str) -> list[tuple[str, Path]]:
    """The graph of a precision and every flavour recorded inside its entry (a nested dict with a file
    and its SHA-256, e.g. int8's ``onnxruntime_cpu``), as ``(variant, verified path)``."""
    entry = manifest.precision(precision)
    return [("", manifest.verify(entry))] + [(key, manifest.verify(f)) for key, f in entry.flavours.items()]


def _fused_graph(manifest: Any, ck: Any, tmp: Path, notes: list[str]) -> Path:
    """Build the ONNX Runtime-fused FP32 graph for a manifest that has none (into ``tmp``)."""
    from vitmsn.export.fp32.model import ViTMSNArch
    from vitmsn.export.precision.ort_optimize import ort_optimized_onnx_from_fp32

    arch = ck.arch if ck is not None else ViTMSNArch.from_config(manifest.model.config)
    result = ort_optimized_onnx_from_fp32(manifest.onnx_path("fp32"), tmp / "model.fp32.ort.onnx", arch)
    notes.append(f"ORT-fused FP32 graph built at bench time (the manifest has none): {result.fused}")
    return result.path


def prepare_backends(manifest: Any, ck: Any, opts: BenchOptions, threads: int, tmp: Path) -> _Prepared:
    """The backends to run here, in report order; the rest as ``skipped`` entries with the reason."""
    import torch

    prep = _Prepared()
    outputs = manifest.output_names
    name = manifest.input_name

    def skip(backend: str, precision: str, device: str, reason: str, variant: str = "") -> None:
        prep.skipped.append({"backend": backend, "precision": precision, "device": device, "variant": variant,
                             "reason": reason})

    devices = ["cpu"] + (["cuda"] if opts.cuda and torch.cuda.is_available() else [])
    for device in devices:
        torch_rows = [("pytorch-eager", "fp32"), ("pytorch-sdpa", "fp32")]
        if device == "cuda":
            torch_rows.append(("pytorch-sdpa", "fp16"))
        if opts.compile:
            torch_rows.append(("pytorch-compile", "fp16" if device == "cuda" else "fp32"))
        for backend, precision in torch_rows:
            if ck is None:
                skip(backend, precision, device, "the checkpoint named in the manifest is not on this machine")
            elif backend == "pytorch-eager" or opts.wants(backend, precision):  # eager: the baseline of every ratio
                prep.backends.append(torch_row(backend, ck.build_model, outputs, name, precision=precision, device=device,
                                               compile_mode=opts.compile_mode))
    if not opts.compile:
        skip("pytorch-compile", "fp32", "cpu", "not requested (--compile; compiling takes minutes on small CPUs)")

    import onnxruntime as ort

    ort_devices = ["cpu"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        from vitmsn.runtime.backends import device as rt_device

        if rt_device.has_cuda_gpu() and opts.cuda:
            ort_devices.append("cuda")
        else:
            skip("onnxruntime", "*", "cuda", "no CUDA GPU on this machine")
    else:
        skip("onnxruntime", "*", "cuda", "onnxruntime-gpu (CUDA provider) is not installed")
    graphs = [(p, v, path) for p in manifest.precisions if opts.wants("onnxruntime", p)
              and manifest.precisions[p].extra.get("backend") != "openvino"  # bf16: OpenVINO's inference precision
              for v, path in flavours(manifest, p)]
    if opts.ort_fused and opts.wants("onnxruntime", "fp32") and not any(v == ORT_FUSED for _, v, _ in graphs):
        try:
            graphs.append(("fp32", ORT_FUSED, _fused_graph(manifest, ck, tmp, prep.notes)))
        except (ValueError, ImportError, OSError) as exc:
            skip("onnxruntime", "fp32", "cpu", f"ORT-fused graph could not be built: {exc}", ORT_FUSED)
    order = {p: i for i, p in enumerate(("fp32", "fp16", "int8"))}
    graphs.sort(key=lambda g: order.get(g[0], 9))
    for device in ort_devices:
        for precision, variant, path in graphs:
            if device != "cpu" and variant.endswith("_cpu"):  # a flavour placed for the CPU provider only
                continue
            prep.backends.append(onnxruntime_row(path, name, precision=precision, device=device, threads=threads,
                                                 variant=variant))
            if device == "cpu" and opts.data_parallel and threads > 1 and variant in (ORT_FUSED, "onnxruntime_cpu"):
                prep.backends.append(onnxruntime_row(path, name, precision=precision, device=device, threads=threads,
                                                     variant=variant, sessions=threads))
    ov_rows, ov_reason = openvino_rows(manifest, name, threads, opts.wants)
    prep.backends += ov_rows
    if ov_reason:
        skip("openvino", "*", "cpu", ov_reason)
    if not manifest.engines:
        skip("tensorrt", "*", "cuda", "the artifacts hold no TensorRT engine (vitmsn-export --engine require)")
    for entry in manifest.engines:
        if opts.wants("tensorrt", entry.precision):
            prep.backends.append(tensorrt_row(manifest.verify(entry), entry, name))
    return prep


def _open_and_check(prep: _Prepared, x: np.ndarray, reference: dict[str, np.ndarray] | None,
                    say: Callable[[str], None]) -> tuple[list[BenchRow], dict[int, dict[str, Any]]]:
    """Open every backend and run the spot check; failures to open become skipped rows."""
    opened, checks = [], {}
    for b in prep.backends:
        say(f"opening {b.label}")
        try:
            b.open()
            out = b.infer(x)
        except Exception as exc:  # any backend failure (missing library, no GPU, compile error) skips its row
            prep.skipped.append(_skipped(b, f"{type(exc).__name__}: {exc}".strip()[:500]))
            with contextlib.suppress(Exception):
                b.close()
            continue
        if reference is None:
            reference = out  # no PyTorch here: the first backend (ONNX Runtime FP32) is the reference
        checks[id(b)] = compare_outputs(out, reference, tolerance_for(b.precision, b.device))
        opened.append(b)
    return opened, checks


def _row(b: BenchRow, mode: str, batch: int, stats: Any, throughput: float, check: dict[str, Any],
         extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"backend": b.backend, "precision": b.precision, "batch_size": batch, "throughput": round(throughput, 3),
            "latency_ms": stats.to_dict(), "device": b.device, "variant": b.variant, "mode": mode,
            "sessions": b.sessions,
            "correctness": check, **b.info(), **(extra or {})}


def _time_batch(backends: list[BenchRow], checks: dict[int, dict[str, Any]], mode: str, batch: int,
                x: np.ndarray, stream: _Stream, plan: TimingPlan, prep: _Prepared,
                say: Callable[[str], None], gemm: dict[str, Any] | None = None, trt_streams: int = 2,
                cuda_graphs: bool = True) -> list[dict[str, Any]]:
    rows, timed, calls = [], [], []
    jpegs = stream.jpegs[:batch * e2e.STREAM_BATCHES]
    for b in backends:
        if not b.supports_batch(batch):
            prep.skipped.append(_skipped(b, f"batch {batch} is outside the engine's profile", batch_size=batch))
            continue
        if b.backend == "tensorrt" and mode == "model":
            say(f"timing {b.label} batch {batch} (CUDA events)")
            try:  # the runner opened above: one deserialization
                t = time_engine(b.runner, b.input_name, batch, plan, streams=trt_streams, cuda_graphs=cuda_graphs)
            except Exception as exc:  # the unverified TensorRT timing path must not sink the other rows
                prep.skipped.append(_skipped(b, f"timing failed: {type(exc).__name__}: {exc}"[:500], batch_size=batch))
                continue
            rows.append(_row(b, mode, batch, t.latency, t.throughput, checks[id(b)], t.info()))
            continue
        call = b.call_for(x) if mode == "model" else e2e.stream_call(b.infer, jpegs, batch, stream.preprocess,
                                                                     stream.pool, x.shape[1:])
        try:
            call()  # first call: compiles (torch.compile) or allocates; not timed
        except Exception as exc:
            prep.skipped.append(_skipped(b, f"{type(exc).__name__}: {exc}"[:500], batch_size=batch, mode=mode))
            continue
        timed.append(b)
        calls.append(call)
    if calls:
        probes = dict(gemm or {}) if any(b.device == "cpu" for b in timed) else {}
        say(f"timing {len(calls)} rows{' and the GEMM ceilings (' + ', '.join(probes) + ')' if probes else ''}, "
            f"{mode}, batch {batch}")
        pre = [e2e.preprocess_call(jpegs[:batch], stream.preprocess)] if mode == "e2e" else []
        stats = time_interleaved(calls + pre + list(probes.values()), plan,
                                 on_round=lambda r: say(f"  round {r}" + (f"/{plan.rounds}" if r <= plan.rounds else
                                                                          " (until the medians are certain)")))
        measured = {p: round(probe.gflops_per_s(st.median), 2)
                    for (p, probe), st in zip(probes.items(), stats[len(calls) + len(pre):])}
        for b, st in zip(timed, stats):
            extra: dict[str, Any] | None = None
            if mode == "e2e":
                st = e2e.per_batch(st)
                extra = {"stream_batches": e2e.STREAM_BATCHES,
                         "preprocess_ms_per_image": round(stats[len(calls)].median / batch, 4)}
            if b.device == "cpu" and measured:
                own = ceiling_precision({"precision": b.precision})
                gauge = own if own in measured else "fp32"
                extra = {**(extra or {}), "gemm_ceiling_gflops_per_s": measured[gauge], "gemm_ceiling_precision": gauge,
                         "gemm_ceilings_gflops_per_s": measured}
            rows.append(_row(b, mode, batch, st, st.throughput(batch), checks[id(b)], extra))
    return rows


def _check_batches_fit(arch: Any, batch_sizes: tuple[int, ...]) -> None:
    """A batch size is what the bench measures, so it is never shrunk: one that cannot fit in the memory available
    here is refused before anything runs (exit 2), with the numbers, instead of an out-of-memory kill mid-run."""
    from vitmsn.export.fp32.memory import available_memory, cannot_fit_either

    memory = available_memory()
    for batch in sorted(set(batch_sizes), reverse=True):
        why = cannot_fit_either(arch, batch, memory=memory)
        if why:
            raise InputError(f"--batch-sizes {batch}: does not fit in this machine's memory ({why}); "
                             "pass smaller batch sizes")


def run_bench(artifacts: str | Path, opts: BenchOptions = BenchOptions(),
              say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the benchmark on an artifacts directory; the report as a JSON-ready dict."""
    import torch

    from vitmsn.runtime.manifest import Manifest
    from vitmsn.runtime.images.preprocess import PreprocessConfig

    from vitmsn.export.fp32.model import ViTMSNArch

    manifest = Manifest.load(artifacts)
    arch = ViTMSNArch.from_config(manifest.model.config)
    _check_batches_fit(arch, opts.batch_sizes)
    threads = opts.threads or machine_info.available_cpus()
    torch.set_num_threads(threads)
    machine = machine_info.describe_machine(threads)
    say(f"measuring the GEMM ceiling ({opts.gemm_n}x{opts.gemm_n} FP32, {threads} threads)")
    ceilings = {"cpu-fp32": machine_info.gemm_ceiling_cpu(threads, opts.gemm_n)}
    ck = _load_checkpoint(manifest)
    gflops = arch.gflops_per_image()  # dense layers: the 8.48 GFLOP convention for ViT-S/16
    preprocess = PreprocessConfig.from_manifest(manifest.preprocess)
    rng_images = jpeg_images(max(max(opts.batch_sizes) * (e2e.STREAM_BATCHES if opts.e2e else 1), opts.check_batch),
                             seed=opts.seed)
    check_x = preprocess.batch(rng_images[: opts.check_batch])

    with tempfile.TemporaryDirectory(prefix="vitmsn-bench-") as tmp:
        prep = prepare_backends(manifest, ck, opts, threads, Path(tmp))
        if any(b.device == "cuda" for b in prep.backends):
            for dtype in ("float32", "float16"):
                with contextlib.suppress(Exception):
                    c = machine_info.gemm_ceiling_cuda(dtype)
                    ceilings[f"cuda-{'fp32' if dtype == 'float32' else 'fp16'}"] = c
        reference_out = None
        if ck is not None:
            reference = torch_row("pytorch-eager", ck.build_model, manifest.output_names, manifest.input_name)
            reference.open()
            reference_out = reference.infer(check_x)
            reference.close()
        backends, checks = _open_and_check(prep, check_x, reference_out, say)
        rows: list[dict[str, Any]] = []
        gemm = gemm_probes(opts.gemm_n, threads)
        pool = ThreadPoolExecutor(DEFAULT_PREPROCESS_WORKERS, thread_name_prefix="vitmsn-bench-preprocess")
        stream = _Stream(rng_images, preprocess, pool)
        try:
            def time_group(group: list[BenchRow], mode: str, batch: int) -> list[dict[str, Any]]:
                x = preprocess.batch(rng_images[:batch])
                return _time_batch(group, checks, mode, batch, x, stream, opts.plan, prep, say, gemm,
                                   opts.trt_streams, opts.cuda_graphs)

            groups = [(mode, batch) for mode in (MODES if opts.e2e else ("model",)) for batch in opts.batch_sizes]
            started, done, total = time.perf_counter(), 0, sum(batch for _, batch in groups)
            for i, (mode, batch) in enumerate(groups):
                measured = time_group(backends, mode, batch)
                for r in measured:
                    say("  " + row_line(r))  # each row as soon as it is measured
                rows += measured
                done += batch  # a group's time grows with its batch size
                if i + 1 < len(groups):
                    left = (time.perf_counter() - started) / done * (total - done)
                    say(f"ETA about {left:.0f} s for the {len(groups) - i - 1} groups left")
            rows = recheck_pytorch(rows, backends, time_group, say)
        finally:
            pool.shutdown(wait=True)
            for b in backends:
                b.close()

    flat = {k: v["gflops_per_s"] for k, v in ceilings.items()}
    mark_runtime_choices(rows, manifest)
    e2e.add_bounds(rows, threads)
    warnings = derive(rows, gflops, flat)
    for precision in gemm:
        interleaved = sorted(r["gemm_ceilings_gflops_per_s"][precision] for r in rows
                             if precision in (r.get("gemm_ceilings_gflops_per_s") or {}))
        if interleaved:
            entry = ceilings.setdefault(f"cpu-{precision}", {"device": "cpu", "dtype": precision, "threads": threads,
                                                             "n": opts.gemm_n, "library": type(gemm[precision]).__name__})
            entry["gflops_per_s_interleaved_median"] = interleaved[len(interleaved) // 2]
    machine["gemm_ceiling"] = ceilings
    machine["load_average_end"] = machine_info.load_average()
    plan = asdict(opts.plan)
    return {
        "machine": machine,
        "artifacts": str(Path(artifacts)),
        "model": {"source": manifest.model.source, "task": manifest.task,
                  "config": dict(manifest.model.config), "gflops_per_image": gflops,
                  "gflops_per_image_with_attention": arch.gflops_per_image(include_attention=True)},
        "reference": ("pytorch-eager fp32 cpu" if ck is not None else "onnxruntime fp32 cpu (no checkpoint here)"),
        "options": {"batch_sizes": list(opts.batch_sizes), "threads": threads, "timing": plan, "e2e": opts.e2e,
                    "compile": opts.compile, "check_batch": opts.check_batch},
        "passed": all(r["correctness"]["passed"] for r in rows),
        "results": rows,
        "skipped": prep.skipped,
        "warnings": warnings,
        "notes": prep.notes,
    }
