"""``df.Orchestrator.create`` and ``df.Entity.create``: the official package's wrappers.

Code written for ``azure.durable_functions`` wraps its functions with these;
here they only mark the function, and registering the wrapper registers the
function itself (``Registry.add`` looks for the mark), so such code runs
unchanged after the import line changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _handle(fn: Callable[..., Any], mark: str) -> Callable[..., Any]:
    """A callable standing for ``fn``, carrying ``fn`` under the official attribute ``mark``."""

    def handle(context: Any) -> Any:
        return fn(context)

    setattr(handle, mark, fn)
    handle.__name__ = getattr(fn, "__name__", "function")
    return handle


class Orchestrator:
    """Wraps an orchestrator function (``main = df.Orchestrator.create(fn)``)."""

    @classmethod
    def create(cls, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A handle that stands for ``fn`` wherever an orchestrator is registered."""
        return _handle(fn, "orchestrator_function")


class Entity:
    """Wraps an entity function (``main = df.Entity.create(fn)``)."""

    @classmethod
    def create(cls, fn: Callable[..., Any]) -> Callable[..., Any]:
        """A handle that stands for ``fn`` wherever an entity is registered."""
        return _handle(fn, "entity_function")
