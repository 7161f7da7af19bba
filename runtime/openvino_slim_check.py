"""Does this OpenVINO package directory still do what vitmsn's CPU runner needs? Run as a script.

    python -P openvino_slim_check.py /path/to/site-packages/openvino

``vitmsn.runtime.openvino_slim`` runs it in a fresh interpreter (with the package's parent first on
PYTHONPATH) before it moves anything and again after, with the removed files set aside. It checks,
in that interpreter:

1. ``import openvino`` comes from that directory, and every ``openvino.*`` submodule too
   (:func:`import_only_from`: OpenVINO's ``__init__`` extends its ``__path__`` with every other
   ``openvino`` folder on ``sys.path``, so without the guard a removed Python subpackage would be found
   in another install and the check would pass on files the directory no longer has);
2. ``Core().available_devices`` lists ``CPU``;
3. a tiny ONNX model (MatMul, Add, Relu, symbolic batch; written here byte by byte, no onnx package)
   is read by the ONNX frontend, compiled on ``CPU`` with f32 inference precision and run, and its
   output equals numpy's exactly (small integers: exact in float32 and bfloat16 alike);
4. the same model saved as OpenVINO IR is read back by the IR frontend, compiled and run, same output;
5. every OpenVINO shared library mapped into the process (``/proc/self/maps``) lies inside the directory.

Prints one JSON line (version, devices, frontends, libraries) and exits 0; on any failure prints the
reason to stderr and exits 1. Imports only the standard library and numpy before OpenVINO, and is
import-safe (nothing runs unless executed as a script). :func:`run_check` runs it and parses the result.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

CHECK_TIMEOUT_S = 300

# The check model: y = relu(x @ W + b), x of shape [batch, 4]. Small integers: every product and sum
# is exact in float32, so the expected output is exact too.
X = [[1.0, -2.0, 3.0, 0.0], [2.0, 0.0, -1.0, 4.0]]
W = [[1.0, 0.0, -1.0], [2.0, 1.0, 0.0], [0.0, -3.0, 1.0], [1.0, 1.0, 1.0]]
B = [1.0, -2.0, 0.5]


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, dims: Sequence[int], values: Sequence[float]) -> bytes:
    """onnx.TensorProto: dims (1), data_type FLOAT=1 (2), name (8), raw_data little-endian (9)."""
    return (b"".join(_int(1, d) for d in dims) + _int(2, 1) + _bytes(8, name)
            + _bytes(9, struct.pack(f"<{len(values)}f", *values)))


def _value_info(name: str, dims: Sequence[int | str]) -> bytes:
    """onnx.ValueInfoProto with a float tensor type; a str dim is symbolic (dim_param)."""
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, 1) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _node(op: str, inputs: Sequence[str], output: str) -> bytes:
    return b"".join(_bytes(1, i) for i in inputs) + _bytes(2, output) + _bytes(3, f"{op}_0") + _bytes(4, op)


def check_model_onnx() -> bytes:
    """The check model as ONNX bytes (IR version 8, opset 13), encoded field by field from onnx.proto."""
    graph = (_bytes(1, _node("MatMul", ["x", "w"], "h")) + _bytes(1, _node("Add", ["h", "b"], "z"))
             + _bytes(1, _node("Relu", ["z"], "y")) + _bytes(2, "vitmsn_openvino_check")
             + _bytes(5, _tensor("w", [4, 3], [v for row in W for v in row])) + _bytes(5, _tensor("b", [3], B))
             + _bytes(11, _value_info("x", ["batch", 4])) + _bytes(12, _value_info("y", ["batch", 3])))
    return _int(1, 8) + _bytes(2, "vitmsn") + _bytes(7, graph) + _bytes(8, _int(2, 13))


def _within(path: str | os.PathLike[str], root: Path) -> bool:
    try:
        Path(os.path.realpath(path)).relative_to(root)
        return True
    except ValueError:
        return False


class _OnlyFrom(importlib.abc.MetaPathFinder):
    """Finds ``openvino.*`` submodules only under one package directory; anything else is not there."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if not fullname.startswith("openvino.") or path is None:
            return None
        inside = [entry for entry in path if _within(entry, self.root)]
        spec = importlib.machinery.PathFinder.find_spec(fullname, inside)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {fullname!r} in {self.root}", name=fullname)
        return spec


def import_only_from(package_dir: str | os.PathLike[str]) -> None:
    """From now on this process imports ``openvino`` submodules only from ``package_dir``."""
    root = Path(os.path.realpath(package_dir))
    if not any(isinstance(f, _OnlyFrom) for f in sys.meta_path):
        sys.meta_path.insert(0, _OnlyFrom(root))


