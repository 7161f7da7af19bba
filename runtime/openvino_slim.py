"""Slim an installed OpenVINO wheel to what vitmsn's CPU runner loads.

    python -m vitmsn.runtime.openvino_slim                  # dry run: what would go, file by file, in MB
    python -m vitmsn.runtime.openvino_slim --apply          # do it (moved aside, checked, then deleted)
    python -m vitmsn.runtime.openvino_slim --package-dir /venv/lib/python3.11/site-packages/openvino

``pip install openvino`` puts 188 MB on disk (2026.4.1, Linux x86_64), much of it for devices, model
formats and tools that a CPU-only ONNX server never loads (84 MB of it goes; benchmarks/install-size.md).
OpenVINO's own deployment guide, "Libraries for Local Distribution" (docs.openvino.ai/2025/
openvino-workflow/deployment-locally/local-distribution-libraries.html), says
which libraries each use needs: the ``openvino`` core with TBB always; one plugin per device used
(``openvino_intel_cpu_plugin`` for the CPU; the GPU plugin's dependencies are libOpenCL and
``cache.json``, the CPU plugin has none); ``openvino_auto_plugin`` only for AUTO/MULTI (or
``compile_model`` without a device), ``openvino_hetero_plugin`` and the batch plugin only for HETERO/
BATCH or performance hints on a GPU; one frontend per model format given to ``read_model``
(``openvino_onnx_frontend`` for ONNX, ``openvino_ir_frontend`` for IR); ``openvino_c`` only for C
applications. vitmsn's runner (:mod:`vitmsn.runtime.backends.openvino`) reads ONNX graphs with
``Core.read_model`` and compiles them on ``"CPU"`` by name, so this keeps the core, TBB and hwloc, the
CPU plugin, the ONNX and IR frontends and the Python bindings, and removes (:data:`RULES`):

* the GPU plugin and ``libs/cache.json`` (8.8 MB of JSON: the GPU plugin's kernel tuning cache, keys
  like ``convolution_gpu_bfyx_gemm_like``; the guide lists it as a GPU dependency and no other
  library in the wheel names it), the NPU plugin, the AUTO/MULTI, BATCH and HETERO plugins;
* the TensorFlow, TensorFlow Lite, Paddle, PyTorch, JAX and GGUF frontends, their Python packages
  under ``frontend/`` and ``torch/`` (the ``torch.compile`` backend, which needs the PyTorch frontend);
* ``tools/`` (``ovc`` and ``benchmark_app``: their console scripts stop working; ``openvino.convert_model``
  is gone, ``import openvino`` already tolerates that), ``include/`` and ``cmake/`` (building against
  OpenVINO, not running it), ``libopenvino_c`` (the C API; the Python bindings do not link it).

Safety: with ``--apply`` the installed package is first checked as it is, in a fresh interpreter
(:mod:`vitmsn.runtime.openvino_slim_check`: it imports, lists CPU, reads an ONNX model and its IR,
compiles and runs them on CPU with exact outputs, and loads nothing from elsewhere). Then everything
to remove is moved into ``.vitmsn-slim-staging`` inside the package and the check runs again; only
when it passes are the files deleted. On a failed check, an error, SIGINT or SIGTERM everything is
moved back (exit 1, or 130/143); a run killed outright leaves the staging folder, which the next
``--apply`` moves back first. What was removed is written to ``vitmsn-slim.json`` in the package
directory, so a second run says "already slim". ``pip install --force-reinstall --no-deps
openvino==<version>`` (printed by the tool) restores the full package; the record file is listed in
openvino's pip RECORD, so a reinstall or ``pip uninstall openvino`` removes it with the package.

One ``--apply`` at a time per package (a lock on the directory): a second one exits 2 rather than take
the first one's staging folder for an interrupted run's and move it back under the first one's check.

Exit codes: 0 done (or nothing to do), 1 the check failed (nothing changed), 2 bad usage (no such
directory, not an OpenVINO package, not writable, another --apply running), 130/143 interrupted (nothing changed). Linux
wheels only (the rules name ``.so`` files). Standard library only in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import fnmatch
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from vitmsn.core import interrupts
from vitmsn.core.errors import InputError

from .openvino_slim_check import CheckFailed, CheckResult, run_check
from .openvino_slim_record import RECORD, Removal, SlimRecord, openvino_version, register_record, restore_command

STAGING = ".vitmsn-slim-staging"
TRASH = ".vitmsn-slim-trash"  # a verified slim whose deletion was cut short: delete, never restore
KEEP_FRONTENDS = ("onnx", "ir")
REQUIRED = ("__init__.py", "libs/libopenvino.so*", "libs/libopenvino_intel_cpu_plugin.so",
            "libs/libopenvino_onnx_frontend.so*", "libs/libopenvino_ir_frontend.so*")


@dataclass(frozen=True)
class Rule:
    """Entries of the package matching ``pattern`` (a glob relative to the package dir) are removed."""

    pattern: str
    why: str
    keep: tuple[str, ...] = ()  # globs the pattern also matches that stay
    dirs_only: bool = False

    def matches(self, package: Path) -> Iterator[Path]:
        for path in sorted(package.glob(self.pattern)):
            rel = path.relative_to(package).as_posix()
            if any(fnmatch.fnmatch(rel, k) for k in self.keep) or "__pycache__" in rel:
                continue
            if not self.dirs_only or (path.is_dir() and not path.is_symlink()):
                yield path


RULES = (
    Rule("libs/libopenvino_intel_gpu_plugin.so*", "GPU plugin"),
    Rule("libs/cache.json", "GPU plugin's kernel tuning cache (read by the GPU plugin only)"),
    Rule("libs/libopenvino_intel_npu_plugin.so*", "NPU plugin"),
    Rule("libs/libopenvino_auto_plugin.so*", "AUTO/MULTI plugin (vitmsn compiles on CPU by name)"),
    Rule("libs/libopenvino_auto_batch_plugin.so*", "BATCH plugin (automatic batching for GPUs)"),
    Rule("libs/libopenvino_hetero_plugin.so*", "HETERO plugin"),
    Rule("libs/libopenvino_c.so*", "C API (the Python bindings do not link it)"),
    Rule("libs/libopenvino_*_frontend.so*", "frontend for a model format vitmsn does not read",
         keep=tuple(f"libs/libopenvino_{name}_frontend.so*" for name in KEEP_FRONTENDS)),
    Rule("frontend/*", "Python side of a frontend vitmsn does not read", keep=("frontend/onnx",), dirs_only=True),
    Rule("torch", "torch.compile backend (needs the PyTorch frontend)"),
    Rule("tools", "ovc and benchmark_app (model conversion and benchmarking)"),
    Rule("include", "C++ headers (building against OpenVINO, not running it)"),
    Rule("cmake", "CMake package files (building against OpenVINO)"),
)


class RestoreFailed(Exception):
    """Files set aside could not all be moved back; the message says where they are."""


def tree_bytes(path: Path) -> int:
    """Apparent size of a file, or of every file below a directory (symlinks not followed)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(path) for f in files)


