"""``vitmsn inspect ARTIFACTS``: the manifest, readably (or as JSON); ``--verify`` checks every file it names."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vitmsn.errors import InputError
from vitmsn.runtime.manifest import FileRef, Manifest, TensorSpec

from .common import artifacts_argument, handle_errors, need_artifacts


def _shape(t: TensorSpec) -> str:
    return f"{t.name}: {t.dtype}[{', '.join(str(d) for d in t.shape)}]"


def _size(ref: FileRef) -> str:
    return f"{ref.size_bytes / 1e6:.1f} MB" if ref.size_bytes is not None else "size ?"


def describe_manifest(m: Manifest) -> str:
    model, pre, cfg = m.model, m.preprocess, m.model.config
    lines = [
        f"artifacts  {m.root}",
        f"model      {model.source} ({model.task}, {model.architecture or '?'})",
        f"           hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads, "
        f"mlp {cfg['intermediate_size']}, image {cfg['image_size']}, patch {cfg['patch_size']}, "
        f"{model.extra.get('gflops_per_image', '?')} GFLOP/image",
        f"           checkpoint sha256 {model.checkpoint_sha256[:16]}..., attention {model.extra.get('attention', '?')}",
        f"preprocess resize {pre.height}x{pre.width} {pre.extra.get('resample_name', pre.resample)}, "
        f"rescale {pre.rescale_factor:.6g}, mean {list(pre.image_mean)}, std {list(pre.image_std)} "
        f"({pre.extra.get('source', '?')})",
        f"inputs     {'; '.join(_shape(i) for i in m.inputs)}",
        f"outputs    {'; '.join(_shape(o) for o in m.outputs)}",
        f"batch      min {m.batch.min}, opt {m.batch.opt}, max {m.batch.max}; opset {m.opset or '?'}",
    ]
    if m.labels:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items())[:10])
        lines.append(f"labels     {len(m.labels)}: {shown}{', ...' if len(m.labels) > 10 else ''}")
    lines.append("precisions")
    for name, entry in m.precisions.items():
        extra = [_size(entry), f"io {entry.io_dtype}"]
        if entry.validation:
            failed = [k for k, v in entry.validation.items() if isinstance(v, dict) and v.get("passed") is False]
            extra.append("checks FAILED: " + ", ".join(failed) if failed else "checks passed")
        lines.append(f"  {name:5s}    {entry.file} ({', '.join(extra)}) sha256 {entry.sha256[:12]}...")
        for kind, flavour in entry.flavours.items():
            lines.append(f"           CPU flavour {flavour.file} ({kind}: {_size(flavour)}, io {flavour.io_dtype}) "
                         f"sha256 {flavour.sha256[:12]}...")
    if m.engines:
        lines.append("engines")
        for e in m.engines:
            where = list(e.compute_capabilities or e.aot_targets) or "?"
            lines.append(f"  {e.file} ({e.precision}, {e.target} {e.tensorrt_version}, targets {where}, {_size(e)})")
            int8 = e.int8_execution
            if int8:  # what the engine computes for the Q/DQ graph, as documented (see the builder)
                lines.append(f"    int8: {int8.get('graph')}; engine: {int8.get('engine')}"
                             f"{'' if int8.get('verified') else ' (unverified on a GPU)'}")
    else:
        lines.append("engines    none")
    if m.reports:
        lines.append(f"reports    {', '.join(r.file for r in m.reports)}")
    if m.logs is not None:
        lines.append(f"logs       {m.logs.file} (third-party output of the export)")
    lines.append(f"versions   {', '.join(f'{k} {v}' for k, v in m.versions.items())}")
    if m.passed is not None:
        lines.append(f"status     {'passed' if m.passed else 'FAILED (see report.md)'}")
    return "\n".join(lines)


def verify_all(m: Manifest) -> None:
    """Check every file the manifest names; print one line each; InputError (exit 2) naming every bad one."""
    checks = m.check_files()
    for c in checks:
        click.echo(f"{c.status.upper() if not c.ok else c.status:9s} {c.named.file} ({c.named.role})")
    for name in m.unnamed_files():
        click.echo(f"note      {name} is in the directory but not named in the manifest")
    bad = [c for c in checks if not c.ok]
    if bad:
        raise InputError(f"{m.path}: {len(bad)} of {len(checks)} named files failed verification: "
                         + "; ".join(f"{c.status}: {c.detail}" for c in bad)
                         + "; restore them or re-run vitmsn-export")
    click.echo(f"all {len(checks)} files match their SHA-256")


@click.command("inspect")
@artifacts_argument()
@click.option("--json", "as_json", is_flag=True, help="Print manifest.json as is.")
@click.option("--verify", is_flag=True,
              help="Also check every file the manifest names (graphs, CPU flavours, engines, reports) against its "
                   "SHA-256; exit 2 when any is missing, swapped or corrupt.")
@handle_errors
def command(artifacts: Path | None, as_json: bool, verify: bool) -> None:
    """Print an artifacts directory's manifest readably."""
    artifacts = need_artifacts(artifacts)
    m = Manifest.load(artifacts)
    click.echo(json.dumps(m.data, indent=2) if as_json else describe_manifest(m))
    if verify:
        verify_all(m)
