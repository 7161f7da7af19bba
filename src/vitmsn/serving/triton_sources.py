"""What a Triton repository may serve: gate status, the graph per instance kind, the real output dims.

* A precision whose validation or drift gate failed at export is refused unless the caller
  allows it (``--allow-failed-gates``): a repository is something users deploy as is.
* CPU instances get the CPU-placed graph where the artifacts have one (``onnxruntime_cpu``: INT8
  quantized for ONNX Runtime's CPU kernels; ``onnxruntime_optimized``: FP32 with ONNX Runtime's
  fusions), the runtime's choice on this CPU (``vitmsn.runtime.backends.registry.cpu_flavour``); GPU
  instances the exported graph.
* Dims (and so the number of labels) come from the graph itself, and the manifest's declared
  shapes are checked against it: an edited manifest cannot make the writer allocate or declare
  what the model does not produce.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vitmsn.core.errors import InputError
from vitmsn.runtime.backends.registry import cpu_flavour
from vitmsn.runtime.manifest import MANIFEST_NAME, FlavourEntry, Manifest, PrecisionEntry
from vitmsn.runtime.manifest.verdicts import failed_precisions, void_reason
from vitmsn.runtime.manifest.fields import label_control_character


@dataclass(frozen=True)
class ServedGraph:
    file: str  # relative to the artifacts directory
    sha256: str
    cpu_flavour: bool  # the CPU-placed graph rather than the exported one


def failed_stages(entry: PrecisionEntry | FlavourEntry) -> list[str]:
    """Names of the entry's validation stages (drift gates included) recorded as failed."""
    stages = entry.extra.get("validation") or {}
    return [str(name) for name, s in stages.items() if isinstance(s, dict) and s.get("passed") is False]


def check_gates(manifest: Manifest, precision: str, allow_failed: bool, notes: list[str]) -> None:
    """Refuse a precision whose latest verdict (manifest ``verdicts``, export or ``vitmsn validate``) is failed,
    or whose graph checks failed at export; a precision never judged by a verdict falls back on the export's
    drift stages. A later passing ``vitmsn validate`` replaces a failed drift gate."""
    entry = manifest.precisions.get(precision)
    judged = any(v.precision == precision and void_reason(v, manifest) is None for v in manifest.verdicts)
    failed = [s for s in (failed_stages(entry) if entry else []) if not (judged and s.startswith(("drift_", "requantize_")))]
    record = failed_precisions(manifest).get(precision)
    if record is None and not failed:
        return
    why = f"its latest verdict is failed ({record.name}, by {record.by}: {record.reason()})" if record is not None \
        else f"it failed its export gate(s) {', '.join(failed)}"
    what = f"{manifest.root / MANIFEST_NAME}: precision {precision}: {why}"
    if not allow_failed:
        raise InputError(f"{what}; refusing to package it for serving. Re-export (see report.md), serve another "
                         "precision with --precision, or pass --allow-failed-gates to package it anyway")
    notes.append(f"{what}; packaged anyway (--allow-failed-gates)")


def served_graph(manifest: Manifest, precision: str, on_cpu: bool, notes: list[str]) -> ServedGraph:
    """The ONNX graph a model of ``precision`` serves: the CPU-placed flavour on CPU instances."""
    manifest.onnx_path(precision)  # raises, naming what the manifest has, when the precision is absent
    entry = manifest.precisions[precision]
    key = cpu_flavour(entry) if on_cpu else None  # the graph the runtime loads on this CPU
    if key is not None:
        flavour = entry.flavours[key]
        failed = failed_stages(flavour)
        if not failed:
            notes.append(f"{precision} on CPU instances: serving {flavour.file}, the CPU-placed graph "
                         f"(GPU instances get {entry.file})")
            return ServedGraph(flavour.file, flavour.sha256, True)
        notes.append(f"{precision}: CPU-placed graph {flavour.file} failed {', '.join(failed)}; "
                     f"serving the exported {entry.file} instead")
    return ServedGraph(entry.file, entry.sha256, False)


def graph_outputs(path: Path) -> dict[str, list[int | str]]:
    """The graph's outputs as ``name -> shape`` (symbolic axes by name), read from the file itself."""
    try:
        import onnx
    except ImportError:  # the runtime side: onnx is an export dependency
        return _outputs_by_onnxruntime(path)
    graph = onnx.load(str(path), load_external_data=False).graph
    return {o.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                     for d in o.type.tensor_type.shape.dim] for o in graph.output}


def _outputs_by_onnxruntime(path: Path) -> dict[str, list[int | str]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {o.name: [d if isinstance(d, int) else str(d) for d in o.shape] for o in session.get_outputs()}


def checked_output_dims(manifest: Manifest, graph: Path) -> dict[str, list[int]]:
    """Per output, its dims without the batch axis, from ``graph``; each must equal the manifest's."""
    real = graph_outputs(graph)
    dims: dict[str, list[int]] = {}
    for out in manifest.outputs:
        name, declared = out.name, list(out.shape)
        if name not in real:
            raise InputError(f"{manifest.root / MANIFEST_NAME}: output {name!r} is not an output of {graph.name} "
                             f"(it has {sorted(real)}); re-run vitmsn-export")
        rest = [d if isinstance(d, int) else -1 for d in real[name][1:]]
        if [d if isinstance(d, int) else -1 for d in declared[1:]] != rest:
            raise InputError(f"{manifest.root / MANIFEST_NAME}: output {name} is declared with shape {declared}, "
                             f"but {graph.name} produces {real[name]}; the manifest was edited or belongs to another "
                             "model, re-run vitmsn-export")
        dims[name] = rest
    return dims


def check_one_line_labels(manifest: Manifest) -> None:
    """labels.txt holds one label per line: a label with a line break or another control character (a manifest
    written before the export refused them) is refused before anything is written."""
    for i, label in sorted(manifest.labels.items()):
        bad = label_control_character(label)
        if bad is not None:
            raise InputError(f"{manifest.root / MANIFEST_NAME}: label {i} {label!r} holds the control character {bad}, "
                             f"which would break Triton's one-label-per-line labels.txt; fix id2label in the "
                             "checkpoint's config.json and re-run vitmsn-export")


def labels_text(manifest: Manifest, classes: int) -> str:
    """labels.txt for ``classes`` real output classes; the manifest's labels must be exactly 0..classes-1."""
    labels = manifest.labels
    if len(labels) != classes or not all(0 <= k < classes for k in labels):
        keys = sorted(labels)
        raise InputError(f"{manifest.root / MANIFEST_NAME}: labels (ids {keys[:3]}...{keys[-1:]}, {len(labels)} in all) "
                         f"do not name the model's {classes} classes 0..{classes - 1}; re-run vitmsn-export")
    return "".join(labels[i].replace("\n", " ") + "\n" for i in range(classes))
