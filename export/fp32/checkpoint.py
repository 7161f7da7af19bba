"""Checkpoint loading: a local Hugging Face directory, a hub id (found or downloaded by :mod:`.hub`), or ``demo``.

Weights are read without unpickling untrusted data: safetensors first (single file or sharded
with an index), then ``pytorch_model.bin`` with ``torch.load(weights_only=True)``.

Two key-naming schemes are accepted, with or without the ``vit.`` prefix (and with the prefix
mixed, as transformers 5.x's ``save_pretrained`` writes for ViTMSNForImageClassification):

* transformers 4.x (the published ``facebook/vit-msn-*`` checkpoints and what 5.x writes on
  disk): ``encoder.layer.N.attention.attention.query``, ``intermediate.dense``, ``output.dense``;
* transformers 5.x in-memory names: ``layers.N.attention.q_proj``, ``mlp.fc1``, ``mlp.fc2``.

Every problem raises :class:`InputError` naming the file and the offending keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from vitmsn.core.errors import InputError
from vitmsn.runtime.images.preprocess import DEFAULT_PREPROCESSOR_CONFIG, PreprocessConfig
from vitmsn.runtime.manifest.fields import label_control_character

from vitmsn.export.fp32.hub import hub_revision, resolve_source
from vitmsn.export.fp32.model import EXPORT_ATTENTION, Attention, ViTMSNArch, ViTMSNBackbone, ViTMSNClassifier
from vitmsn.export.fp32.spec import Task

log = logging.getLogger(__name__)

ACCEPTED_MODEL_TYPES = ("vit_msn", "vit")
# Tensors some published checkpoints carry that inference does not use.
IGNORED_KEYS = ("embeddings.mask_token",)

_RENAMES_5X = [
    (re.compile(r"^layers\.(\d+)\.attention\.q_proj\."), r"encoder.layer.\1.attention.attention.query."),
    (re.compile(r"^layers\.(\d+)\.attention\.k_proj\."), r"encoder.layer.\1.attention.attention.key."),
    (re.compile(r"^layers\.(\d+)\.attention\.v_proj\."), r"encoder.layer.\1.attention.attention.value."),
    (re.compile(r"^layers\.(\d+)\.attention\.o_proj\."), r"encoder.layer.\1.attention.output.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc1\."), r"encoder.layer.\1.intermediate.dense."),
    (re.compile(r"^layers\.(\d+)\.mlp\.fc2\."), r"encoder.layer.\1.output.dense."),
    (re.compile(r"^layers\.(\d+)\."), r"encoder.layer.\1."),
]


@dataclass
class Checkpoint:
    """A loaded checkpoint: where it came from, its architecture, weights and preprocessing."""

    source: str
    directory: Path
    config: dict[str, Any]
    arch: ViTMSNArch
    task: Task
    state_dict: dict[str, torch.Tensor]
    preprocess: PreprocessConfig
    preprocess_source: str
    labels: dict[int, str]
    sha256: str
    weight_files: list[str] = field(default_factory=list)
    revision: str | None = None  # the hub commit hash, when the checkpoint came from the Hugging Face cache

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.task == "image-classification" else 0

    def build_model(self, attention: Attention = EXPORT_ATTENTION) -> torch.nn.Module:
        """The PyTorch model with these weights, in eval mode."""
        if self.task == "image-classification":
            model: torch.nn.Module = ViTMSNClassifier(self.arch, self.num_labels, attention)
        else:
            model = ViTMSNBackbone(self.arch, attention)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()


# ---- reading -------------------------------------------------------------------------------
MAX_JSON_BYTES = 64 * 1024 * 1024  # config.json, preprocessor_config.json, shard indexes: a few KB to MB


def _read_json(path: Path) -> dict[str, Any]:
    try:
        if path.is_file() and path.stat().st_size > MAX_JSON_BYTES:
            raise InputError(f"{path}: {path.stat().st_size} bytes, over the {MAX_JSON_BYTES}-byte limit for a JSON "
                             "config; this is not a checkpoint's config file")
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _load_safetensors(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{f}: not a readable safetensors file ({exc})") from exc
    return tensors


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the files' headers (no tensor data read)."""
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    shapes[key] = tuple(fh.get_slice(key).get_shape())
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{f}: not a readable safetensors file ({exc})") from exc
    return shapes


