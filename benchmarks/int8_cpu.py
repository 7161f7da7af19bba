"""INT8 for ONNX Runtime CPU vs FP32, on a ViT-S-shaped model, measured in the same run.

    python benchmarks/int8_cpu.py                      # ViT-S shape (384/12/6/1536), batch 8, prints Markdown
    python benchmarks/int8_cpu.py --with-tensorrt-qdq  # also the TensorRT-placed Q/DQ graph (FP32 high precision)
    python benchmarks/int8_cpu.py --artifacts DIR      # an export's model.fp32.onnx / model.int8.cpu.onnx instead
    python benchmarks/int8_cpu.py --weight-ranges 8bit,7bit [--artifacts DIR] \\
        [--accuracy-artifacts DEMO --heldout IMAGES [--calib-images IMAGES]] --markdown OUT.md --json OUT.json

The model has random weights (speed does not depend on them). Calibration uses the real
pipeline: demo-shape images written to a temporary folder, sampled and preprocessed by
:mod:`vitmsn.calibration`. Each graph gets its own ONNX Runtime CPU session with the same thread
count; the sessions are timed in interleaved rounds (FP32, INT8, FP32, INT8, ...) so that load
from other processes hits both alike, and the ratio uses the median batch latency of each.

``--weight-ranges`` quantizes the same FP32 graph (the export's with ``--artifacts``) once per
weight range of :func:`~vitmsn.export.precision.int8_cpu.cpu_int8_onnx_from_calibration` (8-bit:
right on VNNI/AMX CPUs; 7-bit ``reduce_range``: right on AVX2-only CPUs too) from the same
calibration tensors, times FP32 and each INT8 graph interleaved, and adds the 8bit/7bit ratio (of
the medians, and the median of the per-round ratios). ``--accuracy-artifacts`` adds accuracy on a
trained model: its model.fp32.onnx quantized with each range from its calibration images as the
export draws them (same count and seed; the tensors' SHA-256 is checked against the manifest's),
compared with the FP32 graph on ``--heldout`` images (labels from class folders) through the
project's preprocessing, runner and drift metrics (:mod:`vitmsn.export.validation`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

WEIGHT_RANGES = ("8bit", "7bit")
# issue 17's INT8 goal on the demo's held-out images (stricter than the default int8 gates)
GOAL_GATES = {"min_top1_agreement": "int8=0.98", "max_accuracy_drop": "int8=0.01"}
NOISE = 0.05  # a speed ratio within 1 +- this on the shared 2-core machine is read as "no difference"


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
    from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig

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


def weight_ranges(text: str) -> tuple[str, ...]:
    """``--weight-ranges 8bit,7bit`` -> ("8bit", "7bit"); anything else is an argparse error (exit 2)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in WEIGHT_RANGES]
    if not items or bad:
        raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)} is not a weight range: give a comma-separated "
                                         f"list of {' and '.join(WEIGHT_RANGES)} (e.g. --weight-ranges 8bit,7bit)")
    if len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"{text!r} names a weight range twice")
    return tuple(items)


def _int8_name(weight_range: str) -> str:
    return f"int8 ({weight_range} weights)"


