"""Queue handlers of the Azure backend and a worker that runs them.

``DurableHandlers`` turns one control-queue or work-item message into an
engine call; the local host and the Functions bindings call the same
handlers. ``AzureWorker`` runs them with queue-trigger runners (one per
control queue plus the work-item queue) and a periodic repair sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import timedelta
from typing import Any

import orjson

from .backends.azure import rows as r
from .backends.azure.backend import AzureBackend, FaultHook, LocalActivities
from .config import DurableTaskOptions
from .core import history as h
from .core.registry import Registry
from .core.runtime import ActivityRequest, Message
from .engine import Engine
from .host.queues import KeepMessage, QueueMessage, QueueTriggerOptions, QueueTriggerRunner

log = logging.getLogger("durable_ext.worker")


class _Mailbox:
    """Messages waiting for the next step of one instance, with their handlers' futures."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.hot = True
        self.task: asyncio.Future[None] | None = None

    def add(self, messages: list[Message], waiter: asyncio.Future[None], hot: bool) -> None:
        self.messages.extend(messages)
        self.waiters.append(waiter)
        self.hot = self.hot and hot

    def take(self) -> tuple[list[Message], list[asyncio.Future[None]], bool]:
        taken = self.messages, self.waiters, self.hot
        self.messages, self.waiters, self.hot = [], [], True
        return taken


class ActivitySlots(LocalActivities):
    """The activity concurrency budget of this process (``maxConcurrentActivityFunctions``).

    At most ``limit`` activities run at once, whether the backend handed them
    over at commit time or they came from the work-item queue. The backend may
    hand over more than there are free slots while the wait for one stays
    short: ``backlog_wait`` seconds, estimated from the mean run time of the
    activities this process ran, and only while slots keep freeing up. Those
    wait here instead of going round the work-item queue (an enqueue, a
    receive and a delete each); long-running work still goes to the queue,
    where other workers can take it. The step's ``o-…-l`` row keeps every
    handed-over activity recoverable, as for one that runs at once.
    """

    def __init__(self, handlers: DurableHandlers, limit: int, backlog_wait: float = 1.0) -> None:
        self.handlers = handlers
        self.limit = limit
        self.backlog_wait = backlog_wait
        self.active = 0  # running now
        self.waiting = 0  # handed over (or reserved by a commit in progress), not running yet
        self.mean_run: float | None = None  # seconds, moving average of finished activities
        self.last_finish = 0.0  # loop time an activity last finished
        self.running: set[asyncio.Future[None]] = set()
        self.pending: dict[asyncio.Future[None], ActivityRequest] = {}  # handed over, no slot yet
        self._slots = asyncio.Semaphore(limit)
        self.peak = 0

    def try_reserve(self) -> bool:
        """Take a place for one activity at commit time: a free slot, or a short wait for one."""
        ahead = self.active + self.waiting + 1 - self.limit  # activities to finish before it starts
        if ahead > 0:
            mean = self.mean_run
            if mean is None or ahead * mean > self.backlog_wait * self.limit:
                return False  # nothing measured yet, or too long a wait
            stuck = asyncio.get_running_loop().time() - self.last_finish > self.backlog_wait
            if self.active >= self.limit and stuck:
                return False  # every slot busy and none freed lately: the mean does not hold
        self.waiting += 1
        return True

    def release(self) -> None:
        """Give back a place ``try_reserve`` took that the backend did not use."""
        self.waiting -= 1

    async def acquire(self) -> None:
        """Wait for a slot to run one activity."""
        await self._slots.acquire()
        self.active += 1
        self.peak = max(self.peak, self.active)

    def finished(self, seconds: float) -> None:
        """Give back the slot of an activity that ran for ``seconds``."""
        self.active -= 1
        self._slots.release()
        self.last_finish = asyncio.get_running_loop().time()
        mean = self.mean_run
        self.mean_run = seconds if mean is None else mean + 0.1 * (seconds - mean)

    def start(self, requests: list[ActivityRequest]) -> None:
        for request in requests:
            task = asyncio.ensure_future(self._run(request))
            self.running.add(task)
            self.pending[task] = request
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self.running.discard(task)
        self.pending.pop(task, None)

    async def _run(self, request: ActivityRequest) -> None:
        handlers = self.handlers
        task = asyncio.current_task()
        try:
            await self.acquire()
        finally:
            self.waiting -= 1
            self.pending.pop(task, None)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        begin = loop.time()
        try:
            result = await handlers.engine.run_activity(request)
        finally:
            self.finished(loop.time() - begin)
        try:
            await handlers.deliver(request, result)
        except Exception:  # the o-…-l row is still there: the sweep queues the activity again
            log.warning("result of %s for %s not delivered", request.name, request.instance_id)


