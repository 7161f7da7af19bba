"""``vitmsn-export --model owner/name`` from the hub, without the public hub: huggingface_hub's own client
downloads from a hub served on loopback (HF_ENDPOINT, tests/hub_fixtures.py) into the standard cache under
HF_HOME, with its progress bars, the token and --revision; the manifest records the commit. HF_HUB_OFFLINE=1 then
uses the cache alone. The CI sets HF_HUB_OFFLINE=1 for everything: these subprocesses override it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import TINY_CONFIG, save_transformers
from hub_fixtures import start_hub

REPO = "acme/vit-msn-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAG_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    checkpoint = tmp_path_factory.mktemp("hub") / "ck"
    save_transformers(checkpoint, **TINY_CONFIG)
    hub, server = start_hub(REPO, checkpoint, {"main": COMMIT, "v1": TAG_COMMIT})
    yield hub
    server.shutdown()


def _export(hub, tmp_path: Path, *args: str, offline: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="hf_loopback_token",
               HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_TELEMETRY="1")
    exe = Path(sys.executable).parent / "vitmsn-export"
    return subprocess.run([str(exe), *args, "--engine", "skip", "--no-fp32-cpu", "--batch", "1:2:2"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=cwd or tmp_path)


def test_hub_id_downloads_into_the_hf_cache_and_the_manifest_records_the_commit(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hub.requests.clear()
    proc = _export(hub, tmp_path, "--model", REPO, "--revision", "v1", "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["model"]["source"] == REPO and manifest["model"]["revision"] == TAG_COMMIT
    snapshot = tmp_path / "hf-home" / "hub" / "models--acme--vit-msn-tiny" / "snapshots" / TAG_COMMIT
    assert (snapshot / "model.safetensors").is_file() and manifest["model"]["directory"] == str(snapshot)
    assert ("GET", f"/api/models/{REPO}/revision/v1", "Bearer hf_loopback_token") in hub.requests
    assert "Fetching" in proc.stderr  # the hub client's own progress

    hub.requests.clear()  # offline: the cache alone, not one request
    again = _export(hub, tmp_path, "--model", REPO, "--revision", "v1", "--out", str(tmp_path / "b"), offline=True)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["model"]["revision"] == TAG_COMMIT
    assert hub.requests == []


@pytest.mark.parametrize("args, offline, message", [
    (["--model", "acme/nothing-here"], False, "no such directory"),
    (["--model", REPO, "--revision", "v9"], False, "no revision 'v9'"),
    (["--model", REPO], True, "HF_HUB_OFFLINE is set"),
])
def test_hub_failures_are_one_line(hub, tmp_path: Path, args: list[str], offline: bool, message: str) -> None:  # type: ignore[no-untyped-def]
    proc = _export(hub, tmp_path, *args, "--out", str(tmp_path / "x"), offline=offline)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert not (tmp_path / "x").exists()


def test_config_path_that_does_not_exist_says_no_such_directory(hub, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "vitmsn.toml").write_text('model = "checkpoints/my-vit-msn"\nout = "artifacts/my-vit-msn"\n')
    (tmp_path / "sub").mkdir()
    proc = _export(hub, tmp_path, cwd=tmp_path / "sub")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("error: --model checkpoints/my-vit-msn: no such directory"), proc.stderr
    (tmp_path / "checkpoints").mkdir()  # the path's first folder beside the config file: a local path, said as such
    proc = _export(hub, tmp_path, cwd=tmp_path / "sub", offline=True)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert f"{tmp_path / 'checkpoints' / 'my-vit-msn'}: no such directory;" in errors[0], proc.stderr
