"""LocalDispatch: what happens to a message's queued copy when this process applies it, fails, or stops."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

from durable_ext.backends.azure.backend import Backup, SentMessage
from durable_ext.clock import Clock
from durable_ext.handlers import LocalDispatch


class FakeBackend:
    """Records what the dispatcher does with the queued copies."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.discarded: list[str] = []
        self.revealed: list[tuple[str, datetime | None]] = []

    async def discard(self, sent: SentMessage) -> None:
        self.discarded.append(sent.id)

    async def reveal(self, sent: SentMessage, due: datetime | None) -> None:
        self.revealed.append((sent.id, due))


class FakeHandlers:
    """Applies messages by recording them (or failing, for instances named ``bad``)."""

    def __init__(self) -> None:
        self.backend = FakeBackend()
        self.applied: list[tuple[str, datetime]] = []

    async def process(self, instance_id: str, messages: list[Any]) -> None:
        if instance_id == "bad":
            raise RuntimeError("storage said no")
        self.applied.append((instance_id, self.backend.clock.now()))


def sent(message_id: str) -> Backup:
    future: Backup = asyncio.get_running_loop().create_future()
    future.set_result(SentMessage(None, message_id, "receipt"))
    return future


async def settle(dispatch: LocalDispatch) -> None:
    await asyncio.gather(*list(dispatch.tasks), return_exceptions=True)


async def test_applied_here_the_copy_is_discarded() -> None:
    handlers = FakeHandlers()
    dispatch = LocalDispatch(handlers)  # type: ignore[arg-type]
    dispatch.run("a", [], None, sent("copy-a"))
    await settle(dispatch)
    assert [iid for iid, _ in handlers.applied] == ["a"]
    assert handlers.backend.discarded == ["copy-a"] and handlers.backend.revealed == []
    assert dispatch.applied == 1


async def test_failed_here_the_copy_takes_over_at_once() -> None:
    handlers = FakeHandlers()
    dispatch = LocalDispatch(handlers)  # type: ignore[arg-type]
    dispatch.run("bad", [], None, sent("copy-bad"))
    await settle(dispatch)
    assert handlers.backend.revealed == [("copy-bad", None)] and handlers.backend.discarded == []


async def test_a_timer_is_applied_when_due_never_before() -> None:
    handlers = FakeHandlers()
    dispatch = LocalDispatch(handlers)  # type: ignore[arg-type]
    due = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    dispatch.run("t", [], due, sent("copy-t"))
    assert dispatch.timers == 1
    await settle(dispatch)
    assert handlers.applied and handlers.applied[0][1] >= due
    assert dispatch.timers == 0 and handlers.backend.discarded == ["copy-t"]


async def test_waiting_timers_never_crowd_out_messages_due_now() -> None:
    handlers = FakeHandlers()
    dispatch = LocalDispatch(handlers, limit=2, timer_limit=1)  # type: ignore[arg-type]
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    assert dispatch.accepts(later)
    dispatch.run("t", [], later, sent("copy-t"))
    assert not dispatch.accepts(later)  # the timer budget is spent
    assert dispatch.accepts(None)  # the budget of messages due now is not
    await dispatch.stop()


async def test_stopping_hands_pending_copies_back_at_their_due_time() -> None:
    handlers = FakeHandlers()
    dispatch = LocalDispatch(handlers)  # type: ignore[arg-type]
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    dispatch.run("t", [], later, sent("copy-t"))
    await asyncio.sleep(0)
    await dispatch.stop()
    assert handlers.backend.revealed == [("copy-t", later)]  # visible when due, not a grace later
    assert handlers.applied == [] and not dispatch.accepts(None)
