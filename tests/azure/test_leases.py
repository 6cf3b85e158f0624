"""Worker leases with the default settings: how soon work comes back after a SIGKILL or a graceful stop.

Worker processes run ``python -m durable_ext.host.worker`` with no timing
overrides (lease 30 s renewed every 10 s, a sweep every 10 s). The first
activity of ``crash_flow`` sleeps 3 s, and the stop lands while it runs in the
process that scheduled it.
"""

from __future__ import annotations

import asyncio
import signal
import time

from crash_app import app, expected_keys, expected_output
from procs import LEASE, Hub, WorkerProcess, activity_runs, history_problems, leftovers, wait_all

from durable_ext.host.worker import AzureWorker

SIGKILL_BOUND_S = 45.0  # from the kill to the interrupted activity running again
STOP_BOUND_S = 2.0  # from the successor's first poll to the handed-back activity running again
ACTIVITY_S = 3.0


def with_defaults(hub: Hub, name: str) -> WorkerProcess:
    """A worker process with no timing overrides."""
    return WorkerProcess(hub.app_dir, hub.connection_string, lease=None, repair_interval=None, name=name)


async def start_first(hub: Hub, tag: str) -> tuple[str, WorkerProcess]:
    """Start ``crash_flow`` (first activity 3 s long) and the worker process that will run it."""
    iid = await hub.client.start_new("crash_flow", client_input=hub.flow_input(tag, sleep_first=ACTIVITY_S))
    return iid, with_defaults(hub, "first")


async def runs_of(hub: Hub, key: str, count: int, timeout: float) -> float:
    """Wait until activity ``key`` has started ``count`` times; when that was seen (monotonic)."""
    deadline = time.monotonic() + timeout
    while activity_runs(hub.log)[key] < count:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{key} started {activity_runs(hub.log)[key]} times, not {count}, in {timeout}s"
            )
        await asyncio.sleep(0.05)
    return time.monotonic()


async def finish(hub: Hub, iid: str, tag: str, interrupted: str) -> None:
    """The instance completes soundly, and only the interrupted activity ran twice."""
    await wait_all(hub.client, [iid], 120)
    status = await hub.client.get_status(iid)
    assert status is not None and status.output == expected_output(tag)
    assert history_problems(await hub.backend.get_history(iid)) == []
    runs = activity_runs(hub.log)
    twice = sorted(k for k in expected_keys(tag) if runs[k] > 1)
    assert twice == [interrupted], runs
    assert await leftovers(hub.backend, [iid], 10) == []


async def test_sigkill_with_defaults_is_recovered_within_45_s(hub: Hub) -> None:
    """A worker SIGKILLed mid-activity: its successor takes the work over once the lease runs out."""
    tag = "kill"
    iid, first = await start_first(hub, tag)
    processes = [first]
    try:
        await runs_of(hub, f"{tag}:a", 1, 60)
        first.process.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
        killed = time.monotonic()
        processes.append(with_defaults(hub, "next"))
        again = await runs_of(hub, f"{tag}:a", 2, SIGKILL_BOUND_S + 15)
        recovery = again - killed
        await finish(hub, iid, tag, f"{tag}:a")
    finally:
        for process in processes:
            process.stop()
    print(f"\nSIGKILL with defaults: the interrupted activity ran again {recovery:.1f}s after the kill")
    assert recovery <= SIGKILL_BOUND_S, f"recovery took {recovery:.1f}s"


async def test_graceful_stop_with_defaults_resumes_at_once(hub: Hub) -> None:
    """A worker stopped (SIGTERM) mid-activity hands it back: the next process runs it at once."""
    tag = "stop"
    iid, first = await start_first(hub, tag)
    processes = [first]
    try:
        await runs_of(hub, f"{tag}:a", 1, 60)
        stopped = time.monotonic()
        await asyncio.to_thread(first.stop, 30.0)
        exited = time.monotonic()
        successor = with_defaults(hub, "next")
        processes.append(successor)
        ready = await serving(successor)
        again = await runs_of(hub, f"{tag}:a", 2, 30)
        await finish(hub, iid, tag, f"{tag}:a")
    finally:
        for process in processes:
            process.stop()
    print(
        f"\ngraceful stop with defaults: the process took {exited - stopped:.1f}s to exit; the activity ran "
        f"again {again - exited:.1f}s after it exited, {again - ready:.2f}s after the successor was ready"
    )
    assert again - ready <= STOP_BOUND_S


async def serving(process: WorkerProcess, timeout: float = 30) -> float:
    """When (monotonic) the worker process was seen logging that it serves the hub."""
    deadline = time.monotonic() + timeout
    while "serving hub" not in process.log_tail(100_000):
        assert time.monotonic() < deadline, process.log_tail()
        await asyncio.sleep(0.02)
    return time.monotonic()


async def test_a_sweep_reads_one_row_per_live_worker_and_repairs_nothing(hub: Hub) -> None:
    """With no process dead the sweep reads the lease rows alone and repairs nothing; index rows go."""
    backends = [hub.new_backend(), hub.new_backend()]
    workers = [AzureWorker(app.registry, b, b.options) for b in backends]
    try:
        for worker in workers:
            await worker.start()
        tags = {}
        for n in range(4):
            tag = f"live{n}"
            tags[await hub.client.start_new("crash_flow", client_input=hub.flow_input(tag))] = tag
        await wait_all(hub.client, list(tags), 60)
        for backend in backends:
            await backend.lease.start()  # (a process writes its lease when it first holds work)
        assert [await backend.repair() for backend in backends] == [0, 0]
        assert [b.lease.sweep_entities_read for b in backends] == [2, 2]
        await asyncio.sleep(3.5)  # index rows go once their work has been done for 2 s
        rows = [e async for e in backends[0].workers.list_entities()]
        assert sorted(e["PartitionKey"] for e in rows) == ["lease", "lease"], rows
    finally:
        for worker in workers:
            await worker.stop()
        for backend in backends:
            await backend.close()
    rows = [e async for e in hub.backend.workers.list_entities()]
    assert rows == [], "a graceful stop with nothing held deletes the lease row"


async def test_live_work_longer_than_a_lease_is_never_taken_away(hub: Hub) -> None:
    """An in-process activity three leases long, beside a second worker sweeping every second:
    the renewals keep it held, nothing is taken over, and every activity runs once (lease 2 s:
    the renewal is the same mechanism at any duration; the defaults are timed above)."""
    tag = "long"
    long_s = 3 * LEASE
    iid = await hub.client.start_new("crash_flow", client_input=hub.flow_input(tag, sleep_first=long_s))
    processes = [WorkerProcess(hub.app_dir, hub.connection_string, name="runner")]
    try:
        await runs_of(hub, f"{tag}:a", 1, 60)  # the first worker runs it in-process
        processes.append(WorkerProcess(hub.app_dir, hub.connection_string, name="sweeper"))
        await serving(processes[1])
        await wait_all(hub.client, [iid], long_s + 60)
        status = await hub.client.get_status(iid)
        assert status is not None and status.output == expected_output(tag)
        runs = activity_runs(hub.log)
        assert all(runs[k] == 1 for k in expected_keys(tag)), runs
        logs = "".join(p.log_tail(1_000_000) for p in processes)
        for needle in ("taking over its work", "was taken over", "repair:"):
            assert needle not in logs, logs[-3000:]
    finally:
        for process in processes:
            process.stop()
