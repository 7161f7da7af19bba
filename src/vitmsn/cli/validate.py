"""``vitmsn validate``: the accuracy-drift report, a thin layer over vitmsn.export.validation.validate.

Exit codes: the written report's verdict. 0 when report.json says ``passed: true``; 1 when it says
false: a drift gate failed (the message names the metric, the precision and the value), or a stage
of the export report it was merged into failed (named too); the reports are written either way.
2 bad usage or input (nothing is written).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from .common import artifacts_argument, handle_errors, need_artifacts
from .options import THRESHOLD




@click.command("validate", context_settings={"help_option_names": ["-h", "--help"]})
@artifacts_argument()
@click.option("--images", type=click.Path(path_type=Path), help="Image folder (class sub-folders named as the labels give accuracy).")
@click.option("--labels", type=click.Path(path_type=Path), help="CSV of path,label when the folder has no class sub-folders.")
@click.option("--precision", "precisions", multiple=True, metavar="P", help="Only these precisions (repeatable) [default: all].")
@click.option("--backend", type=click.Choice(["all", "auto", "onnxruntime", "tensorrt", "openvino"]), default="all", show_default=True,
              help="Which backends to compare (TensorRT engines only where they can run).")
@click.option("--min-top1-agreement", type=THRESHOLD, help="Gate: the 95% lower (Wilson) bound of the share of images with the "
              "reference's top-1 [default per precision].")
@click.option("--min-cosine", type=THRESHOLD, help="Gate: the 95% lower bound of the 5th percentile of per-image cosine similarity "
              "(no longer the minimum) [default per precision].")
@click.option("--max-accuracy-drop", type=THRESHOLD, help="Gate: the 95% upper (paired) bound of the accuracy lost vs the "
              "reference, e.g. 0.01 [needs labels].")
@click.option("--out", type=click.Path(path_type=Path), help="Report directory [default: ARTIFACTS].")
@click.option("--checkpoint", help="The reference checkpoint, when it is no longer where the manifest says.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per inference call [default: the manifest's opt batch].")
@click.option("--sensitivity", is_flag=True, help="Also rank the INT8 graph's encoder blocks by the drift each causes.")
@click.option("--calib-images", type=click.Path(path_type=Path), help="Images for --sensitivity [default: --images].")
@click.option("--calib-samples", type=click.IntRange(min=1), default=32, show_default=True, help="Images for --sensitivity.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@handle_errors
def command(artifacts: Path | None, images: Path | None, labels: Path | None, precisions: tuple[str, ...], backend: str,
            min_top1_agreement: Any, min_cosine: Any, max_accuracy_drop: Any, out: Path | None, checkpoint: str | None,
            batch_size: int | None, sensitivity: bool, calib_images: Path | None, calib_samples: int, quiet: bool) -> None:
    """Accuracy drift of every precision and backend in ARTIFACTS against the PyTorch FP32 reference.

    Writes report.json, report.md and report.html and records each verdict in ARTIFACTS/manifest.json.
    Every gate is decided on a one-sided 95% confidence bound: passed, failed, or inconclusive when the
    images cannot decide (the message says how many would). Exit 1 when anything that ships is failed or
    inconclusive (this run's precisions and those kept from earlier runs), 2 on bad input.
    --min-top1-agreement, --min-cosine and --max-accuracy-drop take X (every precision) or
    int8=X,fp16=Y; the defaults (why: vitmsn.export.validation.gates):

    \b
    {defaults}
    """
    artifacts = need_artifacts(artifacts)
    from vitmsn.core.errors import InputError, ValidationFailed
    from vitmsn.core.interrupts import deferred, import_deferred

    with deferred():  # torch and the other C++ extensions: see vitmsn.core.interrupts
        from vitmsn.export.validation.gates import Gates
        from vitmsn.export.validation.drift_report import read_previous, write_drift_reports
        from vitmsn.export.validation.validate import validate_artifacts
    import_deferred(("torch", "onnxruntime"))

    if images is None:
        raise InputError("--images DIR is required (or set images = \"...\" under [tool.vitmsn.validate])")
    if isinstance(precisions, str):  # a config-file string instead of a list
        precisions = (precisions,)
    gates = Gates.build(min_top1_agreement=min_top1_agreement, min_cosine=min_cosine, max_accuracy_drop=max_accuracy_drop)
    click.get_current_context().call_on_close(_hold_artifacts(artifacts, out or artifacts))
    result = validate_artifacts(artifacts, images, labels, gates, precisions=precisions or None, backend=backend,
                                checkpoint=checkpoint, batch_size=batch_size, progress=not quiet)
    if sensitivity:
        from vitmsn.export.precision.sensitivity import sensitivity_for_artifacts

        result.extra["sensitivity"] = sensitivity_for_artifacts(artifacts, calib_images or images, samples=calib_samples,
                                                                progress=not quiet).to_dict()
    target = out or artifacts
    in_place = Path(target).resolve() == Path(artifacts).resolve()
    with deferred():  # report.json, .md and .html are written together or not at all
        from vitmsn.export.validation.recording import check_unchanged, records_from_validation, with_verdicts
        from vitmsn.runtime.manifest import Manifest

        records = records_from_validation(result, report="report.json" if in_place else str(Path(target) / "report.json"))
        now = Manifest.load(artifacts)
        check_unchanged(now, records)  # the directory still ships what ran, under the content it read
        updated = with_verdicts(now, records)
        names = write_drift_reports(target, result, verdicts=updated)
        if in_place:  # the reports are artifacts: record their SHA-256, and the verdicts in the one place
            updated.with_reports(names).save()
    for r in result.results:
        m = r.metrics
        figures = [f"top-1 agreement {m['top1_agreement']:.4f}" if "top1_agreement" in m else "",
                   f"cosine p5 {m['cosine_p5']:.6f}" if m.get("cosine_p5") is not None else "cosine n/a",
                   f"accuracy {m['accuracy']:.4f} (reference {m['accuracy_reference']:.4f})" if m.get("accuracy") is not None else ""]
        word = {"passed": "ok", "failed": "FAIL", "inconclusive": "INCONCLUSIVE"}[r.verdict]
        click.echo(f"[{word}] {r.name}: " + ", ".join(f for f in figures if f))
    if "sensitivity" in result.extra:
        worst = ", ".join(f"{g['group']} ({g['score']:.3g})" for g in result.extra["sensitivity"]["ranking"][:3])
        click.echo(f"int8 sensitivity, worst first: {worst}")
    for s in result.skipped_images:
        click.echo(f"skipped {s['image']}: {s['reason']}", err=True)
    click.echo(f"wrote {target / 'report.json'}, report.md, report.html")
    # The exit code is the verdict over everything that ships: this run's results, the verdicts kept from earlier
    # runs on the precisions it did not cover, and the stages of an export report it was merged into.
    report = read_previous(target) or {}
    word = str(report.get("verdict") or updated.verdict or result.verdict)
    if word != "passed":
        ours = {rec.key for rec in records}
        earlier = [f"{v.name}: {v.verdict} by an earlier {v.by} ({v.reason()})" for v in updated.verdicts
                   if v.key not in ours and v.verdict != "passed"]
        failures = result.failures() + earlier + [f"export stage {s.get('stage')} failed: {s.get('detail')}"
                                                  for s in report.get("stages") or [] if not s.get("passed", False)
                                                  and not str(s.get("stage")).startswith(("drift_", "requantize_"))]
        raise ValidationFailed("; ".join(failures or [f"the report says {word}"]) + f" (see {target / 'report.md'})",
                               word)

def _hold_artifacts(artifacts: Path, target: Path) -> Callable[[], None]:
    """Before any work: take the export's lock on ARTIFACTS (``.<name>.lock`` beside it,
    :class:`vitmsn.export.staging.OutputLock`) until the command ends (the returned release), then refuse a report
    directory this process cannot write (exit 2, one line). An export running on ARTIFACTS makes this exit 2 naming
    it; an export started meanwhile exits 2 naming this validate; neither waits. So no report of the old graphs
    lands in a re-exported directory."""
    import os

    from vitmsn.core.errors import InputError
    from vitmsn.export.staging import OutputLock, check_writable

    writes_artifacts = Path(target).resolve() == Path(artifacts).resolve()
    lock = OutputLock(Path(os.path.realpath(artifacts)), holder="vitmsn validate", option="ARTIFACTS")
    release: Callable[[], None] = lock.release
    try:
        lock.acquire()
    except OSError as exc:
        if writes_artifacts:
            raise InputError(f"ARTIFACTS {artifacts}: cannot create its lock {lock.path} ({exc.strerror or exc}); "
                             "make the folder above it writable, or write the reports elsewhere with --out DIR") from None
        release = lambda: None  # noqa: E731  a read-only artifacts store, reports to --out: nothing here changes
    try:  # under the lock, so an export checking the directory for unnamed files never sees the probe file
        check_writable(Path(target), "ARTIFACTS" if writes_artifacts else "--out",
                       "make it writable, or write the reports elsewhere with --out DIR")
    except BaseException:
        release()
        raise
    return release


def _defaults_help() -> str:
    from vitmsn.export.validation.gates import DEFAULT_THRESHOLDS

    return "\n    ".join(f"{p}: top-1 agreement >= {t.min_top1_agreement:g}, cosine >= {t.min_cosine:g}, "
                          f"accuracy drop <= {t.max_accuracy_drop:g}" for p, t in DEFAULT_THRESHOLDS.items())


command.help = (command.help or "").replace("{defaults}", _defaults_help())
