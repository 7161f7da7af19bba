"""The manifest as a validated contract (issue 14: "Manifest fields", "Integrity"; issue 13: one typed manifest).

Every manifest here was written by the product's own export (session fixtures); each test tampers a
copy the way a user or an attacker would and asserts the message (manifest file + JSON path), the
exit code of the real CLI (2: bad input) and that no traceback escapes.
"""

from __future__ import annotations

import json
import re
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from runtime_fixtures import Exported, photo, rt_cls  # noqa: F401
from validation_fixtures import calib_images, demo_int8_artifacts  # noqa: F401
from vitmsn.cli import group
from vitmsn.core.errors import InputError
from vitmsn.runtime.manifest import MANIFEST_NAME, Manifest

Tamper = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Tamper:
    """Set ``a.b[0].c`` in the manifest's JSON to ``value``."""
    def tamper(data: dict[str, Any]) -> None:
        keys: list[Any] = []
        for part in path.split("."):
            name, _, index = part.partition("[")
            keys.append(name)
            if index:
                keys.append(int(index.rstrip("]")))
        node: Any = data
        for key in keys[:-1]:
            node = node[key]
        node[keys[-1]] = value
    return tamper


def _labels(data: dict[str, Any], labels: dict[str, str]) -> None:
    data["labels"] = labels


# (case id, tamper, JSON path the message must name)
BAD_FIELDS: list[tuple[str, Tamper, str]] = [
    ("std-zero", _set("preprocess.image_std[1]", 0.0), "preprocess.image_std[1]"),
    ("std-denormal", _set("preprocess.image_std[0]", 1e-45), "preprocess.image_std[0]"),
    ("std-nan", _set("preprocess.image_std[2]", math.nan), "preprocess.image_std[2]"),
    ("std-string", _set("preprocess.image_std[0]", "0.2"), "preprocess.image_std[0]"),
    ("mean-two-values", _set("preprocess.image_mean", [0.5, 0.5]), "preprocess.image_mean"),
    ("mean-infinite", _set("preprocess.image_mean[0]", math.inf), "preprocess.image_mean[0]"),
    ("rescale-nan", _set("preprocess.rescale_factor", math.nan), "preprocess.rescale_factor"),
    ("size-zero", _set("preprocess.size.height", 0), "preprocess.size.height"),
    ("size-string", _set("preprocess.size.width", "48"), "preprocess.size.width"),
    ("size-does-not-fit-input", _set("preprocess.size", {"height": 32, "width": 32}), "preprocess.size"),
    ("resample-unknown", _set("preprocess.resample", 9), "preprocess.resample"),
    ("alpha-unknown", _set("preprocess.alpha", "blend"), "preprocess.alpha"),
    ("alpha-background-out-of-range", lambda d: d["preprocess"].update(alpha="composite", alpha_background=[255, 256, 0]),
     "preprocess.alpha_background[1]"),
    ("batch-string", _set("batch", "abc"), "batch"),
    ("batch-min-string", _set("batch.min", "abc"), "batch.min"),
    ("batch-order", _set("batch", {"min": 8, "opt": 4, "max": 16}), "batch"),
    ("batch-zero", _set("batch.min", 0), "batch.min"),
    ("batch-float", _set("batch.max", 8.5), "batch.max"),
    ("label-key-not-integer", lambda d: _labels(d, {**d["labels"], "x": "cat"}), "labels"),
    ("label-key-negative", lambda d: _labels(d, {"-1": "cat", **{str(i): f"c{i}" for i in range(5)}}), "labels"),
    ("labels-not-contiguous", lambda d: _labels(d, {str(i): f"c{i}" for i in (0, 1, 2, 3, 4, 6)}), "labels"),
    ("labels-vs-logits", lambda d: _labels(d, {str(i): f"c{i}" for i in range(5)}), "labels"),
    ("logits-1e9", _set("outputs[0].shape[1]", 10**9), "outputs[0].shape[1]"),
    ("inputs-empty", _set("inputs", []), "inputs"),
    ("input-not-image", _set("inputs[0].shape", ["batch", 48, 48]), "inputs[0].shape"),
    ("file-null", _set("precisions.fp32.file", None), "precisions.fp32.file"),
    ("file-parent", _set("precisions.fp32.file", "../model.fp32.onnx"), "precisions.fp32.file"),
    ("file-absolute", _set("precisions.fp32.file", "/etc/passwd"), "precisions.fp32.file"),
    ("flavour-file-parent", _set("precisions.fp32.onnxruntime_optimized.file", "../x.onnx"),
     "precisions.fp32.onnxruntime_optimized.file"),
    ("sha256-not-hex", _set("precisions.fp32.sha256", "abc"), "precisions.fp32.sha256"),
    ("precisions-empty", _set("precisions", {}), "precisions"),
    ("precision-unknown", lambda d: d["precisions"].__setitem__("fp64", d["precisions"]["fp32"]), "precisions"),
    ("engine-precision", _set("engines", [{"file": "e.plan", "sha256": "0" * 64, "precision": "fp64",
                                           "tensorrt_version": "10.13"}]), "engines[0].precision"),
    ("task-unknown", _set("model.task", "segmentation"), "model.task"),
    ("schema-future", _set("schema_version", 2), "schema_version"),
]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _tamper(root: Path, tamper: Tamper) -> Path:
    path = root / MANIFEST_NAME
    data = json.loads(path.read_text())
    tamper(data)
    path.write_text(json.dumps(data, indent=2))  # NaN/Infinity written as JSON's common extension, as a user might
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest_image") / "a.jpg"
    photo(96, 72, seed=3).save(path)
    return path


