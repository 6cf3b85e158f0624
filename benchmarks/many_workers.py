"""Many worker processes on one hub under the real Python worker: a mixed load, checked to the last event.

Runs ``tests/apps/mixed`` under ``../shared/functions-host/start --workers N``
(the host simulator around the real Azure Functions Python worker), on a
private Azurite and a fresh hub, with Azure's queue polling
(``AZURE_FUNCTIONS_ENVIRONMENT=Production``) and the app's default durable
settings. Over plain HTTP it starts ``--instances`` mixed instances at once
(sequences, fan-out/fan-in, 1 s timers, external events raised through the
management API, sub-orchestrations, entity calls), then checks:

- every instance Completed with its expected output, every child too;
- the ``tally`` entities hold exactly the sum of what was added, and every
  addition was seen once (the running totals the callers got are distinct);
- no history holds two completions of one task or two firings of one timer;
- the hub's queues hold nothing but the cancelled timers of ``wait_for_go``
  (no backup copy of an in-process message was left behind);
- no invocation failed; the repair sweep rescued nothing (``repair_lines``;
  with ``--sweep off`` the sweep's timer function is disabled outright, so
  nothing but the normal path can finish the work);
- with 2 or more workers, orchestration steps and activities ran in at least
  two worker processes.

Figures are ``name: value`` lines; the last line is ``PASS`` or
``FAIL <reasons>`` (exit 1).

Usage: ``python benchmarks/many_workers.py [--workers 2] [--instances 200]
[--sweep on|off] [--environment Production|Development] [--log-dir DIR]``;
``--quick`` is 60 instances.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import re
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# benchmarks/azure.py beside this file must not shadow the ``azure`` namespace package
with contextlib.suppress(ValueError):
    sys.path.remove(str(Path(__file__).resolve().parent))

from benchmarks.fhost import (  # noqa: E402
    Host,
    HostExited,
    Http,
    SampleError,
    first_exceptions,
    format_value,
    host_env,
    scan_log,
    wait_ready,
)
from durable_ext.host.azurite import Azurite, free_port  # noqa: E402

APP_DIR = ROOT / "tests" / "apps" / "mixed"
sys.path.insert(0, str(APP_DIR))
from mixed_load import entity_totals, expected, go_event, plan  # noqa: E402

READY_TIMEOUT_S = 600.0  # the first run of functions-host creates its venv
FINISH_TIMEOUT_S = 300.0  # every instance, from the first start
THREADS = 8
TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}


class Load:
    """The HTTP side of one run: start, raise, poll, check."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.base = f"http://127.0.0.1:{host.port}"
        self.pool = ThreadPoolExecutor(THREADS)
        self._clients: dict[int, Http] = {}

    def http(self) -> Http:
        """This thread's keep-alive client."""
        key = threading.get_ident()
        if key not in self._clients:
            self._clients[key] = Http("127.0.0.1", self.host.port)
        return self._clients[key]

    def start(self, iid: str, name: str, value: Any) -> dict[str, Any]:
        answer = self.http().request("POST", f"{self.base}/api/start/{name}/{iid}", value)
        if answer.status != 202:
            raise SampleError(f"start {name} {iid}: HTTP {answer.status} {answer.body[:300]!r}")
        return answer.json()

    def raise_go(self, payload: dict[str, Any], iid: str) -> None:
        url = payload["sendEventPostUri"].replace("{eventName}", "Go")
        answer = self.http().request("POST", url, go_event(iid))
        if answer.status != 202:
            raise SampleError(f"raise Go to {iid}: HTTP {answer.status} {answer.body[:300]!r}")

    def status(self, iid: str, history: bool = False) -> dict[str, Any] | None:
        query = "?showHistory=true&showHistoryOutput=true" if history else ""
        answer = self.http().request("GET", f"{self.base}/api/durabletask/instances/{quote(iid)}{query}")
        if answer.status == 404:
            return None
        if answer.status not in (200, 202):
            raise SampleError(f"status of {iid}: HTTP {answer.status} {answer.body[:300]!r}")
        return answer.json()

    def entity(self, key: str) -> Any:
        answer = self.http().request("GET", f"{self.base}/api/durabletask/entities/tally/{key}")
        if answer.status != 200:
            raise SampleError(f"entity tally/{key}: HTTP {answer.status} {answer.body[:300]!r}")
        return answer.json()


