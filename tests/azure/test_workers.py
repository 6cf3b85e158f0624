"""Several worker processes on one task hub, and the per-process concurrency limits.

The scale-out test starts ``python -m durable_ext.host.worker APP_DIR`` two or
four times on one hub (``tests/apps/mixed`` copied beside a host.json of the
test's own) and runs 200 mixed instances to their expected outputs; activities
log when they start and end (``MIXED_TRACE_DIR``), so the test can check
``maxConcurrentActivityFunctions`` in each process.
``maxConcurrentOrchestratorFunctions`` bounds the instance steps in flight in
one process; orchestrator code itself never overlaps inside a process (it runs
synchronously on the event loop), so that limit is checked in-process by
counting steps between their load and their commit.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.backends.base import LoadedInstance
from durable_ext.client import DurableOrchestrationClient
from durable_ext.config import DurableTaskOptions
from durable_ext.core.runtime import StepResult
from durable_ext.host.azurite import Azurite
from durable_ext.host.worker import AzureWorker

ROOT = Path(__file__).resolve().parents[2]
ACTIVITY_LIMIT = 2

MIXED = ROOT / "tests" / "apps" / "mixed"
sys.path.insert(0, str(MIXED))
from mixed_load import activity_count, entity_totals, expected, go_event, plan  # noqa: E402


def max_overlap(spans: list[tuple[int, int]]) -> int:
    """Most intervals open at once (an end at the same instant as a start closes first)."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda x: (x[0], x[1]))
    level = peak = 0
    for _, delta in edges:
        level += delta
        peak = max(peak, level)
    return peak


