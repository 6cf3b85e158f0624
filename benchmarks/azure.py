"""Azure Storage benchmark: one worker process on Azurite, driven by a client in this process.

Starts its own Azurite, writes a small function app (a sequence of N
activities, a fan-out of N activities gathered with ``task_all``, a
3-activity sequence; trivial activities) with ``partitionCount`` 4 and a
unique hub name into a temporary folder, starts ONE worker process
(``python -m durable_ext.host.worker APP_DIR``) on it and measures, as seen by a
client with its own connection here:

- ``sequential_activities_per_s``: one instance calling N activities in turn;
- ``fanout_activities_per_s``: one instance fanning out to N activities;
- ``instances_per_s``: N instances of the 3-activity sequence started at once;
- ``storage_ops_per_activity``: the worker's table+queue+blob calls in the
  sequential scenario per activity (from the stats file the worker writes:
  the client's own calls, status polls included, are not counted);
- ``entity_ops_per_s``: N signals (``add 1``) sent through the client to one
  entity, at most ``SIGNALS_IN_FLIGHT`` at a time, from the first send until
  the entity's state reads N (all applied);
- ``idle_storage_calls_per_min``: the idle worker's calls per minute (in
  ``--quick`` over 10 s soon after work, so the pollers' backoff has not
  reached its 30 s ceiling and the figure is higher than a settled worker's).

Each scenario also prints its time, engine steps and conflicts, receive
calls, the CPU seconds of the worker, Azurite and this process, and
``*_pickup_s``: when the client first saw the instance past Pending. Before
each scenario every partition is kept busy with 3-activity instances until
each answers within half a second: an idle control queue polls ever more
slowly (up to ``maxQueuePollingInterval``), and a client in another process
cannot wake it, so without this the pickup of the first message would be luck.

Usage: ``python benchmarks/azure.py [--quick] [--only sequential,fanout,...]``.
Every figure is printed as a ``name: value`` line, targets as ``# target``
lines. Exits non-zero only when an instance does not complete with the right
output, never because of a timing. ``DURABLE_EXT_BENCH_PROFILE=FILE`` runs the
worker under cProfile and writes its profile to FILE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# This file is named azure.py: its folder must not shadow the ``azure`` namespace package
# (it is on sys.path when this file runs as a script, not when it is imported as benchmarks.azure).
with contextlib.suppress(ValueError):
    sys.path.remove(str(Path(__file__).resolve().parent))

from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.connection import SERVICES, resolve_connection
from durable_ext.client import DurableOrchestrationClient, DurableOrchestrationStatus
from durable_ext.config import DurableTaskOptions, partition_of
from durable_ext.core.entities import EntityId
from durable_ext.core.status import OrchestrationRuntimeStatus as Status
from durable_ext.host.azurite import Azurite

ROOT = Path(__file__).resolve().parents[1]
PARTITIONS = 4
POLL_S = 0.05  # client status polls of one instance
POLL_MANY_S = 0.1  # client status queries of many instances
TRAILING_S = 0.3  # after completion: let the worker finish deletes before the stats are read
HOT_S = 0.5  # warm-up: a partition is hot once a 3-activity instance there takes less than this
STATS_INTERVAL_S = 0.1  # how often the worker writes its stats file

TARGETS = [
    ("sequential_activities_per_s", ">=", 40),
    ("fanout_activities_per_s", ">=", 250),
    ("instances_per_s", ">=", 20),
    ("storage_ops_per_activity", "<=", 5),
    ("entity_ops_per_s", ">=", 200),
    ("idle_storage_calls_per_min", "<=", 20),
]
SIGNALS_IN_FLIGHT = 32  # the entity scenario's client sends at most this many signals at once

FUNCTION_APP = '''\
"""Benchmark function app (written by benchmarks/azure.py)."""

import durable_ext as df

app = df.DurableApp()


@app.orchestration_trigger(context_name="context")
def bench_sequence(context: df.DurableOrchestrationContext):
    """Call bench_double for 0..N-1, one after the other; return the sum."""
    total = 0
    for i in range(context.get_input()):
        total += yield context.call_activity("bench_double", i)
    return total


@app.orchestration_trigger(context_name="context")
def bench_fan_out(context: df.DurableOrchestrationContext):
    """Call bench_double for 0..N-1 at once and gather with task_all; return the sum."""
    tasks = [context.call_activity("bench_double", i) for i in range(context.get_input())]
    results = yield context.task_all(tasks)
    return sum(results)


@app.orchestration_trigger(context_name="context")
def bench_three(context: df.DurableOrchestrationContext):
    """Add one to the input three times, one activity after the other."""
    value = context.get_input()
    for _ in range(3):
        value = yield context.call_activity("bench_increment", value)
    return value


@app.entity_trigger(context_name="context")
def bench_counter(context: df.DurableEntityContext):
    """A counter: ``add`` its input."""
    context.set_state(context.get_state(lambda: 0) + context.get_input())


@app.activity_trigger(input_name="n")
def bench_double(n: int) -> int:
    """Twice n."""
    return 2 * n


@app.activity_trigger(input_name="n")
def bench_increment(n: int) -> int:
    """n plus one."""
    return n + 1
'''


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is and how long the idle worker is watched."""

    sequential: int
    fan_out: int
    instances: int
    entity_ops: int
    idle_settle_s: float
    idle_window_s: float
    timeout_s: float


