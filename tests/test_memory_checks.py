"""The activation-memory estimate, the memory available, and the parity check planned within it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vitmsn.core.errors import InputError
from vitmsn.export.fp32 import checks
from vitmsn.export.fp32.memory import GB, Memory, activation_bytes, available_memory, batch_within_memory, largest_batch
from vitmsn.export.fp32.model import ViTMSNArch

# Many tokens (785) and a narrow network: attention dominates, as in the patch-4/7 checkpoints, at test cost.
WIDE_ATTENTION = ViTMSNArch(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                            patch_size=8)
TINY = ViTMSNArch(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)

# Run in a child: the high-water mark is reset (clear_refs 5) right before the forward pass, so the peak read after
# it is that pass's alone; printed in bytes above the RSS before the pass.
_MEASURE = r"""
import json, sys
import numpy as np, torch
from vitmsn.export.fp32.model import ViTMSNArch, ViTMSNBackbone
runtime, path, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
arch = ViTMSNArch(**json.loads(sys.argv[4]))
x = np.random.default_rng(0).standard_normal((batch, 3, arch.image_size, arch.image_size), dtype=np.float32)
if runtime == "pytorch":
    model = ViTMSNBackbone(arch).eval()
    run = lambda: model(torch.from_numpy(x))
else:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = False
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    run = lambda: session.run(None, {"pixel_values": x})
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
with torch.inference_mode():
    run()
