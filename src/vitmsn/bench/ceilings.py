"""GEMM ceilings per precision, timed as rows among the benchmark rows (same run, same load).

Each row's roofline is taken against its own precision's ceiling: an INT8 row against the INT8
GEMM, a BF16 row against the BF16 GEMM. Dividing every row by the FP32 ceiling (as before) made
INT8 rows read 128-217% "of the ceiling", which says nothing about how much is left.

* ``fp32``: ``torch.matmul`` on float32 n x n (:class:`.machine.GemmProbe`);
* ``bf16``: ``torch.matmul`` on bfloat16 n x n (oneDNN: AVX512_BF16 / AMX where the CPU has them), only where
  oneDNN has a BF16 kernel for this CPU (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or ARM BF16): elsewhere (plain AVX2)
  PyTorch falls back to a reference loop at about 1 GFLOP/s, 20 s per 2048 GEMM, which is no ceiling and made one
  bench row take over 15 minutes;
* ``int8``: ONNX Runtime ``MatMulInteger`` u8 x s8 -> int32 on n x n, the integer GEMM under the
  CPU INT8 graphs (VNNI ``vpdpbusd`` where present), on the bench's thread count.

A row of an INT8 graph runs some FP32 (or BF16) work too, so its fraction is a lower bound of how
close its GEMMs come; a mixed INT8 row is still gauged against the INT8 ceiling (the goal is its speed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .machine import GemmProbe, SquareGemm

CEILING_PRECISIONS = ("fp32", "bf16", "int8")


class Bf16GemmProbe(GemmProbe):
    def __init__(self, n: int = 2048) -> None:
        import torch

        super().__init__(n)
        self.a, self.b = self.a.to(torch.bfloat16), self.b.to(torch.bfloat16)
        self.out = self.out.to(torch.bfloat16)


class Int8GemmProbe(SquareGemm):
    """``MatMulInteger`` (uint8 x int8 -> int32) on ONNX Runtime's CPU provider, ``threads`` intra-op threads."""

    def __init__(self, n: int = 2048, threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        weight = rng.integers(-127, 128, (n, n), dtype=np.int8)
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "w", "za"], ["y"])], "int8_gemm",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
            [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array(128, np.uint8), "za")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory(prefix="vitmsn-gemm-") as tmp:
            path = Path(tmp) / "gemm.onnx"
            onnx.save(model, str(path))
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.n = n
        self.feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}

    def __call__(self) -> None:
        self.session.run(None, self.feed)


def has_bf16_gemm() -> bool:
    """Whether PyTorch's oneDNN has a BF16 GEMM for this CPU (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or ARM BF16), not
    the reference loop."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def gemm_probes(n: int, threads: int) -> dict[str, Any]:
    """The probes this machine can run, by precision: one that cannot be built is left out, and so is BF16 where
    PyTorch has no oneDNN BF16 kernel (:func:`has_bf16_gemm`)."""
    probes: dict[str, Any] = {"fp32": GemmProbe(n)}
    builds = {"bf16": lambda: Bf16GemmProbe(n)} if has_bf16_gemm() else {}
    builds["int8"] = lambda: Int8GemmProbe(n, threads)
    for precision, build in builds.items():
        try:
            probe = build()
            probe()  # warm-up; raises where the kernel is missing
            probes[precision] = probe
        except Exception:  # noqa: BLE001 - no such kernel here: that precision has no ceiling in this run
            continue
    return probes


def ceiling_precision(row: dict[str, Any]) -> str:
    """Which ceiling a row is gauged against: its own precision's (fp16 on CPU has none of its own: fp32)."""
    precision = str(row.get("precision"))
    return precision if precision in CEILING_PRECISIONS else "fp32"
