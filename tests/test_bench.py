"""``vitmsn bench`` on a tiny export with tiny iteration counts: the report's schema, the
consistency of its derived figures, and the correctness check's teeth. No timed assertions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cpu_flags_here import cpuinfo_flags
from bench_fixtures import bench_tiny_artifacts  # noqa: F401  (fixture)
from checkpoints import TINY_CONFIG

FAST = ["--iterations", "2", "--rounds", "1", "--warmup", "0", "--gemm-size", "128", "-q"]


def _bench(args: list[str]):
    from vitmsn.cli.bench import command

    return CliRunner().invoke(command, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def report(bench_tiny_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # noqa: F811
    out = tmp_path_factory.mktemp("bench") / "out.json"
    md = out.with_suffix(".md")
    result = _bench([str(bench_tiny_artifacts), "--batch-sizes", "1,2", "--json", str(out), "--markdown", str(md), *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    data["_markdown"] = md.read_text()
    return data


def test_report_follows_the_contract(report: dict) -> None:
    assert set(report["machine"]) >= {"cpu", "versions", "threads", "gemm_ceiling"}
    assert report["machine"]["cpu"]["available_cpus"] >= 1
    assert "torch" in report["machine"]["versions"] and report["machine"]["threads"]["bench_threads"] >= 1
    rows = report["results"]
    assert rows
    for r in rows:
        assert isinstance(r["backend"], str) and r["precision"] in ("fp32", "fp16", "bf16", "int8")
        assert r["batch_size"] in (1, 2)
        assert r["throughput"] > 0
        assert set(r["latency_ms"]) >= {"median", "p90", "p99"}
        assert r["latency_ms"]["median"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"]
        assert r["correctness"]["passed"], r["correctness"]
    seen = {(r["backend"], r["variant"], r["mode"], r["batch_size"]) for r in rows}
    for backend, variant in [("pytorch-eager", ""), ("pytorch-sdpa", ""), ("onnxruntime", ""), ("onnxruntime", "onnxruntime_optimized"),
                             ("openvino", "inference f32")]:
        for mode in ("model", "e2e"):
            for batch in (1, 2):
                assert (backend, variant, mode, batch) in seen
    assert report["passed"] is True
    assert any("tensorrt" in s["backend"] for s in report["skipped"])  # said plainly, not silently dropped
    if report["options"]["threads"] > 1:  # the data-parallel rows: the batch split over single-thread sessions
        split = [r for r in rows if r["sessions"] > 1]
        assert split and all(r["variant"] == "onnxruntime_optimized" and r["session"]["intra_op_threads"] == 1 for r in split)


def test_derived_figures_are_consistent(report: dict) -> None:
    rows = report["results"]
    gflops = report["model"]["gflops_per_image"]
    for r in rows:
        # latency_ms is rounded to 4 decimals (0.1 us): on a fast row (0.04 ms) that alone moves the ratio by 0.1%,
        # so the throughput must lie inside the interval the rounded median allows, plus its own rounding
        median = r["latency_ms"]["median"]
        low, high = r["batch_size"] * 1000 / (median + 5e-5), r["batch_size"] * 1000 / max(median - 5e-5, 1e-9)
        assert low * (1 - 1e-4) - 1e-3 <= r["throughput"] <= high * (1 + 1e-4) + 1e-3, (r["throughput"], median)
        eager = [e for e in rows if e["backend"] == "pytorch-eager" and e["device"] == r["device"]
                 and e["mode"] == r["mode"] and e["batch_size"] == r["batch_size"]]
        assert len(eager) == 1
        assert math.isclose(r["ratio_to_pytorch_eager"], r["throughput"] / eager[0]["throughput"], rel_tol=5e-3, abs_tol=1e-3)
        assert math.isclose(r["gflops_per_s"], gflops * r["throughput"], rel_tol=1e-2, abs_tol=1e-2)
        assert math.isclose(r["roofline_fraction"], r["gflops_per_s"] / r["gemm_ceiling_gflops_per_s"], rel_tol=1e-2, abs_tol=1e-3)
        # each CPU row against its own precision's GEMM ceiling, measured in the same rounds
        own = {"bf16": "bf16", "int8": "int8"}.get(r["precision"], "fp32")
        assert r["gemm_ceiling_precision"] == (own if own in r["gemm_ceilings_gflops_per_s"] else "fp32")
        assert r["gemm_ceiling_gflops_per_s"] == r["gemm_ceilings_gflops_per_s"][r["gemm_ceiling_precision"]]
    # a BF16 ceiling only where oneDNN has BF16 kernels; on plain AVX2 PyTorch's BF16 GEMM is a reference loop at
    # about 1 GFLOP/s (20 s per probe), which is no ceiling and stalled the bench for minutes
    ceilings = set(rows[0]["gemm_ceilings_gflops_per_s"])
    assert {"fp32", "int8"} <= ceilings
    bf16_kernels = _cpu_bf16_kernels()
    if bf16_kernels is not None:  # None: a CPU whose flags cannot tell (AVX-NE-CONVERT is not listed in cpuinfo)
        assert ("bf16" in ceilings) == bf16_kernels
    threads = report["options"]["threads"]
    for r in (r for r in rows if r["mode"] == "e2e"):  # end to end against the same configuration's model-only row
        twin = [m for m in rows if m["mode"] == "model" and all(m[k] == r[k] for k in
                ("backend", "precision", "device", "variant", "batch_size", "sessions"))]
        assert len(twin) == 1 and r["stream_batches"] == 4 and r["preprocess_ms_per_image"] > 0
        assert math.isclose(r["e2e_vs_model"], r["throughput"] / twin[0]["throughput"], rel_tol=5e-3, abs_tol=1e-3)
        core_ms = threads * twin[0]["latency_ms"]["median"] / r["batch_size"]
        assert math.isclose(r["cpu_time_bound"], core_ms / (core_ms + r["preprocess_ms_per_image"]), rel_tol=5e-3, abs_tol=1e-3)
    assert all(r["ratio_to_pytorch_eager"] == 1.0 for r in rows if r["backend"] == "pytorch-eager")


def _cpu_bf16_kernels() -> bool | None:
    """Whether oneDNN has BF16 GEMM kernels here, from /proc/cpuinfo: AVX-512 BW/VL/DQ or ARM BF16 yes; plain AVX2
    no; None where the flags cannot tell (an AVX-VNNI CPU may have AVX-NE-CONVERT, which cpuinfo does not list)."""
    flags = cpuinfo_flags()
    if {"avx512bw", "avx512vl", "avx512dq"} <= flags or "bf16" in flags:
        return True
    return None if "avx_vnni" in flags else False


def test_no_bf16_ceiling_where_pytorch_has_no_onednn_bf16_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    from vitmsn.bench import ceilings

    monkeypatch.setattr(ceilings, "has_bf16_gemm", lambda: False)  # as on a plain AVX2 CPU, on any machine
    assert set(ceilings.gemm_probes(64, 1)) == {"fp32", "int8"}


def test_markdown_lists_every_row_and_what_did_not_run(report: dict) -> None:
    md = report["_markdown"]
    assert md.count("| pytorch-eager | fp32 | cpu |") == 4  # 2 batch sizes x (model, e2e)
    assert "ORT-fused graph" in md and "## Not run here" in md and "GEMM ceiling" in md
    assert "| e2e / model | CPU-time bound |" in md and "ms per image (batch 2)" in md


class _Wrong:
    """Wraps a backend and corrupts its outputs (a sign flip on the embedding)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        for attr in ("backend", "precision", "device", "variant", "label", "open", "close", "info", "sessions",
                     "supports_batch"):
            setattr(self, attr, getattr(inner, attr))
        self.variant = "deliberately-wrong"

    def infer(self, x):
        out = dict(self.inner.infer(x))
        out["embedding"] = -out["embedding"]
        return out

    def call_for(self, x):
        return lambda: self.infer(x)