def plan_removals(package: Path) -> list[Removal]:
    seen: dict[str, Removal] = {}
    for rule in RULES:
        for path in rule.matches(package):
            rel = path.relative_to(package).as_posix()
            seen.setdefault(rel, Removal(rel, tree_bytes(path), rule.why))
    return list(seen.values())


def default_package_dir() -> Path:
    import importlib.util

    try:
        spec = importlib.util.find_spec("openvino")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise InputError("OpenVINO is not installed in this Python environment (pip install 'vitmsn[openvino]'); "
                         "or pass --package-dir DIR, the openvino folder inside another site-packages")
    return Path(next(iter(spec.submodule_search_locations)))


def checked_package_dir(given: str | None) -> Path:
    if sys.platform != "linux":
        raise InputError(f"openvino_slim knows OpenVINO's Linux wheels only (this is {sys.platform})")
    package = Path(given) if given is not None else default_package_dir()
    if not package.is_dir():
        raise InputError(f"--package-dir {package}: no such directory")
    missing = [pattern for pattern in REQUIRED if not any(package.glob(pattern))]
    if missing:
        hint = f"; did you mean {package / 'openvino'}?" if (package / "openvino" / "libs").is_dir() else ""
        raise InputError(f"--package-dir {package}: not an OpenVINO package directory with the CPU plugin and the "
                         f"ONNX and IR frontends (missing {', '.join(missing)}){hint}")
    return package.resolve()


