"""Crash safety on a real Azurite (DESIGN.md §5): no event lost or applied twice, no instance stuck.

Faults are injected at every point of a step (``commit.before``, ``commit.after``,
``dispatch.after``, ``outbox.deleted``): raised in a worker in this process
(the queue runner retries the failed message), or as a SIGKILL of a real
worker process followed by a fresh worker on the same hub. Lost wake-ups, an
inbox row without wake-up and a killed and restarted emulator are repaired by
the sweep. Each instance must then complete with the right output and a
history in which every task is scheduled once and completed once. Activities
run at least once: duplicates are counted and printed, not failed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from crash_app import app, expected_keys, expected_output
from procs import (
    LEASE,
    REPAIR_INTERVAL,
    Hub,
    WorkerProcess,
    activity_runs,
    history_problems,
    leftovers,
    open_hub,
    wait_all,
)

from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend, FaultHook
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.core.history import EventType
from durable_ext.core.runtime import InstanceRecord, Message, run_step, start_message
from durable_ext.host.azurite import Azurite
from durable_ext.host.worker import AzureWorker

POINTS = ["commit.before", "commit.after", "dispatch.after", "outbox.deleted"]
# Worst case after a crash: the dead worker's lease runs out (LEASE), a sweep takes its work over
# (REPAIR_INTERVAL), queue messages it held come back a lease after it died. Plus the new worker's
# start-up and the rest of the orchestration (a 1 s timer and a few steps).
RECOVERY_BOUND = 30.0
SWEEP_BOUND = LEASE + REPAIR_INTERVAL + 5.0  # a client's wake-up: a lease + one poll + slack
INSTANCES = 3


# --------------------------------------------------------------------- checks


async def verify_flows(hub: Hub, tags: dict[str, str]) -> int:
    """Assert each ``crash_flow`` instance (id -> tag) and its child completed soundly.

    Returns how many activity executions were duplicates (a retry after a crash).
    """
    children: list[str] = []
    for iid, tag in tags.items():
        status = await hub.client.get_status(iid)
        assert status is not None and status.runtime_status == Status.Completed, (iid, status)
        assert status.output == expected_output(tag)
        history = await hub.backend.get_history(iid)
        assert history_problems(history) == [], (iid, history_problems(history))
        child = next(
            e["InstanceId"] for e in history if e["EventType"] == EventType.SubOrchestrationInstanceCreated
        )
        child_history = await hub.backend.get_history(child)
        assert history_problems(child_history) == [], (child, history_problems(child_history))
        assert (await hub.client.get_status(child)).runtime_status == Status.Completed  # type: ignore[union-attr]
        children.append(child)
    every = list(tags) + children
    assert await leftovers(hub.backend, every, RECOVERY_BOUND) == []
    for iid in every:  # the authoritative row agrees with the projection
        sentinel = await hub.backend.history.get_entity(iid, "sentinel")
        assert sentinel["RuntimeStatus"] == "Completed"
    runs = activity_runs(hub.log)
    missing = [k for tag in tags.values() for k in expected_keys(tag) if runs[k] < 1]
    assert missing == [], f"activities never ran: {missing}"
    return sum(n - 1 for n in runs.values() if n > 1)


async def start_flows(hub: Hub, prefix: str, count: int = INSTANCES, **extra: Any) -> dict[str, str]:
    """Start ``count`` crash_flow instances; instance id -> tag."""
    tags: dict[str, str] = {}
    for n in range(count):
        tag = f"{prefix}{n}"
        tags[await hub.client.start_new("crash_flow", client_input=hub.flow_input(tag, **extra))] = tag
    return tags


# ---------------------------------------------------------------- raise faults


class RaiseAt(FaultHook):
    """Raise at the listed passes (1-based) of one fault point, as a failing storage call would."""

    def __init__(self, point: str, passes: set[int]) -> None:
        self.point = point
        self.passes = passes
        self.seen = 0
        self.raised = 0

    def check(self, point: str) -> None:
        if point != self.point:
            return
        self.seen += 1
        if self.seen in self.passes:
            self.raised += 1
            raise RuntimeError(f"injected fault at {point} (pass {self.seen})")


@pytest.mark.parametrize("point", POINTS)
async def test_fault_raised_in_process(hub: Hub, point: str) -> None:
    """A step that fails at ``point`` (several times) is retried or repaired; nothing lost or doubled."""
    fault = RaiseAt(point, {2, 5, 9, 14})
    backend = hub.new_backend(fault)
    try:
        async with hub.worker(backend):
            tags = await start_flows(hub, f"raise-{point}-")
            elapsed = await wait_all(hub.client, list(tags), RECOVERY_BOUND)
            duplicates = await verify_flows(hub, tags)
    finally:
        await backend.close()
    assert fault.raised == 4, f"the fault point was passed only {fault.seen} times"
    print(f"\n{point}:raise x{fault.raised}: done in {elapsed:.1f}s, duplicate activity runs: {duplicates}")


# ----------------------------------------------------------------- kill faults

# Which passes of the point kill the first and then the second worker process. A clean run of
# three instances passes commit.* 33 times and dispatch.after / outbox.deleted 23 times, so the
# first kill lands among the first activities and the second (counted anew by the restarted
# process) later, around the fan-out, the timer and the sub-orchestration.
KILLS = {
    "commit.before": (7, 14),
    "commit.after": (7, 14),
    "dispatch.after": (5, 9),
    "outbox.deleted": (5, 9),
}


@pytest.mark.parametrize("point", POINTS)
async def test_worker_process_killed(hub: Hub, point: str) -> None:
    """SIGKILL a worker process at ``point``, twice in a row; a fresh process finishes every instance."""
    processes: list[WorkerProcess] = []
    unfinished: list[int] = []
    first_kill = 0.0
    try:
        tags = await start_flows(hub, f"kill-{point}-")
        for n, nth in enumerate(KILLS[point]):
            worker = WorkerProcess(
                hub.app_dir, hub.connection_string, fault=f"{point}:kill:{nth}", name=f"killed{n}"
            )
            processes.append(worker)
            code = await asyncio.to_thread(worker.wait, 60)
            assert code == -signal.SIGKILL, f"worker exited with {code}:\n{worker.log_tail()}"
            first_kill = first_kill or time.monotonic()
            statuses = [await hub.client.get_status(i) for i in tags]
            unfinished.append(sum(1 for s in statuses if s is None or not s.runtime_status.is_terminal))
            assert unfinished[-1], f"kill {n + 1} came after every instance had finished"
        last = WorkerProcess(hub.app_dir, hub.connection_string, name="last")
        processes.append(last)
        try:
            elapsed = await wait_all(hub.client, list(tags), RECOVERY_BOUND)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{last.log_tail()}") from exc
        since_first_kill = time.monotonic() - first_kill
        duplicates = await verify_flows(hub, tags)
    finally:
        for process in processes:
            process.stop()
    print(
        f"\n{point}:kill at passes {KILLS[point]}: {unfinished} unfinished at the kills, all done "
        f"{elapsed:.1f}s after the last restart (bound {RECOVERY_BOUND:.0f}s), "
        f"{since_first_kill:.1f}s after the first kill; duplicate activity runs: {duplicates}"
    )


# ------------------------------------------------- a client stopped between writes


class StopsBeforeWaking(AzureBackend):
    """A client that stops after writing to the inbox, before it reveals (or applies) the wake-up."""

    async def _after(self, ahead: Any, instance_id: str, due: datetime | None) -> None:
        return


@pytest.mark.parametrize("what", ["start", "event"])
async def test_client_stopped_between_its_writes(hub: Hub, what: str) -> None:
    """A start or event whose client stopped after the inbox write is applied a lease later.

    The client queued its wake-up first, invisible for a lease: nothing but
    that message can have delivered it, so not before the lease ran out.
    """
    connection = resolve_connection({"AzureWebJobsStorage": hub.connection_string})
    stopping = StopsBeforeWaking(connection, hub.backend.options, lease=timedelta(seconds=LEASE))
    client = DurableOrchestrationClient(stopping)
    backend = hub.new_backend()
    try:
        async with hub.worker(backend):
            if what == "start":
                written = time.monotonic()
                iid = await client.start_new("crash_child", client_input=hub.flow_input("lost"))
                expected: Any = ["ok:lost:1", "ok:lost:2"]
            else:
                iid = await hub.client.start_new("wait_event")
                for _ in range(100):
                    status = await hub.client.get_status(iid)
                    if status is not None and status.runtime_status == Status.Running:
                        break
                    await asyncio.sleep(0.1)
                written = time.monotonic()
                await client.raise_event(iid, "go", "went")
                expected = "went"
            status = await hub.client.wait_for_completion(iid, timeout=SWEEP_BOUND)
            elapsed = time.monotonic() - written
    finally:
        await backend.close()
        await stopping.close()
    assert status.output == expected
    assert history_problems(await hub.backend.get_history(iid)) == []
    assert LEASE * 0.9 <= elapsed <= SWEEP_BOUND, elapsed
    assert await leftovers(hub.backend, [iid], 5) == []
    assert backend.repairs == 0  # the queue delivered it, no sweep
    print(f"\n{what} of a client stopped between its writes applied after {elapsed:.1f}s")


# ----------------------------------------------------------- storage restart


async def test_storage_emulator_stopped_and_restarted(tmp_path: Path) -> None:
    """Azurite stops (SIGTERM: it saves its data) with instances in flight and comes back.

    A SIGKILLed Azurite forgets up to 5 s of acknowledged writes, table rows and
    queue messages independently, which no real storage account does; the
    hub trusts acknowledged writes, so the emulator is stopped as a service is.
    """
    emulator = Azurite(data_dir=tmp_path / "azurite")
    await asyncio.to_thread(emulator.start)
    made: Hub | None = None
    backend: AzureBackend | None = None
    worker: AzureWorker | None = None
    try:
        made = await open_hub(tmp_path, emulator.connection_string)
        backend = made.new_backend()
        worker = made.worker(backend)
        await worker.start()
        tags: dict[str, str] = {}
        for n, timer_s in enumerate((1, 3, 5, 7)):  # different phases at the kill
            tag = f"az{n}"
            flow = made.flow_input(tag, timer_s=timer_s, sleep=0.1)
            tags[await made.client.start_new("crash_flow", client_input=flow)] = tag
        await asyncio.sleep(1.5)
        statuses = [await made.client.get_status(i) for i in tags]
        assert any(not s.runtime_status.is_terminal for s in statuses if s is not None)
        await asyncio.to_thread(emulator.stop, False)
        await asyncio.sleep(2)  # workers see refused connections meanwhile
        await asyncio.to_thread(emulator.start)
        elapsed = await wait_all(made.client, list(tags), RECOVERY_BOUND * 2)
        duplicates = await verify_flows(made, tags)
        print(
            f"\nAzurite stopped and restarted: all done {elapsed:.1f}s after the restart; "
            f"duplicate activity runs: {duplicates}"
        )
    finally:
        if worker is not None:
            await worker.stop()
        if backend is not None:
            await backend.close()
        if made is not None:
            await made.close(delete=False)
        emulator.kill()
        emulator.stop()


# ------------------------------------------------------- duplicates in one batch


def test_copies_of_a_completion_in_one_batch_are_applied_once() -> None:
    """After an outage the sweep's re-sent timer and the original arrive in one step: one TimerFired."""
    now = datetime.now(timezone.utc)
    start = start_message("dup", "timer_flow", '{"seconds": 1}', now)
    record = InstanceRecord("dup", "timer_flow", start.execution_id or "", Status.Pending, now, now)
    first = run_step(app.registry, record, [], [start], now)
    (timer,) = first.messages
    copies = [Message("dup", dict(timer.event), start.execution_id) for _ in range(3)]
    second = run_step(app.registry, first.record, first.new_events, copies, now + timedelta(seconds=2))
    history = first.new_events + second.new_events
    assert [e["EventType"] for e in second.new_events].count(EventType.TimerFired) == 1
    assert history_problems(history) == []
    assert second.record.status == Status.Completed and set(second.consumed) == {m.id for m in copies}