def test_a_wrong_backend_fails_the_check_and_the_command(bench_tiny_artifacts: Path, tmp_path: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from vitmsn.bench import suite
    from vitmsn.bench.backends import onnxruntime_row

    real = suite.prepare_backends

    def with_a_wrong_one(*args, **kwargs):
        prep = real(*args, **kwargs)
        ort_plain = next(b for b in prep.backends if b.backend == "onnxruntime" and not b.variant)
        prep.backends.append(_Wrong(onnxruntime_row(ort_plain.runner.path, ort_plain.input_name, threads=1)))
        return prep

    monkeypatch.setattr(suite, "prepare_backends", with_a_wrong_one)
    out = tmp_path / "out.json"
    result = _bench([str(bench_tiny_artifacts), "--batch-sizes", "1", "--no-e2e", "--no-ort-fused", "--json", str(out), *FAST])
    assert result.exit_code == 1, result.output
    data = json.loads(out.read_text())
    assert data["passed"] is False
    wrong = [r for r in data["results"] if r["variant"] == "deliberately-wrong"]
    assert wrong and not wrong[0]["correctness"]["passed"]
    assert "embedding" in " ".join(wrong[0]["correctness"]["problems"])
    assert all(r["correctness"]["passed"] for r in data["results"] if r["variant"] != "deliberately-wrong")


def test_fp32_tolerance_is_the_allclose_rule() -> None:
    from vitmsn.bench import correctness

    ref = {"logits": np.ones((2, 3), np.float32), "embedding": np.ones((2, 4), np.float32)}
    tol = correctness.tolerance_for("fp32", "cpu")
    assert correctness.compare_outputs({k: v + 5e-5 for k, v in ref.items()}, ref, tol)["passed"]
    assert not correctness.compare_outputs({k: v + 5e-3 for k, v in ref.items()}, ref, tol)["passed"]
    assert not correctness.compare_outputs({"logits": ref["logits"]}, ref, tol)["passed"]  # missing output
    int8 = correctness.tolerance_for("int8", "cpu")
    emb = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32) + 3.0  # alike, as a random ViT's are
    ref = {"logits": ref["logits"][:1].repeat(4, 0), "embedding": emb}
    noisy = emb + np.random.default_rng(1).normal(scale=0.05, size=emb.shape).astype(np.float32)
    assert correctness.compare_outputs({"logits": -ref["logits"], "embedding": noisy}, ref, int8)["passed"]  # logits not checked
    mixed = correctness.compare_outputs({"logits": ref["logits"], "embedding": emb[::-1].copy()}, ref, int8)
    assert not mixed["passed"] and "nearer another sample" in mixed["problems"][0]