class Workers:
    """Worker processes started (and always stopped) by one test, by their pids."""

    def __init__(self, app_dir: Path, env: dict[str, str]) -> None:
        self.app_dir = app_dir
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stats_files: list[Path] = []
        self.logs: list[Path] = []

    def start(self, count: int) -> None:
        for n in range(count):
            stats = self.app_dir / f"stats-{n}.json"
            log = self.app_dir / f"worker-{n}.log"
            env = {**self.env, "DURABLE_EXT_STATS_FILE": str(stats)}
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "durable_ext.host.worker", str(self.app_dir)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self.procs.append(proc)
            self.stats_files.append(stats)
            self.logs.append(log)

    def alive(self) -> None:
        for proc, log in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                raise AssertionError(
                    f"worker {proc.pid} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                )

    def stop(self) -> None:
        """SIGTERM each worker (a clean stop writes final stats), SIGKILL the ones that hang."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stats(self) -> list[dict[str, Any]]:
        return [json.loads(path.read_text()) for path in self.stats_files]


@pytest.fixture
async def hub(azurite: Azurite, tmp_path: Path) -> AsyncIterator[tuple[AzureBackend, Path]]:
    """A fresh hub (4 partitions, 2 activities per process) and an app folder whose host.json names it."""
    name = f"W{os.getpid()}x{int(time.time() * 1000) % 10**8}"
    host = {
        "version": "2.0",
        "extensions": {
            "durableTask": {
                "hubName": name,
                "storageProvider": {"partitionCount": 4, "maxQueuePollingInterval": "00:00:01"},
                "maxConcurrentActivityFunctions": ACTIVITY_LIMIT,
                "maxConcurrentOrchestratorFunctions": 8,
            }
        },
    }
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "host.json").write_text(json.dumps(host))
    shutil.copy(MIXED / "function_app.py", app_dir / "function_app.py")
    (app_dir / "trace").mkdir()
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    backend = AzureBackend(connection, DurableTaskOptions.from_host_json(host, {}))
    await backend.create_task_hub()
    yield backend, app_dir
    await backend.delete_task_hub()
    await backend.close()


@pytest.mark.parametrize(("processes", "sweep"), [(2, True), (4, False)])
async def test_worker_processes_share_a_hub(
    azurite: Azurite, hub: tuple[AzureBackend, Path], processes: int, sweep: bool
) -> None:
    """200 mixed instances on several worker processes: right outputs, all work, activity limit holds.

    With the sweep on it must rescue nothing; with it off nothing but the normal path finishes the work.
    """
    backend, app_dir = hub
    client = DurableOrchestrationClient(backend)
    trace = app_dir / "trace"
    env = {
        **os.environ,
        "AzureWebJobsStorage": azurite.connection_string,
        "MIXED_TRACE_DIR": str(trace),
        "DURABLE_EXT_REPAIR_INTERVAL": "5" if sweep else "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    workers = Workers(app_dir, env)
    work = plan(200)
    started = time.monotonic()
    try:
        workers.start(processes)
        for iid, (name, value) in work.items():
            await client.start_new(name, iid, value)
        for iid, (name, _) in work.items():
            if name == "wait_for_go":
                await client.raise_event(iid, "Go", go_event(iid))
        pending = set(work)
        deadline = time.monotonic() + 75
        while pending:
            workers.alive()
            assert time.monotonic() < deadline, (
                f"{len(pending)} instances unfinished, e.g. {sorted(pending)[:5]}"
            )
            await asyncio.sleep(0.5)
            for status in await client.get_status_by(instance_id_prefix=None):
                if status.instance_id in pending and status.runtime_status.is_terminal:
                    pending.discard(status.instance_id)
                    name, value = work[status.instance_id]
                    assert status.runtime_status == Status.Completed, (status.instance_id, status.output)
                    if name != "bump":
                        assert status.output == expected(name, value, status.instance_id), status.instance_id
        elapsed = time.monotonic() - started
    finally:
        workers.stop()

    stats = workers.stats()
    engines = [s["engine"] for s in stats]
    print(f"\n200 instances on {processes} workers in {elapsed:.1f}s; engine stats: {engines}")
    for s in stats:
        assert s["engine"]["steps"] > 0 and s["engine"]["activities"] > 0, engines
        assert s["peak_activities"] <= ACTIVITY_LIMIT
        assert s["handlers"]["repairs"] == 0, "the repair sweep rescued work although nothing failed"
    needed = activity_count(work)
    runs = sum(s["engine"]["activities"] for s in stats)
    assert runs >= needed  # at least once; more means some ran twice
    print(f"activity runs: {runs} for {needed} activities")
    everything = await client.get_status_all()
    children = [s for s in everything if s.instance_id not in work and not s.instance_id.startswith("@")]
    parents = sum(1 for name, _ in work.values() if name == "parent")
    assert len(children) == 2 * parents and all(s.runtime_status == Status.Completed for s in children)
    for key, total in entity_totals(work).items():
        state = await client.read_entity_state(df.EntityId("tally", key))
        assert state.entity_exists and state.entity_state == total, (key, state.entity_state, total)

    spans: dict[str, list[tuple[int, int]]] = {}
    for log in trace.glob("*.log"):
        spans[log.stem] = [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]
    assert len(spans) == processes and sum(len(s) for s in spans.values()) == runs
    peaks = {pid: max_overlap(s) for pid, s in spans.items()}
    print(f"peak concurrent activities per worker: {peaks}")
    assert all(peak <= ACTIVITY_LIMIT for peak in peaks.values()), peaks
    assert max(peaks.values()) == ACTIVITY_LIMIT, peaks  # the limit was reached, so the check has teeth


# --------------------------------------------------------------------------- orchestrator limit (in-process)

app = df.DurableApp()


@app.orchestration_trigger(context_name="context")
def chain(context: df.DurableOrchestrationContext):
    """Two activities in a row."""
    value = yield context.call_activity("inc", context.get_input())
    return (yield context.call_activity("inc", value))


@app.activity_trigger(input_name="value")
async def inc(value: int) -> int:
    """Add one."""
    return value + 1


class StepCounter(AzureBackend):
    """Counts instance steps in flight: asyncio tasks between a load and the end of its step.

    Every load waits a little so that steps overlap whenever the worker lets them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.active: set[asyncio.Task[Any]] = set()
        self.peak = 0

    async def load(self, instance_id: str, *args: Any, **kwargs: Any) -> LoadedInstance | None:
        task = asyncio.current_task()
        assert task is not None
        if task not in self.active:  # a retry of the same step counts once
            self.active.add(task)
            task.add_done_callback(self.active.discard)
        self.peak = max(self.peak, len(self.active))
        await asyncio.sleep(0.02)
        loaded = await super().load(instance_id, *args, **kwargs)
        if loaded is None or not loaded.inbox:
            self.active.discard(task)  # nothing to do: the step ends here
        return loaded

    async def commit(self, loaded: LoadedInstance, step: StepResult) -> None:
        try:
            await super().commit(loaded, step)
        finally:
            self.active.discard(asyncio.current_task())  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [2, 64])
async def test_max_concurrent_orchestrator_functions(azurite: Azurite, limit: int) -> None:
    """Instance steps in flight in one process never exceed maxConcurrentOrchestratorFunctions."""
    name = f"O{os.getpid()}x{limit}x{int(time.time() * 1000) % 10**6}"
    host = {
        "version": "2.0",
        "extensions": {
            "durableTask": {
                "hubName": name,
                "storageProvider": {"partitionCount": 4, "maxQueuePollingInterval": "00:00:01"},
                "maxConcurrentOrchestratorFunctions": limit,
                "maxConcurrentActivityFunctions": 16,
            }
        },
    }
    options = DurableTaskOptions.from_host_json(host, {})
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    backend = StepCounter(connection, options)
    await backend.create_task_hub()
    try:
        client = DurableOrchestrationClient(backend)
        async with AzureWorker(app.registry, backend, options, repair_interval=timedelta(minutes=5)):
            ids = await asyncio.gather(*(client.start_new("chain", f"c-{n}", n) for n in range(40)))
            for n, iid in enumerate(ids):
                assert (await client.wait_for_completion(iid, timeout=30)).output == n + 2
        print(f"\npeak instance steps in flight: {backend.peak} (maxConcurrentOrchestratorFunctions={limit})")
        if limit == 2:
            assert backend.peak == 2, backend.peak
        else:  # without a tight limit the same load overlaps more: the probe sees concurrency
            assert backend.peak > 2, backend.peak
    finally:
        await backend.delete_task_hub()
        await backend.close()


