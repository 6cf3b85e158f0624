"""Management queries on the Instances table of a real Azurite: filters, paging and purges."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.base import InstanceQuery
from durable_ext.client import DurableOrchestrationClient
from durable_ext.host.worker import AzureWorker

app = df.DurableApp()


@app.orchestration_trigger(context_name="context")
def quick(context: df.DurableOrchestrationContext):
    """Complete with the activity's echo of the input."""
    return (yield context.call_activity("echo_input", context.get_input()))


@app.orchestration_trigger(context_name="context")
def boom(context: df.DurableOrchestrationContext):
    """Fail after one activity."""
    yield context.call_activity("echo_input", "before the failure")
    raise RuntimeError("boom")


@app.orchestration_trigger(context_name="context")
def wait_go(context: df.DurableOrchestrationContext):
    """Stay Running until the ``Go`` event."""
    return (yield context.wait_for_external_event("Go"))


@app.activity_trigger(input_name="value")
def echo_input(value: object) -> object:
    """Return the input."""
    return value


@dataclass
class Population:
    """Instances started in two batches, with the times that separate them."""

    early: list[str]
    late_ok: list[str]
    late_failed: list[str]
    late_running: list[str]
    late_terminated: list[str]
    before: datetime
    middle: datetime
    after: datetime

    @property
    def late(self) -> list[str]:
        return self.late_ok + self.late_failed + self.late_running + self.late_terminated

    @property
    def all(self) -> list[str]:
        return self.early + self.late


@pytest.fixture
async def client(backend: AzureBackend) -> AsyncIterator[DurableOrchestrationClient]:
    async with AzureWorker(app.registry, backend, backend.options, repair_interval=timedelta(seconds=5)):
        yield DurableOrchestrationClient(backend)


async def wait_status(client: DurableOrchestrationClient, instance_id: str, status: Status) -> None:
    """Poll until the instance has ``status``."""
    for _ in range(400):
        current = await client.get_status(instance_id)
        if current is not None and current.runtime_status == status:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{instance_id} never became {status.value}")


async def pause() -> datetime:
    """A moment strictly between instances created before and after it."""
    await asyncio.sleep(0.05)
    moment = datetime.now(timezone.utc)
    await asyncio.sleep(0.05)
    return moment


@pytest.fixture
async def population(client: DurableOrchestrationClient) -> Population:
    """4 early Completed; later 3 Completed, 2 Failed, 3 Running and 1 Terminated."""
    before = await pause()
    early = [await client.start_new("quick", f"early-{n}", n) for n in range(4)]
    for iid in early:
        await wait_status(client, iid, Status.Completed)
    middle = await pause()
    late_ok = [await client.start_new("quick", f"late-ok-{n}", n) for n in range(3)]
    late_failed = [await client.start_new("boom", f"late-fail-{n}") for n in range(2)]
    late_running = [await client.start_new("wait_go", f"late-wait-{n}") for n in range(3)]
    late_terminated = [await client.start_new("wait_go", "late-term-0")]
    after = await pause()
    for iid in late_running + late_terminated:
        await wait_status(client, iid, Status.Running)
    await client.terminate(late_terminated[0], "enough")
    for iid, status in [
        *((i, Status.Completed) for i in late_ok),
        *((i, Status.Failed) for i in late_failed),
        *((i, Status.Terminated) for i in late_terminated),
    ]:
        await wait_status(client, iid, status)
    return Population(early, late_ok, late_failed, late_running, late_terminated, before, middle, after)


def ids(statuses: list[df.DurableOrchestrationStatus]) -> list[str]:
    """Sorted instance ids of a query result."""
    return sorted(s.instance_id for s in statuses)


async def test_by_id(client: DurableOrchestrationClient, population: Population) -> None:
    status = await client.get_status("late-ok-1", show_input=True)
    assert status is not None
    assert (status.name, status.runtime_status, status.input_, status.output) == (
        "quick",
        Status.Completed,
        1,
        1,
    )
    failed = await client.get_status("late-fail-0")
    assert failed is not None and failed.runtime_status == Status.Failed and "boom" in failed.output
    terminated = await client.get_status("late-term-0")
    assert terminated is not None and terminated.output == "enough"
    assert await client.get_status("no-such-instance") is None
    assert await client.get_status("late-ok") is None  # a prefix is not an id


async def test_by_created_time(client: DurableOrchestrationClient, population: Population) -> None:
    p = population
    assert ids(await client.get_status_by(created_time_from=p.middle)) == sorted(p.late)
    assert ids(await client.get_status_by(created_time_to=p.middle)) == sorted(p.early)
    assert ids(await client.get_status_by(created_time_from=p.before, created_time_to=p.after)) == sorted(
        p.all
    )
    assert await client.get_status_by(created_time_from=p.after) == []
    assert await client.get_status_by(created_time_to=p.before) == []
    naive = p.middle.astimezone(timezone.utc).replace(tzinfo=None)  # naive datetimes mean UTC
    assert ids(await client.get_status_by(created_time_from=naive)) == sorted(p.late)
    created = {s.instance_id: s.created_time for s in await client.get_status_all()}
    assert all(p.before < created[i] < p.middle for i in p.early)
    assert all(p.middle < created[i] < p.after for i in p.late)


