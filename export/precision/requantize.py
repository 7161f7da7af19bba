"""Re-quantization of an INT8 graph until a drift gate holds, keeping the worst groups in higher precision.

:func:`requantize_until` tries the graph as quantized; while the gate (a :class:`GateCheck`)
fails, it rebuilds with the next-worst group of a sensitivity ranking (:mod:`.sensitivity`)
excluded as well, at most ``max_tries`` times. Each try records what it excluded, its gate
figures and its speed (ONNX Runtime images/s on this machine), so the report can say what the
accuracy cost in speed. Two builders:

* :func:`modelopt_builder`: a real re-quantization, :func:`.int8.qdq_onnx_from_calibration`
  with the groups added to ``exclude`` (``block:N`` / module scopes, as :mod:`.int8` reads them);
* :func:`bypass_builder`: no re-calibration, the groups' Q/DQ bypassed in the existing graph
  (fast; what the sensitivity analysis measured).

:func:`int8_within_gate` is the one call the export pipeline makes for ``--max-accuracy-drop`` /
``--min-top1-agreement``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from vitmsn.core.errors import InputError
from vitmsn.core.progress import Progress

from vitmsn.export.validation.gates import Gates, GateResult
from vitmsn.export.validation.verdict import compare_outputs
from vitmsn.export.precision.sensitivity import SensitivityResult, qdq_groups, run_model, sensitivity_analysis, without_qdq
from vitmsn.export.onnx_file import save_onnx


@dataclass
class GateCheck:
    """The drift gates of ``precision`` for a candidate graph, on fixed inputs and reference outputs."""

    inputs: np.ndarray
    reference: dict[str, np.ndarray]
    gates: Gates = field(default_factory=Gates)
    labels: np.ndarray | None = None  # class index per input, -1 unknown
    precision: str = "int8"
    input_name: str = "pixel_values"
    batch: int = 16  # images per ONNX Runtime run (vitmsn.export.fp32.memory.batch_within_memory sizes it)

    def __call__(self, path: str | Path) -> tuple[bool, dict[str, Any], list[GateResult]]:
        verdict = compare_outputs(run_model(path, self.inputs, self.input_name, self.batch), self.reference, self.gates,
                                  self.precision, self.labels)
        return verdict.passed, verdict.metrics, verdict.gates


def throughput(path: str | Path, inputs: np.ndarray, batch: int = 8, repeats: int = 3,
               input_name: str = "pixel_values") -> float:
    """Images per second of ONNX Runtime on ``path`` (best of ``repeats`` passes over one batch)."""
    from vitmsn.runtime.backends.onnxruntime import OnnxRuntimeRunner

    x = np.ascontiguousarray(np.resize(inputs, (batch,) + inputs.shape[1:]), dtype=np.float32)
    with OnnxRuntimeRunner(path) as runner:
        runner.infer({input_name: x})  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.infer({input_name: x})
            best = min(best, time.perf_counter() - t0)
    return batch / best


def modelopt_builder(fp32_path: str | Path, calibration: np.ndarray, options: Any = None,
                     input_name: str = "pixel_values",
                     results: dict[Path, Any] | None = None) -> Callable[[list[str], Path], Path]:
    """``build(excluded_groups, out)``: re-quantize ``fp32_path`` with those groups excluded (:mod:`.int8`).

    ``results``, when given, receives each build's :class:`.int8.Int8Result` under its output path
    (what the export records for the graph it keeps)."""
    from vitmsn.export.precision.int8 import Int8Options, qdq_onnx_from_calibration

    base = options or Int8Options()

    def build(excluded: list[str], out: Path) -> Path:
        opts = replace(base, exclude=tuple(base.exclude) + tuple(excluded))
        result = qdq_onnx_from_calibration(fp32_path, out, calibration, options=opts, input_name=input_name)
        if results is not None:
            results[Path(result.path)] = result
        return result.path

    return build


def bypass_builder(int8_path: str | Path, fp32_path: str | Path, granularity: str = "block") -> Callable[[list[str], Path], Path]:
    """``build(excluded_groups, out)`` without re-calibrating: bypass those groups' Q/DQ in ``int8_path``."""
    int8 = onnx.load(str(int8_path))
    groups = qdq_groups(int8, onnx.load(str(fp32_path), load_external_data=False), granularity)

    def build(excluded: list[str], out: Path) -> Path:
        save_onnx(without_qdq(int8, [d for g in excluded for d in groups.get(g, [])]), out)
        return out

    return build


