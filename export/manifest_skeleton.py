"""The manifest an export run starts from: model, preprocessing, I/O, batch profile, tool versions (its
precisions, engines and reports are filled in as the run goes)."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

import vitmsn
from vitmsn.export.fp32.checkpoint import Checkpoint
from vitmsn.export.fp32.spec import ExportSpec
from vitmsn.runtime.manifest import (MANIFEST_NAME, BatchSpec, Manifest, ModelInfo, PreprocessSpec, TensorSpec,
                                     Where)


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    import onnx
    import onnxruntime

    versions = {
        "vitmsn": vitmsn.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
    try:
        versions["nvidia-modelopt"] = md.version("nvidia-modelopt")
    except md.PackageNotFoundError:
        pass
    return versions


def manifest_skeleton(opts: Any, ck: Checkpoint, spec: ExportSpec, root: Path | None = None) -> Manifest:
    """The manifest before any graph is recorded (its ``precisions`` are filled in as the run goes); ``opts``:
    the run's ``ExportOptions`` (not imported: the pipeline imports this module); ``root``: the directory it is written into (the staging directory; default ``--out``)."""
    root = Path(opts.out) if root is None else Path(root)
    where = Where(str(root / MANIFEST_NAME))
    model = ModelInfo(opts.model, spec.task, ck.arch.to_dict(), ck.sha256,
                      "ViTMSNForImageClassification" if spec.task == "image-classification" else "ViTMSNModel",
                      {"directory": str(ck.directory), "num_labels": ck.num_labels, "weight_files": ck.weight_files,
                       "attention": opts.attention, "gflops_per_image": round(ck.arch.gflops_per_image(), 4),
                       **({"revision": ck.revision} if ck.revision else {})})
    io = spec.io_dict()
    return Manifest(
        root, model,
        PreprocessSpec.from_json(dict(ck.preprocess.to_manifest(), source=ck.preprocess_source), where.at("preprocess")),
        tuple(TensorSpec.from_json(t, where.at("inputs")) for t in io["inputs"]),
        tuple(TensorSpec.from_json(t, where.at("outputs")) for t in io["outputs"]),
        BatchSpec(opts.batch.min, opts.batch.opt, opts.batch.max), {}, (), dict(sorted(ck.labels.items())),
        opts.opset, tool_versions(), extra={"created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
