"""``vitmsn-export``: the whole pipeline, the CI gate. A thin layer over vitmsn.export.pipeline."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import click

import vitmsn
from vitmsn.core import interrupts
from vitmsn.config import Defaults, load_defaults
from vitmsn.core.errors import InputError, ValidationFailed

from . import options
from .common import EXIT_USAGE, exit_interrupted, handle_errors


def _default_out(model: str) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name or model).strip("-") or "model"
    return Path("artifacts") / name


def _lower(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.lower() for v in value)


def _batch_range(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    try:
        with interrupts.deferred():  # spec imports the model, so torch: a signal waits until it has loaded
            from vitmsn.export.fp32.spec import BatchRange
    except KeyboardInterrupt as exc:  # inside click's parsing, which would turn it into "Aborted!", exit 1
        exit_interrupted(exc)

    try:
        return BatchRange.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _background(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int, int] | None:
    from vitmsn.runtime.images.preprocess import parse_background

    try:
        return None if value is None else parse_background(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _none_means_none(ctx: click.Context, param: click.Parameter, value: str) -> str | None:
    return None if value == "none" else value


def _split(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return tuple((value or "").split(","))


def _size(ctx: click.Context | None, param: click.Parameter | None, text: str | None) -> int | None:
    """'2G', '512M', '1048576' -> bytes (binary units)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not m:
        raise click.BadParameter(f"{text}: expected a size such as 2G, 512M or a byte count")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


