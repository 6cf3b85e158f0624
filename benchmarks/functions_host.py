"""End-to-end driver and latency benchmark: the samples under the real Python worker, over plain HTTP.

Runs ``../shared/functions-host/start samples --project . --workers N`` (the
host simulator beside this repository, which drives the real Azure Functions
Python worker) on a private Azurite and a fresh task hub, waits until
``GET /admin/host/status`` says Running, leaves the host idle for ``--idle``
seconds (so its queue pollers back off as they do on Azure; the environment is
``Production`` by default, whose back-off reaches 1 minute), then drives every
sample of ``samples/function_app.py`` over HTTP only (the starter
``/api/orchestrators/{name}`` and the management API ``/api/durabletask/...``):

- ``hello_sequence`` started ``--starts`` times one after the other: latency from
  the starter request until a status poll (every 20 ms) shows Completed;
- ``fan_out_fan_in`` with input ``--fanout``;
- ``approval_workflow``: from the ``Approval`` event until Completed;
- the ``counter`` entity, ``account`` + ``transfer``, ``monitor``, ``retry_demo``,
  ``parent_child``: each once, output checked;
- the management API: status with history, listing, terminate, purge.

Every figure is a ``name: value`` line (one block per worker count, starting
with ``workers: N``); targets are ``# target`` comment lines (never a failure).
The last line is ``PASS``, or ``FAIL <reason>`` with exit code 1 when a sample
gives a wrong output, times out, or the host exits unexpectedly.

Usage: ``python benchmarks/functions_host.py [--workers 1 2] [--idle 90] [--starts 20]
[--fanout 100] [--environment Production|Development] [--quick] [--log-dir DIR]``.
``--quick`` is idle 15 s, 5 starts, fan-out 20 and one worker count (the first
of ``--workers``, 2 when not given).
"""

from __future__ import annotations

import argparse
import http.client
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
# the repository root first (durable_ext, benchmarks.fhost), and not this folder: its azure.py would
# shadow the ``azure`` namespace package
sys.path[:] = [str(HERE.parent), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]

from benchmarks import fhost  # noqa: E402
from benchmarks.fhost import Host, HostExited, Http, SampleError  # noqa: E402
from durable_ext.host.azurite import Azurite, free_port  # noqa: E402

POLL_S = 0.02  # status polls of one instance
INSTANCE_TIMEOUT_S = 120.0  # per instance, from the starter request
READY_TIMEOUT_S = 600.0  # the first run of functions-host creates its venv and installs the project
MEASURE_BUDGET_S = 1500.0  # all samples of one worker count, after the idle wait
TERMINAL = {"Completed", "Failed", "Terminated", "Canceled"}
CITIES = ["Tokyo", "Seattle", "London"]
HELLO = [f"Hello {city}!" for city in CITIES]

#: (figure, comparison, target): printed as ``# target`` lines, never a failure.
TARGETS = [
    ("hello_sequence_p50_s", "<=", 0.5),
    ("hello_sequence_p99_s", "<=", 2.0),
    ("fan_out_fan_in_100_s", "<=", 2.0),
    ("approval_event_to_done_s", "<=", 1.0),
]


# ------------------------------------------------------------------------ driver


@dataclass
class Deadline:
    """A point in time every wait of one worker count must end by."""

    at: float

    def left(self) -> float:
        """Seconds until the deadline (may be negative)."""
        return self.at - time.monotonic()