def history_problems(iid: str, events: list[dict[str, Any]]) -> list[str]:
    """Duplicated completions of one task or firings of one timer in one history."""
    seen: collections.Counter[tuple[str, int]] = collections.Counter()
    for event in events:
        kind = event.get("EventType")
        if kind in ("TaskCompleted", "TaskFailed", "SubOrchestrationInstanceCompleted"):
            seen[("task", int(event.get("TaskScheduledId", -1)))] += 1
        elif kind == "TimerFired":
            seen[("timer", int(event.get("TimerId", -1)))] += 1
    return [f"{iid}: {what} {n} completed {count} times" for (what, n), count in seen.items() if count > 1]


async def messages_left(connection_string: str, hub: str, expect: int, settle_s: float = 5.0) -> int:
    """Messages (visible or not) in the hub's control and work-item queues, once ``expect`` or settled."""
    from durable_ext.backends.azure.connection import resolve_connection
    from durable_ext.config import DurableTaskOptions

    options = DurableTaskOptions.from_host_json(
        {"version": "2.0", "extensions": {"durableTask": {"hubName": hub}}}
    )
    connection = resolve_connection({"AzureWebJobsStorage": connection_string})
    service = connection.queue_service()
    names = [*options.control_queues, options.workitem_queue]
    deadline = time.monotonic() + settle_s
    try:
        while True:
            counts = [
                (await service.get_queue_client(n).get_queue_properties()).approximate_message_count
                for n in names
            ]
            if sum(counts) == expect or time.monotonic() > deadline:
                return sum(counts)
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


def workers_that_logged(path: Path, pattern: str) -> set[str]:
    """Worker tags (``w0``, ``w1``...) with a log line matching ``pattern``."""
    found: set[str] = set()
    regex = re.compile(r"\[(w\d+)\] " + pattern)
    with open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            match = regex.search(line)
            if match:
                found.add(match.group(1))
    return found