# Every option of vitmsn-export, declared once: the config file reads the same list (vitmsn.cli.options).
# An option's parameter name is the field it sets: an ExportOptions field, an EngineOptions field or a gate
# (GATES); a callback turns the text into that field's value. Adding an option is one line here (and the
# field it sets); a parameter that is neither a field nor in CLI_ONLY fails tests/test_cli_export.py.
GATES = ("min_top1_agreement", "min_cosine", "max_accuracy_drop")
CLI_ONLY = ("heartbeat",)
OPTIONS = [
    click.option("--model", metavar="SRC",
                 help="Checkpoint directory, hub id (downloaded into the Hugging Face cache, or taken from it), or 'demo'. "
                      "May come from the config file."),
    click.option("--revision", metavar="REV", help="Hub ids: branch, tag or commit [default: main]; the manifest records the commit."),
    click.option("--precision", "precisions", multiple=True, metavar="P", callback=_lower,
                 help="fp32 (always exported), fp16, bf16 (OpenVINO BF16 inference of the FP32 graph, gated), int8. Repeatable."),
    click.option("--out", type=click.Path(path_type=Path), help="Artifacts directory [default: artifacts/<model name>]."),
    click.option("--calib-images", type=click.Path(path_type=Path), help="Image directory for INT8 calibration."),
    click.option("--calib-samples", type=click.IntRange(min=1), default=128, show_default=True, help="Calibration images to sample."),
    click.option("--batch", default="1:8:32", show_default=True, metavar="MIN:OPT:MAX", callback=_batch_range, help="Batch profile."),
    click.option("--parity-batch", metavar="N,N,...",
                 callback=lambda ctx, param, value: tuple(sorted(options.positive_ints(ctx, param, value))),
                 help="Batch sizes of the ONNX Runtime parity check [default: the profile's min, opt, max and an odd size "
                      "inside; a size that does not fit in memory is replaced by the largest that does, and said]."),
    click.option("--opset", type=int, default=18, show_default=True, help="ONNX opset (17-20)."),
    click.option("--engine", type=click.Choice(["auto", "require", "skip"]), default="auto", show_default=True,
                 help="Build TensorRT engines: when a builder is present (auto), always (require), never (skip)."),
    click.option("--target", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True,
                 help="Engine builder."),
    click.option("--validate-images", type=click.Path(path_type=Path),
                 help="Compare every precision with PyTorch FP32 on these images (class folders named as labels give "
                      "accuracy), then run `vitmsn validate` on the artifacts with them and the same gates: "
                      "report.html, report.md, report.json in --out; a failed gate exits 1."),
    click.option("--fail-on-drift", is_flag=True, help="Enforce the drift gates even when no images were given (synthetic inputs)."),
    click.option("--min-top1-agreement", type=options.THRESHOLD, help="Drift gate override on the 95% lower (Wilson) bound "
                 "of top-1 agreement, e.g. 0.97 or int8=0.95,fp16=0.98; inconclusive when the images cannot decide."),
    click.option("--min-cosine", type=options.THRESHOLD, help="Drift gate override on the 95% lower bound of the 5th "
                 "percentile of per-image cosines (no longer the minimum)."),
    click.option("--max-accuracy-drop", type=options.THRESHOLD, help="Drift gate override (fraction: 0.01 = 1 point)."),
    click.option("--calib-seed", type=int, default=0, show_default=True, help="Seed of the calibration sample."),
    click.option("--calib-min-images", type=click.IntRange(min=1), default=16, show_default=True,
                 help="Fewer usable calibration images than this is an error."),
    click.option("--calib-cache", type=click.Path(path_type=Path),
                 help="Calibration cache folder [default: calibration/ in the vitmsn cache; `vitmsn cache` shows it]."),
    click.option("--fp16-io", is_flag=True, help="FP16 graph inputs/outputs (default: FP32 I/O with casts inside)."),
    click.option("--int8-method", type=click.Choice(["entropy", "max"]), default="entropy", show_default=True,
                 help="INT8 activation calibration (ModelOpt 0.47 offers no percentile for INT8)."),
    click.option("--int8-exclude", multiple=True, metavar="PATTERN",
                 help="Keep out of INT8: block:N or block:N-M (encoder blocks), a module scope, or a node-name regex. Repeatable."),
    click.option("--int8-quantize-attention", is_flag=True,
                 help="Also quantize attention's Q.K^T and softmax.V MatMuls (off by default: INT8 softmax outputs lose "
                      "most attention weights; check the drift report before using it)."),
    click.option("--int8-high-precision", type=click.Choice(["auto", "fp16", "fp32"]), default="auto", show_default=True,
                 help="dtype of what INT8 leaves unquantized: auto = fp16 when an engine is built, else fp32 (ONNX Runtime CPU)."),
    click.option("--int8-max-tries", type=click.IntRange(min=0), default=3, show_default=True, metavar="N",
                 help="When the INT8 graph fails its drift gate (--min-top1-agreement, --min-cosine, --max-accuracy-drop): "
                      "rank its encoder blocks by sensitivity and re-quantize up to N times, one more of the worst blocks "
                      "kept in high precision each time, until the gate holds; the passing graph replaces model.int8.onnx "
                      "(slower than fully INT8; the manifest and report record every try). Each try is a full "
                      "calibration; 0 disables."),
    click.option("--fp32-cpu/--no-fp32-cpu", default=True, show_default=True,
                 help="Also write model.fp32.ort.onnx, the FP32 graph with ONNX Runtime's transformer fusions (checked "
                      "against model.fp32.onnx), which the runtime loads on ONNX Runtime's CPU provider."),
    click.option("--int8-cpu/--no-int8-cpu", default=True, show_default=True,
                 help="Also write model.int8.cpu.onnx, INT8 placed for ONNX Runtime on CPU."),
    click.option("--workspace", "workspace_bytes", metavar="SIZE", callback=_size,
                 help="Engine builder workspace limit, e.g. 2G, 512M."),
    click.option("--timing-cache", type=click.Path(path_type=Path), help="TensorRT timing cache file, read and updated by every build."),
    click.option("--builder-opt-level", "builder_optimization_level", type=click.IntRange(0, 5),
                 help="TensorRT builder optimization level (0-5)."),
    click.option("--hardware-compat", "hardware_compatibility", callback=_none_means_none,
                 type=click.Choice(["none", "ampere-plus", "same-compute-capability"]), default="none",
                 show_default=True, help="Engine hardware compatibility level."),
    click.option("--version-compat", "version_compatible", is_flag=True, help="Build version-compatible engines."),
    click.option("--aot-targets", metavar="SM,...", callback=_split,
                 help="TensorRT-RTX compute capabilities, e.g. sm86,sm89 [default: every SM >= 80]."),
    click.option("--alpha-background", metavar="R,G,B", callback=_background,
                 help="Composite transparent images onto this colour (models trained that way) instead of dropping alpha "
                      "as transformers.pipeline does [default: drop]. Recorded in the manifest's preprocess block."),
    click.option("--fewshot", type=click.Path(path_type=Path), metavar="DIR",
                 help="Fit a classifier head on --model's embeddings from these labelled images (one sub-folder per class, "
                      "folder name = label) and export the result; also written as a checkpoint (checkpoint/)."),
    click.option("--fewshot-labels", type=click.Path(path_type=Path), metavar="CSV",
                 help="The few-shot images as a 'path,label' CSV instead (paths relative to the CSV's folder)."),
    click.option("--skip-unreadable", is_flag=True, help="Few-shot: go on without unreadable images (listed) instead of stopping."),
    click.option("--replace-head", is_flag=True, help="Few-shot: --model already has a classifier head; fit a new one in its place."),
    click.option("--heartbeat", type=click.FloatRange(min=1), default=10.0, show_default=True, hidden=True,
                 help="Seconds of silence after which the running step is named again."),
    click.option("-v", "--verbose", is_flag=True,
                 help="Also show vitmsn's own log lines and notes (third-party output always goes to export.log)."),
]


