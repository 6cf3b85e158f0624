"""The functions an app defines: orchestrators, activities and entities by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from .errors import DurableError
from .serialization import annotation_of

Kind = Literal["orchestrator", "activity", "entity"]


class UnknownFunctionError(DurableError, LookupError):
    """No function of that kind and name is registered in the app."""


@dataclass
class FunctionInfo:
    """One registered function with what the engine needs to call it."""

    name: str
    kind: Kind
    fn: Callable[..., Any]
    input_name: str | None = None
    input_type: Any = None
    return_type: Any = None

    @property
    def is_async(self) -> bool:
        """True for ``async def`` functions (run on the event loop, not a thread)."""
        return inspect.iscoroutinefunction(self.fn)


class Registry:
    """Case-insensitive name -> function tables, one per kind (as Functions names are)."""

    def __init__(self) -> None:
        self._functions: dict[tuple[str, str], FunctionInfo] = {}

    def add(
        self,
        kind: Kind,
        fn: Callable[..., Any],
        name: str | None = None,
        input_name: str | None = None,
        input_type: Any = None,
    ) -> FunctionInfo:
        """Register ``fn``; the input and return annotations give the payload types."""
        fn = getattr(fn, "orchestrator_function", None) or getattr(fn, "entity_function", None) or fn
        name = name or getattr(fn, "__durable_name__", None) or fn.__name__
        if input_name is None and kind != "orchestrator":
            params = list(inspect.signature(fn).parameters)
            input_name = params[0] if params else None
        if input_type is None and input_name and kind == "activity":
            input_type = annotation_of(fn, input_name)
        info = FunctionInfo(name, kind, fn, input_name, input_type, annotation_of(fn))
        self._functions[(kind, name.casefold())] = info
        return info

    def rename(self, kind: Kind, old: str, new: str) -> None:
        """Move a function to a new name (``@app.function_name`` after the trigger)."""
        info = self._functions.pop((kind, old.casefold()))
        info.name = new
        self._functions[(kind, new.casefold())] = info

    def get(self, kind: Kind, name: str) -> FunctionInfo:
        """The function of that kind and name, or a clear UnknownFunctionError."""
        info = self._functions.get((kind, name.casefold()))
        if info is None:
            known = sorted(i.name for (k, _), i in self._functions.items() if k == kind)
            raise UnknownFunctionError(
                f"no {kind} function named '{name}' is registered"
                + (f" (registered: {', '.join(known)})" if known else "")
            )
        return info

    def find(self, kind: Kind, name: str) -> FunctionInfo | None:
        """Like ``get`` but ``None`` when missing."""
        return self._functions.get((kind, name.casefold()))

    def result_type(self, kind: str, name: str) -> Any:
        """Declared return type of a function, for typed results in orchestrators."""
        info = self._functions.get((kind, name.casefold()))
        return info.return_type if info is not None else None

    def names(self, kind: Kind) -> list[str]:
        """Registered names of one kind."""
        return sorted(i.name for (k, _), i in self._functions.items() if k == kind)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._functions.values()))
