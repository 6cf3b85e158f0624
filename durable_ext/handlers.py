"""What the built-in queue-triggered functions do, in any process that hosts the app.

``DurableHandlers`` turns one control-queue or work-item message into an
engine call. The Functions bindings (``bindings.py``) call it on Azure, where
the Functions host polls the queues; the local emulator (``host/``) calls the
same handlers from its own queue runners. Nothing here polls a queue.

A process that hosts the app also runs work in-process when it can, so that
the common path never waits for the host's polling (DESIGN.md §8):
``ActivitySlots`` runs the activities a step schedules, ``LocalDispatch``
applies the messages this process sends (starts, events, sub-orchestration
results, timers). The queue copy of each such message stays the durable
backup and is deduplicated (docs/storage.md, "In-process work").
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from .backends.azure import rows as r
from .backends.azure.backend import AzureBackend, Backup, FaultHook, LocalActivities, LocalDispatcher
from .backends.azure.claims import POLL_MAX_S, POLL_MIN_S, QUIET_S
from .config import DurableTaskOptions
from .core import history as h
from .core.registry import Registry
from .core.runtime import ActivityRequest, Message
from .engine import Engine
from .retrying import Background, attempt, persist, retry

log = logging.getLogger("durable_ext.worker")


@dataclass
class QueueMessage:
    """One received queue message, as the handlers need it (detached from any SDK).

    ``pop_receipt`` is kept current by whoever renews the message's lease.
    """

    id: str
    pop_receipt: str
    content: str
    dequeue_count: int
    inserted_on: datetime | None = None


class _Mailbox:
    """Messages waiting for the next step of one instance, with their handlers' futures."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.hot = True
        self.task: asyncio.Future[None] | None = None
        self.arrived = asyncio.Event()

    def add(self, messages: list[Message], waiter: asyncio.Future[None], hot: bool) -> None:
        self.messages.extend(messages)
        self.waiters.append(waiter)
        self.hot = self.hot and hot
        self.arrived.set()

    async def wait(self, seconds: float) -> None:
        """Until a message arrives, or ``seconds`` have passed."""
        self.arrived.clear()
        if not self.waiters:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), seconds)

    def take(self) -> tuple[list[Message], list[asyncio.Future[None]], bool]:
        taken = self.messages, self.waiters, self.hot
        self.messages, self.waiters, self.hot = [], [], True
        return taken


