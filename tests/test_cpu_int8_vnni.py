"""The CPU INT8 flavour's weight range, chosen from the exporting CPU and recorded; the runtime's guard
against 8-bit weights on a CPU without VNNI; the bench's INT8 warning on the graphs the runtime loads.

Weight ranges are checked on the graph's own int8 initializers (structure, not rounding). A CPU
without VNNI cannot exist on this machine when it has VNNI: that one case is a simulation (the
flag check is replaced), named as such.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cpu_flags_here import cpuinfo_flags
from bench_fixtures import bench_tiny_artifacts  # noqa: F401  (fixture)
from vitmsn.runtime.manifest import Manifest


def _vnni_here() -> bool:
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpuinfo_flags())


def _largest_int8_weight(path: Path) -> int:
    model = onnx.load(str(path))
    weights = [numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert weights
    return max(int(np.abs(w.astype(np.int32)).max()) for w in weights)


def test_weight_range_follows_the_cpu_and_is_recorded(bench_tiny_artifacts: Path, tmp_path: Path) -> None:  # noqa: F811
    from vitmsn.export.precision.int8_cpu import cpu_int8_onnx_from_calibration, weight_range_for_cpu

    assert weight_range_for_cpu("auto", frozenset({"avx2", "avx512_vnni"})) == "8bit"
    assert weight_range_for_cpu("auto", frozenset({"avx2", "amx_int8"})) == "8bit"
    assert weight_range_for_cpu("auto", frozenset({"avx2", "fma"})) == "7bit"
    assert weight_range_for_cpu("auto") == ("8bit" if _vnni_here() else "7bit")
    fp32 = Manifest.load(bench_tiny_artifacts).onnx_path("fp32")
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32), dtype=np.float32)
    full = cpu_int8_onnx_from_calibration(fp32, tmp_path / "full.onnx", calib, weight_range="8bit")
    reduced = cpu_int8_onnx_from_calibration(fp32, tmp_path / "reduced.onnx", calib, weight_range="7bit")
    assert _largest_int8_weight(full.path) == 127  # per-channel symmetric: each channel's extreme maps to 127
    assert _largest_int8_weight(reduced.path) <= 64  # reduce_range: 7-bit weights
    assert full.to_manifest()["weight_range"] == "8bit" and full.to_manifest()["needs_vnni"] is True
    assert reduced.to_manifest()["weight_range"] == "7bit" and reduced.to_manifest()["needs_vnni"] is False


def _manifest_with_cpu_int8(artifacts: Path, needs_vnni: bool) -> Manifest:
    data = json.loads((artifacts / "manifest.json").read_text())
    fp32 = data["precisions"]["fp32"]
    data["precisions"]["int8"] = {"file": fp32["file"], "sha256": fp32["sha256"],
                                  "onnxruntime_cpu": {"file": "model.int8.cpu.onnx", "sha256": "0" * 64,
                                                      "needs_vnni": needs_vnni, "weight_range": "8bit" if needs_vnni else "7bit"}}
    return Manifest.from_json(artifacts, data)


def test_runtime_never_loads_8bit_weights_without_vnni(bench_tiny_artifacts: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from vitmsn.runtime import selection
    from vitmsn.runtime.backends import registry

    full, reduced = _manifest_with_cpu_int8(bench_tiny_artifacts, True), _manifest_with_cpu_int8(bench_tiny_artifacts, False)
    if _vnni_here():
        assert selection.choose(full, "onnxruntime", "int8").file == "model.int8.cpu.onnx"
    # Simulation of a CPU without VNNI (AVX2 only), which this machine cannot be when it has VNNI.
    monkeypatch.setattr(registry, "vnni_capable", lambda flags=None: False)
    choice = selection.choose(full, "onnxruntime", "int8")
    assert choice.file == "model.fp32.onnx"  # the entry's own Q/DQ graph (stood in by the FP32 file here)
    assert any("8-bit weights made for a CPU with VNNI" in n for n in choice.notes)
    assert selection.choose(reduced, "onnxruntime", "int8").file == "model.int8.cpu.onnx"  # 7-bit: right everywhere


def _row(backend: str, precision: str, variant: str, throughput: float, sessions: int = 1) -> dict:
    return {"backend": backend, "precision": precision, "variant": variant, "throughput": throughput, "device": "cpu",
            "mode": "model", "batch_size": 8, "sessions": sessions, "latency_ms": {"median": 1.0}}


def test_int8_warning_compares_the_graphs_the_runtime_loads(bench_tiny_artifacts: Path) -> None:  # noqa: F811
    from vitmsn.bench.suite import derive, mark_runtime_choices

    data = json.loads((bench_tiny_artifacts / "manifest.json").read_text())
    fp32 = data["precisions"]["fp32"]
    data["precisions"]["int8"] = {"file": "model.int8.onnx", "sha256": "0" * 64,
                                  "onnxruntime_cpu": {"file": "model.int8.cpu.onnx", "sha256": "0" * 64}}
    assert "onnxruntime_optimized" in fp32
    manifest = Manifest.from_json(bench_tiny_artifacts, data)
    # the TensorRT-placed Q/DQ graph is slow on the CPU provider, but the runtime never loads it there
    rows = [_row("onnxruntime", "fp32", "", 10.0), _row("onnxruntime", "fp32", "onnxruntime_optimized", 12.0),
            _row("onnxruntime", "int8", "", 9.0), _row("onnxruntime", "int8", "onnxruntime_cpu", 30.0),
            _row("onnxruntime", "int8", "onnxruntime_cpu", 31.0, sessions=2)]
    mark_runtime_choices(rows, manifest)
    assert [r["runtime_choice"] for r in rows] == [False, True, False, True, False]
    assert derive(rows, 1.0, {}) == []
    rows[3]["throughput"] = 11.0  # now the CPU INT8 flavour really is slower than the fused FP32 graph
    warnings = derive(rows, 1.0, {})
    assert len(warnings) == 1 and "INT8 is not faster than FP32 [onnxruntime_optimized]" in warnings[0]
    assert "11.00 vs 12.00" in warnings[0]
