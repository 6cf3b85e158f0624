"""Poison and malformed messages on a real Azurite.

A control message whose step fails every time ends in ``{queue}-poison``
after ``maxDequeueCount`` deliveries and its instance fails with a readable
reason; a work item that cannot be run fails its activity in the
orchestration; malformed messages are dropped and never stop a worker.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest
from azure.storage.queue.aio import QueueClient

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend, FaultHook
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.backends.base import LoadedInstance
from durable_ext.client import DurableOrchestrationClient
from durable_ext.config import DurableTaskOptions
from durable_ext.core.history import EventType
from durable_ext.core.runtime import StepResult
from durable_ext.host.azurite import Azurite
from durable_ext.host.worker import AzureWorker

app = df.DurableApp()
_hubs = itertools.count(1)
_step: contextvars.ContextVar[StepResult | None] = contextvars.ContextVar("step", default=None)
MAX_DEQUEUE = 2

# --------------------------------------------------------------------------- the app


@app.orchestration_trigger(context_name="context")
def two_steps(context: df.DurableOrchestrationContext):
    """Call ``shout`` twice in a row."""
    first = yield context.call_activity("shout", context.get_input() or "a")
    second = yield context.call_activity("shout", first)
    return second


@app.orchestration_trigger(context_name="context")
def waits_for_gate(context: df.DurableOrchestrationContext):
    """Call ``gate`` and report how it ended (a poisoned work item fails it)."""
    try:
        return {"ok": (yield context.call_activity("gate", None))}
    except Exception as exc:
        return {"failed": str(exc)}


@app.orchestration_trigger(context_name="context")
def waits_for_event(context: df.DurableOrchestrationContext):
    """Return the data of the ``Go`` event."""
    return (yield context.wait_for_external_event("Go"))


@app.activity_trigger(input_name="text")
def shout(text: str) -> str:
    """Upper-case and mark the text."""
    return text.upper() + "!"


GATE = asyncio.Event()


@app.activity_trigger(input_name="ignored")
async def gate(ignored: Any) -> str:
    """Wait until the test opens the gate."""
    await GATE.wait()
    return "opened"


# --------------------------------------------------------------------------- fixtures


class StepFaults(FaultHook):
    """Raise at ``commit.before`` for every step that ``predicate`` picks (the step being committed)."""

    def __init__(self) -> None:
        self.predicate: Callable[[StepResult], bool] = lambda step: False
        self.raised: dict[str, int] = {}

    def check(self, point: str) -> None:
        step = _step.get()
        if point != "commit.before" or step is None or not self.predicate(step):
            return
        iid = step.record.instance_id
        self.raised[iid] = self.raised.get(iid, 0) + 1
        raise RuntimeError(f"injected: storage rejects every commit of {iid}")


class StepAwareBackend(AzureBackend):
    """An AzureBackend that lets its fault hook see which step it is committing."""

    async def commit(self, loaded: LoadedInstance, step: StepResult) -> None:
        token = _step.set(step)
        try:
            await super().commit(loaded, step)
        finally:
            _step.reset(token)


def is_poison_failure(step: StepResult) -> bool:
    """Whether ``step`` is the one ``force_fail`` writes for a poisoned instance."""
    failure = step.record.failure or {}
    return step.record.status == Status.Failed and failure.get("ErrorType") == "PoisonMessageError"


def poison_options() -> DurableTaskOptions:
    """A fresh hub: two partitions, poison after two deliveries, retry at once, poll at least every 1 s."""
    name = f"Poison{os.getpid()}x{next(_hubs)}"
    return DurableTaskOptions.from_host_json(
        {
            "version": "2.0",
            "extensions": {
                "durableTask": {
                    "hubName": name,
                    "storageProvider": {"partitionCount": 2, "maxQueuePollingInterval": "00:00:01"},
                },
                "queues": {"maxDequeueCount": MAX_DEQUEUE, "visibilityTimeout": "00:00:00"},
            },
        }
    )


@pytest.fixture
async def backend(azurite: Azurite) -> AsyncIterator[StepAwareBackend]:
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    store = StepAwareBackend(connection, poison_options(), fault=StepFaults())
    await store.create_task_hub()
    yield store
    await store.delete_task_hub()
    await store.close()


@pytest.fixture
async def worker(backend: StepAwareBackend) -> AsyncIterator[AzureWorker]:
    global GATE
    GATE = asyncio.Event()  # one per test: an Event binds to the loop that first waits on it
    # a long repair interval: every redelivery seen here comes from the queues themselves
    async with AzureWorker(app.registry, backend, backend.options, repair_interval=timedelta(minutes=5)) as w:
        yield w
    GATE.set()


@pytest.fixture
def client(backend: StepAwareBackend) -> DurableOrchestrationClient:
    return DurableOrchestrationClient(backend)


@pytest.fixture
async def raw_queue(
    azurite: Azurite, backend: StepAwareBackend
) -> AsyncIterator[Callable[[str], QueueClient]]:
    """Queue clients without the base64 policy, to put bytes the worker cannot even decode."""
    opened: list[QueueClient] = []

    def open_queue(name: str) -> QueueClient:
        queue = QueueClient.from_connection_string(azurite.connection_string, name)
        opened.append(queue)
        return queue

    yield open_queue
    for queue in opened:
        await queue.close()


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Poll an async condition until it holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.1)


async def messages_in(backend: AzureBackend, queue_name: str) -> int:
    """Messages in a queue, visible or not (0 when the queue does not exist)."""
    queue = backend.connection.queue_service().get_queue_client(queue_name)
    try:
        props = await queue.get_queue_properties()
    except Exception as exc:
        if "QueueNotFound" in str(exc):
            return 0
        raise
    return props.approximate_message_count


async def peek(backend: AzureBackend, queue_name: str) -> list[str]:
    """Contents of the visible messages of a queue, decoded as the worker's clients decode them."""
    queue = backend.connection.queue_service().get_queue_client(queue_name)
    return [m.content for m in await queue.peek_messages(max_messages=32)]


