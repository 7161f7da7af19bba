"""``vitmsn cache [--clear]``: where vitmsn's cache directory is, what it holds, and emptying it."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from .common import handle_errors


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@click.command("cache")
@click.option("--clear", is_flag=True, help="Delete everything in the cache directory (it is rebuilt when needed).")
@handle_errors
def command(clear: bool) -> None:
    """Show vitmsn's cache directory ($VITMSN_CACHE, else $XDG_CACHE_HOME/vitmsn, else ~/.cache/vitmsn) and its size
    per part (calibration tensors, TensorRT runtime caches); --clear empties it."""
    from vitmsn.core.cache_dir import cache_root

    root = cache_root()
    parts = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if clear:
        for part in parts:
            shutil.rmtree(part)
        for leftover in root.iterdir() if root.is_dir() else ():
            leftover.unlink()
        click.echo(f"cleared {root}")
        return
    click.echo(f"{root}  {_size(root) / 1e6:.1f} MB" if root.is_dir() else f"{root}  (empty: not created yet)")
    for part in parts:
        click.echo(f"  {part.name + '/':15s} {_size(part) / 1e6:8.1f} MB")
