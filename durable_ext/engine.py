"""The engine: load an instance, replay it, commit the step; run activities.

``Engine`` is what a queue-triggered handler calls, whatever the backend:
``process_instance`` for a control-queue wake-up, ``run_activity`` for a
work item. It keeps the replayed state of busy orchestrations in a bounded
LRU cache so a step on a cached instance loads and applies only new events.
``LocalWorker`` drives an engine over the in-memory backend's work queues.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
import time
from collections import OrderedDict
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from .backends.base import Backend, LoadedInstance
from .backends.memory import MemoryBackend
from .clock import Clock
from .core import history as h
from .core.entities import is_entity_instance, needs_step, run_entity_step
from .core.errors import ConflictError, NonDeterministicOrchestrationError, StaleStateError
from .core.executor import OrchestrationExecutor, exception_failure
from .core.registry import Registry
from .core.runtime import ActivityRequest, Message, StepResult, run_step
from .core.serialization import convert, from_json, to_json

log = logging.getLogger("durable_ext")
# One line per orchestration step, activity run and entity batch, under names users can filter.
orchestration_log = logging.getLogger("durable_ext.orchestration")
activity_log = logging.getLogger("durable_ext.activity")
entity_log = logging.getLogger("durable_ext.entity")


@dataclass
class _Cached:
    executor: OrchestrationExecutor
    execution_id: str
    history_len: int


class Engine:
    """Runs orchestration steps and activities of one app against one backend."""

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        *,
        clock: Clock | None = None,
        cache_size: int = 1024,
        max_conflict_retries: int = 20,
        activity_threads: Executor | None = None,
        entity_threads: Executor | None = None,
    ) -> None:
        """``activity_threads`` runs sync activities (``None``: the loop's default executor) and
        ``entity_threads`` entity batches (``None``: inline on the loop, as the test harness wants)."""
        self.registry = registry
        self.activity_threads = activity_threads
        self.entity_threads = entity_threads
        self.backend = backend
        self.clock = clock or getattr(backend, "clock", None) or Clock()
        self.cache_size = cache_size
        self.max_conflict_retries = max_conflict_retries
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self.stats = {
            "steps": 0,
            "replays": 0,
            "cache_hits": 0,
            "conflicts": 0,
            "stale_hints": 0,
            "handed_off": 0,
            "activities": 0,
        }

    # ------------------------------------------------------------ orchestrations

    async def process_instance(
        self, instance_id: str, messages: list[Message] | None = None, *, hot: bool = False
    ) -> StepResult | None:
        """Apply the instance's pending inbox (and ``messages``) in one committed step.

        ``hot``: only in-process results arrived (see ``Backend.load``). A
        conflict with another worker reloads and tries again.
        """
        if is_entity_instance(instance_id):
            return await self._process_entity(instance_id, messages)
        begin = time.perf_counter()
        backend = self.backend
        for attempt in range(self.max_conflict_retries):
            if backend.claimed_elsewhere(instance_id):
                # another process steps this contended instance: leave the messages to it
                if await backend.hand_off(instance_id, messages or []):
                    self.stats["handed_off"] += 1
                    return None
                messages, hot = None, False  # in the inbox now, and the claim is gone: step here
            cached = self._cache.get(instance_id)
            history_from = cached.history_len if cached else 0
            hot_now = hot and attempt == 0 and cached is not None
            loaded = await backend.load(instance_id, history_from, messages, hot=hot_now)
            if loaded is None:
                self._cache.pop(instance_id, None)
                return None
            if backend.claimed_elsewhere(instance_id):
                continue  # the read shows another process's claim
            if not loaded.inbox:
                return None
            if cached is not None and not self._fits(cached, loaded):
                self._cache.pop(instance_id, None)
                continue  # stale cache (reset or foreign writes we cannot see): reload all
            executor = self._reuse(instance_id, cached, loaded)
            if executor is None and loaded.history_from != 0:
                continue  # the cached state could not take the new rows: replay in full
            step = run_step(
                self.registry,
                loaded.record,
                [] if executor is not None else loaded.history,
                loaded.inbox,
                self.clock.now(),
                executor,
            )
            try:
                await backend.commit(loaded, step)
            except StaleStateError:
                # nothing was applied, so the cached replay state is intact: read what is newer
                self.stats["stale_hints"] += 1
                continue
            except ConflictError:
                self.stats["conflicts"] += 1
                self._cache.pop(instance_id, None)
                await _back_off(attempt)
                continue
            except BaseException:
                self._cache.pop(instance_id, None)
                raise
            self.stats["steps"] += 1
            self._remember(instance_id, loaded, step)
            _log_step(instance_id, step, len(loaded.inbox), attempt, begin)
            return step
        raise ConflictError(f"instance '{instance_id}' kept changing; gave up after retries")

    async def _process_entity(self, instance_id: str, messages: list[Message] | None) -> StepResult | None:
        """Apply an entity's pending requests, as one batch, in one committed step."""
        begin = time.perf_counter()
        for attempt in range(self.max_conflict_retries):
            loaded = await self.backend.load(instance_id, 0, messages)
            if loaded is None:
                return None
            if not loaded.inbox and not needs_step(loaded.record, self.clock.now()):
                return None
            now = self.clock.now()
            if self.entity_threads is None:  # in memory (the test harness): inline, deterministic
                step = run_entity_step(self.registry, loaded.record, loaded.inbox, now)
            else:  # entity operations are user code that may block: never on a worker's event loop
                step = await _in_thread(
                    self.entity_threads, run_entity_step, self.registry, loaded.record, loaded.inbox, now
                )
            try:
                await self.backend.commit(loaded, step)
            except ConflictError:
                self.stats["conflicts"] += 1
                await _back_off(attempt)
                continue
            self.stats["steps"] += 1
            if entity_log.isEnabledFor(logging.INFO):
                entity_log.info(
                    "entity %s: %d operations (%d failed) from %d messages in %.1f ms%s",
                    instance_id,
                    step.operations,
                    step.failed_operations,
                    len(loaded.inbox),
                    (time.perf_counter() - begin) * 1000,
                    f" ({attempt} retries)" if attempt else "",
                )
            return step
        raise ConflictError(f"entity '{instance_id}' kept changing; gave up after retries")

    @staticmethod
    def _fits(cached: _Cached, loaded: LoadedInstance) -> bool:
        """Whether the cached replay state is a prefix of what was loaded."""
        return (
            cached.execution_id == loaded.record.execution_id
            and loaded.history_from == cached.history_len
            and loaded.history_len >= cached.history_len
        )

    def _reuse(
        self, instance_id: str, cached: _Cached | None, loaded: LoadedInstance
    ) -> OrchestrationExecutor | None:
        """The cached executor brought up to the stored history, or None to replay."""
        if cached is None:
            self.stats["replays"] += 1
            return None
        self._cache.move_to_end(instance_id)
        if loaded.history:  # another worker committed steps: apply just those
            try:
                cached.executor.process(loaded.history, replaying=True)
            except NonDeterministicOrchestrationError:
                self._cache.pop(instance_id, None)  # let a full replay fail the instance
                return None
        self.stats["cache_hits"] += 1
        return cached.executor

    def _remember(self, instance_id: str, loaded: LoadedInstance, step: StepResult) -> None:
        executor = step.executor
        if executor is None or executor.is_done:
            self._cache.pop(instance_id, None)
            return
        base = 0 if step.reset_history else loaded.history_len
        self._cache[instance_id] = _Cached(executor, step.record.execution_id, base + len(step.new_events))
        self._cache.move_to_end(instance_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def evict(self, instance_id: str | None = None) -> None:
        """Drop cached replay state (of one instance, or all)."""
        if instance_id is None:
            self._cache.clear()
        else:
            self._cache.pop(instance_id, None)

    # ---------------------------------------------------------------- activities

    async def run_activity(self, request: ActivityRequest) -> Message:
        """Run one activity and return the completion message for its orchestration."""
        stamp = h.format_timestamp(self.clock.now())
        begin = time.perf_counter()
        try:
            info = self.registry.get("activity", request.name)
            value = from_json(request.input, None, f"input of activity '{request.name}'")
            value = convert(value, info.input_type, f"input of activity '{request.name}'")
            if info.is_async:
                result = await _call(info.fn, info.input_name, value)
            else:
                result = await _in_thread(self.activity_threads, _call_sync, info.fn, info.input_name, value)
            payload = to_json(result, f"result of activity '{request.name}'")
            event = h.task_completed(stamp, request.task_id, payload)
            activity_log.info(
                "activity '%s' of %s (task %d): Completed in %.1f ms",
                request.name,
                request.instance_id,
                request.task_id,
                (time.perf_counter() - begin) * 1000,
            )
        except Exception as exc:
            activity_log.warning(
                "activity '%s' of %s (task %d): Failed in %.1f ms: %s: %s",
                request.name,
                request.instance_id,
                request.task_id,
                (time.perf_counter() - begin) * 1000,
                type(exc).__name__,
                exc,
            )
            event = h.task_failed(stamp, request.task_id, exception_failure(exc))
        self.stats["activities"] += 1
        return Message(request.instance_id, event, request.execution_id)


def _log_step(instance_id: str, step: StepResult, messages: int, retries: int, begin: float) -> None:
    """The line a user reads for one committed orchestration step."""
    if not orchestration_log.isEnabledFor(logging.INFO):
        return
    rec = step.record
    sent = f", {len(step.activities)} activities and {len(step.messages)} messages sent"
    orchestration_log.info(
        "orchestration '%s' %s: %s after %d messages%s in %.1f ms%s",
        rec.name,
        instance_id,
        rec.status.value,
        messages,
        sent if step.activities or step.messages else "",
        (time.perf_counter() - begin) * 1000,
        f" ({retries} retries)" if retries else "",
    )


CONFLICT_BACKOFF_S = 0.005  # the first wait after an ETag conflict, doubled each time
CONFLICT_BACKOFF_CAP_S = 0.5


async def _back_off(attempt: int) -> None:
    """Wait before stepping again after a conflict: random, growing, bounded.

    Another process just committed this instance, and more may be on their way
    (a fan-in's results land on several processes at once); retrying at once
    would only collide again. Full jitter spreads the retries.
    """
    await asyncio.sleep(random.uniform(0, min(CONFLICT_BACKOFF_CAP_S, CONFLICT_BACKOFF_S * 2**attempt)))


async def _in_thread(threads: Executor | None, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on ``threads`` (the loop's default executor for ``None``), with this context."""
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return await asyncio.get_running_loop().run_in_executor(threads, call)


async def _call(fn, input_name, value):  # type: ignore[no-untyped-def]
    if input_name:
        return await fn(**{input_name: value})
    return await fn(value)


def _call_sync(fn, input_name, value):  # type: ignore[no-untyped-def]
    if input_name:
        return fn(**{input_name: value})
    return fn(value)


class LocalWorker:
    """Drives an engine over a MemoryBackend: orchestration steps, activities, timers."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_concurrent_activities: int = 16,
        max_concurrent_orchestrations: int = 4,
    ) -> None:
        if not isinstance(engine.backend, MemoryBackend):
            raise TypeError("LocalWorker runs on a MemoryBackend")
        self.engine = engine
        self.backend: MemoryBackend = engine.backend
        self.max_concurrent_activities = max_concurrent_activities
        self.max_concurrent_orchestrations = max_concurrent_orchestrations
        self._tasks: list[asyncio.Task[None]] = []
        self.errors: list[BaseException] = []

    async def start(self) -> None:
        """Start the worker loops on the running event loop."""
        loops = [self._orchestration_loop() for _ in range(self.max_concurrent_orchestrations)]
        loops += [self._activity_loop() for _ in range(self.max_concurrent_activities)]
        if not self.engine.clock.virtual:
            loops.append(self._timer_loop())
        self._tasks = [asyncio.ensure_future(c) for c in loops]

    async def stop(self) -> None:
        """Cancel the loops and wait for them."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def __aenter__(self) -> LocalWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _orchestration_loop(self) -> None:
        backend = self.backend
        while True:
            iid = backend.take_instance()
            if iid is None:
                await backend.wait_for_work()
                continue
            try:
                await self.engine.process_instance(iid)
            except Exception as exc:  # keep the worker alive; report through .errors
                log.exception("step of %s failed", iid)
                self.errors.append(exc)
            finally:
                backend.release_instance(iid)

    async def _activity_loop(self) -> None:
        backend = self.backend
        while True:
            request = backend.take_activity()
            if request is None:
                await backend.wait_for_work()
                continue
            try:
                message = await self.engine.run_activity(request)
                await backend.complete_activity(request, message)
            finally:
                backend.activity_done()

    async def _timer_loop(self) -> None:
        backend = self.backend
        clock = self.engine.clock
        while True:
            backend.release_due_timers()
            due = backend.next_timer_due()
            timeout = None if due is None else max(0.0, (due - clock.now()).total_seconds())
            await backend.wait_for_work(timeout)
