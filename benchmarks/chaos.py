"""Chaos soak: mixed orchestrations on several worker processes while workers die and storage stops.

Starts a private Azurite (its own data folder) and a fresh task hub, then ``--workers`` processes of
``python -m durable_ext.host.worker APP`` (``tests/azure/procs.py``'s ``WorkerProcess``) on a copy of
``tests/apps/chaos`` (sequences, fan-out/fan-in, timers, an external event racing a timer, a timer
racing an event that never comes, sub-orchestrations, a ``counter`` entity signalled from
orchestrations). Over ``--duration`` seconds it starts ``--instances`` instances at a steady pace
through the durable client (and raises the ``Go`` events), and meanwhile:

- every 5-15 s (``--kill-every``) SIGKILLs a random worker process, by the pid of the process it
  started, and starts a fresh one in its place at once;
- ``--storage-stops`` times it stops Azurite with SIGTERM (``Azurite.stop``: it saves its data on
  SIGTERM; a SIGKILL would lose the writes of its last ~5 s, which no engine can survive) and
  starts it again on the same ports and data folder 3-6 s later. The soak's own client calls wait
  while storage is down (a client call that fails cannot tell whether it was applied: that
  ambiguity is the client API's, not the workers'); the workers get no such help.

The chaos stops at the end of ``--duration``; the soak then waits for every instance and checks:

- every instance (and each sub-orchestration) Completed with its expected output;
- each ``counter`` entity applied every signal exactly once (its state counts each signal by the
  id of the instance that sent it) and its total is exact;
- no history holds a duplicated completion (two TaskCompleted/TaskFailed for one TaskScheduledId,
  two TimerFired for one TimerId, ...: ``procs.history_problems``; the one open task it allows is
  the timer that ``race_event`` cancels);
- no inbox (``i-``) or outbox (``o-``) row is left in any instance's History partition (after
  waiting two sweep periods for the repair sweep to finish re-dispatches);
- every worker process imported ``durable_ext`` from this checkout; every storage stop was clean.

It also reports, without failing on them, duplicate activity executions, each traced to a killed
process: the app logs every activity run with its pid, start and end; a duplicate is explained when
an earlier run of that activity was in a process killed mid-run, or killed after the run ended but
before its result was committed (the commit time of each result is the storage Timestamp of the
history row that holds it). And how long recovery took:

- ``lost_activity_recovery_*``: a kill stalls an instance when one of its activity runs died with
  the killed process (killed mid-run, or finished but run again later because its result was
  lost); the time runs from the kill to the commit of the last such result;
- ``held_work_recovery_*``: a kill stalls an instance when the killed process committed its latest
  step (so it held the follow-up work in-process: activities, timers, messages it sent), and the
  instance was not finished; the time runs from the kill to the instance's next commit (it
  includes the app's own waits, timers of up to 5 s, and children still running);
- ``storage_back_to_first_commit_s``: from Azurite answering again to the first history commit;
- ``last_disruption_to_all_done_s``: from the last kill or storage restart to the last commit of
  any instance: the slowest recovery of anything, including leased queue messages.

Timeouts: the full run uses the defaults, so work a killed process held comes back once its
lease has run out (30 s, renewed every 10 s) and a sweep (every 10 s) has taken it over, and a
queue message it was handling when its lease (30 s) runs out. ``--quick`` uses ``--timeouts
short`` so that it fits in about two minutes: a 5 s lease, a sweep every 2 s, and the local
pollers' maxQueuePollingInterval 2 s.

Figures are ``name: value`` lines (details as ``#`` comments); the last line is ``PASS`` or
``FAIL <reasons>`` (exit 1). The run folder (Azurite data, app copy, worker logs, the activity
log) is removed after a PASS unless ``--log-dir`` names it, and kept after a FAIL.

Usage: ``python benchmarks/chaos.py [--instances 1000] [--duration 600] [--workers 3]
[--kill-every 5-15] [--storage-stops 2] [--timeouts default|short] [--finish-timeout S]
[--seed N] [--log-dir DIR]``; ``--quick`` is 42 instances over 40 s, one storage stop, short
timeouts. Run it from anywhere: it works in the checkout it lives in, and its workers import
``durable_ext`` from there too.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# benchmarks/azure.py beside this file must not shadow the ``azure`` namespace package
with contextlib.suppress(ValueError):
    sys.path.remove(str(Path(__file__).resolve().parent))
APP_SRC = ROOT / "tests" / "apps" / "chaos"
sys.path.insert(0, str(ROOT / "tests" / "azure"))  # procs: WorkerProcess and the history checks
sys.path.insert(0, str(APP_SRC))

import orjson  # noqa: E402
from chaos_load import (  # noqa: E402
    COUNTERS,
    EVENT,
    activity_keys,
    child_output,
    children,
    entity_signals,
    expected,
    go_data,
    plan,
)
from procs import WorkerProcess, history_problems, leftovers  # noqa: E402

import durable_ext  # noqa: E402
from benchmarks.fhost import format_value, percentile, verdict  # noqa: E402
from durable_ext import EntityId, InstanceAlreadyExistsError  # noqa: E402
from durable_ext import OrchestrationRuntimeStatus as Status  # noqa: E402
from durable_ext.backends.azure.backend import AzureBackend  # noqa: E402
from durable_ext.backends.azure.connection import resolve_connection  # noqa: E402
from durable_ext.backends.azure.leases import LEASE  # noqa: E402
from durable_ext.client import DurableOrchestrationClient  # noqa: E402
from durable_ext.config import DurableTaskOptions  # noqa: E402
from durable_ext.core.history import EventType  # noqa: E402
from durable_ext.host.azurite import Azurite  # noqa: E402
from durable_ext.host.worker import REPAIR_INTERVAL  # noqa: E402

T = TypeVar("T")

CALL_TIMEOUT_S = 60.0  # one client call, its retries included
CALL_ATTEMPTS = 5
GATE_TIMEOUT_S = 180.0  # a client call waits this long at most for storage to come back
WORKER_READY_S = 60.0
OUTAGE_S = (3.0, 6.0)
CONCURRENT_CALLS = 8
TERMINAL = [s for s in Status if s.is_terminal]
#: an error line of a worker's log (the app puts the time first)
LEVEL = re.compile(r"^(?:\d+\.\d+ )?(?:ERROR|CRITICAL):")
#: a committed orchestration step, with the time the app's log format adds
STEP = re.compile(r"^(\d+\.\d+) INFO:durable_ext\.orchestration:orchestration '[^']*' (\S+): ")
#: Azurite's log lines once a service has closed its database (after SIGTERM): the data is saved.
CLOSED = ("Azurite Queue service successfully closed", "Azurite Table service successfully closed")


class SoakError(Exception):
    """The soak could not go on (a call kept failing, a worker never came up)."""


@dataclass(frozen=True)
class Profile:
    """Recovery timeouts: the durable defaults, or short ones that fit ``--quick`` in two minutes."""

    name: str
    storage_provider: dict[str, str]
    lease_s: float | None  # None: the worker's default
    repair_interval_s: float | None
    finish_timeout_s: float  # after the chaos stops, for every instance to finish

    @property
    def takeover_s(self) -> float:
        """How long a dead worker's work may wait: its lease plus a sweep."""
        lease = self.lease_s if self.lease_s is not None else LEASE.total_seconds()
        sweep = (
            self.repair_interval_s if self.repair_interval_s is not None else REPAIR_INTERVAL.total_seconds()
        )
        return lease + sweep

    def host_json(self, hub: str) -> dict[str, Any]:
        durable: dict[str, Any] = {"hubName": hub}
        if self.storage_provider:
            durable["storageProvider"] = dict(self.storage_provider)
        return {"version": "2.0", "extensions": {"durableTask": durable}}


