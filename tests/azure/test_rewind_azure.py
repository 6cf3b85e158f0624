"""Rewind on the Azure Storage backend: the rewritten history commits as a new execution."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

import durable_ext as df
from durable_ext import EventType
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure import rows as r
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.client import DurableOrchestrationClient
from durable_ext.host.worker import AzureWorker

app = df.DurableApp()
CALLS: dict[str, list[str]] = defaultdict(list)
BROKEN: set[str] = set()


@app.activity_trigger(input_name="key")
def record_call(key: str) -> str:
    CALLS[key].append("ok")
    return f"ok:{key}"


@app.activity_trigger(input_name="key")
def breakable(key: str) -> str:
    CALLS[key].append("breakable")
    if key in BROKEN:
        raise RuntimeError(f"{key} is broken")
    return f"fixed:{key}"


@app.orchestration_trigger(context_name="context")
def two_steps(context: df.DurableOrchestrationContext):
    key = context.get_input()
    first = yield context.call_activity("record_call", key)
    second = yield context.call_activity("breakable", key)
    return [first, second]


@app.orchestration_trigger(context_name="context")
def with_child(context: df.DurableOrchestrationContext):
    key = context.instance_id
    first = yield context.call_activity("record_call", key)
    child = yield context.call_sub_orchestrator("two_steps", f"{key}-child", f"{key}-child")
    return [first, child]


@pytest.fixture
async def worker(backend: AzureBackend) -> AsyncIterator[AzureWorker]:
    async with AzureWorker(app.registry, backend, backend.options, repair_interval=timedelta(seconds=1)) as w:
        yield w


@pytest.fixture
def client(backend: AzureBackend) -> DurableOrchestrationClient:
    return DurableOrchestrationClient(backend)


async def history_keys(backend: AzureBackend, instance_id: str) -> list[str]:
    rows = backend.history.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id})
    return [e["RowKey"] async for e in rows if e["RowKey"].startswith("h-")]


async def rewind_and_wait(
    backend: AzureBackend, client: DurableOrchestrationClient, instance_id: str
) -> df.DurableOrchestrationStatus:
    """Rewind a Failed instance and wait until its new execution finished."""
    failed = await backend.get_instance(instance_id)
    assert failed is not None and failed.status == Status.Failed
    await client.rewind(instance_id, "fixed on azure")
    for _ in range(400):
        record = await backend.get_instance(instance_id)
        if record is not None and record.execution_id != failed.execution_id and record.status.is_terminal:
            break
        await asyncio.sleep(0.05)
    status = await client.get_status(instance_id, show_history=True, show_history_output=True)
    assert status is not None
    return status


async def test_rewind_commits_a_new_execution(
    backend: AzureBackend, worker: AzureWorker, client: DurableOrchestrationClient
) -> None:
    BROKEN.add("az1")
    await client.start_new("two_steps", "az1", "az1")
    assert (await client.wait_for_completion("az1", timeout=20)).runtime_status == Status.Failed
    old = await backend.get_instance("az1")
    assert old is not None
    BROKEN.discard("az1")

    status = await rewind_and_wait(backend, client, "az1")
    assert status.runtime_status == Status.Completed
    assert status.output == ["ok:az1", "fixed:az1"]
    assert CALLS["az1"] == ["ok", "breakable", "breakable"]
    kinds = [e["EventType"] for e in status.history or []]
    assert EventType.TaskFailed not in kinds and EventType.GenericEvent in kinds
    record = await backend.get_instance("az1")
    assert record is not None and record.execution_id != old.execution_id
    keys = await history_keys(backend, "az1")
    assert r.history_key(record.execution_id, 0) in keys  # the rewritten history, from row 0


async def test_rewind_of_a_failed_sub_orchestration(
    backend: AzureBackend, worker: AzureWorker, client: DurableOrchestrationClient
) -> None:
    BROKEN.add("az2-child")
    await client.start_new("with_child", "az2")
    assert (await client.wait_for_completion("az2", timeout=20)).runtime_status == Status.Failed
    BROKEN.discard("az2-child")

    status = await rewind_and_wait(backend, client, "az2")
    assert status.runtime_status == Status.Completed
    assert status.output == ["ok:az2", ["ok:az2-child", "fixed:az2-child"]]
    assert CALLS["az2"] == ["ok"]
    assert CALLS["az2-child"] == ["ok", "breakable", "breakable"]
    child = await client.get_status("az2-child")
    assert child is not None and child.runtime_status == Status.Completed
