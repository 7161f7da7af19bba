"""What the config file may set for a command, read from the command's own click parameters, so that
an option is declared once (its click decorator) and the config file accepts it, checks its type and
resolves its paths with no second list to keep in step."""

from __future__ import annotations

from typing import Any, Callable

import click

from vitmsn.config import Key


class ThresholdType(click.ParamType):
    """A gate threshold: a number for every precision, or ``int8=0.97,fp16=0.99``; the config file may also give a
    TOML table ``{int8 = 0.97}``. Checked by ``Gates.build`` (a bad value exits 2 naming the option)."""

    name = "X|P=X,..."
    toml_types = (float, str, dict)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (dict, int, float, str)) and not isinstance(value, bool):
            return value
        self.fail(f"{value!r}: expected a number or PRECISION=NUMBER[,...]", param, ctx)


THRESHOLD = ThresholdType()


def positive_ints(ctx: click.Context | None, param: click.Parameter | None, value: str | None) -> tuple[int, ...]:
    """Click callback: '8,1,8' -> (8, 1) (input order, duplicates dropped); None -> () (the default)."""
    if value is None:
        return ()
    parts = [p.strip() for p in str(value).split(",") if p.strip()]
    if not parts or not all(p.isdecimal() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{value!r}: expected positive batch sizes separated by commas, e.g. 1,3,8")
    return tuple(dict.fromkeys(int(p) for p in parts))


def toml_types(param: click.Parameter) -> tuple[type, ...] | None:
    """The TOML value types a parameter accepts (None: not checked here; click's own type still converts it)."""
    kind = param.type
    if isinstance(param, click.Option) and param.is_flag or isinstance(kind, click.types.BoolParamType):
        return (bool,)
    if isinstance(kind, click.types.IntParamType):
        return (int,)
    if isinstance(kind, click.types.FloatParamType):
        return (float,)
    if isinstance(kind, (click.types.StringParamType, click.Path, click.Choice)):
        return (str,)
    return getattr(kind, "toml_types", None)


def config_keys(command: click.Command) -> dict[str, Key]:
    """Config keys of ``command``: each long option name (underscored) and each parameter name, with the
    parameter it sets and the types it takes; positional arguments (ARTIFACTS) by their name."""
    keys: dict[str, Key] = {}
    for param in command.params:
        if not param.name or not param.expose_value:
            continue
        key = Key(param.name, toml_types(param), bool(getattr(param, "multiple", False)))
        keys[param.name] = key
        for opt in param.opts:
            if opt.startswith("--"):
                keys[opt[2:].replace("-", "_")] = key
    return keys


def apply(options: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """One decorator from a list of click option decorators, first one first in --help."""
    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