class DurableHandlers:
    """What to do with each kind of queue message, whatever runs the queues."""

    def __init__(self, engine: Engine, backend: AzureBackend, max_orchestrations: int = 1000) -> None:
        self.engine = engine
        self.backend = backend
        self._boxes: dict[str, _Mailbox] = {}
        self.slots: ActivitySlots | None = None
        # maxConcurrentOrchestratorFunctions: steps running at once in this process
        self.orchestrator_slots = asyncio.Semaphore(max_orchestrations)

    async def process(self, instance_id: str, messages: list[Message], hot: bool = False) -> None:
        """Apply ``messages`` to the instance, batching with others that arrive meanwhile.

        One drain loop per instance and process: messages that come in while a
        step runs are applied together in the next step (a fan-in of many
        results costs a few commits, not one each), and two handlers never race
        on the same instance inside this process.
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        box = self._boxes.get(instance_id)
        if box is None:
            box = self._boxes[instance_id] = _Mailbox()
            box.add(messages, done, hot)
            box.task = asyncio.ensure_future(self._drain(instance_id, box))
        else:
            box.add(messages, done, hot)
        await done

    async def _drain(self, instance_id: str, box: _Mailbox) -> None:
        try:
            while box.waiters:
                messages, waiters, hot = box.take()
                try:
                    async with self.orchestrator_slots:
                        await self.engine.process_instance(instance_id, messages, hot=hot)
                except Exception as exc:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
        finally:
            self._boxes.pop(instance_id, None)

    async def on_control(self, message: QueueMessage) -> None:
        """A wake-up (``{"i": id}``) or an inline message (``{"m": {...}}``) for an instance."""
        try:
            body = orjson.loads(message.content)
            if "m" in body:
                inline = r.message_from_json(body["m"])
                iid, messages = inline.instance_id, [inline]
            else:
                iid, messages = str(body["i"]), []
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("dropping malformed control message %s: %.200r", message.id, message.content)
            return
        for inline in messages:
            if inline.visible_at is not None:
                wait = inline.visible_at - self.backend.clock.now()
                if wait > timedelta(seconds=1):  # a long timer: re-arm past the 7-day queue limit
                    await self.backend.send_messages([inline])
                    return
                if wait > timedelta(0):  # visible a moment early (clocks differ): never fire early
                    await asyncio.sleep(wait.total_seconds())
                inline.visible_at = None
        await self.process(iid, messages)

    async def on_work_item(self, message: QueueMessage) -> None:
        """Run one activity and deliver its result to the orchestration."""
        try:
            request = await self.backend.decode_activity(orjson.loads(message.content))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.warning("dropping malformed work item %s: %.200r", message.id, message.content)
            return
        loop = asyncio.get_running_loop()
        if self.slots is not None:
            await self.slots.acquire()
        begin = loop.time()
        try:
            result = await self.engine.run_activity(request)
        finally:
            if self.slots is not None:
                self.slots.finished(loop.time() - begin)
        await self.deliver(request, result)

    async def deliver(self, request: ActivityRequest, result: Message) -> None:
        """Apply an activity's result in this process; send it by queue if that fails.

        Any worker may commit any instance (the ETag decides), so the worker
        that ran the activity commits the next step itself instead of putting
        the result on the control queue for someone to receive and delete.
        The work item or ``o-…-l`` row stays until this returns.
        """
        try:
            await self.process(request.instance_id, [result], hot=True)
        except Exception:
            log.warning("in-process delivery to %s failed; sending by queue", request.instance_id)
            await self.backend.complete_activity(request, result)

    async def on_control_poison(self, message: QueueMessage) -> None:
        """A control message failed too often: fail its instance with the reason."""
        with contextlib.suppress(Exception):
            body = orjson.loads(message.content)
            iid = body["m"]["i"] if "m" in body else body["i"]
            await self.backend.force_fail(
                str(iid),
                f"a message for this instance failed {message.dequeue_count} times and was moved "
                "to the poison queue",
            )

    async def on_work_item_poison(self, message: QueueMessage) -> None:
        """A work item failed too often: report the activity as failed to its orchestration."""
        with contextlib.suppress(Exception):
            request = r.activity_from_json(orjson.loads(message.content))
            stamp = h.format_timestamp(self.backend.clock.now())
            failure = h.failure_details(
                "PoisonMessage",
                f"activity '{request.name}' could not be run after {message.dequeue_count} attempts",
                None,
            )
            event = h.task_failed(stamp, request.task_id, failure)
            await self.backend.complete_activity(
                request, Message(request.instance_id, event, request.execution_id)
            )


class AzureWorker:
    """One worker process's share of a task hub: queue runners plus the repair sweep."""

    def __init__(
        self,
        registry: Registry,
        backend: AzureBackend,
        options: DurableTaskOptions,
        *,
        repair_interval: timedelta = timedelta(seconds=30),
    ) -> None:
        self.backend = backend
        self.options = options
        self.engine = Engine(registry, backend)
        self.handlers = DurableHandlers(self.engine, backend, options.max_concurrent_orchestrator_functions)
        self.slots = ActivitySlots(self.handlers, options.max_concurrent_activity_functions)
        self.handlers.slots = self.slots
        self.repair_interval = repair_interval
        self.runners: dict[str, QueueTriggerRunner] = {}
        self._repair_task: asyncio.Task[None] | None = None

    def _queue_options(self, batch: int, visibility: timedelta, max_concurrency: int) -> QueueTriggerOptions:
        opts = self.options
        return QueueTriggerOptions(
            batch_size=max(1, min(32, batch, max_concurrency)),
            max_dequeue_count=opts.queues.max_dequeue_count,
            max_polling_interval=opts.max_queue_polling_interval,
            visibility_timeout=opts.queues.visibility_timeout,
            message_lease=visibility,
        )

    async def start(self) -> None:
        """Create the hub if needed and start polling."""
        await self.backend.create_task_hub()
        opts = self.options
        control_opts = self._queue_options(
            opts.control_queue_batch_size,
            opts.control_queue_visibility_timeout,
            opts.max_concurrent_orchestrator_functions,
        )
        for queue in self.backend.control_queues:
            self.runners[queue.queue_name] = QueueTriggerRunner(
                queue,
                self.handlers.on_control,
                control_opts,
                on_poison=self.handlers.on_control_poison,
                name=queue.queue_name,
            )
        work_opts = self._queue_options(
            opts.max_concurrent_activity_functions,
            opts.work_item_queue_visibility_timeout,
            opts.max_concurrent_activity_functions,
        )
        self.runners[self.backend.workitems.queue_name] = QueueTriggerRunner(
            self.backend.workitems,
            self.handlers.on_work_item,
            work_opts,
            on_poison=self.handlers.on_work_item_poison,
            name=self.backend.workitems.queue_name,
        )
        self.backend.on_enqueue = self._wake
        self.backend.local_activities = self.slots
        for runner in self.runners.values():
            await runner.start()
        self._repair_task = asyncio.ensure_future(self._repair_loop())

    def _wake(self, queue_name: str) -> None:
        runner = self.runners.get(queue_name)
        if runner is not None:
            runner.wake()

    async def _repair_loop(self) -> None:
        while True:
            await asyncio.sleep(self.repair_interval.total_seconds())
            try:
                await self.backend.repair()
            except Exception:  # the sweep must outlive a storage hiccup
                log.exception("repair sweep failed")

    async def stop(self) -> None:
        """Stop polling and wait for running handlers."""
        if self._repair_task is not None:
            self._repair_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repair_task
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()))
        waiting = list(self.slots.pending.values())  # handed over but never started
        for task in list(self.slots.running):
            task.cancel()
        await asyncio.gather(*self.slots.running, return_exceptions=True)
        # to the work-item queue, so another worker runs them now rather than after the sweep
        await asyncio.gather(*(self.backend.enqueue_activity(a) for a in waiting), return_exceptions=True)
        self.backend.on_enqueue = None
        self.backend.local_activities = None

    async def __aenter__(self) -> AzureWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