# --------------------------------------------------------------------------- sync code off the event loop


class Overlap:
    """How many calls of some sync code ran at once (from any thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0

    def run(self, seconds: float) -> None:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                self.active -= 1


SLOW = Overlap()


@app.activity_trigger(input_name="value")
def slow_sync(value: int) -> int:
    """A sync activity that blocks its thread for 0.2 s."""
    SLOW.run(0.2)
    return value


@app.orchestration_trigger(context_name="context")
def many_slow(context: df.DurableOrchestrationContext):
    """Fan out ``slow_sync``."""
    tasks = [context.call_activity("slow_sync", n) for n in range(context.get_input())]
    return sum((yield context.task_all(tasks)))


@app.entity_trigger(context_name="context")
def sluggish(context: df.DurableEntityContext) -> None:
    """An entity whose operation blocks for 0.5 s."""
    time.sleep(0.5)
    context.set_state(context.get_state(lambda: 0) + 1)


async def hub_with(azurite: Azurite, **durable: Any) -> tuple[AzureBackend, DurableTaskOptions]:
    """A fresh hub with these extensions.durableTask settings."""
    name = f"C{os.getpid()}x{int(time.time() * 1000) % 10**8}"
    doc = {"version": "2.0", "extensions": {"durableTask": {"hubName": name, **durable}}}
    options = DurableTaskOptions.from_host_json(doc, {})
    backend = AzureBackend(resolve_connection({"AzureWebJobsStorage": azurite.connection_string}), options)
    await backend.create_task_hub()
    return backend, options


async def test_max_concurrent_activity_functions_holds_for_sync_activities(azurite: Azurite) -> None:
    """12 slots on a 2-core machine: 12 sync activities run at once (the loop's default pool has 6
    threads here), and never more."""
    backend, options = await hub_with(azurite, maxConcurrentActivityFunctions=12)
    assert options.max_concurrent_activity_functions > min(32, (os.cpu_count() or 1) + 4)
    SLOW.peak = 0
    try:
        client = DurableOrchestrationClient(backend)
        async with AzureWorker(app.registry, backend, options, repair_interval=timedelta(0)):
            iid = await client.start_new("many_slow", "slow-1", 36)
            assert (await client.wait_for_completion(iid, timeout=30)).output == sum(range(36))
        assert SLOW.peak == 12, SLOW.peak
    finally:
        await backend.delete_task_hub()
        await backend.close()


async def test_a_slow_entity_operation_never_stalls_the_event_loop(azurite: Azurite) -> None:
    """While ``sluggish`` blocks for 0.5 s per operation, the worker's event loop keeps ticking."""
    backend, options = await hub_with(azurite)
    lags: list[float] = []

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    try:
        client = DurableOrchestrationClient(backend)
        async with AzureWorker(app.registry, backend, options, repair_interval=timedelta(0)):
            tick = asyncio.ensure_future(ticker())
            entity = df.EntityId("sluggish", "s")
            for _ in range(3):
                await client.signal_entity(entity, "bump")
            deadline = time.monotonic() + 20
            while (await client.read_entity_state(entity)).entity_state != 3:
                assert time.monotonic() < deadline, "the entity did not apply its 3 operations"
                await asyncio.sleep(0.05)
            tick.cancel()
        assert max(lags) < 0.25, f"the event loop stalled {max(lags):.2f} s"
    finally:
        await backend.delete_task_hub()
        await backend.close()


# --------------------------------------------------------------------------- graceful stop

NAP = {"seconds": 30.0, "started": 0}


@app.activity_trigger(input_name="value")
async def nap(value: str) -> str:
    """Sleep ``NAP["seconds"]``: long in the first worker, short in the next."""
    NAP["started"] += 1
    await asyncio.sleep(NAP["seconds"])
    return f"rested {value}"


@app.orchestration_trigger(context_name="context")
def napper(context: df.DurableOrchestrationContext):
    """One long activity."""
    return (yield context.call_activity("nap", context.get_input()))


async def test_a_graceful_stop_hands_running_activities_to_the_next_start(azurite: Azurite) -> None:
    """A worker stopped while an in-process activity runs queues it; the next worker finishes it at
    once instead of after the activity's lease and the sweep (minutes by default)."""
    backend, options = await hub_with(azurite)
    NAP.update(seconds=30.0, started=0)
    try:
        client = DurableOrchestrationClient(backend)
        async with AzureWorker(app.registry, backend, options, repair_interval=timedelta(0)):
            iid = await client.start_new("napper", "nap-1", "well")
            deadline = time.monotonic() + 10
            while NAP["started"] == 0:
                assert time.monotonic() < deadline, "the activity never started"
                await asyncio.sleep(0.05)
        NAP["seconds"] = 0.0
        began = time.monotonic()
        async with AzureWorker(app.registry, backend, options, repair_interval=timedelta(0)):
            status = await client.wait_for_completion(iid, timeout=20)
        elapsed = time.monotonic() - began
        assert status.output == "rested well" and NAP["started"] == 2
        assert elapsed < 3.0, f"the restarted worker took {elapsed:.1f} s"
    finally:
        await backend.delete_task_hub()
        await backend.close()
