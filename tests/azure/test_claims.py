"""Stepping claims (``backends/azure/claims.py``): after a conflict, one process steps the instance.

Two backends with their own handlers and leases stand for two worker
processes on one hub (no queue runners: each test drives the deliveries by
hand, so the interleaving is exact). The claim's own timings are the defaults.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure import rows as r
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.claims import QUIET_S, STEPPER, STEPPER_UNTIL
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.config import DurableTaskOptions
from durable_ext.core.runtime import ActivityRequest, Message
from durable_ext.handlers import DurableHandlers
from durable_ext.host.azurite import Azurite

app = df.DurableApp()
_hubs = itertools.count(1)
FAN = 6


@app.orchestration_trigger(context_name="context")
def fan(context: df.DurableOrchestrationContext):
    """plus_ten of 0..n-1 at once; their sum."""
    results = yield context.task_all(
        [context.call_activity("plus_ten", i) for i in range(context.get_input())]
    )
    return sum(results)


@app.activity_trigger(input_name="value")
def plus_ten(value: int) -> int:
    """Add ten."""
    return value + 10


class Process:
    """One 'worker process': a backend with its lease, and the handlers (drains, claim polls)."""

    def __init__(self, backend: AzureBackend, options: DurableTaskOptions) -> None:
        self.backend = backend
        self.handlers = DurableHandlers(app.registry, backend, options)

    @property
    def stats(self) -> dict[str, Any]:
        return self.handlers.engine.stats


async def _processes(
    azurite: Azurite, lease: timedelta | None = None
) -> AsyncIterator[tuple[Process, Process, DurableOrchestrationClient]]:
    name = f"Claim{os.getpid()}x{next(_hubs)}"
    durable = {"hubName": name, "storageProvider": {"partitionCount": 2}}
    options = DurableTaskOptions.from_host_json({"version": "2.0", "extensions": {"durableTask": durable}})
    made = []
    for _ in range(2):
        connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
        backend = (
            AzureBackend(connection, options)
            if lease is None
            else AzureBackend(connection, options, lease=lease)
        )
        made.append(Process(backend, options))
    await made[0].backend.create_task_hub()
    try:
        yield made[0], made[1], DurableOrchestrationClient(made[0].backend)
    finally:
        for process in made:
            await process.handlers.close()
        await made[0].backend.delete_task_hub()
        for process in made:
            await process.backend.close()


@pytest.fixture
async def two(azurite: Azurite) -> AsyncIterator[tuple[Process, Process, DurableOrchestrationClient]]:
    """Two processes on a fresh hub, with the default lease."""
    async for made in _processes(azurite):
        yield made


async def scheduled(backend: AzureBackend, iid: str) -> list[ActivityRequest]:
    """The instance's scheduled activities, as work items."""
    history = await backend.get_history(iid)
    started = next(e for e in history if e["EventType"] == df.EventType.ExecutionStarted)
    execution = started["OrchestrationInstance"]["ExecutionId"]
    return [
        ActivityRequest(iid, execution, e["EventId"], e["Name"], e["Input"])
        for e in history
        if e["EventType"] == df.EventType.TaskScheduled
    ]


async def results(process: Process, requests: list[ActivityRequest]) -> list[Message]:
    return [await process.handlers.engine.run_activity(request) for request in requests]


async def take_claim(a: Process, b: Process, iid: str, requests: list[ActivityRequest]) -> None:
    """B applies result 0; A applies result 1 while B commits result 2 under it: A's commit
    conflicts, and its retry claims the instance."""
    first, second, third = await results(a, requests[:3])
    await b.handlers.deliver(requests[0], first)
    real_load = a.backend.load
    raced = False

    async def load_then_race(*args: Any, **kwargs: Any) -> Any:
        nonlocal raced
        loaded = await real_load(*args, **kwargs)
        if not raced:
            raced = True
            await b.handlers.deliver(requests[2], third)  # commits while A holds a stale read
        return loaded

    a.backend.load = load_then_race  # type: ignore[method-assign]
    try:
        await a.handlers.deliver(requests[1], second)
    finally:
        del a.backend.load
    assert a.stats["conflicts"] == 1
    assert a.backend.claims.holds(iid)
    sentinel = await a.backend.history.get_entity(iid, r.SENTINEL)
    assert sentinel[STEPPER] == a.backend.lease.worker_id
    assert sentinel[STEPPER_UNTIL] > a.backend.clock.now().timestamp()
    index = [
        e async for e in a.backend.workers.query_entities(f"PartitionKey eq '{a.backend.lease.worker_id}'")
    ]
    assert iid in {e["RowKey"] for e in index}  # held under A's lease while A holds the claim


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def status_of(client: DurableOrchestrationClient, iid: str) -> Status | None:
    status = await client.get_status(iid)
    return status.runtime_status if status is not None else None


