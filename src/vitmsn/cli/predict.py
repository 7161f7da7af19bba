"""`vitmsn predict ARTIFACTS IMAGE...`: top-k labels per image, as a table or as JSON.

A thin shell over :class:`vitmsn.runtime.Predictor`. An image that cannot be read
gets its own error entry; the others are still predicted; the exit code is then 2.
Every input is read with a cap (``--max-image-bytes``; stdin ``-`` included) and decoded only
within a byte budget computed from its header (``--max-decode-mb``), so ``/dev/zero`` or a
sparse 5 GB file fails alone, in bounded memory.
A directory among the images stands for its image files (recursive, sorted by relative path).
ARTIFACTS may be left out when the config file's ``out`` names it (the first argument is taken
as ARTIFACTS when it holds a manifest.json, or when no config names one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from vitmsn.runtime.images.read import DEFAULT_MAX_DECODE_BYTES, DEFAULT_MAX_FILE_BYTES
from vitmsn.cli.common import EXIT_USAGE, handle_errors, need_artifacts, choice_notes


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


def _read_stdin_if_dash(images: tuple[str, ...], limit: int) -> list[Any]:
    """The inputs with ``-`` replaced by stdin's bytes (read once, at most ``limit``), or by the
    ImageError saying why stdin could not be used."""
    from vitmsn.runtime.images.read import ImageError, read_capped

    data: Any = None
    out: list[Any] = []
    for image in images:
        if image == "-":
            if data is None:
                try:
                    data = read_capped(sys.stdin.buffer, "- (stdin)", limit)
                except ImageError as exc:
                    data = exc
            out.append(data)
        else:
            out.append(image)
    return out


def _predict_readable(predictor: Any, inputs: list[Any], top_k: int) -> list[Any]:
    """predict() over the inputs that are not already an error, results back in input order."""
    readable = [i for i, x in enumerate(inputs) if not isinstance(x, Exception)]
    results: list[Any] = list(inputs)
    if readable:
        found = predictor.predict([inputs[i] for i in readable], top_k=top_k, errors="return")
        for i, r in zip(readable, found):
            results[i] = r
    return results


def split_arguments(paths: tuple[str, ...], artifacts: str | None) -> tuple[Path, tuple[str, ...]]:
    """(ARTIFACTS, IMAGE...) from the positional arguments and the --artifacts/config default."""
    if paths and (artifacts is None or (Path(paths[0]) / "manifest.json").is_file()):
        return Path(paths[0]), paths[1:]
    return need_artifacts(artifacts), paths


def expand_directories(images: tuple[str, ...]) -> tuple[str, ...]:
    """Each directory replaced by its image files (recursive, sorted); an empty one is an error."""
    from vitmsn.calibration.images import IMAGE_EXTENSIONS, discover_images
    from vitmsn.core.errors import InputError

    out: list[str] = []
    for image in images:
        if image != "-" and os.path.isdir(image):
            found = discover_images(image)
            if not found:
                raise InputError(f"{image}: a directory with no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out += [str(f) for f in found]
        else:
            out.append(image)
    return tuple(out)


@click.command("predict")
@click.argument("paths", nargs=-1, required=True, metavar="[ARTIFACTS] IMAGE...")
@click.option("--artifacts", type=click.Path(file_okay=False),
              help="The artifacts directory [default: the first argument, else `out` of the config file].")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "openvino"]), default="auto", show_default=True,
              help="auto: a TensorRT engine when one can run here, else OpenVINO on an x86 CPU where installed, else ONNX Runtime.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16", "int8"]), default="auto", show_default=True,
              help="auto: fp32 on CPU (bf16 on OpenVINO when exported, gated and the CPU has BF16), the fastest exported precision on a GPU.")
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list, one object per input, in input order.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Images per inference call (default: the manifest's opt batch).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="ONNX Runtime intra-op / OpenVINO inference threads (default: all cores).")
@click.option("--draft", is_flag=True, help="Faster, inexact JPEG decoding (libjpeg DCT scaling to at least the model's input size): about 35% less preprocessing time, pixels no longer match transformers to 1e-5 (see README, measured speed).")
@click.option("--max-image-bytes", type=click.IntRange(min=1), default=DEFAULT_MAX_FILE_BYTES, show_default=True,
              help="Largest encoded image read from a file or stdin (an input over it fails alone).")
@click.option("--max-decode-mb", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_MAX_DECODE_BYTES / 2**20,
              show_default=True, help="Decode budget per image in MiB: width x height x bands x bytes per sample, "
              "read from the header, refused above it (a 124 KB 8000x8000 16-bit PNG needs 122).")
@click.option("-v", "--verbose", is_flag=True, help="Also print the notes on what was not used and why (engines, flavours).")
@handle_errors
def command(paths: tuple[str, ...], artifacts: str | None, backend: str, precision: str, top_k: int, as_json: bool,
            batch_size: int | None, threads: int | None, draft: bool, max_image_bytes: int, max_decode_mb: float,
            verbose: bool) -> None:
    """Top-k labels for IMAGE... (files, directories of images; '-' reads one image from stdin) from the exported
    ARTIFACTS."""
    from vitmsn.core.errors import InputError
    from vitmsn.runtime import Predictor

    artifacts_dir, given = split_arguments(paths, artifacts)
    if not given and not (artifacts_dir / "manifest.json").is_file():
        raise InputError(f"{artifacts_dir}: not an artifacts directory (no manifest.json); usage: vitmsn predict "
                         "ARTIFACTS IMAGE... (ARTIFACTS: the directory vitmsn-export wrote)")
    if not given:
        raise InputError("no IMAGE given: pass image files or directories after ARTIFACTS")
    images = expand_directories(given)

    with Predictor.from_artifacts(artifacts_dir, backend=backend, precision=None if precision == "auto" else precision,
                                  batch_size=batch_size, threads=threads, draft=draft) as predictor:
        for note in choice_notes(predictor.choice, verbose, backend != "auto" or precision != "auto"):
            click.echo(f"note: {note}", err=True)
        if not as_json:
            click.echo(f"running: {predictor.describe()}", err=True)
        predictor.preprocess = dataclasses.replace(predictor.preprocess, max_file_bytes=max_image_bytes,
                                                   max_decode_bytes=int(max_decode_mb * 2**20))
        results = _predict_readable(predictor, _read_stdin_if_dash(images, max_image_bytes), top_k)
    entries = _entries(images, results)
    click.echo(json.dumps(entries, indent=2) if as_json else format_table(entries))
    failed = sum("error" in e for e in entries)
    if failed:
        click.echo(f"error: {failed} of {len(entries)} input(s) could not be read", err=True)
        sys.exit(EXIT_USAGE)
