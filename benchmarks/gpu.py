"""PyTorch CUDA rows for ViT-S and ViT-B shapes: eager, SDPA, FP16, torch.compile, at batch 1, 8, 64.

    python benchmarks/gpu.py [--models vit-s,vit-b] [--batch-sizes 1,8,64] [--compile] [--out benchmarks]

For a session that has the lent GPU machine (the ``device`` tool; its image has PyTorch with
CUDA, onnx and CPU onnxruntime, but no TensorRT and no onnxruntime-gpu, and vitmsn is not
installed there: this script puts the working tree's packages on the import path itself).
Writes ``benchmarks/gpu-<gpu name>.md`` and ``.json``. The models are our ``ViTMSNClassifier``
with random weights (speed does not depend on them); the correctness check compares every row
with PyTorch FP32 on the CPU on the same inputs (tolerances in ``vitmsn.bench.correctness``).

TensorRT rows need TensorRT, which that machine lacks; ``vitmsn bench ARTIFACTS`` on a machine
with TensorRT and an engine in the artifacts times them (``vitmsn.bench.tensorrt_timing``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "vit-s": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, layer_norm_eps=1e-6),
    "vit-b": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, layer_norm_eps=1e-6),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),  # dry runs
}
NOT_RUN = [
    "TensorRT engines (FP32/FP16/INT8): the GPU machine has no TensorRT (its libraries cannot be installed "
    "there), and TensorRT-RTX does not support Hopper GPUs. The timing path (CUDA events, CUDA graphs, several "
    "execution contexts) is in vitmsn.bench.tensorrt_timing and has never run.",
    "ONNX Runtime CUDA provider: onnxruntime-gpu is not on the GPU machine and its wheel (255 MB) cannot travel there.",
]


def bootstrap() -> None:
    """Make ``vitmsn`` importable from the working tree when it is not installed."""
    if importlib.util.find_spec("vitmsn") is not None:
        try:
            import vitmsn.export.fp32.model  # noqa: F401

            return
        except ImportError:
            pass
    sys.path.insert(0, str(ROOT / "src"))
    import vitmsn

    for sub in ("export", "runtime", "calibration"):
        name = f"vitmsn.{sub}"
        spec = importlib.util.spec_from_file_location(name, ROOT / sub / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / sub)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        setattr(vitmsn, sub, module)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="vit-s,vit-b")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (FP16, SDPA)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--device", default="cuda", help="'cpu' makes a dry run of this script's code path (no GPU figures)")
    args = parser.parse_args(argv)
    bootstrap()

    import numpy as np
    import torch

    from vitmsn.bench import machine as machine_info
    from vitmsn.bench.backends import torch_row
    from vitmsn.bench.correctness import compare_outputs, tolerance_for
    from vitmsn.bench.report import markdown
    from vitmsn.bench.suite import derive
    from vitmsn.bench.timing import TimingPlan, time_interleaved
    from vitmsn.export.fp32.model import ViTMSNArch, ViTMSNClassifier

    dev = args.device
    if dev == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run this on the lent GPU machine (the device tool), or --device cpu for a dry run")
    gpu = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu dry run"
    plan = TimingPlan(warmup=5, iterations=args.iterations, rounds=args.rounds)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    machine = machine_info.describe_machine(torch.get_num_threads())
    if dev == "cuda":
        machine["gpus"] = machine["gpus"] or [{"index": "0", "name": gpu, "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}]
        machine["gemm_ceiling"] = {f"cuda-{k}": machine_info.gemm_ceiling_cuda(d) for k, d in (("fp32", "float32"), ("fp16", "float16"))}
    else:
        machine["gemm_ceiling"] = {"cpu-fp32": machine_info.gemm_ceiling_cpu(torch.get_num_threads(), 512)}
    ceilings = {k: v["gflops_per_s"] for k, v in machine["gemm_ceiling"].items()}
    sections, payload = [], {"machine": machine, "models": {}}
    for name in args.models.split(","):
        arch = ViTMSNArch(**SHAPES[name])
        torch.manual_seed(0)
        state = ViTMSNClassifier(arch, 1000).state_dict()

        def build(attention: str, arch: ViTMSNArch = arch, state: dict = state) -> torch.nn.Module:
            model = ViTMSNClassifier(arch, 1000, attention)
            model.load_state_dict(state)
            return model.eval()

        outputs = ["logits", "embedding"]
        rows_spec = [("pytorch-eager", "fp32"), ("pytorch-sdpa", "fp32"), ("pytorch-sdpa", "fp16")]
        if args.compile:
            rows_spec.append(("pytorch-compile", "fp16"))
        backends = [torch_row(b, build, outputs, "pixel_values", precision=p, device=dev) for b, p in rows_spec]
        x_check = np.random.default_rng(1).uniform(-1, 1, (4, 3, 224, 224)).astype(np.float32)
        reference = torch_row("pytorch-eager", build, outputs, "pixel_values")
        reference.open()
        ref = reference.infer(x_check)
        skipped, rows = [], []
        checks = {}
        for b in backends:
            try:
                b.open()
                checks[id(b)] = compare_outputs(b.infer(x_check), ref, tolerance_for(b.precision, b.device))
            except Exception as exc:  # torch.compile without triton, out of memory, ...
                skipped.append({"backend": b.backend, "precision": b.precision, "device": dev, "reason": f"{type(exc).__name__}: {exc}"[:400]})
        live = [b for b in backends if id(b) in checks]
        for batch in batch_sizes:
            x = np.random.default_rng(batch).uniform(-1, 1, (batch, 3, 224, 224)).astype(np.float32)
            calls, timed = [], []
            for b in live:
                try:
                    call = b.call_for(x)
                    call()
                    calls.append(call)
                    timed.append(b)
                except Exception as exc:
                    skipped.append({"backend": b.backend, "precision": b.precision, "device": dev, "batch_size": batch,
                                    "reason": f"{type(exc).__name__}: {exc}"[:400]})
            print(f"gpu.py: {name} batch {batch}: timing {len(calls)} rows", file=sys.stderr, flush=True)
            for b, st in zip(timed, time_interleaved(calls, plan)):
                rows.append({"backend": b.backend, "precision": b.precision, "batch_size": batch,
                             "throughput": round(st.throughput(batch), 2), "latency_ms": st.to_dict(), "device": dev,
                             "variant": b.variant, "mode": "model", "correctness": checks[id(b)], **b.info()})
        warnings = derive(rows, arch.gflops_per_image(), ceilings)
        report = {"machine": machine, "model": {"source": f"{name} shape, random weights", "task": "image-classification",
                                                "config": arch.to_dict(), "gflops_per_image": arch.gflops_per_image()},
                  "reference": "pytorch-eager fp32 cpu", "results": rows, "skipped": skipped, "warnings": warnings,
                  "notes": NOT_RUN, "options": {"batch_sizes": batch_sizes, "timing": plan.__dict__},
                  "passed": all(r["correctness"]["passed"] for r in rows)}
        payload["models"][name] = report
        sections += ["", f"## {name.upper()} shape", ""] + markdown(report, "").splitlines()[2:]
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    md = [f"# GPU benchmark: {gpu}", "", f"Measured {time.strftime('%Y-%m-%d')} with `python benchmarks/gpu.py"
          f"{' --compile' if args.compile else ''}`; PyTorch rows only. Not run on this machine:", ""]
    md += [f"- {n}" for n in NOT_RUN] + sections
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu-{slug}.md").write_text("\n".join(md) + "\n")
    (args.out / f"gpu-{slug}.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"gpu.py: wrote {args.out / f'gpu-{slug}.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
