"""Staged, exclusive output of an export run.

    with StagedOutput(opts.out) as staged:       # lock --out, create the staging directory beside it
        ... write everything into staged.path ...
        staged.commit(named)                     # --out is replaced whole by what was written

* **Exclusive.** ``.<name>.lock`` beside ``--out`` is locked (``fcntl.flock``) for the whole run and
  holds the run's PID and command; a second run on the same ``--out``, or a ``vitmsn validate`` of it
  (which takes the same lock, :class:`OutputLock`), fails at once with :class:`InputError` naming
  that process (exit 2). The lock file is removed when the run ends (a run that was killed leaves
  it unlocked: the kernel drops a dead process's locks).
* **Only its own files.** An earlier artifacts directory is replaced only when every file in it is
  named by its manifest; other files (the user's) make the run refuse, listing them, before any
  work. Inputs inside ``--out`` are refused too (:func:`check_inputs_outside`).
* **Staged.** Everything is written under ``.<name>.staging-XXXX/`` beside ``--out`` (same file
  system): ``out/`` becomes ``--out``, ``tmp/`` is the run's temporary directory
  (``tempfile.tempdir`` and ``TMPDIR`` point there while the run lasts, so library scratch files,
  ModelOpt's and ONNX Runtime's included, go where the run cleans up).
* **Whole.** :meth:`StagedOutput.commit` swaps the new directory in with one
  ``renameat2(RENAME_EXCHANGE)`` where the file system supports it, else two renames (old aside,
  new in), then deletes the old one; signals are held meanwhile. Without a commit (bad input, an
  exception, SIGINT/SIGTERM) the staging directory is deleted and ``--out`` is left as it was.
* **Nothing unnamed.** A file in the new directory that the manifest does not name is removed
  before the swap, with a warning.

Leftovers of runs that were killed outright (SIGKILL, power loss) are staging and ``.old``
directories of this ``--out``; the next run on it removes them once it holds the lock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType

from vitmsn.core import interrupts
from vitmsn.core.errors import InputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_RENAME_EXCHANGE = 2  # linux/fs.h


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside ``out``, holding this PID and ``holder``
    (the command taking it, named to whoever finds it held). ``vitmsn-export`` holds it while it writes ``--out``,
    ``vitmsn validate`` while it reads and updates the artifacts directory."""

    def __init__(self, out: Path, holder: str = "vitmsn-export", option: str = "--out") -> None:
        self.out = out
        self.path = _lock_path(out)
        self.holder = holder
        self.option = option
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid, holder = _read_holder(fd)
                os.close(fd)
                who = f"{holder or 'another vitmsn run'} (process {pid})" if pid else "another vitmsn run"
                raise InputError(f"{self.option} {self.out}: {who} is using it (lock {self.path}); wait for it to "
                                 "finish" + (", or choose another --out" if self.option == "--out" else "")) from None
            except BaseException:
                os.close(fd)
                raise
            try:  # the holder before us may have removed the file after we opened it: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {self.holder}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked: a waiter then sees another inode and retries
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_holder(fd: int) -> tuple[int | None, str]:
    """The PID and command written by the lock's holder ("4242 vitmsn validate")."""
    try:
        pid, _, holder = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    except OSError:
        return None, ""
    return (int(pid) if pid.isdigit() else None), holder.strip()


def check_writable(directory: Path, what: str, fix: str) -> None:
    """Refuse (exit 2, one line) a directory, or the nearest existing folder above it, in which this process cannot
    create a file. Found by creating one: mode bits are not the whole story (root, read-only mounts, ACLs)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".vitmsn-write-check-", dir=existing)
    except OSError as exc:
        raise InputError(f"{what} {directory}: cannot be written here ({exc.strerror or exc}); {fix}") from None
    os.close(fd)
    os.unlink(probe)


def check_inputs_outside(out: str | os.PathLike[str], inputs: dict[str, str | os.PathLike[str] | None]) -> None:
    """Refuse (exit 2, before any work) an input that lies inside ``--out``: ``{option: path}``; a re-export
    replaces ``--out`` whole, so it would delete what it reads."""
    target = os.path.realpath(out)
    for option, path in inputs.items():
        if path is None or not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
            raise InputError(f"{option} {path}: is inside --out {out}, which the export replaces whole; move it out "
                             "of the artifacts directory, or choose another --out")


def _rename_exchange(a: Path, b: Path) -> bool:
    """Atomically swap ``a`` and ``b`` (Linux ``renameat2``); False where that is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # the file system cannot exchange: fall back to two renames
    raise OSError(err, os.strerror(err), str(b))


