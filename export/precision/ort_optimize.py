"""An ONNX Runtime-fused FP32 graph: the fastest FP32 ViTMSN for ONNX Runtime's CPU and CUDA providers.

``ort_optimized_onnx_from_fp32(src, dst, arch)`` runs ONNX Runtime's transformer optimizer
(``onnxruntime.transformers.optimizer.optimize_model(model_type="vit")``) on the reference FP32
export and writes a graph in which every encoder layer is four fused kernels plus its GEMMs:

* ``Attention`` (com.microsoft): one packed Q/K/V GEMM, scaled softmax and context in one node;
* ``SkipLayerNormalization``: residual add + projection bias + LayerNorm;
* ``BiasGelu``: intermediate bias + erf GELU.

The optimizer matches fixed graph patterns, and the dynamo export of our "math" attention misses
them on three details, each rewritten first (the rewrites are exact; outputs are re-checked
against the source graph's, or the PyTorch outputs it matched, before anything is written):

1. ``Shape(start=0, end=1)`` (opset >= 15 attributes) -> ``Shape`` + ``Slice``: ONNX Runtime's
   symbolic shape inference ignores the attributes, fails on the CLS-token ``Concat`` and so
   disables the SkipLayerNormalization fusion.
2. attention scale ``Mul(QK^T, s)`` -> ``Div(QK^T, 1/s)``: the no-mask attention pattern is
   ``Softmax <- Div <- MatMul``.
3. residual ``Add(x, branch)`` -> ``Add(branch, x)``: the matcher walks the first matching
   parent of the residual Add without backtracking, and finds the residual stream first.

The optimizer runs twice: attention first (the first layer's residual input also feeds a plain
LayerNorm, which the SkipLayerNorm fusion would otherwise claim before attention is matched),
then the LayerNorm fusions. The result uses com.microsoft operators: it is an ONNX Runtime
artifact (CPU/CUDA providers), not an input for TensorRT, ModelOpt or other runtimes.
"""

from __future__ import annotations

import collections
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from vitmsn.runtime.manifest import atomic_path

from vitmsn.export.fp32.checks import Reference, compare_outputs
from vitmsn.export.fp32.memory import release_memory
from vitmsn.export.fp32.model import ViTMSNArch
from vitmsn.export.fp32.spec import ATOL_FP32, RTOL_FP32
from vitmsn.export.onnx_file import save_onnx

log = logging.getLogger(__name__)
FUSED_OPS = ("Attention", "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")


@dataclass
class OrtOptimizeResult:
    path: Path
    rewrites: dict[str, int]
    op_counts: dict[str, int]
    max_abs_diff: float
    compared_with: str
    notes: list[str] = field(default_factory=list)

    @property
    def fused(self) -> dict[str, int]:
        return {op: self.op_counts.get(op, 0) for op in FUSED_OPS if self.op_counts.get(op)}

    def to_manifest(self) -> dict[str, object]:
        return {"file": self.path.name, "rewrites": self.rewrites, "fused_ops": self.fused,
                "max_abs_diff_vs_fp32": self.max_abs_diff, "compared_with": self.compared_with, "notes": self.notes}


# ---- pattern rewrites (exact) --------------------------------------------------------------------
def _split_sliced_shapes(graph: onnx.GraphProto) -> int:
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Shape" or not ({"start", "end"} & set(attrs)):
            nodes.append(node)
            continue
        out = node.output[0]
        starts = numpy_helper.from_array(np.array([attrs.get("start", 0)], np.int64), f"{out}__starts")
        ends = numpy_helper.from_array(np.array([attrs.get("end", np.iinfo(np.int64).max)], np.int64), f"{out}__ends")
        graph.initializer.extend([starts, ends])
        nodes.append(helper.make_node("Shape", [node.input[0]], [f"{out}__full"], name=f"{node.name}__full"))
        nodes.append(helper.make_node("Slice", [f"{out}__full", starts.name, ends.name], [out], name=f"{node.name}__slice"))
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _constant_value(name: str, inits: dict[str, onnx.TensorProto], producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def _scale_mul_to_div(graph: onnx.GraphProto) -> int:
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    count = 0
    for node in graph.node:
        if node.op_type != "Softmax":
            continue
        mul = producers.get(node.input[0])
        if mul is None or mul.op_type != "Mul":
            continue
        values = [_constant_value(i, inits, producers) for i in mul.input]
        k = next((i for i, v in enumerate(values) if v is not None and v.size == 1), None)
        other = mul.input[1 - k] if k is not None else None
        if k is None or producers.get(other) is None or producers[other].op_type != "MatMul":
            continue
        scale = np.asarray(values[k])
        name = f"{mul.input[k]}__reciprocal"
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.asarray(1.0 / scale, dtype=scale.dtype), name)
            graph.initializer.append(inits[name])
        mul.op_type = "Div"
        del mul.input[:]
        mul.input.extend([other, name])
        count += 1
    return count


