"""`python -m vitmsn.runtime.openvino_slim`: on a copy of the installed OpenVINO package (hard links,
so a copy costs no disk; the tool only renames, deletes and writes new files, never edits in place).

The slimmed copy must run vitmsn's OpenVINORunner on a real export with outputs EQUAL to the untouched
install's (same CPU, same graph, same settings); the tests check independently of the tool that the
runner's process loaded OpenVINO's modules and libraries from the copy alone. Failure paths are real:
a planted dependency on a removed folder makes the tool's check fail, a real signal interrupts it, a
really unwritable directory (immutable for root, mode 0555 otherwise) blocks it; each must leave every
file where it was (same inode: moved back, not copied).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from runtime_fixtures import Exported, rt_cls  # noqa: F401
from vitmsn.runtime.manifest import Manifest

TOOL = [sys.executable, "-m", "vitmsn.runtime.openvino_slim"]
REPO = Path(__file__).resolve().parents[1]
GONE = ("libs/libopenvino_intel_gpu_plugin.so", "libs/libopenvino_intel_npu_plugin.so", "libs/cache.json",
        "include", "tools", "frontend/pytorch", "frontend/tensorflow")
GONE_GLOBS = ("libs/libopenvino_tensorflow_frontend.so*", "libs/libopenvino_paddle_frontend.so*",
              "libs/libopenvino_pytorch_frontend.so*")
KEPT_GLOBS = ("libs/libopenvino.so*", "libs/libopenvino_intel_cpu_plugin.so", "libs/libopenvino_onnx_frontend.so*",
              "libs/libopenvino_ir_frontend.so*", "libs/libtbb.so*", "_pyopenvino*.so", "frontend/onnx")

RUNNER_PROBE = r"""
import json, sys
import numpy as np
package, onnx_path, out = sys.argv[1:4]
if package != "-":
    from vitmsn.runtime.openvino_slim_check import import_only_from
    import_only_from(package)
from vitmsn.runtime.backends.openvino import OpenVINORunner
x = np.random.default_rng(7).standard_normal((3, 3, 48, 48)).astype(np.float32)
with OpenVINORunner(onnx_path, precision="fp32", threads=1) as runner:
    np.savez(out, **runner.infer({"pixel_values": x}))
modules = {n: getattr(m, "__file__", None) for n, m in sys.modules.items() if n.split(".")[0] == "openvino"}
maps = sorted({line.split()[-1] for line in open("/proc/self/maps") if "/" in line})
print(json.dumps({"modules": modules, "maps": maps}))
"""


def _installed_openvino() -> Path:
    spec = importlib.util.find_spec("openvino")
    assert spec is not None and spec.submodule_search_locations, "the test extra installs openvino"
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _copy(dst_site: Path, with_dist_info: bool = False) -> Path:
    """The installed openvino package under ``dst_site`` (and its pip dist-info), hard-linked file by file
    (copied across filesystems)."""
    src = _installed_openvino()
    dst_site.mkdir(parents=True, exist_ok=True)
    for folder in [src] + (sorted(src.parent.glob("openvino-*.dist-info")) if with_dist_info else []):
        try:
            shutil.copytree(folder, dst_site / folder.name, copy_function=os.link)
        except (OSError, shutil.Error):
            shutil.rmtree(dst_site / folder.name, ignore_errors=True)
            shutil.copytree(folder, dst_site / folder.name)
    return dst_site / "openvino"


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: (size, inode); a moved-back file keeps its inode, a copy would not."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(d, name)
            st = path.lstat()
            out[path.relative_to(root).as_posix()] = (0 if name in dirs else st.st_size, st.st_ino)
    return out


def _file_bytes(root: Path) -> int:
    return sum(Path(d, f).lstat().st_size for d, _, files in os.walk(root) for f in files)


def _tool(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOOL, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _plant(package: Path, code: str) -> None:
    """Append ``code`` to the copy's __init__.py as a NEW file (the original is a hard link: never edit it)."""
    init = package / "__init__.py"
    text = init.read_text()
    init.unlink()
    init.write_text(text + "\n" + code + "\n")


