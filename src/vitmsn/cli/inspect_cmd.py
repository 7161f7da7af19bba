"""``vitmsn inspect ARTIFACTS``: the manifest, readably (or as JSON)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vitmsn.runtime.manifest import Manifest

from .common import artifacts_argument, handle_errors, need_artifacts


def _shape(entry: dict) -> str:
    return f"{entry['name']}: {entry['dtype']}[{', '.join(str(d) for d in entry['shape'])}]"


def flavours(entry: dict) -> list[tuple[str, dict]]:
    """The other files of a precision entry: the CPU flavours (``onnxruntime_optimized`` FP32, ``onnxruntime_cpu``
    INT8) and any later ones, each a dict with its own file and sha256."""
    return [(k, v) for k, v in entry.items() if isinstance(v, dict) and "file" in v and "sha256" in v]


def describe_manifest(m: Manifest) -> str:
    d = m.data
    model, pre = d["model"], d["preprocess"]
    cfg = model["config"]
    lines = [
        f"artifacts  {m.root}",
        f"model      {model['source']} ({model['task']}, {model.get('architecture', '?')})",
        f"           hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']} heads, "
        f"mlp {cfg['intermediate_size']}, image {cfg['image_size']}, patch {cfg['patch_size']}, "
        f"{model.get('gflops_per_image', '?')} GFLOP/image",
        f"           checkpoint sha256 {model['checkpoint_sha256'][:16]}..., attention {model.get('attention', '?')}",
        f"preprocess resize {pre['size']['height']}x{pre['size']['width']} {pre.get('resample_name', pre['resample'])}, "
        f"rescale {pre['rescale_factor']:.6g}, mean {pre['image_mean']}, std {pre['image_std']} ({pre.get('source', '?')})",
        f"inputs     {'; '.join(_shape(i) for i in d['inputs'])}",
        f"outputs    {'; '.join(_shape(o) for o in d['outputs'])}",
        f"batch      min {d['batch']['min']}, opt {d['batch']['opt']}, max {d['batch']['max']}; opset {d.get('opset', '?')}",
    ]
    if m.labels:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(m.labels.items())[:10])
        lines.append(f"labels     {len(m.labels)}: {shown}{', ...' if len(m.labels) > 10 else ''}")
    lines.append("precisions")
    for name, entry in m.precisions.items():
        extra = []
        if "size_bytes" in entry:
            extra.append(f"{entry['size_bytes'] / 1e6:.1f} MB")
        if entry.get("io_dtype"):
            extra.append(f"io {entry['io_dtype']}")
        validation = entry.get("validation") or {}
        if validation:
            failed = [k for k, v in validation.items() if isinstance(v, dict) and v.get("passed") is False]
            extra.append("checks FAILED: " + ", ".join(failed) if failed else "checks passed")
        lines.append(f"  {name:5s}    {entry['file']} ({', '.join(extra)}) sha256 {entry['sha256'][:12]}...")
        for key, flavour in flavours(entry):
            size = f"{flavour['size_bytes'] / 1e6:.1f} MB, " if "size_bytes" in flavour else ""
            lines.append(f"           {flavour['file']} ({key}: {size}io {flavour.get('io_dtype', '?')}) "
                         f"sha256 {flavour['sha256'][:12]}...")
    if m.engines:
        lines.append("engines")
        for e in m.engines:
            where = e.get("compute_capabilities") or e.get("aot_targets") or "?"
            lines.append(f"  {e['file']} ({e['precision']}, {e['target']} {e.get('tensorrt_version', '?')}, "
                         f"targets {where}, {e.get('size_bytes', 0) / 1e6:.1f} MB)")
            int8 = e.get("int8_execution")
            if int8:  # what the engine computes for the Q/DQ graph, as documented (see the builder)
                lines.append(f"    int8: {int8.get('graph')}; engine: {int8.get('engine')}"
                             f"{'' if int8.get('verified') else ' (unverified on a GPU)'}")
    else:
        lines.append("engines    none")
    logs = d.get("logs")
    if isinstance(logs, dict) and "file" in logs:
        lines.append(f"logs       {logs['file']} (third-party output of the export)")
    lines.append(f"versions   {', '.join(f'{k} {v}' for k, v in d.get('versions', {}).items())}")
    if "passed" in d:
        lines.append(f"status     {'passed' if d['passed'] else 'FAILED (see report.md)'}")
    return "\n".join(lines)


@click.command("inspect")
@artifacts_argument()
@click.option("--json", "as_json", is_flag=True, help="Print manifest.json as is.")
@click.option("--verify", is_flag=True, help="Also check every file's SHA-256 against the manifest.")
@handle_errors
def command(artifacts: Path | None, as_json: bool, verify: bool) -> None:
    """Print an artifacts directory's manifest readably."""
    artifacts = need_artifacts(artifacts)
    m = Manifest.load(artifacts)
    if verify:
        for entry in list(m.precisions.values()) + m.engines:
            m.verify_file(entry["file"], entry["sha256"])
            for _, flavour in flavours(entry):
                m.verify_file(flavour["file"], flavour["sha256"])
    click.echo(json.dumps(m.data, indent=2) if as_json else describe_manifest(m))
    if verify:
        click.echo("all files match their SHA-256", err=True)