def _largest_int8_weight(path: Path) -> int:
    """The largest |int8| of the graph's 2-D int8 initializers (the MatMul weights): 127 for 8-bit, <= 64 for 7-bit."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return max((int(np.abs(numpy_helper.to_array(i).astype(np.int32)).max()) for i in model.graph.initializer
                if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2), default=0)


def quantized_per_range(fp32: Path, calibration: np.ndarray, ranges: tuple[str, ...], out: Path,
                        label: str) -> tuple[dict[str, Path], dict[str, dict[str, Any]]]:
    """``fp32`` quantized for ONNX Runtime CPU once per weight range, all from ``calibration``."""
    from vitmsn.export.precision.int8_cpu import cpu_int8_onnx_from_calibration

    graphs, info = {}, {}
    for wr in ranges:
        print(f"{label}: quantizing {fp32.name} with {wr} weights ...", file=sys.stderr, flush=True)
        r = cpu_int8_onnx_from_calibration(fp32, out / f"{label}.int8.cpu.{wr}.onnx", calibration, weight_range=wr)
        m = r.to_manifest()
        graphs[_int8_name(wr)] = r.path
        info[wr] = {"weights": m["weights"], "quantized_nodes": m["quantized_nodes"], "quantize_seconds": m["quantize_seconds"],
                    "ort_fusion": m["ort_fusion"], "op_counts": dict(sorted(r.counts.items())),
                    "largest_int8_weight": _largest_int8_weight(r.path)}
        print(f"{label}: {wr} done in {r.seconds:.0f}s", file=sys.stderr, flush=True)
    return graphs, info


def speed_rows(times: dict[str, list[float]], batch: int) -> list[dict[str, Any]]:
    base = batch / statistics.median(times["fp32"])
    rows = []
    for name, t in times.items():
        tp = batch / statistics.median(t)
        rows.append({"graph": name, "throughput": tp, "ratio_vs_fp32": tp / base, "latency_ms_median": 1e3 * statistics.median(t),
                     "latency_ms_min": 1e3 * min(t)})
    return rows


def range_ratio(times: dict[str, list[float]]) -> dict[str, float] | None:
    """8bit over 7bit throughput: of the medians, and the median of the per-round ratios (same round, same load)."""
    a, b = times.get(_int8_name("8bit")), times.get(_int8_name("7bit"))
    if not a or not b:
        return None
    per_round = [tb / ta for ta, tb in zip(a, b)]
    q1, _, q3 = statistics.quantiles(per_round, n=4) if len(per_round) > 1 else (per_round[0],) * 3
    return {"of_medians": statistics.median(b) / statistics.median(a), "median_per_round": statistics.median(per_round),
            "per_round_p25": q1, "per_round_p75": q3}


def accuracy_per_range(artifacts: Path, heldout: Path, calib_images: Path | None, ranges: tuple[str, ...],
                       tmp: Path) -> dict[str, Any]:
    """FP32 and each weight range's INT8 graph of a trained export on held-out images, against the FP32 graph."""
    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
    from vitmsn.export.validation.comparison import comparison_inputs, onnxruntime_outputs
    from vitmsn.export.validation.gates import Gates
    from vitmsn.core.errors import InputError
    from vitmsn.export.validation.verdict import compare_outputs
    from vitmsn.runtime.manifest import Manifest

    m = Manifest.load(artifacts)
    record = m.calibration
    seed = int(record.extra.get("seed", 0)) if record else 0
    samples = record.count if record else 64
    images = calib_images or Path(record.source)  # _check_paths made sure one of them is a folder
    block = m.preprocess.to_json()
    cs = calibration_set_from_directory(images, block, CalibrationOptions(samples=samples, seed=seed, use_cache=False,
                                                                          min_images=1))
    fp32 = m.verify(m.precision("fp32"))
    graphs, info = quantized_per_range(fp32, cs.tensors, ranges, tmp, "demo")
    entry = m.precisions.get("int8")
    shipped = entry.flavours.get("onnxruntime_cpu") if entry else None
    if shipped is not None:
        graphs[f"int8 as exported ({shipped.extra.get('weight_range', '?')} weights)"] = m.verify(shipped)
    inputs = comparison_inputs(block, m.labels, tuple(m.input_shape[1:]), validate_images=heldout, calibration=cs)
    if not inputs.real or not (inputs.labels >= 0).any():
        raise InputError(f"--heldout {heldout}: no labelled images (class folders named as the model's labels)")
    print(f"accuracy: {len(inputs.tensors)} held-out images of {heldout}", file=sys.stderr, flush=True)
    ref = onnxruntime_outputs(fp32, inputs.tensors, m.input_name)
    gates = Gates.build(**GOAL_GATES)
    rows = []
    for name, path in {"fp32": fp32, **graphs}.items():
        got = ref if name == "fp32" else onnxruntime_outputs(path, inputs.tensors, m.input_name)
        v = compare_outputs(got, ref, gates, "int8", inputs.labels)
        rows.append({"graph": name, "accuracy": v.metrics["accuracy"], "top1_agreement": v.metrics["top1_agreement"],
                     "accuracy_drop": v.metrics["accuracy_drop"], "cosine_min": v.metrics["cosine_min"],
                     "cosine_mean": v.metrics["cosine_mean"], "goal_gates_passed": v.passed})
    return {"artifacts": str(artifacts), "heldout": inputs.describe(), "calibration": {
                "source": str(images), "count": len(cs), "seed": seed, "tensor_sha256": cs.sha256,
                "same_as_export": record is not None and cs.sha256 == record.tensor_sha256},
            "quantized": info, "rows": rows}


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def reading(report: dict[str, Any]) -> list[str]:
    """The figures in words (generated, so a regenerated table never contradicts its text)."""
    out = []
    ratio = report.get("ratio_8bit_over_7bit")
    flags = report["machine"]["cpu"].get("flags", [])
    vnni = [f for f in flags if f in ("avx512_vnni", "avx_vnni", "amx_int8")]
    if ratio:
        r = ratio["median_per_round"]
        verdict = ("no difference beyond this shared machine's noise" if abs(r - 1) < NOISE else
                   "8-bit weights are faster" if r > 1 else "7-bit weights are faster")
        info = report["speed_quantized"]
        same_ops = len({json.dumps(i["op_counts"], sort_keys=True) for i in info.values()}) == 1
        out.append(f"Speed: on this CPU ({', '.join(vnni) or 'no VNNI'}) the 8-bit-weight graph ran at {r:.3f}x the "
                   f"7-bit one (median of per-round ratios, middle half {ratio['per_round_p25']:.3f}-"
                   f"{ratio['per_round_p75']:.3f}; {ratio['of_medians']:.3f}x of the medians): {verdict}. "
                   + ("Both graphs have the same operators; only the weight values differ, and ONNX Runtime's MLAS picks "
                      "its u8 x s8 kernel by data type and CPU feature, never by the values' range." if same_ops else
                      "The two graphs' operator counts differ (see the JSON)."))
    load, threads = (report.get("load_average_end") or [0])[0], report["threads"]
    if load > threads:
        out.append(f"The load average at the end ({load:.1f} on {report['machine']['cpu'].get('available_cpus')} CPUs) says "
                   f"other processes shared the cores: the absolute images/s are low; the ratios, timed in interleaved "
                   f"rounds, are what to read.")
    acc = report.get("accuracy")
    if acc:
        rows = {r["graph"]: r for r in acc["rows"]}
        a, b = rows.get(_int8_name("8bit")), rows.get(_int8_name("7bit"))
        if a and b:
            closer = "8-bit" if a["cosine_mean"] > b["cosine_mean"] else "7-bit" if b["cosine_mean"] > a["cosine_mean"] else "neither"
            same = a["accuracy"] == b["accuracy"] and a["top1_agreement"] == b["top1_agreement"]
            out.append(f"Accuracy on {acc['heldout']['count']} held-out images: 8-bit weights {_pct(a['accuracy'])} (top-1 "
                       f"agreement {_pct(a['top1_agreement'])}, minimum cosine {a['cosine_min']:.5f}), 7-bit "
                       f"{_pct(b['accuracy'])} ({_pct(b['top1_agreement'])}, {b['cosine_min']:.5f}), FP32 "
                       f"{_pct(rows['fp32']['accuracy'])}"
                       + ("; the same accuracy and agreement for both ranges" if same else "")
                       + f"; {closer} is closer to FP32 by cosine (mean {a['cosine_mean']:.6f} vs {b['cosine_mean']:.6f}, "
                       f"i.e. 1 - cosine {1 - a['cosine_mean']:.1e} vs {1 - b['cosine_mean']:.1e}).")
    return out