@pytest.fixture(scope="module")
def slimmed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    package = _copy(tmp_path_factory.mktemp("ov_slim") / "site", with_dist_info=True)
    return package, _tool("--apply", "--package-dir", str(package))


def _run_probe(package: Path | None, onnx_path: Path, out: Path) -> dict[str, Any]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    if package is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(package.parent), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", RUNNER_PROBE, str(package or "-"), str(onnx_path), str(out)],
                            capture_output=True, text=True, timeout=180, env=env, cwd=out.parent)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_slimmed_openvino_runs_the_runner_with_outputs_equal_to_the_full_install(
        slimmed: tuple[Path, subprocess.CompletedProcess[str]], rt_cls: Exported, tmp_path: Path) -> None:
    package, result = slimmed
    assert result.returncode == 0, result.stderr
    for rel in GONE:
        assert not (package / rel).exists(), f"{rel} should be gone"
    for pattern in GONE_GLOBS:
        assert not list(package.glob(pattern)), f"{pattern} should be gone"
    for pattern in KEPT_GLOBS:
        assert list(package.glob(pattern)), f"{pattern} must stay"
    # the record lists what went, and its byte count is what the tree really lost
    record = json.loads((package / "vitmsn-slim.json").read_text())
    lost = _file_bytes(_installed_openvino()) - (_file_bytes(package) - (package / "vitmsn-slim.json").stat().st_size)
    assert record["bytes_removed"] == lost and lost > 60e6
    assert {"libs/libopenvino_intel_gpu_plugin.so", "libs/cache.json", "tools"} <= {r["path"] for r in record["removed"]}
    assert "force-reinstall" in record["restore"]
    # pip's RECORD lists the record file (uninstall removes it), in the copy only (rewritten, not edited in place)
    pip_record = next(package.parent.glob("openvino-*.dist-info")) / "RECORD"
    assert "openvino/vitmsn-slim.json,," in pip_record.read_text().splitlines()
    original = next(_installed_openvino().parent.glob("openvino-*.dist-info")) / "RECORD"
    assert "vitmsn-slim.json" not in original.read_text() and pip_record.stat().st_ino != original.stat().st_ino
    assert not (package / ".vitmsn-slim-staging").exists() and not (package / ".vitmsn-slim-trash").exists()

    onnx_path = Manifest.load(rt_cls.artifacts).onnx_path("fp32")
    slim = _run_probe(package, onnx_path, tmp_path / "slim.npz")
    full = _run_probe(None, onnx_path, tmp_path / "full.npz")
    root = package.resolve()
    strays = [f"{n}: {f}" for n, f in slim["modules"].items() if f and not Path(f).resolve().is_relative_to(root)]
    strays += [lib for lib in slim["maps"] if "openvino" in lib and not Path(lib).resolve().is_relative_to(root)]
    assert not strays, f"the slim probe loaded OpenVINO from elsewhere: {strays}"
    assert any(lib.endswith("libopenvino_intel_cpu_plugin.so") for lib in slim["maps"])
    with np.load(tmp_path / "slim.npz") as got, np.load(tmp_path / "full.npz") as expected:
        assert sorted(got.files) == sorted(expected.files) and got.files
        for name in expected.files:
            assert np.array_equal(got[name], expected[name]), name


