"""Installed size of the runtime's install profiles, each in a fresh venv, before and after deleting what of OpenVINO
the CPU runner never loads (benchmarks/openvino-cpu-files.md: the measured list and its Dockerfile step).

    python benchmarks/install_size.py                                   # cpu and openvino profiles
    python benchmarks/install_size.py --write benchmarks/install-size.md
    python benchmarks/install_size.py --profiles openvino --artifacts DIR --image a.png

For each profile: ``python -m venv``, then ``pip install "<repo>[<profile>]"`` (a regular, non-editable
install, from the indexes pip is configured for), then the disk use of the venv's site-packages
(``du``: allocated blocks, each inode once) without pip and setuptools, which every fresh venv brings
and the runtime does not need (its own files, as their RECORD lists them). For the ``openvino`` profile
it then deletes :data:`OPENVINO_UNUSED` from the installed package and measures again, and reinstalls
OpenVINO (``pip install --force-reinstall --no-deps openvino==<version>``) to show that this restores the
full size. With ``--artifacts`` each venv also runs ``Predictor.predict`` on an image (the installed runtime
works, and the slimmed OpenVINO serves it) and lists the OpenVINO shared libraries that predict loaded.
Prints a Markdown table; MB are 10^6 bytes.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_COUNTED = ("pip", "setuptools")  # in every fresh venv; not part of any profile
GOAL_BYTES = 200 * 10**6  # issue 17: "Runtime-only CPU install at most 200 MB"
PROFILE_BACKEND = {"cpu": "onnxruntime", "openvino": "openvino"}
# What of the openvino package the CPU runner never loads (measured: benchmarks/openvino-cpu-files.md).
OPENVINO_UNUSED = (
    "libs/libopenvino_intel_gpu_plugin.so", "libs/cache.json", "libs/libopenvino_intel_npu_plugin.so",
    "libs/libopenvino_auto_plugin.so", "libs/libopenvino_auto_batch_plugin.so", "libs/libopenvino_hetero_plugin.so",
    "libs/libopenvino_c.so*", *(f"libs/libopenvino_{f}_frontend.so*" for f in ("gguf", "jax", "paddle", "pytorch",
                                                                              "tensorflow", "tensorflow_lite")),
    *(f"frontend/{f}" for f in ("jax", "paddle", "pytorch", "tensorflow", "tensorflow_lite")),
    "torch", "tools", "include", "cmake",
)


@dataclass(frozen=True)
class Measured:
    profile: str
    no_compile: bool
    packages: tuple[str, ...]  # "name version", as installed (pip and setuptools left out)
    installed_bytes: int
    slim_bytes: int | None = None
    restored_bytes: int | None = None
    predict: str = ""
    largest: tuple[tuple[str, int], ...] = ()  # top-level entries of site-packages at the end, biggest first


def disk_bytes(paths: list[Path]) -> int:
    """What ``du -s`` counts: allocated blocks of every file and folder, each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top in paths:
        for d, dirs, files in os.walk(top) if top.is_dir() else [(str(top.parent), [], [top.name])]:
            for name in [*dirs, *files, *([] if d != str(top) else [""])]:
                st = os.lstat(os.path.join(d, name)) if name else os.lstat(d)
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def site_packages(venv: Path) -> Path:
    return next(venv.glob("lib/python3*/site-packages"))


