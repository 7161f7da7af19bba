"""Staged checks of an exported ONNX graph. Each stage can fail the run.

1. ``onnx_checker``: ``onnx.checker.check_model(full_check=True)`` (with shape inference).
2. ``io_signature``: input/output names, dtypes and static dims as the spec declares them, and a
   symbolic batch axis (a ``dim_param``, not a number) on every input and output.
3. ``onnxruntime_parity``: ONNX Runtime on CPU against PyTorch at batch sizes 1, 3 and 8 (an export: the
   profile's, :func:`parity_batch_sizes`, within memory, :func:`parity_plan`), per output, with the tolerance
   stated in the result (``|ort - torch| <= atol + rtol * |torch|``). ONNX Runtime runs each batch whole (that
   is what is checked); PyTorch computes the reference rows once, in chunks that fit, for the distinct images of
   every size but the largest, whose batch is drawn from them (:func:`reference_row_count`).

A later stage is skipped (and says so) when an earlier one failed, because its result would
mean nothing.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from vitmsn.export.validation import metrics
from vitmsn.export.fp32.memory import Memory, cannot_fit, largest_batch
from vitmsn.export.fp32.model import ViTMSNArch
from vitmsn.export.fp32.spec import ATOL_FP32, BATCH_AXIS, CHECK_BATCH_SIZES, RTOL_FP32, ExportSpec

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16"}


def stage_word(stage: dict[str, Any]) -> str:
    """passed, failed or inconclusive: a drift stage not passed is as conclusive as its gates (a stage
    without gates, such as onnx.checker, fails)."""
    if stage.get("passed", False):
        return "passed"
    words = {g.get("verdict") for g in (stage.get("metrics") or {}).get("gates") or [] if not g.get("passed", True)}
    return "inconclusive" if words == {"inconclusive"} else "failed"


@dataclass(frozen=True)
class Reference:
    """Inputs and the outputs a graph must reproduce (within the FP32 parity tolerance), and their source."""

    feeds: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    source: str


@dataclass
class StageResult:
    stage: str
    passed: bool
    detail: str
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return stage_word({"passed": self.passed, "metrics": self.metrics})


def check_onnx_checker(path: Path) -> StageResult:
    try:
        # The file's bytes, not its path: the same full check (strict shape inference included) on a ViT-B graph
        # takes 0.3 s from bytes and 4.5 s from the path (onnx 1.21; benchmarks/scale.md). Our graphs are one
        # file under protobuf's 2 GB limit (no external data), so the bytes always fit one message.
        onnx.checker.check_model(path.read_bytes(), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return StageResult("onnx_checker", False, f"{path.name}: {str(exc).strip().splitlines()[0]}")
    return StageResult("onnx_checker", True, f"{path.name}: onnx.checker full check passed")


def _signature(values: Any) -> dict[str, tuple[str, list[int | str]]]:
    sig = {}
    for v in values:
        t = v.type.tensor_type
        dims: list[int | str] = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                                 for d in t.shape.dim]
        sig[v.name] = (_ONNX_DTYPES.get(t.elem_type, onnx.TensorProto.DataType.Name(t.elem_type).lower()), dims)
    return sig


def check_io_signature(proto: onnx.ModelProto, spec: ExportSpec, io_dtype: str = "float32") -> StageResult:
    problems: list[str] = []
    got_in, got_out = _signature(proto.graph.input), _signature(proto.graph.output)
    for expected, got, kind in (([spec.input], got_in, "input"), (list(spec.outputs), got_out, "output")):
        want_names = [t.name for t in expected]
        if list(got) != want_names:
            problems.append(f"{kind} names {list(got)} != declared {want_names}")
            continue
        for t in expected:
            dtype, dims = got[t.name]
            if dtype != io_dtype:
                problems.append(f"{kind} {t.name}: dtype {dtype}, expected {io_dtype}")
            if len(dims) != len(t.shape):
                problems.append(f"{kind} {t.name}: rank {len(dims)}, expected {len(t.shape)}")
                continue
            if not isinstance(dims[0], str) or dims[0] in ("", "?"):
                problems.append(f"{kind} {t.name}: batch axis is {dims[0]!r}, not symbolic")
            elif dims[0] != BATCH_AXIS:
                problems.append(f"{kind} {t.name}: batch axis is named {dims[0]!r}, expected {BATCH_AXIS!r}")
            for i, (d, w) in enumerate(zip(dims[1:], t.shape[1:]), start=1):
                if d != w:
                    problems.append(f"{kind} {t.name}: dim {i} is {d}, expected {w}")
    if problems:
        return StageResult("io_signature", False, "; ".join(problems))
    return StageResult("io_signature", True,
                       f"inputs {list(got_in)} and outputs {list(got_out)} as declared, batch axis symbolic ({BATCH_AXIS!r})")


def compare_outputs(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """One output's figures, from the drift metrics (:mod:`vitmsn.export.validation.metrics`), and its
    elements outside the allclose rule."""
    if not got.size:
        return {"max_abs": 0.0, "mean_abs": 0.0, "rel_l2_max": 0.0, "violations": 0, "elements": 0}
    per = metrics.per_image(got, ref)
    return {"max_abs": float(per["max_abs"].max()), "mean_abs": float(per["mean_abs"].mean()),
            "rel_l2_max": float(per["rel_l2"].max()),
            "violations": int(metrics.allclose_violations(got, ref, atol, rtol).sum()), "elements": int(got.size)}


def parity_batch_sizes(low: int, opt: int, high: int) -> tuple[int, ...]:
    """A batch profile's min, opt and max, and the smallest odd size strictly inside it (when there is one): the
    ONNX Runtime parity check proves the whole dynamic range, not only the sizes it was traced with."""
    sizes = sorted({low, opt, high})
    odd = [n for n in range(low + 1, high) if n % 2 == 1 and n not in sizes]
    return tuple(sorted(sizes + odd[:1]))


@dataclass(frozen=True)
class ParityPlan:
    """What the parity check runs: ONNX Runtime at ``sizes`` (each batch whole), the PyTorch reference
    ``torch_chunk`` images at a time; ``notes`` say which requested size did not fit and what ran instead;
    ``refusal`` says why nothing can run (one image does not fit)."""

    requested: tuple[int, ...]
    sizes: tuple[int, ...]
    torch_chunk: int
    notes: tuple[str, ...] = ()
    refusal: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_plan(requested: tuple[int, ...], arch: ViTMSNArch, memory: Memory) -> ParityPlan:
    """The requested batch sizes that fit in ``memory`` for ONNX Runtime; each one that does not is replaced
    by the largest that does (said in ``notes``, with the numbers)."""
    fits = {rt: largest_batch(arch, memory.usable, runtime=rt) for rt in ("onnxruntime", "pytorch")}
    blocked = [rt for rt, n in fits.items() if n < 1]
    if blocked:
        return ParityPlan(requested, (), 0, refusal=cannot_fit(arch, 1, runtime=blocked[0], memory=memory))
    sizes, notes = set(), []
    for n in requested:
        if n <= fits["onnxruntime"]:
            sizes.add(n)
        else:
            sizes.add(fits["onnxruntime"])
            notes.append(f"batch {n} not run ({cannot_fit(arch, n, memory=memory)}), batch {fits['onnxruntime']} "
                         "instead")
    return ParityPlan(requested, tuple(sorted(sizes)), min(fits["pytorch"], reference_row_count(tuple(sizes))),
                      tuple(notes))


def outputs_in_batches(run: Callable[[np.ndarray], dict[str, np.ndarray]], x: np.ndarray,
                       batch: int = 8) -> dict[str, np.ndarray]:
    """``run`` on ``x``, ``batch`` rows at a time; its outputs in float32, concatenated."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(x), batch):
        for name, value in run(np.ascontiguousarray(x[start:start + batch])).items():
            parts.setdefault(name, []).append(np.asarray(value, dtype=np.float32))
    return {name: np.concatenate(values) for name, values in parts.items()}


