"""``df.Orchestrator.create`` and ``df.Entity.create``: the official package's wrappers.

Code written for ``azure.durable_functions`` wraps its functions with these;
here they only mark the function, and registering the wrapper registers the
function itself, so such code runs unchanged after the import line changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Orchestrator:
    """Wraps an orchestrator function (``main = df.Orchestrator.create(fn)``)."""

    @classmethod
    def create(cls, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A handle that stands for ``fn`` wherever an orchestrator is registered."""

        def handle(context: Any) -> Any:
            return fn(context)

        handle.orchestrator_function = fn  # type: ignore[attr-defined]
        handle.__name__ = getattr(fn, "__name__", "orchestrator")
        return handle


class Entity:
    """Wraps an entity function (``main = df.Entity.create(fn)``)."""

    @classmethod
    def create(cls, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A handle that stands for ``fn`` wherever an entity is registered."""

        def handle(context: Any) -> Any:
            return fn(context)

        handle.entity_function = fn  # type: ignore[attr-defined]
        handle.__name__ = getattr(fn, "__name__", "entity")
        return handle


def unwrap(fn: Any) -> Any:
    """The user's function behind an ``Orchestrator.create`` / ``Entity.create`` handle."""
    return getattr(fn, "orchestrator_function", None) or getattr(fn, "entity_function", None) or fn