PROFILES = {
    # a dead worker's work: its 30 s lease plus a sweep (every 10 s); its queue messages: 30 s
    "default": Profile("default", {}, None, None, 600.0),
    "short": Profile("short", {"maxQueuePollingInterval": "00:00:02"}, 5.0, 2.0, 150.0),
}


@dataclass
class Kill:
    """One SIGKILL of a worker process."""

    at: float
    pid: int
    name: str


@dataclass
class Outage:
    """One stop and restart of Azurite."""

    down_at: float
    up_at: float = 0.0
    clean: bool = False


@dataclass
class Run:
    """One run of the ``work`` activity, from the app's log (``end`` is None: it never finished)."""

    key: str
    pid: int
    start: float
    end: float | None = None


@dataclass
class Stall:
    """An instance stalled by a kill (``keys``: its activities whose runs died with the process)."""

    kill: Kill
    instance: str
    keys: list[str] = field(default_factory=list)
    recovered_at: float | None = None


# ------------------------------------------------------------------------ processes


class Workers:
    """The worker processes of one soak, in slots; each killed or stopped by the pid it started."""

    def __init__(self, app_dir: Path, connection_string: str, profile: Profile, count: int) -> None:
        self.app_dir = app_dir
        self.connection_string = connection_string
        self.profile = profile
        self.slots: list[WorkerProcess] = []
        self.every: list[WorkerProcess] = []  # every process started, for the logs and the final stop
        self.killed: set[int] = set()
        self.unexpected: list[str] = []
        self.exited: set[int] = set()  # ended on their own (noted in ``unexpected``)
        for slot in range(count):
            self.slots.append(self._start(slot))

    def _start(self, slot: int) -> WorkerProcess:
        process = WorkerProcess(
            self.app_dir,
            self.connection_string,
            lease=self.profile.lease_s,
            repair_interval=self.profile.repair_interval_s,
            name=f"w{slot}-{len(self.every)}",
        )
        self.every.append(process)
        return process

    def kill(self, slot: int) -> Kill:
        """SIGKILL the process in ``slot`` and start a fresh one there."""
        process = self.slots[slot]
        at = time.time()
        self.killed.add(process.pid)
        process.kill()
        process.stop()  # it is gone: this only closes its log
        self.slots[slot] = self._start(slot)
        return Kill(at, process.pid, process.log_path.stem)

    def check(self) -> None:
        """Restart (and note) any worker that ended although nobody killed it."""
        for slot, process in enumerate(self.slots):
            code = process.process.poll()
            if code is not None and process.pid not in self.killed:
                self.exited.add(process.pid)
                last = [line for line in process.log_tail(2000).splitlines() if line.strip()][-1:]
                self.unexpected.append(
                    f"worker {process.log_path.stem} (pid {process.pid}) exited with {code} on its own, "
                    f"restarted; its log ends: {' '.join(last)[:200]}"
                )
                print(f"# {self.unexpected[-1]}", flush=True)
                process.stop()
                self.slots[slot] = self._start(slot)

    async def ready(self, timeout: float) -> None:
        """Wait until every current worker logged that it serves the hub."""
        deadline = time.monotonic() + timeout
        for process in self.slots:
            while "serving hub" not in process.log_path.read_text(errors="replace"):
                self.check()
                if time.monotonic() > deadline:
                    raise SoakError(f"worker {process.pid} not serving after {timeout:.0f} s")
                await asyncio.sleep(0.2)

    def stop_all(self) -> list[str]:
        """SIGTERM every live worker once (SIGKILL after a grace); the ones that did not exit with 0."""
        for process in self.every:
            if process.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.process.send_signal(signal.SIGTERM)
        bad: list[str] = []
        for process in self.every:
            try:  # a second SIGTERM could hit a worker whose event loop already gave up its handler
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
            process.stop()  # it has exited: this only closes its log
            code = process.process.returncode
            if process.pid not in self.killed and process.pid not in self.exited and code != 0:
                bad.append(f"{process.log_path.stem} exited with {code} after SIGTERM")
        return bad

    def scan_logs(self) -> tuple[dict[str, int], dict[str, list[tuple[float, int]]]]:
        """Counts in the workers' logs (the sweep's repairs, errors, tracebacks), and each
        orchestration's steps as ``(time, pid)`` from the lines the app put a time on."""
        counts = {"repair_lines": 0, "worker_error_lines": 0, "worker_tracebacks": 0}
        steps: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
        for process in self.every:
            with contextlib.suppress(OSError), open(process.log_path, errors="replace") as log:
                for line in log:
                    counts["repair_lines"] += "repair: " in line
                    counts["worker_error_lines"] += LEVEL.match(line) is not None
                    counts["worker_tracebacks"] += line.startswith("Traceback")
                    step = STEP.match(line)
                    if step is not None:
                        steps[step.group(2)].append((float(step.group(1)), process.pid))
        for found in steps.values():
            found.sort()
        return counts, steps


