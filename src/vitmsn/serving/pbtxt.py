"""``config.pbtxt`` from plain Python values, through Triton's own ``inference.ModelConfig`` protobuf.

The values are parsed into the message with ``google.protobuf.json_format`` (an unknown field, a
bad enum name, a wrong type or two fields of one ``oneof`` are errors here, before anything is
written) and printed with ``text_format``, so every file written is valid by construction.
The schema is ``tritonclient``'s ``model_config_pb2`` (the ``triton`` extra).

Conventions of the input: an :class:`Enum` (a ``str``) is an enum value name (``TYPE_FP32``);
``None`` leaves a field out; a list of ``{"key": ..., "value": ...}`` dicts is a protobuf map
(``input_map``, ``output_map``, ``parameters``).
"""

from __future__ import annotations

from typing import Any, Mapping


class Enum(str):
    """A protobuf enum value name."""


def _is_map(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and bool(value)
            and all(isinstance(v, Mapping) and set(v) == {"key", "value"} for v in value))


def _as_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _as_json(v) for k, v in value.items() if v is not None}
    if _is_map(value):
        return {str(item["key"]): _as_json(item["value"]) for item in value}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    if isinstance(value, str) and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"control characters are not written into config.pbtxt: {value!r}")
    return value


def model_config(fields: Mapping[str, Any]) -> Any:
    """``fields`` as an ``inference.ModelConfig`` message; ValueError naming the problem when they do not fit it."""
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    try:
        return json_format.ParseDict(_as_json(fields), model_config_pb2.ModelConfig())
    except json_format.ParseError as exc:
        raise ValueError(f"not a valid Triton model configuration: {exc}") from exc


def to_pbtxt(fields: Mapping[str, Any]) -> str:
    """``fields`` as the text of a ``config.pbtxt`` (protobuf text format of ``inference.ModelConfig``)."""
    from google.protobuf import text_format

    return text_format.MessageToString(model_config(fields))