async def inbox_rows(backend: AzureBackend, iid: str) -> int:
    flt = "PartitionKey eq @pk and RowKey ge 'i-' and RowKey lt 'i.'"
    return len([e async for e in backend.history.query_entities(flt, parameters={"pk": iid})])


async def test_the_others_hand_their_results_to_the_claims_holder(
    two: tuple[Process, Process, DurableOrchestrationClient],
) -> None:
    a, b, client = two
    iid = await client.start_new("fan", "claim-1", FAN)
    await a.handlers.process(iid, [])  # schedules FAN activities (to the work-item queue)
    requests = await scheduled(a.backend, iid)
    await take_claim(a, b, iid, requests)
    b_steps = b.stats["steps"]

    rest = await results(b, requests[3:])
    await asyncio.gather(*(b.handlers.deliver(q, m) for q, m in zip(requests[3:], rest, strict=True)))

    await wait_for(lambda: _is(client, iid, Status.Completed))
    status = await client.get_status(iid)
    assert status is not None and status.output == sum(i + 10 for i in range(FAN))
    assert b.stats["steps"] == b_steps  # B stepped no more: A read what B handed over
    assert b.stats["handed_off"] >= 1
    assert b.stats["conflicts"] <= 1  # at most B's first commit, before it read of the claim
    kinds = [e["EventType"] for e in await a.backend.get_history(iid)]
    assert kinds.count(df.EventType.TaskCompleted) == FAN
    # the step that finished the instance ended the claim: nothing left behind
    await wait_for(lambda: _claim_gone(a, iid))
    assert await inbox_rows(a.backend, iid) == 0
    assert a.backend.claims.given_up == 1


async def test_a_quiet_holder_gives_its_claim_up_and_the_others_step_again(
    two: tuple[Process, Process, DurableOrchestrationClient],
) -> None:
    a, b, client = two
    iid = await client.start_new("fan", "claim-2", FAN)
    await a.handlers.process(iid, [])
    requests = await scheduled(a.backend, iid)
    await take_claim(a, b, iid, requests)
    claimed_at = asyncio.get_running_loop().time()

    await wait_for(lambda: _claim_gone(a, iid), timeout=QUIET_S + 10)
    assert asyncio.get_running_loop().time() - claimed_at >= QUIET_S - 0.1  # not before it was quiet
    sentinel = await a.backend.history.get_entity(iid, r.SENTINEL)
    assert not sentinel.get(STEPPER)
    handed = b.stats["handed_off"]

    rest = await results(b, requests[3:])
    for request, message in zip(requests[3:], rest, strict=True):
        await b.handlers.deliver(request, message)

    assert await status_of(client, iid) == Status.Completed
    assert b.stats["handed_off"] == handed  # no claim any more: B stepped them itself
    assert await inbox_rows(a.backend, iid) == 0


async def test_a_claim_of_a_dead_process_is_voided_by_the_takeover(azurite: Azurite) -> None:
    """A dies holding the claim, B's results wait in the inbox; B's sweep takes A's lease over,
    clears A's claim and wakes the instance, and B steps it (a short lease keeps the test short:
    the takeover itself is tested on the defaults in test_leases.py)."""
    async for a, b, client in _processes(azurite, lease=timedelta(seconds=2)):
        b.handlers.attach()  # B applies wake-ups in-process, as a worker does
        iid = await client.start_new("fan", "claim-3", FAN)
        await a.handlers.process(iid, [])
        requests = await scheduled(a.backend, iid)
        await take_claim(a, b, iid, requests)
        # A dies: no more renewals, no more polls, nothing given up
        a.backend.lease._loop_task.cancel()  # type: ignore[union-attr]
        for box in list(a.handlers._boxes.values()):
            if box.task is not None:
                box.task.cancel()
        a.backend.claims.mine.clear()
        a.backend.lease._counts.clear()  # its close then simply deletes the lease row

        rest = await results(b, requests[3:])
        for request, message in zip(requests[3:], rest, strict=True):
            await b.handlers.deliver(request, message)
        assert b.stats["handed_off"] >= 1
        assert await inbox_rows(b.backend, iid) >= 1  # waiting for a holder that is gone

        async def swept(b: Process = b, client: DurableOrchestrationClient = client) -> bool:
            await b.backend.repair()
            return await _is(client, "claim-3", Status.Completed)

        await wait_for(swept, timeout=30)
        assert b.backend.lease.taken_over == 1
        status = await client.get_status(iid)
        assert status is not None and status.output == sum(i + 10 for i in range(FAN))
        assert await inbox_rows(b.backend, iid) == 0


async def _is(client: DurableOrchestrationClient, iid: str, expected: Status) -> bool:
    return await status_of(client, iid) == expected


async def _claim_gone(process: Process, iid: str) -> bool:
    if process.backend.claims.holds(iid):
        return False
    sentinel = await process.backend.history.get_entity(iid, r.SENTINEL)
    return not sentinel.get(STEPPER)