def _cli(*args: str) -> tuple[int, str]:
    # catch_exceptions=False: an exception escaping the command fails the test instead of becoming exit 1
    result = CliRunner().invoke(group, list(args), catch_exceptions=False)
    return result.exit_code, result.output


# ---- manifest fields ----------------------------------------------------------------------------
@pytest.mark.parametrize("case,tamper,where", BAD_FIELDS, ids=[c[0] for c in BAD_FIELDS])
def test_a_bad_field_is_refused_naming_file_and_field(rt_cls: Exported, image: Path, tmp_path: Path,  # noqa: F811
                                                      case: str, tamper: Tamper, where: str) -> None:
    root = _copy(rt_cls.artifacts, tmp_path / "art")
    manifest = _tamper(root, tamper)
    with pytest.raises(InputError) as info:
        Manifest.load(root)
    message = str(info.value)
    assert message.startswith(f"{manifest}: {where}:"), message
    assert "re-run vitmsn-export" in message or "re-export" in message
    for command in (["inspect", str(root)], ["predict", str(root), str(image), "--json"]):
        code, output = _cli(*command)
        assert code == 2 and f"{manifest}: {where}:" in output, (command, output)
    if case == "schema-future":
        assert "schema_version 2 is not supported" in message


def test_the_real_cli_exits_2_without_a_traceback(rt_cls: Exported, image: Path, tmp_path: Path) -> None:  # noqa: F811
    root = _copy(rt_cls.artifacts, tmp_path / "art")
    manifest = _tamper(root, _set("preprocess.image_std[0]", 0.0))
    exe = Path(sys.executable).with_name("vitmsn")
    for args in (["predict", str(root), str(image), "--json"], ["inspect", str(root), "--verify"]):
        proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr + proc.stdout and f"{manifest}: preprocess.image_std[0]:" in proc.stderr
        assert proc.stdout == ""  # no "score": NaN printed


def test_the_export_writes_what_the_types_read_back_unchanged(rt_cls: Exported, demo_int8_artifacts: Path) -> None:  # noqa: F811
    for root in (rt_cls.artifacts, demo_int8_artifacts):
        written = json.loads((root / MANIFEST_NAME).read_text())
        assert Manifest.load(root).to_json() == written  # no field lost, renamed or retyped in the round trip


# ---- integrity: every named file ------------------------------------------------------------------
def test_inspect_lists_and_verifies_every_named_file_including_cpu_flavours(demo_int8_artifacts: Path) -> None:  # noqa: F811
    m = Manifest.load(demo_int8_artifacts)
    named = {f.file for f in m.files()}
    assert {"model.fp32.onnx", "model.fp32.ort.onnx", "model.int8.onnx", "model.int8.cpu.onnx",
            "report.json", "report.md", "export.log"} <= named
    on_disk = {p.name for p in demo_int8_artifacts.iterdir()} - {MANIFEST_NAME}
    assert on_disk == named  # every file in the directory is named, every named file is there
    assert all(f.sha256 for f in m.files())
    code, output = _cli("inspect", str(demo_int8_artifacts), "--verify")
    assert code == 0 and "CPU flavour model.int8.cpu.onnx" in output and "CPU flavour model.fp32.ort.onnx" in output
    assert f"all {len(named)} files match their SHA-256" in output
    # 8 held-out images decide no int8 gate: one word, INCONCLUSIVE, in the status and the verdicts table, and
    # no "FAILED" beside the int8 graph (the drift gates' word is the verdicts table's)
    assert re.search(r"^status\s+INCONCLUSIVE", output, re.M) and "FAILED" not in output, output


def test_verify_catches_each_missing_swapped_or_corrupt_file(demo_int8_artifacts: Path, tmp_path: Path) -> None:  # noqa: F811
    root = _copy(demo_int8_artifacts, tmp_path / "art")
    files = sorted(p.name for p in root.iterdir() if p.name != MANIFEST_NAME)  # what is there, not what the code lists
    assert {"model.fp32.ort.onnx", "model.int8.cpu.onnx", "report.json", "export.log"} <= set(files)
    for name in files:
        path = root / name
        original = path.read_bytes()
        other = root / (files[1] if name == files[0] else files[0])
        other_bytes = other.read_bytes()
        for kind in ("missing", "corrupt", "swapped"):
            if kind == "missing":
                path.unlink()
            elif kind == "corrupt":
                path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit flipped, same size
            else:
                path.write_bytes(other_bytes)
                other.write_bytes(original)
            code, output = _cli("inspect", str(root), "--verify")
            assert code == 2, (name, kind, output)
            assert f"{kind.upper():9s} {name} (" in output and f"{kind}: {name}" in output, (name, kind, output)
            assert "all files match" not in output and "files match their SHA-256" not in output
            path.write_bytes(original)
            other.write_bytes(other_bytes)
    assert _cli("inspect", str(root), "--verify")[0] == 0