class Gate:
    """The soak's own client calls: held while storage is down, and drained before it stops."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.opened.set()
        self.idle = asyncio.Event()
        self.idle.set()
        self.busy = 0

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[None]:
        await asyncio.wait_for(self.opened.wait(), GATE_TIMEOUT_S)
        self.busy += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.busy -= 1
            if not self.busy:
                self.idle.set()

    async def close(self, timeout: float) -> None:
        self.opened.clear()
        await asyncio.wait_for(self.idle.wait(), timeout)

    def open(self) -> None:
        self.opened.set()


# ------------------------------------------------------------------------ the soak


class Soak:
    """One run: load, chaos, drain, checks."""

    def __init__(self, args: argparse.Namespace, azurite: Azurite, workers: Workers, hub: str) -> None:
        self.args = args
        self.azurite = azurite
        self.workers = workers
        self.rng = random.Random(args.seed)
        self.work = plan(args.instances)
        self.options = DurableTaskOptions.from_host_json(workers.profile.host_json(hub), {})
        self.backend: AzureBackend
        self.client: DurableOrchestrationClient
        self.gate = Gate()
        self.calls = asyncio.Semaphore(CONCURRENT_CALLS)
        self.kills: list[Kill] = []
        self.outages: list[Outage] = []
        self.failures: list[str] = []
        self.figures: dict[str, float] = {}
        self.client_retries = 0
        self.t0 = 0.0
        self.chaos_end = 0.0

    def rel(self, t: float) -> str:
        return f"{t - self.t0:.1f} s"

    def figure(self, name: str, value: float) -> None:
        self.figures[name] = value

    # ---- client calls

    async def call(self, what: str, make: Callable[[], Awaitable[T]]) -> T:
        """One client call through the gate, tried again after an error (``CALL_ATTEMPTS`` in all)."""
        for attempt in range(CALL_ATTEMPTS):
            async with self.calls, self.gate.use():
                try:
                    return await asyncio.wait_for(make(), CALL_TIMEOUT_S)
                except Exception as exc:
                    if attempt == CALL_ATTEMPTS - 1:
                        raise SoakError(f"{what} failed {CALL_ATTEMPTS} times, last: {exc!r}") from exc
                    self.client_retries += 1
                    print(
                        f"# {what} failed ({type(exc).__name__}: {str(exc)[:120]}); trying again", flush=True
                    )
            await asyncio.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    async def start_one(self, iid: str, name: str, value: dict[str, Any]) -> None:
        """Start one instance (a retry that finds it created by the failed try is done); raise its event."""

        async def start() -> None:
            with contextlib.suppress(InstanceAlreadyExistsError):  # an earlier try got through
                if await self.client.get_status(iid) is None:
                    await self.client.start_new(name, iid, value)

        await self.call(f"start {iid}", start)
        if name == "race_event":
            await asyncio.sleep(self.rng.uniform(0.2, 2.0))
            # raised again only after an error; a second Go would be buffered and never read
            await self.call(
                f"raise {EVENT} to {iid}", lambda: self.client.raise_event(iid, EVENT, go_data(iid))
            )

    async def load(self) -> None:
        """Start every instance, evenly spread over the duration."""
        spacing = self.args.duration / len(self.work)
        tasks = []
        for n, (iid, (name, value)) in enumerate(self.work.items()):
            delay = self.t0 + n * spacing - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(self.start_one(iid, name, value)))
        await asyncio.gather(*tasks)

    async def done(self) -> set[str]:
        """The top-level instances that reached a terminal status."""
        statuses = await self.call("status query", lambda: self.client.get_status_by(runtime_status=TERMINAL))
        return {s.instance_id for s in statuses if s.instance_id in self.work}

    async def progress(self) -> None:
        """A comment line every 30 s while the load runs."""
        while True:
            await asyncio.sleep(30)
            done = len(await self.done())
            print(f"# {self.rel(time.time())}: {done} of {len(self.work)} done", flush=True)

    # ---- chaos

    async def chaos(self) -> None:
        """Kill a random worker every ``--kill-every`` seconds and stop storage ``--storage-stops`` times."""
        low, high = self.args.kill_every
        stops = self.args.storage_stops
        span = self.args.duration / (stops + 1)
        storage_at = [self.t0 + span * (k + 1) + self.rng.uniform(-0.1, 0.1) * span for k in range(stops)]
        next_kill = self.t0 + self.rng.uniform(low, high)
        while True:
            due = min([next_kill, *storage_at])
            if due >= self.chaos_end:
                break
            if time.time() < due:
                self.workers.check()
                await asyncio.sleep(min(0.5, due - time.time()))
                continue
            if storage_at and storage_at[0] <= next_kill:
                storage_at.pop(0)
                await self.outage()
                next_kill = max(next_kill, time.time() + 2.0)  # not in the same breath as the restart
            else:
                slot = self.rng.randrange(len(self.workers.slots))
                kill = self.workers.kill(slot)
                self.kills.append(kill)
                print(f"# {self.rel(kill.at)}: SIGKILL {kill.name} (pid {kill.pid}), restarted", flush=True)
                next_kill = time.time() + self.rng.uniform(low, high)
        while time.time() < self.chaos_end:
            self.workers.check()
            await asyncio.sleep(min(0.5, max(0.0, self.chaos_end - time.time())))

    async def outage(self) -> None:
        """Stop Azurite with SIGTERM (it saves its data), keep it down a few seconds, start it again."""
        await self.gate.close(CALL_TIMEOUT_S * CALL_ATTEMPTS)
        log_path = self.azurite.data_dir / "azurite.log"
        before = [log_path.read_text(errors="replace").count(line) for line in CLOSED]
        outage = Outage(time.time())
        self.outages.append(outage)
        await asyncio.to_thread(self.azurite.stop, False)
        after = [log_path.read_text(errors="replace").count(line) for line in CLOSED]
        outage.clean = all(a > b for a, b in zip(after, before, strict=True))
        down_for = self.rng.uniform(*OUTAGE_S)
        print(f"# {self.rel(outage.down_at)}: storage stopped (clean: {outage.clean}) for {down_for:.1f} s")
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.azurite.start)
        outage.up_at = time.time()
        self.gate.open()
        print(f"# {self.rel(outage.up_at)}: storage back", flush=True)

    # ---- drain

    async def drain(self) -> float:
        """Wait until every instance is terminal (or the finish timeout); the time it took."""
        began = time.time()
        deadline = began + self.workers.profile.finish_timeout_s
        pending = set(self.work)
        while pending:
            self.workers.check()
            pending -= await self.done()
            if not pending:
                break
            if time.time() > deadline:
                some = sorted(pending)[:8]
                self.failures.append(
                    f"{len(pending)} instances unfinished {self.workers.profile.finish_timeout_s:.0f} s "
                    f"after the chaos stopped, e.g. {some}"
                )
                break
            await asyncio.sleep(2.0)
        return time.time() - began

    # ---- checks

    async def check_instances(self) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
        """Outputs and histories of every instance and child; the histories, and the history problems."""
        histories: dict[str, list[dict[str, Any]]] = {}
        problems: list[str] = []
        wrong: list[str] = []
        limit = asyncio.Semaphore(16)

        async def one(iid: str, want: Any, allow_open_timers: bool) -> None:
            async with limit:
                status = await self.client.get_status(iid)
                events = await self.backend.get_history(iid)
            histories[iid] = events
            if status is None or status.runtime_status != Status.Completed:
                state = status.runtime_status.value if status else "missing"
                wrong.append(f"{iid}: {state} {str(status.output if status else '')[:200]}")
            elif status.output != want:
                wrong.append(f"{iid}: output {status.output!r}, expected {want!r}")
            allowed: set[str] = set()
            if allow_open_timers:  # race_event cancels its timer once the event won: it never fires
                allowed = {
                    f"task {e['EventId']} completed 0 times"
                    for e in events
                    if e["EventType"] == EventType.TimerCreated
                }
            problems.extend(f"{iid}: {p}" for p in history_problems(events) if p not in allowed)

        jobs = []
        for iid, (name, value) in self.work.items():
            jobs.append(one(iid, expected(name, value, iid), name == "race_event"))
            if name == "parent":
                jobs += [one(c, child_output(c), False) for c in children(iid)]
        await asyncio.gather(*jobs)
        self.failures += wrong[:10]
        if len(wrong) > 10:
            self.failures.append(f"... {len(wrong)} instances wrong in all")
        self.figure("wrong_outputs", len(wrong))
        self.figure("children", len(histories) - len(self.work))
        self.figure("history_problems", len(problems))
        self.failures += problems[:10]
        for line in problems[10:30]:
            print(f"# history problem: {line}")
        return histories, problems

    async def check_entities(self) -> None:
        """Each counter applied each signal exactly once, and its total is the sum of the amounts."""
        signals = entity_signals(self.work)
        bad = 0
        for key in COUNTERS:
            want = signals.get(key, {})
            state = await self.client.read_entity_state(EntityId("counter", key))
            got = state.entity_state if state.entity_exists else {"total": 0, "seen": {}}
            seen: dict[str, int] = got.get("seen", {})
            for iid in sorted(set(want) | set(seen)):
                if seen.get(iid, 0) != 1:
                    bad += 1
                    what = "never applied" if iid not in seen else f"applied {seen[iid]} times"
                    self.failures.append(f"counter/{key}: signal from {iid} {what}")
            if got.get("total") != sum(want.values()):
                self.failures.append(
                    f"counter/{key}: total {got.get('total')}, expected {sum(want.values())}"
                )
        self.figure("entity_signals", sum(len(s) for s in signals.values()))
        self.figure("entity_signal_problems", bad)

    async def check_leftovers(self, instances: list[str]) -> None:
        """No inbox or outbox rows once the sweep has had time to finish re-dispatches."""
        entities = [str(EntityId("counter", key)) for key in COUNTERS]
        profile = self.workers.profile
        wait = 2 * profile.takeover_s + 30
        left = await leftovers(self.backend, instances + entities, wait)
        self.figure("inbox_outbox_rows_left", len(left))
        if left:
            self.failures.append(f"{len(left)} inbox/outbox rows left after {wait:.0f} s: {left[:8]}")

    async def commit_times(self) -> dict[str, list[tuple[int, float]]]:
        """Instance id -> [(index of the row's first event, storage Timestamp of the row)], sorted."""
        out: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
        rows = self.backend.history.query_entities(
            "RowKey ge 'h-' and RowKey lt 'h.'", select=["PartitionKey", "RowKey", "Timestamp"]
        )
        async for row in rows:
            stamp = row.metadata.get("timestamp")
            if stamp is not None:
                out[row["PartitionKey"]].append((int(row["RowKey"].rsplit("-", 1)[1]), stamp.timestamp()))
        for commits in out.values():
            commits.sort()
        return out

    # ---- the whole run

    async def run(self) -> None:
        connection = resolve_connection({"AzureWebJobsStorage": self.azurite.connection_string})
        self.backend = AzureBackend(connection, self.options)
        self.client = DurableOrchestrationClient(self.backend)
        try:
            await self.backend.create_task_hub()
            await self.workers.ready(WORKER_READY_S)
            self.t0 = time.time()
            self.chaos_end = self.t0 + self.args.duration
            print(f"# load and chaos for {self.args.duration:.0f} s from now", flush=True)
            progress = asyncio.ensure_future(self.progress())
            try:
                await asyncio.gather(self.load(), self.chaos())
            finally:
                progress.cancel()
            print(
                f"# {self.rel(time.time())}: chaos over, {len(self.kills)} kills; waiting for the rest",
                flush=True,
            )
            self.figure("drain_s", await self.drain())
            await self.checks()
        finally:
            await self.backend.close()

    async def checks(self) -> None:
        histories, _ = await self.check_instances()
        await self.check_entities()
        await self.check_leftovers(list(histories))
        commits = await self.commit_times()
        runs = read_runs(self.workers.app_dir / "activity-runs.log")
        completion = completion_commits(histories, commits)
        self.check_runs(runs)
        self.report_duplicates(runs, completion)
        _, steps = self.workers.scan_logs()
        self.report_recovery(runs, completion, commits, steps, set(histories))
        self.report_storage(commits, set(histories))

    def check_runs(self, runs: dict[str, list[Run]]) -> None:
        """Every expected activity ran; every worker ran this checkout's durable_ext."""
        wanted = {k for iid, (name, value) in self.work.items() for k in activity_keys(name, value, iid)}
        missing = wanted - set(runs)
        self.figure("activity_keys", len(wanted))
        self.figure("activity_runs", sum(len(r) for r in runs.values()))
        if missing:
            self.failures.append(f"{len(missing)} activities never ran, e.g. {sorted(missing)[:5]}")
        here = str((ROOT / "durable_ext").resolve())
        imports = read_imports(self.workers.app_dir / "activity-runs.log")
        elsewhere = {pid: path for pid, path in imports.items() if path != here}
        self.figure("worker_processes", len(self.workers.every))
        self.figure("worker_processes_on_this_checkout", len(imports) - len(elsewhere))
        silent = {p.pid for p in self.workers.slots} - set(imports)  # running now, yet never loaded the app
        if elsewhere or silent:
            self.failures.append(
                f"workers that ran durable_ext from outside {here}: {elsewhere}; "
                f"running workers that never logged loading the app: {sorted(silent)}"
            )

    def report_duplicates(self, runs: dict[str, list[Run]], completion: dict[str, float]) -> None:
        """Count duplicate runs and trace each to a killed process (figures only, never a failure)."""
        killed = {k.pid: k.at for k in self.kills}
        mid = after = unexplained = total = 0
        for key, key_runs in sorted(runs.items()):
            extra = len(key_runs) - 1
            if extra <= 0:
                continue
            total += extra
            lost_mid = lost_after = 0
            for run in key_runs:
                at = killed.get(run.pid)
                if at is None or run.start > at:
                    continue
                if run.end is None or run.end > at:
                    lost_mid += 1
                elif completion.get(key, 0.0) > at:  # finished, but its result was committed after the kill
                    lost_after += 1
            explained_mid = min(extra, lost_mid)
            explained_after = min(extra - explained_mid, lost_after)
            mid += explained_mid
            after += explained_after
            if extra > explained_mid + explained_after:
                unexplained += extra - explained_mid - explained_after
                shown = [
                    (r.pid, round(r.start - self.t0, 2), None if r.end is None else round(r.end - self.t0, 2))
                    for r in key_runs
                ]
                done_at = completion.get(key)
                print(
                    f"# unexplained duplicate: {key} runs (pid, start, end) {shown}, result committed at "
                    f"{None if done_at is None else round(done_at - self.t0, 2)}"
                )
        self.figure("duplicate_runs", total)
        self.figure("duplicate_runs_killed_mid_run", mid)
        self.figure("duplicate_runs_killed_before_commit", after)
        self.figure("duplicate_runs_unexplained", unexplained)

    def report_recovery(
        self,
        runs: dict[str, list[Run]],
        completion: dict[str, float],
        commits: dict[str, list[tuple[int, float]]],
        steps: dict[str, list[tuple[float, int]]],
        instances: set[str],
    ) -> None:
        """Per kill, the instances it stalled and how long they took to move again (figures only)."""
        lost: list[Stall] = []  # an activity run died with the process
        held: list[Stall] = []  # the killed process committed the instance's latest step
        for kill in self.kills:
            by_instance: dict[str, Stall] = {}
            for key, key_runs in runs.items():
                later = any(r.start > kill.at for r in key_runs)
                for run in key_runs:
                    if run.pid != kill.pid or run.start > kill.at:
                        continue
                    if run.end is None or run.end > kill.at or (later and completion.get(key, 0.0) > kill.at):
                        owner = key.split("|", 1)[0]
                        by_instance.setdefault(owner, Stall(kill, owner)).keys.append(key)
            for stall in by_instance.values():
                times = [completion.get(k) for k in stall.keys]
                if all(t is not None for t in times):
                    stall.recovered_at = max(t for t in times if t is not None)
                lost.append(stall)
            for iid in sorted(instances):
                rows = commits.get(iid, [])
                before = [pid for at, pid in steps.get(iid, []) if at <= kill.at]
                if not rows or not before or before[-1] != kill.pid or rows[-1][1] <= kill.at:
                    continue
                stall = Stall(kill, iid)
                stall.recovered_at = next(t for _, t in rows if t > kill.at)
                held.append(stall)
        self.figure("kills", len(self.kills))
        for name, stalls in (("lost_activity", lost), ("held_work", held)):
            took = [s.recovered_at - s.kill.at for s in stalls if s.recovered_at is not None]
            self.figure(f"{name}_stalls", len(stalls))
            if took:
                self.figure(f"{name}_recovery_p50_s", percentile(took, 50))
                self.figure(f"{name}_recovery_max_s", max(took))
        self.figure("lost_activities", sum(len(s.keys) for s in lost))
        merged: dict[tuple[int, str], list[Stall]] = collections.defaultdict(list)
        for stall in lost + held:
            merged[(id(stall.kill), stall.instance)].append(stall)

        def took(stalls: list[Stall]) -> float:
            times = [s.recovered_at - s.kill.at for s in stalls if s.recovered_at is not None]
            return max(times) if len(times) == len(stalls) else float("inf")

        for stalls in sorted(merged.values(), key=took, reverse=True)[:12]:
            kill, keys = stalls[0].kill, [k for s in stalls for k in s.keys]
            why = [f"{len(keys)} lost activities"] if keys else []
            why += ["its latest step committed there"] if any(s in held for s in stalls) else []
            print(
                f"# kill of {kill.name} at {self.rel(kill.at)} stalled {stalls[0].instance} "
                f"({', '.join(why)}): moved again after {took(stalls):.1f} s"
            )

    def report_storage(self, commits: dict[str, list[tuple[int, float]]], instances: set[str]) -> None:
        """Storage stops, the first commit after each, and the tail after the last disruption."""
        self.figure("storage_stops", len(self.outages))
        self.figure("storage_clean_stops", sum(o.clean for o in self.outages))
        for n, outage in enumerate(self.outages):
            if not outage.clean:
                self.failures.append(
                    f"storage stop {n + 1} was not clean (no 'successfully closed' in its log)"
                )
        everything = sorted(t for rows in commits.values() for _, t in rows)
        back = []
        for outage in self.outages:
            first = next((t for t in everything if t >= outage.up_at), None)
            if first is not None:
                back.append(first - outage.up_at)
        if back:
            self.figure("storage_down_max_s", max(o.up_at - o.down_at for o in self.outages))
            self.figure("storage_back_to_first_commit_s", max(back))
        last_commit = max((rows[-1][1] for iid, rows in commits.items() if iid in instances), default=0.0)
        disruptions = [k.at for k in self.kills] + [o.up_at for o in self.outages]
        if last_commit:
            self.figure("all_done_s", last_commit - self.t0)
            if disruptions:
                self.figure("last_disruption_to_all_done_s", max(0.0, last_commit - max(disruptions)))
        gaps = [
            (b - a, iid)
            for iid, rows in commits.items()
            if iid in instances
            for (_, a), (_, b) in itertools.pairwise(rows)
        ]
        if gaps:
            gap, iid = max(gaps)
            self.figure("longest_commit_gap_s", gap)
            print(f"# longest gap between two commits of one instance: {gap:.1f} s ({iid})")


# ------------------------------------------------------------------------ logs and histories


def read_runs(path: Path) -> dict[str, list[Run]]:
    """Activity key -> its runs, from the app's ``S``/``E`` lines (an ``E`` ends its pid's open run)."""
    runs: dict[str, list[Run]] = collections.defaultdict(list)
    open_runs: dict[tuple[str, int], Run] = {}
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as log:
        for line in log:
            fields = line.split()
            if len(fields) != 4 or fields[0] not in ("S", "E"):
                continue
            kind, key, pid, at = fields[0], fields[1], int(fields[2]), float(fields[3])
            if kind == "S":
                run = Run(key, pid, at)
                runs[key].append(run)
                open_runs[(key, pid)] = run
            elif (key, pid) in open_runs:
                open_runs.pop((key, pid)).end = at
    return runs


def read_imports(path: Path) -> dict[int, str]:
    """Worker pid -> the folder its ``durable_ext`` came from (the app's ``W`` lines)."""
    found: dict[int, str] = {}
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as log:
        for line in log:
            fields = line.split(maxsplit=3)
            if len(fields) == 4 and fields[0] == "W":
                found[int(fields[1])] = fields[3].strip()
    return found


def completion_commits(
    histories: dict[str, list[dict[str, Any]]], commits: dict[str, list[tuple[int, float]]]
) -> dict[str, float]:
    """Activity key -> when its first completion was committed (the Timestamp of the row holding it)."""
    out: dict[str, float] = {}
    for iid, events in histories.items():
        rows = commits.get(iid, [])
        keys: dict[int, str] = {}
        for index, event in enumerate(events):
            kind = event["EventType"]
            if kind == EventType.TaskScheduled:
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    keys[event["EventId"]] = orjson.loads(event["Input"])["key"]
            elif kind in (EventType.TaskCompleted, EventType.TaskFailed):
                key = keys.get(event.get("TaskScheduledId", -1))
                stamps = [t for first, t in rows if first <= index]
                if key is not None and key not in out and stamps:
                    out[key] = stamps[-1]
    return out


# ------------------------------------------------------------------------ main


def write_app(folder: Path, profile: Profile, hub: str) -> Path:
    """A copy of ``tests/apps/chaos`` with a host.json naming the hub and the profile's timeouts."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("function_app.py", "chaos_load.py"):
        shutil.copyfile(APP_SRC / name, folder / name)
    (folder / "host.json").write_text(json.dumps(profile.host_json(hub), indent=2))
    return folder


def span(text: str) -> tuple[float, float]:
    """``A-B`` seconds."""
    low, _, high = text.partition("-")
    pair = (float(low), float(high or low))
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"expected A-B seconds with 0 < A <= B, got {text!r}")
    return pair


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--instances", type=int, help="mixed instances (default 1000; 42 with --quick)")
    parser.add_argument(
        "--duration", type=float, help="seconds of load and chaos (default 600; 40 with --quick)"
    )
    parser.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    parser.add_argument(
        "--kill-every", type=span, default=(5.0, 15.0), help="A-B seconds between kills (5-15)"
    )
    parser.add_argument("--storage-stops", type=int, help="storage stops (default 2; 1 with --quick)")
    parser.add_argument(
        "--timeouts", choices=sorted(PROFILES), help="recovery timeouts (default; short with --quick)"
    )
    parser.add_argument(
        "--finish-timeout", type=float, help="seconds after the chaos for every instance to finish"
    )
    parser.add_argument("--seed", type=int, help="random seed (default: from the clock, printed)")
    parser.add_argument(
        "--quick", action="store_true", help="42 instances over 40 s, 1 storage stop, short timeouts"
    )
    parser.add_argument(
        "--log-dir", help="the run folder, kept (default: a temporary folder, removed after a PASS)"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.instances = args.instances or (42 if quick else 1000)
    args.duration = args.duration or (40.0 if quick else 600.0)
    args.storage_stops = args.storage_stops if args.storage_stops is not None else (1 if quick else 2)
    args.timeouts = args.timeouts or ("short" if quick else "default")
    args.seed = args.seed if args.seed is not None else int(time.time())
    if args.instances < len(plan(7)) or not 1 <= args.workers <= 8 or args.duration < 10:
        parser.error("--instances takes at least 7, --workers 1 to 8, --duration at least 10")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    profile = PROFILES[args.timeouts]
    if args.finish_timeout:
        profile = dataclasses.replace(profile, finish_timeout_s=args.finish_timeout)
    os.chdir(ROOT)  # ``python -m`` puts the working folder first on the workers' sys.path
    run_dir = Path(args.log_dir).resolve() if args.log_dir else Path(tempfile.mkdtemp(prefix="chaos-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    hub = f"Chaos{uuid.uuid4().hex[:10]}"
    here = Path(durable_ext.__file__).parent
    print(f"# run folder {run_dir}, hub {hub}, seed {args.seed}, durable_ext from {here}")
    print(
        f"# {args.instances} instances over {args.duration:.0f} s on {args.workers} workers; a kill every "
        f"{args.kill_every[0]:g}-{args.kill_every[1]:g} s, {args.storage_stops} storage stops; "
        f"timeouts {profile.name} {profile.storage_provider or '(durable defaults)'}, lease "
        f"{profile.lease_s or 'default'} s, sweep every {profile.repair_interval_s or 'default'} s",
        flush=True,
    )
    signal.signal(signal.SIGTERM, _interrupt)  # so that the finally below stops what we started
    began = time.monotonic()
    failures: list[str] = []
    soak: Soak | None = None
    workers: Workers | None = None
    azurite = Azurite(data_dir=run_dir / "azurite")
    try:
        azurite.start()
        app_dir = write_app(run_dir / "app", profile, hub)
        workers = Workers(app_dir, azurite.connection_string, profile, args.workers)
        soak = Soak(args, azurite, workers, hub)
        asyncio.run(soak.run())
    except Exception as exc:  # reported as the FAIL line; Ctrl-C and SIGTERM still go through finally
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        unclean = workers.stop_all() if workers is not None else []
        azurite.stop(remove_data=False)
    figures = soak.figures if soak is not None else {}
    if soak is not None:
        failures = soak.failures + failures
        figures["instances"] = args.instances
        figures["client_retries"] = soak.client_retries
    if workers is not None:  # robustness, reported; the FAIL criteria are about state
        figures.update(workers.scan_logs()[0])
        figures["worker_exits_on_their_own"] = len(workers.unexpected)
        figures["worker_unclean_stops"] = len(unclean)
        for line in unclean:  # the exits on their own were printed as they happened
            print(f"# {line}")
    for name, value in figures.items():
        print(f"{name}: {format_value(value)}")
    print(f"run_s: {format_value(time.monotonic() - began)}")
    if failures:
        print(f"# run folder kept: {run_dir}")
    elif not args.log_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return verdict(failures)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    sys.exit(main())
