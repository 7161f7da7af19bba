"""Verify a Triton model repository against Triton's own schema and the models' real I/O.

Every ``config.pbtxt`` is parsed with Triton's ``inference.ModelConfig`` protobuf message
(``tritonclient.grpc.model_config_pb2``; ``text_format.Parse`` rejects unknown fields and bad
enum values), then compared with the truth it describes:

* ``onnxruntime_onnx``: the copied model's real graph I/O (loaded with ``onnx``): names in
  order, element types, a symbolic first axis, the other dims; the file's SHA-256 is one the
  manifest records; ``max_batch_size`` within the exported batch range;
* ``tensorrt_plan``: the manifest's engine entry (same SHA-256) and its optimization profile:
  ``max_batch_size`` within the profile, profile shapes equal to the dims;
* ``python`` (preprocessing): ``model.py`` and ``preprocess.json`` equal to the manifest's block;
* ``python`` (inference): vitmsn's ``model.py``, ``runtime.json`` naming the copied graph's SHA-256,
  one the manifest records, and the config against that graph's real I/O as for ONNX;
* ``ensemble``: every step's model exists, every map names a real input/output of that model,
  every tensor is produced before it is consumed with the same type and dims;
* ``label_filename``: the file exists with one line per class.

Needs ``tritonclient[grpc]`` and ``onnx`` (test/export extras); :func:`missing_packages` says which
are absent so a caller can say so instead of failing.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitmsn.runtime.manifest import Manifest, sha256_file

from .triton import INFER_TEMPLATE, PREPROCESS_TEMPLATE, RUNTIME_FILE, TRITON_TYPES, VERSION, profile_batch


@dataclass
class RepositoryCheck:
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


def missing_packages() -> list[str]:
    needed = {"tritonclient.grpc.model_config_pb2": "tritonclient[grpc]", "onnx": "onnx"}
    missing = []
    for module, package in needed.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(package)
    return missing


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


def graph_digests(manifest: Manifest) -> set[str]:
    """SHA-256 of every ONNX graph the manifest records: precisions and their CPU-placed flavours."""
    digests = set()
    for entry in manifest.precisions.values():
        digests.add(entry.sha256)
        digests.update(f.sha256 for f in entry.flavours.values())
    return {d for d in digests if d}


def _tensors(config: Any, field_name: str) -> list[tuple[str, str, list[int]]]:
    return [(t.name, _type_name(config, t.data_type), list(t.dims)) for t in getattr(config, field_name)]


class _Checker:
    def __init__(self, repo: Path, manifest: Manifest, report: RepositoryCheck) -> None:
        self.repo, self.manifest, self.report = repo, manifest, report
        self.configs: dict[str, Any] = {}

    def problem(self, model: str, text: str) -> None:
        self.report.problems.append(f"{model}: {text}")

    def model_file(self, name: str, config: Any, default: str) -> Path | None:
        path = self.repo / name / VERSION / (config.default_model_filename or default)
        if not path.is_file():
            self.problem(name, f"{path} is missing")
            return None
        return path

    def batching(self, name: str, config: Any, low: int, high: int, source: str) -> None:
        if not low <= config.max_batch_size <= high:
            self.problem(name, f"max_batch_size {config.max_batch_size} outside {source} [{low}, {high}]")
        for size in config.dynamic_batching.preferred_batch_size:
            if not 1 <= size <= config.max_batch_size:
                self.problem(name, f"preferred_batch_size {size} outside [1, max_batch_size {config.max_batch_size}]")

    def labels(self, name: str, config: Any) -> None:
        for out in config.output:
            if out.label_filename:
                path = self.repo / name / out.label_filename
                lines = path.read_text().splitlines() if path.is_file() else None
                expected = [self.manifest.labels[i] for i in sorted(self.manifest.labels)]
                if lines != expected or (out.dims and len(lines) != out.dims[-1]):
                    self.problem(name, f"{out.label_filename}: missing or not one line per class of {out.name}")

    def compare_io(self, name: str, config: Any, inputs: list[Any], outputs: list[Any], source: str) -> None:
        for kind, got, truth in (("input", _tensors(config, "input"), inputs), ("output", _tensors(config, "output"), outputs)):
            if [t[0] for t in got] != [t[0] for t in truth]:
                self.problem(name, f"{kind} names {[t[0] for t in got]} != {source} {[t[0] for t in truth]}")
                continue
            for (tname, dtype, dims), (_, want_type, want_dims) in zip(got, truth):
                if dtype != want_type:
                    self.problem(name, f"{kind} {tname}: data_type {dtype} != {source} {want_type}")
                if not want_dims or isinstance(want_dims[0], int):
                    self.problem(name, f"{kind} {tname}: {source} first axis {want_dims[:1]} is not a symbolic batch axis")
                rest = [d if isinstance(d, int) else -1 for d in want_dims[1:]]
                if dims != rest:
                    self.problem(name, f"{kind} {tname}: dims {dims} != {source} {rest} (batch axis excluded)")

    # ---- per platform --------------------------------------------------------------------
    def check_onnx(self, name: str, config: Any) -> None:
        path = self.model_file(name, config, "model.onnx")
        if path is None:
            return
        self.onnx_graph(name, config, path)
        self.report.checked.append(f"{name}: onnxruntime_onnx config matches the ONNX graph's I/O")

    def onnx_graph(self, name: str, config: Any, path: Path) -> str:
        digest = sha256_file(path)
        if digest not in graph_digests(self.manifest):
            self.problem(name, f"{path.name} (SHA-256 {digest[:12]}...) is none of the manifest's ONNX models")
        inputs, outputs = onnx_io(path)
        self.compare_io(name, config, inputs, outputs, "ONNX graph")
        self.batching(name, config, 1, self.manifest.batch.max, "the exported batch range")
        self.labels(name, config)
        return digest

    def check_plan(self, name: str, config: Any) -> None:
        path = self.model_file(name, config, "model.plan")
        if path is None:
            return
        digest = sha256_file(path)
        engine = next((e for e in self.manifest.engines if e.sha256 == digest), None)
        if engine is None:
            self.problem(name, f"{path.name} (SHA-256 {digest[:12]}...) is none of the manifest's engines")
            return
        entry = self.manifest.precisions.get(engine.precision)
        dtype = TRITON_TYPES[engine.io_dtype or (entry.io_dtype if entry else None) or "float32"]
        inputs = [(t.name, dtype, list(t.shape)) for t in self.manifest.inputs]
        outputs = [(t.name, dtype, list(t.shape)) for t in self.manifest.outputs]
        self.compare_io(name, config, inputs, outputs, "engine I/O")
        batch = profile_batch(self.manifest, engine)
        self.batching(name, config, batch["min"], batch["max"], "the engine's optimization profile")
        for key, shape in (engine.profile.get(self.manifest.input_name) or {}).items():
            if isinstance(shape, (list, tuple)) and list(shape[1:]) != list(config.input[0].dims):
                self.problem(name, f"engine profile {key} shape {list(shape)} does not match dims {list(config.input[0].dims)}")
        if any(g.kind != 1 for g in config.instance_group):  # KIND_GPU == 1
            self.problem(name, "a TensorRT plan runs on the GPU; instance_group kind must be KIND_GPU")
        self.labels(name, config)
        self.report.checked.append(f"{name}: tensorrt_plan config matches engine {engine.file} and its profile")

    def check_python(self, name: str, config: Any) -> None:
        path = self.model_file(name, config, "model.py")
        if path is not None and path.read_bytes() == INFER_TEMPLATE.read_bytes():
            self.check_python_inference(name, config)
            return
        block = self.repo / name / VERSION / "preprocess.json"
        if path is not None and path.read_bytes() != PREPROCESS_TEMPLATE.read_bytes():
            self.problem(name, f"{path} differs from vitmsn's preprocessing model")
        if not block.is_file() or json.loads(block.read_text()) != self.manifest.preprocess.to_json():
            self.problem(name, f"{block} is missing or differs from the manifest's preprocess block")
        self.report.checked.append(f"{name}: python preprocessing model with the manifest's preprocess block")

    def check_python_inference(self, name: str, config: Any) -> None:
        spec_path = self.repo / name / VERSION / RUNTIME_FILE
        try:
            spec = json.loads(spec_path.read_text())
            graph = self.repo / name / VERSION / str(spec["file"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.problem(name, f"{spec_path}: missing or unreadable ({exc})")
            return
        if not graph.is_file():
            self.problem(name, f"{graph} is missing")
            return
        digest = self.onnx_graph(name, config, graph)
        if spec.get("sha256") != digest:
            self.problem(name, f"{RUNTIME_FILE} sha256 differs from {graph.name}'s")
        if any(g.kind != 2 for g in config.instance_group):  # KIND_CPU == 2
            self.problem(name, "vitmsn's Python inference model runs ONNX Runtime on CPU; instance_group kind must be KIND_CPU")
        self.report.checked.append(f"{name}: python inference model (vitmsn runtime) matches {graph.name}'s I/O")

    def check_ensemble(self, name: str, config: Any) -> None:
        if not (self.repo / name / VERSION).is_dir():
            self.problem(name, f"version directory {VERSION}/ is missing")
        available = {t[0]: t for t in _tensors(config, "input")}
        for step in config.ensemble_scheduling.step:
            model = self.configs.get(step.model_name)
            if model is None:
                self.problem(name, f"step model {step.model_name!r} is not in the repository")
                return
            if config.max_batch_size > model.max_batch_size:
                self.problem(name, f"max_batch_size {config.max_batch_size} > {step.model_name}'s {model.max_batch_size}")
            step_in = {t[0]: t for t in _tensors(model, "input")}
            step_out = {t[0]: t for t in _tensors(model, "output")}
            if set(step.input_map) != set(step_in):
                self.problem(name, f"{step.model_name}: input_map {sorted(step.input_map)} != its inputs {sorted(step_in)}")
            for key, tensor in step.input_map.items():
                if tensor not in available:
                    self.problem(name, f"{step.model_name}: input {key} <- {tensor!r}, which nothing produced before")
                elif key in step_in and available[tensor][1:] != step_in[key][1:]:
                    self.problem(name, f"{step.model_name}: input {key} is {step_in[key][1:]}, gets {available[tensor][1:]}")
            for key, tensor in step.output_map.items():
                if key not in step_out:
                    self.problem(name, f"{step.model_name}: output_map key {key!r} is not one of its outputs {sorted(step_out)}")
                else:
                    available[tensor] = (tensor,) + step_out[key][1:]
        for tname, dtype, dims in _tensors(config, "output"):
            if tname not in available:
                self.problem(name, f"output {tname} is produced by no step")
            elif available[tname][1:] != (dtype, dims):
                self.problem(name, f"output {tname} is declared {(dtype, dims)}, produced {available[tname][1:]}")
        self.report.checked.append(f"{name}: ensemble steps {[s.model_name for s in config.ensemble_scheduling.step]} connect")


def check_repository(repo: str | Path, artifacts: str | Path, models: list[str] | None = None) -> RepositoryCheck:
    """Check the named models of ``repo`` (default: every directory with a config.pbtxt)."""
    repo = Path(repo)
    report = RepositoryCheck()
    checker = _Checker(repo, Manifest.load(artifacts), report)
    names = models if models is not None else sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    for name in names:
        try:
            config = parse_config(repo / name / "config.pbtxt")
        except Exception as exc:  # ParseError, OSError: reported, the other models still checked
            checker.problem(name, f"config.pbtxt does not parse with Triton's ModelConfig schema: {exc}")
            continue
        if config.name != name:
            checker.problem(name, f"config name {config.name!r} differs from its directory name")
        checker.configs[name] = config
    report.checked.append(f"{len(checker.configs)} config.pbtxt parsed with Triton's ModelConfig schema")
    order = {"onnxruntime_onnx": 0, "tensorrt_plan": 0, "": 1, "ensemble": 2}
    for name, config in sorted(checker.configs.items(), key=lambda kv: order.get(kv[1].platform, 1)):
        if config.platform == "onnxruntime_onnx":
            checker.check_onnx(name, config)
        elif config.platform == "tensorrt_plan":
            checker.check_plan(name, config)
        elif config.platform == "ensemble":
            checker.check_ensemble(name, config)
        elif config.backend == "python":
            checker.check_python(name, config)
        else:
            checker.problem(name, f"unexpected platform {config.platform!r} / backend {config.backend!r}")
    return report
