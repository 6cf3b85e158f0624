"""Queue-trigger runner with the Azure Functions host's semantics, for the worker and the local host.

Matches the WebJobs storage extension (``QueueListener`` / ``QueueProcessor``): fetch up to
``batch_size`` messages with a 10-minute lease, run them concurrently, fetch again once in-flight
work drops to ``new_batch_threshold``, delete on success, release after ``visibility_timeout`` on
failure, move to ``{queue}-poison`` once ``max_dequeue_count`` is reached, renew the lease of
long-running handlers, and back off exponentially while the queue is empty. ``wake()`` lets this
process cut the backoff short when it has just enqueued something (DESIGN.md §4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlparse

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue.aio import QueueClient

from ..handlers import QueueMessage

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 32  # the service returns at most 32 messages per receive
MAX_VISIBILITY = timedelta(days=7)  # the service's limit for any visibility timeout
POISON_SUFFIX = "-poison"
ERROR_POLLING_INTERVAL_S = 1.0  # the longest wait between receives while they fail
_MAX_QUEUE_NAME = 63


class KeepMessage(Exception):
    """Raised by a handler to have its message delivered again after ``visibility``.

    Not a failure: the runner re-enqueues a fresh copy (new id, dequeue count restarting, no
    expiry) and deletes the original, so any number of re-checks never leads to the poison queue.
    """

    def __init__(self, visibility: timedelta = timedelta(0)) -> None:
        if not timedelta(0) <= visibility <= MAX_VISIBILITY:
            raise ValueError(f"visibility must be between 0 and 7 days, not {visibility}")
        super().__init__(f"keep message for {visibility}")
        self.visibility = visibility


@dataclass(frozen=True)
class QueueTriggerOptions:
    """The host.json ``extensions.queues`` settings, with the host's defaults."""

    batch_size: int = 16
    new_batch_threshold: int | None = None  # None: batch_size // 2, as the host on one core
    visibility_timeout: timedelta = timedelta(0)  # delay before a failed message is retried
    max_dequeue_count: int = 5
    max_polling_interval: timedelta = timedelta(minutes=1)
    min_polling_interval: timedelta = timedelta(milliseconds=100)
    message_lease: timedelta = timedelta(minutes=10)  # invisibility while a handler runs, renewed

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {self.batch_size}")
        if self.new_batch_threshold is not None and self.new_batch_threshold < 0:
            raise ValueError("new_batch_threshold must not be negative")
        if self.max_dequeue_count < 1:
            raise ValueError("max_dequeue_count must be at least 1")
        if not timedelta(0) <= self.visibility_timeout <= MAX_VISIBILITY:
            raise ValueError("visibility_timeout must be between 0 and 7 days")
        if self.min_polling_interval <= timedelta(0):
            raise ValueError("min_polling_interval must be positive")
        if self.max_polling_interval < self.min_polling_interval:
            raise ValueError("max_polling_interval must not be less than min_polling_interval")
        if not timedelta(seconds=1) <= self.message_lease <= MAX_VISIBILITY:
            raise ValueError("message_lease must be between 1 second and 7 days")

    @property
    def threshold(self) -> int:
        """The effective new-batch threshold: fetch again when in-flight work is at or below it."""
        return self.batch_size // 2 if self.new_batch_threshold is None else self.new_batch_threshold

    @property
    def max_concurrency(self) -> int:
        """The most handlers that can run at once: a full batch fetched at the threshold."""
        return self.threshold + self.batch_size


Handler = Callable[[QueueMessage], Awaitable[None]]


def _seconds(delta: timedelta) -> int:
    """Whole seconds for the service (which counts visibility in seconds), rounding up."""
    return max(0, math.ceil(delta.total_seconds()))


def _lost_ownership(error: HttpResponseError) -> bool:
    """Whether the message is no longer ours: another pop receipt, or message/queue gone."""
    code = str(getattr(error, "error_code", "") or "")
    return (
        isinstance(error, ResourceNotFoundError) or code == "PopReceiptMismatch" or error.status_code == 404
    )


def _poison_client(queue: QueueClient, name: str) -> QueueClient:
    """A client for queue ``name`` in the same account, with the same credential, version and
    message encoding (a poison message is a copy of the original, as the host makes it)."""
    query = urlparse(queue.url).query
    account_url = f"{queue.scheme}://{queue.primary_hostname}" + (f"?{query}" if query else "")
    return QueueClient(
        account_url,
        name,
        credential=queue.credential,
        api_version=queue.api_version,
        message_encode_policy=getattr(queue, "_message_encode_policy", None),
        message_decode_policy=getattr(queue, "_message_decode_policy", None),
    )