class ActivitySlots(LocalActivities):
    """The activity concurrency budget of this process (``maxConcurrentActivityFunctions``).

    At most ``limit`` activities run at once, whether the backend handed them
    over at commit time or they came from the work-item queue. The backend may
    hand over more than there are free slots: those wait here instead of going
    round the work-item queue (an enqueue, a receive and a delete each, plus the
    host's polling delay). One that has not started after ``spill_after``
    seconds goes to the work-item queue after all, where other processes can
    take it; it never runs here once spilled. The step's ``o-…-l`` row keeps
    every handed-over activity recoverable, as for one that runs at once.
    """

    #: handed-over activities that may wait per slot while nothing has been measured yet
    BACKLOG_PER_SLOT = 16

    def __init__(self, handlers: DurableHandlers, limit: int, spill_after: float = 1.0) -> None:
        self.handlers = handlers
        self.limit = limit
        self.spill_after = spill_after
        self.active = 0  # running now
        self.waiting = 0  # handed over (or reserved by a commit in progress), not running yet
        self.mean_run: float | None = None  # seconds, moving average of finished activities
        #: every handed-over activity until its result is delivered (or it was spilled)
        self.running: dict[asyncio.Future[None], ActivityRequest] = {}
        self._slots = asyncio.Semaphore(limit)
        self.peak = 0
        self.spilled = 0

    def try_reserve(self) -> bool:
        """Take a place for one activity at commit time: a free slot, or a short wait for one."""
        ahead = self.active + self.waiting + 1 - self.limit  # activities to finish before it starts
        if ahead > 0:
            mean = self.mean_run
            if mean is None:
                if self.waiting >= self.limit * self.BACKLOG_PER_SLOT:
                    return False
            elif ahead * mean > self.spill_after * self.limit:
                return False  # it would wait longer than it may: the work-item queue is faster
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
        mean = self.mean_run
        self.mean_run = seconds if mean is None else mean + 0.1 * (seconds - mean)

    def start(self, requests: list[ActivityRequest]) -> None:
        """Run activities the backend reserved places for (each holds one until it starts)."""
        for request in requests:
            task = asyncio.ensure_future(self._run(request))
            self.running[task] = request
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self.running.pop(task, None)

    async def _run(self, request: ActivityRequest) -> None:
        handlers = self.handlers
        try:
            try:
                await asyncio.wait_for(self.acquire(), self.spill_after)
            except asyncio.TimeoutError:
                self.spilled += 1
                what = f"spilling activity '{request.name}' of {request.instance_id} to the work-item queue"
                await persist(what, functools.partial(handlers.backend.enqueue_activity, request))
                handlers.backend.lease.release(request.instance_id)
                return
        finally:
            self.waiting -= 1
        loop = asyncio.get_running_loop()
        begin = loop.time()
        try:
            result = await handlers.engine.run_activity(request)
        finally:
            self.finished(loop.time() - begin)
        # the result lives only in this process's memory: delivered whatever it takes, the activity
        # held under this process's lease until then (if the process dies first, a sweep queues it)
        what = f"delivering the result of activity '{request.name}' to {request.instance_id}"
        await persist(what, functools.partial(handlers.deliver, request, result))
        handlers.backend.lease.release(request.instance_id)

    async def stop(self) -> None:
        """Hand every activity not yet answered to the work-item queue, and cancel it here.

        Those still waiting for a slot never ran; those running are interrupted
        (a sync one's thread finishes on its own, its result goes nowhere). Either
        way another process (or this app's next start) runs them at once, instead
        of after this process's lease has been taken over.
        """
        unanswered = dict(self.running)
        for task in unanswered:
            task.cancel()
        await asyncio.gather(*unanswered, return_exceptions=True)
        backend = self.handlers.backend
        requests = list(unanswered.values())
        sent = await asyncio.gather(*(backend.enqueue_activity(a) for a in requests), return_exceptions=True)
        failed = 0
        for request, outcome in zip(requests, sent, strict=True):
            if isinstance(outcome, BaseException):
                failed += 1  # still held: the lease, released expired at close, has a sweep queue it
            else:
                backend.lease.release(request.instance_id)
        if unanswered:
            log.info("stop: %d unanswered activities handed to the work-item queue", len(unanswered) - failed)
        if failed:
            log.error(
                "stop: %d activities could not be queued; a sweep queues them once this lease is taken over",
                failed,
            )


