"""Every published ViTMSN shape through ``vitmsn-export``, one export at a time, next to Optimum's FP32 export.

    python benchmarks/scale.py [--shapes S/16,B/16,B/4,L/16,L/7] [--precisions fp32,fp16,int8]
                               [--optimum-cli PATH] [--int8-max-tries N] [--work DIR] [--out benchmarks/scale]

For each shape (random weights in the published checkpoints' shapes, saved with transformers as the tests
do; the published checkpoints are ViTMSNModel backbones) and each precision, runs
``/usr/bin/time -v vitmsn-export --model CK --precision P --engine skip`` with the default options
(INT8: 32 calibration images of noise, the rest held out for the drift gate, which random weights fail:
exit 1 is the expected result there, see ENVIRONMENT.md), then ``optimum-cli export onnx`` on the same
checkpoint (Optimum lives in its own virtual environment: it pins transformers 4.x). Records wall time,
peak RSS, the files written, the stage that took longest and the one that set the peak (from the
manifest's ``resources``), and the parity batch sizes the memory plan chose (within ``--memory-limit``,
default 14G: the share of a 24 GiB machine shared with other work). Each row is written to
``<out>.json`` and ``<out>.md`` as soon as it is measured, so an interrupted run keeps what it measured.

Not part of the test suite: it takes about an hour and most of a 24 GiB machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {  # name -> transformers ViTMSNConfig fields (224x224 inputs)
    "S/16": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536, patch_size=16),
    "B/16": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=16),
    "B/4": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, patch_size=4),
    "L/16": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=16),
    "L/7": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, patch_size=7),
}
CALIBRATION_IMAGES = 48  # 32 calibrate (--calib-samples 32), the rest are held out for the drift gate


def checkpoint(work: Path, shape: str, python: str) -> Path:
    """Random weights in ``shape``, saved by ``python``'s transformers (Optimum's environment when there is one:
    transformers 4.x writes the published checkpoints' tensor names, which both tools load)."""
    out = work / ("ck-" + shape.replace("/", "-"))
    if not (out / "config.json").exists():
        code = ("import sys, json, torch; from transformers import ViTMSNConfig, ViTMSNModel; torch.manual_seed(0); "
                "ViTMSNModel(ViTMSNConfig(**json.loads(sys.argv[1]))).eval().save_pretrained(sys.argv[2])")
        subprocess.run([python, "-c", code, json.dumps(SHAPES[shape]), str(out)], check=True)
    return out


def calibration_images(work: Path) -> Path:
    out = work / "calib"
    if out.is_dir():
        return out
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(CALIBRATION_IMAGES):
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(out / f"noise_{i:03d}.jpg")
    return out


