"""The queue-trigger runner against a real Azurite: host semantics, backoff, wake-up and shutdown."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from azure.storage.queue.aio import QueueClient

from durable_ext.host.azurite import Azurite, connection_string, free_port
from durable_ext.host.queues import (
    KeepMessage,
    QueueMessage,
    QueueTriggerGroup,
    QueueTriggerOptions,
    QueueTriggerRunner,
)

FAST = QueueTriggerOptions(max_polling_interval=timedelta(seconds=1))


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    """One emulator for this module; killed at the end since its data is thrown away anyway.

    (Azurite 3.37 closes its services on SIGTERM but its process lingers, so a plain stop waits 10 s.)
    """
    az = Azurite().start()
    try:
        yield az
    finally:
        az.kill()
        az.stop()


@pytest.fixture
async def make_queue(azurite: Azurite) -> AsyncIterator[Callable[..., Awaitable[QueueClient]]]:
    """Creates fresh queues (unique names) for one test and closes their clients after it."""
    clients: list[QueueClient] = []

    async def make(create: bool = True) -> QueueClient:
        client = QueueClient.from_connection_string(azurite.connection_string, f"q{uuid.uuid4().hex[:20]}")
        clients.append(client)
        if create:
            await client.create_queue()
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def queue(make_queue: Callable[..., Awaitable[QueueClient]]) -> QueueClient:
    return await make_queue()


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Wait until ``predicate()`` holds; return how long it took."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)
    return time.perf_counter() - start


async def count(queue: QueueClient) -> int:
    """Messages in the queue, visible or not (Azurite's count is exact)."""
    return (await queue.get_queue_properties()).approximate_message_count


def test_options_defaults_and_validation() -> None:
    options = QueueTriggerOptions()
    assert (options.batch_size, options.threshold, options.max_dequeue_count) == (16, 8, 5)
    assert options.max_concurrency == 24
    assert options.message_lease == timedelta(minutes=10)
    assert QueueTriggerOptions(batch_size=5, new_batch_threshold=0).max_concurrency == 5
    for bad in (
        {"batch_size": 0},
        {"batch_size": 33},
        {"new_batch_threshold": -1},
        {"max_dequeue_count": 0},
        {"min_polling_interval": timedelta(0)},
        {"max_polling_interval": timedelta(milliseconds=10)},
        {"message_lease": timedelta(milliseconds=500)},
    ):
        with pytest.raises(ValueError):
            QueueTriggerOptions(**bad)
    with pytest.raises(ValueError):
        KeepMessage(timedelta(days=8))


async def test_success_deletes_the_message(queue: QueueClient) -> None:
    seen: list[QueueMessage] = []

    async def handler(message: QueueMessage) -> None:
        seen.append(message)

    await queue.send_message('{"x": "é ✓"}')
    async with QueueTriggerRunner(queue, handler, FAST) as runner:
        await until(lambda: runner.handled == 1)
        assert await count(queue) == 0
    assert seen[0].content == '{"x": "é ✓"}'
    assert seen[0].dequeue_count == 1 and seen[0].id and seen[0].inserted_on is not None
    assert (runner.failed, runner.poisoned, runner.errors) == (0, 0, 0)


async def test_failure_is_retried_after_visibility_timeout(queue: QueueClient) -> None:
    calls: list[tuple[float, int]] = []

    async def handler(message: QueueMessage) -> None:
        calls.append((time.perf_counter(), message.dequeue_count))
        if len(calls) == 1:
            raise RuntimeError("transient")

    options = QueueTriggerOptions(
        visibility_timeout=timedelta(seconds=1), max_polling_interval=timedelta(seconds=5)
    )
    await queue.send_message("retry me")
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: runner.handled == 1)
    assert [dequeues for _, dequeues in calls] == [1, 2]
    assert 0.9 <= calls[1][0] - calls[0][0] < 1.8  # retried after the delay, not at the next 5 s poll
    assert (runner.failed, runner.poisoned) == (1, 0)
    assert await count(queue) == 0


