"""``vitmsn-export``: the whole pipeline, the CI gate. A thin layer over vitmsn.export.pipeline."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import click

from vitmsn.config import default_map
from vitmsn.errors import InputError

from .common import EXIT_FAILED_GATE, EXIT_USAGE


def _default_out(model: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name or model).strip("-") or "model"
    return Path("artifacts") / name


@click.command("vitmsn-export", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model", metavar="SRC",
              help="Checkpoint directory, hub id (from the local HF cache), or 'demo'. May come from the config file.")
@click.option("--precision", "precision", multiple=True, metavar="P",
              help="fp32 (always exported), fp16, int8. Repeatable.")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Artifacts directory [default: artifacts/<model name>].")
@click.option("--calib-images", type=click.Path(path_type=Path), help="Image directory for INT8 calibration.")
@click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True, help="Calibration images to sample.")
@click.option("--batch", "batch", default="1:8:32", show_default=True, metavar="MIN:OPT:MAX", help="Batch profile.")
@click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17-20).")
@click.option("--engine", type=click.Choice(["auto", "require", "skip"]), default="auto", show_default=True,
              help="Build TensorRT engines: when a builder is present (auto), always (require), never (skip).")
@click.option("--target", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True,
              help="Engine builder.")
@click.option("--validate-images", type=click.Path(path_type=Path), help="Run the drift validation on these images after export.")
@click.option("--fail-on-drift", is_flag=True, help="A failed drift gate fails the export (exit 1).")
@click.option("-v", "--verbose", is_flag=True, help="Log every step.")
def command(model: str | None, precision: tuple[str, ...], out: Path | None, calib_images: Path | None,
            calib_samples: int, batch: str, opset: int, engine: str, target: str, validate_images: Path | None,
            fail_on_drift: bool, verbose: bool) -> None:
    """Export a ViTMSN checkpoint to ONNX (FP32 reference, FP16, INT8) and TensorRT engines, and validate them.

    Exit codes: 0 success; 1 artifacts written but a check or drift gate failed; 2 bad usage or input.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not model:
        raise click.UsageError("--model is required (or set model = \"...\" under [tool.vitmsn] in pyproject.toml or in vitmsn.toml)")
    if isinstance(precision, str):  # a config-file string instead of a list
        precision = (precision,)
    from vitmsn.export.spec import BatchRange

    try:
        batch_range = BatchRange.parse(batch)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--batch") from None

    from vitmsn.errors import ValidationFailed
    from vitmsn.export.pipeline import ExportOptions, run_export

    try:
        options = ExportOptions(
            model=model, out=out or _default_out(model), precisions=tuple(p.lower() for p in precision) or ("fp32",),
            batch=batch_range, opset=opset, engine=engine, target=target, calib_images=calib_images,
            calib_samples=calib_samples, validate_images=validate_images, fail_on_drift=fail_on_drift,
        )
        click.echo(f"vitmsn-export: {options.model} -> {options.out} ({', '.join(options.precisions)})", err=True)
        result = run_export(options)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except ValidationFailed as exc:
        click.echo(f"FAILED: {exc}", err=True)
        sys.exit(EXIT_FAILED_GATE)
    for stage in result.stages:
        click.echo(f"  [{'ok' if stage.passed else 'FAIL'}] {stage.stage}: {stage.detail}", err=True)
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
    click.echo(f"wrote {result.out / 'manifest.json'}", err=True)


def main() -> None:
    params = {"": {p.name for p in command.params if p.name}}
    try:
        defaults = default_map(Path.cwd(), params)
    except InputError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    command.main(prog_name="vitmsn-export", default_map=defaults)
