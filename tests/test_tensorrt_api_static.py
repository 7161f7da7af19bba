"""Static check of every TensorRT API use that no test can execute here (no GPU, no TensorRT libraries).

mypy type-checks the builder (``export/engine.py``) and the runtime runner
(``runtime/tensorrt_runner.py``) three times, each time with a different ``tensorrt`` module:

1. TensorRT 10.13: the ``tensorrt-stubs`` package;
2. TensorRT 11.x: stubs generated here by ``stubgen`` from the real 11.x Python bindings
   (``tensorrt-cu13-bindings``). That wheel's extension module links against libnvinfer,
   libnvinfer_plugin and libnvonnxparser, which cannot be installed here; it only calls nine
   C entry points of them at run time (``nm -D --undefined-only``), so it is loaded against tiny
   stand-in libraries compiled here that define those nine symbols. Nothing is ever called: the
   bindings are only introspected;
3. TensorRT-RTX: stubs generated from the installed ``tensorrt_rtx`` bindings (the builder's
   second target).

An error counts only if mypy does not report it when ``tensorrt`` is an untyped module (so an
unrelated typing slip elsewhere in a file cannot fail this test, and a TensorRT one cannot hide).
A canary snippet that uses APIs removed in TensorRT 11 proves each stub set really checks.
Finally, every attribute name the code feature-detects by string (``hasattr(trt.X, "NAME")``,
``getattr(trt.X, "NAME", ...)``) must exist in at least one of the three APIs: a typo there
would silently disable a feature.
"""

from __future__ import annotations

import ast
import importlib.util
import keyword
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [ROOT / "export" / "engines" / "builder.py", ROOT / "runtime" / "tensorrt_runner.py"]
# The C entry points tensorrt_bindings/tensorrt.so (11.x) imports from the TensorRT libraries.
STAND_IN_C = """
#include <stddef.h>
void* createInferBuilder_INTERNAL(void* a, int b) { return NULL; }
void* createInferRefitter_INTERNAL(void* a, void* b, int c) { return NULL; }
void* createInferRuntime_INTERNAL(void* a, int b) { return NULL; }
void* createNvOnnxParserRefitter_INTERNAL(void* a, void* b, int c) { return NULL; }
void* createNvOnnxParser_INTERNAL(void* a, void* b, int c) { return NULL; }
void* getBuilderPluginRegistry(int a) { return NULL; }
int getNvOnnxParserVersion(void) { return 0; }
void* getPluginRegistry(void) { return NULL; }
int initLibNvInferPlugins(void* a, const char* b) { return 0; }
"""
STAND_IN_LIBS = ("libnvinfer.so.11", "libnvinfer_plugin.so.11", "libnvonnxparser.so.11")
CANARY = '''
import tensorrt as trt

def canary(config: trt.IBuilderConfig) -> None:
    config.set_flag(trt.BuilderFlag.FP16)
    config.int8_calibrator = None
'''
ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: (?P<msg>.*)$")


