"""``vitmsn triton ARTIFACTS --repo DIR``: a Triton Inference Server model repository.

A thin layer over :mod:`vitmsn.serving.triton` (writing) and :mod:`vitmsn.serving.triton_check`
(verification against Triton's own config schema and the models' real I/O).
"""

from __future__ import annotations

from pathlib import Path

import click

from vitmsn.core.errors import ValidationFailed

from .common import artifacts_argument, handle_errors, need_artifacts
from .options import positive_ints


@click.command("triton")
@artifacts_argument()
@click.option("--repo", required=True, type=click.Path(path_type=Path), help="Model repository directory to write into.")
@click.option("--name", default="vitmsn", show_default=True,
              help="Model name: the ensemble; <name>_onnx, <name>_tensorrt, <name>_python, <name>_preprocess for the parts.")
@click.option("--precision", default="fp32", show_default=True, help="Which exported precision to serve.")
@click.option("--format", "formats", multiple=True, type=click.Choice(["onnx", "plan", "python"]),
              help="Inference models to write: onnx (Triton's onnxruntime backend), plan (TensorRT), python "
                   "(vitmsn's runtime in Triton's Python backend) [default: onnx, plus the plan when the artifacts "
                   "have a TensorRT engine]. Repeatable.")
@click.option("--inference", type=click.Choice(["onnx", "plan", "python"]),
              help="The inference model the ensemble runs (also written) [default: plan, else onnx].")
@click.option("--engine", "engine_file", metavar="FILE", help="The engine file to use when several match the precision.")
@click.option("--max-batch", type=int, help="max_batch_size [default: the engine profile's max, or the exported batch max].")
@click.option("--preferred-batch", callback=positive_ints, metavar="N,N",
              help="dynamic_batching preferred_batch_size [default: the profile's opt and max].")
@click.option("--queue-delay-us", type=int, default=500, show_default=True, help="dynamic_batching max_queue_delay_microseconds.")
@click.option("--instances", type=int, default=1, show_default=True, help="instance_group count per model.")
@click.option("--onnx-device", type=click.Choice(["cpu", "gpu"]), default="cpu", show_default=True,
              help="instance_group kind of the ONNX model (a plan always runs on the GPU).")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Also write the Python-backend preprocessing model and the ensemble that takes encoded images.")
@click.option("--python-env", metavar="PATH",
              help="EXECUTION_ENV_PATH of the Python-backend models: a venv directory or conda-pack archive on the "
                   "Triton server holding vitmsn's runtime (checked here when it exists here).")
@click.option("--python-threads", type=int, help="ONNX Runtime intra-op threads per Python inference instance.")
@click.option("--allow-failed-gates", is_flag=True,
              help="Package a precision even though a validation or drift gate failed at export.")
@click.option("--force", is_flag=True, help="Replace model directories of the same names.")
@handle_errors
def command(artifacts: Path | None, repo: Path, name: str, precision: str, formats: tuple[str, ...], engine_file: str | None,
            max_batch: int | None, preferred_batch: tuple[int, ...], queue_delay_us: int, instances: int,
            onnx_device: str, ensemble: bool, force: bool, inference: str | None, python_env: str | None,
            python_threads: int | None, allow_failed_gates: bool) -> None:
    """Write a Triton model repository for ARTIFACTS and verify it against Triton's config schema.

    Exit codes: 0 written and verified (or verification unavailable, said on stderr); 1 written but
    verification failed; 2 bad usage or input, or a precision whose export gates failed (unless
    --allow-failed-gates).
    """
    artifacts = need_artifacts(artifacts)
    from vitmsn.core.interrupts import deferred

    with deferred():  # see vitmsn.core.interrupts
        from vitmsn.serving.triton import TritonOptions, write_triton_repository
        from vitmsn.serving.triton_check import check_repository, missing_packages

    options = TritonOptions(name=name, precision=precision.lower(), formats=formats, engine_file=engine_file,
                            max_batch_size=max_batch, preferred_batch_sizes=preferred_batch,
                            max_queue_delay_us=queue_delay_us, instances=instances, onnx_device=onnx_device,
                            ensemble=ensemble, force=force, inference=inference, python_env=python_env,
                            python_threads=python_threads, allow_failed_gates=allow_failed_gates)
    result = write_triton_repository(artifacts, repo, options)
    for model in result.models:
        config = model.config
        what = config.get("platform") or f"{config.get('backend')} backend"
        click.echo(f"wrote {model.directory}  ({what}, max_batch_size {config['max_batch_size']})")
    for note in result.notes:
        click.echo(f"  note: {note}", err=True)
    for warning in result.warnings:
        click.echo(f"  warning: {warning}", err=True)

    missing = missing_packages()
    if missing:
        click.echo(f"  not verified against Triton's schema: install {' and '.join(missing)} to check", err=True)
    else:
        check = check_repository(repo, artifacts, [m.name for m in result.models])
        for line in check.checked:
            click.echo(f"  [ok] {line}")
        if not check.passed:
            raise ValidationFailed(f"{repo}: written, but the check failed: " + "; ".join(check.problems))
    entry = result.models[-1].name
    python_models = [m.name for m in result.models if m.config.get("backend") == "python"]
    needs = (f"; its Python environment (EXECUTION_ENV_PATH, --python-env) needs vitmsn's runtime and Pillow for "
             f"{', '.join(python_models)}" if python_models else "")
    click.echo(f"start Triton with: tritonserver --model-repository {Path(repo).resolve()}  (query model {entry!r}){needs}")

