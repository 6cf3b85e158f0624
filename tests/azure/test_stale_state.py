"""A cached state is a hint, never the truth (docs/storage.md, "What a process may trust").

Two engines on one hub stand for two worker processes whose steps of one
instance alternate, as they do on a Functions host with several worker
processes. Each test drives the steps by hand, so the interleaving is exact.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator

import pytest

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.config import DurableTaskOptions
from durable_ext.core.runtime import ActivityRequest
from durable_ext.engine import Engine
from durable_ext.host.azurite import Azurite

app = df.DurableApp()
_hubs = itertools.count(1)


@app.orchestration_trigger(context_name="context")
def two_steps(context: df.DurableOrchestrationContext):
    """Two activities in a row."""
    first = yield context.call_activity("plus_ten", context.get_input())
    return (yield context.call_activity("plus_ten", first))


@app.activity_trigger(input_name="value")
def plus_ten(value: int) -> int:
    """Add ten."""
    return value + 10


@pytest.fixture
async def two(azurite: Azurite) -> AsyncIterator[tuple[AzureBackend, AzureBackend]]:
    """Two backends ("processes") on one fresh hub, with no queue runners and no sweep."""
    name = f"Stale{os.getpid()}x{next(_hubs)}"
    durable = {"hubName": name, "storageProvider": {"partitionCount": 2}}
    options = DurableTaskOptions.from_host_json({"version": "2.0", "extensions": {"durableTask": durable}})
    backends = []
    for _ in range(2):
        connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
        backends.append(AzureBackend(connection, options))
    await backends[0].create_task_hub()
    yield backends[0], backends[1]
    await backends[0].delete_task_hub()
    for backend in backends:
        await backend.close()


def scheduled(history: list[dict], task_id: int) -> ActivityRequest:
    """The work item of task ``task_id`` as its TaskScheduled event describes it."""
    event = next(
        e for e in history if e["EventType"] == df.EventType.TaskScheduled and e["EventId"] == task_id
    )
    started = next(e for e in history if e["EventType"] == df.EventType.ExecutionStarted)
    execution = started["OrchestrationInstance"]["ExecutionId"]
    return ActivityRequest(
        started["OrchestrationInstance"]["InstanceId"], execution, task_id, event["Name"], event["Input"]
    )


async def test_result_handed_over_hot_after_another_process_stepped(
    two: tuple[AzureBackend, AzureBackend],
) -> None:
    """Process A steps first; B applies the first result; A then gets the second result in-process.

    A's cached state does not know task 1, so judged against it the result looks stray. It must be
    applied all the same: A may not drop it without reading what B committed.
    """
    a, b = two
    engine_a, engine_b = Engine(app.registry, a), Engine(app.registry, b)
    client = DurableOrchestrationClient(a)
    iid = await client.start_new("two_steps", "stale-1", 1)
    await engine_a.process_instance(iid)  # A: ExecutionStarted, TaskScheduled 0 (cached in A)
    first = scheduled(await a.get_history(iid), 0)
    await engine_b.process_instance(iid, [await engine_b.run_activity(first)])  # B: result 0, schedules 1
    second = scheduled(await b.get_history(iid), 1)
    result = await engine_a.run_activity(second)

    await engine_a.process_instance(iid, [result], hot=True)  # A: only an in-process result arrived

    status = await client.get_status(iid)
    assert status is not None and status.runtime_status == Status.Completed, status and status.runtime_status
    assert status.output == 21
    assert engine_a.stats["stale_hints"] == 1  # judged stale once, then read and applied
    kinds = [e["EventType"] for e in await a.get_history(iid)]
    assert kinds.count(df.EventType.TaskCompleted) == 2


async def test_true_duplicate_handed_over_hot_is_dropped_after_a_read(
    two: tuple[AzureBackend, AzureBackend],
) -> None:
    """A result applied already (by B) reaches A in-process: A reads, sees it applied, writes nothing."""
    a, b = two
    engine_a, engine_b = Engine(app.registry, a), Engine(app.registry, b)
    client = DurableOrchestrationClient(a)
    iid = await client.start_new("two_steps", "stale-2", 5)
    await engine_a.process_instance(iid)
    first = scheduled(await a.get_history(iid), 0)
    result = await engine_b.run_activity(first)
    await engine_b.process_instance(iid, [result])  # B applies result 0
    before = await a.get_history(iid)

    await engine_a.process_instance(iid, [result], hot=True)  # the same result again, in A

    after = await a.get_history(iid)
    assert after == before  # nothing written: a duplicate, proven so by the read
    # A's cached state took the result for news; the commit's ETag said otherwise, and the read
    # that followed showed a duplicate
    assert engine_a.stats["conflicts"] == 1
    status = await client.get_status(iid)
    assert status is not None and status.runtime_status == Status.Running
