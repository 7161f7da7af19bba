"""Does Polygraphy's ONNX constant folding / sanitizing before an engine build help? (issue 15)

Measures, for the demo graph and a ViT-S-shaped graph (random weights; the shape is what matters),
the FP32 ONNX as vitmsn exports it against the same graph after ``polygraphy surgeon sanitize
--fold-constants`` (its Python API: ``fold_constants`` + graph cleanup): node count, op histogram
changes, the TensorRT-RTX build time (real ahead-of-time builds for SM86 on this CPU, interleaved,
``--rounds`` each) and the parser/builder warnings logged. Prints one Markdown table.

    .venv/bin/python benchmarks/polygraphy_sanitize.py [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from vits import vits_checkpoint


def _export(model: str, out: Path) -> Path:
    from vitmsn.export.pipeline import ExportOptions, run_export

    run_export(ExportOptions(model=model, out=out, engine="skip", fp32_cpu=False))
    return out / "model.fp32.onnx"


def _sanitized(src: Path, dst: Path) -> float:
    import onnx
    from polygraphy.backend.onnx import fold_constants

    started = time.perf_counter()
    model = fold_constants(onnx.load(str(src)), partitioning="recursive")
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    onnx.save(gs.export_onnx(graph), str(dst))
    return time.perf_counter() - started


def _ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


class _Count(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _build(onnx_path: Path, plan: Path) -> tuple[float, int, list[str]]:
    from vitmsn.export.engines.builder import EngineOptions, engine_from_onnx
    from vitmsn.export.fp32.spec import BatchRange
    import onnx

    dims = [d.dim_value for d in onnx.load(str(onnx_path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim]
    counter = _Count()
    logging.getLogger("vitmsn.export.engines.builder").addHandler(counter)
    try:
        r = engine_from_onnx(onnx_path, plan, precision="fp32", input_name="pixel_values", input_chw=tuple(dims[1:]),
                             options=EngineOptions(target="tensorrt-rtx", batch=BatchRange(1, 8, 32), progress=False,
                                                   aot_targets=("sm86",)))
    finally:
        logging.getLogger("vitmsn.export.engines.builder").removeHandler(counter)
    return r.build_seconds, plan.stat().st_size, counter.messages


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        graphs = {"demo": _export("demo", root / "demo"), "vit-s": _export(str(vits_checkpoint(root / "vits")), root / "vits-art")}
        for name, path in graphs.items():
            folded = path.with_name("model.fp32.sanitized.onnx")
            fold_s = _sanitized(path, folded)
            before, after = _ops(path), _ops(folded)
            times: dict[str, list[float]] = {"exported": [], "sanitized": []}
            warnings: dict[str, list[str]] = {}
            sizes: dict[str, int] = {}
            for _ in range(args.rounds):  # interleaved: the machine's noise hits both alike
                for variant, src in (("exported", path), ("sanitized", folded)):
                    sys.stderr.write(f"building {name} {variant}\n")
                    seconds, size, msgs = _build(src, root / f"{name}.{variant}.plan")
                    times[variant].append(seconds)
                    warnings[variant], sizes[variant] = msgs, size
            diff = {op: after[op] - before[op] for op in set(before) | set(after) if after[op] != before[op]}
            rows.append({"graph": name, "nodes_exported": sum(before.values()), "nodes_sanitized": sum(after.values()),
                         "op_changes": diff, "fold_seconds": round(fold_s, 2),
                         "build_seconds": {k: [round(v, 2) for v in vs] for k, vs in times.items()},
                         "warnings": {k: len(v) for k, v in warnings.items()},
                         "warning_samples": {k: v[:3] for k, v in warnings.items()}, "plan_bytes": sizes})
    print("| graph | nodes exported | nodes sanitized | op changes | fold s | build s exported | build s sanitized "
          "| warnings exported | warnings sanitized | plan bytes exported / sanitized |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = r["build_seconds"]
        print(f"| {r['graph']} | {r['nodes_exported']} | {r['nodes_sanitized']} | {r['op_changes'] or 'none'} | "
              f"{r['fold_seconds']} | {b['exported']} | {b['sanitized']} | {r['warnings']['exported']} | "
              f"{r['warnings']['sanitized']} | {r['plan_bytes']['exported']} / {r['plan_bytes']['sanitized']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
