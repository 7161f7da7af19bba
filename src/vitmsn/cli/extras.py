"""Which extra installs a missing package, and the one-line hint that says so.

Imports nothing but the standard library: the console scripts call it before click exists.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import NoReturn

# top-level module name -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "click": "cli",
    "onnxruntime": "onnxruntime",
    "torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "modelopt": "export",
    "polygraphy": "export",
    "safetensors": "export",
    "matplotlib": "export",
    "sklearn": "export",  # --fewshot
    "starlette": "serve",
    "uvicorn": "serve",
    "prometheus_client": "serve",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "tensorrt_rtx": "rtx",
    "tritonclient": "triton",
    "transformers": "test",
}
EXIT_USAGE = 2


def install_hint(module: str, what: str) -> str:
    """``what needs the Python package 'x' (not installed): pip install 'vitmsn[extra]'`` in one line."""
    top = module.split(".")[0]
    extra = EXTRA_OF.get(top)
    fix = f"pip install 'vitmsn[{extra}]'" if extra else f"pip install {top}"
    return f"error: {what} needs the Python package {top!r}, which is not installed; install it with: {fix}"


def missing(*modules: str) -> str | None:
    """The first of ``modules`` that cannot be imported here, or None."""
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):
            return name
    return None


def exit_with_hint(module: str, what: str) -> NoReturn:
    print(install_hint(module, what), file=sys.stderr)
    sys.exit(EXIT_USAGE)


def require(what: str, *modules: str) -> None:
    """Exit 2 with the one-line install hint when one of ``modules`` is missing."""
    name = missing(*modules)
    if name is not None:
        exit_with_hint(name, what)