def markdown(report: dict[str, Any]) -> str:
    cpu, versions = report["machine"]["cpu"], report["machine"]["versions"]
    lines = [f"### INT8 vs FP32 on ONNX Runtime CPU (ViT-S shape, batch {report['batch']})", "",
             f"- CPU: {cpu.get('model')}, {cpu.get('available_cpus')} CPUs; flags: {' '.join(cpu.get('flags', []))}",
             f"- onnxruntime {versions.get('onnxruntime')}, {report['threads']} threads, {report['rounds']} interleaved "
             f"rounds; load average at start / end {report['load_average_start']} / {report['load_average_end']}",
             f"- Regenerate: `{report['command']}`", "",
             "| graph | images/s | vs FP32 | median batch latency (ms) | best (ms) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['graph']} | {r['throughput']:.2f} | {r['ratio_vs_fp32']:.2f}x | {r['latency_ms_median']:.0f} | "
              f"{r['latency_ms_min']:.0f} |" for r in report["results"]]
    ratio = report.get("ratio_8bit_over_7bit")
    if ratio:
        lines += ["", f"8bit / 7bit throughput: **{ratio['median_per_round']:.3f}x** (median of per-round ratios), "
                      f"{ratio['of_medians']:.3f}x (ratio of medians)."]
    if report.get("speed_quantized"):
        lines += ["", "| weights | largest int8 weight | quantized MatMuls | ORT fusion | quantize (s) |", "|---|---:|---:|---|---:|"]
        lines += [f"| {wr} | {i['largest_int8_weight']} | {i['quantized_nodes']} | {'yes' if i['ort_fusion'].get('applied') else 'no'} "
                  f"| {i['quantize_seconds']:.0f} |" for wr, i in report["speed_quantized"].items()]
    acc = report.get("accuracy")
    if acc:
        c = acc["calibration"]
        lines += ["", f"### Accuracy on a trained model ({acc['artifacts']}, {acc['heldout']['count']} held-out images)", "",
                  f"Calibration: {c['count']} images of {c['source']} (seed {c['seed']}), tensors "
                  f"{'identical to' if c['same_as_export'] else 'NOT the same as'} the export's (SHA-256). "
                  f"Reference: the FP32 ONNX graph. Goal gates (issue 17): top-1 agreement >= 98%, accuracy drop <= 1 point.", "",
                  "| graph | accuracy | drop (points) | top-1 agreement | min cosine | mean cosine | goal gates |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {r['graph']} | {_pct(r['accuracy'])} | {100 * r['accuracy_drop']:+.1f} | {_pct(r['top1_agreement'])} | "
                  f"{r['cosine_min']:.5f} | {r['cosine_mean']:.6f} | {'pass' if r['goal_gates_passed'] else 'FAIL'} |"
                  for r in acc["rows"]]
    text = reading(report)
    if text:
        lines += ["", "### Reading", ""] + [line for t in text for line in (t, "")][:-1]
    return "\n".join(lines) + "\n"