def all_queues(backend: AzureBackend) -> list[str]:
    """Every queue the worker consumes."""
    return [q.queue_name for q in [*backend.control_queues, backend.workitems]]


async def assert_queues_drained(backend: AzureBackend) -> None:
    """Every message was deleted and none went to a poison queue."""

    async def drained() -> bool:
        counts = [await messages_in(backend, name) for name in all_queues(backend)]
        return not any(counts)

    await until(drained)
    for name in all_queues(backend):
        assert await messages_in(backend, f"{name}-poison") == 0, name


# --------------------------------------------------------------------------- poison


async def test_control_message_failing_every_time_is_poisoned(
    worker: AzureWorker,
    client: DurableOrchestrationClient,
    backend: StepAwareBackend,
    raw_queue: Callable[[str], QueueClient],
) -> None:
    """The start of an instance whose every commit fails: poison queue, then Failed with the reason."""
    faults: StepFaults = backend.fault  # type: ignore[assignment]
    faults.predicate = lambda step: step.record.instance_id == "doomed" and not is_poison_failure(step)
    doomed = await client.start_new("two_steps", "doomed", "x")
    healthy = await client.start_new("two_steps", "healthy", "y")

    status = await client.wait_for_completion(doomed, timeout=30)
    assert status.runtime_status == Status.Failed
    # the in-process attempt of the process that started it, then each delivery of the queued copy
    assert faults.raised == {"doomed": 1 + MAX_DEQUEUE}
    assert "poison" in status.output and f"failed {MAX_DEQUEUE} times" in status.output
    assert status.failure is not None and status.failure["ErrorType"] == "PoisonMessageError"
    assert (await client.wait_for_completion(healthy, timeout=20)).output == "Y!!"

    poison = backend.control_queue_for(doomed).queue_name + "-poison"
    contents = await peek(backend, poison)
    assert len(contents) == 1 and orjson.loads(contents[0]) == {"i": "doomed"}
    # on the wire the copy is base64, like the original: what a Functions queue trigger reads
    (raw,) = [m.content for m in await raw_queue(poison).peek_messages()]
    assert orjson.loads(base64.b64decode(raw)) == {"i": "doomed"}
    history = await backend.get_history(doomed)
    assert [e["OrchestrationStatus"] for e in history if e["EventType"] == EventType.ExecutionCompleted] == [
        "Failed"
    ]
    runner = worker.runners[backend.control_queue_for(doomed).queue_name]
    assert runner.poisoned == 1 and runner.failed == MAX_DEQUEUE