class StagedOutput:
    def __init__(self, out: str | os.PathLike[str]) -> None:
        self.requested = Path(out)
        # Lock and swap the real directory, whatever path spelling or symbolic link names it.
        self.out = Path(os.path.realpath(self.requested))
        self.lock = OutputLock(self.out)
        self.root: Path | None = None  # .<name>.staging-XXXX
        self.committed = False
        self._saved_tmp: tuple[str | None, str | None] | None = None

    @property
    def path(self) -> Path:
        """Where the run writes what becomes ``--out``."""
        assert self.root is not None, "StagedOutput used outside its with-block"
        return self.root / "out"

    @property
    def tmp(self) -> Path:
        assert self.root is not None
        return self.root / "tmp"

    # ---- entering -------------------------------------------------------------------------
    def __enter__(self) -> "StagedOutput":
        self._check_target()
        parent = self.out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except OSError as exc:
            raise InputError(f"--out {self.requested}: cannot write in {parent} ({exc.strerror or exc}); "
                             "choose a writable location") from None
        try:
            if (self.out / MANIFEST_NAME).is_file():  # under the lock: no validate is writing its reports now
                self._check_only_named_files()
            self._remove_leftovers()
            self.root = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.staging-", dir=parent))
            self.path.mkdir()
            self.tmp.mkdir()
        except OSError as exc:
            self._cleanup()
            raise InputError(f"--out {self.requested}: cannot create a staging directory in {parent} "
                             f"({exc.strerror or exc}); choose a writable location") from None
        except BaseException:
            self._cleanup()
            raise
        self._saved_tmp = (tempfile.tempdir, os.environ.get("TMPDIR"))
        tempfile.tempdir = str(self.tmp)
        os.environ["TMPDIR"] = str(self.tmp)
        return self

    def _check_target(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {self.requested}: exists and is not a directory")
        if out.is_dir():
            if not os.access(out, os.W_OK | os.X_OK):
                raise InputError(f"--out {self.requested}: not writable; make it writable or choose another --out")
            if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
                raise InputError(f"--out {self.requested}: holds files but no {MANIFEST_NAME}, so it is not an "
                                 "artifacts directory of vitmsn-export and is not replaced; choose a new or empty "
                                 "directory, or remove it")
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"--out {self.requested}: {parent} is not writable; choose a writable location")

    def _check_only_named_files(self) -> None:
        """A re-export replaces --out whole: refuse when it holds files its manifest does not name (the user's, not
        the toolkit's), rather than delete them."""
        from vitmsn.runtime.manifest import Manifest

        try:
            unnamed = Manifest.load(self.out).unnamed_files()
        except InputError as exc:
            raise InputError(f"--out {self.requested}: its {MANIFEST_NAME} cannot be read ({exc}), so the files "
                             "vitmsn-export wrote cannot be told from others; remove the directory or choose another "
                             "--out") from None
        if unnamed:
            listed = ", ".join(unnamed[:10]) + (f" and {len(unnamed) - 10} more" if len(unnamed) > 10 else "")
            raise InputError(f"--out {self.requested}: holds {len(unnamed)} file(s) its {MANIFEST_NAME} does not name "
                             f"({listed}); a re-export replaces the directory whole and would delete them: move them "
                             "out, or choose another --out")

    def _remove_leftovers(self) -> None:
        """Staging and ``.old`` directories of runs on this --out that were killed outright (we hold the lock)."""
        for pattern in (f".{self.out.name}.staging-*", f".{self.out.name}.old-*"):
            for stale in self.out.parent.glob(pattern):
                if stale.is_dir() and not stale.is_symlink():
                    log.warning("removing %s, left by an export run that was killed", stale)
                    shutil.rmtree(stale, ignore_errors=True)

    # ---- committing -----------------------------------------------------------------------
    def commit(self, named: set[str]) -> None:
        """Replace ``--out`` whole with the staged directory; ``named``: every file the manifest names
        (relative POSIX paths, ``manifest.json`` included). Anything else is removed first."""
        interrupts.raise_if_received()  # an interrupt some library turned into a failed step
        new = self.path
        shutil.rmtree(self.tmp, ignore_errors=True)
        for f in sorted(p for p in new.rglob("*") if not p.is_dir()):
            rel = f.relative_to(new).as_posix()
            if rel not in named:
                log.warning("removing %s from the artifacts: the manifest does not name it", rel)
                f.unlink()
        for d in sorted((p for p in new.rglob("*") if p.is_dir()), reverse=True):
            if not any(d.iterdir()):
                d.rmdir()
        new.chmod(0o777 & ~_umask())  # mkdtemp makes 0700; an artifacts directory is an ordinary one
        try:
            self._swap(new)
        except OSError as exc:  # e.g. --out is a mount point (EBUSY): say so, --out keeps what it held
            raise InputError(f"--out {self.requested}: could not be replaced by the new artifacts ({exc.strerror or exc}); "
                             "use a plain directory on a writable file system") from None

    def _swap(self, new: Path) -> None:
        with interrupts.shielded():  # the run is complete: a signal now must not leave --out half-swapped
            if self.out.exists() and _rename_exchange(new, self.out):
                pass  # `new` now holds the previous contents, removed with the staging directory
            elif self.out.exists():
                old = self.root / "previous"  # type: ignore[operator]
                os.rename(self.out, old)
                try:
                    os.rename(new, self.out)
                except BaseException:
                    os.rename(old, self.out)
                    raise
            else:
                os.rename(new, self.out)
            self.committed = True
            _fsync_dir(self.out.parent)

    # ---- leaving --------------------------------------------------------------------------
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A second Ctrl-C must not stop the cleanup halfway; after the commit the run is complete.
        with interrupts.shielded() if self.committed else interrupts.deferred():
            self._cleanup()

    def _cleanup(self) -> None:
        if self._saved_tmp is not None:
            tempfile.tempdir = self._saved_tmp[0]
            if self._saved_tmp[1] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = self._saved_tmp[1]
            self._saved_tmp = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        self.lock.release()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