def reference_row_count(batch_sizes: tuple[int, ...]) -> int:
    """Distinct images PyTorch computes the reference of: the second-largest batch size (at least 8, at most the
    largest). The largest batch (the profile's max) is made of these rows, drawn again in a seeded order, so PyTorch
    never runs the engine profile's max; ONNX Runtime still runs it whole."""
    largest = max(batch_sizes)
    below = [n for n in batch_sizes if n < largest]
    return min(largest, max(8, max(below, default=largest)))


def check_runtime_parity(run_onnx: Callable[[np.ndarray], dict[str, np.ndarray]],
                         run_torch: Callable[[np.ndarray], dict[str, np.ndarray]],
                         spec: ExportSpec, *, atol: float = ATOL_FP32, rtol: float = RTOL_FP32,
                         batch_sizes: tuple[int, ...] = CHECK_BATCH_SIZES, seed: int = 0,
                         torch_chunk: int | None = None, keep: list[Reference] | None = None) -> StageResult:
    """Compare ``run_onnx`` with ``run_torch`` on the same inputs at each batch size.

    :func:`reference_row_count` distinct rows drawn from N(0, 1), the range a normalised image has. PyTorch computes
    their reference once, ``torch_chunk`` rows at a time (all at once without one), before ONNX Runtime runs. A batch
    of n rows at most that count is its first n rows; a larger one draws its rows from them in a seeded random order
    (a batch that mixed or shifted rows would not match). Each batch size compares ONNX Runtime's rows with theirs.
    ``keep``, when given and the check passes, receives the first two rows and their reference: a later graph made
    from this one (the fused CPU flavour) is checked against them without running this one again.
    """
    a = spec.arch
    distinct = reference_row_count(batch_sizes)
    rng = np.random.default_rng(seed)
    x_all = rng.standard_normal((distinct, a.num_channels, a.image_size, a.image_size), dtype=np.float32)
    started = time.perf_counter()
    ref_all = outputs_in_batches(run_torch, x_all, torch_chunk or distinct)
    seconds: dict[str, Any] = {"pytorch_reference": round(time.perf_counter() - started, 3), "onnxruntime": {}}
    per_batch: dict[str, dict[str, Any]] = {}
    failures = []
    for n in batch_sizes:
        rows = np.arange(n) if n <= distinct else rng.integers(0, distinct, n)
        started = time.perf_counter()
        got, ref = run_onnx(x_all[rows]), {name: value[rows] for name, value in ref_all.items()}
        seconds["onnxruntime"][str(n)] = round(time.perf_counter() - started, 3)  # where the check's time goes
        per_output = {}
        for name in spec.output_names:
            if name not in got:
                failures.append(f"batch {n}: output {name!r} missing from ONNX Runtime results")
                continue
            if got[name].shape != ref[name].shape:
                failures.append(f"batch {n}: output {name!r} shape {got[name].shape} != PyTorch {ref[name].shape}")
                continue
            m = compare_outputs(got[name], ref[name], atol, rtol)
            per_output[name] = m
            if m["violations"]:
                failures.append(f"batch {n}: output {name!r} has {m['violations']} of {m['elements']} elements outside "
                                f"atol {atol:g} + rtol {rtol:g} (max abs {m['max_abs']:.3g})")
        per_batch[str(n)] = per_output
    metrics = {"atol": atol, "rtol": rtol, "batch_sizes": list(batch_sizes), "reference_images": distinct,
               "per_batch": per_batch, "seconds": seconds}
    if failures:
        return StageResult("onnxruntime_parity", False, "; ".join(failures), metrics)
    if keep is not None:  # copies: the rest of the check's arrays are freed when it returns
        keep.append(Reference({spec.input.name: x_all[:2].copy()}, {k: v[:2].copy() for k, v in ref_all.items()},
                              "PyTorch FP32"))
    worst = max((m["max_abs"] for out in per_batch.values() for m in out.values()), default=0.0)
    return StageResult("onnxruntime_parity", True,
                       f"ONNX Runtime CPU matches PyTorch at batch sizes {list(batch_sizes)} within atol {atol:g}, "
                       f"rtol {rtol:g} (worst max abs {worst:.2e}; {distinct} reference images)", metrics)


def skipped(stage: str, because: str) -> StageResult:
    return StageResult(stage, False, f"not run: {because}")
