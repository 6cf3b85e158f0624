"""A poison handler that cannot fail its instance says so and tries again; it never gives up silently."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

import durable_ext.handlers as handlers_module
from durable_ext.clock import Clock
from durable_ext.handlers import DurableHandlers, QueueMessage
from durable_ext.retrying import Background


class FlakyBackend:
    """``force_fail`` and ``complete_activity`` fail ``failures`` times, then work."""

    def __init__(self, failures: int) -> None:
        self.clock = Clock()
        self.failures = failures
        self.calls = 0
        self.failed: list[str] = []
        self.completed: list[Any] = []

    def _attempt(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("storage is away")

    async def force_fail(self, instance_id: str, reason: str) -> bool:
        self._attempt()
        self.failed.append(instance_id)
        return True

    async def complete_activity(self, request: Any, result: Any, **kwargs: Any) -> None:
        self._attempt()
        self.completed.append(result)

    async def get_instance(self, instance_id: str) -> None:
        return None


def poison_handlers(backend: FlakyBackend) -> DurableHandlers:
    """The handlers' poison methods, without an engine (they only use the backend)."""
    handlers = DurableHandlers.__new__(DurableHandlers)
    handlers.backend = backend  # type: ignore[assignment]
    handlers._retries = Background()
    return handlers


def message(body: dict[str, Any]) -> QueueMessage:
    return QueueMessage("m-1", "receipt", orjson.dumps(body).decode(), dequeue_count=5)


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers_module, "POISON_RETRIES_S", (0.01, 0.01, 0.01))


async def drain(handlers: DurableHandlers) -> None:
    while handlers._retries.tasks:
        await asyncio.gather(*list(handlers._retries.tasks))


async def test_failing_the_instance_is_retried_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    backend = FlakyBackend(failures=2)
    handlers = poison_handlers(backend)
    await handlers.on_control_poison(message({"i": "stuck"}))
    assert backend.failed == []  # the first attempt failed...
    await drain(handlers)
    assert backend.failed == ["stuck"]  # ...a background retry did it
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("failing instance stuck" in e and "storage is away" in e for e in errors), errors


async def test_reporting_a_poisoned_activity_is_retried() -> None:
    backend = FlakyBackend(failures=1)
    handlers = poison_handlers(backend)
    work_item = {"id": "w-1", "i": "orch", "x": "exec", "t": 3, "n": "flaky", "in": None}
    await handlers.on_work_item_poison(message(work_item))
    await drain(handlers)
    assert len(backend.completed) == 1
    assert backend.completed[0].event["EventType"] == 6  # TaskFailed, with the poison reason


async def test_giving_up_is_an_error_too(caplog: pytest.LogCaptureFixture) -> None:
    backend = FlakyBackend(failures=99)
    handlers = poison_handlers(backend)
    await handlers.on_control_poison(message({"i": "doomed"}))
    await drain(handlers)
    assert backend.failed == []
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("gave up after 3 retries" in e for e in errors), errors


async def test_a_message_naming_no_instance_is_an_error_not_a_crash(caplog: pytest.LogCaptureFixture) -> None:
    handlers = poison_handlers(FlakyBackend(failures=0))
    await handlers.on_control_poison(QueueMessage("m-2", "r", "not json", dequeue_count=5))
    assert any("names no instance" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