def export_options(given: dict[str, Any]) -> Any:
    """The pipeline's ExportOptions from the parsed options (parameter name = field name; see OPTIONS)."""
    from dataclasses import fields

    from vitmsn.export.engines.builder import EngineOptions
    from vitmsn.export.pipeline import ExportOptions
    from vitmsn.export.validation.gates import Gates

    values = {k: v for k, v in given.items() if k not in CLI_ONLY}
    gates = Gates.build(**{k: values.pop(k) for k in GATES})
    ours = {f.name for f in fields(ExportOptions)}
    engine = {k: values.pop(k) for k in list(values) if k in {f.name for f in fields(EngineOptions)} - ours}
    values["out"] = values["out"] or _default_out(values["model"])
    ctx = click.get_current_context(silent=True)  # its obj: the config file read, if any (never inside --out)
    return ExportOptions(**values, gates=gates, engine_options=EngineOptions(**engine), config_file=ctx.obj if ctx else None)


@click.command("vitmsn-export", context_settings={"help_option_names": ["-h", "--help"]})
@options.apply(OPTIONS)
@click.version_option(vitmsn.__version__, "-V", "--version", prog_name="vitmsn-export")
@handle_errors
def command(**given: Any) -> None:
    """Export a ViTMSN checkpoint to ONNX (FP32 reference, FP16, INT8) and TensorRT engines, and validate them.

    Exit codes: 0 success; 1 artifacts written but a check or drift gate failed or was inconclusive; 2 bad usage or input.
    """
    from vitmsn.core.progress import console, say

    say(f"vitmsn-export {vitmsn.__version__}: starting (loading PyTorch and ONNX tooling)")
    _our_log_lines(given["verbose"])
    if not given["model"]:
        raise click.UsageError("--model is required (or set model = \"...\" under [tool.vitmsn] in pyproject.toml or in "
                               "vitmsn.toml, in this directory or one above it)")
    try:
        with interrupts.deferred():  # torch and the other C++ extensions: see vitmsn.core.interrupts
            from vitmsn.core.progress import Heartbeat
            from vitmsn.export.pipeline import run_export
    except ModuleNotFoundError as exc:
        from .extras import exit_with_hint

        exit_with_hint(exc.name or str(exc), "'vitmsn-export'")

    try:
        options = export_options(given)
        say(f"vitmsn-export: {options.model} -> {options.out} ({', '.join(options.precisions)})")
        with Heartbeat(given["heartbeat"]):
            result = run_export(options)
    except ValidationFailed:  # the whole stage table first; handle_errors then says FAILED and exits 1
        _summary(console().stages or [], [])
        raise
    _summary(result.stages, result.notes)
    say(f"passed in {console().elapsed():.1f}s; wrote {result.out / 'manifest.json'} (third-party output: "
        f"{result.out / 'export.log'})")


def _summary(stages: list, notes: list[str]) -> None:
    """The whole stage table, passed or failed, then the notes."""
    from vitmsn.core.progress import say, stage_table

    if stages:
        say(stage_table(stages))
    for note in notes:
        say(f"  note: {note}")


class _ConsoleHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from vitmsn.core.progress import say

        say(f"{record.levelname.lower()}: {record.name}: {record.getMessage()}")


def _our_log_lines(verbose: bool) -> None:
    """vitmsn's own log lines on the console, once (INFO with -v, else warnings); third-party loggers go to export.log."""
    ours = logging.getLogger("vitmsn")
    if not any(isinstance(h, _ConsoleHandler) for h in ours.handlers):
        ours.addHandler(_ConsoleHandler())
    for h in ours.handlers:
        if isinstance(h, _ConsoleHandler):
            h.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.setLevel(logging.INFO if verbose else logging.WARNING)


def main() -> None:
    interrupts.install()  # first: SIGINT/SIGTERM exit 130/143 from here on, imports included
    try:
        params = {"": options.config_keys(command)}
        defaults = Defaults()
        if not {"-h", "--help", "-V", "--version"} & set(sys.argv[1:]):
            try:
                defaults = load_defaults(Path.cwd(), params)
            except InputError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(EXIT_USAGE)
        if defaults.path is not None:
            click.echo(defaults.describe(), err=True)
        command.main(prog_name="vitmsn-export", default_map=defaults.values, obj=defaults.path)
    except KeyboardInterrupt as exc:  # outside the command (option parsing, config file)
        exit_interrupted(exc)
