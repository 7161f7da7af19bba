"""The Python-backend side of a Triton repository: execution environments and the inference model.

Triton's Python backend runs each model in a stub process whose packages come from
``EXECUTION_ENV_PATH`` (a venv directory or a conda-pack archive); vitmsn's ``model.py`` files need
vitmsn's runtime there (numpy, Pillow; ONNX Runtime for the inference model).

numpy: the Python backend of Triton 2.51 (NGC 24.10) and earlier crashes its stub on any BYTES
input (the preprocessing model's encoded images) when the environment has numpy 2.x
(``unpack_from requires a buffer of at least ... bytes``), and works with numpy < 2; measured with
the tritonserver 2.51 bundled in nvidia-pytriton 0.7.0 (tests/test_triton_server.py). Upstream moved
the backend to pybind11 2.12 for numpy 2 in triton-inference-server/python_backend PR #384
(merged 2024-10-18, after the 24.10 branch), so releases from 2.52 (24.11) on should not need it.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path
from typing import Any

from .pbtxt import Enum

ENV_PARAMETER = "EXECUTION_ENV_PATH"
NUMPY2_BROKEN = "Triton 2.51 (NGC 24.10) and earlier"
_DIST = re.compile(r"(?:^|/)site-packages/([A-Za-z0-9_.]+?)-([^/-]+)\.(?:dist|egg)-info(?:/|$)")
_ADDSITEDIR = re.compile(r"""site\.addsitedir\(\s*['"]([^'"]+)['"]""")


def _site_dirs(site: Path, depth: int = 2) -> list[Path]:
    """``site`` and the directories its .pth files add (plain paths, ``site.addsitedir(...)`` lines)."""
    found = [site]
    if depth == 0:
        return found
    for pth in sorted(site.glob("*.pth"))[:100]:
        try:
            lines = pth.read_text(errors="replace").splitlines()[:100]
        except OSError:
            continue
        for line in lines:
            m = _ADDSITEDIR.search(line)
            target = Path(m.group(1)) if m else (Path(line.strip()) if line.strip() and not line.startswith(("#", "import")) else None)
            if target is not None and target.is_dir() and target not in found:
                found += [d for d in _site_dirs(target, depth - 1) if d not in found]
    return found


def env_parameters(python_env: str | None) -> list[dict[str, Any]] | None:
    """The ``parameters`` map (one ``{"key", "value"}`` item) that points a Python-backend model at its
    execution environment."""
    if not python_env:
        return None
    return [{"key": ENV_PARAMETER, "value": {"string_value": python_env}}]


def env_packages(path: Path, limit: int = 200_000) -> dict[str, str]:
    """Installed distributions (normalised name -> version) of a venv directory or a packed archive."""
    found: dict[str, str] = {}

    def add(name: str) -> None:
        m = _DIST.search(name)
        if m:
            found.setdefault(m.group(1).lower().replace("-", "_"), m.group(2))

    if path.is_dir():
        for site in path.glob("lib*/python*/site-packages"):
            for directory in _site_dirs(site):
                for info in list(directory.glob("*-info"))[:limit]:
                    add(f"site-packages/{info.name}")
    elif path.is_file():
        with tarfile.open(path) as archive:  # conda-pack: .tar.gz; names only, nothing extracted
            for i, member in enumerate(archive):
                if i >= limit:
                    break
                add(member.name)
    return found


def _major(version: str) -> int:
    m = re.match(r"\d+", version)
    return int(m.group()) if m else 0


def check_env(python_env: str, needs: tuple[str, ...]) -> list[str]:
    """Warnings about ``python_env`` (checked only where it exists on this machine)."""
    if "$$" in python_env:
        return [f"--python-env {python_env}: a Triton path variable; not checked here"]
    path = Path(python_env)
    if not path.exists():
        return [f"--python-env {python_env}: not on this machine, not checked (it must exist on the Triton server)"]
    if path.is_file() and not tarfile.is_tarfile(path):
        return [f"--python-env {python_env}: neither a directory nor a tar archive (conda-pack); Triton cannot use it"]
    packages = env_packages(path)
    warnings = []
    numpy = packages.get("numpy")
    if numpy is not None and _major(numpy) >= 2:
        warnings.append(f"--python-env {python_env} has numpy {numpy}: the Python backend of {NUMPY2_BROKEN} crashes "
                        "on the encoded-image (BYTES) input with numpy 2.x; install 'numpy<2' there for those releases")
    missing = [p for p in needs if not any(k == p or k.startswith(p + "_") for k in packages)]
    if missing:
        warnings.append(f"--python-env {python_env} lacks {', '.join(missing)}: the models' model.py import vitmsn's "
                        "runtime; pip install vitmsn " + " ".join(p for p in missing if p != "vitmsn") + " there")
    return warnings


def python_inference_config(onnx_config: dict[str, Any], name: str, instances: int,
                            python_env: str | None) -> dict[str, Any]:
    """The Python-backend twin of an ``onnxruntime_onnx`` config: same I/O, batching and labels."""
    config = {k: v for k, v in onnx_config.items() if k not in ("platform", "default_model_filename", "instance_group")}
    config.update(name=name, backend="python", instance_group=[{"count": instances, "kind": Enum("KIND_CPU")}],
                  parameters=env_parameters(python_env))
    return {k: config[k] for k in ("name", "backend", "max_batch_size", "input", "output", "dynamic_batching",
                                   "instance_group", "parameters")}
