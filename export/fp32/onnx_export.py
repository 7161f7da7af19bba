"""PyTorch ViTMSN -> ONNX with a symbolic batch axis (``torch.onnx.export(dynamo=True)``)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch

from vitmsn.runtime.manifest import atomic_path

from vitmsn.export.fp32.spec import BATCH_AXIS, SUPPORTED_OPSETS, BatchRange, ExportSpec
from vitmsn.export.onnx_file import save_onnx

log = logging.getLogger(__name__)
# The exporter warns once per process that torchvision's operators are not registered; the
# ViTMSN graph uses none of them.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def onnx_from_model(model: torch.nn.Module, spec: ExportSpec, path: str | Path, *, opset: int,
                    batch: BatchRange) -> onnx.ModelProto:
    """Export ``model`` to ``path`` (atomically) and return the loaded ONNX model.

    The example batch is 2 (a size-1 example dimension would be specialised), the batch
    dimension is declared symbolic with the profile's bounds, and the graph carries the spec's
    input and output names. Weights are stored inside the file (no external data) so the
    artifact is one file with one SHA-256; ViTMSN models are far below the 2 GB protobuf limit.
    """
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}")
    a = spec.arch
    example = torch.randn(2, a.num_channels, a.image_size, a.image_size)
    # torch.export needs max > 2 for a symbolic dim traced at 2; the engine profile stays as asked.
    dim = torch.export.Dim(BATCH_AXIS, min=1, max=max(batch.max, 4096))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured), _rewriter_forgets_its_last_graph():
            program = torch.onnx.export(
                model.eval(),
                (example,),
                input_names=[spec.input.name],
                output_names=spec.output_names,
                dynamic_shapes={"pixel_values": {0: dim}},
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
                external_data=False,
            )
    log.debug("exporter output:\n%s", captured.getvalue())
    proto = program.model_proto
    del program
    _name_batch_axis(proto)
    with atomic_path(path) as tmp:
        save_onnx(proto, tmp)
    return proto


@contextlib.contextmanager
def _rewriter_forgets_its_last_graph():
    """On the way out (also when the export raised), drop the graph that onnxscript's rewrite rules keep after
    ``optimize=True``.

    The default rules are module-level objects, and each one's pattern matcher keeps the last graph it matched
    (onnxscript 0.7: ``SimplePatternMatcher._graph`` and ``_match``). That graph's initializers wrap the model's
    parameters, so every weight stayed alive after the export had returned and the model was deleted: 343 MB on
    ViT-B/16 and 1.2 GB on ViT-L, held through the FP16 and INT8 steps that size themselves against the memory left.
    """
    try:
        yield
    finally:
        from onnxscript import rewriter  # torch.onnx's dynamo exporter depends on onnxscript

        for rule in getattr(rewriter, "_DEFAULT_REWRITE_RULES", ()):  # another onnxscript: nothing to undo
            state = getattr(getattr(rule, "_matcher", None), "__dict__", {})
            for name in ("_graph", "_match", "_current_node", "_tracer"):
                if name in state:
                    state[name] = None


def _name_batch_axis(proto: onnx.ModelProto) -> None:
    """Give the symbolic batch dimension of every graph input/output the spec's axis name."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = BATCH_AXIS
