"""A SIMULATION of the CUDA and TensorRT runtimes, for tests only. It is never GPU evidence.

No machine this project is tested on has a GPU or the TensorRT libraries, so the TensorRT half of
vitmsn is exercised in CI against this simulation: the CUDA driver query, cuda-python's
runtime API (``cuda.bindings.runtime``) and the TensorRT / TensorRT-RTX runtime objects, implementing
exactly the subset vitmsn uses, with the documented behaviour and failure modes (see ``cuda.py``,
``tensorrt.py`` and ``engine.py``). It is installed only by tests: ``install(monkeypatch)`` puts the
simulated modules in ``sys.modules`` for one test, and ``shim/sitecustomize.py`` does the same in a
subprocess (``simulation_env()``). The product never imports it.

**The engine file format is simulated** (the documented choice): a magic line, a JSON header and the
source ONNX. The real TensorRT-RTX builder still builds a real plan from the same network (its
SHA-256 and size are in the header), but a real plan cannot be executed here, so the simulated
runtime executes the source ONNX with ONNX Runtime. A real TensorRT plan is refused by the simulated
runtime (wrong magic), as a foreign file is by TensorRT.

The simulated machine's ONNX Runtime is the CPU build (``get_available_providers`` reports the CPU
provider only): ONNX Runtime's CUDA and TensorRT providers are not simulated.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .cuda import Faults, SimDriver, SimGpu, SimState, cudart_module
from .tensorrt import SIM_TENSORRT_VERSION, read_plan, tensorrt_module, write_plan

__all__ = ["Faults", "SimGpu", "SimState", "install", "simulated_plan", "add_simulated_engine", "simulation_env",
           "SIM_TENSORRT_VERSION", "read_plan", "DEFAULT_GPU"]

DEFAULT_GPU = SimGpu("Simulated NVIDIA RTX A4000", "8.6")
SHIM = Path(__file__).parent / "shim"
_REAL: dict[str, ModuleType] = {}


def real_tensorrt_rtx() -> ModuleType:
    """The real TensorRT-RTX bindings (the builder and enums the simulation builds on)."""
    if "rtx" not in _REAL:
        module = sys.modules.get("tensorrt_rtx")
        if module is None or getattr(module, "SIMULATION", False):
            saved = sys.modules.pop("tensorrt_rtx", None)
            try:
                module = importlib.import_module("tensorrt_rtx")
            finally:
                if saved is not None:
                    sys.modules["tensorrt_rtx"] = saved
        _REAL["rtx"] = module
    return _REAL["rtx"]


class _Patcher:
    """monkeypatch's setitem/setattr, or plain assignment in a subprocess shim."""

    def __init__(self, monkeypatch: Any = None) -> None:
        self.mp = monkeypatch

    def setitem(self, mapping: Any, key: str, value: Any) -> None:
        if self.mp is not None:
            self.mp.setitem(mapping, key, value)
        else:
            mapping[key] = value

    def setattr(self, obj: Any, name: str, value: Any) -> None:
        if self.mp is not None:
            self.mp.setattr(obj, name, value)
        else:
            setattr(obj, name, value)


def install(monkeypatch: Any = None, gpus: tuple[SimGpu, ...] | list[SimGpu] = (DEFAULT_GPU,),
            faults: Faults | None = None) -> SimState:
    """Install the simulated driver, cuda-python runtime, ``tensorrt`` and ``tensorrt_rtx``."""
    real = real_tensorrt_rtx()
    state = SimState(gpus=tuple(gpus), faults=faults or Faults())
    p = _Patcher(monkeypatch)
    cudart = cudart_module(state)
    cuda_pkg, bindings = ModuleType("cuda"), ModuleType("cuda.bindings")
    cuda_pkg.__path__, bindings.__path__ = [], []  # packages, so "from cuda.bindings import runtime" resolves
    bindings.runtime, cuda_pkg.bindings = cudart, bindings
    for name, module in (("cuda", cuda_pkg), ("cuda.bindings", bindings), ("cuda.bindings.runtime", cudart)):
        module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=name != "cuda.bindings.runtime")
        p.setitem(sys.modules, name, module)
    p.setitem(sys.modules, "tensorrt", tensorrt_module(state, real, "tensorrt"))
    p.setitem(sys.modules, "tensorrt_rtx", tensorrt_module(state, real, "tensorrt-rtx"))
    from vitmsn.runtime.backends import device

    driver = SimDriver(state)
    p.setattr(device, "_libcuda", lambda: driver)
    # The simulated machine's ONNX Runtime is the CPU build: its CUDA/TensorRT providers cannot be simulated
    import onnxruntime

    p.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    device.cuda_gpus.cache_clear()
    return state