def unwritable(package: Path, removals: Sequence[Removal]) -> Path | None:
    """The first directory a slim would have to write in but cannot (moving a directory also writes its '..')."""
    dirs = [package] + [(package / r.path).parent for r in removals]
    for removal in removals:
        path = package / removal.path
        if path.is_dir() and not path.is_symlink():
            dirs += [Path(d) for d, _, _ in os.walk(path)]
    for directory in dict.fromkeys(dirs):
        if not os.access(directory, os.W_OK | os.X_OK):
            return directory
    return None


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _merge_back(staged: Path, home: Path) -> int:
    """Move everything under ``staged`` to the same place under ``home``; returns how many entries moved."""
    moved = 0
    for entry in sorted(staged.iterdir()):
        target = home / entry.name
        if not (target.exists() or target.is_symlink()):
            os.rename(entry, target)
            moved += 1
        elif entry.is_dir() and target.is_dir() and not entry.is_symlink():
            moved += _merge_back(entry, target)
        else:
            raise RestoreFailed(f"cannot put {entry} back: {target} exists again")
    return moved


def restore(package: Path) -> int:
    """Put everything in the staging folder back into the package (signals held until done)."""
    staging = package / STAGING
    with interrupts.shielded():
        try:
            moved = _merge_back(staging, package)
            shutil.rmtree(staging)
        except (OSError, RestoreFailed) as exc:
            raise RestoreFailed(f"{exc}; the files not yet back are in {staging}: move them into {package} by hand, "
                                f"or reinstall ({restore_command(package)})") from None
    return moved


def recover_leftovers(package: Path) -> list[str]:
    """Undo what a killed run left behind: staged files go back, a verified slim's trash is deleted."""
    notes = []
    if (package / TRASH).exists():
        shutil.rmtree(package / TRASH)
        notes.append(f"deleted {package / TRASH}, left by a slim cut short after its check had passed")
    if (package / STAGING).exists():
        notes.append(f"put back {restore(package)} entries left in {package / STAGING} by an interrupted run")
    return notes


def apply(package: Path, removals: Sequence[Removal], say: Callable[[str], None]) -> CheckResult:
    """Move ``removals`` aside, check OpenVINO, then delete them; any failure or interrupt puts them back."""
    staging = package / STAGING
    try:
        staging.mkdir()
        for removal in removals:
            target = staging / removal.path
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(package / removal.path, target)
        say(f"moved {len(removals)} entries aside into {staging}; checking OpenVINO without them ...")
        result = run_check(package)
    except BaseException:
        if staging.exists():
            restore(package)
        raise
    with interrupts.shielded():  # the check passed: finishing is safer than unwinding half a deletion
        record = SlimRecord(result.openvino, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            sum(r.bytes for r in removals), tuple(removals), restore_command(package)).write(package)
        register_record(package)
        os.rename(staging, package / TRASH)
        shutil.rmtree(package / TRASH)
    say(f"check passed: OpenVINO {result.openvino}, devices {', '.join(result.devices)}, "
        f"frontends {', '.join(result.frontends)}; deleted; recorded in {record}")
    return result


def say(line: str) -> None:
    print(line, flush=True)


def describe(package: Path, removals: Sequence[Removal], total: int) -> list[str]:
    removed = sum(r.bytes for r in removals)
    width = max(len(r.path) for r in removals)
    lines = [f"OpenVINO {openvino_version(package) or '(version unknown)'} at {package}: {mb(total)}; "
             f"slimming for vitmsn's CPU runner removes {mb(removed)} in {len(removals)} entries "
             f"(leaves {mb(total - removed)}):"]
    lines += [f"  {r.bytes / 1e6:7.2f} MB  {r.path:<{width}}  {r.why}" for r in removals]
    return lines


