"""Expectations computed by the tests themselves, from the ONNX graph and the checkpoint's tensors.

None of these calls product code: a test that asks "which linear layers of block 1 were quantized?"
must not take the answer from the function that decided it. Block membership comes from the
weights themselves (an exported MatMul's weight initializer is the checkpoint tensor, transposed),
not from the exporter's name-scope metadata the product reads; "quantized" means the weight operand
is produced by a DequantizeLinear; "computes in FP32" comes from ONNX shape inference.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import load_file

LINEAR_OPS = ("MatMul", "Gemm")
# transformers 4.x names (what checkpoints hold on disk) and 5.x in-memory names
_BLOCK_KEY = re.compile(r"(?:^|\.)(?:layer|layers)\.(\d+)\.")


def checkpoint_tensors(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(Path(checkpoint_dir).glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def weight_keys(model: onnx.ModelProto, checkpoint_dir: Path) -> dict[str, str]:
    """Linear node name -> the checkpoint key of its weight, matched by value (W or W^T, exactly)."""
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for key, value in checkpoint_tensors(checkpoint_dir).items():
        if value.ndim == 2 and key.endswith("weight"):
            for v in (value, value.T):
                by_shape.setdefault(tuple(v.shape), []).append((key, v))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    owners: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type not in LINEAR_OPS:
            continue
        for name in node.input:
            w = inits.get(name)
            if w is None or w.ndim != 2:
                continue
            hits = [k for k, v in by_shape.get(tuple(w.shape), []) if np.array_equal(v.astype(w.dtype), w)]
            if hits:
                owners[node.name] = hits[0]
    return owners


def block_linear_nodes(model: onnx.ModelProto, checkpoint_dir: Path) -> dict[int, set[str]]:
    """Encoder block index -> names of its linear (weight x activation) nodes in ``model``."""
    blocks: dict[int, set[str]] = {}
    for node, key in weight_keys(model, checkpoint_dir).items():
        m = _BLOCK_KEY.search(key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(node)
    return blocks


def linear_split(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """(linear nodes whose weight operand comes out of a DequantizeLinear, linear nodes with a float weight).

    Only nodes with a constant operand count (attention's activation x activation MatMuls are left out)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}

    def constant(name: str) -> bool:
        if name in inits:
            return True
        p = producer.get(name)
        return p is not None and (p.op_type == "Constant" or (p.input and all(constant(i) for i in p.input if i)))

    quantized, plain = set(), set()
    for node in model.graph.node:
        if node.op_type not in LINEAR_OPS + ("Conv",):
            continue
        weights = [i for i in node.input[1:2] if constant(i)]
        if not weights:
            continue
        p = producer.get(weights[0])
        (quantized if p is not None and p.op_type == "DequantizeLinear" else plain).add(node.name)
    return quantized, plain


def float32_compute_nodes(model: onnx.ModelProto) -> set[str]:
    """Non-Cast nodes that produce a float32 tensor, by ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in
            list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    return {n.name for n in model.graph.node
            if n.op_type != "Cast" and any(elem.get(o) == onnx.TensorProto.FLOAT for o in n.output)}