def simulated_plan(onnx_path: Path, plan_path: Path, *, target: str = "tensorrt", version: str | None = None,
                   compute_capabilities: tuple[str, ...] = ("8.6",), batch: tuple[int, int, int] = (1, 4, 8),
                   input_name: str = "pixel_values", version_compatible: bool = False,
                   hardware_compatible: bool = False, data_dependent_outputs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write a simulated engine for ``onnx_path`` and return its manifest ``engines`` entry."""
    import onnx

    if version is None:
        version = str(real_tensorrt_rtx().__version__) if target == "tensorrt-rtx" else SIM_TENSORRT_VERSION
    model = onnx.load(str(onnx_path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim][1:]
    shapes = [[b, *dims] for b in batch]
    header = {"target": target, "version": version, "compute_capabilities": list(compute_capabilities),
              "version_compatible": version_compatible, "hardware_compatible": hardware_compatible,
              "profile": {input_name: shapes}, "data_dependent_outputs": list(data_dependent_outputs)}
    plan_path.write_bytes(write_plan(header, onnx_path.read_bytes()))
    entry = {"file": plan_path.name, "sha256": hashlib.sha256(plan_path.read_bytes()).hexdigest(),
             "size_bytes": plan_path.stat().st_size, "precision": "fp32", "target": target, "onnx": onnx_path.name,
             "tensorrt_version": version, "compute_capabilities": list(compute_capabilities),
             "profile": {input_name: dict(zip(("min", "opt", "max"), shapes))},
             "version_compatible": version_compatible, "hardware_compatible": hardware_compatible,
             "options": {"target": target, "aot_targets": []}}
    if target == "tensorrt-rtx":
        entry["aot_targets"] = ["sm" + c.replace(".", "") for c in compute_capabilities]
    return entry


def add_simulated_engine(artifacts: Path, precision: str = "fp32", **kw: Any) -> dict[str, Any]:
    """Add a simulated engine built from ``artifacts``' ``precision`` ONNX, named in its manifest."""
    manifest_path = artifacts / "manifest.json"
    data = json.loads(manifest_path.read_text())
    onnx_file = data["precisions"][precision]["file"]
    target = kw.get("target", "tensorrt")
    plan = artifacts / f"engine.{precision}.{target}.plan"
    entry = simulated_plan(artifacts / onnx_file, plan, **kw)
    entry["precision"] = precision
    data["engines"] = [e for e in data.get("engines", []) if e["file"] != plan.name] + [entry]
    manifest_path.write_text(json.dumps(data, indent=2))
    return entry


def simulation_env(report: Path, gpus: tuple[SimGpu, ...] = (DEFAULT_GPU,), faults: dict[str, Any] | None = None,
                   base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that runs under the simulation (``shim/sitecustomize.py``);
    at exit the shim writes violations and leaks to ``report`` (JSON)."""
    env = dict(base if base is not None else os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM), *filter(None, [env.get("PYTHONPATH")])])
    env["VITMSN_TRT_SIMULATION"] = json.dumps({"report": str(report), "faults": faults or {},
                                                 "gpus": [[g.name, g.compute_capability] for g in gpus]})
    return env