def timed(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    """``/usr/bin/time -v`` of ``cmd``: exit code, wall seconds, peak RSS (GB)."""
    with log.open("w") as f:
        proc = subprocess.run(["/usr/bin/time", "-v", *cmd], stdout=f, stderr=subprocess.STDOUT, env=env)
    text = log.read_text(errors="replace")
    rss = re.findall(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.findall(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    cpu = [float(v) for v in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", text)[-2:]]
    seconds = None
    if wall:
        parts = [float(p) for p in wall[-1].split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"exit": proc.returncode, "wall_s": seconds, "cpu_s": round(sum(cpu)) if cpu else None,
            "peak_rss_gb": round(int(rss[-1]) * 1024 / 1e9, 2) if rss else None}


def _free_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return round(int(line.split()[1]) * 1024 / 1e9, 1)
    return float("nan")


def ours(work: Path, shape: str, precision: str, ck: Path, memory_limit: str | None,
         int8_max_tries: int | None = None) -> dict[str, object]:
    out = work / f"out-{shape.replace('/', '-')}-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(Path(sys.executable).parent / "vitmsn-export"), "--model", str(ck), "--out", str(out), "--engine", "skip"]
    if precision != "fp32":
        cmd += ["--precision", precision]
    if precision == "int8":
        cmd += ["--calib-images", str(calibration_images(work)), "--calib-samples", "32",
                "--calib-cache", str(work / "calib-cache")]
        if int8_max_tries is not None:  # re-quantization tries: each one calibrates again (B/4: minutes apiece)
            cmd += ["--int8-max-tries", str(int8_max_tries)]
    env = dict(os.environ, **({"VITMSN_MEMORY_LIMIT": memory_limit} if memory_limit else {}))
    row: dict[str, object] = {"tool": "vitmsn-export", "shape": shape, "precision": precision,
                              "available_gb_before": _free_gb(), "memory_limit": memory_limit,
                              "int8_max_tries": int8_max_tries if precision == "int8" else None,
                              **timed(cmd, work / f"{out.name}.log", env)}
    manifest = out / "manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        resources = m.get("resources", {})
        # every step of the run with its wall time and peak RSS (the stages' own times miss the conversions)
        rows = [{"stage": r["step"].split(" (")[0].split(":")[0], **r} for r in resources.get("steps", [])]
        if rows:
            slow = max(rows, key=lambda r: r.get("seconds") or 0)
            high = max(rows, key=lambda r: r.get("peak_rss_mb") or 0)
            row["slowest_stage"] = f"{slow['stage']} {slow['seconds']:.0f}s"
            row["peak_stage"] = f"{high['stage']} {high['peak_rss_mb'] / 1000:.1f} GB"
            row["steps"] = {r["step"]: [r["seconds"], r["peak_rss_mb"]] for r in resources["steps"]}
        row["files_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(out.glob("*.onnx"))}
        parity = m["precisions"]["fp32"].get("validation", {}).get("onnxruntime_parity", {})
        sizes = re.search(r"batch sizes (\[[\d, ]+\])", parity.get("detail", ""))
        row["parity_batch_sizes"] = sizes.group(1) if sizes else None
        row["parity_note"] = "; ".join(re.findall(r"batch \d+ not run \(.*?\), batch \d+ instead", parity.get("detail", "")))
        row["stages_failed"] = [k for p in m["precisions"].values() for k, v in p.get("validation", {}).items()
                                if not v.get("passed")]
    return row


def optimum(work: Path, shape: str, ck: Path, cli: str) -> dict[str, object]:
    out = work / f"optimum-{shape.replace('/', '-')}"
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    row: dict[str, object] = {"tool": "optimum-cli export onnx", "shape": shape, "precision": "fp32",
                              "available_gb_before": _free_gb(),
                              **timed([cli, "export", "onnx", "--model", str(ck), "--task", "feature-extraction", str(out)],
                                      work / f"{out.name}.log", env)}
    row["files_mb"] = {p.name: round(p.stat().st_size / 1e6, 1) for p in sorted(out.glob("*.onnx*"))}
    return row


def markdown(rows: list[dict[str, object]], machine: str) -> str:
    lines = ["# Every published ViTMSN shape: vitmsn-export next to Optimum", "",
             f"Measured by `python benchmarks/scale.py` on {machine}, one export at a time, `/usr/bin/time -v`; random "
             "weights in the published shapes (ViTMSNModel backbones, 224x224), default options, `--engine skip`. "
             "INT8 with random weights on 16 held-out images ends failed or inconclusive by design (exit 1, "
             "ENVIRONMENT.md).", "",
             "| shape | tool | precision | exit | wall | CPU (user+sys) | peak RSS | slowest step | peak set by (step) | parity batches | files (MB) |",
             "|---|---|---|---:|---:|---:|---:|---|---|---|---|"]
    for r in rows:
        files = ", ".join(f"{k} {v:g}" for k, v in (r.get("files_mb") or {}).items())
        parity = r.get("parity_batch_sizes") or ""
        if r.get("parity_note"):
            parity += f" ({r['parity_note']})"
        wall, cpu = r.get("wall_s"), r.get("cpu_s")
        precision = r["precision"] if r.get("int8_max_tries") is None else f"{r['precision']} (tries {r['int8_max_tries']})"
        lines.append(f"| {r['shape']} | {r['tool']} | {precision} | {r['exit']} | "
                     f"{'' if wall is None else f'{wall:.0f} s'} | {'' if cpu is None else f'{cpu} s'} | "
                     f"{r.get('peak_rss_gb')} GB | {r.get('slowest_stage', '')} | "
                     f"{r.get('peak_stage', '')} | {parity} | {files} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES))
    p.add_argument("--precisions", default="fp32,fp16,int8")
    p.add_argument("--optimum-cli", default=shutil.which("optimum-cli"), help="optimum-cli to compare with (skipped without)")
    p.add_argument("--memory-limit", default="14G",
                   help="VITMSN_MEMORY_LIMIT for the exports: their share of a shared machine ('' for none)")
    p.add_argument("--int8-max-tries", type=int, help="passed to vitmsn-export (its default without this)")
    p.add_argument("--work", type=Path, default=Path("/tmp/vitmsn-scale"))
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("scale"))
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    json_path = args.out.with_suffix(".json")
    rows: list[dict[str, object]] = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "CPU")
    machine = f"{cpu}, {os.cpu_count()} cores, {round(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30)} GiB"
    for shape in args.shapes.split(","):
        python = str(Path(args.optimum_cli).parent / "python") if args.optimum_cli else sys.executable
        ck = checkpoint(args.work, shape, python)
        runs = [("ours", pr) for pr in args.precisions.split(",")] + ([("optimum", "fp32")] if args.optimum_cli else [])
        for tool, precision in runs:
            print(f"{time.strftime('%H:%M:%S')} {shape} {tool} {precision} ({_free_gb()} GB available)", flush=True)
            row = (ours(args.work, shape, precision, ck, args.memory_limit, args.int8_max_tries) if tool == "ours"
                   else optimum(args.work, shape, ck, args.optimum_cli))
            print(f"  {row}", flush=True)
            rows = [r for r in rows if (r["shape"], r["tool"], r["precision"]) != (shape, row["tool"], precision)] + [row]
            json_path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
            args.out.with_suffix(".md").write_text(markdown(rows, machine))


if __name__ == "__main__":
    main()
