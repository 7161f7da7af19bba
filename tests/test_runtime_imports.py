"""`import vitmsn.runtime` (and really using it) loads no torch, onnx, click or transformers.

Run in a fresh interpreter, as Polygraphy's test_dependencies does, because this test session
has long imported all of them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runtime_fixtures import Exported, rt_cls  # noqa: F401

FORBIDDEN = ("torch", "onnx", "click", "transformers", "sklearn")

PROBE = r"""
import importlib, json, pkgutil, sys
import numpy as np
import vitmsn.runtime as runtime
after_import = sorted(sys.modules)
for info in pkgutil.walk_packages(runtime.__path__, "vitmsn.runtime."):
    if info.name != "vitmsn.runtime.backends.tensorrt":  # imports nothing heavy either, checked below
        importlib.import_module(info.name)
import vitmsn.runtime.backends.tensorrt
from vitmsn.runtime import Predictor
for backend in ("onnxruntime", "openvino"):
    with Predictor.from_artifacts(sys.argv[1], backend=backend) as p:
        p.predict(np.zeros((64, 64, 3), np.uint8))
        with p.batcher() as b:
            b(np.zeros((64, 64, 3), np.uint8))
print(json.dumps({"after_import": after_import, "after_use": sorted(sys.modules)}))
"""


def _top_level(modules: list[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_runtime_loads_no_export_side_package(rt_cls: Exported) -> None:
    result = subprocess.run([sys.executable, "-c", PROBE, str(rt_cls.artifacts)], capture_output=True, text=True,
                            timeout=120, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr
    modules = json.loads(result.stdout.strip().splitlines()[-1])
    for stage in ("after_import", "after_use"):
        loaded = _top_level(modules[stage]) & set(FORBIDDEN)
        assert not loaded, f"{stage}: vitmsn.runtime pulled in {sorted(loaded)}"
    assert {"onnxruntime", "openvino"} <= _top_level(modules["after_use"])  # the probe really ran both backends
    # importing the package alone loads no backend at all (names are resolved lazily)
    assert not _top_level(modules["after_import"]) & {"onnxruntime", "openvino", "tensorrt", "tensorrt_rtx", "PIL"}