class QueueTriggerRunner:
    """Runs ``handler`` for every message of ``queue``, as a queue-triggered function would."""

    def __init__(
        self,
        queue: QueueClient,
        handler: Handler,
        options: QueueTriggerOptions | None = None,
        *,
        poison_queue: QueueClient | None = None,
        on_poison: Callable[[QueueMessage], Awaitable[None]] | None = None,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.handler = handler
        self.options = options or QueueTriggerOptions()
        self.name = name or queue.queue_name
        self.on_poison = on_poison
        self._poison_queue = poison_queue
        self._own_poison = False
        self.poison_queue_name: str | None = poison_queue.queue_name if poison_queue is not None else None
        if poison_queue is None:
            name = queue.queue_name + POISON_SUFFIX
            # As the host: no poison queue for a poison queue or when the name would be too long.
            if not queue.queue_name.endswith(POISON_SUFFIX) and len(name) <= _MAX_QUEUE_NAME:
                self.poison_queue_name = name
        self._min = self.options.min_polling_interval.total_seconds()
        self._max = self.options.max_polling_interval.total_seconds()
        self._lease = _seconds(self.options.message_lease)
        self._delay = self._min
        self._wake = asyncio.Event()
        self._slot = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id: int | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Future[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._poll_failing = False
        self._handled = self._failed = self._poisoned = self._kept = 0
        self._polls = self._errors = self._renewals = 0

    # -- stats ---------------------------------------------------------------------------------

    @property
    def handled(self) -> int:
        """Messages whose handler succeeded and that were deleted."""
        return self._handled

    @property
    def failed(self) -> int:
        """Handler invocations that raised (each retry counts)."""
        return self._failed

    @property
    def poisoned(self) -> int:
        """Messages moved to the poison queue."""
        return self._poisoned

    @property
    def kept(self) -> int:
        """Messages a handler kept with ``KeepMessage``."""
        return self._kept

    @property
    def polls(self) -> int:
        """Receive calls made (one storage call each)."""
        return self._polls

    @property
    def errors(self) -> int:
        """Storage errors of the runner itself (receive, delete, release, renew), all survived."""
        return self._errors

    @property
    def renewals(self) -> int:
        """Lease renewals of messages whose handler ran longer than half the lease."""
        return self._renewals

    @property
    def in_flight(self) -> int:
        """Messages being processed right now."""
        return len(self._inflight)

    @property
    def backoff(self) -> timedelta:
        """The current idle polling delay (before jitter)."""
        return timedelta(seconds=self._delay)

    @property
    def running(self) -> bool:
        """Whether the poll loop is running."""
        return self._task is not None and not self._task.done()

    def stats(self) -> dict[str, int]:
        """All counters at once, e.g. for the benchmark's call count."""
        return {
            "handled": self._handled,
            "failed": self._failed,
            "poisoned": self._poisoned,
            "kept": self._kept,
            "polls": self._polls,
            "errors": self._errors,
            "renewals": self._renewals,
            "in_flight": len(self._inflight),
        }

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start polling in the background; the first receive happens at once."""
        if self.running:
            return
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._wake = asyncio.Event()  # fresh events: a restart may happen on another event loop
        self._slot = asyncio.Event()
        self._stopping = False
        self._delay = self._min
        self._task = asyncio.create_task(self._keep_polling(), name=f"queue-trigger:{self.name}")

    def wake(self) -> None:
        """Poll now and reset the backoff: this process just enqueued something (thread-safe)."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._thread_id:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._wake.set)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop polling and wait up to ``timeout`` seconds for running handlers.

        Handlers still running then are cancelled and their messages released at once.
        """
        task, self._task = self._task, None
        self._stopping = True
        self._wake.set()
        self._slot.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if task is not None:
            # Let a receive in flight finish (its messages are released); don't hang on a dead server.
            _, pending = await asyncio.wait({task}, timeout=min(timeout, 1.0))
            for stuck in pending:
                stuck.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stuck
        if self._inflight and timeout > 0:
            await asyncio.wait(set(self._inflight), timeout=timeout)
        if self._inflight:
            logger.warning(
                "%s: %d handlers still running at stop; cancelling", self.name, len(self._inflight)
            )
            for handler in list(self._handlers):
                handler.cancel()
            _, pending = await asyncio.wait(set(self._inflight), timeout=5.0)
            for stuck in pending:
                stuck.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._own_poison and self._poison_queue is not None:
            await self._poison_queue.close()
            self._poison_queue, self._own_poison = None, False

    async def __aenter__(self) -> QueueTriggerRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- polling -------------------------------------------------------------------------------

    async def _keep_polling(self) -> None:
        """``_poll_loop``, restarted (after a pause, with the error logged) if it ever raises."""
        while not self._stopping:
            try:
                await self._poll_loop()
            except Exception:
                logger.exception("%s: the poll loop failed; restarting it in 1 s", self.name)
                await asyncio.sleep(1.0)

    async def _poll_loop(self) -> None:
        """Receive batches while capacity allows; back off while the queue is empty."""
        threshold = self.options.threshold
        while not self._stopping:
            while len(self._inflight) > threshold and not self._stopping:
                self._slot.clear()
                await self._slot.wait()
            if self._stopping:
                break
            self._wake.clear()
            batch = await self._receive()
            if batch:
                if self._stopping:
                    await asyncio.gather(*(self._release(m, 0) for m in batch), return_exceptions=True)
                    break
                self._delay = self._min
                for message in batch:
                    task = asyncio.create_task(self._process(message))
                    self._inflight.add(task)
                    task.add_done_callback(self._done)
                continue  # as the host: fetch again as soon as in-flight work allows
            if self._wake.is_set():  # woken during the receive: the message may have just missed it
                self._delay = self._min
                continue
            # While storage fails, poll again within a second: the idle back-off would otherwise keep
            # sleeping (up to max_polling_interval) well after storage is back.
            ceiling = min(self._max, ERROR_POLLING_INTERVAL_S) if self._poll_failing else self._max
            if await self._sleep(min(self._delay * random.uniform(0.8, 1.2), ceiling)):
                self._delay = self._min
            else:
                self._delay = min(self._delay * 2, ceiling)

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until woken; whether it was woken."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def _receive(self) -> list[QueueMessage]:
        """One receive call for up to ``batch_size`` messages; errors are logged and read as empty."""
        self._polls += 1
        n = self.options.batch_size
        try:
            pages = self.queue.receive_messages(
                messages_per_page=n, max_messages=n, visibility_timeout=self._lease
            ).by_page()
            try:
                page = await pages.__anext__()
            except StopAsyncIteration:
                page = None
            received = [m async for m in page] if page is not None else []
        except Exception as error:
            self._errors += 1
            log = logger.debug if self._poll_failing else logger.warning
            log("%s: receive failed (retrying with backoff): %s", self.name, error)
            self._poll_failing = True
            return []
        if self._poll_failing:
            logger.info("%s: receive works again", self.name)
            self._poll_failing = False
        return [self._convert(m) for m in received]

    @staticmethod
    def _convert(message: Any) -> QueueMessage:
        content = message.content
        if isinstance(content, (bytes, bytearray)):
            content = bytes(content).decode("utf-8")
        return QueueMessage(
            id=message.id,
            pop_receipt=message.pop_receipt,
            content="" if content is None else content,
            dequeue_count=message.dequeue_count or 0,
            inserted_on=message.inserted_on,
        )

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._slot.set()

    def _wake_later(self, seconds: float) -> None:
        """Poll when a released message becomes visible again, if that is sooner than backoff would."""
        if self._stopping or seconds >= self._max:
            return
        if seconds <= 0:
            self.wake()
            return
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self.wake()

        handle = self._loop.call_later(seconds, fire)
        self._timers.add(handle)

    # -- processing ----------------------------------------------------------------------------

    async def _process(self, message: QueueMessage) -> None:
        """Run the handler with lease renewal, then delete, release, keep or poison the message."""
        try:
            if message.dequeue_count > self.options.max_dequeue_count:
                # As the host's BeginProcessingMessageAsync: a message that kept coming back without
                # completing (e.g. it crashed the worker) goes to the poison queue unprocessed.
                await self._poison(message)
                return
            handler = asyncio.ensure_future(self.handler(message))
            self._handlers.add(handler)
            try:
                await self._run_with_renewal(handler, message)
            finally:
                self._handlers.discard(handler)
            error: BaseException | None
            if handler.cancelled():
                if self._stopping:
                    await self._release(message, 0)  # abandoned at shutdown: let another worker have it
                    return
                error = asyncio.CancelledError()
            else:
                error = handler.exception()
            if error is None:
                await self._delete(message)
                self._handled += 1
            elif isinstance(error, KeepMessage):
                await self._keep(message, error.visibility)
            else:
                await self._fail(message, error)
        except Exception:
            self._errors += 1
            logger.exception("%s: completing message %s failed", self.name, message.id)

    async def _run_with_renewal(self, handler: asyncio.Future[None], message: QueueMessage) -> None:
        """Wait for the handler, renewing the lease every half lease while it runs (as the host)."""
        normal = self._lease / 2
        floor = min(60.0, normal / 4)  # the host speeds renewal up on errors, down to a minute
        interval: float | None = normal
        try:
            while True:
                done, _ = await asyncio.wait({handler}, timeout=interval)
                if done:
                    return
                try:
                    updated = await self.queue.update_message(
                        message.id, message.pop_receipt, visibility_timeout=self._lease
                    )
                except Exception as error:
                    if isinstance(error, HttpResponseError) and _lost_ownership(error):
                        logger.warning("%s: lost the lease of message %s: %s", self.name, message.id, error)
                        interval = None  # no point renewing again; let the handler finish
                        continue
                    self._errors += 1
                    logger.warning("%s: renewing message %s failed: %s", self.name, message.id, error)
                    interval = max((interval or normal) / 2, floor)
                else:
                    message.pop_receipt = updated.pop_receipt
                    self._renewals += 1
                    interval = normal
        except asyncio.CancelledError:
            handler.cancel()
            raise

    async def _fail(self, message: QueueMessage, error: BaseException) -> None:
        """The host's CompleteProcessingMessageAsync for a failure: poison or release."""
        self._failed += 1
        limit = self.options.max_dequeue_count
        logger.warning(
            "%s: handler failed for message %s (dequeue %d of %d)",
            self.name,
            message.id,
            message.dequeue_count,
            limit,
            exc_info=error,
        )
        if message.dequeue_count >= limit:
            await self._poison(message)
            return
        delay = self.options.visibility_timeout
        await self._release(message, _seconds(delay))
        self._wake_later(delay.total_seconds())

    async def _keep(self, message: QueueMessage, visibility: timedelta) -> None:
        """Re-enqueue a fresh copy after ``visibility`` and delete the original (copy first: never lost)."""
        await self.queue.send_message(
            message.content, visibility_timeout=_seconds(visibility), time_to_live=-1
        )
        await self._delete(message)
        self._kept += 1
        self._wake_later(visibility.total_seconds())

    async def _poison(self, message: QueueMessage) -> None:
        """Copy the content to the poison queue, delete the original, then call ``on_poison``."""
        poison = self._poison_queue
        if poison is None and self.poison_queue_name is not None:
            poison = self._poison_queue = _poison_client(self.queue, self.poison_queue_name)
            self._own_poison = True
        if poison is None:
            # As the host: without a poison queue the message stays invisible until its lease ends.
            logger.error("%s: message %s is poison but there is no poison queue", self.name, message.id)
        else:
            logger.warning(
                "%s: message %s reached max dequeue count %d; moving it to %s",
                self.name,
                message.id,
                self.options.max_dequeue_count,
                poison.queue_name,
            )
            try:
                await poison.send_message(message.content)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    await poison.create_queue()
                await poison.send_message(message.content)
            await self._delete(message)
            self._poisoned += 1
        if self.on_poison is not None:
            try:
                await self.on_poison(message)
            except Exception:
                logger.exception("%s: on_poison failed for message %s", self.name, message.id)

    async def _delete(self, message: QueueMessage) -> None:
        try:
            await self.queue.delete_message(message.id, message.pop_receipt)
        except HttpResponseError as error:
            if not _lost_ownership(error):
                raise
            logger.debug("%s: message %s was not ours to delete: %s", self.name, message.id, error)

    async def _release(self, message: QueueMessage, seconds: int) -> None:
        """Make the message visible again after ``seconds`` (the host's ReleaseMessageAsync)."""
        try:
            await self.queue.update_message(message.id, message.pop_receipt, visibility_timeout=seconds)
        except HttpResponseError as error:
            if not _lost_ownership(error):
                raise
            logger.debug("%s: message %s was not ours to release: %s", self.name, message.id, error)


class QueueTriggerGroup:
    """Several runners (e.g. control queues and the work-item queue) started, woken and stopped together."""

    def __init__(self, runners: Iterable[QueueTriggerRunner] = ()) -> None:
        self._runners: dict[str, QueueTriggerRunner] = {}
        for runner in runners:
            self.add(runner)

    def add(self, runner: QueueTriggerRunner) -> QueueTriggerRunner:
        """Add a runner, keyed by its name (its queue name unless given)."""
        if runner.name in self._runners:
            raise ValueError(f"a runner named {runner.name!r} is already in the group")
        self._runners[runner.name] = runner
        return runner

    def __getitem__(self, name: str) -> QueueTriggerRunner:
        return self._runners[name]

    def __iter__(self) -> Iterator[QueueTriggerRunner]:
        return iter(self._runners.values())

    def __len__(self) -> int:
        return len(self._runners)

    async def start(self) -> None:
        """Start every runner."""
        for runner in self._runners.values():
            await runner.start()

    def wake(self, name: str | None = None) -> None:
        """Wake the runner of queue ``name`` (ignored if this process has none), or all of them."""
        if name is None:
            for runner in self._runners.values():
                runner.wake()
        elif (runner := self._runners.get(name)) is not None:
            runner.wake()

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop every runner concurrently, each waiting up to ``timeout`` for its handlers."""
        await asyncio.gather(*(runner.stop(timeout) for runner in self._runners.values()))

    async def __aenter__(self) -> QueueTriggerGroup:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
