"""The `vitmsn` command group. Each sub-command lives in its own module and is imported only
when it runs, so `vitmsn --help` works without torch, ONNX Runtime or TensorRT.
A sub-command whose extra is missing prints the one-line install hint (:mod:`.extras`).
"""

from __future__ import annotations

import importlib

import click

import vitmsn
from vitmsn.core.interrupts import deferred

# command name -> module under vitmsn.cli that defines `command`
COMMANDS = {
    "predict": "predict",
    "validate": "validate",
    "bench": "bench",
    "inspect": "inspect_cmd",
    "triton": "triton",
    "serve": "serve",
    "cache": "cache_cmd",
}
HELP = {
    "predict": "Top-k labels for images, from the exported artifacts.",
    "validate": "Accuracy-drift report of every precision/backend against PyTorch FP32.",
    "bench": "Latency and throughput per backend, precision and batch size.",
    "inspect": "Print an artifacts directory's manifest readably.",
    "triton": "Write a Triton Inference Server model repository.",
    "serve": "Serve the model over HTTP with micro-batching.",
    "cache": "Show vitmsn's cache directory and its size; --clear empties it.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        try:
            with deferred():  # a command module may load C++ extensions: see vitmsn.core.interrupts
                mod = importlib.import_module(f"vitmsn.cli.{module}")
        except ModuleNotFoundError as exc:
            return _missing_dependency(cmd_name, exc.name or str(exc))
        return mod.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in sorted(COMMANDS)])


def _missing_dependency(name: str, missing: str) -> click.Command:
    @click.command(name, help=HELP[name], context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        from .extras import exit_with_hint

        exit_with_hint(missing, f"'vitmsn {name}'")

    stub.stub = True  # type: ignore[attr-defined]  # no config table is read for it: the hint comes first
    return stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(vitmsn.__version__, "-V", "--version", prog_name="vitmsn")
def group() -> None:
    """vitmsn: ViTMSN models from PyTorch to ONNX, FP16/INT8 and TensorRT, with a slim runtime.

    Options of each command may also come from the config file, the nearest vitmsn.toml or
    pyproject.toml with [tool.vitmsn] at or above the working directory: [tool.vitmsn.<command>]
    (or [<command>] in vitmsn.toml); ARTIFACTS defaults to its top-level `out`.
    """


def main() -> None:
    import sys
    from pathlib import Path

    from vitmsn.config import Defaults, load_defaults
    from vitmsn.core.errors import InputError

    from .options import config_keys

    # Only the command being run reads its config table, so a broken optional command never
    # stops the others.
    name = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    defaults = Defaults()
    if name in COMMANDS and not {"-h", "--help"} & set(sys.argv[1:]):
        command = group.get_command(click.Context(group), name)
        if command is not None and not getattr(command, "stub", False):
            try:
                defaults = load_defaults(Path.cwd(), {name: config_keys(command)})
            except InputError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
    if defaults.path is not None:
        click.echo(defaults.describe(), err=True)
    group.main(prog_name="vitmsn", default_map=defaults.values)