async def test_inline_result_failing_every_time_is_poisoned(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: StepAwareBackend
) -> None:
    """A step that applies an activity result keeps failing: the inline control message is poisoned."""
    faults: StepFaults = backend.fault  # type: ignore[assignment]

    def completes_a_task(step: StepResult) -> bool:
        kinds = {e["EventType"] for e in step.new_events}
        return step.record.instance_id == "stuck" and EventType.TaskCompleted in kinds

    faults.predicate = completes_a_task
    stuck = await client.start_new("two_steps", "stuck", "x")
    status = await client.wait_for_completion(stuck, timeout=30)
    assert status.runtime_status == Status.Failed
    assert status.failure is not None and status.failure["ErrorType"] == "PoisonMessageError"
    # one failure in-process, then the result travels by queue and fails MAX_DEQUEUE times
    assert faults.raised == {"stuck": 1 + MAX_DEQUEUE}
    poison = backend.control_queue_for(stuck).queue_name + "-poison"
    (content,) = await peek(backend, poison)
    body = orjson.loads(content)
    assert body["m"]["i"] == "stuck" and body["m"]["e"]["EventType"] == EventType.TaskCompleted
    kinds = [e["EventType"] for e in await backend.get_history(stuck)]
    assert EventType.TaskCompleted not in kinds  # the failing step never committed


async def test_work_item_that_cannot_run_fails_the_activity(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: StepAwareBackend
) -> None:
    """A work item whose input blob is gone is poisoned; the orchestration sees the activity fail."""
    iid = await client.start_new("waits_for_gate", "gated")

    async def scheduled() -> bool:
        history = await backend.get_history(iid)
        return any(e["EventType"] == EventType.TaskScheduled for e in history)

    await until(scheduled)
    record = await backend.get_instance(iid)
    assert record is not None
    item = {"id": "w1", "i": iid, "x": record.execution_id, "t": 0, "n": "gate", "in": None}
    item["inb"] = f"{iid}/no-such-blob"
    await backend.workitems.send_message(orjson.dumps(item).decode())
    status = await client.wait_for_completion(iid, timeout=30)
    GATE.set()  # the real activity finishes now: its late result is a duplicate and dropped
    assert status.runtime_status == Status.Completed
    assert "could not be run after 2 attempts" in status.output["failed"]
    (content,) = await peek(backend, backend.workitems.queue_name + "-poison")
    assert orjson.loads(content)["inb"] == f"{iid}/no-such-blob"
    await asyncio.sleep(0.5)
    assert (await client.get_status(iid)).output == status.output


# --------------------------------------------------------------------------- malformed


