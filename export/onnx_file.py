"""Writing ONNX models that hold gigabytes of weights."""

from __future__ import annotations

from pathlib import Path

import onnx


def save_onnx(model: onnx.ModelProto, path: str | Path) -> None:
    """Write ``model`` to ``path`` as one protobuf file without serialising it whole.

    ``onnx.save_model`` serialises the whole message into one buffer first: for a ViT-L (1.2 GB of weights) that
    holds about four more copies of the weights for a moment, the peak of the export. Here the graph goes out
    without its initializers, then each initializer as a one-tensor ``ModelProto`` of its own. Protobuf reads
    concatenated messages of one type as their merge (a repeated field appends), so every reader (onnx.load, ONNX
    Runtime, OpenVINO, TensorRT) loads the same model, initializers after the nodes; memory: one tensor at a time.
    """
    head = onnx.ModelProto()
    _copy_fields(model, head, but="graph")
    _copy_fields(model.graph, head.graph, but="initializer")
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        for tensor in model.graph.initializer:
            one = onnx.ModelProto()
            one.graph.initializer.append(tensor)  # a copy of this tensor only
            f.write(one.SerializeToString())


def _copy_fields(src, dst, *, but: str) -> None:  # noqa: ANN001 - two protobuf messages of one type
    for field, value in src.ListFields():
        if field.name == but:
            continue
        if hasattr(value, "CopyFrom"):  # a message
            getattr(dst, field.name).CopyFrom(value)
        elif isinstance(value, (str, bytes, int, float)):
            setattr(dst, field.name, value)
        else:  # a repeated field
            getattr(dst, field.name).extend(value)
