"""SIMULATION shim for subprocess tests: with VITMSN_TRT_SIMULATION set, a Python process started
with this directory on PYTHONPATH runs under the simulated CUDA/TensorRT runtimes of
tests/trt_simulation (never GPU evidence). At exit it writes what the simulation recorded
(violations, leaks, counters) to the JSON report file named in the variable."""

import atexit
import json
import os
import sys

_spec = os.environ.get("VITMSN_TRT_SIMULATION")
if _spec:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    import gc

    from trt_simulation import Faults, SimGpu, install

    _cfg = json.loads(_spec)
    _state = install(None, gpus=[SimGpu(n, cc) for n, cc in _cfg["gpus"]], faults=Faults(**_cfg.get("faults", {})))

    def _report() -> None:
        gc.collect()
        with open(_cfg["report"], "w") as f:
            json.dump({"simulation": True, "violations": _state.violations, "leaks": _state.leaks(),
                       "deserializations": _state.deserializations, "jit_compilations": _state.jit_compilations,
                       "log": _state.log[-50:]}, f)

    atexit.register(_report)