def _load_bin(files: list[Path]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            data = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle errors, zip errors, refused globals
            raise InputError(f"{f}: cannot be loaded safely with torch.load(weights_only=True) ({exc}); convert it to safetensors") from exc
        if not isinstance(data, dict):
            raise InputError(f"{f}: expected a state dict, found {type(data).__name__}")
        not_tensors = sorted(str(k) for k, v in data.items() if not isinstance(v, torch.Tensor))
        if not_tensors:
            raise InputError(f"{f}: entries that are not tensors: {', '.join(not_tensors[:12])}")
        tensors.update(data)
    return tensors


def _weight_files(directory: Path) -> tuple[list[Path], str]:
    for index_name, kind in (("model.safetensors.index.json", "safetensors"), ("pytorch_model.bin.index.json", "bin")):
        index = directory / index_name
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise InputError(f"{index}: no weight_map")
            for tensor, name in weight_map.items():
                # a shard is a file beside the index: "../x" or "/etc/x" would read outside the checkpoint
                # (the Hugging Face cache's own symbolic links to its blobs are files beside the index, and stay allowed)
                parts = PurePosixPath(name).parts if isinstance(name, str) else ()
                if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
                    raise InputError(f"{index}: weight_map[{tensor!r}] names {name!r}; shard files must be plain "
                                     "relative names inside the checkpoint directory")
            shards = sorted({directory / name for name in weight_map.values()})
            missing = [s.name for s in shards if not s.is_file()]
            if missing:
                raise InputError(f"{index}: shard files missing: {', '.join(missing)}")
            return shards, kind
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"], "safetensors"
    if (directory / "pytorch_model.bin").is_file():
        return [directory / "pytorch_model.bin"], "bin"
    raise InputError(f"{directory}: no weights found (expected model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin)")


def canonical_key(key: str) -> str:
    """Map any accepted name to our module's name, without the ``vit.`` prefix."""
    if key.startswith("vit."):
        key = key[4:]
    for pattern, repl in _RENAMES_5X:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


def _canonical_state(raw: dict[str, Any], files: list[Path]) -> dict[str, Any]:
    """``raw`` (tensors or their shapes) under canonical names, ignored keys dropped."""
    out: dict[str, Any] = {}
    where = ", ".join(f.name for f in files)
    for key, value in raw.items():
        name = canonical_key(key)
        if name in IGNORED_KEYS:
            continue
        if name in out:
            raise InputError(f"{where}: tensor {key!r} appears twice under different names")
        out[name] = value
    return out


def _check_against(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k} (checkpoint {found[k]}, config expects {expected[k]})"
        for k in set(expected) & set(found)
        if expected[k] != found[k]
    )
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:12])}{' ...' if len(unexpected) > 12 else ''}")
    if shapes:
        problems.append(f"mis-shaped tensors: {'; '.join(shapes[:12])}")
    if problems:
        raise InputError(f"{where}: weights do not match config.json: " + " | ".join(problems))