def _mapped_files() -> set[str]:
    """Files mapped into this process (shared libraries and the like); empty where /proc is absent."""
    maps = Path("/proc/self/maps")
    return {line.split()[-1] for line in maps.read_text().splitlines() if "/" in line} if maps.exists() else set()


def loaded_from_outside(root: Path) -> list[str]:
    """OpenVINO modules and shared libraries of this process that do not lie under ``root``."""
    modules = {name: str(getattr(mod, "__file__", None) or "") for name, mod in sys.modules.items()
               if name == "openvino" or name.startswith("openvino.")}
    outside = [f"module {name} ({file})" for name, file in sorted(modules.items()) if file and not _within(file, root)]
    return outside + sorted(f"library {lib}" for lib in _mapped_files()
                            if ("openvino" in Path(lib).name or "/openvino/libs/" in lib) and not _within(lib, root))


def mapped_openvino_libraries(root: Path) -> list[str]:
    return sorted(os.path.relpath(lib, root) for lib in _mapped_files() if _within(lib, root))


def _run(core: Any, model: Any, x: Any) -> Any:
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled.create_infer_request().infer({0: x})[compiled.outputs[0]]


def check(package_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Run every check above; raise RuntimeError with the reason on the first failure."""
    root = Path(os.path.realpath(package_dir))
    import_only_from(root)
    import numpy as np

    import openvino as ov

    if not _within(str(ov.__file__), root):
        raise RuntimeError(f"import openvino loaded {ov.__file__}, not the package in {root}")
    core = ov.Core()
    devices = list(core.available_devices)
    if "CPU" not in devices:
        raise RuntimeError(f"OpenVINO lists no CPU device (devices: {devices or 'none'})")
    x = np.asarray(X, np.float32)
    expected = np.maximum(x @ np.asarray(W, np.float32) + np.asarray(B, np.float32), 0)
    with tempfile.TemporaryDirectory(prefix="vitmsn-openvino-check-") as tmp:
        onnx_path = Path(tmp, "check.onnx")
        onnx_path.write_bytes(check_model_onnx())
        model = core.read_model(str(onnx_path))
        got = _run(core, model, x)
        if not np.array_equal(got, expected):
            raise RuntimeError(f"the ONNX check model ran on CPU but gave {got.tolist()}, expected {expected.tolist()}")
        ov.save_model(model, str(Path(tmp, "check.xml")), compress_to_fp16=False)
        got_ir = _run(core, core.read_model(str(Path(tmp, "check.xml"))), x)
        if not np.array_equal(got_ir, expected):
            raise RuntimeError(f"the IR check model ran on CPU but gave {got_ir.tolist()}, expected {expected.tolist()}")
    outside = loaded_from_outside(root)
    if outside:
        raise RuntimeError("loaded from outside the package directory: " + "; ".join(outside))
    from openvino.frontend import FrontEndManager

    return {"openvino": str(ov.get_version()), "devices": devices,
            "frontends": sorted(FrontEndManager().get_available_front_ends()),
            "libraries": mapped_openvino_libraries(root)}


@dataclass(frozen=True)
class CheckResult:
    """What :mod:`openvino_slim_check` found: the version, devices, frontends and libraries it loaded."""

    openvino: str
    devices: tuple[str, ...]
    frontends: tuple[str, ...]
    libraries: tuple[str, ...]

    @classmethod
    def from_json(cls, line: str) -> "CheckResult":
        data = json.loads(line)
        return cls(str(data["openvino"]), *(tuple(map(str, data[k])) for k in ("devices", "frontends", "libraries")))


class CheckFailed(Exception):
    """OpenVINO did not pass :mod:`openvino_slim_check`; the message holds its reason."""


def run_check(package: Path) -> CheckResult:
    """This script in a fresh interpreter that imports OpenVINO from ``package`` alone (its parent first on
    PYTHONPATH, ``-P`` so this folder is not on sys.path, no bytecode written into the package)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(package.parent)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    with tempfile.TemporaryDirectory(prefix="vitmsn-openvino-slim-") as cwd:
        try:
            result = subprocess.run([sys.executable, "-P", str(Path(__file__)), str(package)], env=env, cwd=cwd,
                                    capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the check did not finish in {CHECK_TIMEOUT_S} s") from None
    if result.returncode != 0:
        reason = (result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}").splitlines()
        raise CheckFailed(" | ".join(reason[-6:]))
    return CheckResult.from_json(result.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: openvino_slim_check.py OPENVINO_PACKAGE_DIR", file=sys.stderr)
        return 2
    try:
        result = check(argv[0])
    except Exception as exc:  # the reason is the product: report whatever OpenVINO raised
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
