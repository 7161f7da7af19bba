"""Which ONNX Runtime levers make the FP32 ViT faster on this CPU? One lever at a time, interleaved.

    python benchmarks/ort_levers.py ARTIFACTS [--batch-size 8] [--threads 2] [--rounds 6]

Every variant below is timed against the same baseline (the plain FP32 export in a session with
ONNX Runtime's defaults but the thread count pinned) and against PyTorch SDPA, in alternating
rounds, so the ratios hold even when the machine is shared. Prints a Markdown table.

Levers: graph optimization level; intra-op thread count and spinning; the ONNX Runtime-fused
graph (``vitmsn.export.precision.ort_optimize``: Attention, SkipLayerNormalization, BiasGelu); data
parallelism (the batch split over single-threaded sessions running side by side) instead of
operator parallelism.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np


def _session(path: Path, level: str = "all", threads: int = 2, spinning: bool | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def lever_table(artifacts: Path, batch_size: int = 8, threads: int = 2, rounds: int = 6, iterations: int = 18,
                fused: Path | None = None) -> list[str]:
    """Markdown lines: every lever's throughput against the baseline and PyTorch SDPA, interleaved."""
    import torch

    from vitmsn.bench.machine import load_average
    from vitmsn.bench.timing import TimingPlan, time_interleaved
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.precision.ort_optimize import ort_optimized_onnx_from_fp32
    from vitmsn.runtime.manifest import Manifest

    torch.set_num_threads(threads)
    manifest = Manifest.load(artifacts)
    plain = manifest.onnx_path("fp32")
    ck = load_checkpoint(manifest.data["model"]["directory"])
    if fused is None:
        fused = ort_optimized_onnx_from_fp32(plain, Path(tempfile.mkdtemp(prefix="vitmsn-levers-")) / "model.fp32.ort.onnx",
                                             ck.arch).path
    x = np.random.default_rng(0).uniform(-1, 1, (batch_size, 3, ck.arch.image_size, ck.arch.image_size)).astype(np.float32)
    t = threads
    variants = {
        "plain export, level all (baseline)": _session(plain, "all", t),
        "plain export, level extended": _session(plain, "extended", t),
        "plain export, level basic": _session(plain, "basic", t),
        "plain export, spinning off": _session(plain, "all", t, spinning=False),
        f"plain export, {max(1, t // 2)} thread(s)": _session(plain, "all", max(1, t // 2)),
        "ORT-fused graph, level all": _session(fused, "all", t),
        "ORT-fused graph, spinning off": _session(fused, "all", t, spinning=False),
    }
    calls = [lambda s=s: s.run(None, {"pixel_values": x}) for s in variants.values()]
    # data parallel instead of operator parallel: the batch split over single-threaded sessions run
    # side by side (ONNX Runtime releases the GIL in run), no per-operator fork/join between threads
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(max_workers=t)
    singles = [_session(fused, "all", 1) for _ in range(t)]
    parts = np.array_split(x, t)

    def data_parallel() -> None:
        list(pool.map(lambda sp: sp[0].run(None, {"pixel_values": sp[1]}), zip(singles, parts)))

    variants[f"ORT-fused graph, batch split over {t} single-thread sessions"] = None
    calls.append(data_parallel)
    sdpa = ck.build_model("sdpa")
    xt = torch.from_numpy(x)

    def torch_call() -> None:
        with torch.inference_mode():
            sdpa(xt)

    names = list(variants) + ["PyTorch SDPA (reference)"]
    start_load = load_average()
    stats = time_interleaved(calls + [torch_call], TimingPlan(warmup=2, iterations=iterations, rounds=rounds),
                             on_round=lambda r: print(f"levers: round {r}/{rounds}", file=sys.stderr, flush=True))
    base, ref = stats[0].throughput(batch_size), stats[-1].throughput(batch_size)
    lines = [f"Batch {batch_size}, {t} threads, {stats[0].count} samples per row in {rounds} interleaved rounds, "
             f"load average {start_load} -> {load_average()}.", "",
             "| variant | median ms | img/s | vs baseline | vs PyTorch SDPA |", "|---|---:|---:|---:|---:|"]
    for name, st in zip(names, stats):
        thr = st.throughput(batch_size)
        lines.append(f"| {name} | {st.median:.1f} | {thr:.2f} | {thr / base:.3f}x | {thr / ref:.3f}x |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--iterations", type=int, default=18)
    args = parser.parse_args(argv)
    print("\n".join(lever_table(args.artifacts, args.batch_size, args.threads, args.rounds, args.iterations)))


if __name__ == "__main__":
    main()