def test_the_cpu_runtime_refuses_a_corrupt_cpu_flavour(demo_int8_artifacts: Path, image: Path, tmp_path: Path) -> None:  # noqa: F811
    root = _copy(demo_int8_artifacts, tmp_path / "art")
    with open(root / "model.int8.cpu.onnx", "ab") as f:
        f.write(b"\0")
    # ONNX Runtime's CPU provider is what loads the CPU flavour (auto would take OpenVINO on an x86 CPU)
    code, output = _cli("predict", str(root), str(image), "--precision", "int8", "--backend", "onnxruntime")
    assert code == 2 and "model.int8.cpu.onnx: SHA-256" in output and "does not match the manifest" in output


def test_a_symbolic_link_out_of_the_directory_is_refused(rt_cls: Exported, image: Path, tmp_path: Path) -> None:  # noqa: F811
    root = _copy(rt_cls.artifacts, tmp_path / "art")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(root / "model.fp32.ort.onnx", outside)  # same bytes: the SHA-256 alone would pass it
    os.symlink(outside, root / "model.fp32.ort.onnx")
    code, output = _cli("inspect", str(root), "--verify")
    assert code == 2 and "OUTSIDE" in output and "symbolic link out of the artifacts directory is refused" in output
    code, output = _cli("predict", str(root), str(image), "--json", "--backend", "onnxruntime")  # loads the fused flavour
    assert code == 2 and "outside" in output and str(outside.resolve()) in output
    # a link whose target is inside the directory is an ordinary file of it
    (root / "model.fp32.ort.onnx").unlink()
    shutil.move(outside, root / "real.onnx")
    os.symlink("real.onnx", root / "model.fp32.ort.onnx")
    assert _cli("predict", str(root), str(image), "--json", "--backend", "onnxruntime")[0] == 0


def test_a_manifest_json_linked_from_outside_is_refused(rt_cls: Exported, tmp_path: Path) -> None:  # noqa: F811
    root = _copy(rt_cls.artifacts, tmp_path / "art")
    shutil.move(root / MANIFEST_NAME, tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", root / MANIFEST_NAME)
    code, output = _cli("inspect", str(root))
    assert code == 2 and "outside" in output


def test_a_parent_path_is_refused_even_when_the_file_exists(rt_cls: Exported, image: Path, tmp_path: Path) -> None:  # noqa: F811
    root = _copy(rt_cls.artifacts, tmp_path / "art")
    shutil.copy(root / "model.fp32.onnx", tmp_path / "model.fp32.onnx")  # there, with the recorded SHA-256
    manifest = _tamper(root, _set("precisions.fp32.file", "../model.fp32.onnx"))
    code, output = _cli("predict", str(root), str(image), "--json", "--backend", "onnxruntime")
    assert code == 2 and f"{manifest}: precisions.fp32.file: file path '../model.fp32.onnx'" in output


def test_a_shard_index_naming_a_parent_path_is_refused(tmp_path: Path) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint

    demo = Path(__file__).resolve().parents[1] / "export" / "demo" / "checkpoint"
    ck = tmp_path / "ck"
    ck.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(demo / name, ck / name)
    shutil.copy(demo / "model.safetensors", tmp_path / "model.safetensors")  # exists, outside the checkpoint
    index = ck / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"classifier.weight": "../model.safetensors"}}))
    with pytest.raises(InputError, match=r"weight_map\['classifier.weight'\] names '../model.safetensors'"):
        load_checkpoint(str(ck))


def test_an_export_whose_checkpoint_cannot_make_a_valid_manifest_writes_nothing(tmp_path: Path) -> None:
    from checkpoints import TINY_CONFIG, save_transformers
    from vitmsn.cli.export_cmd import command as export_command

    ck = tmp_path / "ck"
    size = int(TINY_CONFIG["image_size"])
    save_transformers(ck, preprocessor={"size": {"height": size, "width": size}, "image_std": [0.5, 1e-45, 0.5]},
                      **TINY_CONFIG)  # a denormal std turns every pixel into inf
    result = CliRunner().invoke(export_command, ["--model", str(ck), "--out", str(tmp_path / "o"), "--engine", "skip"],
                                catch_exceptions=False)
    assert result.exit_code == 2 and "preprocess.image_std[1]" in result.output and "preprocessor_config.json" in result.output
    assert not (tmp_path / "o").exists()