async def test_poison_after_max_dequeue_count(azurite: Azurite, queue: QueueClient) -> None:
    poisoned: list[QueueMessage] = []
    attempts: list[int] = []

    async def handler(message: QueueMessage) -> None:
        if message.content == "bad":
            attempts.append(message.dequeue_count)
            raise ValueError("always fails")

    async def on_poison(message: QueueMessage) -> None:
        poisoned.append(message)

    options = QueueTriggerOptions(max_dequeue_count=3, max_polling_interval=timedelta(seconds=1))
    await queue.send_message("bad")
    async with QueueTriggerRunner(queue, handler, options, on_poison=on_poison) as runner:
        await until(lambda: runner.poisoned == 1)
        assert attempts == [1, 2, 3]
        assert [m.content for m in poisoned] == ["bad"] and runner.failed == 3
        await queue.send_message("good")  # the runner keeps working after a poison message
        runner.wake()
        await until(lambda: runner.handled == 1)
    assert await count(queue) == 0
    assert runner.poison_queue_name == queue.queue_name + "-poison"  # created on demand
    async with QueueClient.from_connection_string(
        azurite.connection_string, runner.poison_queue_name
    ) as poison:
        assert [m.content for m in await poison.peek_messages(max_messages=5)] == ["bad"]
        # As the host: a poison queue has no poison queue of its own.
        assert QueueTriggerRunner(poison, handler).poison_queue_name is None


async def test_message_over_max_dequeue_count_is_poisoned_unprocessed(queue: QueueClient) -> None:
    """As the host: a message that came back more often than allowed (e.g. it crashed a worker)."""
    calls: list[QueueMessage] = []
    await queue.send_message("crasher")
    taken = await queue.receive_message(visibility_timeout=60)  # dequeue 1, never completed
    await queue.update_message(taken, visibility_timeout=0)

    async def handler(message: QueueMessage) -> None:
        calls.append(message)

    options = QueueTriggerOptions(max_dequeue_count=1, max_polling_interval=timedelta(seconds=1))
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: runner.poisoned == 1)
    assert calls == [] and runner.failed == 0
    assert await count(queue) == 0


async def test_keep_message_redelivers_without_poison_accounting(queue: QueueClient) -> None:
    calls: list[tuple[float, QueueMessage]] = []

    async def handler(message: QueueMessage) -> None:
        calls.append((time.perf_counter(), message))
        if len(calls) == 1:
            raise KeepMessage(timedelta(seconds=1))
        if len(calls) <= 3:
            raise KeepMessage()  # re-check at once

    # max_dequeue_count=1: any failure would poison, so four deliveries prove keeps are not counted.
    options = QueueTriggerOptions(max_dequeue_count=1, max_polling_interval=timedelta(seconds=5))
    await queue.send_message("check later")
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: runner.handled == 1)
    assert len(calls) == 4 and all(m.content == "check later" for _, m in calls)
    assert all(m.dequeue_count == 1 for _, m in calls)
    assert 0.9 <= calls[1][0] - calls[0][0] < 1.8
    assert (runner.kept, runner.failed, runner.poisoned) == (3, 0, 0)
    assert await count(queue) == 0


async def test_batch_size_and_new_batch_threshold_bound_concurrency(queue: QueueClient) -> None:
    """Fetch again only when in-flight work is at or below the threshold: at most threshold + batch run."""
    options = QueueTriggerOptions(
        batch_size=4, new_batch_threshold=2, max_polling_interval=timedelta(seconds=1)
    )
    gate = asyncio.Semaphore(0)
    running = 0
    peak = 0

    async def handler(message: QueueMessage) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            await gate.acquire()
        finally:
            running -= 1

    for i in range(12):
        await queue.send_message(f"m{i}")
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: running == 4)
        await asyncio.sleep(0.3)
        assert (running, runner.polls) == (4, 1)  # 4 in flight > threshold 2: no fetch
        gate.release()
        await asyncio.sleep(0.3)
        assert (running, runner.polls) == (3, 1)  # still above the threshold
        gate.release()  # in flight drops to 2: a full batch of 4 is fetched
        await until(lambda: running == 6)
        await asyncio.sleep(0.3)
        assert (running, runner.polls) == (6, 2)
        assert options.max_concurrency == 6
        for _ in range(12):
            gate.release()
        await until(lambda: runner.handled == 12)
    assert peak == options.max_concurrency


