"""Check a written Triton repository for what its writer cannot know: the graphs' real I/O.

Every ``config.pbtxt`` is valid by construction (:mod:`.pbtxt` builds it through Triton's own
``inference.ModelConfig`` protobuf) and takes its batch range, engine profile, labels, preprocessing
and ensemble wiring from the manifest (:mod:`.triton`). What the manifest cannot vouch for is the
copied graph itself: for each ONNX model (``onnxruntime_onnx``, and vitmsn's Python inference model)
the config is compared with the graph's real I/O read with ``onnx``: names in order, element types,
a symbolic first axis, the other dims. Each config is parsed back with Triton's schema on the way.

Needs ``tritonclient[grpc]`` and ``onnx`` (test/export extras); :func:`missing_packages` says which
are absent so a caller can say so instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitmsn.runtime.backends.device import module_available

from .triton import INFER_TEMPLATE, RUNTIME_FILE, TRITON_TYPES, VERSION


@dataclass
class RepositoryCheck:
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def missing_packages() -> list[str]:
    needed = {"tritonclient.grpc.model_config_pb2": "tritonclient[grpc]", "onnx": "onnx"}
    return [package for module, package in needed.items() if not module_available(module)]


def parse_config(path: Path) -> Any:
    """``config.pbtxt`` -> ``inference.ModelConfig``; raises ``text_format.ParseError`` when invalid."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _type_name(config: Any, value: int) -> str:
    return type(config).DESCRIPTOR.file.enum_types_by_name["DataType"].values_by_number[value].name


def onnx_io(path: Path) -> tuple[list[tuple[str, str, list[Any]]], list[tuple[str, str, list[Any]]]]:
    """The graph's (name, Triton type, dims) per input and output; symbolic dims as their names."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def describe(values: Any) -> list[tuple[str, str, list[Any]]]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name
            dims = [d.dim_param or "?" if not d.HasField("dim_value") else d.dim_value for d in t.shape.dim]
            out.append((v.name, TRITON_TYPES.get(dtype, dtype), dims))
        return out

    return describe(graph.input), describe(graph.output)


def _tensors(config: Any, field_name: str) -> list[tuple[str, str, list[int]]]:
    return [(t.name, _type_name(config, t.data_type), list(t.dims)) for t in getattr(config, field_name)]


def _compare_io(config: Any, inputs: list[Any], outputs: list[Any], source: str) -> list[str]:
    problems = []
    for kind, got, truth in (("input", _tensors(config, "input"), inputs), ("output", _tensors(config, "output"), outputs)):
        if [t[0] for t in got] != [t[0] for t in truth]:
            problems.append(f"{kind} names {[t[0] for t in got]} != {source} {[t[0] for t in truth]}")
            continue
        for (tname, dtype, dims), (_, want_type, want_dims) in zip(got, truth):
            if dtype != want_type:
                problems.append(f"{kind} {tname}: data_type {dtype} != {source} {want_type}")
            if not want_dims or isinstance(want_dims[0], int):
                problems.append(f"{kind} {tname}: {source} first axis {want_dims[:1]} is not a symbolic batch axis")
            rest = [d if isinstance(d, int) else -1 for d in want_dims[1:]]
            if dims != rest:
                problems.append(f"{kind} {tname}: dims {dims} != {source} {rest} (batch axis excluded)")
    return problems


def _graph(model: Path, config: Any) -> Path | None:
    """The ONNX graph a model serves: ``onnxruntime_onnx``'s model file, or the one vitmsn's Python
    inference model names in its runtime file; None for other models."""
    version = model / VERSION
    if config.platform == "onnxruntime_onnx":
        return version / (config.default_model_filename or "model.onnx")
    if config.backend == "python" and (version / "model.py").read_bytes() == INFER_TEMPLATE.read_bytes():
        return version / str(json.loads((version / RUNTIME_FILE).read_text())["file"])
    return None


def check_repository(repo: str | Path, artifacts: str | Path, models: list[str] | None = None) -> RepositoryCheck:
    """Check the named models of ``repo`` (default: every directory with a config.pbtxt), written from
    ``artifacts`` (the graphs themselves are read from the repository)."""
    repo = Path(repo)
    report = RepositoryCheck()
    names = models if models is not None else sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    for name in names:
        try:
            config = parse_config(repo / name / "config.pbtxt")
            graph = _graph(repo / name, config)
        except Exception as exc:  # ParseError, OSError, a bad runtime file: reported, the other models still checked
            report.problems.append(f"{name}: config.pbtxt or its model files do not read back (Triton's ModelConfig schema): {exc}")
            continue
        if graph is None:
            continue
        if not graph.is_file():
            report.problems.append(f"{name}: {graph} is missing")
            continue
        found = _compare_io(config, *onnx_io(graph), "ONNX graph")
        report.problems += [f"{name}: {p}" for p in found]
        if not found:
            report.checked.append(f"{name}: config matches the I/O of {graph.name}")
    report.checked.insert(0, f"{len(names)} config.pbtxt parsed with Triton's ModelConfig schema")
    return report
