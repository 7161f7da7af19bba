"""``vitmsn inspect ARTIFACTS``: the manifest, readably (or as JSON); ``--verify`` checks every file it names."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vitmsn.core.errors import InputError, ValidationFailed
from vitmsn.runtime.manifest import FileRef, Manifest, TensorSpec, sha256_file
from vitmsn.runtime.manifest.verdicts import overall, void_reason

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
            # the drift gates' word is in the verdicts table below (passed, failed or inconclusive), not here
            judged = ("drift_", "requantize_") if m.verdicts else ()
            failed = [k for k, v in entry.validation.items()
                      if isinstance(v, dict) and v.get("passed") is False and not k.startswith(judged)]
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
    lines += verdict_lines(m)
    word = overall(m) if m.verdicts else m.verdict or (None if m.passed is None else "passed" if m.passed else "failed")
    if m.verdicts and m.passed is False and word == "passed":  # an export check other than a drift gate failed
        word = "failed"
    if word is not None:
        lines.append(f"status     {word if word == 'passed' else word.upper() + ' (see report.md)'}")
    return "\n".join(lines)


def verdict_lines(m: Manifest) -> list[str]:
    """The per-precision verdict table from manifest.json's "verdicts" (the one place every command reads)."""
    if not m.verdicts:
        return ["verdicts   none recorded (run vitmsn validate ARTIFACTS --images DIR)"]
    lines = ["verdicts   backend      precision flavour                verdict       images  by        gates"]
    for v in sorted(m.verdicts, key=lambda r: (r.precision, r.backend, r.flavour)):
        void = void_reason(v, m)
        word = "VOID" if void else v.verdict if v.verdict == "passed" else v.verdict.upper()
        gates = "; ".join(g.describe() for g in v.gates) or "-"
        lines.append(f"           {v.backend:12s} {v.precision:9s} {v.flavour or '-':22s} {word:13s} "
                     f"{v.images.get('count', '?'):>6} {v.by:9s} {gates}")
        if void:
            lines.append(f"             void: {void}; run vitmsn validate again")
    return lines


def verify_all(m: Manifest) -> None:
    """Check every file the manifest names; print one line each; InputError (exit 2) naming every bad one."""
    checks = m.check_files()
    for c in checks:
        click.echo(f"{c.status.upper() if not c.ok else c.status:9s} {c.named.file} ({c.named.role})")
    for name in m.unnamed_files():
        click.echo(f"note      {name} is in the directory but not named in the manifest")
    # check_files just hashed every file: an "ok" one is its named SHA-256; only a changed one is read again
    on_disk = {c.named.file: c.named.sha256 if c.status == "ok" else sha256_file(m.path_of(c.named.file))
               for c in checks if c.status in ("ok", "corrupt", "swapped")}
    voids = [f"{v.name} ({v.verdict}, by {v.by}): {why}" for v in m.verdicts if (why := void_reason(v, m, on_disk))]
    for line in voids:
        click.echo(f"void      verdict of {line}")
    bad = [c for c in checks if not c.ok]
    if bad:
        raise InputError(f"{m.path}: {len(bad)} of {len(checks)} named files failed verification: "
                         + "; ".join(f"{c.status}: {c.detail}" for c in bad)
                         + "; restore them or re-run vitmsn-export")
    click.echo(f"all {len(checks)} files match their SHA-256")
    if voids:  # the files are intact, but what was judged is not what ships: the verdict no longer covers it
        raise ValidationFailed(f"{m.path}: {len(voids)} verdict(s) void: {'; '.join(voids)}; run vitmsn validate again",
                               "inconclusive")


@click.command("inspect")
@artifacts_argument()
@click.option("--json", "as_json", is_flag=True, help="Print manifest.json as is.")
@click.option("--verify", is_flag=True,
              help="Also check every file the manifest names (graphs, CPU flavours, engines, reports) against its "
                   "SHA-256; exit 2 when any is missing, swapped or corrupt; exit 1 when a recorded verdict is void "
                   "(the file it judged or the manifest content it read changed since).")
@handle_errors
def command(artifacts: Path | None, as_json: bool, verify: bool) -> None:
    """Print an artifacts directory's manifest readably."""
    artifacts = need_artifacts(artifacts)
    m = Manifest.load(artifacts)
    click.echo(json.dumps(m.data, indent=2) if as_json else describe_manifest(m))
    if verify:
        verify_all(m)
