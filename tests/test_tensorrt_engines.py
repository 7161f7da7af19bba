"""TensorRT engines from build to run: which GPU and release may load an engine, freeing on failure,
refused options, driver-reported GPUs, one deserialization per bench, timing and runtime caches, and
auto's fallback to ONNX Runtime. Against the SIMULATED CUDA/TensorRT runtimes (tests/trt_simulation)
where a GPU would be needed, and the real TensorRT-RTX builder where one builds. Simulation tests are
not GPU evidence: they check what vitmsn asks of TensorRT and CUDA against their documented contracts."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import Exported, rt_cls  # noqa: F401
from sim_fixtures import sim, sim_artifacts  # noqa: F401
from trt_simulation import DEFAULT_GPU, SimGpu, SimState, install
from vitmsn.core.errors import InputError
from vitmsn.export.engines.builder import EngineOptions, builder_status, engine_from_onnx
from vitmsn.export.fp32.spec import BatchRange
from vitmsn.runtime import Predictor
from vitmsn.runtime.manifest import Manifest
from vitmsn.runtime.backends.tensorrt import TensorRTRunner

X = np.random.default_rng(3).standard_normal((3, 3, 48, 48)).astype(np.float32)
ADA = SimGpu("Simulated NVIDIA RTX 4000 Ada", "8.9")


def _runner(artifacts: Path, **kw) -> TensorRTRunner:
    m = Manifest.load(artifacts)
    return TensorRTRunner(m.path_of(m.engines[0].file), m.engines[0], **kw)  # reads manifest.json beside it


def _reference(rt_cls: Exported) -> dict:
    import onnxruntime as ort

    s = ort.InferenceSession(str(rt_cls.artifacts / "model.fp32.onnx"))
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, {"pixel_values": X})))


def _gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *gpus: SimGpu) -> SimState:
    monkeypatch.setenv("VITMSN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return install(monkeypatch, gpus=gpus)


def _clean(state: SimState) -> None:
    gc.collect()
    from vitmsn.runtime.backends import device

    device.cuda_gpus.cache_clear()
    assert state.violations == [] and state.leaks() == [], (state.violations, state.leaks())


def _build(onnx: Path, out: Path, **kw) -> object:
    return engine_from_onnx(onnx, out, precision="fp32", input_name="pixel_values", input_chw=(3, 48, 48),
                            options=EngineOptions(batch=BatchRange(1, 4, 8), progress=False, **kw))


# ------------------------------------------------------------------------------------------------
def test_version_compatible_engine_loads_with_host_code_allowed(sim: SimState, rt_cls: Exported, tmp_path: Path) -> None:
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a", version="11.3.0", version_compatible=True)
    with _runner(art) as runner:  # built by 11.3, run by 11.4: only as a version-compatible engine
        out = runner.infer({"pixel_values": X})
    assert np.allclose(out["logits"], _reference(rt_cls)["logits"], atol=1e-4)


# ------------------------------------------------------------------------------------------------
def test_compute_capability_comes_from_the_driver_and_rtx_records_real_targets(
        monkeypatch: pytest.MonkeyPatch, rt_cls: Exported, tmp_path: Path) -> None:
    state = _gpus(monkeypatch, tmp_path, ADA)
    from vitmsn.export.engines import builder

    monkeypatch.setattr(builder, "gpu_present", lambda: True)  # keeps defect 6 out of this test
    assert builder._current_gpu_capability() == "sm89"
    onnx = rt_cls.artifacts / "model.fp32.onnx"
    trt = _build(onnx, tmp_path / "e.tensorrt.plan", target="tensorrt")
    assert trt.compute_capabilities == ("sm89",)  # the driver's answer; torch (CPU build) would say nothing
    rtx = _build(onnx, tmp_path / "e.rtx.plan", target="tensorrt-rtx")
    assert rtx.compute_capabilities == ("sm89",) and rtx.aot  # the architecture compiled, not "current"
    _clean(state)


# ------------------------------------------------------------------------------------------------
def test_the_check_looks_at_the_runners_own_gpu(monkeypatch: pytest.MonkeyPatch, rt_cls: Exported, tmp_path: Path) -> None:
    state = _gpus(monkeypatch, tmp_path, DEFAULT_GPU, ADA)  # GPU 0 is 8.6, GPU 1 is 8.9
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a", compute_capabilities=("8.9",))
    with _runner(art, gpu_index=1) as runner:
        assert runner.infer({"pixel_values": X})["logits"].shape == (3, 6)
    with pytest.raises(InputError, match="built for compute capability 8.9, but GPU 0"):
        _runner(art, gpu_index=0).activate()
    _clean(state)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["third_malloc", "data_dependent_output"])
def test_failed_activation_frees_everything(monkeypatch: pytest.MonkeyPatch, rt_cls: Exported, tmp_path: Path,
                                              fault: str) -> None:
    state = _gpus(monkeypatch, tmp_path, DEFAULT_GPU)
    extra = {"data_dependent_outputs": ("embedding",)} if fault == "data_dependent_output" else {}
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a", **extra)
    if fault == "third_malloc":
        state.faults.malloc_fails_at = 3
    runner = _runner(art)
    with pytest.raises((RuntimeError, InputError), match="cudaMalloc|data-dependent"):
        runner.activate()
    assert not runner.is_active
    del runner
    _clean(state)  # the stream, the device and the pinned buffers were all released


def test_deactivation_selects_the_runners_device_first(monkeypatch: pytest.MonkeyPatch, rt_cls: Exported,
                                                          tmp_path: Path) -> None:
    state = _gpus(monkeypatch, tmp_path, DEFAULT_GPU, SimGpu("Simulated NVIDIA RTX A4000 #2", "8.6"))
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a")
    runner = _runner(art, gpu_index=1)
    runner.activate()
    from cuda.bindings import runtime as cudart

    cudart.cudaSetDevice(0)  # another library made GPU 0 current on this thread
    runner.deactivate()
    del runner
    _clean(state)  # TensorRT objects destroyed with their own device current, buffers freed there


# ------------------------------------------------------------------------------------------------
def test_bad_engine_options_exit_2_before_anything_is_written(tmp_path: Path) -> None:
    from checkpoints import TINY_CONFIG, save_transformers

    save_transformers(tmp_path / "ck", **TINY_CONFIG)
    exe = Path(sys.executable).parent / "vitmsn-export"
    before = set(tmp_path.iterdir())
    r = subprocess.run([str(exe), "--model", str(tmp_path / "ck"), "--out", str(tmp_path / "out"), "--engine", "require",
                        "--target", "tensorrt-rtx", "--aot-targets", "sm90"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, HF_HUB_OFFLINE="1"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--aot-targets sm90: not offered by TensorRT-RTX" in r.stderr and "Traceback" not in r.stderr
    assert set(tmp_path.iterdir()) == before  # no --out, no staging directory, no ONNX


def test_the_engine_step_fails_its_stage_on_what_the_bindings_raise(rt_cls: Exported, tmp_path: Path) -> None:
    import shutil

    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.fp32.spec import ExportSpec
    from vitmsn.export.steps import engine_step

    shutil.copy(rt_cls.artifacts / "model.fp32.onnx", tmp_path / "model.fp32.onnx")
    ck = load_checkpoint(str(rt_cls.checkpoint))
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    # a workspace limit beyond 64 bits: pybind11 raises TypeError (incompatible function arguments)
    options = EngineOptions(target="tensorrt-rtx", batch=BatchRange(1, 4, 8), workspace_bytes=1 << 70, progress=False,
                            aot_targets=("sm86",))
    entry, stage = engine_step(tmp_path, "fp32", "model.fp32.onnx", spec, "float32", options)
    assert entry is None and not stage.passed and "TypeError" in stage.detail


# ------------------------------------------------------------------------------------------------
def test_gpu_presence_is_the_drivers_answer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = _gpus(monkeypatch, tmp_path, DEFAULT_GPU)
    assert builder_status("tensorrt").available  # no /dev/nvidiactl here: the driver is what counts
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a container or scheduler that hides every GPU
    status = builder_status("tensorrt")
    assert not status.available and "no NVIDIA GPU" in status.reason
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # an index that does not exist: the driver shows none
    assert not builder_status("tensorrt").available
    _clean(state)


# ------------------------------------------------------------------------------------------------
def test_bench_deserializes_each_engine_once(sim: SimState, rt_cls: Exported, tmp_path: Path) -> None:
    from vitmsn.bench.backends import tensorrt_row
    from vitmsn.bench.tensorrt_timing import time_engine
    from vitmsn.bench.timing import TimingPlan

    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a", target="tensorrt-rtx")
    m = Manifest.load(art)
    backend = tensorrt_row(m.path_of(m.engines[0].file), m.engines[0], "pixel_values")
    backend.open()
    try:
        backend.infer(X)
        for batch in (1, 4, 8):
            time_engine(backend.runner, "pixel_values", batch, TimingPlan(warmup=1, iterations=2), streams=2)
    finally:
        backend.close()
    assert sim.deserializations == 1
    assert sim.jit_compilations == 1  # kernels compiled once, shared by the timing contexts (runtime cache)


# ------------------------------------------------------------------------------------------------
def test_timing_cache_refusal_is_handled_and_concurrent_writes_are_merged(
        monkeypatch: pytest.MonkeyPatch, rt_cls: Exported, tmp_path: Path) -> None:
    state = _gpus(monkeypatch, tmp_path, DEFAULT_GPU)
    from vitmsn.export.engines import builder

    monkeypatch.setattr(builder, "gpu_present", lambda: True)  # keeps defect 6 out of this test
    tc = tmp_path / "timing.cache"
    other = b'SIMULATED-TIMING-CACHE\n{"device": "' + DEFAULT_GPU.name.encode() + b'", "entries": ["written-meanwhile"]}'
    tc.write_bytes(b'SIMULATED-TIMING-CACHE\n{"device": "Some other GPU", "entries": ["foreign"]}')
    state.on_build = lambda: tc.write_bytes(other)  # another build saves its cache while this one runs
    r = _build(rt_cls.artifacts / "model.fp32.onnx", tmp_path / "e.plan", target="tensorrt", timing_cache=tc)
    assert any("was refused" in n for n in r.notes)
    entries = json.loads(tc.read_bytes().split(b"\n", 1)[1])["entries"]
    assert "written-meanwhile" in entries and len(entries) == 2  # theirs merged, ours added, the foreign cache not reused
    _clean(state)


# ------------------------------------------------------------------------------------------------
def test_rtx_runtime_cache_spares_recompiling(sim: SimState, rt_cls: Exported, tmp_path: Path) -> None:
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a", target="tensorrt-rtx")
    for _ in range(2):  # two process starts, one after the other
        with _runner(art) as runner:
            runner.infer({"pixel_values": X})
    assert sim.jit_compilations == 1


def test_a_refused_rtx_compute_capability_fails_the_build(monkeypatch: pytest.MonkeyPatch, rt_cls: Exported,
                                                            tmp_path: Path) -> None:
    state = _gpus(monkeypatch, tmp_path, DEFAULT_GPU)
    state.faults.refuse_compute_capability = True
    with pytest.raises(RuntimeError, match="refused compute capability sm86"):
        _build(rt_cls.artifacts / "model.fp32.onnx", tmp_path / "e.plan", target="tensorrt-rtx", aot_targets=("sm86",))
    assert not (tmp_path / "e.plan").exists()
    _clean(state)


# ------------------------------------------------------------------------------------------------
def test_auto_falls_back_when_the_engine_cannot_start(sim: SimState, rt_cls: Exported, tmp_path: Path) -> None:
    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a")
    sim.faults.malloc_fails_at = 2  # device memory runs out while the engine starts
    with Predictor.from_artifacts(art) as p:
        assert p.backend == "onnxruntime"
        assert np.allclose(p.infer(X)["logits"], _reference(rt_cls)["logits"], atol=1e-4)
        engine_notes = [n for n in p.choice.notes if "engine" in n]
    assert len(engine_notes) == 1 and "cudaErrorMemoryAllocation" in engine_notes[0]
    with pytest.raises(RuntimeError, match="cudaErrorMemoryAllocation"):  # forced: no silent replacement
        sim.faults.malloc_fails_at = sim.faults.mallocs + 1
        Predictor.from_artifacts(art, backend="tensorrt")


def test_one_note_without_a_gpu_and_rebuild_commands_that_keep_every_precision(
        monkeypatch: pytest.MonkeyPatch, rt_cls: Exported, tmp_path: Path) -> None:
    from vitmsn.runtime.selection import choose

    art = sim_artifacts(rt_cls.artifacts, tmp_path / "a", target="tensorrt-rtx")
    data = json.loads((art / "manifest.json").read_text())
    base = data["engines"][0]
    data["engines"] = [dict(base, precision=p, file=f"engine.{p}.tensorrt-rtx.plan") for p in ("fp32", "fp16", "int8")]
    data["precisions"]["fp16"] = dict(data["precisions"]["fp32"])
    data["precisions"]["int8"] = dict(data["precisions"]["fp32"], calibration={"source": "/data/calib", "count": 64, "sha256": "0" * 64})
    state = _gpus(monkeypatch, tmp_path, )  # no GPU
    choice = choose(Manifest.from_json(art, data), "auto")
    notes = [n for n in choice.notes if "engine" in n]
    assert len(notes) == 1 and "no NVIDIA GPU" in notes[0] and "vitmsn-export" not in notes[0]
    from vitmsn.export.validation.targets import targets_from_manifest

    _, skipped = targets_from_manifest(Manifest.from_json(art, data), None, "all")  # vitmsn validate: one reason too
    assert len(skipped) == 1 and "need an NVIDIA GPU" in skipped[0]["reason"] and "vitmsn-export" not in skipped[0]["reason"]
    _clean(state)
    state = _gpus(monkeypatch, tmp_path, SimGpu("Simulated NVIDIA RTX 3060", "8.6"))
    data["engines"] = [dict(e, compute_capabilities=["8.9"], aot_targets=["sm89"], options={"aot_targets": ["sm89"]})
                       for e in data["engines"]]
    notes = [n for n in choose(Manifest.from_json(art, data), "auto").notes if "engine" in n]
    assert len(notes) == 1
    command = notes[0].split("rebuild for this GPU: ")[1]
    for part in ("--precision fp32 --precision fp16 --precision int8", "--calib-images /data/calib", "--calib-samples 64",
                 "--engine require --target tensorrt-rtx", "--aot-targets sm89,sm86", f"--out {art}"):
        assert part in command, (part, command)
    _clean(state)
