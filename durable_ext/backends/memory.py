"""In-process backend: instances, history, inboxes and timers in memory.

For unit tests and the user test harness. A step commits atomically because
nothing in ``commit`` awaits; the work queues it keeps (ready instances,
activity requests, timers) are consumed by :class:`durable_ext.engine.LocalWorker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections import deque
from dataclasses import replace

from ..clock import Clock
from ..core.entities import is_entity_instance, new_entity_record
from ..core.errors import ConflictError, InstanceAlreadyExistsError
from ..core.history import Event
from ..core.runtime import ActivityRequest, InstanceRecord, Message, StepResult
from ..core.status import OrchestrationRuntimeStatus as Status
from .base import Backend, InstanceQuery, LoadedInstance, QueryPage


class MemoryBackend(Backend):
    """A task hub held in this process."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self._records: dict[str, InstanceRecord] = {}
        self._history: dict[str, list[Event]] = {}
        self._inbox: dict[str, list[Message]] = {}
        self._versions: dict[str, int] = {}
        self._timers: list[tuple[object, int, Message]] = []
        self._seq = itertools.count()
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._activities: deque[ActivityRequest] = deque()
        self._running_activities = 0
        self._wakeup = asyncio.Event()
        self.commits = 0

    # -------------------------------------------------------------- Backend API

    async def create_instance(self, record: InstanceRecord, start: Message) -> None:
        existing = self._records.get(record.instance_id)
        if existing is not None and not existing.status.is_terminal:
            raise InstanceAlreadyExistsError(
                f"instance '{record.instance_id}' is {existing.status.value}; wait for it to "
                "finish, terminate it or use another id"
            )
        if existing is not None:
            record = replace(record, created_at=record.created_at)
        self._records[record.instance_id] = record
        self._versions[record.instance_id] = self._versions.get(record.instance_id, 0) + 1
        self._deliver(start)

    async def send_messages(self, messages: list[Message]) -> None:
        for message in messages:
            self._deliver(message)

    async def load(
        self,
        instance_id: str,
        history_from: int = 0,
        messages: list[Message] | None = None,
        *,
        hot: bool = False,
    ) -> LoadedInstance | None:
        record = self._records.get(instance_id)
        if record is None:
            return None
        history = self._history.get(instance_id, [])
        start = history_from if 0 <= history_from <= len(history) else 0
        return LoadedInstance(
            record=replace(record),
            history=history[start:],
            history_from=start,
            history_len=len(history),
            inbox=[*self._inbox.get(instance_id, ()), *(messages or ())],
            etag=self._versions.get(instance_id, 0),
        )

    async def commit(self, loaded: LoadedInstance, step: StepResult) -> None:
        iid = loaded.record.instance_id
        if self._versions.get(iid, 0) != loaded.etag:
            raise ConflictError(f"instance '{iid}' changed since it was loaded")
        self._versions[iid] = loaded.etag + 1
        self.commits += 1
        consumed = set(step.consumed)
        inbox = self._inbox.get(iid)
        if inbox:
            self._inbox[iid] = [m for m in inbox if m.id not in consumed]
        if step.reset_history:
            self._history[iid] = list(step.new_events)
        elif step.new_events:
            self._history.setdefault(iid, []).extend(step.new_events)
        self._records[iid] = step.record
        self._activities.extend(step.activities)
        for message in step.messages:
            self._deliver(message)
        self._wakeup.set()

    async def complete_activity(self, request: ActivityRequest, result: Message) -> None:
        self._deliver(result)

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        record = self._records.get(instance_id)
        return replace(record) if record is not None else None

    async def get_history(self, instance_id: str) -> list[Event]:
        return list(self._history.get(instance_id, ()))

    async def query_instances(self, query: InstanceQuery) -> QueryPage:
        after = query.continuation or ""
        matches = sorted(
            (r for r in self._records.values() if r.instance_id > after and query.matches(r)),
            key=lambda r: r.instance_id,
        )
        page = matches[: query.page_size]
        more = len(matches) > query.page_size
        return QueryPage([replace(r) for r in page], page[-1].instance_id if more else None)

    async def purge_instance(self, instance_id: str) -> int:
        if self._records.pop(instance_id, None) is None:
            return 0
        self._history.pop(instance_id, None)
        self._inbox.pop(instance_id, None)
        self._versions[instance_id] = self._versions.get(instance_id, 0) + 1
        return 1

    # ----------------------------------------------------------- work sources

    def _deliver(self, message: Message) -> None:
        if message.visible_at is not None and message.visible_at > self.clock.now():
            heapq.heappush(self._timers, (message.visible_at, next(self._seq), message))
            self._wakeup.set()
            return
        iid = message.instance_id
        if iid not in self._records:
            now = self.clock.now()
            if is_entity_instance(iid):  # an entity comes to be with its first message
                self._records[iid] = new_entity_record(iid, now)
            elif message.event.get("EventType") != 0:  # only a start creates an instance
                return
            else:
                self._records[iid] = InstanceRecord(
                    iid, message.event.get("Name", ""), message.execution_id or "", Status.Pending, now, now
                )
        self._inbox.setdefault(iid, []).append(message)
        self._mark_ready(iid)

    def _mark_ready(self, iid: str) -> None:
        if iid not in self._queued and iid not in self._busy:
            self._queued.add(iid)
            self._ready.append(iid)
        self._wakeup.set()

    def take_instance(self) -> str | None:
        """Next instance with inbox messages that no worker is processing."""
        while self._ready:
            iid = self._ready.popleft()
            self._queued.discard(iid)
            if self._inbox.get(iid):
                self._busy.add(iid)
                return iid
        return None

    def release_instance(self, iid: str) -> None:
        """A worker finished with ``iid``; requeue it if messages arrived meanwhile."""
        self._busy.discard(iid)
        if self._inbox.get(iid):
            self._mark_ready(iid)

    def take_activity(self) -> ActivityRequest | None:
        """Next queued activity request."""
        if self._activities:
            self._running_activities += 1
            return self._activities.popleft()
        return None

    def activity_done(self) -> None:
        """An activity taken with ``take_activity`` finished (its result is delivered)."""
        self._running_activities -= 1
        self._wakeup.set()

    def next_timer_due(self):  # type: ignore[no-untyped-def]
        """When the earliest pending durable timer fires, or ``None``."""
        return self._timers[0][0] if self._timers else None

    def release_due_timers(self) -> int:
        """Deliver every timer message that is due by the clock; returns how many."""
        now = self.clock.now()
        count = 0
        while self._timers and self._timers[0][0] <= now:  # type: ignore[operator]
            _, _, message = heapq.heappop(self._timers)
            message.visible_at = None
            self._deliver(message)
            count += 1
        return count

    @property
    def is_idle(self) -> bool:
        """No runnable work: nothing ready, running or queued (timers may be pending)."""
        return not (self._ready or self._busy or self._activities or self._running_activities)

    async def wait_for_work(self, timeout: float | None = None) -> None:
        """Sleep until something changes (new work, a commit, a finished activity)."""
        self._wakeup.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def notify(self) -> None:
        """Wake every waiter (used when the clock moved)."""
        self._wakeup.set()
