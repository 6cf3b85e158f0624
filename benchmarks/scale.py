"""Scale-out benchmark: 1, 2, 4... self-polling worker processes on one task hub, on Azurite.

For each process count P and each workload, a fresh task hub on one private
Azurite (started once for the whole run) is served by P worker processes
(``python -m durable_ext.host.worker APP_DIR``, default durable settings,
``partitionCount`` 4), all started before the workload and stopped (SIGTERM)
after it, so every measurement begins with fresh processes whose queue
pollers are equally awake. The app is ``benchmarks/azure.py``'s (trivial
activities); a client in this process, on its own connection, drives it:

- ``seq``: ``--instances`` instances of ``bench_sequence`` (``--sequence-length``
  activities in turn each), started at once; throughput in instances/s;
- ``fan``: one ``bench_fan_out`` of ``--fan-out`` activities gathered with
  ``task_all``; throughput in activities/s.

Wall time runs from the first ``start_new`` until the client sees every
instance terminal; every output is checked. Per (workload, P), from the
workers' stats files (``DURABLE_EXT_STATS_FILE``, engine ``stats``) and their
per-step log lines (logger ``durable_ext.orchestration``, enabled through the
app's host.json ``logging.logLevel``): committed steps, ETag conflicts per
committed step, step retries (the ``(N retries)`` of each step's line),
step latency percentiles (the duration each line reports, retries and
back-off included; a step's time includes its dispatch, so for the fan-out
``schedule_step_ms`` is the step that queued the activities), full replays,
activities taken from the work-item queue, storage calls per activity, CPU
seconds of the workers, Azurite and this process, and ``cpu_other_s``: what
the rest of the machine used meanwhile (others' work skews every figure);
and how the work spread over the processes (a ``#`` line per run).
Then the throughput of each P against 1 process (``*_vs_p1``) and the
targets, as ``target_...: met|missed`` lines (never a failure):

- ``target_seq_pN_not_slower`` / ``target_fan_pN_not_slower``: the largest
  process count N is not slower than 1 process;
- ``target_fan_pP_conflicts_per_step``: at most 0.2 ETag conflicts per
  committed step on the fan-in, for each P.

The last line is ``PASS``, or ``FAIL <reasons>`` (exit 1) when an output is
wrong, an instance did not finish within ``--timeout`` or a worker process
died. Worker logs of a failed run, or with warnings, are kept (their folder is printed).

Usage::

    python benchmarks/scale.py                      # 1, 2, 4 processes; 100 x 10 and 5,000
    python benchmarks/scale.py --quick              # 1, 2 processes; 10 x 5 and 200 (about 15 s)
    python benchmarks/scale.py --processes 1,4 --instances 50 --sequence-length 20 --fan-out 2000
    python benchmarks/scale.py --workloads fan --processes 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # durable_ext and benchmarks from this checkout, whatever is installed
# benchmarks/azure.py beside this file must not shadow the ``azure`` namespace package
with contextlib.suppress(ValueError):
    sys.path.remove(str(Path(__file__).resolve().parent))

from benchmarks import azure as azure_bench  # noqa: E402
from benchmarks.fhost import percentile, verdict  # noqa: E402
from durable_ext.backends.azure.backend import AzureBackend  # noqa: E402
from durable_ext.backends.azure.connection import SERVICES, resolve_connection  # noqa: E402
from durable_ext.client import DurableOrchestrationClient  # noqa: E402
from durable_ext.config import DurableTaskOptions  # noqa: E402
from durable_ext.host.azurite import Azurite  # noqa: E402

CheckFailed = azure_bench.CheckFailed
cpu_seconds = azure_bench.cpu_seconds
format_value = azure_bench.format_value

WORKLOADS = ("seq", "fan")
READY_TIMEOUT_S = 60.0  # every worker process has written its first stats file
STOP_TIMEOUT_S = 30.0  # a worker's graceful stop after SIGTERM, then SIGKILL
CONFLICTS_PER_STEP_TARGET = 0.2

#: one orchestration step's log line (README "Logs"), as ``logging.basicConfig`` formats it
STEP_LINE = re.compile(
    r"durable_ext\.orchestration:orchestration '[^']*' (?P<iid>\S+): (?P<status>\w+) after \d+ messages"
    r"(?:, (?P<sent>\d+) activities and \d+ messages sent)? in (?P<ms>[\d.]+) ms"
    r"(?: \((?P<retries>\d+) retries\))?\s*$"
)
PROBLEM_LINE = re.compile(r"^(WARNING|ERROR|CRITICAL):|^Traceback ")


@dataclass(frozen=True)
class Sizes:
    """Workload sizes, process counts and the bound on each workload's completion."""

    processes: tuple[int, ...] = (1, 2, 4)
    instances: int = 100
    sequence_length: int = 10
    fan_out: int = 5000
    timeout_s: float = 600.0
    workloads: tuple[str, ...] = WORKLOADS


