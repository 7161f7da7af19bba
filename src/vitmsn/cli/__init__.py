"""The `vitmsn` command group. Each sub-command lives in its own module and is imported only
when it runs, so `vitmsn --help` works without torch, ONNX Runtime or TensorRT (STYLE.md #8).
"""

from __future__ import annotations

import importlib

import click

from vitmsn.interrupts import deferred

# command name -> module under vitmsn.cli that defines `command`
COMMANDS = {
    "predict": "predict",
    "validate": "validate",
    "bench": "bench",
    "inspect": "inspect_cmd",
    "triton": "triton",
    "serve": "serve",
}
HELP = {
    "predict": "Top-k labels for images, from the exported artifacts.",
    "validate": "Accuracy-drift report of every precision/backend against PyTorch FP32.",
    "bench": "Latency and throughput per backend, precision and batch size.",
    "inspect": "Print an artifacts directory's manifest readably.",
    "triton": "Write a Triton Inference Server model repository.",
    "serve": "Serve the model over HTTP with micro-batching.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMANDS.get(cmd_name)
        if module is None:
            return None
        try:
            with deferred():  # a command module may load C++ extensions: see vitmsn.interrupts
                mod = importlib.import_module(f"vitmsn.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("vitmsn.cli"):
                return _unavailable(cmd_name)
            missing = exc.name or str(exc)
            return _missing_dependency(cmd_name, missing)
        return mod.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in sorted(COMMANDS)])


def _unavailable(name: str) -> click.Command:
    @click.command(name, help=HELP[name], context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        raise click.UsageError(f"'vitmsn {name}' is not available in this version")

    return stub


def _missing_dependency(name: str, missing: str) -> click.Command:
    @click.command(name, help=HELP[name], context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        raise click.UsageError(
            f"'vitmsn {name}' needs the Python package {missing!r}, which is not installed; "
            "install the matching extra, e.g. pip install 'vitmsn[export]' or 'vitmsn[serve]'"
        )

    return stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vitmsn")
def group() -> None:
    """vitmsn: ViTMSN models from PyTorch to ONNX, FP16/INT8 and TensorRT, with a slim runtime.

    Options of each command may also come from the config file: [tool.vitmsn.<command>] in the
    working directory's pyproject.toml, or [<command>] in vitmsn.toml.
    """


def main() -> None:
    from vitmsn import interrupts
    from vitmsn.cli.common import exit_interrupted

    interrupts.install()  # first: SIGINT/SIGTERM exit 130/143 from here on, imports included
    try:
        _main()
    except KeyboardInterrupt as exc:  # outside a command body (which handle_errors covers)
        exit_interrupted(exc)


def _main() -> None:
    import sys
    from pathlib import Path

    from vitmsn.config import default_map
    from vitmsn.errors import InputError

    # Only the command being run reads its config table, so a broken optional command never
    # stops the others.
    name = next((a for a in sys.argv[1:] if not a.startswith("-")), None)
    defaults = {}
    if name in COMMANDS:
        command = group.get_command(click.Context(group), name)
        if command is not None:
            try:
                defaults = default_map(Path.cwd(), {name: {p.name for p in command.params if p.name}})
            except InputError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(2)
    group.main(prog_name="vitmsn", default_map=defaults)
