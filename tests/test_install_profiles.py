"""Every command in every install profile: its job done, or one line naming the extra to install (exit 2), never a
traceback.

What this simulates, and how: one real environment (the test venv, which has every extra) runs each console script
in a subprocess whose PYTHONPATH starts with a directory holding a ``sitecustomize.py``; it puts a finder first on
``sys.meta_path`` that refuses the top-level packages the profile lacks (``ModuleNotFoundError``, the same error
and ``importlib.util.find_spec`` answer as an absent package). The profiles list the packages each extra of
pyproject.toml brings (with their dependencies that vitmsn imports: huggingface_hub brings httpx, anyio and h11).
What it does not simulate: version conflicts and files an absent package would not have left behind.
tests/test_cli_fresh_venv.py installs one real runtime-only environment from the package index.

The commands that the profile can run are run for real where that is cheap (--version, --help, predict, inspect,
triton); vitmsn-export, validate and bench, which load PyTorch, get --help in the export profile (their full runs
are the subject of their own tests, in the full environment)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

SHIM = '''import os, sys
HIDDEN = set(os.environ["VITMSN_TEST_HIDE"].split(","))


class HideUninstalled:
    """Packages of this profile's missing extras are not installed, as far as imports can tell."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, HideUninstalled())
'''
# Every optional top-level package vitmsn imports; a profile hides those it does not list.
OPTIONAL = ("click", "onnxruntime", "openvino", "torch", "onnx", "onnxscript", "modelopt", "polygraphy", "safetensors",
            "matplotlib", "huggingface_hub", "httpx", "anyio", "h11", "starlette", "uvicorn", "prometheus_client",
            "tritonclient", "grpc", "tensorrt", "tensorrt_rtx", "transformers")
EXPORT = ("click", "onnxruntime", "torch", "onnx", "onnxscript", "modelopt", "polygraphy", "safetensors", "matplotlib",
          "huggingface_hub", "httpx", "anyio", "h11")
PROFILES = {
    "none": (),
    "cpu": ("onnxruntime",),
    "onnxruntime": ("onnxruntime",),
    "openvino": ("openvino",),
    "export": EXPORT,
    "serve": ("click", "starlette", "uvicorn", "anyio", "h11", "prometheus_client"),
    "triton": ("click", "tritonclient", "grpc", "onnx"),
}
COMMANDS = {
    "version": ["vitmsn", "--version"],
    "export-version": ["vitmsn-export", "--version"],
    "help": ["vitmsn", "--help"],
    "predict": ["vitmsn", "predict", "ARTIFACTS", "IMAGE"],
    "inspect": ["vitmsn", "inspect", "ARTIFACTS"],
    "triton": ["vitmsn", "triton", "ARTIFACTS", "--repo", "REPO"],
    "serve": ["vitmsn", "serve", "ARTIFACTS", "--port", "0"],
    "validate": ["vitmsn", "validate", "ARTIFACTS", "--images", "IMAGES"],
    "bench": ["vitmsn", "bench", "ARTIFACTS"],
    "export": ["vitmsn-export", "--model", "demo", "--out", "OUT"],
    "cache": ["vitmsn", "cache"],
}
OK = "ok"
# profile -> command -> "ok" or the extras the one-line hint must name (no NVIDIA GPU is visible: CPU backend 'cpu')
EXPECTED = {
    "none": {"help": "cli", "predict": "cli,cpu", "inspect": "cli", "triton": "triton", "serve": "serve,cpu",
             "validate": "export", "bench": "export", "export": "export", "cache": "cli"},
    "cpu": {"help": "cli", "predict": "cli", "inspect": "cli", "triton": "triton", "serve": "serve",
            "validate": "export", "bench": "export", "export": "export", "cache": "cli"},
    "onnxruntime": {"help": "cli", "predict": "cli", "inspect": "cli", "triton": "triton", "serve": "serve",
                    "validate": "export", "bench": "export", "export": "export", "cache": "cli"},
    "openvino": {"help": "cli", "predict": "cli", "inspect": "cli", "triton": "triton", "serve": "serve",
                 "validate": "export", "bench": "export", "export": "export", "cache": "cli"},
    "export": {"help": OK, "predict": OK, "inspect": OK, "triton": "triton", "serve": "serve",
               "validate": OK, "bench": OK, "export": OK},
    "serve": {"help": OK, "predict": "cpu", "inspect": OK, "triton": "triton", "serve": "cpu",
              "validate": "export", "bench": "export", "export": "export"},
    "triton": {"help": OK, "predict": "cpu", "inspect": OK, "triton": OK, "serve": "serve,cpu",
               "validate": "export", "bench": "export", "export": "export"},
}
HEAVY = ("validate", "bench", "export")  # run with --help where the profile has what they need


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("profile-shim")
    (d / "sitecustomize.py").write_text(SHIM)
    return d


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_command_in_profile_works_or_names_the_extra(profile: str, command: str, shim: Path, demo_artifacts: Path,
                                                     tmp_path: Path) -> None:
    expected = EXPECTED[profile].get(command, OK)
    image = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(image)
    (tmp_path / "images").mkdir()
    given = {"ARTIFACTS": str(demo_artifacts), "IMAGE": str(image), "REPO": str(tmp_path / "repo"),
             "IMAGES": str(tmp_path / "images"), "OUT": str(tmp_path / "out")}
    script, *args = [given.get(a, a) for a in COMMANDS[command]]
    if expected == OK and command in HEAVY:
        args = [a for a in args if a in ("validate", "bench")] + ["--help"]
    hidden = [m for m in OPTIONAL if m not in PROFILES[profile]]
    env = dict(os.environ, PYTHONPATH=f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               VITMSN_TEST_HIDE=",".join(hidden), CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1",
               VITMSN_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([str(Path(sys.executable).parent / script), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr
    if expected == OK:
        assert proc.returncode == 0, proc.stderr
        return
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and f"pip install 'vitmsn[{expected}]'" in lines[0], proc.stderr
