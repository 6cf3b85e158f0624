"""What the scripts that run ``../shared/functions-host/start`` share: the host process, HTTP, logs.

``Host`` runs ``functions-host/start APP_DIR`` as a child in a process group of its own, remembers
its worker processes (they run in sessions of their own) and stops it with SIGTERM by pid, then
SIGKILL of its group after a grace, then stops any worker it left behind, by pid. ``Http`` is a
keep-alive HTTP/1.1 client, ``wait_ready`` polls ``/admin/host/status``, ``scan_log`` and
``first_exceptions`` read the host's ``--log-file``.

Standard library only, so that importing it pulls in nothing that ``benchmarks/azure.py`` (beside
this file) could shadow; importers put this folder on ``sys.path`` only while importing it, or load
it by file (``importlib.util.spec_from_file_location``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
HOST_DIR = ROOT.parent / "shared" / "functions-host"

STOP_GRACE_S = 45.0  # the host gives in-flight invocations 30 s after SIGTERM
REQUEST_TIMEOUT_S = 30.0


class SampleError(Exception):
    """A sample gave a wrong output, answered an unexpected status, or timed out."""


class HostExited(Exception):
    """The host process ended while it was being driven."""


# ------------------------------------------------------------------------ HTTP


@dataclass
class Response:
    """One HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON (``None`` when empty)."""
        return json.loads(self.body) if self.body.strip() else None


class Http:
    """A keep-alive HTTP/1.1 client on one host; a stale idle connection is reopened once."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._conn: http.client.HTTPConnection | None = None
        self._used = False

    def close(self) -> None:
        """Drop the connection (the next request opens a new one)."""
        if self._conn is not None:
            self._conn.close()
        self._conn, self._used = None, False

    def request(self, method: str, url: str, body: Any = None, *, timeout: float | None = None) -> Response:
        """Send ``method url`` (an absolute URL or a path) with ``body`` as JSON."""
        parts = urlsplit(url)
        if parts.netloc and (parts.hostname, parts.port) != (self.host, self.port):
            raise SampleError(f"URL {url} does not point to this host {self.host}:{self.port}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=timeout or REQUEST_TIMEOUT_S
                )
                self._used = False
            reused = self._used
            try:
                self._conn.request(method, target, body=payload, headers=headers)
                answer = self._conn.getresponse()
                data = answer.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed the idle keep-alive connection: nothing was processed
                raise
            except (OSError, http.client.HTTPException):
                self.close()
                raise
            self._used = True
            if answer.will_close:
                self.close()
            return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, data)
        raise AssertionError("unreachable")


# ------------------------------------------------------------------------ host


