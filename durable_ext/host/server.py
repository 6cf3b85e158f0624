"""The local Functions host: ``durable-ext start APP_DIR``.

It loads ``function_app.py`` from the app folder (``local.settings.json``
``Values`` become environment variables first, without overriding ones already
set), then runs what the app registered with standard bindings:

- **HTTP triggers** on aiohttp under ``/{routePrefix}/`` (host.json
  ``extensions.http.routePrefix``, default ``api``): the function's methods,
  route templates with ``{name}``, ``{name?}``, ``{name:constraint}`` (the
  constraint is not checked) and the ``{*rest}`` catch-all. The function gets
  a ``func.HttpRequest`` (``params``, ``route_params``, headers, body) and
  returns a ``func.HttpResponse`` (or ``str``/``bytes``: 200, ``None``: 204).
- **Queue triggers** with ``QueueTriggerRunner`` (host.json
  ``extensions.queues``: ``batchSize``, ``newBatchThreshold``,
  ``visibilityTimeout``, ``maxDequeueCount``, then ``{queue}-poison``). The
  durable control and work-item queues run in an ``AzureWorker`` (same
  handlers, same runner, plus the repair sweep and in-process activities).
- **Timer triggers**: NCRONTAB schedules (six fields ``sec min hour day month
  weekday`` or five without seconds; ``*``, ``*/n``, ``a``, ``a-b``, ``a-b/n``,
  comma lists, ``JAN``/``MON`` names; UTC; computed with ``croniter``) or a
  TimeSpan (``hh:mm:ss``) interval; ``run_on_startup``. ``past_due`` is always
  false. A timer with an invalid schedule is logged as an error and not run.

Only the trigger binding is filled in (plus ``context``); a function with
other bindings is skipped with a warning.

**Keys.** Without ``--enforce-keys`` every route is open, as ``func start``
is. With it, ``function`` level routes need ``?code=`` or ``x-functions-key``
equal to ``DURABLE_EXT_FUNCTION_KEY`` or ``DURABLE_EXT_MASTER_KEY`` (app
settings), ``admin`` routes need the master key; keys not configured are
generated and logged at start. Check-status URLs then carry the function key.

**Storage.** Without a storage setting the host uses
``AzureWebJobsStorage=UseDevelopmentStorage=true`` (and says so); with that
value and nothing listening on 127.0.0.1:10000-10002 it starts Azurite on
those ports with its data in ``APP_DIR/.azurite/`` and stops it on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import inspect
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import azure.functions as func
from aiohttp import web
from croniter import CroniterBadDateError, croniter

from ..bindings import DurableRuntime, is_builtin_function
from ..config import parse_timespan
from ..handlers import QueueMessage
from .queues import QueueTriggerOptions, QueueTriggerRunner

log = logging.getLogger("durable_ext.host")

DEV_STORAGE = "UseDevelopmentStorage=true"
AZURITE_DIR = ".azurite"


# ------------------------------------------------------------------------------ settings


def apply_local_settings(app_dir: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Copy ``local.settings.json`` ``Values`` into the environment (existing variables win)."""
    env = os.environ if environ is None else environ
    path = app_dir / "local.settings.json"
    applied: dict[str, str] = {}
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        for key, value in (data.get("Values") or {}).items():
            if str(key) not in env:
                env[str(key)] = str(value)
                applied[str(key)] = str(value)
    return applied


def has_connection(name: str, environ: Mapping[str, str]) -> bool:
    """Whether connection ``name`` is configured at all (a value or ``name__...`` settings)."""
    lowered = {k.lower().replace(":", "__") for k, v in environ.items() if v}
    for base in (f"AzureWebJobs{name}", name):
        for key in (base, f"ConnectionStrings__{base}"):
            key = key.lower()
            if key in lowered or any(k.startswith(key + "__") for k in lowered):
                return True
    return False


# ------------------------------------------------------------------------------ routes


_PARAM = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(\?)?(?::[^}]*)?\}")


