"""Throughput through a real Triton server against the in-process Predictor and `vitmsn serve`.

    python benchmarks/triton_throughput.py [--models demo,vits] [--requests 160] [--concurrency 16]
                                           [--rounds 3] [--out benchmarks/triton-throughput.md]

For each model (the trained demo and a randomly initialised ViT-S-shaped classifier, both exported
FP32 here), one run measures three paths on the same JPEG bytes, interleaved round by round
(in-process, serve, Triton, in-process, ...) so that load from other processes lands on all alike:

* in-process: ``Predictor.predict(all images)`` in batches of ``--max-batch`` (ONNX Runtime, the
  CPU-placed FP32 graph);
* ``vitmsn serve`` on 127.0.0.1: ``--concurrency`` HTTP clients, one JPEG per request
  (benchmarks/serve_throughput.py's client);
* Triton: the ``tritonserver`` bundled in nvidia-pytriton (2.51, Python backend only) on the
  repository ``vitmsn triton --inference python`` writes (preprocessing and inference both in
  Triton's Python backend, running vitmsn's runtime on the same graph), ``--concurrency`` requests
  in flight through tritonclient's async gRPC API, one JPEG per request, dynamic batching up to
  ``--max-batch``.

Every answer's top-1 is checked against the in-process one. The load generators share the
machine's cores with the servers, which the in-process path does not pay.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import _images, _server_round, _start_server  # noqa: E402
from vits import vits_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _export(model: str, tmp: Path) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    source = model
    if model == "vits":  # the vit-msn-small shape, randomly initialised (no hub access here)
        source = str(vits_checkpoint(tmp / "vits-checkpoint"))
    out = tmp / model
    run_export(ExportOptions(model=source, out=out, engine="skip"))
    return out


def _python_env(tmp: Path) -> Path:
    """numpy<2 (Triton 2.51's Python backend), Pillow, ONNX Runtime and vitmsn from this checkout."""
    env = tmp / "triton-env"
    python = str(env / "bin" / "python")
    for step in ([sys.executable, "-m", "venv", str(env)],
                 [python, "-m", "pip", "install", "-q", "numpy<2", "pillow", "onnxruntime"],
                 [python, "-m", "pip", "install", "-q", "--no-deps", str(REPO_ROOT)]):
        subprocess.run(step, check=True, capture_output=True, timeout=900)
    return env


def _triton_round(client: Any, bodies: list[bytes], concurrency: int, classes: int) -> tuple[float, list[float], list[str]]:
    import tritonclient.grpc as grpcclient

    slots = threading.Semaphore(concurrency)
    done = threading.Event()
    top1: list[str] = [""] * len(bodies)
    latencies: list[float] = []
    errors: list[str] = []
    remaining = [len(bodies)]
    lock = threading.Lock()

    def finished(i: int, start: float, result: Any, error: Any) -> None:
        try:
            with lock:
                latencies.append((time.perf_counter() - start) * 1000)
                if error is not None:
                    errors.append(str(error))
                else:
                    top1[i] = result.as_numpy("logits").reshape(-1)[0].decode().split(":", 2)[2]
        except Exception as exc:  # an exception in tritonclient's callback thread would be lost
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    done.set()
            slots.release()

    started = time.perf_counter()
    for i, body in enumerate(bodies):
        slots.acquire()
        image = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        image.set_data_from_numpy(np.array([[body]], dtype=np.object_))
        # tritonclient calls back with keywords: callback(result=..., error=...)
        client.async_infer("vitmsn", [image], lambda result, error, i=i, s=time.perf_counter(): finished(i, s, result, error),
                           outputs=[grpcclient.InferRequestedOutput("logits", class_count=1)], client_timeout=300)
    if not done.wait(600):
        raise SystemExit("Triton round did not finish within 600 s")
    if errors:
        raise SystemExit(f"Triton answered {len(errors)} request(s) with errors, e.g. {errors[0]}")
    return len(bodies) / (time.perf_counter() - started), latencies, top1


def _measure(name: str, artifacts: Path, env: Path, bodies: list[bytes], args: argparse.Namespace, tmp: Path) -> list[str]:
    import tritonclient.grpc as grpcclient

    from vitmsn.runtime import Predictor
    from vitmsn.serving.triton import TritonOptions, write_triton_repository
    from vitmsn.serving.triton_server import TritonServer

    repo = tmp / f"repo-{name}"
    write_triton_repository(artifacts, repo, TritonOptions(
        inference="python", python_env=str(env), max_batch_size=args.max_batch, preferred_batch_sizes=(args.max_batch,),
        max_queue_delay_us=int(args.max_wait_ms * 1000), python_threads=args.threads))
    predictor = Predictor.from_artifacts(artifacts, backend="onnxruntime", precision="fp32",
                                         batch_size=args.max_batch, threads=args.threads)
    classes = len(predictor.labels)
    proc, url = _start_server(artifacts, args)
    rates: dict[str, list[float]] = {"in-process": [], "serve": [], "triton": []}
    latencies: dict[str, list[float]] = {"serve": [], "triton": []}
    mismatches = {"serve": 0, "triton": 0}
    try:
        with TritonServer(repo, ready_timeout_s=300) as server:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
            expected = [p[0].label for p in predictor.predict(bodies, top_k=1)]  # also the warm-up
            warm = bodies[: 2 * args.concurrency]
            asyncio.run(_server_round(url, warm, args.concurrency))
            _triton_round(client, warm, args.concurrency, classes)
            for r in range(args.rounds):
                start = time.perf_counter()
                predictor.predict(bodies, top_k=1)
                rates["in-process"].append(len(bodies) / (time.perf_counter() - start))
                for path, run in (("serve", lambda: asyncio.run(_server_round(url, bodies, args.concurrency))),
                                  ("triton", lambda: _triton_round(client, bodies, args.concurrency, classes))):
                    rate, lat, top1 = run()
                    rates[path].append(rate)
                    latencies[path] += lat
                    mismatches[path] += sum(a != b for a, b in zip(top1, expected))
                print(f"  {name} round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
            stats = client.get_inference_statistics("vitmsn_python").model_stats[0]
            batch_mean = stats.inference_count / max(1, stats.execution_count)
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        describe = predictor.describe()
        predictor.close()

    base = median(rates["in-process"])
    rows = []
    for path, label in (("in-process", f"in-process `Predictor.predict` (batches of {args.max_batch})"),
                        ("serve", "`vitmsn serve` (HTTP)"), ("triton", "Triton 2.51, Python backend (gRPC)")):
        lat = np.asarray(latencies.get(path) or [np.nan])
        pct = "-" if path == "in-process" else " / ".join(f"{np.percentile(lat, q):.0f}" for q in (50, 90, 99))
        ratios = [x / y for x, y in zip(rates[path], rates["in-process"])]
        rows.append(f"| {name} | {label} | {median(rates[path]):.1f} | {median(ratios):.2f}x | "
                    f"{', '.join(f'{x:.1f}' for x in rates[path])} | {pct} | "
                    f"{mismatches.get(path, 0)} |")
    return rows + [f"<!-- {name}: {describe}; Triton mean batch {batch_mean:.1f}; in-process median {base:.1f} -->"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="demo,vits", help="comma-separated: demo, vits")
    parser.add_argument("--requests", type=int, default=160, help="JPEGs per round and path (ViT-S: a quarter)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads (all paths)")
    parser.add_argument("--decode-threads", type=int, help="vitmsn serve's decoding threads [default: its own]")
    parser.add_argument("--python-env", type=Path, help="an existing execution environment [default: build one]")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    with tempfile.TemporaryDirectory(prefix="vitmsn-triton-bench-") as tmp_name:
        tmp = Path(tmp_name)
        started, load_start = time.monotonic(), os.getloadavg()
        env = args.python_env or _python_env(tmp)
        print(f"execution environment built in {time.monotonic() - started:.0f}s", flush=True)
        rows: list[str] = []
        for model in args.models.split(","):
            artifacts = _export(model, tmp)
            count = args.requests if model == "demo" else max(args.concurrency, args.requests // 4)
            bodies = _images(None, tmp, count)
            rows += _measure(model, artifacts, env, bodies, args, tmp)
        load = os.getloadavg()

    lines = [
        "## Throughput through Triton vs `vitmsn serve` vs in-process",
        "",
        f"- machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {load_start[0]:.1f} at the start, {load[0]:.1f} at the end (a shared machine: compare the "
        "paths within a round, not with other tables)",
        f"- images: the demo's held-out shapes as JPEGs, {args.requests} per round (ViT-S: "
        f"{max(args.concurrency, args.requests // 4)}), the same bytes on every path; {args.rounds} interleaved rounds",
        f"- FP32 ONNX Runtime everywhere (the CPU-placed graph), {args.threads} intra-op threads; batches up to "
        f"{args.max_batch}, {args.max_wait_ms:g} ms batching delay; servers: {args.concurrency} requests in flight, "
        "one JPEG each, client on the same machine",
        f"- regenerate: `python benchmarks/triton_throughput.py --out benchmarks/triton-throughput.md`",
        "",
        "| model | path | img/s (median) | vs in-process (median of per-round ratios) | rounds | latency p50 / p90 / p99 (ms) | top-1 disagreements |",
        "|---|---|---:|---:|---|---|---:|",
        *rows,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