@dataclass
class Run:
    """The figures and failures of one worker count."""

    workers: int
    figures: list[tuple[str, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def figure(self, name: str, value: float) -> None:
        """Record and print ``name: value``."""
        self.figures.append((name, value))
        print(f"{name}: {fhost.format_value(value)}", flush=True)


def with_query(url: str, extra: str) -> str:
    """``url`` with ``extra`` (``a=b``) added to its query string."""
    return f"{url}{'&' if '?' in url else '?'}{extra}"


class Driver:
    """Drives the samples of one running host over HTTP."""

    def __init__(self, host: Host, deadline: Deadline, tag: str) -> None:
        self.host = host
        self.http = Http("127.0.0.1", host.port)
        self.api = host.api
        self.deadline = deadline
        self.tag = tag  # makes entity keys unique to this run

    # ---------------------------------------------------------------- primitives

    def start(self, name: str, payload: Any) -> dict[str, Any]:
        """POST the starter; the check-status payload."""
        self.host.check_alive()
        answer = self.http.request("POST", f"{self.api}/orchestrators/{name}", payload)
        if answer.status != 202:
            raise SampleError(f"starting {name}: HTTP {answer.status} {answer.body[:300]!r}")
        body = answer.json()
        for key in (
            "id",
            "statusQueryGetUri",
            "sendEventPostUri",
            "terminatePostUri",
            "purgeHistoryDeleteUri",
        ):
            if key not in body:
                raise SampleError(f"starting {name}: the check-status payload has no {key!r}: {body}")
        return body

    def status(self, uri: str) -> tuple[int, Any]:
        """GET a status URL: HTTP status and JSON body."""
        answer = self.http.request("GET", uri)
        if answer.status not in (200, 202, 404):
            raise SampleError(f"GET {uri}: HTTP {answer.status} {answer.body[:300]!r}")
        return answer.status, answer.json() if answer.status != 404 else None

    def wait_until(self, what: str, check: Callable[[], Any], timeout: float = INSTANCE_TIMEOUT_S) -> Any:
        """Call ``check`` every 20 ms until it returns something other than ``None``."""
        limit = time.monotonic() + min(timeout, max(self.deadline.left(), 0.0))
        while True:
            self.host.check_alive()
            result = check()
            if result is not None:
                return result
            if time.monotonic() > limit:
                raise SampleError(
                    f"{what}: timed out after {timeout:.0f} s (or the run's time budget ran out)"
                )
            time.sleep(POLL_S)

    def wait_status(
        self, uri: str, want: str, what: str, timeout: float = INSTANCE_TIMEOUT_S
    ) -> dict[str, Any]:
        """Poll ``uri`` until ``runtimeStatus`` is ``want``; fail if it ends in another state."""
        last: list[Any] = [None]

        def check() -> dict[str, Any] | None:
            code, body = self.status(uri)
            if code == 404:
                return None
            last[0] = body
            state = body.get("runtimeStatus")
            if state == want:
                return body
            if state in TERMINAL:
                raise SampleError(f"{what}: ended {state} (wanted {want}); output {body.get('output')!r}")
            return None

        try:
            return self.wait_until(what, check, timeout)
        except SampleError as exc:
            if last[0] is not None and "timed out" in str(exc):
                raise SampleError(f"{exc}; last status {last[0].get('runtimeStatus')}") from None
            raise

    def run_to_completion(self, name: str, payload: Any) -> tuple[float, dict[str, Any], dict[str, Any]]:
        """Start ``name`` and wait for Completed: seconds from the starter request, final status, payload."""
        began = time.perf_counter()
        started = self.start(name, payload)
        final = self.wait_status(started["statusQueryGetUri"], "Completed", f"{name} {started['id']}")
        return time.perf_counter() - began, final, started

    def entity_url(self, name: str, key: str) -> str:
        """The management URL of one entity."""
        return f"{self.api}/durabletask/entities/{name}/{quote(key, safe='')}"

    def signal(self, name: str, key: str, operation: str, value: Any) -> None:
        """Signal an entity operation through the management API (202 expected)."""
        self.host.check_alive()
        answer = self.http.request("POST", f"{self.entity_url(name, key)}?op={operation}", value)
        if answer.status != 202:
            raise SampleError(f"signal {name}/{key} {operation}: HTTP {answer.status} {answer.body[:300]!r}")

    def wait_entity(self, name: str, key: str, expected: Any) -> float:
        """Poll the entity's state until it equals ``expected``; seconds waited."""
        began = time.perf_counter()
        seen: list[Any] = [None]

        def check() -> bool | None:
            answer = self.http.request("GET", self.entity_url(name, key))
            if answer.status == 404:
                return None
            if answer.status != 200:
                raise SampleError(f"GET entity {name}/{key}: HTTP {answer.status} {answer.body[:300]!r}")
            seen[0] = answer.json()
            return True if seen[0] == expected else None

        try:
            self.wait_until(f"entity {name}/{key} state {expected!r}", check)
        except SampleError as exc:
            raise SampleError(f"{exc}; last state {seen[0]!r}") from None
        return time.perf_counter() - began

    # ---------------------------------------------------------------- samples

    def hello_sequence(self, run: Run, starts: int) -> str:
        """``hello_sequence`` ``starts`` times in a row; returns the status URL of the last one."""
        latencies: list[float] = []
        uri = ""
        for _ in range(starts):
            elapsed, final, started = self.run_to_completion("hello_sequence", {})
            if final.get("output") != HELLO:
                raise SampleError(f"hello_sequence output {final.get('output')!r}, expected {HELLO!r}")
            latencies.append(elapsed)
            uri = started["statusQueryGetUri"]
        run.figure("hello_sequence_starts", len(latencies))
        run.figure("hello_sequence_first_s", latencies[0])
        run.figure("hello_sequence_p50_s", fhost.percentile(latencies, 50))
        run.figure("hello_sequence_p99_s", fhost.percentile(latencies, 99))
        run.figure("hello_sequence_max_s", max(latencies))
        print("# hello_sequence latencies: " + " ".join(f"{x:.3f}" for x in latencies), flush=True)
        return uri

    def fan_out_fan_in(self, run: Run, count: int) -> None:
        """``fan_out_fan_in`` with input ``count``: the sum of the squares 1..count."""
        elapsed, final, _ = self.run_to_completion("fan_out_fan_in", count)
        expected = sum(n * n for n in range(1, count + 1))
        if final.get("output") != expected:
            raise SampleError(f"fan_out_fan_in({count}) output {final.get('output')!r}, expected {expected}")
        run.figure(f"fan_out_fan_in_{count}_s", elapsed)

    def wait_running(self, started: dict[str, Any], what: str) -> dict[str, Any]:
        """Wait until the instance's status is Running."""
        return self.wait_status(started["statusQueryGetUri"], "Running", what)

    def approval(self, run: Run) -> None:
        """``approval_workflow``: raise ``Approval`` 1 s after it runs; time from the event to Completed."""
        started = self.start("approval_workflow", {"timeout_s": 600})
        self.wait_running(started, f"approval_workflow {started['id']} running")
        time.sleep(1.0)
        self.host.check_alive()
        event_uri = started["sendEventPostUri"].replace("{eventName}", "Approval")
        began = time.perf_counter()
        answer = self.http.request("POST", event_uri, "bench")
        if answer.status != 202:
            raise SampleError(f"raise Approval: HTTP {answer.status} {answer.body[:300]!r}")
        final = self.wait_status(
            started["statusQueryGetUri"], "Completed", f"approval_workflow {started['id']}"
        )
        elapsed = time.perf_counter() - began
        if final.get("output") != "approved:bench":
            raise SampleError(f"approval_workflow output {final.get('output')!r}, expected 'approved:bench'")
        run.figure("approval_event_to_done_s", elapsed)

    def counter(self, run: Run) -> None:
        """The ``counter`` entity: ``add 5``, ``add 2``, read 7; an unknown key is a 404."""
        key = f"visits-{self.tag}"
        began = time.perf_counter()
        self.signal("counter", key, "add", 5)
        self.signal("counter", key, "add", 2)
        self.wait_entity("counter", key, 7)
        elapsed = time.perf_counter() - began
        missing = self.http.request("GET", self.entity_url("counter", f"nobody-{self.tag}"))
        if missing.status != 404:
            raise SampleError(f"GET a counter never signaled: HTTP {missing.status}, expected 404")
        run.figure("counter_signals_to_state_s", elapsed)
        run.figure("counter_ok", 1)

    def transfer(self, run: Run) -> None:
        """``account`` + ``transfer``: deposit 100, move 30 (70/30), then refuse to move 1000."""
        alice, bob = f"alice-{self.tag}", f"bob-{self.tag}"
        self.signal("account", alice, "deposit", 100)
        self.wait_entity("account", alice, {"balance": 100})
        order = {"from": alice, "to": bob, "amount": 30}
        elapsed, final, _ = self.run_to_completion("transfer", order)
        expected = {"transferred": True, "balances": {alice: 70, bob: 30}}
        if final.get("output") != expected:
            raise SampleError(f"transfer output {final.get('output')!r}, expected {expected!r}")
        self.wait_entity("account", alice, {"balance": 70})
        self.wait_entity("account", bob, {"balance": 30})
        _, refused, _ = self.run_to_completion("transfer", {**order, "amount": 1000})
        output = refused.get("output")
        if not isinstance(output, dict) or output.get("transferred") is not False:
            raise SampleError(f"transfer of 1000 from a balance of 70: output {output!r}, expected a refusal")
        run.figure("transfer_s", elapsed)
        run.figure("transfer_ok", 1)

    def monitor(self, run: Run) -> None:
        """``monitor`` with 1 s timers: done on the third check (two continue-as-new)."""
        elapsed, final, _ = self.run_to_completion(
            "monitor", {"job": "bench", "interval_s": 1, "max_checks": 5}
        )
        expected = {"checks": 3, "status": "done"}
        if final.get("output") != expected:
            raise SampleError(f"monitor output {final.get('output')!r}, expected {expected!r}")
        run.figure("monitor_s", elapsed)
        run.figure("monitor_ok", 1)

    def retry_demo(self, run: Run) -> None:
        """``retry_demo``: an activity failing twice (per worker process), retried every 1 s."""
        elapsed, final, _ = self.run_to_completion("retry_demo", None)
        output = final.get("output")
        match = re.fullmatch(r"succeeded after (\d+) attempts", output) if isinstance(output, str) else None
        if match is None:
            raise SampleError(f"retry_demo output {output!r}, expected 'succeeded after N attempts'")
        print(f"# retry_demo output: {output}")
        run.figure("retry_demo_s", elapsed)
        run.figure("retry_demo_ok", 1)

    def parent_child(self, run: Run) -> None:
        """``parent_child``: two ``hello_sequence`` sub-orchestrations."""
        elapsed, final, _ = self.run_to_completion("parent_child", None)
        if final.get("output") != HELLO * 2:
            raise SampleError(f"parent_child output {final.get('output')!r}, expected {HELLO * 2!r}")
        run.figure("parent_child_s", elapsed)
        run.figure("parent_child_ok", 1)

    def history(self, run: Run, status_uri: str) -> None:
        """GET a completed ``hello_sequence`` with ``showHistory=true``."""
        code, body = self.status(with_query(status_uri, "showHistory=true"))
        if code != 200 or not isinstance(body, dict):
            raise SampleError(f"status with history: HTTP {code}")
        events = body.get("historyEvents")
        if not isinstance(events, list) or not events:
            raise SampleError(f"status with showHistory=true has no historyEvents: {body}")
        kinds = [e.get("EventType") for e in events if isinstance(e, dict)]
        shape = {"ExecutionStarted": 1, "TaskScheduled": 3, "TaskCompleted": 3, "ExecutionCompleted": 1}
        if any(kinds.count(kind) != count for kind, count in shape.items()):
            raise SampleError(f"unexpected history of hello_sequence: {kinds}")
        run.figure("history_events", len(events))
        run.figure("history_ok", 1)

    def listing(self, run: Run) -> None:
        """``GET instances/?top=5``: a JSON list of at most 5 statuses."""
        answer = self.http.request("GET", f"{self.api}/durabletask/instances/?top=5")
        body = answer.json() if answer.status == 200 else None
        if not isinstance(body, list) or not 1 <= len(body) <= 5:
            raise SampleError(f"list top=5: HTTP {answer.status}, {answer.body[:300]!r}")
        if not all(isinstance(s, dict) and "instanceId" in s and "runtimeStatus" in s for s in body):
            raise SampleError(f"list top=5: unexpected items {body!r}")
        run.figure("list_top5_items", len(body))
        run.figure("list_ok", 1)

    def terminate_and_purge(self, run: Run) -> None:
        """Terminate a waiting ``approval_workflow`` through ``terminatePostUri``, purge it, see 404."""
        started = self.start("approval_workflow", {"timeout_s": 3600})
        self.wait_running(started, f"approval_workflow {started['id']} running")
        reason = "bench terminate"
        began = time.perf_counter()
        answer = self.http.request("POST", started["terminatePostUri"].replace("{text}", quote(reason)))
        if answer.status != 202:
            raise SampleError(f"terminate: HTTP {answer.status} {answer.body[:300]!r}")
        final = self.wait_status(started["statusQueryGetUri"], "Terminated", f"terminate {started['id']}")
        elapsed = time.perf_counter() - began
        if final.get("output") != reason:
            raise SampleError(f"terminated instance output {final.get('output')!r}, expected {reason!r}")
        run.figure("terminate_to_terminated_s", elapsed)
        run.figure("terminate_ok", 1)
        purge = self.http.request("DELETE", started["purgeHistoryDeleteUri"])
        purged = purge.json() if purge.status == 200 else None
        if not isinstance(purged, dict) or purged.get("instancesDeleted") != 1:
            raise SampleError(f"purge: HTTP {purge.status} {purge.body[:300]!r}, expected instancesDeleted 1")
        code, _ = self.status(started["statusQueryGetUri"])
        if code != 404:
            raise SampleError(f"status after purge: HTTP {code}, expected 404")
        run.figure("purge_ok", 1)


# ------------------------------------------------------------------------ one worker count


def print_targets(run: Run) -> None:
    """``# target`` lines for the figures that have one."""
    values = dict(run.figures)
    for name, op, target in TARGETS:
        if name in values:
            met = values[name] <= target if op == "<=" else values[name] >= target
            value = fhost.format_value(values[name])
            print(f"# target {name} {op} {target:g}: {value} met {'yes' if met else 'no'}")


def run_workers(workers: int, azurite: Azurite, args: argparse.Namespace, log_dir: Path) -> Run:
    """Start a fresh host on a fresh hub with ``workers`` processes, drive every sample, stop it."""
    run = Run(workers)
    tag = uuid.uuid4().hex[:8]
    hub = f"FhBench{tag}w{workers}"
    port = free_port()
    env = fhost.host_env(azurite.connection_string, hub, args.environment)
    host = Host(fhost.ROOT / "samples", workers, port, env, log_dir, project=fhost.ROOT)
    print(f"# workers {workers}: hub {hub}, port {port}, environment {args.environment}, log {host.log_path}")
    run.figure("workers", workers)
    try:
        host.start()
        run.figure("host_ready_s", fhost.wait_ready(host, READY_TIMEOUT_S))
        host.remember_workers()
        idle_until = time.monotonic() + args.idle
        while time.monotonic() < idle_until:
            host.check_alive()
            host.remember_workers()
            time.sleep(min(1.0, max(idle_until - time.monotonic(), 0.0)))
        run.figure("idle_s", args.idle)
        driver = Driver(host, Deadline(time.monotonic() + MEASURE_BUDGET_S), tag)
        status_uri: list[str] = []
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("hello_sequence", lambda: status_uri.append(driver.hello_sequence(run, args.starts))),
            ("fan_out_fan_in", lambda: driver.fan_out_fan_in(run, args.fanout)),
            ("approval_workflow", lambda: driver.approval(run)),
            ("counter", lambda: driver.counter(run)),
            ("transfer", lambda: driver.transfer(run)),
            ("monitor", lambda: driver.monitor(run)),
            ("retry_demo", lambda: driver.retry_demo(run)),
            ("parent_child", lambda: driver.parent_child(run)),
            ("history", lambda: driver.history(run, status_uri[0]) if status_uri else None),
            ("list", lambda: driver.listing(run)),
            ("terminate_purge", lambda: driver.terminate_and_purge(run)),
        ]
        for name, step in steps:
            host.remember_workers()  # a worker that exits is restarted with a new pid
            try:
                step()
            except SampleError as exc:
                run.failures.append(f"workers={workers} {name}: {exc}")
                print(f"# FAILED {name}: {exc}", flush=True)
                if driver.deadline.left() <= 0:
                    run.failures.append(
                        f"workers={workers}: the time budget of {MEASURE_BUDGET_S:.0f} s ran out"
                    )
                    break
            except (OSError, http.client.HTTPException) as exc:
                host.check_alive()
                run.failures.append(f"workers={workers} {name}: HTTP error {exc!r}")
                print(f"# FAILED {name}: HTTP error {exc!r}", flush=True)
        host.check_alive()
    except HostExited as exc:
        run.failures.append(f"workers={workers}: {exc}")
        print(f"# FAILED host: {exc}", flush=True)
    finally:
        expected_alive = host.process is not None and host.process.poll() is None
        host.stop()
        if expected_alive and host.exit_code != 0:
            run.failures.append(
                f"workers={workers}: the host exited with code {host.exit_code} after SIGTERM"
            )
        if host.exit_code is not None:
            run.figure("host_exit_code", host.exit_code)
        for name, count in fhost.scan_log(host.log_path).items():
            run.figure(name, count)
        if run.failures:
            for text in fhost.first_exceptions(host.log_path):
                print(f"# host log: {text[:300]}")
        print_targets(run)
    return run


# ------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line; ``--quick`` fills the sizes not given."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts, one host each (default 1 2)")
    parser.add_argument(
        "--idle", type=float, help="idle seconds after Running, before measuring (default 90)"
    )
    parser.add_argument("--starts", type=int, help="hello_sequence starts (default 20)")
    parser.add_argument("--fanout", type=int, help="fan_out_fan_in input (default 100)")
    parser.add_argument(
        "--environment",
        default="Production",
        choices=["Production", "Development"],
        help="AZURE_FUNCTIONS_ENVIRONMENT of the host (default Production)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="idle 15 s, 5 starts, fan-out 20, one worker count"
    )
    parser.add_argument("--log-dir", help="folder for the host logs (default: a new temporary folder)")
    args = parser.parse_args(argv)
    quick = {"idle": 15.0, "starts": 5, "fanout": 20}
    full = {"idle": 90.0, "starts": 20, "fanout": 100}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.workers is None:
        args.workers = [2] if args.quick else [1, 2]
    elif args.quick:
        args.workers = args.workers[:1]
    if any(not 1 <= w <= 10 for w in args.workers):
        parser.error("--workers takes counts from 1 to 10")
    if args.starts < 1 or args.fanout < 1 or args.idle < 0:
        parser.error("--starts and --fanout must be positive, --idle not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every worker count; ``PASS`` or ``FAIL <reason>`` last, exit code 0 or 1."""
    args = parse_args(argv)
    if not (fhost.HOST_DIR / "start").is_file():
        print(f"FAIL functions-host not found: no {fhost.HOST_DIR}/start (shared/ beside the repository)")
        return 2
    log_dir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="functions-host-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    print(
        f"# functions-host benchmark: workers {args.workers}, idle {args.idle:g} s, starts {args.starts}, "
        f"fanout {args.fanout}, environment {args.environment}, logs in {log_dir}"
    )
    azurite = Azurite()
    try:
        azurite.start()
        for workers in args.workers:
            failures += run_workers(workers, azurite, args, log_dir).failures
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Exception as exc:  # Azurite failing to start, or a bug here: still a verdict line
        failures.append(f"{type(exc).__name__}: {exc}")
    finally:
        azurite.stop()
    return fhost.verdict(failures)


if __name__ == "__main__":
    sys.exit(main())