def _task_and_labels(config: dict[str, Any], config_path: Path, arch: ViTMSNArch, shapes: dict[str, tuple[int, ...]],
                     where: str) -> tuple[Task, dict[int, str]]:
    """The task and labels, once the weights' shapes (not yet their data) match config.json.

    Nothing is allocated from config.json's sizes: the expected shapes are computed
    (``ViTMSNArch.parameter_shapes``), so a config claiming 10^6 layers fails here, by name."""
    if "classifier.weight" not in shapes:
        _check_against(arch.parameter_shapes(), shapes, where)
        return "feature-extraction", {}
    classifier = shapes["classifier.weight"]
    if len(classifier) != 2 or classifier[0] < 1:
        raise InputError(f"{where}: classifier.weight has shape {classifier}; expected (num_labels, hidden_size)")
    num_labels = int(classifier[0])
    id2label = config.get("id2label") or {}
    if not isinstance(id2label, dict):
        raise InputError(f"{config_path}: id2label must be an object mapping class ids to names")
    try:
        labels = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError) as exc:
        raise InputError(f"{config_path}: id2label keys must be integers ({exc})") from exc
    if not labels:
        labels = {i: f"LABEL_{i}" for i in range(num_labels)}
    if sorted(labels) != list(range(num_labels)):
        raise InputError(
            f"{config_path}: id2label has {len(labels)} labels but the classifier in {where} has {num_labels} outputs"
        )
    for i, label in sorted(labels.items()):  # labels.txt, Triton and logs show one label per line
        bad = label_control_character(label)
        if bad is not None:
            raise InputError(f"{config_path}: id2label {i} {label!r} holds the control character {bad}; "
                             "labels must fit on one line: edit id2label")
    _check_against(arch.parameter_shapes(num_labels), shapes, where)
    return "image-classification", labels


def _fingerprint(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def load_checkpoint(source: str, option: str = "--model", revision: str | None = None) -> Checkpoint:
    directory = resolve_source(source, option, revision)
    config_path = directory / "config.json"
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type not in ACCEPTED_MODEL_TYPES:
        raise InputError(f"{config_path}: model_type {model_type!r} is not a ViTMSN (expected 'vit_msn')")
    try:
        arch = ViTMSNArch.from_config(config)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{config_path}: {exc}; fix the value or re-save the checkpoint") from exc

    files, kind = _weight_files(directory)
    where = ", ".join(str(f) for f in files)
    if kind == "safetensors":  # shapes from the headers: checked before any tensor is read
        task, labels = _task_and_labels(config, config_path, arch, _canonical_state(_safetensors_shapes(files), files), where)
        state = _canonical_state(_load_safetensors(files), files)
    else:  # a pickle has no header: the weights are loaded (their own size), then checked
        state = _canonical_state(_load_bin(files), files)
        task, labels = _task_and_labels(config, config_path, arch, {k: tuple(v.shape) for k, v in state.items()}, where)
    if task == "image-classification":
        state = {k if k.startswith("classifier.") else "vit." + k: v for k, v in state.items()}
    bad_dtype = sorted(k for k, v in state.items() if not v.is_floating_point())
    if bad_dtype:
        raise InputError(f"{where}: non-floating-point tensors: {', '.join(bad_dtype)}")
    state = {k: v.to(torch.float32) for k, v in state.items()}

    pre_path = directory / "preprocessor_config.json"
    if pre_path.is_file():
        preprocess = PreprocessConfig.from_preprocessor_config(_read_json(pre_path), source=str(pre_path))
        preprocess_source = "preprocessor_config.json"
    else:
        log.warning("%s: no preprocessor_config.json; using ViTImageProcessor defaults (resize %dx%d bilinear, mean/std 0.5)",
                    directory, arch.image_size, arch.image_size)
        defaults = dict(DEFAULT_PREPROCESSOR_CONFIG, size={"height": arch.image_size, "width": arch.image_size})
        preprocess = PreprocessConfig.from_preprocessor_config(defaults, source="defaults")
        preprocess_source = "default (ViTImageProcessor defaults; no preprocessor_config.json)"
    if (preprocess.height, preprocess.width) != (arch.image_size, arch.image_size):
        raise InputError(
            f"{pre_path}: resizes to {preprocess.height}x{preprocess.width} but config.json image_size is {arch.image_size}"
        )
    return Checkpoint(
        source=source, directory=directory, config=config, arch=arch, task=task, state_dict=state,
        preprocess=preprocess, preprocess_source=preprocess_source, labels=labels,
        sha256=_fingerprint(files), weight_files=[f.name for f in files], revision=hub_revision(directory),
    )