class Host:
    """``functions-host/start APP_DIR`` as a child process in its own process group.

    ``project`` is passed as ``--project`` (installed with ``pip install -e`` into the host's venv;
    ``None``: no ``--project``, the app's ``requirements.txt`` alone). ``name`` tells the log files
    of several hosts apart: ``host-{name}.log`` (the ``--log-file``) and ``host-{name}.out`` (stdout
    and stderr) in ``log_dir``; default ``w{workers}``.
    """

    def __init__(
        self,
        app_dir: Path,
        workers: int,
        port: int,
        env: dict[str, str],
        log_dir: Path,
        *,
        project: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.app_dir = app_dir
        self.workers = workers
        self.port = port
        self.env = env
        self.project = project
        name = name or f"w{workers}"
        self.out_path = log_dir / f"host-{name}.out"
        self.log_path = log_dir / f"host-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self.exit_code: int | None = None
        self.worker_pids: dict[int, str] = {}  # pid -> start time, of the workers seen so far

    @property
    def api(self) -> str:
        """The base URL of the app's HTTP functions (routePrefix ``api``)."""
        return f"http://127.0.0.1:{self.port}/api"

    def command(self) -> list[str]:
        """The command line of the host."""
        command = [str(HOST_DIR / "start"), str(self.app_dir)]
        if self.project is not None:
            command += ["--project", str(self.project)]
        command += ["--workers", str(self.workers), "--port", str(self.port)]
        return [*command, "--log-file", str(self.log_path)]

    def start(self) -> None:
        """Start the host (its stdout and stderr go to ``out_path``)."""
        self.log_path.unlink(missing_ok=True)  # the host appends to its --log-file
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - open for the child's lifetime
        self.process = subprocess.Popen(
            self.command(),
            cwd=ROOT,
            env=self.env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def remember_workers(self) -> None:
        """Note the host's worker processes: they run in sessions of their own (see ``stop``)."""
        if self.process is not None and self.process.poll() is None:
            self.worker_pids.update(children(self.process.pid))

    def check_alive(self) -> None:
        """Raise ``HostExited`` when the host process has ended."""
        if self.process is not None and self.process.poll() is not None:
            raise HostExited(f"the host exited with code {self.process.returncode}: {self.last_words()}")

    def last_words(self) -> str:
        """The host's ``startup failed`` line, else the last line of its output."""
        try:
            lines = self.out_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no output)"
        for line in lines:
            if "startup failed" in line or line.startswith("functions-host:"):
                return line.strip()
        return lines[-1].strip() if lines else "(no output)"

    def stop(self) -> None:
        """SIGTERM to the host's pid and wait (SIGKILL to its group after a grace); then stop orphans.

        Sets ``exit_code``; calling it again does nothing more.
        """
        process = self.process
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    print(f"# host pid {process.pid} still runs {STOP_GRACE_S:.0f} s after SIGTERM: SIGKILL")
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
                self.exit_code = process.returncode
            elif self.exit_code is None:
                self.exit_code = process.returncode
            else:
                return  # stopped before
            if self.exit_code != 0:
                # a host that was killed leaves children of its own group behind (the start script's pip)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
            self._stop_orphans()
        if self._out is not None:
            self._out.close()
            self._out = None

    def _stop_orphans(self) -> None:
        """Stop the workers a host that died left running (each in its own session), by pid."""
        alive = [pid for pid, began in self.worker_pids.items() if start_time(pid) == began]
        if alive:
            print(f"# stopping {len(alive)} worker process(es) the host left behind: {alive}")
        for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for pid in alive:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            limit = time.monotonic() + grace
            while alive and time.monotonic() < limit:
                time.sleep(0.1)
                alive = [pid for pid in alive if start_time(pid) == self.worker_pids[pid]]
            if not alive:
                break


def start_time(pid: int) -> str | None:
    """The start time of a live process (``/proc/PID/stat`` field 22), ``None`` when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def children(parent: int) -> dict[int, str]:
    """The live child processes of ``parent`` with their start times (empty without ``/proc``)."""
    found: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError):
                fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == parent and fields[0] != "Z":
                    found[int(entry.name)] = fields[19]
    return found


def host_env(
    connection: str, hub: str, environment: str, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """The host's environment: ours plus storage, hub, ``AZURE_FUNCTIONS_ENVIRONMENT`` and ``extra``."""
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH"):
        env.pop(name, None)  # the host runs in its own venv
    env["AzureWebJobsStorage"] = connection
    env["AzureFunctionsJobHost__extensions__durableTask__hubName"] = hub
    env["AZURE_FUNCTIONS_ENVIRONMENT"] = environment
    env.update(extra or {})
    return env


def wait_ready(host: Host, timeout: float) -> float:
    """Poll ``/admin/host/status`` until ``{"state": "Running"}``; seconds waited."""
    began = time.monotonic()
    client = Http("127.0.0.1", host.port)
    while True:
        host.check_alive()
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            answer = client.request("GET", "/admin/host/status", timeout=5)
            body = answer.json() if answer.status == 200 else None
            if isinstance(body, dict) and body.get("state") == "Running":
                client.close()
                return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise HostExited(f"the host was not Running after {timeout:.0f} s: {host.last_words()}")
        time.sleep(0.2)


# ------------------------------------------------------------------------ the host log

#: ``[w<index>] text``: a line of one of the app's worker processes (its logs and prints).
_WORKER_LINE = re.compile(r"\[w\d+\] (.*)")
#: the repair sweep's warnings (logger ``durable_ext.azure``): ``repair: re-dispatching outbox …``,
#: ``repair: waking …``, ``repair: re-sent …``; also behind a logger name or level prefix.
_REPAIR = re.compile(r"(?:^|[\]: ])repair: ")


def scan_log(path: Path) -> dict[str, int]:
    """Counts in the host log: failed and queue-triggered invocations, Azure SDK HTTP logging lines,
    the workers' repair-sweep lines (``repair: …``) and the sweeps that ran."""
    counts = {
        "failed_invocations": 0,
        "queue_trigger_invocations": 0,
        "azure_http_logging_lines": 0,
        "repair_lines": 0,
        "sweeps": 0,
    }
    queue_functions = ("'Functions.durabletask_control_", "'Functions.durabletask_workitems'")
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            if "Executed 'Functions." in line and "Failed" in line:
                counts["failed_invocations"] += 1
            if "Executed 'Functions." in line and any(name in line for name in queue_functions):
                counts["queue_trigger_invocations"] += 1
            if "azure.core.pipeline.policies.http_logging_policy" in line:
                counts["azure_http_logging_lines"] += 1
            if "Executed 'Functions.durabletask_repair' (Succeeded" in line:
                counts["sweeps"] += 1
            worker = _WORKER_LINE.search(line)
            if worker is not None and _REPAIR.search(worker.group(1)):
                counts["repair_lines"] += 1
    return counts


def first_exceptions(path: Path, limit: int = 3) -> list[str]:
    """The first distinct ``Exception:`` lines of failed invocations in the host log."""
    found: list[str] = []
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as log:
        for line in log:
            text = line.strip()
            if text.startswith("Exception:") and text not in found:
                found.append(text)
                if len(found) == limit:
                    break
    return found


# ------------------------------------------------------------------------ figures


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the maximum)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def format_value(value: float) -> str:
    """Integers as integers, other numbers with 4 decimals."""
    return str(int(value)) if float(value).is_integer() else f"{value:.4f}"


def verdict(failures: list[str]) -> int:
    """Print the last line, ``PASS`` or ``FAIL <reasons>``; the exit code, 0 or 1."""
    print("FAIL " + "; ".join(failures) if failures else "PASS", flush=True)
    return 1 if failures else 0