def _branch_first_residuals(graph: onnx.GraphProto) -> int:
    producers = {o: n for n in graph.node for o in n.output}

    def is_linear(name: str) -> bool:  # Add(MatMul(...), bias): a projection's output
        p = producers.get(name)
        return (p is not None and p.op_type == "Add" and
                any(producers.get(i) is not None and producers[i].op_type == "MatMul" for i in p.input))

    count = 0
    for node in graph.node:
        if node.op_type == "Add" and len(node.input) == 2 and all(i in producers for i in node.input):
            if is_linear(node.input[1]) and not is_linear(node.input[0]):
                node.input[0], node.input[1] = node.input[1], node.input[0]
                count += 1
    return count


def rewrite_for_ort_fusion(model: onnx.ModelProto) -> dict[str, int]:
    """Apply the three exact rewrites in place; return how often each applied."""
    g = model.graph
    counts = {"shape_slice": _split_sliced_shapes(g), "scale_mul_to_div": _scale_mul_to_div(g),
              "residual_branch_first": _branch_first_residuals(g)}
    del g.value_info[:]  # stale after the rewrites; the optimizer re-infers what it needs
    return counts


# ---- the optimizer -------------------------------------------------------------------------------
def _optimize(model: onnx.ModelProto, arch: ViTMSNArch, *, skip_layer_norm: bool) -> onnx.ModelProto:
    """One pass of the optimizer's Python fusions (``opt_level=0``: no ONNX Runtime session), on ``model`` in place."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("vit")
    options.enable_skip_layer_norm = skip_layer_norm
    options.enable_bias_skip_layer_norm = skip_layer_norm
    optimized = optimize_model(model, model_type="vit", num_heads=arch.num_attention_heads,
                               hidden_size=arch.hidden_size, optimization_options=options, opt_level=0,
                               use_gpu=False, only_onnxruntime=False)
    return optimized.model


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A plain session, not the runtime's runner: a graph ONNX Runtime cannot load is the optimizer's fault, reported
    as such, not as the user's artifacts to re-export."""
    import onnxruntime as ort

    so = ort.SessionOptions()  # no arena: a ViT-L holds 1.2 GB of weights per session
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feeds))}


def _max_abs_diff(src: Path, fused: Path, arch: ViTMSNArch, reference: Reference | None) -> tuple[float, str]:
    """The fused graph's largest difference from ``reference`` (the source graph's outputs on 2 images of noise,
    computed now without one), and what it was compared with; raises ValueError beyond the FP32 parity tolerance."""
    if reference is None:
        x = np.random.default_rng(0).uniform(-1, 1, (2, arch.num_channels, arch.image_size, arch.image_size))
        feeds = {"pixel_values": x.astype(np.float32)}
        reference = Reference(feeds, _outputs(src, feeds), src.name)
    got = _outputs(fused, reference.feeds)
    worst = 0.0
    for name, ref in reference.outputs.items():
        m = compare_outputs(got[name], ref, ATOL_FP32, RTOL_FP32)  # the parity check's own rule
        if m["violations"]:
            raise ValueError(f"ONNX Runtime-fused graph disagrees with {reference.source} on {name!r} "
                             f"(max abs {m['max_abs']:.3g}); not written")
        worst = max(worst, m["max_abs"])
    return worst, reference.source