async def test_by_runtime_status(client: DurableOrchestrationClient, population: Population) -> None:
    p = population
    completed = await client.get_status_by(runtime_status=[Status.Completed])
    assert ids(completed) == sorted(p.early + p.late_ok)
    assert ids(await client.get_status_by(runtime_status=[Status.Running])) == sorted(p.late_running)
    ended_badly = await client.get_status_by(runtime_status=[Status.Failed, Status.Terminated])
    assert ids(ended_badly) == sorted(p.late_failed + p.late_terminated)
    three = [Status.Completed, Status.Failed, Status.Running]
    assert ids(await client.get_status_by(runtime_status=three)) == sorted(
        p.early + p.late_ok + p.late_failed + p.late_running
    )
    assert await client.get_status_by(runtime_status=[Status.Pending, Status.Suspended]) == []
    combined = await client.get_status_by(created_time_to=p.middle, runtime_status=[Status.Completed])
    assert ids(combined) == sorted(p.early)
    assert len(await client.get_status_all()) == len(p.all)


async def test_by_id_prefix(
    client: DurableOrchestrationClient, backend: AzureBackend, population: Population
) -> None:
    p = population
    assert ids(await client.get_status_by(instance_id_prefix="late-wait-")) == sorted(p.late_running)
    assert ids(await client.get_status_by(instance_id_prefix="early")) == sorted(p.early)
    assert ids(await client.get_status_by(instance_id_prefix="late-")) == sorted(p.late)
    assert await client.get_status_by(instance_id_prefix="zzz") == []
    assert ids(await client.get_status_by(instance_id_prefix="late-ok-2")) == ["late-ok-2"]
    mixed = await client.get_status_by(instance_id_prefix="late-", runtime_status=[Status.Failed])
    assert ids(mixed) == sorted(p.late_failed)


async def all_pages(backend: AzureBackend, query: InstanceQuery) -> list[list[str]]:
    """Follow continuation tokens to the end; the ids of each page."""
    pages: list[list[str]] = []
    while True:
        page = await backend.query_instances(query)
        pages.append([r.instance_id for r in page.records])
        assert len(pages) < 100, "paging does not end"
        if page.continuation is None:
            return pages
        query.continuation = page.continuation


async def test_continuation_paging(backend: AzureBackend, population: Population) -> None:
    """Every instance appears on exactly one page; only the last page may be short."""
    p = population
    for page_size in (1, 2, 3, 5, len(p.all) - 1, len(p.all), len(p.all) + 1, 100):
        pages = await all_pages(backend, InstanceQuery(page_size=page_size))
        seen = [iid for page in pages for iid in page]
        assert sorted(seen) == sorted(p.all) and len(seen) == len(set(seen)), page_size
        assert all(len(page) == page_size for page in pages[:-1]), page_size
        assert 0 < len(pages[-1]) <= page_size, page_size
        assert len(pages) == -(-len(p.all) // page_size), page_size  # no empty page after an exact fit


async def test_paging_with_filters(backend: AzureBackend, population: Population) -> None:
    """Paging combined with status, time and prefix filters sees every match exactly once."""
    p = population
    for page_size in (1, 2, 4):
        cases = [
            (InstanceQuery(statuses=frozenset({Status.Completed}), page_size=page_size), p.early + p.late_ok),
            (InstanceQuery(created_from=p.middle, page_size=page_size), p.late),
            (InstanceQuery(instance_id_prefix="late-", page_size=page_size), p.late),
            (
                InstanceQuery(
                    created_from=p.middle,
                    statuses=frozenset({Status.Running, Status.Failed}),
                    instance_id_prefix="late-",
                    page_size=page_size,
                ),
                p.late_running + p.late_failed,
            ),
        ]
        for query, expected in cases:
            pages = await all_pages(backend, query)
            seen = [iid for page in pages for iid in page]
            assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen)), query
            assert all(len(page) == page_size for page in pages[:-1]), query


async def test_purge_one(
    client: DurableOrchestrationClient, backend: AzureBackend, population: Population
) -> None:
    p = population
    assert (await client.purge_instance_history("early-2")).instances_deleted == 1
    assert await client.get_status("early-2") is None
    assert await backend.get_history("early-2") == []
    remaining = ids(await client.get_status_all())
    assert remaining == sorted(set(p.all) - {"early-2"})
    assert (await client.purge_instance_history("early-2")).instances_deleted == 0
    assert (await client.purge_instance_history("never-existed")).instances_deleted == 0
    # the id can be used again after a purge
    await client.start_new("quick", "early-2", "again")
    await wait_status(client, "early-2", Status.Completed)
    assert (await client.get_status("early-2")).output == "again"


async def test_purge_by_filter(
    client: DurableOrchestrationClient, backend: AzureBackend, population: Population
) -> None:
    p = population
    result = await client.purge_instance_history_by(runtime_status=[Status.Failed, Status.Terminated])
    assert result.instances_deleted == len(p.late_failed) + len(p.late_terminated)
    assert ids(await client.get_status_all()) == sorted(p.early + p.late_ok + p.late_running)
    for iid in p.late_failed + p.late_terminated:
        assert await backend.get_history(iid) == []

    result = await client.purge_instance_history_by(
        created_time_from=p.middle, created_time_to=p.after, runtime_status=[Status.Completed]
    )
    assert result.instances_deleted == len(p.late_ok)
    assert ids(await client.get_status_all()) == sorted(p.early + p.late_running)

    result = await client.purge_instance_history_by(created_time_to=p.before)
    assert result.instances_deleted == 0
    result = await client.purge_instance_history_by(created_time_to=p.middle)
    assert result.instances_deleted == len(p.early)
    assert ids(await client.get_status_all()) == sorted(p.late_running)
    for iid in p.early + p.late_ok:
        assert await backend.get_history(iid) == []
    # the running ones were not touched and still finish
    await client.raise_event(p.late_running[0], "Go", "went")
    await wait_status(client, p.late_running[0], Status.Completed)
