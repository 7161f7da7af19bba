"""A Triton Inference Server model repository from an artifacts directory.

Everything is derived from ``manifest.json`` (names, dtypes, shapes, batch profile, labels,
preprocessing); :mod:`vitmsn.serving.triton_check` then verifies the written configs against
Triton's own protobuf schema and the models' real I/O. Layout, for ``--name vitmsn``::

    REPO/vitmsn_onnx/config.pbtxt        platform "onnxruntime_onnx"
    REPO/vitmsn_onnx/labels.txt          class names, for Triton's classification extension
    REPO/vitmsn_onnx/1/model.onnx        (on CPU instances: the CPU-placed graph, where there is one)
    REPO/vitmsn_tensorrt/config.pbtxt    platform "tensorrt_plan" (when a TensorRT engine exists)
    REPO/vitmsn_tensorrt/1/model.plan
    REPO/vitmsn_python/config.pbtxt      backend "python": the same graph run by vitmsn's runtime
    REPO/vitmsn_python/1/model.py        (+ model.onnx, runtime.json; with --format python)
    REPO/vitmsn_preprocess/config.pbtxt  backend "python": encoded image bytes -> pixel_values
    REPO/vitmsn_preprocess/1/model.py    (+ preprocess.json, the manifest's preprocess block)
    REPO/vitmsn/config.pbtxt             platform "ensemble": preprocess -> --inference (default:
                                         TensorRT, else ONNX, else Python)
    REPO/vitmsn/1/                       (empty; Triton wants a version directory)

Each model directory is written beside its final place and renamed into it, so Triton never
sees a half-written model; existing model directories are replaced only with ``force``.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitmsn.core.errors import InputError
from vitmsn.core.interrupts import deferred
from vitmsn.runtime.manifest import EngineEntry, Manifest

from .pbtxt import Enum, to_pbtxt
from .triton_python import check_env, env_parameters, python_inference_config
from .triton_sources import (ServedGraph, check_gates, check_one_line_labels, checked_output_dims, labels_text,
                             served_graph)

# numpy dtype names (as the manifest writes them) -> Triton data types.
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
}
FORMATS = ("onnx", "plan", "python")
PLATFORMS = {"onnx": "onnxruntime_onnx", "plan": "tensorrt_plan"}
MODEL_FILES = {"onnx": "model.onnx", "plan": "model.plan", "python": "model.onnx"}
MODEL_SUFFIXES = {"onnx": "onnx", "plan": "tensorrt", "python": "python"}
IMAGE_INPUT = "IMAGE"  # the ensemble's input: one encoded image (JPEG, PNG, ...) per batch item
VERSION = "1"
LABELS_FILE = "labels.txt"
PREPROCESS_TEMPLATE = Path(__file__).with_name("triton_preprocess.py")
INFER_TEMPLATE = Path(__file__).with_name("triton_infer.py")
RUNTIME_FILE = "runtime.json"
# Engines Triton's TensorRT backend can load; TensorRT-RTX engines need the TensorRT-RTX runtime.
TRITON_ENGINE_TARGETS = ("tensorrt",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class TritonOptions:
    name: str = "vitmsn"
    precision: str = "fp32"
    formats: tuple[str, ...] = ()  # empty: ONNX, plus the plan when a TensorRT engine exists
    inference: str | None = None  # the model the ensemble runs (onnx | plan | python); written too
    engine_file: str | None = None  # which engine, when several match the precision
    max_batch_size: int | None = None  # default: the engine profile's max (ONNX: the manifest's batch max)
    preferred_batch_sizes: tuple[int, ...] = ()  # default: the profile's opt and max
    max_queue_delay_us: int = 500
    instances: int = 1
    onnx_device: str = "cpu"  # cpu | gpu (a plan always runs on the GPU)
    ensemble: bool = True
    force: bool = False
    python_env: str | None = None  # EXECUTION_ENV_PATH of the Python-backend models
    python_threads: int | None = None  # ONNX Runtime intra-op threads of the Python inference model
    allow_failed_gates: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise InputError(f"--name {self.name!r}: use letters, digits, '_', '.', '-' (a Triton model name)")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise InputError(f"--format {unknown[0]}: choose from {', '.join(FORMATS)}")
        if self.inference is not None and self.inference not in FORMATS:
            raise InputError(f"--inference {self.inference}: choose from {', '.join(FORMATS)}")
        if self.python_env is not None and (not self.python_env or any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.python_env)):
            raise InputError(f"--python-env {self.python_env!r}: give a path without control characters")
        if self.python_threads is not None and self.python_threads < 1:
            raise InputError(f"--python-threads {self.python_threads}: must be at least 1")
        if self.onnx_device not in ("cpu", "gpu"):
            raise InputError(f"--onnx-device {self.onnx_device}: choose cpu or gpu")
        if self.instances < 1:
            raise InputError(f"--instances {self.instances}: must be at least 1")
        if self.max_queue_delay_us < 0:
            raise InputError(f"--queue-delay-us {self.max_queue_delay_us}: must be >= 0")
        if self.max_batch_size is not None and self.max_batch_size < 1:
            raise InputError(f"--max-batch {self.max_batch_size}: must be at least 1")


@dataclass(frozen=True)
class TritonModel:
    name: str
    kind: str  # onnx | plan | python | preprocess | ensemble
    directory: Path
    config: dict[str, Any]


@dataclass
class TritonRepository:
    root: Path
    models: list[TritonModel] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def model(self, kind: str) -> TritonModel | None:
        return next((m for m in self.models if m.kind == kind), None)


# ---- what the manifest says ----------------------------------------------------------------
def triton_type(dtype: str, where: str) -> str:
    if dtype not in TRITON_TYPES:
        raise InputError(f"{where}: dtype {dtype!r} has no Triton data type")
    return TRITON_TYPES[dtype]


def _dims(shape: list[Any], where: str) -> list[int]:
    """Dims without the batch axis; any other symbolic axis becomes -1 (variable)."""
    if not shape or not isinstance(shape[0], str):
        raise InputError(f"{where}: first axis {shape[:1]} is not the symbolic batch axis; Triton batching needs one")
    return [d if isinstance(d, int) else -1 for d in shape[1:]]


def _io_dtype(manifest: Manifest, precision: str, engine: EngineEntry | None = None) -> str:
    entry = manifest.precisions.get(precision)
    return (engine.io_dtype if engine else None) or (entry.io_dtype if entry else None) or manifest.input.dtype


def _tensors(manifest: Manifest, key: str, dtype: str) -> list[dict[str, Any]]:
    tensors = []
    for t in (manifest.inputs if key == "inputs" else manifest.outputs):
        where = f"{manifest.root / 'manifest.json'}: {key[:-1]} {t.name}"
        if not _NAME.match(t.name):
            raise InputError(f"{where}: name is not usable in a Triton config")
        tensors.append({"name": t.name, "data_type": Enum(triton_type(dtype, where)),
                        "dims": _dims(list(t.shape), where)})
    return tensors


def select_engine(manifest: Manifest, options: TritonOptions, notes: list[str]) -> EngineEntry | None:
    """The TensorRT engine for ``options.precision`` that Triton can load, or None."""
    engines = [e for e in manifest.engines if e.precision == options.precision]
    if options.engine_file is not None:
        chosen = [e for e in manifest.engines if e.file == options.engine_file]
        if not chosen:
            have = ", ".join(e.file for e in manifest.engines) or "none"
            raise InputError(f"--engine {options.engine_file}: not an engine in the manifest (it has: {have})")
        engines = chosen
    loadable = [e for e in engines if e.target in TRITON_ENGINE_TARGETS]
    for e in engines:
        if e not in loadable:
            notes.append(f"skipped {e.file}: target {e.target!r} is not loadable by Triton's "
                         "TensorRT backend (it needs the TensorRT runtime Triton ships)")
    if len(loadable) > 1:
        files = ", ".join(e.file for e in loadable)
        raise InputError(f"{manifest.root}: several {options.precision} engines ({files}); choose one with --engine FILE")
    return loadable[0] if loadable else None


def profile_batch(manifest: Manifest, engine: EngineEntry | None) -> dict[str, int]:
    """Batch min/opt/max: the engine's optimization profile for the input, else the manifest's ``batch``."""
    if engine is not None:
        profile = engine.profile.get(manifest.input_name)
        if profile:
            def first(v: Any) -> int:
                return int(v[0]) if isinstance(v, (list, tuple)) else int(v)
            return {k: first(profile[k]) for k in ("min", "opt", "max")}
    return manifest.batch.to_json()


# ---- configs -------------------------------------------------------------------------------
def _batching(max_batch: int, batch: dict[str, int], options: TritonOptions) -> dict[str, Any]:
    preferred = options.preferred_batch_sizes or tuple(sorted({min(batch["opt"], max_batch), max_batch}))
    bad = [b for b in preferred if not 1 <= b <= max_batch]
    if bad:
        raise InputError(f"--preferred-batch {bad[0]}: must be between 1 and max_batch_size {max_batch}")
    return {"preferred_batch_size": sorted(set(preferred)), "max_queue_delay_microseconds": options.max_queue_delay_us}


def inference_config(manifest: Manifest, fmt: str, name: str, max_batch: int, batch: dict[str, int],
                     options: TritonOptions, engine: EngineEntry | None = None,
                     output_dims: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """``output_dims``: the outputs' real dims (from the graph); default: the manifest's."""
    dtype = _io_dtype(manifest, options.precision, engine)
    outputs = _tensors(manifest, "outputs", dtype)
    for out in outputs:
        if output_dims is not None:
            out["dims"] = list(output_dims[out["name"]])
    if manifest.task == "image-classification" and manifest.labels:
        for out in outputs:
            if out["name"] == "logits":
                out["label_filename"] = LABELS_FILE
    kind = "KIND_GPU" if fmt == "plan" or options.onnx_device == "gpu" else "KIND_CPU"
    return {
        "name": name,
        "platform": PLATFORMS[fmt],
        "max_batch_size": max_batch,
        "input": _tensors(manifest, "inputs", dtype),
        "output": outputs,
        "dynamic_batching": _batching(max_batch, batch, options),
        "instance_group": [{"count": options.instances, "kind": Enum(kind)}],
        "default_model_filename": MODEL_FILES[fmt],
    }


def preprocess_config(manifest: Manifest, name: str, target: dict[str, Any], options: TritonOptions) -> dict[str, Any]:
    pixel = target["input"][0]
    size = manifest.preprocess.to_json()["size"]
    if list(pixel["dims"][-2:]) != [int(size["height"]), int(size["width"])]:
        raise InputError(f"{manifest.root / 'manifest.json'}: preprocess size {size} does not match input dims {pixel['dims']}")
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": target["max_batch_size"],
        "input": [{"name": IMAGE_INPUT, "data_type": Enum("TYPE_STRING"), "dims": [1]}],
        "output": [dict(pixel)],
        "dynamic_batching": {"max_queue_delay_microseconds": options.max_queue_delay_us},
        "instance_group": [{"count": options.instances, "kind": Enum("KIND_CPU")}],
        "parameters": env_parameters(options.python_env),
    }


def ensemble_config(name: str, preprocess: dict[str, Any], target: dict[str, Any]) -> dict[str, Any]:
    pixel = target["input"][0]["name"]
    outputs = [{k: v for k, v in out.items() if k != "label_filename"} for out in target["output"]]
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": min(preprocess["max_batch_size"], target["max_batch_size"]),
        "input": [dict(preprocess["input"][0])],
        "output": outputs,
        "ensemble_scheduling": {"step": [
            {"model_name": preprocess["name"], "model_version": -1,
             "input_map": [{"key": IMAGE_INPUT, "value": IMAGE_INPUT}],
             "output_map": [{"key": preprocess["output"][0]["name"], "value": pixel}]},
            {"model_name": target["name"], "model_version": -1,
             "input_map": [{"key": pixel, "value": pixel}],
             "output_map": [{"key": o["name"], "value": o["name"]} for o in outputs]},
        ]},
    }


# ---- writing -------------------------------------------------------------------------------
def _write_model(repo: Path, config: dict[str, Any], files: dict[str, Path | str], force: bool) -> Path:
    """Write one model directory (config.pbtxt plus ``files``: relative name -> source path or text)."""
    final = repo / config["name"]
    if final.exists() and not force:
        raise InputError(f"{final}: already exists; pass --force to replace it")
    staging = Path(tempfile.mkdtemp(prefix=f".{config['name']}.", suffix=".partial", dir=repo))
    try:
        (staging / VERSION).mkdir()
        (staging / "config.pbtxt").write_text(to_pbtxt(config))
        for rel, source in files.items():
            if isinstance(source, Path):
                shutil.copyfile(source, staging / rel)
            else:
                (staging / rel).write_text(source)
        staging.chmod(0o755)
        with deferred():  # an interrupt between these two must not lose the model that was there
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _formats(options: TritonOptions, has_onnx: bool, has_engine: bool) -> tuple[str, ...]:
    if options.formats:
        wanted = set(options.formats) | ({options.inference} if options.inference else set())
    elif options.inference:
        wanted = {options.inference}
    else:
        wanted = ({"onnx"} if has_onnx else set()) | ({"plan"} if has_engine else set())
    return tuple(f for f in FORMATS if f in wanted)


def write_triton_repository(artifacts: str | Path, repo: str | Path,
                            options: TritonOptions = TritonOptions()) -> TritonRepository:
    """Write the model repository; return what was written. Raises InputError on bad input."""
    manifest = Manifest.load(artifacts)
    root = Path(repo)
    if root.exists() and not root.is_dir():
        raise InputError(f"--repo {root}: exists and is not a directory")
    result = TritonRepository(root)
    onnx_entry = manifest.precisions.get(options.precision)
    engine = select_engine(manifest, options, result.notes)
    formats = _formats(options, onnx_entry is not None, engine is not None)
    if not formats or (set(formats) & {"onnx", "python"} and onnx_entry is None):
        manifest.onnx_path(options.precision)  # raises, naming what the manifest has
        raise InputError(f"{manifest.root}: nothing to serve for precision {options.precision}")
    if "plan" in formats and engine is None:
        raise InputError(f"--format plan: {manifest.root} has no {options.precision} TensorRT engine Triton can load")
    check_gates(manifest, options.precision, options.allow_failed_gates, result.notes)
    check_one_line_labels(manifest)
    planned = [f"{options.name}_{MODEL_SUFFIXES[f]}" for f in formats]
    planned += [f"{options.name}_preprocess", options.name] if options.ensemble else []
    existing = [n for n in planned if (root / n).exists()]
    if existing and not options.force:
        raise InputError(f"--repo {root}: model directories {', '.join(existing)} already exist; pass --force to replace them")
    if options.python_env:
        needs = ("vitmsn", "pillow") + (("onnxruntime",) if "python" in formats else ())
        result.warnings.extend(check_env(options.python_env, needs))

    # What each model serves, and the outputs' real dims, before anything is written.
    graphs = {fmt: served_graph(manifest, options.precision, fmt == "python" or options.onnx_device == "cpu",
                                result.notes) for fmt in formats if fmt != "plan"}
    served = graphs[min(graphs)] if graphs else None
    if served is None and onnx_entry is not None and manifest.onnx_path(options.precision).is_file():
        served = ServedGraph(onnx_entry.file, onnx_entry.sha256, False)  # a plan's source graph
    reference = manifest.verify_file(served.file, served.sha256) if served else None  # read once it verifies
    dims = checked_output_dims(manifest, reference) if reference is not None else None
    root.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        batch = profile_batch(manifest, engine if fmt == "plan" else None)
        max_batch = options.max_batch_size or batch["max"]
        if max_batch > batch["max"]:
            raise InputError(f"--max-batch {max_batch}: above the {'engine profile' if fmt == 'plan' else 'exported batch'} "
                             f"maximum {batch['max']}")
        name = f"{options.name}_{MODEL_SUFFIXES[fmt]}"
        config = inference_config(manifest, "onnx" if fmt == "python" else fmt, name, max_batch, batch, options,
                                  engine if fmt == "plan" else None, dims)
        if fmt == "plan":
            assert engine is not None
            files: dict[str, Path | str] = {f"{VERSION}/{MODEL_FILES[fmt]}": manifest.verify(engine)}
        else:
            graph = graphs[fmt]
            files = {f"{VERSION}/{MODEL_FILES[fmt]}": manifest.verify_file(graph.file, graph.sha256)}
        if fmt == "python":
            config = python_inference_config(config, name, options.instances, options.python_env)
            files[f"{VERSION}/model.py"] = INFER_TEMPLATE
            files[f"{VERSION}/{RUNTIME_FILE}"] = json.dumps({
                "runtime": "onnxruntime", "precision": options.precision, "file": MODEL_FILES[fmt],
                "source": graphs[fmt].file, "sha256": graphs[fmt].sha256, "threads": options.python_threads},
                indent=2) + "\n"
        if any("label_filename" in o for o in config["output"]):
            logits = next(o for o in config["output"] if o["name"] == "logits")
            if dims is None:  # no graph to read the class count from: no labels file
                for out in config["output"]:
                    out.pop("label_filename", None)
                result.notes.append(f"{name}: no ONNX graph in the artifacts to count classes from; no {LABELS_FILE}")
            else:
                files[LABELS_FILE] = labels_text(manifest, logits["dims"][0])
        result.models.append(TritonModel(name, fmt, _write_model(root, config, files, options.force), config))

    if options.ensemble:
        chosen = options.inference or next(f for f in ("plan", "onnx", "python") if f in formats)
        target = result.model(chosen)
        assert target is not None
        pre = preprocess_config(manifest, f"{options.name}_preprocess", target.config, options)
        pre_files: dict[str, Path | str] = {
            f"{VERSION}/model.py": PREPROCESS_TEMPLATE,
            f"{VERSION}/preprocess.json": json.dumps(manifest.preprocess.to_json(), indent=2) + "\n",
        }
        result.models.append(TritonModel(pre["name"], "preprocess", _write_model(root, pre, pre_files, options.force), pre))
        ens = ensemble_config(options.name, pre, target.config)
        result.models.append(TritonModel(ens["name"], "ensemble", _write_model(root, ens, {}, options.force), ens))
    return result