def test_second_run_says_already_slim_and_changes_nothing(slimmed: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    package, first = slimmed
    assert first.returncode == 0, first.stderr
    before = _snapshot(package)
    for args in (("--apply",), ()):
        again = _tool(*args, "--package-dir", str(package))
        assert again.returncode == 0, again.stderr
        assert "already slim" in again.stdout and "vitmsn-slim.json" in again.stdout
    assert _snapshot(package) == before


def test_dry_run_lists_sizes_and_changes_nothing(tmp_path: Path) -> None:
    package = _copy(tmp_path / "site")
    before = _snapshot(package)
    result = _tool("--package-dir", str(package))
    assert result.returncode == 0, result.stderr
    gpu = next(line for line in result.stdout.splitlines() if "libopenvino_intel_gpu_plugin.so" in line)
    assert f"{(package / 'libs/libopenvino_intel_gpu_plugin.so').stat().st_size / 1e6:.2f} MB" in gpu
    assert "dry run: nothing changed" in result.stdout and "libopenvino_intel_cpu_plugin" not in result.stdout
    assert _snapshot(package) == before
    # without --package-dir it reads the importable install (and, being a dry run, leaves it alone)
    default = _tool()
    assert default.returncode == 0 and str(_installed_openvino()) in default.stdout, default.stderr


def test_failed_check_puts_every_file_back(tmp_path: Path) -> None:
    """A planted dependency on tools/ (which the slim removes): the check fails with it set aside."""
    package = _copy(tmp_path / "site")
    _plant(package, "import openvino.tools.benchmark  # planted: needs a folder the slim removes")
    before = _snapshot(package)
    result = _tool("--apply", "--package-dir", str(package))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "check failed" in result.stderr and "openvino.tools" in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(package) == before
    assert not (package / "vitmsn-slim.json").exists()


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupt_during_the_check_puts_every_file_back(tmp_path: Path, signum: int, code: int) -> None:
    """The check is held (planted sleep, once) while files are set aside; then the tool gets the signal.
    SIGKILL cannot be handled: the next --apply must put the staged files back before slimming."""
    package = _copy(tmp_path / "site")
    marker = tmp_path / "held"
    _plant(package, f"import os as _o, time as _t\nif _o.path.isdir(_o.path.join(_o.path.dirname(__file__), "
                    f"'.vitmsn-slim-staging')) and not _o.path.exists({str(marker)!r}):\n"
                    f"    open({str(marker)!r}, 'w').close(); _t.sleep(120)")
    before = _snapshot(package)
    tool = subprocess.Popen([*TOOL, "--apply", "--package-dir", str(package)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_default_sigint)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and tool.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the check never reached the planted hold"
        assert (package / ".vitmsn-slim-staging" / "libs" / "cache.json").exists()  # really set aside
        if signum == signal.SIGKILL:  # as when the machine's OOM killer or `kill -9 -PGID` ends the run
            os.killpg(tool.pid, signum)
        else:
            tool.send_signal(signum)  # the tool alone: it must end its check process itself
        out, err = tool.communicate(timeout=60)
    finally:
        _end_group(tool)
    assert tool.returncode == code, out + err
    if signum == signal.SIGKILL:
        assert (package / ".vitmsn-slim-staging").exists()
        again = _tool("--apply", "--package-dir", str(package))
        assert again.returncode == 0 and "put back" in again.stdout, again.stdout + again.stderr
        assert (package / "vitmsn-slim.json").exists() and not (package / "libs" / "cache.json").exists()
        return
    assert "interrupted" in err and "Traceback" not in err
    with pytest.raises(ProcessLookupError):  # the tool ended its check process before exiting
        os.killpg(tool.pid, 0)
    assert _snapshot(package) == before
    assert not (package / "vitmsn-slim.json").exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background pytest passes SIGINT ignored; users' shells do not


def _end_group(tool: subprocess.Popen[str]) -> None:
    """Whatever is left of the tool's process group (its check, if the tool failed to end it)."""
    try:
        os.killpg(tool.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    tool.communicate()


def _make_unwritable(directory: Path) -> list[str]:
    """Really unwritable: root ignores mode bits, so root sets the immutable flag; returns the undo command."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return []
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    assert done.returncode == 0, f"chattr +i (needed to make a folder unwritable for root): {done.stderr}"
    return ["chattr", "-i", str(directory)]


def test_bad_usage_exits_2_naming_the_path(tmp_path: Path) -> None:
    not_a_package = tmp_path / "not_openvino"
    not_a_package.mkdir()
    (not_a_package / "__init__.py").write_text("")
    for given in (tmp_path / "missing", not_a_package):
        result = _tool("--apply", "--package-dir", str(given))
        assert result.returncode == 2 and str(given) in result.stderr and "Traceback" not in result.stderr, result.stderr

    package = _copy(tmp_path / "site")
    before = _snapshot(package)
    undo = _make_unwritable(package / "libs")
    try:
        result = _tool("--apply", "--package-dir", str(package))
    finally:
        if undo:
            subprocess.run(undo, check=True)
        else:
            (package / "libs").chmod(0o755)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{package / 'libs'} is not writable" in result.stderr and "Traceback" not in result.stderr
    assert _snapshot(package) == before


def test_a_second_apply_while_one_runs_exits_2_and_leaves_the_first_alone(tmp_path: Path) -> None:
    """The first --apply is held in its check with the files set aside; a second one must not take that staging
    folder for an interrupted run's and move it back under the first one's check (it did: the first then
    'verified' the full package and failed on its own vanished staging folder)."""
    package = _copy(tmp_path / "site")
    marker = tmp_path / "held"
    _plant(package, f"import os as _o, time as _t\nif _o.path.isdir(_o.path.join(_o.path.dirname(__file__), "
                    f"'.vitmsn-slim-staging')) and not _o.path.exists({str(marker)!r}):\n"
                    f"    open({str(marker)!r}, 'w').close(); _t.sleep(120)")
    first = subprocess.Popen([*TOOL, "--apply", "--package-dir", str(package)], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), "the first run never reached the planted hold"
        staged = _snapshot(package / ".vitmsn-slim-staging")
        second = _tool("--apply", "--package-dir", str(package))
        assert second.returncode == 2, second.stdout + second.stderr
        assert "another openvino_slim --apply is running" in second.stderr and "Traceback" not in second.stderr
        assert _snapshot(package / ".vitmsn-slim-staging") == staged  # the first run's files are where it put them
    finally:
        _end_group(first)


SIGNAL_WHILE_PUTTING_BACK = """
import os, signal, sys
from vitmsn.runtime import openvino_slim as slim
merge_back = slim._merge_back
def signalled(staged, home):
    os.kill(os.getpid(), signal.SIGTERM)  # lands while a killed run's files are being put back (held there)
    return merge_back(staged, home)
slim._merge_back = signalled
sys.exit(slim.main(["--apply", "--package-dir", sys.argv[1]]))
"""


def test_a_signal_while_a_killed_runs_files_go_back_stops_the_run(tmp_path: Path) -> None:
    """SIGTERM during the put-back (shielded, so the files all go back) must still end the run with 143,
    not be dropped and let the tool go on to slim the package."""
    package = tmp_path / "openvino"
    for name in ("__init__.py", "libs/libopenvino.so", "libs/libopenvino_intel_cpu_plugin.so",
                 "libs/libopenvino_onnx_frontend.so", "libs/libopenvino_ir_frontend.so",
                 ".vitmsn-slim-staging/libs/cache.json"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("")
    result = subprocess.run([sys.executable, "-c", SIGNAL_WHILE_PUTTING_BACK, str(package)], capture_output=True,
                            text=True, timeout=120, cwd=REPO)
    assert result.returncode == 143, result.stdout + result.stderr
    assert "interrupted" in result.stderr and "checking OpenVINO" not in result.stdout, result.stdout + result.stderr
    assert (package / "libs" / "cache.json").exists() and not (package / ".vitmsn-slim-staging").exists()


def test_a_record_with_fields_of_the_wrong_type_is_not_ours(tmp_path: Path) -> None:
    """Valid JSON, our keys, a size that is a string: read as no record (as corrupt JSON is), not a traceback."""
    import argparse

    from vitmsn.runtime import openvino_slim

    package = tmp_path / "openvino"
    for name in ("__init__.py", "libs/libopenvino.so", "libs/libopenvino_intel_cpu_plugin.so",
                 "libs/libopenvino_onnx_frontend.so", "libs/libopenvino_ir_frontend.so"):
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text("")
    (package / "vitmsn-slim.json").write_text(json.dumps({"openvino": "2026.4.1", "when": "2026-12-01T00:00:00Z",
                                                          "bytes_removed": "83 MB", "removed": [], "restore": "pip"}))
    said: list[str] = []
    assert openvino_slim.run(argparse.Namespace(apply=False, package_dir=str(package)), say=said.append) == 0
    assert said and said[0].startswith("nothing to remove"), said
