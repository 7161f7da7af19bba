"""Which extra installs what a command needs, and the one-line hint that says so.

Imports nothing but the standard library (and :mod:`vitmsn.runtime.backends.device`, which is standard library
only): the console scripts call it before click exists, so a missing extra is named in one step, from
any install profile: ``vitmsn-export`` names ``[export]`` at once, ``vitmsn serve`` ``[serve]``
(with ``cpu`` added when no inference backend is installed either), never ``[cli]`` first.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from vitmsn.runtime.backends.device import module_available, onnxruntime_extra

# top-level module name -> the extra of pyproject.toml that installs it
EXTRA_OF = {
    "click": "cli",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "torch": "export",
    "onnx": "export",
    "onnxscript": "export",
    "modelopt": "export",
    "polygraphy": "export",
    "safetensors": "export",
    "matplotlib": "export",
    "jinja2": "export",
    "huggingface_hub": "export",
    "sklearn": "export",  # --fewshot
    "starlette": "serve",
    "uvicorn": "serve",
    "anyio": "serve",
    "h11": "serve",
    "prometheus_client": "serve",
    "tensorrt": "tensorrt",
    "cuda": "tensorrt",
    "tensorrt_rtx": "rtx",
    "tritonclient": "triton",
    "transformers": "test",
}
EXPORT_MODULES = ("click", "torch", "onnx", "onnxscript", "modelopt", "onnxruntime", "safetensors", "huggingface_hub")
# command -> (the extra that installs it, the modules it cannot start without, whether it needs an inference backend)
NEEDS = {
    "vitmsn-export": ("export", EXPORT_MODULES, False),
    "validate": ("export", EXPORT_MODULES, False),
    "bench": ("export", ("click", "torch", "onnxruntime"), False),
    "predict": ("cli", ("click",), True),
    "inspect": ("cli", ("click",), False),
    "cache": ("cli", ("click",), False),
    "triton": ("triton", ("click", "tritonclient", "onnx"), False),
    "serve": ("serve", ("click", "starlette", "uvicorn", "anyio", "prometheus_client"), True),
}
BACKENDS = ("onnxruntime", "openvino", "tensorrt")
EXIT_USAGE = 2


def install_hint(module: str, what: str, extra: str | None = None) -> str:
    """``what needs the Python package 'x' (not installed): pip install 'vitmsn[extra]'`` in one line."""
    top = module.split(".")[0]
    extra = extra or EXTRA_OF.get(top)
    fix = f"pip install 'vitmsn[{extra}]'" if extra else f"pip install {top}"
    return f"error: {what} needs the Python package {top!r}, which is not installed; install it with: {fix}"


def missing(*modules: str) -> str | None:
    """The first of ``modules`` that cannot be imported here, or None."""
    return next((name for name in modules if not module_available(name)), None)


def exit_with_hint(module: str, what: str, extra: str | None = None) -> NoReturn:
    print(install_hint(module, what, extra), file=sys.stderr)
    sys.exit(EXIT_USAGE)


def require(what: str, *modules: str) -> None:
    """Exit 2 with the one-line install hint when one of ``modules`` is missing."""
    name = missing(*modules)
    if name is not None:
        exit_with_hint(name, what)


def require_command(command: str) -> None:
    """Exit 2 with one hint naming every extra ``command`` lacks here (its own, plus a backend where it needs
    one and none is installed): one ``pip install`` makes it work."""
    extra, modules, needs_backend = NEEDS[command]
    name = missing(*modules)
    no_backend = needs_backend and all(missing(b) for b in BACKENDS)
    if name is None and not no_backend:
        return
    what = f"'{command}'" if command.startswith("vitmsn-") else f"'vitmsn {command}'"
    extras = ([extra] if name is not None else []) + ([onnxruntime_extra()] if no_backend else [])
    if name is None:  # only the backend is missing
        print(f"error: {what} needs an inference backend, and none is installed; install one with: "
              f"pip install 'vitmsn[{','.join(extras)}]' (or 'vitmsn[openvino]')", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    exit_with_hint(name, what, ",".join(extras))