FULL = Sizes(
    sequential=200,
    fan_out=1000,
    instances=100,
    entity_ops=1000,
    idle_settle_s=10,
    idle_window_s=60,
    timeout_s=300,
)
QUICK = Sizes(
    sequential=30, fan_out=100, instances=20, entity_ops=200, idle_settle_s=2, idle_window_s=10, timeout_s=60
)


@dataclass
class Snapshot:
    """What the worker's stats file said at one moment, with the CPU time of each process."""

    stats: dict[str, Any]
    cpu: dict[str, float]


@dataclass
class Window:
    """Two snapshots around a measured scenario and its elapsed time."""

    before: Snapshot
    after: Snapshot
    elapsed: float

    def calls(self) -> dict[str, int]:
        """The worker's storage calls by service in the window."""
        old, new = self.before.stats["storage"], self.after.stats["storage"]
        return {s: new.get(s, 0) - old.get(s, 0) for s in SERVICES}

    def calls_total(self) -> int:
        """The worker's storage calls in the window, all services."""
        return sum(self.calls().values())

    def engine(self, counter: str) -> int:
        """How much an engine counter (steps, replays, conflicts, activities...) grew."""
        return self.after.stats["engine"].get(counter, 0) - self.before.stats["engine"].get(counter, 0)

    def polls(self) -> int:
        """Receive calls of all the worker's queue runners in the window."""
        old = self.before.stats.get("runners", {})
        return sum(
            stats.get("polls", 0) - old.get(name, {}).get("polls", 0)
            for name, stats in self.after.stats.get("runners", {}).items()
        )


#: Figures printed first in each scenario's block (the targets and their breakdowns).
HEADLINE = tuple(name for name, _, _ in TARGETS)


class CheckFailed(Exception):
    """An instance did not complete, or completed with the wrong output."""