@contextlib.contextmanager
def exclusive(package: Path) -> Iterator[None]:
    """Hold the package directory's lock (flock: released when the process ends, even killed)."""
    fd = os.open(package, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"--package-dir {package}: another openvino_slim --apply is running on it; "
                             "wait for it to end") from None
        yield
    finally:
        os.close(fd)


def run(args: argparse.Namespace, say: Callable[[str], None] = say) -> int:
    package = checked_package_dir(args.package_dir)
    if not args.apply:
        return _run(package, args, say)
    with exclusive(package):
        for note in recover_leftovers(package):
            say(note)
        interrupts.raise_if_received()  # a signal held while putting files back still stops the run
        return _run(package, args, say)


def _run(package: Path, args: argparse.Namespace, say: Callable[[str], None]) -> int:
    if not args.apply and (package / STAGING).exists():
        say(f"warning: {package / STAGING} holds files of an interrupted run; --apply puts them back first")
    removals = plan_removals(package)
    record = SlimRecord.load(package)
    if not removals:
        if record:
            say(f"already slim: {package} ({mb(record.bytes_removed)} in {len(record.removed)} entries removed by "
                f"vitmsn {record.vitmsn} on {record.when}; the list is in {package / RECORD}). Restore: {record.restore}")
        else:
            say(f"nothing to remove: {package} holds only what vitmsn's CPU runner needs")
        return 0
    if record:
        say(f"note: {package / RECORD} says this OpenVINO was slimmed on {record.when}, "
            "but removable files are back (reinstalled?)")
    for line in describe(package, removals, tree_bytes(package)):
        say(line)
    blocked = unwritable(package, removals)
    if not args.apply:
        if blocked:
            say(f"note: --apply would stop here: {blocked} is not writable")
        say(f"dry run: nothing changed. --apply removes them (moved aside, OpenVINO checked in a fresh process, "
            f"then deleted); {restore_command(package)} restores them")
        return 0
    if blocked:
        raise InputError(f"{blocked} is not writable, and slimming moves files out of it; "
                         "run as the user who installed OpenVINO")
    say("checking OpenVINO as installed (import, CPU device, ONNX and IR read, compile, infer) ...")
    try:
        run_check(package)
    except CheckFailed as exc:
        raise CheckFailed(f"OpenVINO at {package} fails the check before anything was removed: {exc}") from None
    apply(package, removals, say)
    say(f"removed {mb(sum(r.bytes for r in removals))}: {package} is now {mb(tree_bytes(package))}. "
        f"Restore: {restore_command(package)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitmsn.runtime.openvino_slim",
                                     description="Remove from an installed OpenVINO what vitmsn's CPU runner never "
                                                 "loads (GPU/NPU plugins, other frontends, tools, headers). "
                                                 "Dry run unless --apply.")
    parser.add_argument("--apply", action="store_true", help="remove the files (default: only list them)")
    parser.add_argument("--package-dir", metavar="DIR",
                        help="the openvino package folder (default: the one this Python imports)")
    args = parser.parse_args(argv)
    interrupts.install()
    try:
        return run(args)
    except InputError as exc:
        print(f"openvino_slim: error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"openvino_slim: error: {exc.filename or exc}: not writable ({exc.strerror}); nothing changed",
              file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"openvino_slim: the check failed, every file is back in place: {exc}", file=sys.stderr)
        return 1
    except RestoreFailed as exc:
        print(f"openvino_slim: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `| head`: stdout is gone, stderr may not be
        sys.stdout = open(os.devnull, "w")
        print("openvino_slim: output closed (broken pipe); every file moved so far is back in place", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"openvino_slim: {exc}; every file moved so far is back in place", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        print("openvino_slim: interrupted; every file is back in place", file=sys.stderr)
        return interrupts.exit_code_of(exc)


if __name__ == "__main__":
    sys.exit(main())