async def test_idle_runner_backs_off(queue: QueueClient) -> None:
    """Empty polls double from 100 ms to the 1 s maximum: ~6 receive calls in 3 s, not 30."""

    async def handler(message: QueueMessage) -> None:
        pass

    async with QueueTriggerRunner(queue, handler, FAST) as runner:
        await asyncio.sleep(3.0)
        polls = runner.polls
        assert runner.backoff == timedelta(seconds=1)
    print(f"idle receive calls in 3 s: {polls}")
    assert 4 <= polls <= 8, polls


async def test_wake_handles_a_new_message_at_once_despite_max_backoff(queue: QueueClient) -> None:
    handled_at: list[float] = []

    async def handler(message: QueueMessage) -> None:
        handled_at.append(time.perf_counter())

    options = QueueTriggerOptions(max_polling_interval=timedelta(seconds=1.5))
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: runner.backoff == options.max_polling_interval)
        await asyncio.sleep(0.2)  # now in the middle of a long idle sleep
        polls = runner.polls
        await queue.send_message("urgent")
        woken = time.perf_counter()
        runner.wake()
        await until(lambda: bool(handled_at), timeout=1.0)
        print(f"wake-to-handler latency: {(handled_at[0] - woken) * 1000:.1f} ms")
        assert handled_at[0] - woken < 0.1, handled_at[0] - woken
        assert polls + 1 <= runner.polls <= polls + 2  # the wake-up poll, then the host's immediate re-poll
        assert runner.backoff < options.max_polling_interval  # the backoff starts over


async def test_stop_is_prompt_when_idle(queue: QueueClient) -> None:
    async def handler(message: QueueMessage) -> None:
        pass

    runner = QueueTriggerRunner(queue, handler, QueueTriggerOptions())  # max polling interval 1 min
    await runner.start()
    await asyncio.sleep(0.5)
    started = time.perf_counter()
    await runner.stop()
    assert time.perf_counter() - started < 0.2
    assert not runner.running


async def test_stop_waits_for_running_handlers(queue: QueueClient) -> None:
    done: list[str] = []

    async def handler(message: QueueMessage) -> None:
        await asyncio.sleep(0.4)
        done.append(message.content)

    await queue.send_message("finish me")
    runner = QueueTriggerRunner(queue, handler, FAST)
    await runner.start()
    await until(lambda: runner.in_flight == 1)
    await runner.stop()
    assert done == ["finish me"] and runner.handled == 1
    assert await count(queue) == 0


async def test_stop_timeout_cancels_and_releases(queue: QueueClient) -> None:
    async def handler(message: QueueMessage) -> None:
        await asyncio.sleep(3600)

    await queue.send_message("stuck")
    runner = QueueTriggerRunner(queue, handler, FAST)
    await runner.start()
    await until(lambda: runner.in_flight == 1)
    started = time.perf_counter()
    await runner.stop(timeout=0.2)
    assert time.perf_counter() - started < 1.0
    assert runner.in_flight == 0 and runner.failed == 0
    again = await queue.receive_message()  # released: visible at once for another worker
    assert again is not None and again.content == "stuck"


async def test_lease_is_renewed_while_a_handler_runs(queue: QueueClient) -> None:
    calls: list[int] = []

    async def handler(message: QueueMessage) -> None:
        calls.append(message.dequeue_count)
        await asyncio.sleep(2.6)

    options = QueueTriggerOptions(
        message_lease=timedelta(seconds=2), max_polling_interval=timedelta(seconds=1)
    )
    await queue.send_message("slow")
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: runner.handled == 1, timeout=6)
    assert calls == [1]  # never redelivered while running
    assert runner.renewals >= 1 and runner.errors == 0
    assert await count(queue) == 0


