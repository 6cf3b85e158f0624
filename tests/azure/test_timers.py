"""Durable timers on a real Azurite: delayed control-queue messages (DESIGN.md §4).

A timer survives a worker restart, fires at once when it is already due,
never fires before its time, is re-sent by the sweep when its message is
lost, and one beyond the queue's 7-day visibility limit is re-armed leg by
leg (driven with a virtual clock through the real send and handler code).
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from procs import Hub, history_problems, wait_for_event

from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.clock import VirtualClock
from durable_ext.core.history import EventType, parse_timestamp
from durable_ext.handlers import QueueMessage

NO_SWEEP = 3600.0  # sweep interval for tests where only the timer's own message may fire it


def assert_fired_once(history: list[dict[str, Any]], output: dict[str, str]) -> datetime:
    """One TimerCreated, one TimerFired, the orchestration woke no earlier than the fire time."""
    assert history_problems(history) == []
    kinds = [e["EventType"] for e in history]
    assert kinds.count(EventType.TimerCreated) == 1 and kinds.count(EventType.TimerFired) == 1
    fire_at = datetime.fromisoformat(output["fire_at"])
    assert datetime.fromisoformat(output["woke_at"]) >= fire_at, output
    return fire_at


async def start_timer(hub: Hub, seconds: float) -> tuple[AzureBackend, str, datetime]:
    """Start ``timer_flow`` on a worker that is stopped once the timer is scheduled.

    Returns the worker's (closed) backend, the instance id and the timer's fire time.
    """
    backend = hub.new_backend()
    async with hub.worker(backend):
        iid = await hub.client.start_new("timer_flow", client_input={"seconds": seconds})
        created = await wait_for_event(hub.backend, iid, EventType.TimerCreated)
    await backend.close()
    return backend, iid, parse_timestamp(created["FireAt"])


async def control_queue_counts(
    backend: AzureBackend, iid: str, expect: tuple[int, int] | None = None, timeout: float = 5
) -> tuple[int, int]:
    """(messages in the instance's control queue, how many are visible), once it is ``expect``.

    Waiting lets the worker delete the messages it has just handled.
    """
    queue = backend.control_queue_for(iid)
    deadline = time.monotonic() + timeout
    while True:
        props = await queue.get_queue_properties()
        counts = props.approximate_message_count, len(await queue.peek_messages(max_messages=32))
        if expect is None or counts == expect or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


async def test_timer_survives_worker_restart(hub: Hub) -> None:
    """Stop the worker while the timer is pending; a new worker completes it after the fire time."""
    _, iid, fire_at = await start_timer(hub, 3)
    status = await hub.client.get_status(iid)
    assert status is not None and status.runtime_status == Status.Running
    assert await control_queue_counts(hub.backend, iid, (1, 0)) == (
        1,
        0,
    )  # the timer: stored, not yet visible
    backend = hub.new_backend()
    try:
        async with hub.worker(backend):
            status = await hub.client.wait_for_completion(iid, timeout=15)
            completed_at = backend.clock.now()
    finally:
        await backend.close()
    assert status.runtime_status == Status.Completed
    assert completed_at >= fire_at
    assert_fired_once(await hub.backend.get_history(iid), status.output)


async def test_timer_due_before_worker_starts_fires_at_once(hub: Hub) -> None:
    """A timer that came due while no worker ran fires as soon as one starts (not via the sweep)."""
    _, iid, fire_at = await start_timer(hub, 1)
    while hub.backend.clock.now() < fire_at + timedelta(seconds=1):
        await asyncio.sleep(0.1)
    backend = hub.new_backend()
    try:
        started = time.monotonic()
        async with hub.worker(backend):
            status = await hub.client.wait_for_completion(iid, timeout=10)
            elapsed = time.monotonic() - started
    finally:
        await backend.close()
    assert elapsed < 3.0, f"a due timer took {elapsed:.1f}s after the worker started"
    assert_fired_once(await hub.backend.get_history(iid), status.output)


async def test_timer_in_the_past_fires_at_once(hub: Hub) -> None:
    """A timer whose fire time already passed when it is created is sent undelayed."""
    backend = hub.new_backend()
    try:
        async with hub.worker(backend):
            started = time.monotonic()
            iid = await hub.client.start_new("timer_flow", client_input={"seconds": -30})
            status = await hub.client.wait_for_completion(iid, timeout=10)
            elapsed = time.monotonic() - started
    finally:
        await backend.close()
    assert elapsed < 3.0, elapsed
    assert_fired_once(await hub.backend.get_history(iid), status.output)


@pytest.mark.parametrize("seconds", [1.3, 2.7])
async def test_timer_never_fires_early(hub: Hub, seconds: float) -> None:
    """Queues count visibility in whole seconds: a fractional delay must not wake the orchestration early."""
    backend = hub.new_backend()
    try:
        async with hub.worker(backend):
            iid = await hub.client.start_new("timer_flow", client_input={"seconds": seconds})
            status = await hub.client.wait_for_completion(iid, timeout=15)
            completed_at = backend.clock.now()
    finally:
        await backend.close()
    fire_at = assert_fired_once(await hub.backend.get_history(iid), status.output)
    assert fire_at <= completed_at < fire_at + timedelta(seconds=3)


class SentLog:
    """Wraps ``send_message`` of queue clients to record what really goes to the queue service."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], int | None]] = []  # queue, body, visibility (s)

    def watch(self, queue: Any) -> None:
        """Record every message sent through ``queue`` (then send it as before)."""
        send = queue.send_message

        async def recording(content: str, **kwargs: Any) -> Any:
            self.sent.append((queue.queue_name, orjson.loads(content), kwargs.get("visibility_timeout")))
            return await send(content, **kwargs)

        queue.send_message = recording

    def delayed(self) -> list[tuple[str, dict[str, Any], int]]:
        """The messages sent with a visibility delay."""
        return [(q, body, delay) for q, body, delay in self.sent if delay]


def delivered(body: dict[str, Any], n: int) -> QueueMessage:
    """The queue message a control-queue trigger would hand the handler for ``body``."""
    return QueueMessage(f"leg-{n}", "receipt", orjson.dumps(body).decode(), 1)


async def test_timer_beyond_queue_limit_is_rearmed(hub: Hub) -> None:
    """A 10-day timer: the first leg waits the queue's maximum, then is re-armed, then fires.

    The backend's clock is virtual; the queue legs are delivered to the real handler
    when the clock says they would have become visible.
    """
    clock = VirtualClock()
    backend = hub.new_backend(clock=clock)
    sent = SentLog()
    for queue in backend.control_queues:
        sent.watch(queue)
    try:
        async with hub.worker(backend, repair_interval=NO_SWEEP) as worker:
            iid = await hub.client.start_new("timer_flow", client_input={"seconds": 10 * 24 * 3600})
            created = await wait_for_event(hub.backend, iid, EventType.TimerCreated)
            fire_at = parse_timestamp(created["FireAt"])
            for _ in range(100):  # the timer message is dispatched just after the commit
                if sent.delayed():
                    break
                await asyncio.sleep(0.05)
            assert len(sent.delayed()) == 1
            queue_name, first_leg, delay = sent.delayed()[0]
            assert queue_name == backend.control_queue_for(iid).queue_name
            assert first_leg["m"]["e"]["EventType"] == EventType.TimerFired
            assert 6 * 86400 < delay < 7 * 86400  # the queue's longest visibility delay, not 10 days
            assert await control_queue_counts(hub.backend, iid, (1, 0)) == (1, 0)  # invisible for ~7 days
            history_len = len(await hub.backend.get_history(iid))

            clock.advance(timedelta(seconds=delay))  # the first leg becomes visible: not due yet
            await worker.handlers.on_control(delivered(first_leg, 1))
            assert len(sent.delayed()) == 2, "the first leg was not re-armed"
            _, second_leg, rest = sent.delayed()[1]
            assert second_leg == first_leg  # the same timer message, delayed again
            remaining = (fire_at - clock.now()).total_seconds()
            assert remaining <= rest <= remaining + 5, (rest, remaining)
            assert len(await hub.backend.get_history(iid)) == history_len  # the instance did not run
            assert (await hub.client.get_status(iid)).runtime_status == Status.Running  # type: ignore[union-attr]
            assert await control_queue_counts(hub.backend, iid, (2, 0)) == (2, 0)

            clock.advance(timedelta(seconds=rest))  # the second leg becomes visible: due now
            await worker.handlers.on_control(delivered(second_leg, 2))
            status = await hub.client.wait_for_completion(iid, timeout=10)
    finally:
        await backend.close()
    assert status.runtime_status == Status.Completed
    assert_fired_once(await hub.backend.get_history(iid), status.output)
    assert datetime.fromisoformat(status.output["woke_at"]) - datetime.fromisoformat(
        status.output["fire_at"]
    ) < timedelta(seconds=10)
