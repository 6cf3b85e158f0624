"""DurableApp: the decorators of ``azure.durable_functions`` on a Functions app.

``@app.orchestration_trigger``, ``@app.activity_trigger`` and
``@app.entity_trigger`` record the function in the app's registry and return
it unchanged, so it stays an ordinary, directly testable Python function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import azure.functions as func

from .core.registry import Kind, Registry

F = TypeVar("F", bound=Callable[..., Any])


class DurableApp(func.FunctionApp):
    """A function app whose orchestrators, activities and entities durable_ext runs."""

    def __init__(self, http_auth_level: func.AuthLevel | str = func.AuthLevel.FUNCTION) -> None:
        super().__init__(http_auth_level=http_auth_level)
        self.registry = Registry()
        self._kinds: dict[int, Kind] = {}

    def _register(self, kind: Kind, fn: F, name: str | None, input_name: str | None, input_type: Any) -> F:
        if not callable(fn):
            raise TypeError(f"@{kind}_trigger decorates a function, got {fn!r}")
        self.registry.add(kind, fn, name or getattr(fn, "__durable_name__", None), input_name, input_type)
        self._kinds[id(fn)] = kind
        return fn

    def orchestration_trigger(  # type: ignore[override]
        self, context_name: str = "context", orchestration: str | None = None, input_type: Any = None
    ) -> Callable[[F], F]:
        """Register a generator function as an orchestrator (name: ``orchestration`` or its own)."""
        return lambda fn: self._register("orchestrator", fn, orchestration, context_name, input_type)

    def activity_trigger(  # type: ignore[override]
        self, input_name: str = "input", activity: str | None = None
    ) -> Callable[[F], F]:
        """Register an activity; ``input_name`` is the parameter that receives the input."""
        return lambda fn: self._register("activity", fn, activity, input_name, None)

    def entity_trigger(  # type: ignore[override]
        self, context_name: str = "context", entity_name: str | None = None
    ) -> Callable[[F], F]:
        """Register an entity function."""
        return lambda fn: self._register("entity", fn, entity_name, context_name, None)

    def function_name(self, name: str, setting_extra_fields: dict[str, Any] | None = None):  # type: ignore[override]
        """Give a function its registered name (above or below its trigger decorator)."""
        base = super().function_name(name, setting_extra_fields or {})

        def decorator(fn: Any) -> Any:
            kind = self._kinds.get(id(fn))
            if kind is not None:
                self.registry.rename(kind, getattr(fn, "__durable_name__", None) or fn.__name__, name)
                fn.__durable_name__ = name
                return fn
            if callable(fn) and not hasattr(fn, "build"):
                fn.__durable_name__ = name
                return fn
            return base(fn)

        return decorator


DFApp = DurableApp