class EnvFaults(FaultHook):
    """Crash on purpose where ``DURABLE_EXT_FAULT`` says: ``point:action:n`` (comma-separated).

    ``action`` is ``raise`` (an exception, as a failing storage call would give)
    or ``kill`` (SIGKILL of this process, as a VM reboot would); ``n`` picks
    the n-th time the point is reached. Points: commit.before, commit.after,
    dispatch.after, outbox.deleted.
    """

    def __init__(self, spec: str) -> None:
        self.rules: dict[str, tuple[str, int]] = {}
        self.seen: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            point, action, nth = part.split(":")
            self.rules[point] = (action, int(nth))

    def check(self, point: str) -> None:
        rule = self.rules.get(point)
        if rule is None:
            return
        self.seen[point] = self.seen.get(point, 0) + 1
        if self.seen[point] != rule[1]:
            return
        if rule[0] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected fault at {point}")


async def serve(app_dir: str, stop: asyncio.Event | None = None) -> None:
    """Run one worker for the app in ``app_dir`` until ``stop`` is set (or forever)."""
    from .backends.azure.connection import StorageCallCounter, resolve_connection
    from .host.loader import load_app, load_settings

    settings = load_settings(app_dir)
    app = load_app(app_dir)
    options = DurableTaskOptions.from_app_dir(app_dir, settings)
    counter = StorageCallCounter()
    connection = resolve_connection(settings, options.connection_name, counter=counter)
    repair_after = timedelta(seconds=float(settings.get("DURABLE_EXT_REPAIR_AFTER", "30")))
    backend = AzureBackend(
        connection,
        options,
        fault=EnvFaults(settings.get("DURABLE_EXT_FAULT", "")),
        repair_after=repair_after,
    )
    interval = timedelta(seconds=float(settings.get("DURABLE_EXT_REPAIR_INTERVAL", "30")))
    stats_file = settings.get("DURABLE_EXT_STATS_FILE")
    stats_every = float(settings.get("DURABLE_EXT_STATS_INTERVAL", "0.5"))  # seconds between writes
    stop = stop or asyncio.Event()
    async with AzureWorker(app.registry, backend, options, repair_interval=interval) as worker:
        log.info("worker %d serving hub %s", os.getpid(), options.hub_name)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), stats_every)
            if stats_file:
                _write_stats(stats_file, counter, worker)
    if stats_file:
        _write_stats(stats_file, counter, worker)
    await backend.close()


def _write_stats(path: str, counter: Any, worker: AzureWorker) -> None:
    data = {
        "storage": counter.snapshot(),
        "engine": worker.engine.stats,
        "peak_activities": worker.slots.peak,
        "runners": {name: runner.stats() for name, runner in worker.runners.items()},
    }
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(orjson.dumps(data, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """``python -m durable_ext.worker APP_DIR``: one worker process; SIGTERM stops it cleanly."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    app_dir = args[0] if args else "."
    logging.basicConfig(level=os.environ.get("DURABLE_EXT_LOG", "WARNING"))
    logging.getLogger("azure").setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(app_dir, stop)

    asyncio.run(run())


__all__ = ["AzureWorker", "DurableHandlers", "EnvFaults", "KeepMessage", "main", "serve"]

if __name__ == "__main__":
    main()
