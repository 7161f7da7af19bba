"""INT8 sensitivity of a ViT: which quantized blocks (or layers) hurt most, and re-quantization that
keeps the worst of them in higher precision until a drift gate holds.

**Groups.** Every DequantizeLinear of the Q/DQ graph belongs to the module its consumer comes
from, read from the FP32 graph's ``pkg.torch.onnx.name_scopes`` node metadata by node name
(ModelOpt keeps node names but drops the metadata). ``granularity="block"`` groups by encoder
block, named as :mod:`.int8`'s exclusions are (``block:3``; ``vit.embeddings``, ``classifier``
outside the encoder); ``"layer"`` by module scope (``vit.encoder.layer.3.intermediate.dense``,
or the common scope of a DQ shared by query/key/value), also a valid exclusion.

**Measurement** (:func:`sensitivity_analysis`), on the calibration images, against the FP32
ONNX graph (equal to PyTorch within the export's parity tolerance), from one quantized graph:

* ``mode="only"`` (default): for each group, the graph with *only that group's* Q/DQ kept (all
  others bypassed); score = the drift it causes alone;
* ``mode="remove"``: the graph with *only that group's* Q/DQ bypassed; score = how much drift
  disappears (fully quantized drift minus the drift left).

A bypassed Q/DQ pair is removed and its consumer reads the Q's input again: the FP32 (or FP16)
activation, or the original weight initializer, so "bypassed" is exactly "not quantized".
Drift score: mean ``KL(softmax(fp32) || softmax(int8))`` of the logits for classifiers,
``1 - mean cosine`` of the embedding for feature extractors. Higher hurts more.

Re-quantization with the worst groups kept in higher precision is in :mod:`.requantize`.
"""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx

from vitmsn.core.errors import InputError
from vitmsn.core.progress import Progress

from vitmsn.export.fp32.checks import outputs_in_batches
from vitmsn.export.validation import metrics as dm
from vitmsn.export.precision.int8 import name_scopes
from vitmsn.export.onnx_file import save_onnx

_BLOCK = re.compile(r"^vit\.encoder\.layer\.(\d+)$")
MODES = ("only", "remove")
GRANULARITIES = ("block", "layer")


# ---- which group each Q/DQ belongs to ----------------------------------------------------------
def _group(scopes: Sequence[str], granularity: str) -> str | None:
    # name_scopes: ['', 'vit', 'vit.encoder', 'vit.encoder.layer.0', ..., 'linear_3'] (the last is the fx node)
    named = [s for s in scopes if s == "vit" or s.startswith(("vit.", "classifier"))]
    for s in named:
        m = _BLOCK.match(s)
        if m:
            return f"block:{m.group(1)}" if granularity == "block" else named[-1]
    for top in ("vit.embeddings", "classifier", "vit.layernorm"):
        if top in named:
            return top if granularity == "block" else named[-1]
    return None


def _common_scope(scopes: list[str]) -> str:
    parts = [s.split(".") for s in scopes]
    common = []
    for items in zip(*parts):
        if len(set(items)) > 1:
            break
        common.append(items[0])
    return ".".join(common) or scopes[0]