def _run(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def _split_top_level(params: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "[(" and 1 or (-1 if ch in "])" else 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur] if cur.strip() else parts


def _repair(text: str) -> str:
    """Make a pybind11-derived stub valid and faithful enough for mypy.

    * pybind11 docstring signatures can put a parameter without default after one with a default
      (``add_scale_nd(..., power: Weights = None, channel_axis: int)``), which is not Python: the
      trailing parameters get ``= ...`` defaults (tensorrt-stubs 10.13 has the same flaw, and
      parameters named after keywords, such as ``in``, which get a trailing underscore);
    * pybind11 sequences (``Dims``) iterate through ``__getitem__``/``__len__``, which Python
      accepts and mypy does not: such classes get an ``__iter__``, so ``tuple(dims)`` type-checks.
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*def \w+\()(.*)(\) -> .*)$", line)
        if not m:
            continue
        try:
            ast.parse(line.strip())
            continue
        except SyntaxError:
            pass
        params, seen_default = [], False
        for p in _split_top_level(m.group(2)):
            name = p.split(":")[0].strip()
            if keyword.iskeyword(name):  # e.g. ``in: list[PluginTensorDesc]`` in tensorrt-stubs 10.13
                p = p.replace(name, name + "_", 1)
            if "=" in p:
                seen_default = True
            elif seen_default and not p.strip().startswith("*") and p.strip() != "/":
                p = p + " = ..."
            params.append(p)
        lines[i] = m.group(1) + ",".join(params) + m.group(3)
    tree = ast.parse("\n".join(lines))
    inserts = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
            if {"__getitem__", "__len__"} <= members and "__iter__" not in members:
                indent = " " * node.body[0].col_offset
                inserts.append((node.body[0].lineno - 1, f"{indent}def __iter__(self) -> _typing.Iterator[_typing.Any]: ..."))
    for at, text_line in sorted(inserts, reverse=True):
        lines.insert(at, text_line)
    return "import typing as _typing\n" + "\n".join(lines) + "\n"


def _stubgen(module: str, out: Path, env: dict[str, str]) -> Path:
    # mypy is compiled with mypyc: "python -m mypy.stubgen" has no code object, so call its main()
    proc = _run([sys.executable, "-c", "import sys; from mypy.stubgen import main; main(sys.argv[1:])",
                 "-m", module, "--inspect-mode", "-o", str(out)], env=env)
    generated = out / Path(*module.split(".")).with_suffix(".pyi")
    assert proc.returncode == 0 and generated.is_file(), f"stubgen {module} failed:\n{proc.stdout}\n{proc.stderr}"
    generated.write_text(_repair(generated.read_text()))
    return generated


@pytest.fixture(scope="module")
def stub_roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | None]:
    """name -> MYPYPATH folder whose ``tensorrt`` is that API (None: the installed tensorrt-stubs)."""
    base = tmp_path_factory.mktemp("trt-stubs")
    missing = [pkg for pkg, mod in (("tensorrt-stubs", "tensorrt_stubs"), ("mypy", "mypy")) if not importlib.util.find_spec(mod)]
    bindings = importlib.util.find_spec("tensorrt_bindings")
    so_dir = Path(next(iter(bindings.submodule_search_locations))) if bindings and bindings.submodule_search_locations else None
    if so_dir is None or not (so_dir / "tensorrt.so").is_file():
        missing.append("tensorrt-cu13-bindings==11.* (the TensorRT 11 Python bindings wheel)")
    assert not missing, f"the static TensorRT check needs: {', '.join(missing)} (pip install them; see pyproject's test extra)"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a C compiler (cc/gcc) is needed to build the stand-in TensorRT libraries"

    libs = base / "libs"
    libs.mkdir()
    (libs / "stand_in.c").write_text(STAND_IN_C)
    for name in STAND_IN_LIBS:
        proc = _run([cc, "-shared", "-fPIC", "-o", str(libs / name), str(libs / "stand_in.c")])
        assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, LD_LIBRARY_PATH=f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}")

    roots: dict[str, Path | None] = {"tensorrt 10.13 (tensorrt-stubs)": None}
    r11 = base / "trt11"
    version = _run([sys.executable, "-c", "import tensorrt_bindings as t; print(t.__version__)"], env=env)
    assert version.returncode == 0 and version.stdout.startswith("11."), version.stderr
    _stubgen("tensorrt_bindings.tensorrt", r11, env)
    (r11 / "tensorrt_bindings" / "__init__.pyi").write_text("from .tensorrt import *\n__version__: str\n")
    (r11 / "tensorrt").mkdir()
    (r11 / "tensorrt" / "__init__.pyi").write_text("from tensorrt_bindings.tensorrt import *\n__version__: str\n")
    roots[f"tensorrt {version.stdout.strip()} (generated)"] = r11

    rtx = base / "rtx"
    _stubgen("tensorrt_rtx_bindings.tensorrt_rtx", rtx, env)
    (rtx / "tensorrt_rtx_bindings" / "__init__.pyi").write_text("from .tensorrt_rtx import *\n__version__: str\n")
    (rtx / "tensorrt").mkdir()
    (rtx / "tensorrt" / "__init__.pyi").write_text("from tensorrt_rtx_bindings.tensorrt_rtx import *\n__version__: str\n")
    roots["tensorrt_rtx (generated)"] = rtx

    untyped = base / "untyped"
    (untyped / "tensorrt").mkdir(parents=True)
    (untyped / "tensorrt" / "__init__.pyi").write_text("from typing import Any\ndef __getattr__(name: str) -> Any: ...\n")
    roots["untyped"] = untyped
    return roots


def _mypy(files: list[Path], root: Path | None, cache: Path) -> set[tuple[str, str]]:
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    if root is not None:
        env["MYPYPATH"] = str(root)
    proc = _run([sys.executable, "-m", "mypy", "--follow-imports=skip", "--ignore-missing-imports", "--no-error-summary",
                 "--show-error-codes", "--no-color-output", "--check-untyped-defs", "--python-version", "3.11",
                 "--cache-dir", str(cache), *map(str, files)], env=env, cwd=ROOT)
    assert proc.returncode in (0, 1), f"mypy crashed:\n{proc.stdout}\n{proc.stderr}"
    errors = set()
    checked = {f.resolve() for f in files}
    for line in proc.stdout.splitlines():
        m = ERROR.match(line)
        # Only errors in the checked files: generated stubs have quirks of their own (e.g. the
        # module's ``bool`` dtype shadows the builtin in annotations), which mypy reports there.
        if m and (ROOT / m["file"]).resolve() in checked:
            errors.add((f"{Path(m['file']).as_posix()}:{m['line']}", m["msg"]))
    return errors


@pytest.mark.slow
def test_tensorrt_api_use_type_checks_against_10_11_and_rtx(stub_roots: dict[str, Path | None], tmp_path: Path) -> None:
    files = [f for f in CHECKED if f.is_file()]
    assert ROOT / "export" / "engines" / "builder.py" in files
    baseline = _mypy(files, stub_roots["untyped"], tmp_path / "cache-untyped")
    problems = []
    for name, root in stub_roots.items():
        if name == "untyped":
            continue
        new = sorted(_mypy(files, root, tmp_path / f"cache-{len(problems)}-{abs(hash(name))}") - baseline)
        problems += [f"[{name}] {where}: {msg}" for where, msg in new]
    assert not problems, "TensorRT API misuse found statically:\n" + "\n".join(problems)


@pytest.mark.slow
def test_canary_proves_each_stub_set_checks(stub_roots: dict[str, Path | None], tmp_path: Path) -> None:
    canary = tmp_path / "canary.py"
    canary.write_text(CANARY)
    for name, root in stub_roots.items():
        errors = _mypy([canary], root, tmp_path / f"cache-{abs(hash(name))}")
        removed_in_11 = any("FP16" in msg for _, msg in errors) and any("int8_calibrator" in msg for _, msg in errors)
        if name.startswith("tensorrt 10") or name == "untyped":
            assert not errors, (name, errors)  # 10.x still has the precision flags and the calibrator
        else:
            assert removed_in_11, (name, errors)


def _feature_detected_names(path: Path) -> set[tuple[str, str]]:
    """("trt.BuilderFlag", "FP16") for every hasattr/getattr(<trt...>, "NAME") in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            target = ast.unparse(node.args[0])
            if re.fullmatch(r"(trt|trt_module)(\.\w+)*", target):
                found.add((re.sub(r"^trt_module", "trt", target), node.args[1].value))
    return found


def _api_names(pyi: Path) -> dict[str, set[str]]:
    """{"": top-level names, "ClassName": member names} from a stub file."""
    tree = ast.parse(_repair(pyi.read_text()))
    names: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            names[""].add(node.name)
            members = names.setdefault(node.name, set())
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members.update(t.id for t in item.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.AnnAssign, ast.Assign)):
            names[""].add(getattr(node, "name", None) or ast.unparse(getattr(node, "target", None) or node.targets[0]))
    return names


def _package_names(init: Path) -> set[str]:
    """Top-level names a package's ``__init__`` defines or re-exports (``__version__``, ``nptype``, ...)."""
    names = set()
    for node in ast.parse(_repair(init.read_text()) if init.suffix == ".pyi" else init.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec and spec.submodule_search_locations, module
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.slow
def test_feature_detected_names_exist_in_some_tensorrt(stub_roots: dict[str, Path | None]) -> None:
    stubs10 = _package_dir("tensorrt_stubs").parent
    apis = {"10.13": _api_names(stubs10 / "tensorrt_bindings" / "tensorrt.pyi")}
    apis["10.13"][""] |= _package_names(stubs10 / "tensorrt" / "__init__.pyi")
    apis["10.13"][""] |= _package_names(stubs10 / "tensorrt_bindings" / "__init__.pyi")
    for name, root in stub_roots.items():
        if name.startswith("tensorrt 11"):
            apis[name] = _api_names(root / "tensorrt_bindings" / "tensorrt.pyi")
            apis[name][""] |= _package_names(_package_dir("tensorrt_bindings") / "__init__.py")
        elif name.startswith("tensorrt_rtx"):
            apis[name] = _api_names(root / "tensorrt_rtx_bindings" / "tensorrt_rtx.pyi")
            apis[name][""] |= _package_names(_package_dir("tensorrt_rtx_bindings") / "__init__.py")
    assert len(apis) == 3
    unknown = []
    for path in (f for f in CHECKED if f.is_file()):
        for target, attr in sorted(_feature_detected_names(path)):
            owner = target.split(".")[-1] if target != "trt" else ""
            if not any(attr in api.get(owner, set()) for api in apis.values()):
                unknown.append(f"{path.relative_to(ROOT)}: {target}.{attr}")
    assert not unknown, "feature-detected names that exist in no TensorRT version (typos?):\n" + "\n".join(unknown)