def run(args: argparse.Namespace, azurite: Azurite, log_dir: Path) -> list[str]:
    """One host, one load; returns the failures."""
    failures: list[str] = []
    hub = f"Many{uuid.uuid4().hex[:8]}w{args.workers}"
    extra = {"AzureWebJobs.durabletask_repair.Disabled": "true"} if args.sweep == "off" else {}
    env = host_env(azurite.connection_string, hub, args.environment, extra)
    host = Host(APP_DIR, args.workers, free_port(), env, log_dir, project=ROOT, name=f"many-w{args.workers}")
    print(f"# hub {hub}, {args.workers} workers, sweep {args.sweep}, {args.environment}, log {host.log_path}")
    load: Load | None = None
    try:
        host.start()
        print(f"host_ready_s: {format_value(wait_ready(host, READY_TIMEOUT_S))}")
        host.remember_workers()
        load = Load(host)
        work = plan(args.instances)
        began = time.monotonic()
        starts = {iid: load.pool.submit(load.start, iid, name, value) for iid, (name, value) in work.items()}
        payloads = {iid: future.result() for iid, future in starts.items()}
        raised = [
            load.pool.submit(load.raise_go, payloads[iid], iid)
            for iid, (name, _) in work.items()
            if name == "wait_for_go"
        ]
        for future in raised:
            future.result()
        print(f"start_s: {format_value(time.monotonic() - began)}")
        pending = set(work)
        finals: dict[str, dict[str, Any]] = {}
        while pending:
            host.check_alive()
            if time.monotonic() - began > FINISH_TIMEOUT_S:
                some = sorted(pending)[:5]
                failures.append(f"{len(pending)} instances unfinished after {FINISH_TIMEOUT_S:.0f} s: {some}")
                break
            ids = sorted(pending)
            for iid, status in zip(ids, load.pool.map(load.status, ids), strict=True):
                if status is not None and status.get("runtimeStatus") in TERMINAL:
                    finals[iid] = status
                    pending.discard(iid)
            if pending:
                time.sleep(0.25)
        elapsed = time.monotonic() - began
        print(f"instances: {len(work)}")
        print(f"all_done_s: {format_value(elapsed)}")
        print(f"instances_per_s: {format_value(len(finals) / elapsed)}")
        totals = entity_totals(work)
        seen_totals: dict[str, list[int]] = collections.defaultdict(list)
        for iid, status in finals.items():
            name, value = work[iid]
            if status.get("runtimeStatus") != "Completed":
                failures.append(f"{iid}: {status.get('runtimeStatus')} {str(status.get('output'))[:200]}")
                continue
            want = expected(name, value, iid)
            if name == "bump":
                seen_totals[value["key"]].append(status.get("output"))
            elif status.get("output") != want:
                failures.append(f"{iid}: output {status.get('output')!r}, expected {want!r}")
        for key, total in totals.items():
            state = load.entity(key)
            if state != total:
                failures.append(f"tally/{key} is {state!r}, expected {total}")
            got = seen_totals[key]
            if len(set(got)) != len(got) or max(got) != total:
                failures.append(f"tally/{key}: running totals {sorted(got)} (an addition seen twice or lost)")
        children = 2 * sum(1 for name, _ in work.values() if name == "parent")
        problems: list[str] = []
        histories = list(load.pool.map(lambda iid: (iid, load.status(iid, history=True)), list(work)))
        for iid, status in histories:
            problems += history_problems(iid, (status or {}).get("historyEvents") or [])
        failures += problems[:10]
        print(f"children: {children}")
        print(f"history_problems: {len(problems)}")
        # each wait_for_go leaves its cancelled 5-minute timer on the queue, as in DTFx; nothing else stays
        timers = sum(1 for name, _ in work.values() if name == "wait_for_go")
        if args.sweep == "on":  # let the sweep look at the hub once the load is done: it must find nothing
            before = scan_log(host.log_path)["sweeps"]
            deadline = time.monotonic() + 45
            while scan_log(host.log_path)["sweeps"] == before and time.monotonic() < deadline:
                host.check_alive()
                time.sleep(0.5)
            print(f"sweeps_after_load: {scan_log(host.log_path)['sweeps'] - before}")
        left = asyncio.run(messages_left(azurite.connection_string, hub, timers))
        print(f"queue_messages_left: {left}")
        print(f"pending_timer_messages: {timers}")
        if left != timers:
            failures.append(f"{left} messages in the hub's queues, expected only the {timers} pending timers")
    except (SampleError, HostExited, OSError) as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        alive = host.process is not None and host.process.poll() is None
        host.stop()
        if alive and host.exit_code != 0:
            failures.append(f"the host exited with code {host.exit_code} after SIGTERM")
        if load is not None:
            load.pool.shutdown(wait=False, cancel_futures=True)
    counts = scan_log(host.log_path)
    for name, count in counts.items():
        print(f"{name}: {count}")
    if counts.get("failed_invocations"):
        failures.append(f"{counts['failed_invocations']} invocations failed")
        failures += [f"host log: {text[:200]}" for text in first_exceptions(host.log_path)]
    if counts.get("repair_lines"):
        failures.append(f"the repair sweep rescued work {counts['repair_lines']} times without any fault")
    steppers = workers_that_logged(host.log_path, r"orchestration '")
    runners = workers_that_logged(host.log_path, r"activity '")
    print(f"workers_with_steps: {len(steppers)}")
    print(f"workers_with_activities: {len(runners)}")
    if args.workers > 1 and (len(steppers) < 2 or len(runners) < 2):
        failures.append(f"work did not spread: steps in {sorted(steppers)}, activities in {sorted(runners)}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--instances", type=int, help="mixed instances (default 200; 60 with --quick)")
    parser.add_argument(
        "--sweep", choices=["on", "off"], default="off", help="the repair sweep (default off)"
    )
    parser.add_argument("--environment", default="Production", choices=["Production", "Development"])
    parser.add_argument("--quick", action="store_true", help="60 instances")
    parser.add_argument("--log-dir", help="folder for the host log (default: a new temporary folder)")
    args = parser.parse_args(argv)
    if args.instances is None:
        args.instances = 60 if args.quick else 200
    if not 1 <= args.workers <= 10 or args.instances < 6:
        parser.error("--workers takes 1 to 10, --instances at least 6")
    log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="many-workers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"workers: {args.workers}")
    with Azurite() as azurite:
        failures = run(args, azurite, log_dir)
    if failures:
        print("FAIL " + "; ".join(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