def test_interleaved_timing_gives_every_row_its_samples() -> None:
    from vitmsn.bench.timing import LatencyStats, TimingPlan, time_interleaved

    order: list[str] = []
    plan = TimingPlan(warmup=1, iterations=4, rounds=2, rewarm=0)
    stats = time_interleaved([lambda: order.append("a"), lambda: order.append("b")], plan)
    assert [s.count for s in stats] == [4, 4]
    assert order == ["a", "b"] + ["a", "a", "b", "b"] * 2  # warm-up, then alternating rounds
    st = LatencyStats([1.0, 2.0, 3.0, 4.0])
    assert st.median == 2.5 and st.throughput(8) == pytest.approx(3200.0)


def test_ort_fused_graph_fuses_every_layer(bench_tiny_artifacts: Path, tmp_path: Path) -> None:  # noqa: F811
    import onnx

    from vitmsn.export.fp32.model import ViTMSNArch
    from vitmsn.export.precision.ort_optimize import ort_optimized_onnx_from_fp32

    arch = ViTMSNArch.from_config(TINY_CONFIG)
    layers = arch.num_hidden_layers
    result = ort_optimized_onnx_from_fp32(bench_tiny_artifacts / "model.fp32.onnx", tmp_path / "fused.onnx", arch)
    assert result.fused == {"Attention": layers, "SkipLayerNormalization": 2 * layers, "BiasGelu": layers,
                            "LayerNormalization": 1}
    assert result.rewrites == {"shape_slice": 1, "scale_mul_to_div": layers, "residual_branch_first": 2 * layers}
    assert result.max_abs_diff < 1e-4 and not result.notes
    onnx.checker.check_model(onnx.load(str(result.path)))


