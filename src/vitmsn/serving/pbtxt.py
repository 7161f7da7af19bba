"""A small writer of protobuf text format (Triton's ``config.pbtxt``) from plain Python values.

Triton's model configuration is the ``inference.ModelConfig`` protobuf message; its text form is
what ``config.pbtxt`` holds. The writer needs no protobuf package: values map as follows

* ``str`` -> a quoted string; :class:`Enum` (a ``str``) -> a bare enum value (``TYPE_FP32``);
* ``bool`` -> ``true``/``false``; ``int`` -> the number;
* a list of scalars -> ``key: [ a, b ]``; a list of dicts -> ``key [ { ... }, { ... } ]``
  (repeated messages, which is also how protobuf maps such as ``input_map`` are written);
* a dict -> a nested message ``key { ... }``; ``None`` -> the field is left out.

The tests parse every file written with Triton's own schema (``tritonclient``'s
``model_config_pb2`` and ``google.protobuf.text_format``), which rejects unknown fields.
"""

from __future__ import annotations

from typing import Any, Mapping


class Enum(str):
    """A protobuf enum value, written without quotes."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        if not value.replace("_", "").isalnum():
            raise ValueError(f"not an enum name: {value!r}")
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(f"control characters are not written into config.pbtxt: {value!r}")
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a protobuf text value")


def to_pbtxt(fields: Mapping[str, Any], indent: int = 0) -> str:
    """``fields`` as protobuf text format, one field per line, two-space indents."""
    pad = "  " * indent
    lines: list[str] = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            body = to_pbtxt(value, indent + 1)
            lines.append(f"{pad}{key} {{\n{body}{pad}}}" if body else f"{pad}{key} {{ }}")
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value):
            items = [f"{pad}  {{\n{to_pbtxt(v, indent + 2)}{pad}  }}" for v in value]
            lines.append(f"{pad}{key} [\n" + ",\n".join(items) + f"\n{pad}]")
        elif isinstance(value, (list, tuple)):
            if value:
                lines.append(f"{pad}{key}: [ " + ", ".join(_scalar(v) for v in value) + " ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)
