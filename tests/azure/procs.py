"""Helpers of the crash and timer tests: hubs with app folders, worker processes, history checks.

``open_hub`` creates a fresh task hub with a function app folder (``crash_app.py``
as ``function_app.py`` plus its ``host.json``); ``WorkerProcess`` runs
``python -m durable_ext.host.worker`` on it and stops or kills exactly the process
it started; ``history_problems`` lists what is lost or duplicated in a history.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from crash_app import app

from durable_ext.backends.azure.backend import AzureBackend, FaultHook
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.clock import Clock
from durable_ext.config import DurableTaskOptions
from durable_ext.core.history import Event, EventType
from durable_ext.host.worker import AzureWorker

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LEASE = 2.0  # seconds: a worker silent this long is taken for dead
REPAIR_INTERVAL = 1.0  # seconds between sweeps


def new_hub(prefix: str = "Cr") -> str:
    """A task hub name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def host_json(hub: str, **durable: Any) -> dict[str, Any]:
    """host.json for fast recovery: the smallest control-queue lease, short work-item leases."""
    provider = {
        "partitionCount": 2,
        "controlQueueVisibilityTimeout": "00:01:00",  # the extension's minimum
        "workItemQueueVisibilityTimeout": "00:00:03",
        "maxQueuePollingInterval": "00:00:01",
        **durable.pop("storageProvider", {}),
    }
    section = {
        "hubName": hub,
        "storageProvider": provider,
        "maxConcurrentActivityFunctions": 2,  # small, so a fan-out also uses the work-item queue
        "maxConcurrentOrchestratorFunctions": 8,
        **durable,
    }
    return {"version": "2.0", "extensions": {"durableTask": section}}


def options_of(doc: dict[str, Any]) -> DurableTaskOptions:
    """The options a worker reads from ``doc``."""
    return DurableTaskOptions.from_host_json(doc, {})


