"""The Azure Storage backend end to end on a real Azurite: the sample app through one worker."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from function_app import app

from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.client import DurableOrchestrationClient
from durable_ext.host.worker import AzureWorker


@pytest.fixture
async def worker(backend: AzureBackend):
    async with AzureWorker(app.registry, backend, backend.options, repair_interval=timedelta(seconds=1)) as w:
        yield w


@pytest.fixture
def client(backend: AzureBackend) -> DurableOrchestrationClient:
    return DurableOrchestrationClient(backend)


async def test_hello_sequence(worker: AzureWorker, client: DurableOrchestrationClient) -> None:
    iid = await client.start_new("hello_sequence")
    status = await client.wait_for_completion(iid, timeout=20)
    assert status.runtime_status == Status.Completed
    assert status.output == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    history = (await client.get_status(iid, show_history=True)).history
    kinds = [e["EventType"] for e in history]
    assert kinds.count(4) == 3 and kinds.count(5) == 3  # TaskScheduled / TaskCompleted, once each


async def test_fan_out_and_sub_orchestrations(
    worker: AzureWorker, client: DurableOrchestrationClient
) -> None:
    fan = await client.start_new("fan_out_fan_in", client_input=30)
    parent = await client.start_new("parent_child")
    assert (await client.wait_for_completion(fan, timeout=30)).output == sum(n * n for n in range(1, 31))
    assert (await client.wait_for_completion(parent, timeout=30)).output == [
        "Hello Tokyo!",
        "Hello Seattle!",
        "Hello London!",
    ] * 2


async def test_event_and_timer(worker: AzureWorker, client: DurableOrchestrationClient) -> None:
    approved = await client.start_new("approval_workflow", client_input={"timeout_s": 60})
    timed_out = await client.start_new("approval_workflow", client_input={"timeout_s": 1})
    await client.raise_event(approved, "Approval", "bob")
    assert (await client.wait_for_completion(approved, timeout=20)).output == "approved:bob"
    assert (await client.wait_for_completion(timed_out, timeout=20)).output == "timeout"


async def test_retry_and_continue_as_new(worker: AzureWorker, client: DurableOrchestrationClient) -> None:
    retried = await client.start_new("retry_demo")
    monitor = await client.start_new("monitor", client_input={"interval_s": 1})
    assert (await client.wait_for_completion(retried, timeout=30)).output == "succeeded after 3 attempts"
    assert (await client.wait_for_completion(monitor, timeout=30)).output == {"checks": 3, "status": "done"}


async def test_message_written_twice_is_applied_once(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend
) -> None:
    """A sender that re-dispatches after a crash writes a second inbox row of one message."""
    from durable_ext.core import history as h
    from durable_ext.core.runtime import Message

    iid = await client.start_new("approval_workflow", client_input={"timeout_s": 60})
    event = h.event_raised(h.format_timestamp(backend.clock.now()), "Approval", '"twice"')
    message = Message(iid, event)
    await backend._write_inbox(message)
    await backend._write_inbox(message)  # same message id, another row
    await backend._enqueue(backend.control_queue_for(iid), {"i": iid})
    status = await client.wait_for_completion(iid, timeout=20)
    assert status.output == "approved:twice"
    history = (await client.get_status(iid, show_history=True)).history
    assert sum(1 for e in history if e["EventType"] == 15) == 1  # one EventRaised


async def test_messages_to_an_unknown_instance_are_dropped(
    worker: AzureWorker, backend: AzureBackend
) -> None:
    """An inbox row for an instance that does not exist (e.g. purged) does not linger."""
    import asyncio

    from durable_ext.core import history as h
    from durable_ext.core.runtime import Message

    iid = "never-started"
    event = h.event_raised(h.format_timestamp(backend.clock.now()), "Ping", None)
    await backend._write_inbox(Message(iid, event))
    await backend._enqueue(backend.control_queue_for(iid), {"i": iid})
    for _ in range(100):
        rows = [
            e async for e in backend.history.query_entities("PartitionKey eq @pk", parameters={"pk": iid})
        ]
        if not rows:
            break
        await asyncio.sleep(0.1)
    assert rows == []
    assert await backend.get_instance(iid) is None


async def test_a_repair_never_projects_an_older_state_over_a_newer_one(backend: AzureBackend) -> None:
    """A takeover projects from a sentinel it read earlier; a live process may have projected a
    later state since (seen once in the crash tests: a completed instance shown Running)."""
    def props(status: str, minute: int) -> dict[str, object]:
        stamp = datetime(2026, 12, 1, 12, minute, tzinfo=timezone.utc)
        return {"Name": "x", "RuntimeStatus": status, "CreatedTime": stamp, "LastUpdatedTime": stamp}

    await backend._reproject("proj-1", props("Running", 1))  # no row yet: written
    assert (await backend.instances.get_entity("proj-1", ""))["RuntimeStatus"] == "Running"
    await backend._project("proj-1", props("Completed", 3))  # a live step projects a later state
    await backend._reproject("proj-1", props("Running", 2))  # the repair's older read: kept out
    assert (await backend.instances.get_entity("proj-1", ""))["RuntimeStatus"] == "Completed"
    await backend._reproject("proj-1", props("Failed", 4))  # a newer state: written
    assert (await backend.instances.get_entity("proj-1", ""))["RuntimeStatus"] == "Failed"