def format_value(value: float) -> str:
    """Integers as such, other figures with four significant digits."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process and its reaped children (Linux ``/proc``; else None)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def ids_by_partition(prefix: str, rounds: int = 1) -> list[list[str]]:
    """``rounds`` instance ids for each control-queue partition, all starting with ``prefix``."""
    found: list[list[str]] = [[] for _ in range(PARTITIONS)]
    n = 0
    while any(len(ids) < rounds for ids in found):
        iid = f"{prefix}{n}"
        ids = found[partition_of(iid, PARTITIONS)]
        if len(ids) < rounds:
            ids.append(iid)
        n += 1
    return found


class Bench:
    """Azurite, the app folder, the worker process and the client, with their cleanup."""

    def __init__(self, sizes: Sizes) -> None:
        self.sizes = sizes
        self.folder = Path(tempfile.mkdtemp(prefix="durable-ext-bench-"))
        self.stats_path = self.folder / "worker-stats.json"
        self.hub = f"Bench{os.getpid()}T{int(time.time()) % 100000}"
        self.azurite: Azurite | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log: Any = None
        self.backend: AzureBackend | None = None
        self.client: DurableOrchestrationClient | None = None
        self.figures: dict[str, float] = {}
        self.errors: list[str] = []
        self._warmups = 0

    # ------------------------------------------------------------ set-up

    def write_app(self) -> None:
        """function_app.py and host.json of the benchmark app."""
        (self.folder / "function_app.py").write_text(FUNCTION_APP)
        host = {
            "version": "2.0",
            "extensions": {
                "durableTask": {"hubName": self.hub, "storageProvider": {"partitionCount": PARTITIONS}}
            },
        }
        (self.folder / "host.json").write_text(json.dumps(host, indent=2))

    def worker_env(self) -> dict[str, str]:
        """The environment of the worker: this one, plus storage, stats file and import path."""
        assert self.azurite is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("AzureFunctionsJobHost__")}
        env.pop("DURABLE_EXT_FAULT", None)
        env["AzureWebJobsStorage"] = self.azurite.connection_string
        env["DURABLE_EXT_STATS_FILE"] = str(self.stats_path)
        env["DURABLE_EXT_STATS_INTERVAL"] = str(STATS_INTERVAL_S)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    async def start(self) -> None:
        """Azurite, the app, the worker (ready once it wrote stats) and the client."""
        self.azurite = Azurite().start()
        self.write_app()
        env = self.worker_env()
        command = [sys.executable, "-m", "durable_ext.host.worker", str(self.folder)]
        profile = os.environ.get("DURABLE_EXT_BENCH_PROFILE")
        if profile:
            command[1:1] = ["-m", "cProfile", "-o", str(Path(profile).resolve())]
        self.worker_log = open(self.folder / "worker.log", "wb")  # noqa: SIM115 - closed in stop()
        self.worker = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=self.worker_log, stderr=subprocess.STDOUT
        )
        options = DurableTaskOptions.from_app_dir(self.folder, env)
        connection = resolve_connection({"AzureWebJobsStorage": self.azurite.connection_string})
        self.backend = AzureBackend(connection, options)
        self.client = DurableOrchestrationClient(self.backend)
        deadline = time.monotonic() + 60
        while not self.stats_path.exists():
            self.check_worker()
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not start within 60 s:\n" + self.worker_tail())
            await asyncio.sleep(0.05)

    def check_worker(self) -> None:
        """Raise if the worker process has exited."""
        if self.worker is not None and self.worker.poll() is not None:
            raise RuntimeError(f"the worker exited with code {self.worker.returncode}:\n{self.worker_tail()}")

    def worker_tail(self) -> str:
        """The end of the worker's output."""
        path = self.folder / "worker.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    async def stop(self) -> None:
        """Stop the worker (SIGTERM to its pid), the client and Azurite; remove the app folder."""
        worker, self.worker = self.worker, None
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(worker.wait, 30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        if worker is not None and worker.returncode not in (0, -signal.SIGTERM):
            print(f"# worker exited with code {worker.returncode}", file=sys.stderr)
            print(self.worker_tail(), file=sys.stderr)
        if self.worker_log is not None:
            self.worker_log.close()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.close()
        if self.azurite is not None:
            self.azurite.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    # ------------------------------------------------------------ worker stats

    async def snapshot(self) -> Snapshot:
        """Stats the worker wrote after this call (every ``STATS_INTERVAL_S``), with CPU times."""
        since = time.time()
        while self.stats_path.stat().st_mtime <= since:
            self.check_worker()
            await asyncio.sleep(0.01)
        stats = json.loads(self.stats_path.read_bytes())
        cpu = {"client": time.process_time()}
        for name, process in (("worker", self.worker), ("azurite", self.azurite and self.azurite.process)):
            seconds = cpu_seconds(process.pid) if process is not None else None
            if seconds is not None:
                cpu[name] = seconds
        return Snapshot(stats, cpu)

    async def measure(self, prefix: str, body: Callable[[], Awaitable[None]]) -> Window:
        """Warm up, then run ``body`` between two snapshots; adds the window's common figures.

        The time is that of ``body`` alone; the closing snapshot is taken
        ``TRAILING_S`` later, so the worker's last deletes are counted.
        """
        await self.warm_up()
        before = await self.snapshot()
        start = time.perf_counter()
        await body()
        elapsed = time.perf_counter() - start
        await asyncio.sleep(TRAILING_S)
        window = Window(before, await self.snapshot(), elapsed)
        self.figures[f"{prefix}_s"] = elapsed
        self.figures[f"{prefix}_steps"] = window.engine("steps")
        self.figures[f"{prefix}_conflicts"] = window.engine("conflicts")
        self.figures[f"{prefix}_receive_polls"] = window.polls()
        for name in ("worker", "azurite", "client"):
            if name in window.before.cpu and name in window.after.cpu:
                self.figures[f"{prefix}_cpu_{name}_s"] = window.after.cpu[name] - window.before.cpu[name]
        return window

    # ------------------------------------------------------------ client side

    async def wait_one(self, iid: str) -> tuple[DurableOrchestrationStatus, float]:
        """Poll until ``iid`` is terminal; its status and when it was first seen started."""
        assert self.client is not None
        deadline = time.monotonic() + self.sizes.timeout_s
        picked_up = 0.0
        while True:
            status = await self.client.get_status(iid)
            now = time.perf_counter()
            if status is not None and status.runtime_status != Status.Pending and not picked_up:
                picked_up = now
            if status is not None and status.runtime_status.is_terminal:
                return status, picked_up or now
            if time.monotonic() > deadline:
                state = status.runtime_status.value if status else "missing"
                raise CheckFailed(f"{iid} still {state} after {self.sizes.timeout_s:.0f} s")
            self.check_worker()
            await asyncio.sleep(POLL_S)

    async def wait_many(self, prefix: str, count: int) -> list[DurableOrchestrationStatus]:
        """Wait until the ``count`` instances whose id starts with ``prefix`` are all terminal.

        Each poll asks only for the instances still unfinished (one query);
        the statuses of all of them are read once at the end.
        """
        assert self.client is not None
        client = self.client
        deadline = time.monotonic() + self.sizes.timeout_s
        unfinished = [s for s in Status if not s.is_terminal]
        while True:
            left = await client.get_status_by(instance_id_prefix=prefix, runtime_status=unfinished)
            if not left:
                statuses = await client.get_status_by(instance_id_prefix=prefix)
                if len(statuses) >= count:
                    return statuses
            if time.monotonic() > deadline:
                raise CheckFailed(f"{len(left)} of {count} '{prefix}*' instances still unfinished")
            self.check_worker()
            await asyncio.sleep(POLL_MANY_S)

    @staticmethod
    def check(status: DurableOrchestrationStatus, expected: Any) -> None:
        """Completed with ``expected`` as its output, or CheckFailed."""
        if status.runtime_status != Status.Completed:
            raise CheckFailed(f"{status.instance_id} is {status.runtime_status.value}: {status.output!r}")
        if status.output != expected:
            raise CheckFailed(f"{status.instance_id} returned {status.output!r}, expected {expected!r}")

    async def warm_up(self) -> None:
        """Keep every partition busy with 3-activity instances until each one answers at once.

        A control queue left idle polls ever more slowly (up to
        ``maxQueuePollingInterval``, 30 s); a scenario starts only when every
        partition has just handled a message, so its pickup is not luck.
        """
        assert self.client is not None
        client = self.client
        self._warmups += 1
        hot = [False] * PARTITIONS
        ids = ids_by_partition(f"warm{self._warmups}-", rounds=1000)

        async def chain(partition: int) -> None:
            for iid in ids[partition]:
                begin = time.perf_counter()
                await client.start_new("bench_three", iid, 0)
                status, _ = await self.wait_one(iid)
                self.check(status, 3)
                hot[partition] = time.perf_counter() - begin < HOT_S
                if all(hot):
                    return
            raise CheckFailed(f"partition {partition} never answered within {HOT_S} s")

        await asyncio.gather(*(chain(p) for p in range(PARTITIONS)))

    # ------------------------------------------------------------ scenarios

    async def one_instance(self, prefix: str, orchestrator: str, n: int) -> Window:
        """Start one instance of ``orchestrator`` with input ``n`` and wait for the sum 0+2+...+2(n-1)."""
        assert self.client is not None
        client = self.client
        result: list[tuple[DurableOrchestrationStatus, float]] = []
        start = 0.0

        async def body() -> None:
            nonlocal start
            start = time.perf_counter()
            iid = await client.start_new(orchestrator, prefix, n)
            result.append(await self.wait_one(iid))

        window = await self.measure(prefix, body)
        status, picked_up = result[0]
        self.check(status, n * (n - 1))
        self.figures[f"{prefix}_pickup_s"] = picked_up - start
        self.figures[f"{prefix}_activity_runs"] = window.engine("activities")
        self.figures[f"{prefix}_storage_ops_per_activity"] = window.calls_total() / n
        return window

    async def sequential(self) -> None:
        """One instance calling N activities in sequence; the worker's storage calls per activity."""
        n = self.sizes.sequential
        window = await self.one_instance("sequential", "bench_sequence", n)
        self.figures["sequential_activities_per_s"] = n / window.elapsed
        self.figures["storage_ops_per_activity"] = window.calls_total() / n
        calls = window.calls()
        for service in SERVICES:
            self.figures[f"storage_ops_per_activity_{service}"] = calls[service] / n

    async def fan_out(self) -> None:
        """One instance fanning out to N activities and gathering them."""
        n = self.sizes.fan_out
        window = await self.one_instance("fanout", "bench_fan_out", n)
        self.figures["fanout_activities_per_s"] = n / window.elapsed
        self.figures["fanout_peak_activities"] = window.after.stats.get("peak_activities", 0)

    async def instances(self) -> None:
        """N instances of the 3-activity sequence started at once, until all complete."""
        assert self.client is not None
        client = self.client
        n = self.sizes.instances
        statuses: list[DurableOrchestrationStatus] = []
        started = 0.0

        async def body() -> None:
            nonlocal started
            begin = time.perf_counter()
            await asyncio.gather(*(client.start_new("bench_three", f"many-{i}", i) for i in range(n)))
            started = time.perf_counter() - begin
            statuses.extend(await self.wait_many("many-", n))

        window = await self.measure("instances", body)
        by_id = {s.instance_id: s for s in statuses}
        for i in range(n):
            status = by_id.get(f"many-{i}")
            if status is None:
                raise CheckFailed(f"instance many-{i} is missing")
            self.check(status, i + 3)
        self.figures["instances_per_s"] = n / window.elapsed
        self.figures["instances_start_s"] = started  # the client's start_new calls, all at once
        self.figures["instances_storage_ops_per_activity"] = window.calls_total() / (3 * n)

    async def entities(self) -> None:
        """N client signals to one entity, until its state shows every one applied."""
        assert self.client is not None
        client = self.client
        n = self.sizes.entity_ops
        entity = EntityId("bench_counter", "one")
        gate = asyncio.Semaphore(SIGNALS_IN_FLIGHT)
        sent = 0.0

        async def signal() -> None:
            async with gate:
                await client.signal_entity(entity, "add", 1)

        async def body() -> None:
            nonlocal sent
            begin = time.perf_counter()
            await asyncio.gather(*(signal() for _ in range(n)))
            sent = time.perf_counter() - begin
            deadline = time.monotonic() + self.sizes.timeout_s
            while (state := (await client.read_entity_state(entity)).entity_state) != n:
                if time.monotonic() > deadline:
                    raise CheckFailed(
                        f"entity state is {state!r} after {self.sizes.timeout_s:.0f} s, not {n}"
                    )
                self.check_worker()
                await asyncio.sleep(POLL_S)

        window = await self.measure("entity", body)
        self.figures["entity_ops_per_s"] = n / window.elapsed
        self.figures["entity_send_s"] = sent
        self.figures["entity_storage_ops_per_op"] = window.calls_total() / n

    async def idle(self) -> None:
        """Calls per minute of the idle worker, after a short settle."""
        await asyncio.sleep(self.sizes.idle_settle_s)
        before = await self.snapshot()
        await asyncio.sleep(self.sizes.idle_window_s)
        window = Window(before, await self.snapshot(), self.sizes.idle_window_s)
        per_min = 60 / window.elapsed
        self.figures["idle_storage_calls_per_min"] = window.calls_total() * per_min
        calls = window.calls()
        for service in SERVICES:
            self.figures[f"idle_storage_calls_per_min_{service}"] = calls[service] * per_min
        self.figures["idle_receive_polls_per_min"] = window.polls() * per_min

    def scenarios(self) -> dict[str, Callable[[], Awaitable[None]]]:
        """The scenarios by name, in the order they run."""
        return {
            "sequential": self.sequential,
            "fanout": self.fan_out,
            "instances": self.instances,
            "entities": self.entities,
            "idle": self.idle,
        }

    async def run(self, emit: Callable[[str, float], None], only: list[str] | None = None) -> None:
        """The scenarios in turn; a failed check is recorded and the next scenario still runs."""
        for name, scenario in self.scenarios().items():
            if only and name not in only:
                continue
            known = set(self.figures)
            try:
                await scenario()
            except CheckFailed as exc:
                self.errors.append(f"{name}: {exc}")
                print(f"# FAILED {name}: {exc}", file=sys.stderr, flush=True)
            new = [figure for figure in self.figures if figure not in known]
            for figure in sorted(new, key=lambda f: not f.startswith(HEADLINE)):
                emit(figure, self.figures[figure])


async def amain(sizes: Sizes, only: list[str] | None = None) -> int:
    """Run the benchmark; 1 if a correctness check failed."""
    for name, op, value in TARGETS:
        print(f"# target {name} {op} {value}")
    print(
        f"# sizes: sequential {sizes.sequential}, fan-out {sizes.fan_out}, instances {sizes.instances}, "
        f"entity signals {sizes.entity_ops}, "
        f"idle {sizes.idle_window_s:g} s after {sizes.idle_settle_s:g} s; partitionCount {PARTITIONS}; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores",
        flush=True,
    )
    print_load("start")
    bench = Bench(sizes)

    def emit(name: str, value: float) -> None:
        print(f"{name}: {format_value(value)}", flush=True)

    try:
        await bench.start()
        await bench.run(emit, only)
    finally:
        await bench.stop()
    print_load("end")
    return 1 if bench.errors else 0


def print_load(when: str) -> None:
    """The machine's load averages: other work on it skews every timing."""
    with contextlib.suppress(OSError, AttributeError):
        loads = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"# load average (1, 5, 15 min) at {when}: {loads}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, well under a minute")
    parser.add_argument(
        "--only",
        help="comma-separated scenarios to run (sequential, fanout, instances, entities, idle); default all",
    )
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    known = ("sequential", "fanout", "instances", "entities", "idle")
    if only and not set(only) <= set(known):
        parser.error(f"--only takes {', '.join(known)}")
    return asyncio.run(amain(QUICK if args.quick else FULL, only))


if __name__ == "__main__":
    sys.exit(main())