FULL = Sizes()
QUICK = Sizes(processes=(1, 2), instances=10, sequence_length=5, fan_out=200, timeout_s=60.0)


@dataclass
class WorkerRun:
    """What one worker process did: its stats (at ready and at exit), CPU time and step lines."""

    ready: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    cpu_s: float = 0.0
    step_ms: list[float] = field(default_factory=list)
    retries: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)  # activities each step scheduled
    problems: int = 0
    exit_code: int | None = None

    def engine(self, counter: str) -> int:
        """How much an engine counter grew while the workload ran (and the worker stopped)."""
        return int(self.final.get("engine", {}).get(counter, 0)) - int(
            self.ready.get("engine", {}).get(counter, 0)
        )

    def handlers(self, counter: str) -> int:
        """How much a ``DurableHandlers.stats`` counter grew."""
        return int(self.final.get("handlers", {}).get(counter, 0)) - int(
            self.ready.get("handlers", {}).get(counter, 0)
        )

    def storage_calls(self) -> int:
        """Storage calls of this worker (all services)."""
        new, old = self.final.get("storage", {}), self.ready.get("storage", {})
        return sum(int(new.get(s, 0)) - int(old.get(s, 0)) for s in SERVICES)

    def handled(self, suffix: str) -> int:
        """Messages handled by this worker's runners of queues whose name ends with ``suffix``."""
        new, old = self.final.get("runners", {}), self.ready.get("runners", {})
        return sum(
            int(stats.get("handled", 0)) - int(old.get(name, {}).get("handled", 0))
            for name, stats in new.items()
            if name.endswith(suffix)
        )