@dataclass
class RequantResult:
    passed: bool
    excluded: list[str]
    path: Path  # the graph of the last try (the one that passed, when one did)
    tries: list[dict[str, Any]]
    max_tries: int
    images_per_second_fp32: float | None = None

    def to_dict(self) -> dict[str, Any]:
        last = self.tries[-1] if self.tries else {}
        return {"passed": self.passed, "excluded": self.excluded, "max_tries": self.max_tries, "tries": self.tries,
                "images_per_second": last.get("images_per_second"),
                "images_per_second_all_int8": self.tries[0].get("images_per_second") if self.tries else None,
                "images_per_second_fp32": self.images_per_second_fp32}


def requantize_until(int8_path: str | Path, ranking: Sequence[str], check: GateCheck,
                     build: Callable[[list[str], Path], Path], workdir: str | Path, *, max_tries: int = 4,
                     fp32_path: str | Path | None = None, measure_speed: bool = True,
                     progress: bool = False) -> RequantResult:
    """Exclude the worst groups of ``ranking`` one more at a time until ``check`` passes (bounded).

    Try 0 is ``int8_path`` as it is; tries 1..``max_tries`` are re-quantizations."""
    if max_tries < 0:
        raise InputError(f"max tries {max_tries}: must be >= 0")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tries: list[dict[str, Any]] = []
    path, excluded = Path(int8_path), []
    count = min(max_tries, len(ranking)) + 1
    with Progress(f"int8 re-quantization (at most {count - 1} re-quantization(s))", count, unit="try",
                  enabled=progress) as bar:
        for k in range(0, count):
            excluded = list(ranking[:k])
            if k:
                path = build(excluded, workdir / f"model.int8.try{k}.onnx")
            passed, metrics, gate_results = check(path)
            speed = throughput(path, check.inputs, input_name=check.input_name) if measure_speed else None
            tries.append({"excluded": excluded, "passed": passed, "metrics": metrics, "file": str(path),
                          "gates": [g.to_dict() for g in gate_results], "images_per_second": speed})
            bar.update()
            if passed:
                break
    fp32_speed = throughput(fp32_path, check.inputs, input_name=check.input_name) if fp32_path and measure_speed else None
    return RequantResult(tries[-1]["passed"], excluded, path, tries, max_tries, fp32_speed)


def int8_within_gate(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray, check: GateCheck,
                     workdir: str | Path, *, options: Any = None, max_tries: int = 4, input_name: str = "pixel_values",
                     progress: bool = True,
                     built: dict[Path, Any] | None = None) -> tuple[SensitivityResult, RequantResult]:
    """Sensitivity per encoder block on ``calibration``, then re-quantize (ModelOpt, :mod:`.int8`) with the worst
    blocks excluded, one more per try, until ``check`` passes or ``max_tries`` re-quantizations were made.

    ``built`` (optional) receives the :class:`.int8.Int8Result` of every re-quantization, by path."""
    sens = sensitivity_analysis(int8_path, fp32_path, calibration, granularity="block", input_name=input_name,
                                progress=progress, batch=check.batch)
    ranking = [g.group for g in sens.ranking if g.group != "other" and g.score > 0]
    build = modelopt_builder(fp32_path, calibration, options, input_name, results=built)
    return sens, requantize_until(int8_path, ranking, check, build, workdir, max_tries=max_tries, fp32_path=fp32_path,
                                  progress=progress)