def qdq_groups(int8: onnx.ModelProto, fp32: onnx.ModelProto, granularity: str = "block") -> dict[str, list[str]]:
    """``{group: [DequantizeLinear node names]}``, groups in graph order."""
    if granularity not in GRANULARITIES:
        raise InputError(f"granularity {granularity!r}: choose from {', '.join(GRANULARITIES)}")
    scopes = {n.name: name_scopes(n) for n in fp32.graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in int8.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def groups_downstream(node: onnx.NodeProto, depth: int = 0) -> list[str]:
        found = []
        for c in consumers.get(node.output[0], []):
            g = _group(scopes.get(c.name, []), granularity) if c.op_type not in ("QuantizeLinear", "DequantizeLinear") else None
            if g is not None:
                found.append(g)
            elif depth < 4:
                found += groups_downstream(c, depth + 1)
        return found

    out: dict[str, list[str]] = {}
    for n in int8.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        found = sorted(set(groups_downstream(n)))
        if not found:
            group = "other"
        elif len(found) == 1:
            group = found[0]
        else:  # a DQ shared by several modules (query/key/value read one LayerNorm output)
            group = _common_scope(found) if granularity == "layer" else found[0]
        out.setdefault(group, []).append(n.name)
    if not out:
        raise InputError("the INT8 graph has no DequantizeLinear nodes; sensitivity needs an explicit Q/DQ graph")
    return out


def without_qdq(int8: onnx.ModelProto, dq_names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``int8`` with the named DequantizeLinear nodes (and Q nodes left unused) bypassed."""
    model = onnx.ModelProto()
    model.CopyFrom(int8)
    g = model.graph
    drop = set(dq_names)
    producer = {o: n for n in g.node for o in n.output}
    inits = {i.name: i for i in g.initializer}
    new_inits = []
    replace_with: dict[str, str] = {}
    for n in g.node:
        if n.name not in drop or n.op_type != "DequantizeLinear":
            continue
        q = producer.get(n.input[0])
        if q is not None and q.op_type == "QuantizeLinear":
            replace_with[n.output[0]] = q.input[0]
        elif n.input[0] in inits:  # weights stored as int8: dequantize them once
            new_inits.append(_dequantized(n, inits))
            replace_with[n.output[0]] = new_inits[-1].name
        else:
            raise InputError(f"DequantizeLinear {n.name}: input {n.input[0]} is neither a QuantizeLinear output nor an "
                             "initializer; cannot bypass it")

    def resolve(name: str) -> str:
        seen = set()
        while name in replace_with and name not in seen:
            seen.add(name)
            name = replace_with[name]
        return name

    kept = [n for n in g.node if not (n.name in drop and n.op_type == "DequantizeLinear")]
    for n in kept:
        for i, name in enumerate(n.input):
            n.input[i] = resolve(name)
    outputs = {o.name for o in g.output}
    identity = [onnx.helper.make_node("Identity", [resolve(o)], [o], name=f"{o}_bypass")
                for o in outputs if resolve(o) != o]
    while True:  # drop QuantizeLinear nodes (and what only they used) that nothing reads any more
        used = {i for n in kept + identity for i in n.input} | outputs
        dead = [n for n in kept if n.op_type == "QuantizeLinear" and not (set(n.output) & used)]
        if not dead:
            break
        kept = [n for n in kept if n not in dead]
    del g.node[:]
    g.node.extend(kept + identity)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    return model


def _dequantized(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> onnx.TensorProto:
    from onnx import numpy_helper

    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero = np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return numpy_helper.from_array(((q - zero) * scale).astype(np.float32), dq.output[0] + "_dequantized")


# ---- measuring ---------------------------------------------------------------------------------
def run_model(model: onnx.ModelProto | str | Path, inputs: np.ndarray, input_name: str = "pixel_values",
              batch: int = 16) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ``inputs`` through the runtime's ONNX Runtime runner."""
    from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

    with tempfile.TemporaryDirectory(prefix="vitmsn-sens-") as tmp:
        path = Path(model) if isinstance(model, (str, Path)) else Path(tmp) / "candidate.onnx"
        if not isinstance(model, (str, Path)):
            save_onnx(model, path)
        with OnnxRuntimeRunner(path, allow_spinning=False) as runner:
            return outputs_in_batches(lambda b: runner.infer({input_name: b}), inputs, batch)


def drift(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, Any]:
    """Summary figures and the sensitivity score of ``got`` against ``ref``."""
    if "logits" in ref:
        s = dm.summarize(dm.per_image(got["logits"], ref["logits"], classification=True))
        return {"score": s["kl_mean"], "top1_agreement": s["top1_agreement"], "kl_mean": s["kl_mean"],
                "cosine_mean": s["cosine_mean"], "cosine_min": s["cosine_min"]}
    s = dm.summarize(dm.per_image(got["embedding"], ref["embedding"]))
    return {"score": None if s["cosine_mean"] is None else 1.0 - s["cosine_mean"], "cosine_mean": s["cosine_mean"],
            "cosine_min": s["cosine_min"]}


@dataclass
class GroupScore:
    group: str
    score: float
    qdq_nodes: int
    metrics: dict[str, Any]


@dataclass
class SensitivityResult:
    mode: str
    granularity: str
    images: int
    baseline: dict[str, Any]  # the fully quantized graph's drift
    ranking: list[GroupScore]  # worst first
    seconds: float

    def worst(self, n: int) -> list[str]:
        return [g.group for g in self.ranking[:n]]

    def to_dict(self) -> dict[str, Any]:
        score = "mean KL(fp32 || int8) of the logits" if "kl_mean" in self.baseline else "1 - mean cosine of the embedding"
        method = (f"{'only this group quantized' if self.mode == 'only' else 'only this group de-quantized'}, "
                  f"per {self.granularity}")
        return {"method": method, "mode": self.mode, "granularity": self.granularity, "score": score,
                "images": self.images, "baseline": self.baseline, "seconds": round(self.seconds, 2),
                "ranking": [{"group": g.group, "score": g.score, "qdq_nodes": g.qdq_nodes, **g.metrics}
                            for g in self.ranking]}


def sensitivity_analysis(int8_path: str | Path, fp32_path: str | Path, inputs: np.ndarray, *, mode: str = "only",
                         granularity: str = "block", input_name: str = "pixel_values",
                         progress: bool = True, batch: int = 16) -> SensitivityResult:
    """Rank the Q/DQ groups of ``int8_path`` by the drift they cause on ``inputs`` (see the module docstring)."""
    if mode not in MODES:
        raise InputError(f"sensitivity mode {mode!r}: choose from {', '.join(MODES)}")
    started = time.perf_counter()
    int8 = onnx.load(str(int8_path))
    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    groups = qdq_groups(int8, fp32, granularity)
    every_dq = [d for names in groups.values() for d in names]
    ref = run_model(fp32_path, inputs, input_name, batch)
    baseline = drift(run_model(int8, inputs, input_name, batch), ref)
    ranking = []
    with Progress(f"int8 sensitivity ({len(groups)} groups)", len(groups), unit="group", enabled=progress) as bar:
        for group, names in groups.items():
            bypass = set(every_dq) - set(names) if mode == "only" else set(names)
            figures = drift(run_model(without_qdq(int8, bypass), inputs, input_name, batch), ref)
            raw = figures.pop("score")
            score = raw if mode == "only" else (baseline["score"] or 0.0) - (raw or 0.0)
            ranking.append(GroupScore(group, float("inf") if score is None else float(score), len(names), figures))
            bar.update()
    ranking.sort(key=lambda g: -g.score)
    return SensitivityResult(mode, granularity, len(inputs), baseline, ranking, time.perf_counter() - started)


def sensitivity_for_artifacts(artifacts_dir: str | Path, images_dir: str | Path, *, samples: int = 32,
                              progress: bool = True) -> SensitivityResult:
    """:func:`sensitivity_analysis` of an artifacts directory's INT8 graph on ``samples`` images of ``images_dir``."""
    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
    from vitmsn.runtime.manifest import Manifest

    manifest = Manifest.load(artifacts_dir)
    if "int8" not in manifest.precisions:
        raise InputError(f"{manifest.root}: no int8 graph to analyse (it has: {', '.join(manifest.precisions)}); "
                         "export with --precision int8")
    int8_path = manifest.verify(manifest.precision("int8"))
    fp32_path = manifest.verify(manifest.precision("fp32"))
    cs = calibration_set_from_directory(images_dir, manifest.preprocess.to_json(),
                                        CalibrationOptions(samples=samples, use_cache=False, progress=progress, min_images=1))
    return sensitivity_analysis(int8_path, fp32_path, cs.tensors, input_name=manifest.input_name, progress=progress)