async def test_lost_lease_is_tolerated(queue: QueueClient) -> None:
    """Another receiver took the message mid-run: renewal and delete see a stale pop receipt, quietly."""
    calls: list[int] = []

    async def handler(message: QueueMessage) -> None:
        calls.append(message.dequeue_count)
        if message.dequeue_count == 1:
            await queue.update_message(message.id, message.pop_receipt, visibility_timeout=0)  # steal it
            await asyncio.sleep(1.3)  # past the first renewal (lease 2 s)

    options = QueueTriggerOptions(
        message_lease=timedelta(seconds=2), max_polling_interval=timedelta(seconds=1)
    )
    await queue.send_message("contended")
    async with QueueTriggerRunner(queue, handler, options) as runner:
        await until(lambda: runner.handled == 2)
    assert calls == [1, 2]  # at-least-once: the message came back while the first run went on
    assert (runner.renewals, runner.errors, runner.failed) == (0, 0, 0)
    assert await count(queue) == 0


async def test_runner_survives_storage_errors(make_queue: Callable[..., Awaitable[QueueClient]]) -> None:
    missing = await make_queue(create=False)
    handled: list[str] = []

    async def handler(message: QueueMessage) -> None:
        handled.append(message.content)

    async with QueueTriggerRunner(missing, handler, FAST) as runner:
        await until(lambda: runner.errors >= 2)  # queue not found: logged, backed off, retried
        assert runner.running
        await missing.create_queue()
        await missing.send_message("late")
        runner.wake()
        await until(lambda: handled == ["late"])

    dead_ports = {name: free_port() for name in ("blob", "queue", "table")}
    dead = QueueClient.from_connection_string(
        connection_string("127.0.0.1", dead_ports), "gone", retry_total=0
    )
    async with dead:
        runner = QueueTriggerRunner(dead, handler, FAST)
        await runner.start()
        await until(lambda: runner.errors >= 3)
        assert runner.running and runner.polls == runner.errors
        started = time.perf_counter()
        await runner.stop()
        assert time.perf_counter() - started < 0.5


async def test_group_wakes_and_stops_together(make_queue: Callable[..., Awaitable[QueueClient]]) -> None:
    queues = [await make_queue() for _ in range(3)]
    seen: list[str] = []

    async def handler(message: QueueMessage) -> None:
        seen.append(message.content)

    slow = QueueTriggerOptions(max_polling_interval=timedelta(seconds=30))
    group = QueueTriggerGroup(QueueTriggerRunner(q, handler, slow) for q in queues)
    async with group:
        await until(lambda: all(r.backoff >= timedelta(seconds=0.8) for r in group))
        await queues[1].send_message("one")
        group.wake(queues[1].queue_name)
        group.wake("not-a-queue-of-this-process")
        await until(lambda: group[queues[1].queue_name].handled == 1, timeout=0.5)
        assert seen == ["one"]
        for q in (queues[0], queues[2]):
            await q.send_message(q.queue_name)
        group.wake()
        await until(lambda: sum(r.handled for r in group) == 3, timeout=0.5)
        assert len(group) == 3 and group[queues[0].queue_name].handled == 1
    assert not any(r.running for r in group)


async def test_a_poll_loop_that_raises_is_logged_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected error in the poll loop never ends the runner silently."""
    queue: Any = SimpleNamespace(queue_name="q")
    runner = QueueTriggerRunner(queue, lambda m: asyncio.sleep(0))
    calls = 0
    again = asyncio.Event()

    async def flaky_loop() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the loop")
        again.set()
        await asyncio.Event().wait()  # polls forever

    runner._poll_loop = flaky_loop  # type: ignore[method-assign]
    task = asyncio.create_task(runner._keep_polling())
    await asyncio.wait_for(again.wait(), timeout=5)
    runner._stopping = True
    task.cancel()
    assert calls == 2
    assert any("poll loop failed; restarting" in r.getMessage() for r in caplog.records)
