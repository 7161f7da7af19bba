"""``vitmsn validate`` and the artifacts directory it reads and updates, through real processes.

* It holds the export's lock (``.<name>.lock`` beside the directory): while ``vitmsn-export`` writes the
  directory, validate exits 2 naming that export; while validate runs, an export exits 2 naming the
  validate. Neither waits. So a report of the old graphs never lands in a re-exported directory.
  The validate is held mid-run deterministically: one of its images is a FIFO the test feeds later.
* A directory it cannot write is refused before any work, in one line (run with the file-mode checks
  root would bypass: as root the child drops CAP_DAC_OVERRIDE from its capability bounding set).
* Labels in manifest.json that differ from the checkpoint's ``id2label`` fail the run (exit 1).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1")
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _snapshot(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def _wait_for(what: str, ready, proc: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{what}: not seen within {timeout:.0f}s")


def _export(out: Path) -> list[str]:
    return [str(BIN / "vitmsn-export"), "--model", "demo", "--precision", "fp32", "--engine", "skip", "--batch", "1:2:4",
            "--no-fp32-cpu", "--out", str(out)]


def _validate(art: Path, images: Path, *extra: str) -> list[str]:
    return [str(BIN / "vitmsn"), "validate", str(art), "--images", str(images), "--quiet", "--backend", "onnxruntime",
            *extra]


@pytest.fixture()
def art(demo_artifacts: Path, tmp_path: Path) -> Path:
    out = tmp_path / "art"
    shutil.copytree(demo_artifacts, out)
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vitmsn.export.demo import write_dataset

    out = tmp_path_factory.mktemp("lock-images")
    write_dataset(out, per_class=1, split="heldout")
    return out


def test_validate_exits_2_naming_the_export_that_is_writing_the_directory(art: Path, images: Path,
                                                                          tmp_path: Path) -> None:
    before = _snapshot(art)
    export = subprocess.Popen(_export(art), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for("the export's staging directory", lambda: any(art.parent.glob(".art.staging-*")), export)
        validate = subprocess.run(_validate(art, images), capture_output=True, text=True, timeout=300, env=ENV)
        assert validate.returncode == 2, validate.stdout + validate.stderr
        assert f"vitmsn-export (process {export.pid})" in validate.stderr, validate.stderr
        assert "Traceback" not in validate.stderr
        assert export.poll() is None  # the export was not disturbed
    finally:
        export.send_signal(signal.SIGTERM)
        export.communicate(timeout=240)
    assert _snapshot(art) == before  # no report of the old graphs was written into the directory


def test_an_export_started_while_validate_runs_exits_2_naming_the_validate(art: Path, images: Path,
                                                                           tmp_path: Path) -> None:
    held = tmp_path / "held"
    shutil.copytree(images, held)
    fifo = held / "circle" / "aaa_fed_by_the_test.png"  # sorted first: validate blocks reading it
    os.mkfifo(fifo)
    lock = art.parent / ".art.lock"
    validate = subprocess.Popen(_validate(art, held), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        _wait_for("validate's lock", lambda: lock.is_file() and lock.read_text().startswith(f"{validate.pid} "), validate)
        export = subprocess.run(_export(art), capture_output=True, text=True, timeout=300, env=ENV)
        assert export.returncode == 2, export.stderr
        assert f"vitmsn validate (process {validate.pid})" in export.stderr and "Traceback" not in export.stderr
        feeder = threading.Thread(target=_feed, args=(fifo, (images / "circle" / "circle_0000.jpg").read_bytes(),
                                                        validate), daemon=True)
        feeder.start()  # validate goes on: the image it is waiting for (each time it reads it)
        out, err = validate.communicate(timeout=300)
    finally:
        if validate.poll() is None:
            validate.kill()
    # 9 images decide no gate: the validate ran to its end and says so (exit 1, INCONCLUSIVE), a verdict, not a refusal
    assert validate.returncode == 1 and err.strip().splitlines()[-1].startswith("INCONCLUSIVE: "), out + err
    assert not lock.exists()  # released
    verify = subprocess.run([str(BIN / "vitmsn"), "inspect", str(art), "--verify"], capture_output=True, text=True,
                            timeout=120, env=ENV)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    report = json.loads((art / "report.json").read_text())
    assert report["images"]["evaluated"] == 9  # the fed image counted: this validate's report, on these graphs


def _feed(fifo: Path, data: bytes, reader: subprocess.Popen) -> None:
    """Write ``data`` into ``fifo`` each time ``reader`` opens it (the report reads the worst images again)."""
    while reader.poll() is None:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: nobody has it open for reading yet
                raise
            time.sleep(0.02)
            continue
        os.set_blocking(fd, True)
        try:
            os.write(fd, data)
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)


def _without_dac_override() -> None:
    """In the child, as root: drop the capabilities that let root ignore file modes (they are then lost at exec)."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_directory_validate_cannot_write_is_refused_before_any_work(art: Path, images: Path) -> None:
    for p in art.iterdir():
        p.chmod(0o444)
    art.chmod(0o555)
    before = _snapshot(art)
    try:
        proc = subprocess.run(_validate(art, images), capture_output=True, text=True, timeout=300, env=ENV,
                              preexec_fn=_without_dac_override)
    finally:
        art.chmod(0o755)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"ARTIFACTS {art}: cannot be written" in lines[0] and "--out" in lines[0], proc.stderr
    assert _snapshot(art) == before and not (art.parent / ".art.lock").exists()
    # the reports may go elsewhere: the read-only directory is then only read
    elsewhere = art.parent / "reports"
    ok = subprocess.run(_validate(art, images, "--out", str(elsewhere)), capture_output=True, text=True, timeout=300,
                        env=ENV, preexec_fn=_without_dac_override)
    # 8 images decide no gate: the run does its work and ends inconclusive (exit 1), not refused (2)
    assert ok.returncode == 1 and ok.stderr.strip().splitlines()[-1].startswith("INCONCLUSIVE: "), ok.stdout + ok.stderr
    assert (elsewhere / "report.json").is_file() and _snapshot(art) == before
    assert json.loads((elsewhere / "report.json").read_text())["images"]["evaluated"] == 8


def test_manifest_labels_that_differ_from_the_checkpoint_fail_validate(art: Path, images: Path) -> None:
    manifest = json.loads((art / "manifest.json").read_text())
    labels = manifest["labels"]
    labels["0"], labels["1"] = labels["1"], labels["0"]  # what an edit of manifest.json can do: hashes do not cover it
    (art / "manifest.json").write_text(json.dumps(manifest, indent=2))
    proc = subprocess.run(_validate(art, images), capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "labels_match_checkpoint" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((art / "report.json").read_text())
    check = next(c for c in report["checks"] if c["check"] == "labels_match_checkpoint")
    assert check["passed"] is False and repr(labels["0"]) in check["detail"]
