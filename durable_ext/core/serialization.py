"""JSON payloads: plain JSON by default, dataclasses and pydantic models when typed.

Every input, result, event payload and custom status is stored as JSON text.
Encoding uses orjson (dataclasses, datetimes, UUIDs and enums natively,
pydantic models through ``model_dump``). Decoding returns plain JSON values
unless a target type is given, in which case pydantic's ``TypeAdapter``
rebuilds dataclasses, models and containers of them.
"""

from __future__ import annotations

import inspect
import typing
from functools import lru_cache
from typing import Any

import orjson

from .errors import SerializationError

_NO_TYPES = (None, inspect.Parameter.empty, Any, object)


def _default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def to_json(value: Any, what: str = "value") -> str | None:
    """Encode ``value`` to JSON text; ``None`` stays ``None`` (no payload).

    ``what`` names the payload in the error so the user knows which call to fix.
    """
    if value is None:
        return None
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError as exc:
        raise SerializationError(
            f"{what} cannot be serialized to JSON ({exc}); use JSON types, a dataclass or a pydantic model"
        ) from exc


def from_json(text: str | bytes | None, type_: Any = None, what: str = "value") -> Any:
    """Decode JSON text, converting to ``type_`` when it is a real annotation."""
    if text is None:
        return None
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"{what} is not valid JSON: {exc}") from exc
    if type_ in _NO_TYPES or value is None:
        return value
    return convert(value, type_, what)


def needs_conversion(type_: Any) -> bool:
    """Whether ``type_`` asks for more than the plain JSON value."""
    if type_ in _NO_TYPES or isinstance(type_, str):
        return False
    return type_ not in (int, float, str, bool, list, dict)


def convert(value: Any, type_: Any, what: str = "value") -> Any:
    """Turn a plain JSON value into ``type_`` (dataclass, pydantic model, containers)."""
    if not needs_conversion(type_):
        return value
    try:
        return _adapter(type_).validate_python(value)
    except Exception as exc:  # pydantic.ValidationError and friends
        raise SerializationError(f"{what} does not match {_type_name(type_)}: {exc}") from exc


@lru_cache(maxsize=512)
def _adapter(type_: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(type_)


def _type_name(type_: Any) -> str:
    return getattr(type_, "__name__", None) or str(type_)


def annotation_of(fn: Any, parameter: str | None = None) -> Any:
    """The resolved annotation of ``fn``'s parameter (or return value when ``None``)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        hints = getattr(fn, "__annotations__", {}) or {}
    if parameter is None:
        hint = hints.get("return")
        origin = typing.get_origin(hint)
        if origin is not None and getattr(origin, "__name__", "") in ("Generator", "Iterator"):
            args = typing.get_args(hint)
            return args[2] if len(args) == 3 else None
        return hint
    return hints.get(parameter)
