"""The ready GPU check: everything GPU-side vitmsn has, in one command, one Markdown table.

    python benchmarks/gpu_check.py [--out DIR] [--budget-s 450]

Stages (each says what it ran, or exactly why it did not):

1. PyTorch CUDA rows (benchmarks/gpu.py on the ViT-S shape, batch 1 and 8);
2. ONNX Runtime's CUDA execution provider on the demo export, against its CPU provider;
3. an engine build (``tensorrt`` when its builder is importable, else ``tensorrt-rtx`` when it
   supports this GPU) and load through ``vitmsn.runtime.Predictor(backend="tensorrt")``, against
   ONNX Runtime;
4. the Runner conformance test on the real TensorRT runner (``tests/test_runtime_runners.py``,
   its ``gpu``/``tensorrt`` cases);
5. TensorRT against ONNX Runtime through Polygraphy's own runners and comparator;
6. ``vitmsn bench`` rows (TensorRT and ONNX Runtime, batch 1 and 8).

Without a GPU every stage reports "not run: no GPU" and the command exits 0: this is what CI and
the development machines see. Nothing here is simulated (the TensorRT simulation is for tests).
Writes ``gpu-check-<gpu>.md`` under --out (default: benchmarks/) and prints it. Budget: stages
that would start after --budget-s are reported "not run: time budget".
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def versions() -> dict[str, str]:
    out = {d: _version(d) for d in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12",
                                    "tensorrt-cu13", "tensorrt-rtx-cu13", "cuda-python", "polygraphy", "numpy")}
    try:
        import torch

        out["torch cuda"] = str(torch.version.cuda)
    except ImportError:
        pass
    return {k: v for k, v in out.items() if v != "not installed" or k in ("torch", "tensorrt", "tensorrt-rtx-cu13")}


class Check:
    def __init__(self, budget_s: float) -> None:
        self.started, self.budget = time.perf_counter(), budget_s
        self.rows: list[tuple[str, str, str]] = []
        self.state: dict[str, Any] = {}

    def stage(self, name: str, fn: Callable[[], tuple[str, str]], needs: str | None = None) -> None:
        if needs is not None:
            self.rows.append((name, "not run", needs))
            return
        if time.perf_counter() - self.started > self.budget:
            self.rows.append((name, "not run", f"time budget ({self.budget:.0f} s) spent"))
            return
        sys.stderr.write(f"gpu_check: {name}\n")
        t0 = time.perf_counter()
        try:
            status, detail = fn()
        except Exception as exc:  # one stage failing must not hide the others
            status, detail = "FAILED", f"{type(exc).__name__}: {exc}"[:400]
        self.rows.append((name, status, f"{detail} ({time.perf_counter() - t0:.0f} s)"))


def pytorch_rows(out: Path) -> tuple[str, str]:
    import gpu as gpu_bench

    gpu_bench.main(["--models", "vit-s", "--batch-sizes", "1,8", "--iterations", "20", "--rounds", "3", "--out", str(out)])
    data = json.loads(next(out.glob("gpu-*.json")).read_text())["models"]["vit-s"]
    rows = ", ".join(f"{r['backend']} {r['precision']} b{r['batch_size']} {r['throughput']} img/s" for r in data["results"])
    return ("passed" if data["passed"] else "FAILED (correctness)"), rows


def demo_artifacts(ck: Check, work: Path, engine: str = "skip", target: str = "tensorrt") -> Path:
    from vitmsn.export.fp32.spec import BatchRange
    from vitmsn.export.pipeline import ExportOptions, run_export

    out = work / f"demo-{engine}-{target}"
    if not out.exists():
        run_export(ExportOptions(model="demo", out=out, engine=engine, target=target, batch=BatchRange(1, 8, 32)))
    return out


def ort_cuda(ck: Check, work: Path) -> tuple[str, str]:
    import numpy as np

    from vitmsn.runtime import Predictor

    art = demo_artifacts(ck, work)
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)
    with Predictor.from_artifacts(art, backend="onnxruntime", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]) as g, \
            Predictor.from_artifacts(art, backend="onnxruntime", providers="cpu") as c:
        got, ref = g.infer(x)["logits"], c.infer(x)["logits"]
        used = g.describe()
    diff = float(np.abs(got - ref).max())
    return ("passed" if diff < 1e-2 and "CUDA" in used else "FAILED"), f"{used}; max |CUDA - CPU| logits {diff:.2e}"


def engine_build_load(ck: Check, work: Path, target: str) -> tuple[str, str]:
    import numpy as np

    from vitmsn.runtime import Predictor
    from vitmsn.runtime.manifest import Manifest

    art = demo_artifacts(ck, work, engine="require", target=target)
    ck.state["engine_artifacts"] = art
    e = Manifest.load(art).engines[0]
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)
    with Predictor.from_artifacts(art, backend="tensorrt") as t, Predictor.from_artifacts(art, backend="onnxruntime") as o:
        diff = float(np.abs(t.infer(x)["logits"] - o.infer(x)["logits"]).max())
    return ("passed" if diff < 1e-2 else "FAILED"), (f"{e.file} {target} {e.tensorrt_version} targets "
                                                     f"{list(e.compute_capabilities)}; max |engine - ORT| logits {diff:.2e}")


def conformance() -> tuple[str, str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or tensorrt",
                        str(ROOT / "tests" / "test_runtime_runners.py"), str(ROOT / "tests" / "test_polygraphy_check.py")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    tail = (r.stdout.strip().splitlines() or ["no output"])[-1]
    return ("passed" if r.returncode == 0 and "skipped" not in tail else "FAILED" if r.returncode else "skipped"), tail


def polygraphy_stage(ck: Check) -> tuple[str, str]:
    import numpy as np

    from vitmsn.export.validation.polygraphy_check import engine_vs_onnxruntime
    from vitmsn.runtime.manifest import Manifest

    art = ck.state["engine_artifacts"]
    m = Manifest.load(art)
    e = m.engines[0]
    x = np.random.default_rng(0).uniform(-1, 1, (8, 3, 224, 224)).astype(np.float32)
    c = engine_vs_onnxruntime(m.path_of(e.file), m.path_of(e.onnx or m.precision(e.precision).file), e.target, e.precision,
                              [{m.input_name: x}])
    return ("passed" if c.ran and c.passed else "not run" if not c.ran else "FAILED"), c.detail


def bench_rows(ck: Check, work: Path) -> tuple[str, str]:
    art = ck.state["engine_artifacts"]
    out = work / "bench.json"
    from vitmsn.cli import main as cli  # in-process: vitmsn may not be installed on the GPU machine

    try:
        cli.main(["bench", str(art), "--backend", "tensorrt", "--backend", "onnxruntime", "--batch-sizes", "1,8",
                  "--iterations", "20", "--json", str(out)], standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            return "FAILED", f"vitmsn bench exited {exc.code}"
    rows = json.loads(out.read_text())["results"]
    return "passed", ", ".join(f"{x['backend']} {x['precision']} b{x['batch_size']} {x['throughput']} img/s" for x in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    ap.add_argument("--budget-s", type=float, default=450.0)
    args = ap.parse_args(argv)
    import gpu as gpu_bench

    gpu_bench.bootstrap()
    from vitmsn.export.engines.builder import builder_status
    from vitmsn.runtime.backends import device

    gpus = device.cuda_gpus()
    name = f"{gpus[0].name} (compute capability {gpus[0].compute_capability})" if gpus else "none"
    no_gpu = None if gpus else "no GPU (the CUDA driver reports none)"
    ck = Check(args.budget_s)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            import torch

            torch_gpu = None if torch.cuda.is_available() else "PyTorch sees no CUDA device"
        except ImportError:
            torch_gpu = "PyTorch is not installed"
        ck.stage("PyTorch CUDA rows (ViT-S shape)", lambda: pytorch_rows(work / "pytorch"), no_gpu or torch_gpu)
        try:
            import onnxruntime as ort

            cuda_ep = None if "CUDAExecutionProvider" in ort.get_available_providers() else \
                "ONNX Runtime has no CUDA execution provider here (onnxruntime, not onnxruntime-gpu)"
        except ImportError:
            cuda_ep = "ONNX Runtime is not installed"
        ck.stage("ONNX Runtime CUDA provider (demo)", lambda: ort_cuda(ck, work), no_gpu or cuda_ep)
        target, why = None, None
        if gpus:
            for t in ("tensorrt", "tensorrt-rtx"):
                status = builder_status(t)
                if status.available:
                    target = t
                    break
                why = status.reason
            if target == "tensorrt-rtx":
                import tensorrt_rtx

                sm = "SM" + gpus[0].compute_capability.replace(".", "")
                if not hasattr(tensorrt_rtx.ComputeCapability, sm):
                    target, why = None, f"TensorRT-RTX does not support {gpus[0].name} ({sm.lower()}); TensorRT is not installed"
        no_engine = no_gpu or (None if target else f"no engine builder for this GPU: {why}")
        ck.stage(f"engine build + load ({target or 'tensorrt'})", lambda: engine_build_load(ck, work, str(target)), no_engine)
        no_engine_built = no_engine or (None if "engine_artifacts" in ck.state else "the engine stage did not build one")
        ck.stage("Runner conformance on the real TensorRT runner", conformance, no_engine)
        ck.stage("TensorRT vs ONNX Runtime through Polygraphy", lambda: polygraphy_stage(ck), no_engine_built)
        ck.stage("vitmsn bench rows (TensorRT, ONNX Runtime)", lambda: bench_rows(ck, work), no_engine_built)
    lines = [f"# vitmsn GPU check: {name}", "",
             f"Run {time.strftime('%Y-%m-%d %H:%M')} with `python benchmarks/gpu_check.py` in "
             f"{time.perf_counter() - ck.started:.0f} s. Versions: "
             + ", ".join(f"{k} {v}" for k, v in versions().items()) + ".", "",
             "| stage | result | detail |", "|---|---|---|"]
    lines += [f"| {s} | {r} | {d.replace('|', '/')} |" for s, r, d in ck.rows]
    text = "\n".join(lines) + "\n"
    print(text)
    slug = re.sub(r"[^a-z0-9]+", "-", (gpus[0].name if gpus else "no-gpu").lower()).strip("-")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"gpu-check-{slug}.md").write_text(text)
    return 1 if any(r == "FAILED" for _, r, _ in ck.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