class LocalDispatch(LocalDispatcher):
    """Applies here, at once or when due, the messages this process sends to instances.

    The backend gives it each message it has put on a control queue (with the
    queued copy made invisible for ``grace`` past the message's due time) and
    the copy's receipt; once the local step has applied the message the copy is
    deleted, so no other process ever sees it. If this process dies first, the
    copy becomes visible and any process applies it (history drops duplicates).
    """

    def __init__(self, handlers: DurableHandlers, limit: int = 10_000, timer_limit: int = 10_000) -> None:
        self.handlers = handlers
        self.limit = limit  # messages due now, pending here
        self.timer_limit = timer_limit  # timers waiting here (counted apart: they wait long)
        #: pending applications: the queued copy of each and when it is due
        self.tasks: dict[asyncio.Future[None], tuple[Backup, datetime | None]] = {}
        self.timers = 0
        self.stopping = False
        self.applied = 0  # messages (or wake-ups) applied here whose queue copy was discarded

    def accepts(self, due: datetime | None) -> bool:
        if self.stopping:
            return False
        if due is None:
            return len(self.tasks) - self.timers < self.limit
        return self.timers < self.timer_limit

    def run(
        self,
        instance_id: str,
        messages: list[Message],
        due: datetime | None,
        backup: Backup,
    ) -> None:
        task = asyncio.ensure_future(self._apply(instance_id, messages, due, backup))
        self.tasks[task] = (backup, due)
        self.timers += due is not None
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        entry = self.tasks.pop(task, None)
        if entry is not None and entry[1] is not None:
            self.timers -= 1

    async def _apply(
        self,
        instance_id: str,
        messages: list[Message],
        due: datetime | None,
        backup: Backup,
    ) -> None:
        backend = self.handlers.backend
        if due is not None:
            while (wait := (due - backend.clock.now()).total_seconds()) > 0:
                await asyncio.sleep(wait)  # never early, whatever the event loop's clock says
            for message in messages:
                message.visible_at = None
        try:
            await self.handlers.process(instance_id, messages)
        except Exception as exc:
            # the queued copy takes over at once, with the queue's retries and poison handling
            log.warning("in-process step of %s failed (%s); its queue message will retry", instance_id, exc)
            applied = False
        else:
            applied = True
        try:
            sent = await backup
        except Exception:
            return  # not sent: nothing to discard or reveal
        try:
            if applied:
                await backend.discard(sent)
                self.applied += 1
            else:
                await backend.reveal(sent, None)
        except Exception as exc:  # storage away: the copy appears after its grace all the same
            what = "deleting" if applied else "revealing"
            log.warning("%s the queued copy of a message to %s failed (%s)", what, instance_id, exc)

    async def stop(self) -> None:
        """Stop taking messages and hand the pending ones back to the queue.

        Their queued copies are made visible when due instead of a grace
        period later, so another process (or the next start of this one)
        applies them without delay.
        """
        self.stopping = True
        pending = list(self.tasks.items())
        for task, _ in pending:
            task.cancel()
        await asyncio.gather(*(task for task, _ in pending), return_exceptions=True)
        backend = self.handlers.backend
        handed: list[Any] = []
        for _, (backup, due) in pending:
            if backup.done() and not backup.cancelled() and backup.exception() is None:
                handed.append(backend.reveal(backup.result(), due))
        await asyncio.gather(*handed, return_exceptions=True)