def test_ort_fused_graph_is_refused_when_it_does_not_reproduce_the_reference_given(
        bench_tiny_artifacts: Path, tmp_path: Path) -> None:  # noqa: F811
    import onnxruntime as ort

    from vitmsn.export.fp32.checks import Reference
    from vitmsn.export.fp32.model import ViTMSNArch
    from vitmsn.export.precision.ort_optimize import ort_optimized_onnx_from_fp32

    arch = ViTMSNArch.from_config(TINY_CONFIG)
    src = bench_tiny_artifacts / "model.fp32.onnx"
    feeds = {"pixel_values": np.random.default_rng(3).standard_normal((2, 3, arch.image_size, arch.image_size),
                                                                       dtype=np.float32)}
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    outputs = {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feeds))}
    result = ort_optimized_onnx_from_fp32(src, tmp_path / "a.onnx", arch, Reference(feeds, outputs, "these rows"))
    assert result.compared_with == "these rows" and result.max_abs_diff < 1e-4
    shifted = {name: value + 0.01 for name, value in outputs.items()}  # a reference the graph does not reproduce
    with pytest.raises(ValueError, match="disagrees with these rows"):
        ort_optimized_onnx_from_fp32(src, tmp_path / "b.onnx", arch, Reference(feeds, shifted, "these rows"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx"]  # nothing written for the refused one


def test_ort_fusions_wait_for_weight_matrices_on_disk_and_still_fuse_every_layer(
        bench_tiny_artifacts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import onnx

    from vitmsn.export.fp32.model import ViTMSNArch
    from vitmsn.export.precision import ort_optimize

    monkeypatch.setattr(ort_optimize, "EXTERNAL_MIN_BYTES", 0)  # every weight matrix, as on a ViT-B/4 or larger
    arch = ViTMSNArch.from_config(TINY_CONFIG)
    layers = arch.num_hidden_layers
    result = ort_optimize.ort_optimized_onnx_from_fp32(bench_tiny_artifacts / "model.fp32.onnx", tmp_path / "f.onnx", arch)
    assert result.fused == {"Attention": layers, "SkipLayerNormalization": 2 * layers, "BiasGelu": layers,
                            "LayerNormalization": 1}
    model = onnx.load(str(result.path))  # one self-contained file: every weight back inside it
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert list(tmp_path.iterdir()) == [result.path] and result.max_abs_diff < 1e-4


def _assert_every_row_passed(artifacts: Path, out: Path, *options: str, batch_sizes: str = "1,8") -> dict:
    result = _bench([str(artifacts), "--batch-sizes", batch_sizes, "--json", str(out), *options, *FAST])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert {r["batch_size"] for r in data["results"]} == {int(b) for b in batch_sizes.split(",")}
    assert data["passed"] and all(r["correctness"]["passed"] for r in data["results"])
    return data


def test_bench_on_the_demo(demo_artifacts: Path, tmp_path: Path) -> None:
    _assert_every_row_passed(demo_artifacts, tmp_path / "out.json")


@pytest.mark.slow
def test_bench_on_a_vit_s_shaped_model(vits_artifacts: Path, tmp_path: Path) -> None:
    # every backend's correctness check at the ViT-S shape; the check runs once per backend whatever the batch
    # sizes, so one batch size, model only (the demo test above times both modes at 1 and 8): 92 s -> 22 s on an EPYC
    data = _assert_every_row_passed(vits_artifacts, tmp_path / "out.json", "--no-e2e", batch_sizes="8")
    assert {r["mode"] for r in data["results"]} == {"model"}
    assert data["model"]["gflops_per_image"] == pytest.approx(8.48, abs=5e-3)  # the ViT-S figure


def test_bad_input_exits_2(tmp_path: Path) -> None:
    missing = _bench([str(tmp_path / "nope"), "-q"])
    assert missing.exit_code == 2 and "not an artifacts directory" in missing.output
    assert _bench([str(tmp_path), "--batch-sizes", "0,x"]).exit_code == 2


def test_a_batch_size_that_cannot_fit_is_refused_before_anything_runs(bench_tiny_artifacts: Path,  # noqa: F811
                                                                     tmp_path: Path) -> None:
    """Batch 10 million of even the tiny model needs terabytes of activations: exit 2 with the numbers, no report,
    instead of an out-of-memory kill minutes into the run."""
    out = tmp_path / "out.json"
    result = _bench([str(bench_tiny_artifacts), "--batch-sizes", "1,10000000", "--json", str(out), *FAST])
    assert result.exit_code == 2, result.output
    assert "--batch-sizes 10000000: does not fit" in result.output and "GB" in result.output and "usable" in result.output
    assert not out.exists()


def test_median_ci_is_the_order_statistic_interval() -> None:
    from vitmsn.bench.timing import median_ci

    # n = 100: ranks 50 -/+ 1.96*10/2 = 40.2 .. 59.8 -> order statistics 40 and 59 (0-based), of 0..99
    assert median_ci([float(v) for v in reversed(range(100))]) == (40.0, 59.0)
    assert median_ci([3.0, 1.0, 2.0]) == (1.0, 3.0)  # small n: min to max


def test_adaptive_plan_times_until_the_median_is_certain() -> None:
    """Rows whose times are steady stop after the planned rounds; a row that alternates wildly keeps getting
    rounds until max_iterations, while the steady row gets the same rounds (interleaved)."""
    from itertools import cycle

    from vitmsn.bench.timing import TimingPlan, time_interleaved

    ticks = cycle([0.0, 0.001])  # every call costs exactly 1 ms on this clock
    plan = TimingPlan(warmup=0, iterations=4, rounds=2, rewarm=0, ci_target=0.03, max_iterations=40)
    steady = time_interleaved([lambda: None], plan, clock=lambda: next(ticks))
    assert [st.count for st in steady] == [4]
    costs = cycle([0.001, 0.003])
    now = [0.0]

    def noisy_clock() -> float:
        return now[0]

    def noisy_call() -> None:
        now[0] += next(costs)

    stats = time_interleaved([noisy_call], plan, clock=noisy_clock)
    assert stats[0].count >= 40 and stats[0].ci_fraction > 0.03


def _timed_row(mode: str, median: float) -> dict:
    return {"backend": "pytorch-eager", "variant": "", "batch_size": 1, "mode": mode, "precision": "fp32",
            "device": "cpu", "throughput": 1000.0 / median, "latency_ms": {"median": median, "samples": 4}}


@pytest.mark.parametrize("remeasured, flagged", [((30.0, 35.0), False), ((480.0, 34.9), True)])
def test_pytorch_end_to_end_below_model_only_is_remeasured_then_flagged(remeasured: tuple[float, float],
                                                                         flagged: bool) -> None:
    """The seen case: batch 1 eager 480 ms model only, 34.9 ms end to end. Re-measured once; still so, both rows
    say NOISY instead of passing as results."""
    from types import SimpleNamespace

    from vitmsn.bench.noisy_rows import recheck_pytorch

    rows = [_timed_row("model", 480.0), _timed_row("e2e", 34.9)]
    asked: list[tuple[str, int]] = []

    def time_group(group: list, mode: str, batch: int) -> list[dict]:
        asked.append((mode, batch))
        return [_timed_row(mode, remeasured[0] if mode == "model" else remeasured[1])]

    backend = SimpleNamespace(backend="pytorch-eager", variant="", label="pytorch-eager")
    out = recheck_pytorch(rows, [backend], time_group, lambda s: None)
    assert asked == [("model", 1), ("e2e", 1)]
    assert [r["latency_ms"]["median"] for r in out] == list(remeasured)
    assert all(bool(r.get("noisy")) == flagged for r in out)
