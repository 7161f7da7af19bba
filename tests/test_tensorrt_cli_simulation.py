"""``vitmsn predict/validate/bench/serve --backend tensorrt`` as subprocesses, under the SIMULATED
CUDA/TensorRT runtimes (tests/trt_simulation/shim puts them in the child process). This checks the
CLIs' TensorRT paths end to end against the simulation's contracts (no leak, no memory misuse, one
deserialization per engine); it is not GPU evidence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from runtime_fixtures import Exported, rt_cls, write_photo_formats  # noqa: F401
from sim_fixtures import sim_artifacts
from trt_simulation import simulation_env

VITMSN = str(Path(sys.executable).parent / "vitmsn")


@pytest.fixture(scope="module")
def setup(rt_cls: Exported, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli-sim")
    art = sim_artifacts(rt_cls.artifacts, root / "artifacts")
    images = write_photo_formats(root / "images")
    return {"root": root, "art": art, "images": [str(images[n]) for n in ("photo.jpg", "photo.png", "grey.jpg", "rgba.png")],
            "dir": root / "images"}


def _run(args: list[str], report: Path, faults: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = simulation_env(report, faults=faults, base=dict(os.environ, HF_HUB_OFFLINE="1", VITMSN_CACHE=str(report.parent / "cache")))
    return subprocess.run([VITMSN, *args], capture_output=True, text=True, timeout=timeout, env=env)


def _clean(report: Path) -> dict:
    r = json.loads(report.read_text())
    assert r["simulation"] and r["violations"] == [] and r["leaks"] == [], r
    return r


def test_predict_tensorrt_matches_onnxruntime(setup: dict, tmp_path: Path) -> None:
    trt = _run(["predict", str(setup["art"]), *setup["images"], "--backend", "tensorrt", "--json"], tmp_path / "r1.json")
    assert trt.returncode == 0, trt.stderr
    assert _clean(tmp_path / "r1.json")["deserializations"] == 1
    ort = _run(["predict", str(setup["art"]), *setup["images"], "--backend", "onnxruntime", "--json"], tmp_path / "r2.json")
    a, b = json.loads(trt.stdout), json.loads(ort.stdout)
    assert [[p["label"] for p in e["predictions"]] for e in a] == [[p["label"] for p in e["predictions"]] for e in b]
    assert all(abs(p["score"] - q["score"]) < 1e-4 for e, f in zip(a, b) for p, q in zip(e["predictions"], f["predictions"]))


def test_predict_auto_falls_back_with_one_note(setup: dict, tmp_path: Path) -> None:
    r = _run(["predict", str(setup["art"]), setup["images"][0]], tmp_path / "r.json", faults={"malloc_fails_at": 2})
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note:") and "engine" in line]
    assert len(notes) == 1 and "cudaErrorMemoryAllocation" in notes[0] and "onnxruntime" in r.stderr
    _clean(tmp_path / "r.json")


def test_validate_tensorrt(setup: dict, tmp_path: Path) -> None:
    r = _run(["validate", str(setup["art"]), "--images", str(setup["dir"]), "--backend", "tensorrt", "--out",
              str(tmp_path / "report"), "--quiet"], tmp_path / "r.json")
    assert r.returncode in (0, 1), r.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = [x for x in report["results"] if x["backend"].startswith("tensorrt")]
    assert rows and rows[0]["metrics"]["top1_agreement"] == 1.0 and rows[0]["metrics"]["cosine_min"] > 0.9999
    cross = report["polygraphy"][0]  # Polygraphy cannot drive the simulation: said, not counted as a pass
    assert not cross["ran"] and "simulation" in cross["detail"]
    _clean(tmp_path / "r.json")


def test_bench_tensorrt(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = _run(["bench", str(setup["art"]), "--backend", "tensorrt", "--batch-sizes", "1,4", "--warmup", "1",
              "--iterations", "2", "--json", str(out)], tmp_path / "r.json", timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [x for x in json.loads(out.read_text())["results"] if x["backend"] == "tensorrt"]
    assert {x["batch_size"] for x in rows} == {1, 4} and all(x["verified"] is False for x in rows)
    assert _clean(tmp_path / "r.json")["deserializations"] == 1


def test_serve_tensorrt(setup: dict, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    env = simulation_env(report, base=dict(os.environ, VITMSN_CACHE=str(tmp_path / "cache")))
    proc = subprocess.Popen([VITMSN, "serve", str(setup["art"]), "--backend", "tensorrt", "--host", "127.0.0.1",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        for _ in range(600):  # bounded: up to ~60 s for the server to start
            line = proc.stdout.readline()
            if "listening on" in line or proc.poll() is not None:
                break
        assert "listening on" in line and "tensorrt" in line, (line, proc.poll())
        url = line.split("listening on ")[1].split(" ")[0]
        body = Path(setup["images"][0]).read_bytes()
        with urllib.request.urlopen(urllib.request.Request(url + "/predict", data=body, method="POST"), timeout=30) as resp:
            assert resp.status == 200 and json.loads(resp.read())["predictions"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr.read()
    _clean(report)