print(status("VmHWM:") - before)
"""


@pytest.fixture(scope="module")
def wide_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.fp32.model import ViTMSNBackbone
    from vitmsn.export.fp32.onnx_export import onnx_from_model
    from vitmsn.export.fp32.spec import BatchRange, ExportSpec

    path = tmp_path_factory.mktemp("wide") / "wide.onnx"
    onnx_from_model(ViTMSNBackbone(WIDE_ATTENTION).eval(), ExportSpec(WIDE_ATTENTION, "feature-extraction"), path,
                    opset=18, batch=BatchRange())
    return path


@pytest.mark.parametrize("runtime", ["pytorch", "onnxruntime"])
def test_estimate_bounds_the_measured_peak_of_a_forward_pass(runtime: str, wide_onnx: Path) -> None:
    batch = 8
    proc = subprocess.run([sys.executable, "-c", _MEASURE, runtime, str(wide_onnx), str(batch),
                           json.dumps(WIDE_ATTENTION.to_dict())], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    measured = int(proc.stdout.split()[-1])
    estimate = activation_bytes(WIDE_ATTENTION, batch, runtime=runtime)
    # an upper bound (a step sized by it does not run out of memory), and not a wasteful one
    assert measured <= estimate <= 2 * measured, (runtime, measured, estimate)


def test_estimate_grows_with_the_square_of_the_tokens_and_linearly_with_the_batch() -> None:
    b16 = ViTMSNArch()  # ViT-B/16: 197 tokens
    b4 = ViTMSNArch(patch_size=4)  # ViT-B/4: 3,137 tokens
    assert activation_bytes(b4, 32) == 32 * activation_bytes(b4, 1)
    # one score matrix of B/4 at batch 32 is 15.1 GB (32 x 12 heads x 3137^2 x 4 bytes); more than one copy is alive
    assert activation_bytes(b4, 32, runtime="onnxruntime") > 32 * 12 * 3137**2 * 4
    assert activation_bytes(b4, 1) > 50 * activation_bytes(b16, 1)  # 16x the tokens, 256x the attention
    # FP16 halves it; PyTorch's SDPA never holds the whole matrix
    assert activation_bytes(b4, 1, dtype_bytes=2) == activation_bytes(b4, 1) // 2
    assert activation_bytes(b4, 1, runtime="pytorch", attention="sdpa") < activation_bytes(b4, 1, runtime="pytorch") / 2


def test_available_memory_is_the_smaller_of_the_cgroup_room_and_memavailable(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       25000000 kB\nMemAvailable:   20000000 kB\n")
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text("12000000000\n")
    (cgroup / "memory.current").write_text("2000000000\n")
    got = available_memory(meminfo, cgroup, {})
    assert got.available == 10_000_000_000 and "cgroup" in got.source
    (cgroup / "memory.max").write_text("max\n")  # no limit: the kernel's figure
    got = available_memory(meminfo, cgroup, {})
    assert got.available == 20_000_000 * 1024 and got.source == "MemAvailable"
    assert available_memory(tmp_path / "none", tmp_path / "none", {}).source.startswith("unknown")
    # a user's ceiling on a shared machine, less what this process holds already
    capped = available_memory(meminfo, cgroup, {"VITMSN_MEMORY_LIMIT": "4G"})
    assert 0 < capped.available < 4 * 1024**3 and capped.source.startswith("VITMSN_MEMORY_LIMIT")
    with pytest.raises(InputError, match="VITMSN_MEMORY_LIMIT=lots: expected a size"):
        available_memory(meminfo, cgroup, {"VITMSN_MEMORY_LIMIT": "lots"})


def test_batch_within_memory_shrinks_only_when_needed() -> None:
    per_image = activation_bytes(TINY, 1)
    memory = Memory(int(5.5 * per_image / 0.8), "test")
    assert largest_batch(TINY, memory.usable) == 5
    assert batch_within_memory(TINY, 8, memory=memory) == 5
    assert batch_within_memory(TINY, 3, memory=memory) == 3
    assert batch_within_memory(TINY, 8, memory=Memory(10, "test")) == 1  # one at a time still runs


def test_parity_plan_replaces_sizes_that_do_not_fit_with_the_largest_that_does() -> None:
    per_image = activation_bytes(TINY, 1, runtime="pytorch")  # the larger of the two runtimes' figures
    memory = Memory(int(5.5 * per_image / 0.8), "test")
    plan = checks.parity_plan((1, 3, 8, 32), TINY, memory)
    ort_fit = largest_batch(TINY, memory.usable, runtime="onnxruntime")
    assert ort_fit > 5  # ONNX Runtime holds fewer copies of the scores than PyTorch
    assert plan.sizes == (1, 3, min(8, ort_fit)) if ort_fit < 32 else (1, 3, 8, 32)
    assert plan.torch_chunk == 5
    assert plan.refusal is None and len(plan.notes) == (ort_fit < 8) + (ort_fit < 32)
    assert "batch 32 not run (onnxruntime at batch 32 needs about" in plan.notes[-1]
    assert f"batch {ort_fit} instead" in plan.notes[-1]


def test_parity_plan_refuses_before_running_when_one_image_does_not_fit() -> None:
    plan = checks.parity_plan((1, 8), ViTMSNArch(patch_size=4), Memory(int(0.3 * GB), "test"))
    assert plan.sizes == () and plan.refusal is not None
    assert plan.refusal == ("onnxruntime at batch 1 needs about 910 MB of activations, 240 MB usable of 300 MB "
                            "available (test)")


def test_parity_runs_pytorch_in_chunks_and_onnxruntime_at_each_whole_batch(demo_artifacts: Path) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.fp32.spec import ExportSpec
    from vitmsn.export.fp32.stages import ort_runner, torch_runner

    ck = load_checkpoint("demo")
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    seen: dict[str, list[int]] = {"onnx": [], "torch": []}
    run_onnx, run_torch = ort_runner(demo_artifacts / "model.fp32.onnx", spec.input.name), torch_runner(ck.build_model(), spec)

    def onnx(x: np.ndarray) -> dict[str, np.ndarray]:
        seen["onnx"].append(len(x))
        return run_onnx(x)

    def torch_(x: np.ndarray) -> dict[str, np.ndarray]:
        seen["torch"].append(len(x))
        return run_torch(x)

    stage = checks.check_runtime_parity(onnx, torch_, spec, batch_sizes=(1, 3, 5), torch_chunk=2)
    assert stage.passed, stage.detail
    assert seen == {"onnx": [1, 3, 5], "torch": [2, 2, 1]}  # the reference once, for the 5 rows of the largest batch


def test_the_profile_max_runs_whole_on_onnxruntime_from_rows_pytorch_computed_for_the_smaller_sizes(
        demo_artifacts: Path) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.fp32.spec import ExportSpec
    from vitmsn.export.fp32.stages import ort_runner, torch_runner

    ck = load_checkpoint("demo")
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    seen: dict[str, list[int]] = {"onnx": [], "torch": []}
    run_onnx, run_torch = ort_runner(demo_artifacts / "model.fp32.onnx", spec.input.name), torch_runner(ck.build_model(), spec)
    shift = {"rows": 0}

    def onnx(x: np.ndarray) -> dict[str, np.ndarray]:
        seen["onnx"].append(len(x))
        out = run_onnx(x)
        return {k: np.roll(v, shift["rows"], axis=0) if len(x) == 20 else v for k, v in out.items()}

    def torch_(x: np.ndarray) -> dict[str, np.ndarray]:
        seen["torch"].append(len(x))
        return run_torch(x)

    kept: list[checks.Reference] = []
    stage = checks.check_runtime_parity(onnx, torch_, spec, batch_sizes=(1, 3, 8, 20), torch_chunk=4, keep=kept)
    assert stage.passed, stage.detail
    (rows,) = kept  # two rows the graph matched, owning their memory (the check's other arrays are freed)
    assert rows.feeds["pixel_values"].shape[0] == 2 and rows.feeds["pixel_values"].flags.owndata
    assert all(v.shape[0] == 2 and v.flags.owndata for v in rows.outputs.values())
    assert seen == {"onnx": [1, 3, 8, 20], "torch": [4, 4]}  # PyTorch: the 8 distinct rows, never the batch of 20
    assert stage.metrics["reference_images"] == 8 and "8 reference images" in stage.detail
    seconds = stage.metrics["seconds"]  # where the check's time went: the reference, then each whole batch
    assert list(seconds["onnxruntime"]) == ["1", "3", "8", "20"]
    assert all(isinstance(s, float) and s >= 0 for s in [seconds["pytorch_reference"], *seconds["onnxruntime"].values()])
    shift["rows"] = 8  # a graph that shifts rows at the large batch: its rows are the wrong images' outputs
    kept.clear()
    stage = checks.check_runtime_parity(onnx, torch_, spec, batch_sizes=(1, 3, 8, 20), torch_chunk=4, keep=kept)
    assert not stage.passed and stage.detail.startswith("batch 20: output"), stage.detail
    assert not kept  # nothing to check a later graph against: this one did not match


def test_parity_stage_fails_with_the_numbers_when_nothing_fits(demo_artifacts: Path) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.fp32.spec import BatchRange, ExportSpec
    from vitmsn.export.fp32.stages import fp32_stages

    ck = load_checkpoint("demo")
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    stages = fp32_stages(demo_artifacts / "model.fp32.onnx", spec, ck.build_model(), BatchRange(1, 8, 32),
                         memory=Memory(1000, "test"))
    assert [s.passed for s in stages] == [True, True, False]
    assert stages[2].detail.startswith("not run: ") and "needs about" in stages[2].detail
    assert list(stages[2].metrics["plan"]["requested"]) == [1, 3, 8, 32]


def test_parity_stage_runs_the_sizes_that_fit_and_says_which_did_not(demo_artifacts: Path) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.fp32.spec import BatchRange, ExportSpec
    from vitmsn.export.fp32.stages import fp32_stages

    ck = load_checkpoint("demo")
    spec = ExportSpec(ck.arch, ck.task, ck.num_labels)
    per_image = activation_bytes(ck.arch, 1, runtime="onnxruntime")
    stages = fp32_stages(demo_artifacts / "model.fp32.onnx", spec, ck.build_model(), BatchRange(1, 8, 32),
                         memory=Memory(int(4.5 * per_image / 0.8), "test"))
    parity = stages[2]
    assert parity.passed, parity.detail
    assert parity.metrics["batch_sizes"] == [1, 3, 4]
    assert "batch 8 not run" in parity.detail and "batch 32 not run" in parity.detail and "batch 4 instead" in parity.detail


def test_stage_peak_rss_is_the_peak_of_its_own_window() -> None:
    import io
    from types import SimpleNamespace

    import time

    from vitmsn.core.progress import _SAMPLE_SECONDS, StageLog, activity, console

    con = console()
    saved, con.pinned = con.pinned, io.StringIO()
    try:
        stages = StageLog([SimpleNamespace(stage="small", passed=True, detail="")])
        activity("allocating")
        block = np.ones(400_000_000 // 8)  # 400 MB, touched
        # Held for a few sampling periods: after earlier tests the process's high-water mark may already be above
        # this, and then the window's peak comes from the sampler, which by design can miss a shorter peak.
        time.sleep(4 * _SAMPLE_SECONDS)
        del block
        stages += [SimpleNamespace(stage="large", passed=True, detail="")]
        activity("quiet")
        stages += [SimpleNamespace(stage="after", passed=True, detail="")]
    finally:
        con.pinned = saved
    small, large, after = (r["peak_rss_mb"] for r in stages.resources())
    assert large >= small + 350 and after < large - 300, stages.resources()


def test_fused_fp32_flavour_is_not_run_when_the_optimizer_cannot_fit(demo_artifacts: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from vitmsn.export.fp32.checkpoint import load_checkpoint
    from vitmsn.export.fp32.stages import fused_fp32_step

    monkeypatch.setenv("VITMSN_MEMORY_LIMIT", "1M")  # less than this process holds already
    stage, flavour = fused_fp32_step(tmp_path, demo_artifacts / "model.fp32.onnx", load_checkpoint("demo"))
    assert flavour is None and not stage.passed
    assert stage.detail.startswith("not run: ONNX Runtime's transformer optimizer needs about ")
    assert "0 MB usable of 0 MB available (VITMSN_MEMORY_LIMIT less this process's RSS)" in stage.detail
    assert not list(tmp_path.iterdir())  # nothing written


def test_autocast_range_check_runs_on_as_many_images_as_all_their_intermediate_outputs_fit() -> None:
    """AutoCast's FP16 range check holds every intermediate output of every reference image at once: ViT-L/7 on
    one image peaked at 22.3 GB. By hand, per image: (heads x tokens^2 x 1.6 + tokens x (8 x hidden + 2 x
    intermediate)) x 4 bytes x layers x 4, beside 4 copies of the weights (12 x hidden^2 x layers x 4 bytes);
    as many images as fit (at most 16), none when one does not (said)."""
    from vitmsn.export.precision.fp16 import reference_samples

    def by_hand(heads: int, tokens: int, hidden: int, inter: int, layers: int) -> float:
        return (heads * tokens**2 * 1.6 + tokens * (8 * hidden + 2 * inter)) * 4 * layers * 4

    l16 = ViTMSNArch(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
    assert 1.6 * GB < by_hand(16, 197, 1024, 4096, 24) < 1.65 * GB
    assert 4 * 12 * 1024**2 * 24 * 4 == 4_831_838_208
    assert reference_samples(l16, int(12 * GB)) == (4, None)  # 4.83 GB + 4 x 1.62 GB fit in 12 GB, + 5 do not
    b16 = ViTMSNArch()
    assert reference_samples(b16, int(12 * GB)) == (16, None)  # at most the 16 images it asks for
    l7 = ViTMSNArch(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    patch_size=7)
    assert 16.7 * GB < by_hand(16, 1025, 1024, 4096, 24) < 16.9 * GB
    n, why = reference_samples(l7, int(15 * GB))
    assert n == 0 and "not run" in why and "16.8 GB for one image beside 4.8 GB" in why and "15.0 GB usable" in why


def test_an_onnx_model_written_one_tensor_at_a_time_loads_and_runs_as_the_same_model(demo_artifacts: Path,
                                                                                     tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort

    from vitmsn.export.onnx_file import save_onnx

    model = onnx.load(str(demo_artifacts / "model.fp32.onnx"))
    onnx.helper.set_model_props(model, {"vitmsn": "kept"})  # a repeated field of the model itself
    model.doc_string = "kept too"
    save_onnx(model, tmp_path / "m.onnx")
    got = onnx.load(str(tmp_path / "m.onnx"))
    assert {t.name: t.raw_data for t in got.graph.initializer} == {t.name: t.raw_data for t in model.graph.initializer}
    del got.graph.initializer[:], model.graph.initializer[:]
    assert got == model  # every other field of the model and its graph, in order
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]  # batch 2
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    want, have = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixel_values": x})
                  for p in (demo_artifacts / "model.fp32.onnx", tmp_path / "m.onnx"))
    assert all(np.array_equal(a, b) for a, b in zip(want, have))


def test_int8_calibration_batch_shrinks_to_memory_divides_the_images_and_refuses_what_cannot_fit() -> None:
    from vitmsn.export.fp32.memory import calibration_batch, calibration_bytes

    b4 = ViTMSNArch(patch_size=4)  # 3,137 tokens: ModelOpt's calibration measured 3.4 GB per image, 3.7 GB fixed
    graph = 350 * 10**6
    assert 3.4 * GB < calibration_bytes(b4, 2, graph) - calibration_bytes(b4, 1, graph) < 1.3 * 3.4 * GB
    assert calibration_batch(b4, 32, graph, Memory(int(100 * GB), "test")) == (8, None)
    batch, note = calibration_batch(b4, 32, graph, Memory(int(22 * GB), "test"))  # a 24 GiB machine: 3 fit
    assert batch == 2 and note.startswith("calibration at batch 2 instead of 8: batch 4 needs about")
    batch, _ = calibration_batch(b4, 30, graph, Memory(int(22 * GB), "test"))
    assert batch == 3  # the largest size that fits and divides 30: every image calibrates once
    batch, note = calibration_batch(b4, 32, graph, Memory(int(6 * GB), "test"))
    assert batch == 0 and re.match(r"calibrating one image needs about 8\.\d GB, 4\.8 GB usable", note)
    # ONNX Runtime's calibration (the CPU flavour) bins the 12 x 3,137^2 attention scores of every layer too
    assert calibration_batch(b4, 32, graph, Memory(int(22 * GB), "test"), scores=True)[0] == 0
    assert calibration_batch(ViTMSNArch(), 32, graph, Memory(int(22 * GB), "test"), scores=True) == (8, None)


def test_an_int8_export_that_cannot_calibrate_one_image_is_refused_before_the_fp32_export(tmp_path: Path) -> None:
    """Said at the start, exit 2 and nothing written: not after the FP32 export and its checks, which took 10 minutes
    before the ViT-L/7 INT8 export learned that one calibration image could not fit."""
    from vitmsn.export.demo import write_dataset

    calib, out = tmp_path / "calib", tmp_path / "art"
    write_dataset(calib, per_class=4, split="train")  # 32 images: 16 calibrate, 16 are held out
    proc = subprocess.run([str(Path(sys.executable).parent / "vitmsn-export"), "--model", "demo", "--precision", "int8",
                           "--calib-images", str(calib), "--calib-samples", "16", "--engine", "skip", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", VITMSN_MEMORY_LIMIT="1M"))
    assert proc.returncode == 2, proc.stderr
    assert "INT8: calibrating one image needs about" in proc.stderr and "Traceback" not in proc.stderr
    assert "exporting model.fp32.onnx" not in proc.stderr  # before the export, not after it
    assert not out.exists()


def test_the_weights_are_freed_once_the_export_returns_and_the_model_is_deleted(tmp_path: Path) -> None:
    """onnxscript's rewrite rules kept the last graph they matched, and through its initializers every weight of
    the model: ViT-B's 343 MB stayed held through the FP16 and INT8 steps, which size themselves by what is left."""
    import gc

    import torch

    from vitmsn.export.fp32.model import ViTMSNBackbone
    from vitmsn.export.fp32.onnx_export import onnx_from_model
    from vitmsn.export.fp32.spec import BatchRange, ExportSpec
    from vitmsn.export.options import DEFAULT_OPSET

    model = ViTMSNBackbone(TINY).eval()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    onnx_from_model(model, ExportSpec(TINY, "feature-extraction"), tmp_path / "tiny.onnx", opset=DEFAULT_OPSET,
                    batch=BatchRange())
    del model
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.device.type == "cpu"
             and not getattr(o, "fake_mode", None) and o.untyped_storage().data_ptr() in weights]
    assert not alive, f"{len(alive)} of the model's weight tensors are still alive after the export"