def _check_paths(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Bad paths and option combinations fail before anything slow starts (argparse: exit 2)."""
    if a.artifacts and not (a.artifacts / "model.fp32.onnx").is_file():
        p.error(f"--artifacts {a.artifacts}: no model.fp32.onnx there")
    if a.artifacts and not a.weight_ranges and not (a.artifacts / "model.int8.cpu.onnx").is_file():
        p.error(f"--artifacts {a.artifacts}: no model.int8.cpu.onnx there (or pass --weight-ranges to quantize its FP32 graph)")
    if (a.accuracy_artifacts is None) != (a.heldout is None):
        p.error("--accuracy-artifacts and --heldout go together")
    if a.accuracy_artifacts is not None:
        if not a.weight_ranges:
            p.error("--accuracy-artifacts needs --weight-ranges (the ranges to compare)")
        if not (a.accuracy_artifacts / "manifest.json").is_file():
            p.error(f"--accuracy-artifacts {a.accuracy_artifacts}: no manifest.json there (an export's artifacts folder)")
        if not a.heldout.is_dir():
            p.error(f"--heldout {a.heldout}: no such directory")
        if a.calib_images is not None and not a.calib_images.is_dir():
            p.error(f"--calib-images {a.calib_images}: no such directory")
        source = (json.loads((a.accuracy_artifacts / "manifest.json").read_text()).get("calibration") or {}).get("source")
        if a.calib_images is None and not (source and Path(source).is_dir()):
            p.error(f"--accuracy-artifacts {a.accuracy_artifacts}: its manifest's calibration source ({source}) is not a "
                    f"folder here; pass --calib-images with the images the export calibrated on")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, help="use this export's model.fp32.onnx (and model.int8.cpu.onnx without --weight-ranges)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--with-tensorrt-qdq", action="store_true", help="also time the TensorRT-placed Q/DQ graph (FP32 HP)")
    p.add_argument("--weight-ranges", type=weight_ranges, metavar="8bit,7bit",
                   help="quantize the FP32 graph once per INT8 weight range (same calibration) and time each")
    p.add_argument("--accuracy-artifacts", type=Path, metavar="DIR", help="a trained export: accuracy of each weight range")
    p.add_argument("--heldout", type=Path, metavar="DIR", help="held-out images in class folders named as the labels")
    p.add_argument("--calib-images", type=Path, metavar="DIR",
                   help="the images the export calibrated on (default: the source its manifest records)")
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.add_argument("--markdown", type=Path, help="also write the Markdown to this file")
    a = p.parse_args(argv)
    _check_paths(p, a)
    command = shlex.join(["python", "benchmarks/int8_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    from vitmsn.core.errors import InputError

    try:
        return _run(a, command)
    except InputError as exc:
        print(f"int8_cpu.py: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("int8_cpu.py: interrupted; nothing written", file=sys.stderr)
        return 130


def _run(a: argparse.Namespace, command: str) -> int:
    from vitmsn.bench.machine import cpu_info, library_versions, load_average
    from vitmsn.runtime.manifest import write_bytes_atomic

    load_start = load_average()

    with tempfile.TemporaryDirectory(prefix="vitmsn-bench-int8-") as tmp_name:
        tmp = Path(tmp_name)
        quantized: dict[str, dict[str, Any]] = {}
        accuracy = None
        if a.accuracy_artifacts is not None:
            accuracy = accuracy_per_range(a.accuracy_artifacts, a.heldout, a.calib_images, a.weight_ranges, tmp)
        if a.artifacts and not a.weight_ranges:
            graphs = {"fp32": a.artifacts / "model.fp32.onnx", "int8 (onnxruntime cpu)": a.artifacts / "model.int8.cpu.onnx"}
        else:
            from vitmsn.export.precision.int8_cpu import cpu_int8_onnx_from_calibration

            print("exporting a ViT-S-shaped model and calibrating ..." if not a.artifacts else "calibrating ...", file=sys.stderr)
            fp32 = a.artifacts / "model.fp32.onnx" if a.artifacts else _export_vits(tmp)
            calib = _calibration(a.calib_samples, tmp)
            graphs = {"fp32": fp32}
            if a.weight_ranges:
                more, quantized = quantized_per_range(fp32, calib, a.weight_ranges, tmp, "vit-s")
                graphs.update(more)
            else:
                graphs["int8 (onnxruntime cpu)"] = tmp / "model.int8.cpu.onnx"
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

    report: dict[str, Any] = {
        "command": command, "batch": a.batch, "threads": a.threads, "rounds": a.rounds,
        "machine": {"cpu": cpu_info(), "versions": {**library_versions(), "onnxruntime": onnxruntime.__version__},
                    "platform": platform.platform()},
        "load_average_start": load_start, "load_average_end": load_average(), "load_average": (load_average() or [None])[0],
        "results": speed_rows(times, a.batch), "ratio_8bit_over_7bit": range_ratio(times),
        "speed_quantized": quantized, "accuracy": accuracy, "latencies_s": times}
    text = markdown(report)
    print("\n" + text)
    if a.markdown:
        write_bytes_atomic(a.markdown, text.encode())
    if a.json:
        write_bytes_atomic(a.json, json.dumps(report, indent=2).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