def compile_route(template: str) -> tuple[re.Pattern[str], int]:
    """A regex for a Functions route template (path without leading slash) and its precedence."""
    parts: list[str] = []
    literals = 0
    segments = [s for s in template.strip("/").split("/") if s != ""]
    for i, segment in enumerate(segments):
        match = _PARAM.fullmatch(segment)
        sep = "/" if i else ""
        if match and match[1]:  # catch-all: the rest of the path, possibly empty
            parts.append(f"(?:{sep}(?P<{match[2]}>.*))?" if i else f"(?P<{match[2]}>.*)")
            literals -= 1000
            break
        if match and match[3]:
            parts.append(f"(?:{sep}(?P<{match[2]}>[^/]+))?")
            continue
        if match:
            parts.append(f"{sep}(?P<{match[2]}>[^/]+)")
            continue
        literals += 1
        pieces = _PARAM.split(segment)
        # a segment mixing text and parameters, e.g. "file-{name}.txt"
        out, k = [], 0
        while k < len(pieces):
            out.append(re.escape(pieces[k]))
            if k + 1 < len(pieces):
                out.append(f"(?P<{pieces[k + 2]}>[^/]+?)")
            k += 4
        parts.append(sep + "".join(out))
    return re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE), literals


@dataclass
class HttpFunction:
    """One HTTP-triggered function and its compiled route."""

    name: str
    fn: Callable[..., Any]
    trigger_arg: str
    methods: set[str] | None
    auth_level: str
    pattern: re.Pattern[str]
    precedence: int
    route: str


@dataclass
class Invocation:
    """A minimal ``func.Context`` for functions that ask for ``context``."""

    function_name: str
    function_directory: str
    invocation_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    trace_context: Any = None
    retry_context: Any = None
    thread_local_storage: Any = None


async def call_function(fn: Callable[..., Any], kwargs: dict[str, Any], name: str, app_dir: Path) -> Any:
    """Call a user function (async on the loop, sync in a thread) with ``context`` when it wants one."""
    if "context" in inspect.signature(fn).parameters and "context" not in kwargs:
        kwargs["context"] = Invocation(name, str(app_dir))
    if inspect.iscoroutinefunction(fn):
        return await fn(**kwargs)
    result = await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, **kwargs))
    return await result if inspect.isawaitable(result) else result


def to_aiohttp(result: Any) -> web.Response:
    """A function's return value as an aiohttp response."""
    if result is None:
        return web.Response(status=204)
    if isinstance(result, func.HttpResponse):
        headers = {k: v for k, v in result.headers.items() if k.lower() != "content-type"}
        content_type = result.headers.get("Content-Type") or result.mimetype
        if result.charset and content_type and "charset" not in content_type:
            content_type = f"{content_type}; charset={result.charset}"
        if content_type:
            headers["Content-Type"] = content_type
        return web.Response(status=result.status_code, body=result.get_body(), headers=headers)
    if isinstance(result, (bytes, bytearray)):
        return web.Response(body=bytes(result))
    return web.Response(text=str(result))


# ------------------------------------------------------------------------------ timers

_FIELDS = ("second", "minute", "hour", "day", "month", "weekday")
_NAMES = {
    "month": {"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"},
    "weekday": {"sun", "mon", "tue", "wed", "thu", "fri", "sat"},
}
_VALUE = r"(?:\d+|[A-Za-z]+)"
_ITEM = rf"(?:\*|{_VALUE}(?:-{_VALUE})?)(?:/\d+)?"
_FIELD = re.compile(rf"{_ITEM}(?:,{_ITEM})*")
MAX_YEARS_BETWEEN_FIRES = 100
"""How far ahead a schedule is searched: the longest real gap (29 Feb on a weekday) is 40 years."""
TIMER_RETRY_SECONDS = 60.0
"""Wait after an unexpected error in a timer loop before computing the next time again."""


def _check_field(kind: str, text: str) -> None:
    """NCrontab's grammar only (``*``, ``a``, ``a-b``, ``/n``, lists, names): croniter accepts more."""
    if not _FIELD.fullmatch(text):
        raise ValueError(f"{kind} field {text!r}: use *, n, a-b, */n, a-b/n or a comma list")
    for name in re.findall(r"[A-Za-z]+", text):
        if name.lower() not in _NAMES.get(kind, ()):
            allowed = "/".join(sorted(_NAMES[kind])) if kind in _NAMES else "numbers only"
            raise ValueError(f"{kind} field {text!r}: {name!r} is not allowed ({allowed})")