MALFORMED_CONTROL = [
    "",
    "not json",
    "{",
    "null",
    "42",
    '"text"',
    "[1, 2]",
    "{}",
    '{"x": 1}',
    '{"i": null}',
    '{"i": {"nested": true}}',
    '{"m": "text"}',
    '{"m": null}',
    '{"m": {}}',
    '{"m": {"i": "waiter"}}',
    '{"m": {"i": "waiter", "e": "text", "id": "1"}}',
    '{"m": {"i": "waiter", "e": {"no": "type"}, "id": "2"}}',
    '{"m": {"i": "waiter", "e": {"EventType": 5}, "id": "3"}}',
    '{"m": {"i": "waiter", "e": {"EventType": "five"}, "id": "4"}}',
    '{"m": {"i": "waiter", "e": {"EventType": 999}, "id": "5"}}',
    '{"m": {"i": "waiter", "e": {"EventType": 6, "TimerId": "x"}, "id": "6", "at": "not a time"}}',
    '{"m": {"i": "waiter", "e": {"EventType": 5, "TaskScheduledId": 77, "Result": "1"}, "id": "7"}}',
    '{"m": {"i": "nobody", "e": {"EventType": 5, "TaskScheduledId": 0, "Result": "1"}, "id": "8"}}',
    '{"i": "nobody"}',
    '{"i": "waiter"}',
]


async def test_malformed_control_messages_are_dropped(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: StepAwareBackend
) -> None:
    """Junk on every control queue is dropped; a waiting instance and new ones carry on."""
    waiter = await client.start_new("waits_for_event", "waiter")
    await until(lambda: _is(client, waiter, Status.Running))
    for queue in backend.control_queues:
        for body in MALFORMED_CONTROL:
            await queue.send_message(body)
    after = await client.start_new("two_steps", "after-junk", "z")
    assert (await client.wait_for_completion(after, timeout=20)).output == "Z!!"
    await assert_queues_drained(backend)
    assert (await client.get_status(waiter)).runtime_status == Status.Running
    await client.raise_event(waiter, "Go", "went")
    assert (await client.wait_for_completion(waiter, timeout=20)).output == "went"
    for name in all_queues(backend):
        stats = worker.runners[name].stats()
        assert stats["failed"] == 0 and stats["poisoned"] == 0, (name, stats)


MALFORMED_WORK_ITEMS = [
    "",
    "not json",
    "null",
    "[]",
    "{}",
    '{"i": "x"}',
    '{"id": "1", "i": "x", "t": "not a number", "n": "shout"}',
    '{"id": "2", "i": "x", "t": {"a": 1}, "n": "shout"}',
    '{"id": "3", "i": "nobody", "x": "e", "t": 0, "n": "no_such_activity", "in": null}',
    '{"id": "4", "i": "nobody", "x": "e", "t": 0, "n": "shout", "in": "not json text"}',
]


async def test_malformed_work_items_are_dropped(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: StepAwareBackend
) -> None:
    """Junk on the work-item queue is dropped and activities keep running."""
    for body in MALFORMED_WORK_ITEMS:
        await backend.workitems.send_message(body)
    after = await client.start_new("two_steps", "after-junk", "w")
    assert (await client.wait_for_completion(after, timeout=20)).output == "W!!"
    await assert_queues_drained(backend)
    stats = worker.runners[backend.workitems.queue_name].stats()
    assert stats["failed"] == 0 and stats["poisoned"] == 0, stats


async def test_undecodable_messages_do_not_block_the_queues(
    worker: AzureWorker,
    client: DurableOrchestrationClient,
    backend: StepAwareBackend,
    raw_queue: Callable[[str], QueueClient],
) -> None:
    """Bodies that are not base64 (or not UTF-8 inside) are dropped; the messages next to them run."""
    undecodable = ["{not base64: ~}", "////", "gICA"]  # the last decodes to bytes that are not UTF-8
    for name in all_queues(backend):
        for body in undecodable:
            await raw_queue(name).send_message(body)
    ids = [await client.start_new("two_steps", f"next-{n}", "v") for n in range(6)]
    for iid in ids:
        assert (await client.wait_for_completion(iid, timeout=20)).output == "V!!"
    await assert_queues_drained(backend)
    for name in all_queues(backend):
        stats = worker.runners[name].stats()
        assert stats["errors"] == 0 and stats["failed"] == 0, (name, stats)  # no receive failed


async def _is(client: DurableOrchestrationClient, instance_id: str, status: Status) -> bool:
    current = await client.get_status(instance_id)
    return current is not None and current.runtime_status == status
