"""INT8 for ONNX Runtime CPU vs FP32, on a ViT-S-shaped model, measured in the same run.

    python benchmarks/int8_cpu.py                      # ViT-S shape (384/12/6/1536), batch 8, prints Markdown
    python benchmarks/int8_cpu.py --with-tensorrt-qdq  # also the TensorRT-placed Q/DQ graph (FP32 high precision)
    python benchmarks/int8_cpu.py --artifacts DIR      # an export's model.fp32.onnx / model.int8.cpu.onnx instead

The model has random weights (speed does not depend on them). Calibration uses the real
pipeline: demo-shape images written to a temporary folder, sampled and preprocessed by
:mod:`vitmsn.calibration`. Each graph gets its own ONNX Runtime CPU session with the same thread
count; the sessions are timed in interleaved rounds (FP32, INT8, FP32, INT8, ...) so that load
from other processes hits both alike, and the ratio uses the median batch latency of each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _export_vits(out: Path) -> Path:
    import torch

    from vitmsn.export.fp32.model import ViTMSNArch, ViTMSNClassifier
    from vitmsn.export.fp32.onnx_export import onnx_from_model
    from vitmsn.export.fp32.spec import BatchRange, ExportSpec

    torch.manual_seed(0)
    arch = ViTMSNArch(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                      layer_norm_eps=1e-6)
    model = ViTMSNClassifier(arch, 1000).eval()
    path = out / "model.fp32.onnx"
    onnx_from_model(model, ExportSpec(arch, "image-classification", 1000), path, opset=18, batch=BatchRange())
    return path


def _calibration(samples: int, tmp: Path) -> np.ndarray:
    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
    from vitmsn.export.demo.shapes import write_dataset
    from vitmsn.runtime.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

    write_dataset(tmp / "images", per_class=max(1, -(-samples // 8)), split="train")
    block = PreprocessConfig.from_preprocessor_config(DEFAULT_PREPROCESSOR_CONFIG).to_manifest()
    cs = calibration_set_from_directory(tmp / "images", block, CalibrationOptions(samples=samples, use_cache=False,
                                                                                  min_images=1))
    return cs.tensors


def _session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(graphs: dict[str, Path], batch: int, rounds: int, warmup: int, threads: int) -> dict[str, list[float]]:
    x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    sessions = {name: _session(path, threads) for name, path in graphs.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, {"pixel_values": x})
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {"pixel_values": x})
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, help="use this export's model.fp32.onnx and model.int8.cpu.onnx")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--with-tensorrt-qdq", action="store_true", help="also time the TensorRT-placed Q/DQ graph (FP32 HP)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="vitmsn-bench-int8-") as tmp_name:
        tmp = Path(tmp_name)
        if a.artifacts:
            graphs = {"fp32": a.artifacts / "model.fp32.onnx", "int8 (onnxruntime cpu)": a.artifacts / "model.int8.cpu.onnx"}
        else:
            from vitmsn.export.precision.int8_cpu import cpu_int8_onnx_from_calibration

            print("exporting a ViT-S-shaped model and calibrating ...", file=sys.stderr)
            fp32 = _export_vits(tmp)
            calib = _calibration(a.calib_samples, tmp)
            graphs = {"fp32": fp32, "int8 (onnxruntime cpu)": tmp / "model.int8.cpu.onnx"}
            cpu_int8_onnx_from_calibration(fp32, graphs["int8 (onnxruntime cpu)"], calib)
            if a.with_tensorrt_qdq:
                from vitmsn.export.precision.int8 import Int8Options, qdq_onnx_from_calibration

                graphs["int8 (tensorrt q/dq, fp32 hp)"] = tmp / "model.int8.onnx"
                qdq_onnx_from_calibration(fp32, graphs["int8 (tensorrt q/dq, fp32 hp)"], calib,
                                          options=Int8Options(high_precision="fp32"))
        print(f"timing {len(graphs)} graphs: batch {a.batch}, {a.rounds} interleaved rounds, {a.threads} threads ...",
              file=sys.stderr)
        times = measure(graphs, a.batch, a.rounds, a.warmup, a.threads)

    import onnxruntime

    base = a.batch / statistics.median(times["fp32"])
    rows = []
    for name, t in times.items():
        tp = a.batch / statistics.median(t)
        rows.append({"graph": name, "throughput": tp, "ratio_vs_fp32": tp / base, "latency_ms_median": 1e3 * statistics.median(t),
                     "latency_ms_min": 1e3 * min(t)})
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\n### INT8 vs FP32 on ONNX Runtime CPU (ViT-S shape, batch {a.batch})\n")
    print(f"onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, {a.threads} threads, "
          f"{a.rounds} interleaved rounds, load average at the end {load:.1f}\n")
    print("| graph | images/s | vs FP32 | median batch latency (ms) | best (ms) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['graph']} | {r['throughput']:.2f} | {r['ratio_vs_fp32']:.2f}x | {r['latency_ms_median']:.0f} | "
              f"{r['latency_ms_min']:.0f} |")
    if a.json:
        a.json.write_text(json.dumps({"batch": a.batch, "threads": a.threads, "rounds": a.rounds, "load_average": load,
                                      "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