EXTERNAL_MIN_BYTES = 1 << 20  # weight matrices from this size wait on disk while a pass does not read them


def _matrices_aside(model: onnx.ModelProto, location: str, select: Callable[[onnx.TensorProto], bool]) -> None:
    """Mark the 2-D weights ``select`` picks as external data in ``location``: the next ``onnx.save_model`` writes
    them there. Only matrices: the symbolic shape inference reads small constants and the position embeddings
    (B/4: 9.6 MB), and without them the SkipLayerNormalization fusion is skipped."""
    for weight in model.graph.initializer:
        if len(weight.dims) == 2 and weight.HasField("raw_data") and select(weight):
            external_data_helper.set_external_data(weight, location)


def ort_optimized_onnx_from_fp32(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                                 arch: ViTMSNArch, reference: Reference | None = None) -> OrtOptimizeResult:
    """Write the ONNX Runtime-fused graph of the FP32 export ``src`` to ``dst`` (atomically).

    Raises ValueError when the fused graph's outputs differ from ``reference`` (the export's PyTorch outputs, which
    ``src`` matched in its parity check; without one, ``src``'s own outputs on 2 images of noise) beyond the FP32
    parity tolerance (``atol`` 1e-4, ``rtol`` 1e-3); nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    quiet = [logging.getLogger(n) for n in ("onnxruntime.transformers", "fusion_base", "fusion_skiplayernorm",
                                            "onnx_model", "onnx_model_bert", "optimizer", "fusion_utils",
                                            "onnxruntime.transformers.optimizer")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        # The optimizer's fusions rewrite the loaded proto in place, and its symbolic shape inference copies the
        # whole model twice per call (protobuf frees nothing before the whole message goes). So each pass runs on
        # the graph without the weight matrices it does not read, kept on disk as external data: the first (the
        # attention fusion reads the Q/K/V weights) without the MLP's, the second (its fusions read only biases)
        # without any; the weights are read back once, at the end (ViT-L/16: 3.3 GB for this step alone; the export
        # peaked at 13.3 GB in it before).
        # The result is written once, beside dst, and renamed onto it only after its outputs match.
        with tempfile.TemporaryDirectory(prefix="vitmsn-ortopt-") as tmp:
            model = onnx.load(str(src))
            rewrites = rewrite_for_ort_fusion(model)
            if arch.intermediate_size != arch.hidden_size:  # else the MLP's weights cannot be told from Q/K/V's
                _matrices_aside(model, "mlp", lambda w: arch.intermediate_size in w.dims)
            onnx.save_model(model, str(Path(tmp) / "rewritten.onnx"))  # writes the tensors set aside to tmp/mlp
            del model
            release_memory()
            model = _optimize(onnx.load(str(Path(tmp) / "rewritten.onnx"), load_external_data=False), arch,
                              skip_layer_norm=False)
            _matrices_aside(model, "weights", lambda w: len(w.raw_data) >= EXTERNAL_MIN_BYTES)
            onnx.save_model(model, str(Path(tmp) / "attention.onnx"))
            del model
            release_memory()
            model = _optimize(onnx.load(str(Path(tmp) / "attention.onnx"), load_external_data=False), arch,
                              skip_layer_norm=True)
            onnx.load_external_data_for_model(model, tmp)
        if any(n.domain == "com.microsoft" for n in model.graph.node) and \
                not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))  # the optimizer omits it
        counts = dict(collections.Counter(n.op_type for n in model.graph.node))
        with atomic_path(dst) as candidate:
            save_onnx(model, candidate)
            del model
            release_memory()
            diff, compared_with = _max_abs_diff(src, candidate, arch, reference)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    notes = []
    if counts.get("Attention", 0) != arch.num_hidden_layers:
        notes.append(f"Attention fused in {counts.get('Attention', 0)} of {arch.num_hidden_layers} layers "
                     "(the pattern needs Q/K/V projections with bias)")
    result = OrtOptimizeResult(dst, rewrites, counts, diff, compared_with, notes)
    log.info("ONNX Runtime-fused graph %s: %s", dst.name, result.fused)
    return result