class DurableHandlers:
    """What to do with each kind of queue message, whatever runs the queues.

    ``attach`` makes the backend hand this process the work it can do itself
    (activities, and messages to instances); ``close`` takes that back.
    """

    def __init__(self, registry: Registry, backend: AzureBackend, options: DurableTaskOptions) -> None:
        # Sync activities and entity batches run on pools sized by the limits, so the limits hold
        # for sync code too (the loop's default executor has min(32, cores + 4) threads) and
        # a slow entity operation never stalls the event loop.
        self.activity_threads = ThreadPoolExecutor(
            options.max_concurrent_activity_functions, thread_name_prefix="durable-activity"
        )
        self.entity_threads = ThreadPoolExecutor(
            options.max_concurrent_orchestrator_functions, thread_name_prefix="durable-entity"
        )
        self.engine = Engine(
            registry, backend, activity_threads=self.activity_threads, entity_threads=self.entity_threads
        )
        self.backend = backend
        self.options = options
        self._boxes: dict[str, _Mailbox] = {}
        self._retries = Background()  # poison handlers retrying in the background
        self.slots = ActivitySlots(self, options.max_concurrent_activity_functions)
        self.dispatch = LocalDispatch(self)
        # maxConcurrentOrchestratorFunctions: steps running at once in this process
        self.orchestrator_slots = asyncio.Semaphore(options.max_concurrent_orchestrator_functions)

    def attach(self) -> None:
        """Let the backend run activities and apply sent messages in this process."""
        self.backend.local_activities = self.slots
        self.backend.dispatcher = self.dispatch

    async def close(self) -> None:
        """Hand back in-process work: queued copies and the work-item queue take it over."""
        if self.backend.dispatcher is self.dispatch:
            self.backend.dispatcher = None
        if self.backend.local_activities is self.slots:
            self.backend.local_activities = None
        await self.dispatch.stop()
        await self.slots.stop()
        await self._retries.cancel()
        # a sync activity already running cannot be interrupted: its thread ends on its own
        self.activity_threads.shutdown(wait=False, cancel_futures=True)
        self.entity_threads.shutdown(wait=False, cancel_futures=True)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters of this process's work (engine, in-process activities and dispatch, repairs)."""
        return {
            **self.engine.stats,
            "peak_activities": self.slots.peak,
            "spilled_activities": self.slots.spilled,
            "local_dispatches": self.dispatch.applied,
            "repairs": self.backend.repairs,
        }

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
        """Step the instance while messages come in; while this process holds its stepping
        claim, also read the inbox that other processes hand messages to (``claims.py``)."""
        claims = self.backend.claims
        loop = asyncio.get_running_loop()
        interval = POLL_MIN_S
        stepped_at = loop.time()
        try:
            while True:
                if box.waiters:
                    messages, waiters, hot = box.take()
                elif not claims.holds(instance_id):
                    return
                elif loop.time() - stepped_at >= QUIET_S:
                    if not await attempt(
                        f"giving up the stepping claim of {instance_id}",
                        functools.partial(self.backend.give_up_claim, instance_id),
                        logging.WARNING,
                    ):
                        stepped_at = loop.time()  # still held: try again after another quiet spell
                    continue
                else:
                    await box.wait(interval)
                    if box.waiters:
                        continue
                    messages, waiters, hot = [], [], False
                try:
                    async with self.orchestrator_slots:
                        step = await self.engine.process_instance(instance_id, messages, hot=hot)
                except Exception as exc:
                    if not waiters:
                        log.warning("reading the inbox of claimed %s failed: %s", instance_id, exc)
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    step = None
                else:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(None)
                if step is not None:
                    interval, stepped_at = POLL_MIN_S, loop.time()
                else:
                    interval = min(interval * 2, POLL_MAX_S)
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
        await self.slots.acquire()
        begin = loop.time()
        try:
            result = await self.engine.run_activity(request)
        finally:
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
            await self.backend.complete_activity(request, result, in_process=False)

    async def on_control_poison(self, message: QueueMessage) -> None:
        """A control message failed too often: fail its instance with the reason."""
        try:
            body = orjson.loads(message.content)
            iid = str(body["m"]["i"] if "m" in body else body["i"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("poison control message %s names no instance: %.200r", message.id, message.content)
            return
        reason = (
            f"a message for this instance failed {message.dequeue_count} times "
            "and was moved to the poison queue"
        )

        async def fail() -> None:
            if not await self.backend.force_fail(iid, reason) and not await self._finished(iid):
                raise RuntimeError("it kept changing under the attempt")

        await self._until_done(f"failing instance {iid} after its poison message {message.id}", fail)

    async def on_work_item_poison(self, message: QueueMessage) -> None:
        """A work item failed too often: report the activity as failed to its orchestration."""
        try:
            request = r.activity_from_json(orjson.loads(message.content))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            log.error("poison work item %s is malformed: %.200r", message.id, message.content)
            return
        stamp = h.format_timestamp(self.backend.clock.now())
        failure = h.failure_details(
            "PoisonMessage",
            f"activity '{request.name}' could not be run after {message.dequeue_count} attempts",
            None,
        )
        event = h.task_failed(stamp, request.task_id, failure)
        result = Message(request.instance_id, event, request.execution_id)

        async def report() -> None:
            await self.backend.complete_activity(request, result)

        await self._until_done(
            f"reporting poisoned activity '{request.name}' (task {request.task_id}) to {request.instance_id}",
            report,
        )

    async def _finished(self, instance_id: str) -> bool:
        record = await self.backend.get_instance(instance_id)
        return record is None or record.status.is_terminal

    async def _until_done(self, what: str, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` now; if it fails, log an error and keep trying in the background.

        The poison message is already on its way to the poison queue, so this is
        the instance's last chance to leave Running with a readable reason: never
        give up silently.
        """
        if await attempt(what, work, logging.ERROR):
            return
        self._retries.spawn(retry(what, work, POISON_RETRIES_S, logging.ERROR, "it stays as it is"))


#: waits between the background retries of a poison handler that failed (about 10 minutes in all)
POISON_RETRIES_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 180.0, 240.0)


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


__all__ = ["ActivitySlots", "DurableHandlers", "EnvFaults", "LocalDispatch", "QueueMessage"]
