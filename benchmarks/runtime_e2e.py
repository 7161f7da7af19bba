"""Runtime speed: preprocessing per image, end-to-end predict vs raw infer, and peak memory.

    python benchmarks/runtime_e2e.py                       # ViT-S-shaped random export, 64 JPEGs
    python benchmarks/runtime_e2e.py --artifacts DIR --images DIR --batch 8 --rounds 5
    python benchmarks/runtime_e2e.py --preprocess-only

Three measurements, each in its own fresh process so that nothing else is loaded in it:

1. preprocessing of 640x480 JPEGs (decode included) pinned to one core: median ms per image for
   the exact path and for ``draft=True``, and how far draft's pixels are from exact ones;
2. throughput (images/s) at the given batch size with ``--backend`` (ONNX Runtime by default) on the
   CPU: ``infer`` on ready tensors (raw) and ``predict`` on the JPEG files (decode + preprocess +
   infer + top-k, the next batch decoding while this one runs), in alternating rounds of the same
   run, with their ratio. ``--threads`` below the core count shows the overlap with a core to spare;
3. that process's peak resident memory (``ru_maxrss``) against the model file's size.

Without ``--artifacts`` a randomly initialised ViT-S-shaped classifier (hidden 384, 12 layers,
6 heads, 1000 labels) is saved with transformers and exported with vitmsn-export's pipeline
(needs the export extra); the measured runtime process itself imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from vits import vits_checkpoint


def photo_like(width: int, height: int, seed: int) -> Image.Image:
    """Smooth colour fields, mid-frequency texture and sensor-like noise: JPEG-encodes like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.full((height, width, 3), 128.0, np.float32)
    for c in range(3):
        for _ in range(5):
            fx, fy, phase = rng.uniform(0.002, 0.03), rng.uniform(0.002, 0.03), rng.uniform(0, 6.28)
            img[..., c] += rng.uniform(15, 45) * np.sin(fx * x + fy * y + phase)
    texture = rng.normal(0, 40, (height // 4 + 1, width // 4 + 1, 3)) + 128
    texture_im = Image.fromarray(texture.clip(0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    img += np.asarray(texture_im, np.float32) - 128 + rng.normal(0, 5, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))


def write_jpegs(out: Path, count: int) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        paths.append(out / f"{i:04d}.jpg")
        if not paths[-1].exists():
            photo_like(640, 480, seed=1000 + i).save(paths[-1], format="JPEG", quality=90)
    return paths


def export_vits(out: Path) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    vits_checkpoint(out / "checkpoint")
    run_export(ExportOptions(model=str(out / "checkpoint"), out=out / "artifacts", engine="skip"))
    return out / "artifacts"


# ---- worker processes -------------------------------------------------------------------------
def preprocess_worker(images: list[Path], repeats: int) -> dict:
    from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})  # one core
    exact = PreprocessConfig.from_preprocessor_config(DEFAULT_PREPROCESSOR_CONFIG)
    draft = dataclasses.replace(exact, draft=True)
    out = np.empty((3, exact.height, exact.width), np.float32)
    size, resample = (exact.width, exact.height), exact.resample

    def pillow_decode(path: Path) -> None:
        with Image.open(path) as im:
            im.load()

    def pillow_decode_resize(path: Path) -> None:
        with Image.open(path) as im:
            im.resize(size, resample=resample, reducing_gap=None)

    # The two Pillow-only rows are the floor of any exact path built on Pillow: the same JPEG
    # decode and the same resize that transformers' processor runs, with nothing of ours around them.
    variants = {"exact": lambda p: exact(p, out), "draft": lambda p: draft(p, out),
                "pillow decode only": pillow_decode, "pillow decode + resize": pillow_decode_resize}
    for fn in variants.values():
        for path in images[:4]:
            fn(path)  # warm up
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # variants interleaved, so that load from other processes hits all alike
        for name, fn in variants.items():
            for path in images:
                w, c = time.perf_counter(), time.thread_time()
                fn(path)
                cpu[name].append(time.thread_time() - c)
                wall[name].append(time.perf_counter() - w)
    result: dict = {}
    for name in variants:
        result[name] = {"wall_ms_median": 1e3 * statistics.median(wall[name]),
                        "cpu_ms_median": 1e3 * statistics.median(cpu[name]), "cpu_ms_min": 1e3 * min(cpu[name]),
                        "wall_ms_p90": 1e3 * float(np.percentile(wall[name], 90)), "n": len(wall[name])}
    diffs = [np.abs(exact(p) - draft(p)) for p in images[:16]]
    result["draft_vs_exact"] = {"max_abs": float(max(d.max() for d in diffs)), "mean_abs": float(np.mean([d.mean() for d in diffs]))}
    return result


def draft_worker(artifacts: Path, count: int) -> dict:
    """What ``draft=True`` does to predictions: the trained demo classifier on ``count`` 640x480
    JPEG renders of its classes (large enough that draft really decodes at half size), exact vs
    draft preprocessing, ONNX Runtime FP32 on the CPU."""
    from vitmsn.export.demo.shapes import LABELS, render  # numpy + Pillow only
    from vitmsn.runtime import Predictor

    rng = np.random.default_rng(20261123)
    with tempfile.TemporaryDirectory(prefix="vitmsn-draft-") as tmp:
        paths, truth = [], []
        for i in range(count):
            label = LABELS[i % len(LABELS)]
            path = Path(tmp) / f"{i:04d}.jpg"
            render(label, rng, size=(640, 480)).save(path, format="JPEG", quality=90)
            paths.append(path)
            truth.append(label)
        logits = {}
        for name, is_draft in (("exact", False), ("draft", True)):
            with Predictor.from_artifacts(artifacts, backend="onnxruntime", precision="fp32", draft=is_draft) as p:
                x, errors = p.preprocess_images(paths)
                if any(errors):
                    raise SystemExit(f"draft worker: preprocessing failed: {[e for e in errors if e][:3]}")
                output = p.infer(x)
                logits[name] = output["logits"].reshape(len(paths), -1)
                labels = p.labels
    a, b = logits["exact"], logits["draft"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    top_a, top_b = a.argmax(1), b.argmax(1)
    result = {"images": count, "top1_agreement": float((top_a == top_b).mean()), "cosine_min": float(cos.min()),
              "cosine_mean": float(cos.mean())}
    result["accuracy"] = {k: float(np.mean([labels.get(int(j)) == t for j, t in zip(v.argmax(1), truth)]))
                          for k, v in logits.items()}
    return result


def e2e_worker(artifacts: Path, images: list[Path], batch: int, rounds: int, threads: int | None,
               backend: str = "onnxruntime", precision: str | None = None) -> dict:
    from vitmsn.runtime import Predictor

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Predictor.from_artifacts(artifacts, backend=backend, precision=precision, batch_size=batch,
                                  threads=threads) as p:
        rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        ready = p.preprocess.batch(images[:batch])  # one ready batch, run len(images) / batch times
        p.infer(ready)
        p.predict(images[:batch])  # warm up both paths
        raw, e2e = [], []
        steps = max(1, len(images) // batch)
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(steps):
                p.infer(ready)
            raw.append(steps * batch / (time.perf_counter() - t))
            t = time.perf_counter()
            p.predict(images, top_k=5)
            e2e.append(len(images) / (time.perf_counter() - t))
        desc = p.describe()
        model_file = p.manifest.path_of(p.choice.file)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"backend": desc, "batch": batch, "images": len(images), "raw": raw, "e2e": e2e,
            "ratios": [b / a for a, b in zip(raw, e2e)], "model_bytes": model_file.stat().st_size,
            "peak_rss_bytes": peak * 1024, "rss_after_start_bytes": rss_start * 1024,
            "rss_after_load_bytes": rss_loaded * 1024, "modules": sorted({m.split(".")[0] for m in sys.modules})}


def _run_worker(args: list[str]) -> dict:
    result = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"worker {args[:2]} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def report(pre: dict, e2e: dict | None, draft: dict | None = None) -> str:
    lines = ["## Preprocessing, 640x480 JPEG -> 224x224 float32 (decode included, one core)", "",
             "| path | median ms (wall) | median ms (CPU) | min ms (CPU) | p90 ms (wall) |", "|---|---:|---:|---:|---:|"]
    for name in ("exact", "draft", "pillow decode only", "pillow decode + resize"):
        r = pre[name]
        lines.append(f"| {name} | {r['wall_ms_median']:.2f} | {r['cpu_ms_median']:.2f} | {r['cpu_ms_min']:.2f} | "
                     f"{r['wall_ms_p90']:.2f} |")
    d = pre["draft_vs_exact"]
    lines += ["", "(CPU = this thread's CPU time: what one core spends, without the time other processes took the core)",
              "", f"draft vs exact pixels (normalised units): max abs {d['max_abs']:.3f}, mean abs {d['mean_abs']:.4f} "
              "(exact matches transformers bit for bit; draft does not)", "",
              "The two pillow rows call only Pillow (open + decode, then the recorded resize) with nothing of "
              "vitmsn around them: the floor of an exact path on this core.", ""]
    if draft:
        lines += [f"## What draft does to predictions (trained demo model, {draft['images']} 640x480 JPEG renders, "
                  "ONNX Runtime FP32)", "",
                  "| top-1 agreement draft vs exact | minimum logit cosine | mean logit cosine | accuracy exact | "
                  "accuracy draft |", "|---:|---:|---:|---:|---:|",
                  f"| {draft['top1_agreement']:.3f} | {draft['cosine_min']:.5f} | {draft['cosine_mean']:.5f} | "
                  f"{draft['accuracy']['exact']:.3f} | {draft['accuracy']['draft']:.3f} |", ""]
    if e2e:
        med_raw, med_e2e = statistics.median(e2e["raw"]), statistics.median(e2e["e2e"])
        mb = 1024 * 1024
        lines += [f"## Throughput, {e2e['backend']}, batch {e2e['batch']}, {e2e['images']} JPEGs (640x480)", "",
                  "| round | raw infer img/s | e2e predict img/s | e2e / raw |", "|---|---:|---:|---:|"]
        for i, (a, b, r) in enumerate(zip(e2e["raw"], e2e["e2e"], e2e["ratios"]), 1):
            lines.append(f"| {i} | {a:.2f} | {b:.2f} | {r:.3f} |")
        lines.append(f"| median | {med_raw:.2f} | {med_e2e:.2f} | {statistics.median(e2e['ratios']):.3f} |")
        budget = e2e["model_bytes"] + 300 * mb
        lines += ["", "## Peak memory of the runtime process", "",
                  "| model file | peak RSS | budget (model + 300 MB) | RSS after imports | RSS after load | within |",
                  "|---:|---:|---:|---:|---:|---|",
                  f"| {e2e['model_bytes'] / mb:.1f} MB | {e2e['peak_rss_bytes'] / mb:.1f} MB | {budget / mb:.1f} MB | "
                  f"{e2e['rss_after_start_bytes'] / mb:.1f} MB | {e2e['rss_after_load_bytes'] / mb:.1f} MB | "
                  f"{'yes' if e2e['peak_rss_bytes'] <= budget else 'NO'} |",
                  "", f"torch loaded in the runtime process: {'torch' in e2e['modules']}"]
    lines += ["", f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"python {platform.python_version()}, load average {os.getloadavg()[0]:.1f} at the end"]
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in ("--preprocess-worker", "--e2e-worker", "--draft-worker"):
        kind, payload = sys.argv[1], json.loads(sys.argv[2])
        if kind == "--draft-worker":
            print(json.dumps(draft_worker(Path(payload["artifacts"]), payload["count"])))
            return
        images = [Path(p) for p in payload["images"]]
        if kind == "--preprocess-worker":
            print(json.dumps(preprocess_worker(images, payload["repeats"])))
        else:
            print(json.dumps(e2e_worker(Path(payload["artifacts"]), images, payload["batch"], payload["rounds"],
                                        payload["threads"], payload["backend"], payload["precision"])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifacts", type=Path, help="an artifacts directory (default: export a random ViT-S)")
    parser.add_argument("--images", type=Path, help="a directory of JPEGs (default: write --count 640x480 JPEGs)")
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads (default: all cores; one fewer than the cores leaves one for decoding)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino", "auto"])
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16", "int8"], help="default: the runtime's choice")
    parser.add_argument("--repeats", type=int, default=5, help="passes over the images in the preprocessing timing")
    parser.add_argument("--preprocess-only", action="store_true")
    parser.add_argument("--demo-artifacts", type=Path, default=Path("artifacts/bench/demo"),
                        help="a demo-model export, for what draft=True does to predictions (skipped when absent; "
                             "make one with vitmsn-export --model demo --out DIR)")
    parser.add_argument("--draft-images", type=int, default=400)
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitmsn-bench-") as tmp:
        images = sorted(args.images.glob("*.jpg")) if args.images else write_jpegs(Path(tmp) / "jpegs", args.count)
        if not images:
            raise SystemExit(f"{args.images}: no .jpg files")
        pre = _run_worker(["--preprocess-worker", json.dumps({"images": [str(p) for p in images[:32]], "repeats": args.repeats})])
        draft = None
        if (args.demo_artifacts / "manifest.json").is_file():
            draft = _run_worker(["--draft-worker", json.dumps({"artifacts": str(args.demo_artifacts),
                                                               "count": args.draft_images})])
        else:
            print(f"{args.demo_artifacts}: no manifest.json, so draft's effect on predictions is not measured",
                  file=sys.stderr)
        e2e = None
        if not args.preprocess_only:
            artifacts = args.artifacts or export_vits(Path(tmp) / "vits")
            e2e = _run_worker(["--e2e-worker", json.dumps({"artifacts": str(artifacts), "images": [str(p) for p in images],
                                                           "batch": args.batch, "rounds": args.rounds,
                                                           "threads": args.threads, "backend": args.backend,
                                                           "precision": args.precision})])
        print(report(pre, e2e, draft))
        if args.json:
            args.json.write_text(json.dumps({"preprocess": pre, "e2e": e2e, "draft": draft}, indent=2))


if __name__ == "__main__":
    main()