class ScaleHub(azure_bench.Bench):
    """A fresh hub on a shared Azurite served by ``processes`` worker processes.

    Reuses ``benchmarks/azure.py``'s ``Bench`` for the app, the worker
    environment and the client's waits and checks (its ``sizes`` only give
    those waits their ``timeout_s``); starts and stops several workers instead
    of one, and leaves Azurite running.
    """

    def __init__(self, azurite: Azurite, processes: int, label: str, timeout_s: float) -> None:
        super().__init__(dataclasses.replace(azure_bench.QUICK, timeout_s=timeout_s))
        self.azurite = azurite
        self.processes = processes
        self.hub = f"Scale{os.getpid()}T{int(time.time()) % 100000}{label}"
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        self.runs = [WorkerRun() for _ in range(processes)]
        self.azurite_cpu_s = 0.0
        self.client_cpu_s = 0.0
        self.machine_cpu_s: float | None = None
        self._cpu_start: list[float | None] = []
        self._client_start = 0.0
        self._machine_start: float | None = None

    def stats_file(self, index: int) -> Path:
        """The stats file of worker ``index``."""
        return self.folder / f"worker-{index}-stats.json"

    def log_file(self, index: int) -> Path:
        """The output (stdout and stderr) of worker ``index``."""
        return self.folder / f"worker-{index}.log"

    def write_app(self) -> None:
        """The benchmark app of ``benchmarks/azure.py``, with its step lines logged."""
        super().write_app()
        host_json = self.folder / "host.json"
        doc = json.loads(host_json.read_text())
        doc["logging"] = {"logLevel": {"durable_ext.orchestration": "Information"}}
        host_json.write_text(json.dumps(doc, indent=2))

    def worker_env(self, index: int = 0) -> dict[str, str]:
        """``Bench``'s worker environment, with a stats file per worker."""
        env = super().worker_env()
        env["DURABLE_EXT_STATS_FILE"] = str(self.stats_file(index))
        env.pop("DURABLE_EXT_LOG", None)  # Warning at the root: only the step lines at Information
        return env

    async def start(self) -> None:
        """Create the hub, start every worker, and wait until each has written its stats."""
        assert self.azurite is not None
        self.write_app()
        options = DurableTaskOptions.from_app_dir(self.folder, self.worker_env())
        connection = resolve_connection({"AzureWebJobsStorage": self.azurite.connection_string})
        self.backend = AzureBackend(connection, options)
        self.client = DurableOrchestrationClient(self.backend)
        await self.backend.create_task_hub()  # once, before the workers race to create it
        command = [sys.executable, "-m", "durable_ext.host.worker", str(self.folder)]
        for index in range(self.processes):
            log = open(self.log_file(index), "wb")  # noqa: SIM115 - closed in stop()
            self.logs.append(log)
            self.workers.append(
                subprocess.Popen(
                    command,
                    env=self.worker_env(index),
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not all(self.stats_file(i).exists() for i in range(self.processes)):
            self.check_worker()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers were not all ready within {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)
        for index, run in enumerate(self.runs):
            run.ready = json.loads(self.stats_file(index).read_bytes())

    def check_worker(self) -> None:
        """Raise if a worker process has exited."""
        for index, worker in enumerate(self.workers):
            if worker.poll() is not None:
                raise RuntimeError(
                    f"worker {index} exited with code {worker.returncode}:\n{self.worker_tail(index)}"
                )

    def worker_tail(self, index: int = 0) -> str:
        """The end of worker ``index``'s output."""
        path = self.log_file(index)
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def cpu_mark(self) -> None:
        """Note the CPU time of the workers, Azurite, this process and the machine (the workload starts)."""
        self._cpu_start = [cpu_seconds(w.pid) for w in self.workers]
        process = self.azurite.process if self.azurite else None
        self._cpu_start.append(cpu_seconds(process.pid) if process else None)
        self._client_start = time.process_time()
        self._machine_start = machine_busy_s()

    def cpu_done(self) -> None:
        """CPU time since ``cpu_mark`` of each worker, Azurite, this process and the machine."""
        self.client_cpu_s = time.process_time() - self._client_start
        machine = machine_busy_s()
        if machine is not None and self._machine_start is not None:
            self.machine_cpu_s = machine - self._machine_start
        process = self.azurite.process if self.azurite else None
        pids = [w.pid for w in self.workers] + [process.pid if process else None]
        spent = []
        for pid, before in zip(pids, self._cpu_start, strict=True):
            after = cpu_seconds(pid) if pid is not None else None
            spent.append(after - before if after is not None and before is not None else 0.0)
        for run, seconds in zip(self.runs, spent, strict=False):
            run.cpu_s = seconds
        self.azurite_cpu_s = spent[-1]

    async def stop(self, keep: bool = False) -> None:
        """SIGTERM every worker (by pid; SIGKILL after a grace), read their stats and logs, drop the hub.

        ``keep`` leaves the app folder with the workers' logs in place (as do warnings in them).
        """
        workers, self.workers = self.workers, []
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for worker in workers:
            try:
                await asyncio.to_thread(worker.wait, max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"# worker pid {worker.pid} still runs {STOP_TIMEOUT_S:.0f} s after SIGTERM: SIGKILL")
                worker.kill()
                worker.wait(10)
        for log in self.logs:
            log.close()
        self.logs = []
        for index, (worker, run) in enumerate(zip(workers, self.runs, strict=False)):
            run.exit_code = worker.returncode
            with contextlib.suppress(OSError, ValueError):
                run.final = json.loads(self.stats_file(index).read_bytes())
            read_log(self.log_file(index), run)
            if worker.returncode not in (0, -signal.SIGTERM):
                print(f"# worker {index} exited with code {worker.returncode}", file=sys.stderr)
                print(self.worker_tail(index), file=sys.stderr)
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.delete_task_hub()  # keeps the shared Azurite small
            with contextlib.suppress(Exception):
                await self.backend.close()
            self.backend = None
        if keep or any(run.problems for run in self.runs):
            print(f"# worker logs (failures or warnings) kept in {self.folder}")
        else:
            shutil.rmtree(self.folder, ignore_errors=True)


def machine_busy_s() -> float | None:
    """CPU seconds every process on the machine has used since boot, all cores (``/proc/stat``; else None)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def read_log(path: Path, run: WorkerRun) -> None:
    """Step durations, retries and warning or error lines from one worker's output."""
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            match = STEP_LINE.search(line)
            if match:
                run.step_ms.append(float(match["ms"]))
                run.retries.append(int(match["retries"] or 0))
                run.sent.append(int(match["sent"] or 0))
            elif PROBLEM_LINE.search(line):
                run.problems += 1


def expected_output(n: int) -> int:
    """What ``bench_sequence`` and ``bench_fan_out`` return for input ``n``: 0 + 2 + ... + 2(n-1)."""
    return n * (n - 1)


async def sequences(hub: ScaleHub, sizes: Sizes) -> dict[str, float]:
    """``instances`` sequences started at once; until all are done, every output checked."""
    assert hub.client is not None
    client = hub.client
    count, length = sizes.instances, sizes.sequence_length
    begin = time.perf_counter()
    await asyncio.gather(*(client.start_new("bench_sequence", f"seq-{i}", length) for i in range(count)))
    started = time.perf_counter() - begin
    statuses = await hub.wait_many("seq-", count)
    elapsed = time.perf_counter() - begin
    by_id = {s.instance_id: s for s in statuses}
    for i in range(count):
        status = by_id.get(f"seq-{i}")
        if status is None:
            raise CheckFailed(f"instance seq-{i} is missing")
        hub.check(status, expected_output(length))
    return {"s": elapsed, "instances_per_s": count / elapsed, "start_s": started}


async def fan_out(hub: ScaleHub, sizes: Sizes) -> dict[str, float]:
    """One fan-out/fan-in of ``fan_out`` activities; until it is done, its output checked."""
    assert hub.client is not None
    n = sizes.fan_out
    begin = time.perf_counter()
    await hub.client.start_new("bench_fan_out", "fan", n)
    status, picked_up = await hub.wait_one("fan")
    elapsed = time.perf_counter() - begin
    hub.check(status, expected_output(n))
    return {"s": elapsed, "activities_per_s": n / elapsed, "pickup_s": picked_up - begin}


def worker_figures(hub: ScaleHub, activities: int) -> dict[str, float]:
    """Engine, log and process figures summed over the hub's workers."""
    runs = hub.runs
    steps = sum(r.engine("steps") for r in runs)
    conflicts = sum(r.engine("conflicts") for r in runs)
    durations = [ms for r in runs for ms in r.step_ms]
    retries = [n for r in runs for n in r.retries]
    step_counts = [r.engine("steps") for r in runs]
    figures: dict[str, float] = {
        "steps": steps,
        "conflicts": conflicts,
        "conflicts_per_step": conflicts / steps if steps else 0.0,
        "step_retries": sum(retries),
        "steps_retried": sum(1 for n in retries if n),
        "stale_hints": sum(r.engine("stale_hints") for r in runs),
        "replays": sum(r.engine("replays") for r in runs),
    }
    if durations:
        figures["step_p50_ms"] = percentile(durations, 50)
        figures["step_p99_ms"] = percentile(durations, 99)
        figures["step_max_ms"] = max(durations)
    figures["activities_from_queue"] = sum(r.handled("-workitems") for r in runs)
    figures["spilled_activities"] = sum(r.handlers("spilled_activities") for r in runs)
    figures["storage_calls_per_activity"] = sum(r.storage_calls() for r in runs) / max(1, activities)
    figures["processes_with_steps"] = sum(1 for n in step_counts if n)
    figures["processes_with_activities"] = sum(1 for r in runs if r.engine("activities"))
    figures["busiest_step_share"] = max(step_counts) / steps if steps else 0.0
    if any(r.sent for r in runs):
        # the step that scheduled the most activities (a fan-out's first): its time includes the dispatch
        sent, ms = max((n, t) for r in runs for n, t in zip(r.sent, r.step_ms, strict=True))
        if sent > 1:
            figures["schedule_step_ms"] = ms
    figures["cpu_workers_s"] = sum(r.cpu_s for r in runs)
    figures["cpu_azurite_s"] = hub.azurite_cpu_s
    figures["cpu_client_s"] = hub.client_cpu_s
    if hub.machine_cpu_s is not None:
        # CPU the rest of the machine used meanwhile (other people's work skews every figure)
        ours = figures["cpu_workers_s"] + hub.azurite_cpu_s + hub.client_cpu_s
        figures["cpu_other_s"] = max(0.0, hub.machine_cpu_s - ours)
    figures["worker_warnings"] = sum(r.problems for r in runs)
    return figures


def per_process_line(prefix: str, hub: ScaleHub) -> str:
    """A comment line: how the work spread over the processes."""

    def each(values: list[Any]) -> str:
        return "/".join(format_value(v) for v in values)

    runs = hub.runs
    return (
        f"# {prefix} per process: steps {each([r.engine('steps') for r in runs])}, "
        f"activities {each([r.engine('activities') for r in runs])}, "
        f"from queue {each([r.handled('-workitems') for r in runs])}, "
        f"conflicts {each([r.engine('conflicts') for r in runs])}, "
        f"storage calls {each([r.storage_calls() for r in runs])}, "
        f"cpu_s {each([round(r.cpu_s, 2) for r in runs])}"
    )


async def measure(
    azurite: Azurite, sizes: Sizes, workload: str, processes: int
) -> tuple[dict[str, float], list[str], str]:
    """One workload on a fresh hub with ``processes`` workers: its figures, failures and a ``#`` note."""
    prefix = f"{workload}_p{processes}"
    hub = ScaleHub(azurite, processes, f"{workload}P{processes}", sizes.timeout_s)
    failures: list[str] = []
    figures: dict[str, float] = {}
    activities = sizes.instances * sizes.sequence_length if workload == "seq" else sizes.fan_out
    try:
        await hub.start()
        hub.cpu_mark()
        body = sequences(hub, sizes) if workload == "seq" else fan_out(hub, sizes)
        # wait_one / wait_many give up after timeout_s; this bounds the starts as well
        figures.update(await asyncio.wait_for(body, sizes.timeout_s + 60))
        hub.cpu_done()
    except (CheckFailed, RuntimeError, asyncio.TimeoutError) as exc:
        failures.append(f"{prefix}: {type(exc).__name__}: {str(exc)[:500]}")
    finally:
        await hub.stop(keep=bool(failures))
    if failures:
        note = f"# {prefix} FAILED; worker logs kept in {hub.folder}"
    else:
        figures.update(worker_figures(hub, activities))
        note = per_process_line(prefix, hub)
    return {f"{prefix}_{name}": value for name, value in figures.items()}, failures, note


def comparisons(sizes: Sizes, figures: dict[str, float]) -> list[tuple[str, str]]:
    """Throughput against 1 process, and the targets (``met``/``missed``)."""
    lines: list[tuple[str, str]] = []
    rate = {"seq": "instances_per_s", "fan": "activities_per_s"}
    for workload in sizes.workloads:
        base = figures.get(f"{workload}_p1_{rate[workload]}")
        for p in sizes.processes:
            value = figures.get(f"{workload}_p{p}_{rate[workload]}")
            if p != 1 and base and value is not None:
                lines.append((f"{workload}_p{p}_vs_p1", format_value(value / base)))
    most = max(sizes.processes)
    for workload in sizes.workloads:
        if most > 1 and 1 in sizes.processes:
            base = figures.get(f"{workload}_p1_{rate[workload]}")
            value = figures.get(f"{workload}_p{most}_{rate[workload]}")
            met = base is not None and value is not None and value >= base
            lines.append((f"target_{workload}_p{most}_not_slower", "met" if met else "missed"))
    if "fan" in sizes.workloads:
        for p in sizes.processes:
            ratio = figures.get(f"fan_p{p}_conflicts_per_step")
            met = ratio is not None and ratio <= CONFLICTS_PER_STEP_TARGET
            lines.append((f"target_fan_p{p}_conflicts_per_step", "met" if met else "missed"))
    return lines


async def amain(sizes: Sizes) -> int:
    """Every (process count, workload) in turn on one Azurite; the verdict's exit code."""
    most = max(sizes.processes)
    print(f"# target seq_p{most}_not_slower / fan_p{most}_not_slower: {most} processes >= 1 process")
    print(f"# target fan_pP_conflicts_per_step: conflicts per committed step <= {CONFLICTS_PER_STEP_TARGET}")
    print(
        f"# sizes: processes {','.join(map(str, sizes.processes))}; seq {sizes.instances} instances x "
        f"{sizes.sequence_length} activities; fan-out {sizes.fan_out} activities; "
        f"timeout {sizes.timeout_s:g} s; python {sys.version.split()[0]}, {os.cpu_count()} cores",
        flush=True,
    )
    azure_bench.print_load("start")
    figures: dict[str, float] = {}
    failures: list[str] = []
    began = time.monotonic()
    with Azurite() as azurite:
        for processes in sizes.processes:
            for workload in sizes.workloads:
                found, failed, note = await measure(azurite, sizes, workload, processes)
                for name, value in found.items():
                    print(f"{name}: {format_value(value)}")
                print(note, flush=True)
                figures.update(found)
                failures += failed
    for name, text in comparisons(sizes, figures):
        print(f"{name}: {text}")
    print(f"total_s: {format_value(time.monotonic() - began)}")
    azure_bench.print_load("end")
    return verdict(failures)


def process_counts(text: str) -> tuple[int, ...]:
    """``1,2,4`` as a tuple of distinct positive counts, in order."""
    try:
        counts = tuple(dict.fromkeys(int(part) for part in text.split(",") if part.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of process counts: {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > 16:
        raise argparse.ArgumentTypeError("process counts must be between 1 and 16")
    return counts


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 processes; 10 x 5 and 200 activities")
    parser.add_argument("--processes", type=process_counts, help="process counts (default 1,2,4)")
    parser.add_argument("--instances", type=int, help="sequence instances started at once (default 100)")
    parser.add_argument("--sequence-length", type=int, help="activities per sequence (default 10)")
    parser.add_argument("--fan-out", type=int, help="activities of the fan-out (default 5000)")
    parser.add_argument("--timeout", type=float, help="seconds each workload may take (default 600)")
    parser.add_argument("--workloads", help="comma-separated: seq, fan (default both)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    workloads = base.workloads
    if args.workloads:
        workloads = tuple(dict.fromkeys(w.strip() for w in args.workloads.split(",") if w.strip()))
        if not workloads or not set(workloads) <= set(WORKLOADS):
            parser.error(f"--workloads takes {', '.join(WORKLOADS)}")
    sizes = dataclasses.replace(
        base,
        processes=args.processes or base.processes,
        instances=args.instances or base.instances,
        sequence_length=args.sequence_length or base.sequence_length,
        fan_out=args.fan_out or base.fan_out,
        timeout_s=args.timeout or base.timeout_s,
        workloads=workloads,
    )
    if min(sizes.instances, sizes.sequence_length, sizes.fan_out) < 1 or sizes.timeout_s <= 0:
        parser.error("sizes must be at least 1 and the timeout positive")
    return asyncio.run(amain(sizes))


if __name__ == "__main__":
    sys.exit(main())
