"""mypy plugin for the static TensorRT check: feature probes are checked against the API too.

``hasattr(x, "NAME")`` and ``getattr(x, "NAME", default)`` are how the product feature-detects
TensorRT, and mypy accepts any string there. For each such call whose first argument
has a TensorRT type (the ``tensorrt`` module, one of its classes or enums, or an instance of one),
this plugin reports ``[tensorrt-probe]`` when that API has no attribute ``NAME``. A probe may
rightly name what only some versions have, so ``tests/tensorrt_static_check.py`` counts a probe
as a typo only when every API it checks against reports it.

Loaded by mypy through the ``plugins`` option; never imported by the product.
"""

from __future__ import annotations

from typing import Callable

from mypy.errorcodes import ErrorCode
from mypy.nodes import MypyFile, RefExpr, StrExpr, TypeInfo
from mypy.plugin import FunctionContext, Plugin
from mypy.types import CallableType, Instance, Type, TypeType, get_proper_type

PROBE = ErrorCode("tensorrt-probe", "Probe of an attribute the TensorRT API lacks", "TensorRT")
TENSORRT_PACKAGES = {"tensorrt", "tensorrt_bindings", "tensorrt_rtx", "tensorrt_rtx_bindings"}


def _is_tensorrt(fullname: str) -> bool:
    return fullname.split(".")[0] in TENSORRT_PACKAGES


def _class_of(typ: Type) -> tuple[TypeInfo, str] | None:
    """(class, how to name the probed object) when ``typ`` is a TensorRT class or instance."""
    t = get_proper_type(typ)
    if isinstance(t, Instance):
        return t.type, t.type.name
    if isinstance(t, CallableType) and t.is_type_obj():
        return t.type_object(), f"class {t.type_object().name}"
    if isinstance(t, TypeType) and isinstance(t.item, Instance):
        return t.item.type, f"class {t.item.type.name}"
    return None


def _missing(ctx: FunctionContext) -> tuple[str, str] | None:
    """(probed object, name) when the probe names an attribute the TensorRT API lacks."""
    if len(ctx.args) < 2 or len(ctx.args[0]) != 1 or len(ctx.args[1]) != 1 or not isinstance(ctx.args[1][0], StrExpr):
        return None
    target, name = ctx.args[0][0], ctx.args[1][0].value
    if isinstance(target, RefExpr) and isinstance(target.node, MypyFile):  # the module itself: trt
        module = target.node
        if not _is_tensorrt(module.fullname) or name in module.names or "__getattr__" in module.names:
            return None
        return f"module {module.fullname}", name
    found = _class_of(ctx.arg_types[0][0]) if ctx.arg_types[0] else None
    if found is None or not _is_tensorrt(found[0].fullname):
        return None
    info, what = found
    if info.get(name) is not None or info.get("__getattr__") is not None:
        return None
    return what, name


def _check_probe(ctx: FunctionContext) -> Type:
    missing = _missing(ctx)
    if missing is not None:
        ctx.api.fail(f'probe of "{missing[1]}": {missing[0]} has no such attribute in this TensorRT API',
                     ctx.context, code=PROBE)
    return ctx.default_return_type


class TensorRTProbePlugin(Plugin):
    def get_function_hook(self, fullname: str) -> Callable[[FunctionContext], Type] | None:
        return _check_probe if fullname in ("builtins.hasattr", "builtins.getattr") else None


def plugin(version: str) -> type[Plugin]:
    return TensorRTProbePlugin
