"""Triton Python-backend model: ``pixel_values`` -> the model's outputs, run by vitmsn's own runtime.

``vitmsn triton --inference python`` copies this file to ``<name>_python/1/model.py`` beside the
artifacts' graph (``model.onnx``, the CPU-placed flavour where the artifacts have one) and
``runtime.json`` (which runtime, the graph's SHA-256, intra-op threads). It is the inference model
for servers without Triton's onnxruntime backend (the ``nvidia-pytriton`` wheel bundles only the
Python backend) or whose onnxruntime backend is older than the graph needs; the environment needs
``pip install vitmsn onnxruntime`` (see ``--python-env``).

Triton's dynamic batcher hands ``execute`` several requests at once: their inputs are joined into
one batch, run once, and the outputs are split back per request. A request whose input is wrong
(shape, NaN/Inf) gets an error response; the others of the batch are still answered.
"""

from __future__ import annotations

import json
import os
from typing import Any

pb_utils: Any = None  # Triton's triton_python_backend_utils, imported in initialize()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        global pb_utils
        import triton_python_backend_utils as _pb_utils

        from vitmsn.runtime.manifest import sha256_file

        pb_utils = _pb_utils
        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "runtime.json"), encoding="utf-8") as f:
            spec = json.load(f)
        path = os.path.join(version_dir, spec["file"])
        if sha256_file(path) != spec["sha256"]:
            raise ValueError(f"{path}: SHA-256 differs from runtime.json; rewrite the repository with vitmsn triton")
        self.input_name = config["input"][0]["name"]
        self.input_dims = [int(d) for d in config["input"][0]["dims"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        self.runner = _runner(spec, path)
        self.runner.activate()

    def _check(self, x: Any) -> str | None:
        import numpy as np

        if x.ndim != len(self.input_dims) + 1 or any(d != -1 and d != s for d, s in zip(self.input_dims, x.shape[1:])):
            return f"{self.input_name}: shape {list(x.shape)} does not match dims [-1, {', '.join(map(str, self.input_dims))}]"
        if not np.isfinite(x).all():
            return f"{self.input_name}: contains NaN or Inf"
        return None

    def execute(self, requests: list[Any]) -> list[Any]:
        import numpy as np

        arrays = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        problems = [self._check(a) for a in arrays]
        good = [i for i, p in enumerate(problems) if p is None]
        results: dict[int, Any] = {}
        if good:
            batch = np.concatenate([arrays[i] for i in good]) if len(good) > 1 else arrays[good[0]]
            try:
                out = self.runner.infer({self.input_name: batch})
            except Exception as exc:  # the runtime's own error, returned to every request of this batch
                problems = [p if p is not None else f"inference failed: {exc}" for p in problems]
            else:
                start = 0
                for i in good:
                    n = len(arrays[i])
                    results[i] = [pb_utils.Tensor(name, np.ascontiguousarray(out[name][start:start + n], dtype=dtype))
                                  for name, dtype in self.outputs]
                    start += n
        return [pb_utils.InferenceResponse(output_tensors=results[i]) if i in results else
                pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problems[i]))
                for i in range(len(requests))]

    def finalize(self) -> None:
        self.runner.deactivate()


def _runner(spec: dict[str, Any], path: str) -> Any:
    """vitmsn's runner for ``spec["runtime"]``."""
    runtime = spec.get("runtime", "onnxruntime")
    if runtime == "onnxruntime":
        from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, precision=spec.get("precision", "fp32"), providers="auto",
                                 intra_op_threads=spec.get("threads"))
    raise ValueError(f"runtime.json: runtime {runtime!r} is not one this model.py can run (onnxruntime)")