def distributions(site: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, top-level entries of site-packages its RECORD lists)."""
    out = {}
    for info in site.glob("*.dist-info"):
        meta = dict(line.split(": ", 1) for line in (info / "METADATA").read_text(errors="replace").splitlines()
                    if line.startswith(("Name: ", "Version: ")))
        with (info / "RECORD").open(newline="") as f:
            tops = {row[0].split("/")[0] for row in csv.reader(f) if row and not row[0].startswith("..")}
        out[meta["Name"].lower()] = (meta["Version"], tops | {info.name})
    return out


def largest(site: Path, n: int = 6) -> tuple[tuple[str, int], ...]:
    dists = distributions(site)
    skip = set().union(*(dists[d][1] for d in NOT_COUNTED if d in dists))
    sizes = [(p.name, disk_bytes([p])) for p in site.iterdir() if p.name not in skip]
    return tuple(sorted(sizes, key=lambda item: -item[1])[:n])


def counted(site: Path) -> tuple[tuple[str, ...], int]:
    dists = distributions(site)
    skip = set().union(*(dists[n][1] for n in NOT_COUNTED if n in dists))
    entries = [p for p in site.iterdir() if p.name not in skip]
    packages = tuple(sorted(f"{n} {v}" for n, (v, _) in dists.items() if n not in NOT_COUNTED))
    return packages, disk_bytes(entries)


def run(cmd: list[str], **kw: object) -> str:
    print("  $ " + shlex.join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return str(done.stdout)


def predict_line(python: Path, artifacts: Path, image: Path, backend: str) -> str:
    code = ("import sys; from vitmsn.runtime import Predictor\n"
            "with Predictor.from_artifacts(sys.argv[1], backend=sys.argv[3]) as p:\n"
            "    top = p.predict([sys.argv[2]], top_k=1)[0][0]\n"
            "    print(f'{p.describe()}: top-1 {top.label} {top.score:.3f}')\n"
            "libs = sorted({l.split('/')[-1] for l in open('/proc/self/maps') if '/openvino/' in l and '.so' in l})\n"
            "print(f' (OpenVINO libraries loaded: {\", \".join(libs)})' if libs else '')")
    return " ".join(run([str(python), "-c", code, str(artifacts), str(image), backend], cwd=tempfile.gettempdir()).split("\n"))


def delete_unused_openvino(site: Path) -> str:
    """Delete :data:`OPENVINO_UNUSED` from the installed package; returns its version."""
    package = site / "openvino"
    for pattern in OPENVINO_UNUSED:
        for path in package.glob(pattern):
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return distributions(site)["openvino"][0]


def measure(profile: str, no_compile: bool, root: Path, artifacts: Path | None, image: Path | None) -> Measured:
    """Install ``profile`` into a fresh venv and measure it; ``no_compile``: ``pip install --no-compile``, measured
    after one predict (Python then writes bytecode only for the modules it imported)."""
    print(f"{profile}{' (pip --no-compile)' if no_compile else ''}: fresh venv", flush=True)
    venv = root / f"{profile}{'-no-compile' if no_compile else ''}"
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", *(["--no-compile"] if no_compile else []), f"{REPO}[{profile}]"])
    site = site_packages(venv)
    backend = PROFILE_BACKEND.get(profile, "auto")
    predict = predict_line(python, artifacts, image, backend) if artifacts and image else ""
    packages, installed = counted(site)
    if profile != "openvino":
        return Measured(profile, no_compile, packages, installed, predict=predict, largest=largest(site))
    version = delete_unused_openvino(site)
    if artifacts and image:
        predict = predict_line(python, artifacts, image, backend)
    slim, biggest = counted(site)[1], largest(site)
    restored = None
    if not no_compile:
        run([str(python), "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", f"openvino=={version}"])
        restored = counted(site)[1]
    return Measured(profile, no_compile, packages, installed, slim, restored, predict, biggest)


def size(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.0f} ({n / 2**20:.0f} MiB)"


def table(rows: list[Measured]) -> str:
    lines = ["| profile | pip | packages (pip and setuptools not counted) | MB installed | MB after deleting what OpenVINO's CPU runner never loads |",
             "|---|---|---|---|---|"]
    for r in rows:
        how = "`--no-compile`, measured after one predict" if r.no_compile else "default (bytecode compiled)"
        lines.append(f"| `{r.profile}` | {how} | {', '.join(r.packages)} | {size(r.installed_bytes)} | {size(r.slim_bytes)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profiles", default="cpu,openvino", help="comma-separated extras (default: cpu,openvino)")
    parser.add_argument("--artifacts", type=Path, help="an export to run Predictor.predict on in each venv")
    parser.add_argument("--image", type=Path, help="the image for --artifacts")
    parser.add_argument("--no-compile", action="store_true",
                        help="also measure each profile installed with pip --no-compile (after one predict with --artifacts)")
    parser.add_argument("--write", type=Path, help="also write the table and notes to this Markdown file")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="vitmsn-install-size-") as tmp:
        rows = [measure(p, no_compile, Path(tmp), args.artifacts, args.image)
                for no_compile in ((False, True) if args.no_compile else (False,)) for p in args.profiles.split(",")]
    text = table(rows)
    notes = []
    for r in rows:
        final = r.slim_bytes if r.slim_bytes is not None else r.installed_bytes
        verdict = "within" if final <= GOAL_BYTES else f"{(final - GOAL_BYTES) / 1e6:.0f} MB over"
        notes.append(f"- `{r.profile}`{' (--no-compile)' if r.no_compile else ''}: {final / 1e6:.0f} MB runtime-only "
                     f"({final / 2**20:.0f} MiB), {verdict} the {GOAL_BYTES / 1e6:.0f} MB goal; largest: "
                     + ", ".join(f"{name} {b / 1e6:.1f}" for name, b in r.largest) + ".")
        if r.restored_bytes is not None:
            notes.append(f"- `{r.profile}`: `pip install --force-reinstall --no-deps openvino==<version>` brought site-packages back to "
                         f"{r.restored_bytes / 1e6:.0f} MB (installed: {r.installed_bytes / 1e6:.0f} MB).")
        if r.predict:
            notes.append(f"- `{r.profile}`{' (--no-compile)' if r.no_compile else ''}: `Predictor.predict` in that venv"
                         f"{' after slimming' if r.slim_bytes else ''}: {r.predict}")
    print("\n" + text + ("\n\n" + "\n".join(notes) if notes else "") + f"\n\n({time.time() - started:.0f} s, "
          f"Python {sys.version.split()[0]}, MB = 10^6 bytes of disk use)")
    if args.write:
        args.write.write_text(
            "# Installed size of the runtime's install profiles\n\n"
            f"`{shlex.join(['python', 'benchmarks/install_size.py', *sys.argv[1:]])}` "
            f"({time.strftime('%Y-%m-%d')}, Linux x86_64, "
            f"Python {sys.version.split()[0]}): each profile in a fresh `python -m venv`, "
            "`pip install \"<repo>[<profile>]\"`, then the disk use (`du`: allocated blocks) of site-packages, "
            "without pip and setuptools (every fresh venv has them; the runtime does not need them). "
            "MB = 10^6 bytes. `--no-compile` rows: pip writes no bytecode; the one predict run writes it for the "
            "modules it imports, as a server would. What the slim deletes and why (measured): "
            "benchmarks/openvino-cpu-files.md.\n\n" + text + "\n\n" + "\n".join(notes) + "\n")


if __name__ == "__main__":
    main()
