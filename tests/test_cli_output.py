"""What an export prints: live stage lines, the stage table passed or failed, a heartbeat, progress text, and
third-party output kept in export.log (named in the manifest) instead of the terminal."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from vitmsn.core import third_party_output
from vitmsn.cli.export_cmd import command as export_command
from vitmsn.core.progress import Heartbeat, Progress, StageLog, activity, console, stage_table
from vitmsn.runtime.manifest import sha256_file

from checkpoints import TINY_CONFIG, save_transformers


@pytest.fixture(scope="module")
def tiny_ck(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("out") / "ck"
    save_transformers(d, **TINY_CONFIG)
    return d


# ---- progress text ------------------------------------------------------------------------------
def test_progress_never_prints_nan_or_zero_rate_and_ends_once() -> None:
    buf = io.StringIO()
    with Progress("tries", 3, unit="try", stream=buf, interval=0.0) as bar:
        bar.update(0)  # nothing done yet: no rate, no time left
        time.sleep(1.1)  # slower than one unit per second (a re-quantization try takes about a minute)
        bar.update()
        bar.update()
        bar.update()
    text = buf.getvalue()
    assert "nan" not in text and "0.0 try/s" not in text, text
    assert "s/try" in text  # slow units read as seconds per unit
    assert text.count("3/3") == 1, text  # the 100% line once, not again on close


def test_stage_log_prints_each_stage_when_added_and_the_table() -> None:
    buf = io.StringIO()
    con = console()
    saved = con.pinned
    con.pinned = buf
    try:
        stages = StageLog([SimpleNamespace(stage="first", passed=True, detail="fine")])
        assert "[ok] first" in buf.getvalue()
        activity("converting")
        stages += [SimpleNamespace(stage="second", passed=False, detail="broken by 3")]
        lines = buf.getvalue().splitlines()
        assert "... converting" in lines[-2] and re.search(r"\[FAIL\] second \(\d+\.\ds\): broken by 3", lines[-1])
    finally:
        con.pinned = saved
    table = stage_table(stages)
    assert table.splitlines()[0] == "stages (1 of 2 passed):"
    # each stage's time and the peak RSS while it ran, between the name and the detail
    assert re.search(r"ok\s+first\s+\d+\.\ds\s+\d+\.\d GB\s+fine", table), table
    assert re.search(r"FAIL\s+second\s+\d+\.\ds\s+\d+\.\d GB\s+broken by 3", table), table
    assert [r["stage"] for r in stages.resources()] == ["first", "second"]
    assert all(r["peak_rss_mb"] > 0 and r["seconds"] >= 0 for r in stages.resources())


def test_time_goes_to_the_steps_that_spent_it_not_to_the_first_check_reported_after_them() -> None:
    """A step that converts and then reports its checks together (the INT8 step: calibration, CPU placement, then
    seven stages at once) spent its time converting: its stages get no time of their own, and the step timeline
    says where the time went, each step with its own wall time."""
    buf = io.StringIO()
    con = console()
    saved = con.pinned
    con.pinned = buf
    try:
        stages = StageLog()
        activity("calibrating")
        time.sleep(0.4)
        activity("placing for the CPU")
        time.sleep(0.2)
        stages += [SimpleNamespace(stage="checker", passed=True, detail="fine"),
                   SimpleNamespace(stage="drift", passed=True, detail="fine")]
        steps = stages.step_resources()
    finally:
        con.pinned = saved
    assert [r["seconds"] for r in stages.resources()] == [None, None]
    assert [s["step"] for s in steps] == ["calibrating", "placing for the CPU"]
    assert 0.4 <= steps[0]["seconds"] < 0.6 and 0.2 <= steps[1]["seconds"] < 0.4, steps
    table = stage_table(stages)
    assert re.search(r"ok\s+checker\s+fine", table), table  # no time column filled for it
    assert re.search(r"time by step.*\n\s+0\.[45]s\s+\d+\.\d GB\s+calibrating\n\s+0\.[23]s\s+\d+\.\d GB\s+placing", table), table


def test_the_stage_table_says_inconclusive_where_the_gates_could_not_decide() -> None:
    """A drift stage whose only unmet gate is inconclusive (too few images) is not a FAIL; one failed gate is."""
    from vitmsn.export.fp32.checks import StageResult

    undecided = {"gate": "min_top1_agreement", "passed": False, "verdict": "inconclusive"}
    missed = {"gate": "min_cosine", "passed": False, "verdict": "failed"}
    stages = [StageResult("onnx_checker", True, "fine"),
              StageResult("drift_int8", False, "undecided", {"gates": [undecided]}),
              StageResult("drift_fp16", False, "missed", {"gates": [undecided, missed]}),
              StageResult("onnxruntime_parity", False, "broken")]
    table = stage_table(stages)
    assert re.search(r"INCONCLUSIVE\s+drift_int8\s+undecided", table), table
    assert re.search(r"FAIL\s+drift_fp16\s+missed", table) and re.search(r"FAIL\s+onnxruntime_parity\s+broken", table)
    assert len({line.index(s.stage) for line, s in zip(table.splitlines()[1:], stages)}) == 1  # one column


def test_heartbeat_names_the_running_step_when_quiet() -> None:
    # The bound is a line at least every 15 s; here the interval is 0.3 s and the wait 2 s (generous).
    buf = io.StringIO()
    con = console()
    saved = con.pinned
    con.pinned = buf
    try:
        activity("quantizing")
        with Heartbeat(interval=0.3):
            time.sleep(2.0)
    finally:
        con.pinned = saved
    beats = [line for line in buf.getvalue().splitlines() if "still running" in line]
    assert beats and all("quantizing" in line for line in beats), buf.getvalue()


# ---- third-party output -------------------------------------------------------------------------
def test_chatter_goes_to_the_log_ours_to_the_console(tmp_path: Path) -> None:
    buf = io.StringIO()
    con = console()
    saved = con.pinned
    con.pinned = buf
    log_path = tmp_path / "export.log"
    try:
        third_party_output.start(log_path)
        print("Collecting tensor data and making histogram ...")
        sys.stderr.write("  0%|          | 0/42 [00:00<?, ?it/s]\n")
        os.write(2, b"[W:onnxruntime:, graph.cc] a C++ warning\n")  # below Python: the file descriptor itself
        logging.getLogger("onnx_ir.passes").info("Removed 121 unused nodes")
        activity("our own line")
    finally:
        third_party_output.stop()
        con.pinned = saved
    log = log_path.read_text()
    for needle in ("Collecting tensor data", "0/42", "a C++ warning", "Removed 121 unused nodes"):
        assert needle in log and needle not in buf.getvalue()
    assert "our own line" in buf.getvalue() and "our own line" not in log
    assert sys.stdout is not None and not third_party_output.active()


def test_export_prints_live_then_the_table_and_logs_chatter(tiny_ck: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    exe = Path(sys.executable).parent / "vitmsn-export"
    proc = subprocess.run([str(exe), "--model", str(tiny_ck), "--precision", "fp16", "--batch", "2:4:8", "--engine",
                           "skip", "--out", str(out), "-v"], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    assert err.splitlines()[0].startswith("vitmsn-export ")  # the first line comes before the heavy imports
    # each stage as it finishes, with its time, then the whole table
    assert re.search(r"\[\s*\d+\.\ds\] \[ok\] onnx_checker \(\d+\.\ds\)", err)
    assert err.index("[ok] drift_fp16") < err.index("stages (")
    assert re.search(r"ok\s+onnxruntime_parity\s+", err)
    # the parity check runs the profile's min, opt, max and an odd size inside it
    assert "batch sizes [2, 3, 4, 8]" in err
    # the cosine gate's line: the 5th percentile with digits enough to compare with a 0.999999 gate (7 decimals),
    # its one-sided 95% lower bound and the sample size; 16 synthetic inputs are below the 59 a bound needs
    cosine = re.search(r"fp16: cosine_p5 = (\d\.\d{7,}|1) \(95% lower bound (none|\d\.\d{7,}|1), n=(\d+)\), "
                       r"gate >= [\d.]+: (passed|failed|inconclusive)", err)
    assert cosine, err
    assert cosine[3] == "16" and cosine[2] == "none" and cosine[4] == "inconclusive", cosine[0]
    # no third-party chatter on the terminal; our -v lines once
    for noise in ("onnx_ir", "onnxscript", "modelopt", "%|"):
        assert noise not in err, noise
    assert err.count("exporting " + str(tiny_ck)) == 1
    # paths said are the final ones: the staging directory is gone by the end
    assert ".staging-" not in err and f"{out / 'export.log'}" in err
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["logs"]
    assert entry["file"] == "export.log" and entry["sha256"] == sha256_file(out / "export.log")
    log = (out / "export.log").read_text()
    assert "onnx_ir" in log and "[modelopt]" in log  # ModelOpt's own handler writes its lines to the log...
    assert not re.search(r" INFO modelopt\.onnx[\w.]*: ", log)  # ...once: not again through the root logger


def test_failed_run_prints_the_whole_table(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_transformers(tmp_path / "ck", **TINY_CONFIG)
    state = load_file(str(tmp_path / "ck" / "model.safetensors"))
    state["classifier.bias"][0] = float("inf")
    save_file(state, str(tmp_path / "ck" / "model.safetensors"))
    result = CliRunner().invoke(export_command, ["--model", str(tmp_path / "ck"), "--out", str(tmp_path / "o"),
                                                 "--engine", "skip"])
    assert result.exit_code == 1
    assert re.search(r"stages \(\d of \d passed\):", result.output), result.output
    assert re.search(r"ok\s+onnx_checker\s", result.output) and re.search(r"FAIL\s+onnxruntime_parity\s", result.output)
    assert result.output.index("stages (") < result.output.index("FAILED:")


def test_calibration_minimum_message_agrees_in_number(tmp_path: Path) -> None:
    from vitmsn.calibration import CalibrationOptions, calibration_set_from_directory
    from vitmsn.core.errors import InputError
    from vitmsn.runtime.images.preprocess import PreprocessConfig

    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(tmp_path / "one.png")
    with pytest.raises(InputError, match=r"only 1 usable image, at least 4 are needed"):
        calibration_set_from_directory(tmp_path, PreprocessConfig(32, 32).to_manifest(),
                                       CalibrationOptions(samples=8, min_images=4, cache_dir=tmp_path / "cache"))


@pytest.mark.parametrize("profile, sizes", [((1, 8, 32), (1, 3, 8, 32)), ((2, 4, 8), (2, 3, 4, 8)),
                                            ((8, 8, 8), (8,)), ((1, 1, 2), (1, 2)), ((4, 16, 16), (4, 5, 16))])
def test_parity_runs_the_profile_and_an_odd_size_inside(profile: tuple[int, int, int], sizes: tuple[int, ...]) -> None:
    from vitmsn.export.fp32.checks import parity_batch_sizes

    assert parity_batch_sizes(*profile) == sizes