class Schedule:
    """A timer trigger's schedule: NCRONTAB (UTC) or a TimeSpan interval.

    Six fields are seconds first (``sec min hour day month weekday``), five are
    minute first; names are case-insensitive, weekday 0 and 7 are Sunday, and a
    restricted day AND weekday must both match, as in NCrontab (the Azure host).
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.interval: timedelta | None = None
        fields = text.split()
        if len(fields) == 1:
            try:
                self.interval = parse_timespan(text, "schedule")
            except ValueError as exc:
                raise ValueError(f"schedule {text!r} is neither NCRONTAB nor a TimeSpan: {exc}") from exc
            if self.interval <= timedelta(0):
                raise ValueError(f"schedule {text!r}: a TimeSpan schedule must be positive")
            return
        if len(fields) not in (5, 6):
            raise ValueError(
                f"schedule {text!r} has {len(fields)} fields: NCRONTAB takes six "
                "(sec min hour day month weekday) or five (min hour day month weekday)"
            )
        now = datetime.now(timezone.utc)
        try:
            for kind, value in zip(_FIELDS[6 - len(fields) :], fields, strict=True):
                _check_field(kind, value)
            self._cron(now)
        except ValueError as exc:  # croniter's errors are ValueErrors too
            raise ValueError(f"schedule {text!r} is not valid NCRONTAB: {exc}") from exc
        try:
            self.next_after(now)
        except ValueError as exc:
            raise ValueError(f"schedule {text!r} never fires: {exc}") from exc

    def _cron(self, start: datetime) -> croniter:
        return croniter(
            self.text,
            start,
            ret_type=datetime,
            day_or=False,
            second_at_beginning=True,
            max_years_between_matches=MAX_YEARS_BETWEEN_FIRES,
        )

    def next_after(self, now: datetime) -> datetime:
        """The first fire time strictly after ``now`` (an aware UTC datetime)."""
        if self.interval is not None:
            return now + self.interval
        try:
            due: datetime = self._cron(now.astimezone(timezone.utc)).get_next()
        except CroniterBadDateError as exc:
            raise ValueError(f"no fire time within {MAX_YEARS_BETWEEN_FIRES} years of {now}") from exc
        return due


# ------------------------------------------------------------------------------ the host


class LocalHost:
    """Runs one function app folder: HTTP server, queue and timer triggers, durable worker."""

    def __init__(
        self,
        app_dir: str | os.PathLike[str] = ".",
        *,
        port: int = 7071,
        host: str = "127.0.0.1",
        enforce_keys: bool = False,
    ) -> None:
        self.app_dir = Path(app_dir).resolve()
        self.port = port
        self.host = host
        self.enforce_keys = enforce_keys
        self.app: Any = None
        self.worker: Any = None
        self.backend: Any = None
        self.counter: Any = None
        self.azurite: Any = None
        self.http_functions: list[HttpFunction] = []
        self.runners: list[QueueTriggerRunner] = []
        self._connections: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self.master_key: str | None = None
        self.function_key: str | None = None
        self.route_prefix = "api"
        self.invocations: dict[str, int] = {}

    # -- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the app, start storage if needed, the worker, the triggers and the HTTP server."""
        from ..backends.azure.connection import StorageCallCounter, resolve_connection
        from .loader import load_app
        from .worker import AzureWorker, backend_from_settings

        applied = apply_local_settings(self.app_dir)
        if applied:
            log.info("read %d settings from local.settings.json", len(applied))
        env = os.environ
        if not has_connection("Storage", env):
            env["AzureWebJobsStorage"] = DEV_STORAGE
            log.warning("AzureWebJobsStorage is not set: using %s (a local Azurite)", DEV_STORAGE)
        self.app = load_app(self.app_dir)
        options = self.app.durable_options
        self.route_prefix = self.app.host_settings.route_prefix
        await asyncio.get_running_loop().run_in_executor(None, self._ensure_azurite, options.connection_name)
        self._keys()

        self.counter = StorageCallCounter()
        connection = resolve_connection(env, options.connection_name, counter=self.counter)
        self.backend, interval = backend_from_settings(connection, options, env)
        self.worker = AzureWorker(self.app.registry, self.backend, options, repair_interval=interval)
        runtime = DurableRuntime(
            self.app.registry,
            self.app.host_settings,
            self.backend,
            self.worker.handlers,
            management_key=self.function_key if self.enforce_keys else None,
        )
        self.app.use_durable_runtime(runtime)
        await self.worker.start()
        for queue_name, runner in self.worker.runners.items():
            runner.handler = self._logged(_durable_function_name(queue_name, options), runner.handler)

        functions = self.app.get_functions()
        for function in functions:
            await self._add_function(function)
        self.http_functions.sort(key=lambda f: -f.precedence)

        web_app = web.Application(client_max_size=100 * 1024**2)
        web_app.router.add_route("*", r"/{tail:[\s\S]*}", self._handle_http)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info(
            "host %d serving %s on http://%s:%d/%s (hub %s, %d functions)",
            os.getpid(),
            self.app_dir.name,
            self.host,
            self.port,
            self.route_prefix,
            options.hub_name,
            len(functions),
        )
        for f in self.http_functions:
            log.info("  %s: [%s] /%s", f.name, ",".join(sorted(f.methods or {"*"})), self._path_of(f.route))

    def _path_of(self, route: str) -> str:
        return f"{self.route_prefix}/{route}".strip("/") if self.route_prefix else route

    def _ensure_azurite(self, connection_name: str) -> None:
        from .azurite import DEFAULT_PORTS, Azurite, port_open

        value = os.environ.get(f"AzureWebJobs{connection_name}") or os.environ.get(connection_name) or ""
        if value.replace(" ", "").lower().rstrip(";") != DEV_STORAGE.lower():
            return
        open_ports = [p for p in DEFAULT_PORTS.values() if port_open("127.0.0.1", p)]
        if len(open_ports) == len(DEFAULT_PORTS):
            log.info("using the storage emulator already listening on 127.0.0.1:10000-10002")
            return
        if open_ports:
            log.warning("ports %s are taken but not all of 10000-10002: not starting Azurite", open_ports)
            return
        log.info("starting Azurite on 127.0.0.1:10000-10002 (data in %s)", self.app_dir / AZURITE_DIR)
        self.azurite = Azurite(self.app_dir / AZURITE_DIR, ports=dict(DEFAULT_PORTS)).start()

    def _keys(self) -> None:
        env = os.environ
        self.master_key = env.get("DURABLE_EXT_MASTER_KEY") or None
        self.function_key = env.get("DURABLE_EXT_FUNCTION_KEY") or None
        if not self.enforce_keys:
            return
        if self.master_key is None:
            self.master_key = secrets.token_urlsafe(24)
            log.warning("no DURABLE_EXT_MASTER_KEY: generated master key %s", self.master_key)
        if self.function_key is None:
            self.function_key = secrets.token_urlsafe(24)
            log.warning("no DURABLE_EXT_FUNCTION_KEY: generated function key %s", self.function_key)

    async def _add_function(self, function: Any) -> None:
        name = function.get_function_name()
        trigger = function.get_trigger().get_dict_repr()
        kind = trigger["type"]
        others = [
            b.get_dict_repr()["type"]
            for b in function.get_bindings()
            if b is not function.get_trigger() and b.get_dict_repr()["type"] != "http"
        ]
        if is_builtin_function(name) and kind != "httpTrigger":
            return  # the AzureWorker runs the durable queues and the repair sweep
        if others:
            log.warning("skipping %s: the local host fills in no %s bindings", name, ", ".join(others))
            return
        fn = function.get_user_function()
        if kind == "httpTrigger":
            methods = trigger.get("methods")
            pattern, precedence = compile_route(trigger.get("route") or name)
            self.http_functions.append(
                HttpFunction(
                    name,
                    fn,
                    trigger["name"],
                    {str(m).upper() for m in methods} if methods else None,
                    str(trigger.get("authLevel") or "FUNCTION").upper(),
                    pattern,
                    precedence,
                    trigger.get("route") or name,
                )
            )
        elif kind == "queueTrigger":
            await self._add_queue_function(name, fn, trigger)
        elif kind == "timerTrigger":
            self._add_timer_function(name, fn, trigger)
        else:
            log.warning("skipping %s: the local host does not run %s functions", name, kind)

    def _add_timer_function(self, name: str, fn: Callable[..., Any], trigger: dict[str, Any]) -> None:
        """Start the timer's loop; a bad schedule is an error in the log, not a failed start."""
        text = str(trigger.get("schedule"))
        try:
            schedule = Schedule(text)
        except ValueError as exc:
            log.error(
                "timer function '%s' has an invalid schedule '%s': %s; it will not run", name, text, exc
            )
            return
        task = asyncio.create_task(self._timer_loop(name, fn, trigger, schedule))
        self._tasks.append(task)

    async def _add_queue_function(self, name: str, fn: Callable[..., Any], trigger: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceExistsError

        from ..backends.azure.connection import resolve_connection

        conn_name = trigger.get("connection") or "AzureWebJobsStorage"
        connection = self._connections.get(conn_name)
        if connection is None:
            connection = self._connections[conn_name] = resolve_connection(os.environ, conn_name)
        queue = connection.queue_service().get_queue_client(trigger["queueName"])
        with contextlib.suppress(ResourceExistsError):
            await queue.create_queue()
        q = self.app.durable_options.queues
        options = QueueTriggerOptions(
            batch_size=q.batch_size,
            new_batch_threshold=q.new_batch_threshold,
            visibility_timeout=q.visibility_timeout,
            max_dequeue_count=q.max_dequeue_count,
            max_polling_interval=q.max_polling_interval,
        )
        arg = trigger["name"]

        async def handler(message: QueueMessage) -> None:
            from azure.functions.queue import QueueMessage as FuncQueueMessage

            msg = FuncQueueMessage(
                id=message.id,
                body=message.content.encode("utf-8"),
                dequeue_count=message.dequeue_count,
                insertion_time=message.inserted_on,
                pop_receipt=message.pop_receipt,
            )
            await call_function(fn, {arg: msg}, name, self.app_dir)

        runner = QueueTriggerRunner(queue, self._logged(name, handler), options, name=name)
        self.runners.append(runner)
        await runner.start()

    def _logged(
        self, name: str, handler: Callable[[QueueMessage], Awaitable[None]]
    ) -> Callable[[QueueMessage], Awaitable[None]]:
        async def logged(message: QueueMessage) -> None:
            begin = time.perf_counter()
            outcome = "Failed"
            try:
                await handler(message)
                outcome = "Succeeded"
            finally:
                self._record(name, outcome, begin, f"id={message.id}")

        return logged

    def _record(self, name: str, outcome: str, begin: float, detail: str = "") -> None:
        self.invocations[name] = self.invocations.get(name, 0) + 1
        ms = (time.perf_counter() - begin) * 1000
        log.info("Executed '%s' (%s, %s, %.1f ms)", name, outcome, detail, ms)

    async def _timer_loop(
        self, name: str, fn: Callable[..., Any], trigger: dict[str, Any], schedule: Schedule
    ) -> None:
        """Fire at each due time; an unexpected error is logged and the next time computed again."""
        arg = trigger["name"]
        if trigger.get("runOnStartup"):
            await self._fire_timer(name, fn, arg)
        last: datetime | None = None
        while True:
            try:
                now = datetime.now(timezone.utc)
                # never before the last fire time: the sleep may end a little early by the wall clock
                due = schedule.next_after(now if last is None else max(now, last))
                await asyncio.sleep(max(0.0, (due - now).total_seconds()))
                last = due
                await self._fire_timer(name, fn, arg)
            except Exception:
                log.exception(
                    "timer function '%s' (schedule '%s'): retrying in %.0f s",
                    name,
                    schedule.text,
                    TIMER_RETRY_SECONDS,
                )
                await asyncio.sleep(TIMER_RETRY_SECONDS)

    async def _fire_timer(self, name: str, fn: Callable[..., Any], arg: str) -> None:
        from azure.functions.timer import TimerRequest

        begin = time.perf_counter()
        outcome = "Failed"
        try:
            await call_function(fn, {arg: TimerRequest(past_due=False)}, name, self.app_dir)
            outcome = "Succeeded"
        except Exception:
            log.exception("timer function %s failed", name)
        finally:
            self._record(name, outcome, begin, "timer")

    # -- HTTP ----------------------------------------------------------------------------------

    def _match(self, path: str) -> tuple[HttpFunction, dict[str, str]] | None:
        prefix = "/" + self.route_prefix.strip("/") if self.route_prefix else ""
        if prefix:
            if path.lower() == prefix.lower():
                rest = ""
            elif path.lower().startswith(prefix.lower() + "/"):
                rest = path[len(prefix) + 1 :]
            else:
                return None
        else:
            rest = path.lstrip("/")
        for f in self.http_functions:
            m = f.pattern.match(rest)
            if m:
                return f, {k: v for k, v in m.groupdict().items() if v is not None}
        return None

    def _authorized(self, f: HttpFunction, request: web.Request) -> bool:
        if not self.enforce_keys or f.auth_level == "ANONYMOUS":
            return True
        supplied = request.headers.get("x-functions-key") or request.query.get("code") or ""
        keys = [self.master_key] if f.auth_level == "ADMIN" else [self.master_key, self.function_key]
        given = supplied.encode()
        ok = [hmac.compare_digest(given, k.encode()) for k in keys if k]
        return any(ok)

    async def _handle_http(self, request: web.Request) -> web.StreamResponse:
        from urllib.parse import unquote

        begin = time.perf_counter()
        found = self._match(unquote(request.rel_url.raw_path))
        if found is None:
            return web.json_response({"error": f"no function serves {request.path}"}, status=404)
        f, route_params = found
        if f.methods is not None and request.method.upper() not in f.methods:
            return web.json_response(
                {"error": f"method {request.method} is not allowed"},
                status=405,
                headers={"Allow": ", ".join(sorted(f.methods))},
            )
        if not self._authorized(f, request):
            self._record(f.name, "Unauthorized", begin, "401")
            return web.json_response(
                {"error": "a valid key is required (?code= or x-functions-key)"}, status=401
            )
        body = await request.read()
        req = func.HttpRequest(
            request.method,
            str(request.url),
            headers=dict(request.headers),
            params=dict(request.rel_url.query),
            route_params=route_params,
            body=body,
        )
        try:
            result = await call_function(f.fn, {f.trigger_arg: req}, f.name, self.app_dir)
            response = to_aiohttp(result)
        except Exception:
            log.exception("function %s failed", f.name)
            self._record(f.name, "Failed", begin, f"{request.method} {request.path} 500")
            return web.json_response({"error": f"function {f.name} failed; see the host log"}, status=500)
        self._record(f.name, "Succeeded", begin, f"{request.method} {request.path} {response.status}")
        return response

    # -- stop ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Invocation counts, engine and storage counters, for tests and the stats file."""
        out: dict[str, Any] = {"pid": os.getpid(), "invocations": dict(self.invocations)}
        if self.worker is not None:
            out["engine"] = dict(self.worker.engine.stats)
            out["runners"] = {n: r.stats() for n, r in self.worker.runners.items()}
        if self.counter is not None:
            out["storage"] = self.counter.snapshot()
        return out

    async def stop(self) -> None:
        """Stop serving, let running handlers finish, close storage, stop the Azurite we started."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self.runners), return_exceptions=True)
        if self.worker is not None:
            await self.worker.stop()
        if self.app is not None:
            self.app.use_durable_runtime(None)
        if self.backend is not None:
            await self.backend.close()
        for connection in self._connections.values():
            await connection.close()
        if self.azurite is not None:
            azurite, self.azurite = self.azurite, None
            await asyncio.get_running_loop().run_in_executor(None, azurite.stop)
        log.info("host %d stopped", os.getpid())


def _durable_function_name(queue_name: str, options: Any) -> str:
    from ..bindings import WORKITEMS_FUNCTION, control_function

    if queue_name == options.workitem_queue:
        return WORKITEMS_FUNCTION
    return control_function(options.control_queues.index(queue_name))


async def serve(
    app_dir: str | os.PathLike[str],
    stop: asyncio.Event,
    *,
    port: int = 7071,
    host: str = "127.0.0.1",
    enforce_keys: bool = False,
) -> None:
    """Run the host until ``stop`` is set; writes ``DURABLE_EXT_STATS_FILE`` if set."""
    local = LocalHost(app_dir, port=port, host=host, enforce_keys=enforce_keys)
    stats_file = os.environ.get("DURABLE_EXT_STATS_FILE")
    try:
        await local.start()
        stats_file = os.environ.get("DURABLE_EXT_STATS_FILE")  # local.settings.json may set it
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            if stats_file:
                _write_json(stats_file, local.stats())
    finally:
        await local.stop()
        if stats_file:
            _write_json(stats_file, local.stats())


def _write_json(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as out:
        json.dump(data, out, default=str)
    os.replace(tmp, path)