def write_app(folder: Path, doc: dict[str, Any]) -> Path:
    """A function app folder: the crash-test app as ``function_app.py`` and ``doc`` as host.json."""
    import orjson

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "crash_app.py", folder / "function_app.py")
    (folder / "host.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return folder


@dataclass
class Hub:
    """One fresh task hub: its app folder, a backend and client for the test, the activity log."""

    app_dir: Path
    doc: dict[str, Any]
    connection_string: str
    backend: AzureBackend
    client: DurableOrchestrationClient
    log: Path

    def new_backend(
        self,
        fault: FaultHook | None = None,
        *,
        lease: float = LEASE,
        clock: Clock | None = None,
    ) -> AzureBackend:
        """Another backend on the same hub (its own connection), as a worker would have."""
        connection = resolve_connection({"AzureWebJobsStorage": self.connection_string})
        return AzureBackend(
            connection,
            options_of(self.doc),
            fault=fault,
            clock=clock,
            lease=timedelta(seconds=lease),
        )

    def worker(self, backend: AzureBackend, repair_interval: float = REPAIR_INTERVAL) -> AzureWorker:
        """An in-process worker running the crash-test app."""
        return AzureWorker(
            app.registry, backend, backend.options, repair_interval=timedelta(seconds=repair_interval)
        )

    def flow_input(self, tag: str, **extra: Any) -> dict[str, Any]:
        """Input of ``crash_flow``."""
        return {"log": str(self.log), "tag": tag, "timer_s": 1, **extra}

    async def close(self, delete: bool = True) -> None:
        """Delete the hub (unless told not to) and close the test's backend."""
        if delete:
            await self.backend.delete_task_hub()
        await self.backend.close()


async def open_hub(folder: Path, connection_string: str) -> Hub:
    """Create a hub with a unique name and its app folder under ``folder``."""
    doc = host_json(new_hub())
    app_dir = write_app(folder / "app", doc)
    connection = resolve_connection({"AzureWebJobsStorage": connection_string})
    backend = AzureBackend(connection, options_of(doc), lease=timedelta(seconds=LEASE))
    await backend.create_task_hub()
    return Hub(app_dir, doc, connection_string, backend, DurableOrchestrationClient(backend), folder / "runs")


class WorkerProcess:
    """One ``python -m durable_ext.host.worker APP_DIR`` child; only this object's pid is ever signalled."""

    def __init__(
        self,
        app_dir: Path,
        connection_string: str,
        *,
        fault: str = "",
        lease: float | None = LEASE,
        repair_interval: float | None = REPAIR_INTERVAL,
        name: str = "worker",
    ) -> None:
        self.app_dir = app_dir
        self.log_path = app_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLE_EXT_")}
        env.update(
            {
                "AzureWebJobsStorage": connection_string,
                "DURABLE_EXT_FAULT": fault,
                "DURABLE_EXT_LOG": "INFO",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            }
        )
        if lease is not None:  # None: the default, as users run it
            env["DURABLE_EXT_LEASE"] = str(lease)
        if repair_interval is not None:
            env["DURABLE_EXT_REPAIR_INTERVAL"] = str(repair_interval)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open for the child's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "durable_ext.host.worker", str(app_dir)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def wait(self, timeout: float) -> int:
        """Wait for the child to exit; its return code (``-9`` after SIGKILL)."""
        return self.process.wait(timeout=timeout)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (a clean stop), SIGKILL if it does not exit within ``grace`` seconds."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def kill(self) -> None:
        """SIGKILL this child (only it)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the child's log, for assertion messages."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


# ----------------------------------------------------------------------- checks

_SCHEDULING = (EventType.TaskScheduled, EventType.TimerCreated, EventType.SubOrchestrationInstanceCreated)
_COMPLETION = {
    EventType.TaskCompleted: "TaskScheduledId",
    EventType.TaskFailed: "TaskScheduledId",
    EventType.SubOrchestrationInstanceCompleted: "TaskScheduledId",
    EventType.SubOrchestrationInstanceFailed: "TaskScheduledId",
    EventType.TimerFired: "TimerId",
}


def history_problems(history: list[dict[str, Any]]) -> list[str]:
    """What is lost or duplicated in the history of a completed execution (empty when sound).

    Each scheduling event's EventId appears exactly once, each scheduled id is
    completed exactly once and nothing else is completed; exactly one
    ExecutionStarted and one ExecutionCompleted.
    """
    problems: list[str] = []
    kinds = Counter(e["EventType"] for e in history)
    for kind in (EventType.ExecutionStarted, EventType.ExecutionCompleted):
        if kinds[kind] != 1:
            problems.append(f"{kind.name} appears {kinds[kind]} times")
    scheduled = Counter(e["EventId"] for e in history if e["EventType"] in _SCHEDULING)
    completed = Counter(e[_COMPLETION[e["EventType"]]] for e in history if e["EventType"] in _COMPLETION)
    problems += [f"EventId {i} scheduled {n} times" for i, n in scheduled.items() if n != 1]
    problems += [f"task {i} completed {completed[i]} times" for i in scheduled if completed[i] != 1]
    problems += [f"task {i} completed but never scheduled" for i in completed if i not in scheduled]
    return problems


def activity_runs(log: Path) -> Counter[str]:
    """How many times each activity key ran, from the activities' log file."""
    if not log.exists():
        return Counter()
    return Counter(line.split(" ")[0] for line in log.read_text().splitlines() if line.strip())


async def wait_all(client: DurableOrchestrationClient, iids: list[str], timeout: float) -> float:
    """Wait until every instance is terminal; seconds it took (TimeoutError beyond ``timeout``)."""
    start = time.monotonic()
    await asyncio.gather(*(client.wait_for_completion(i, timeout=timeout, poll_interval=0.1) for i in iids))
    return time.monotonic() - start


async def wait_for_event(backend: AzureBackend, iid: str, kind: EventType, timeout: float = 10) -> Event:
    """The first event of ``kind`` in the instance's stored history, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in await backend.get_history(iid) if e["EventType"] == kind]
        if found:
            return found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {kind.name} in the history of {iid} after {timeout}s")
        await asyncio.sleep(0.05)


async def partition_rows(backend: AzureBackend, iid: str) -> list[str]:
    """Row keys of an instance's partition in the History table."""
    rows = backend.history.query_entities("PartitionKey eq @pk", parameters={"pk": iid}, select=["RowKey"])
    return [e["RowKey"] async for e in rows]


async def leftovers(backend: AzureBackend, iids: list[str], timeout: float) -> list[str]:
    """Inbox and outbox rows still there after ``timeout`` seconds (completed instances leave none)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [
            f"{iid}/{key}"
            for iid in iids
            for key in await partition_rows(backend, iid)
            if key.startswith(("i-", "o-"))
        ]
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.25)
