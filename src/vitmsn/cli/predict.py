"""`vitmsn predict ARTIFACTS IMAGE...`: top-k labels per image, as a table or as JSON.

A thin shell over :class:`vitmsn.runtime.Predictor` (STYLE.md #8). An image that cannot be read
gets its own error entry; the others are still predicted; the exit code is then 2 (CONTRACT.md).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from vitmsn.cli.common import EXIT_USAGE, handle_errors


def _entries(inputs: tuple[str, ...], results: list[Any]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for given, result in zip(inputs, results):
        if isinstance(result, Exception):
            entries.append({"input": given, "error": str(result)})
        else:
            entries.append({"input": given, "predictions": [p.to_dict() for p in result]})
    return entries


def format_table(entries: list[dict[str, Any]]) -> str:
    """One block per input: its path, then rank, label and score per prediction."""
    rows: list[tuple[str, str, str, str]] = []
    for entry in entries:
        if "error" in entry:
            rows.append((entry["input"], "-", "error", entry["error"]))
            continue
        for rank, p in enumerate(entry["predictions"], 1):
            rows.append((entry["input"] if rank == 1 else "", str(rank), p["label"], f"{p['score']:.4f}"))
    header = ("image", "#", "label", "score")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[3]]
    lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[3] for r in rows]
    return "\n".join(lines)


def _read_stdin_if_dash(images: tuple[str, ...]) -> list[Any]:
    data = None
    out: list[Any] = []
    for image in images:
        if image == "-":
            data = sys.stdin.buffer.read() if data is None else data
            out.append(data)
        else:
            out.append(image)
    return out


@click.command("predict")
@click.argument("artifacts", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "openvino"]), default="auto", show_default=True,
              help="auto: a TensorRT engine when one can run here, else OpenVINO on an x86 CPU where installed, else ONNX Runtime.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]), default="auto", show_default=True,
              help="auto: fp32 on CPU (bf16 on OpenVINO when exported, gated and the CPU has BF16), the fastest exported precision on a GPU.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, one object per input, in input order.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per inference call (default: the manifest's opt batch).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op / OpenVINO inference threads (default: all cores).")
@click.option("--draft", is_flag=True, help="Faster, inexact JPEG decoding (libjpeg DCT scaling to at least the model's input size): about 35% less preprocessing time, pixels no longer match transformers to 1e-5 (see README, measured speed).")
@handle_errors
def command(artifacts: str, images: tuple[str, ...], backend: str, precision: str, top_k: int, as_json: bool,
            batch_size: int | None, threads: int | None, draft: bool) -> None:
    """Top-k labels for IMAGE... (paths; '-' reads one image from stdin) from the exported ARTIFACTS."""
    from vitmsn.runtime import Predictor

    with Predictor.from_artifacts(artifacts, backend=backend, precision=None if precision == "auto" else precision,
                                  batch_size=batch_size, threads=threads, draft=draft) as predictor:
        for note in predictor.choice.notes:
            click.echo(f"note: {note}", err=True)
        if not as_json:
            click.echo(f"{predictor.describe()}", err=True)
        results = predictor.predict(_read_stdin_if_dash(images), top_k=top_k, errors="return")
    entries = _entries(images, results)
    click.echo(json.dumps(entries, indent=2) if as_json else format_table(entries))
    failed = sum("error" in e for e in entries)
    if failed:
        click.echo(f"error: {failed} of {len(entries)} input(s) could not be read", err=True)
        sys.exit(EXIT_USAGE)
