"""The Azure Storage backend: Tables for state, Queues for dispatch, Blobs for big payloads.

See ``docs/storage.md`` for the rows, the order of writes and why every crash
point is safe. In short: a step commits one entity-group transaction in the
instance's ``{Hub}History`` partition (sentinel guarded by its ETag, new
history rows, consumed inbox rows deleted, an outbox row of what it sends),
then dispatches the outbox and deletes it. Work left in flight is held under
the committing process's lease (``leases.py``): if the process dies, a sweep
takes over what it held within about a lease's duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import orjson
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from ...clock import Clock
from ...config import (
    DurableTaskOptions,
    control_queue,
    history_table,
    instances_table,
    large_messages_container,
    partition_of,
    workers_table,
    workitem_queue,
)
from ...core.entities import is_entity_instance, new_entity_record
from ...core.errors import ConflictError, DurableError, InstanceAlreadyExistsError, StaleStateError
from ...core.history import Event, EventType
from ...core.runtime import ActivityRequest, InstanceRecord, Message, StepResult, failure_step
from ...core.status import OrchestrationRuntimeStatus as Status
from ...retrying import Background, persist
from ..base import Backend, InstanceQuery, LoadedInstance, QueryPage
from . import rows as r
from .claims import FIELDS as CLAIM_FIELDS
from .claims import STEPPER, Claims
from .connection import StorageConnection
from .leases import LEASE, WorkerLease
from .transactions import submit_transaction

log = logging.getLogger("durable_ext.azure")

#: Events whose duplicates history absorbs (same task id): sent inside the queue message.
_INLINE = frozenset({EventType.TaskCompleted, EventType.TaskFailed, EventType.TimerFired})
_MAX_VISIBILITY = timedelta(days=6, hours=23)  # queues allow 7 days
_LOCAL_TIMER_HORIZON = timedelta(hours=1)  # timers due later are left to the queue alone
_INBOX_PER_STEP = 40
_DISPATCH_INLINE = 100  # sends a step waits for; a bigger outbox goes out in the background
_DISPATCH_CONCURRENCY = 64  # sends of one outbox in flight at once
_HAND_OFF_TXN = 50  # inbox rows handed to a claim's holder per transaction
_CLOSE_CLAIMS_S = 2.0  # how long a closing process tries to give its claims up
_KNOWN_MAX = 4096  # instances whose last commit this process remembers (hot path)
_BLOB_PROPS = {  # record properties that move to a blob when too big for a table property
    "Input": "input",
    "Output": "output",
    "CustomStatus": "custom_status",
    "FailureDetails": "failure",
}
#: sentinel properties that the Instances row does not carry
_SENTINEL_ONLY = frozenset({"PartitionKey", "RowKey", "HistoryLength", "Dedupe", "WakeAt", *CLAIM_FIELDS})
_LOCAL = "-l"  # outbox rows of activities this process runs itself: kept until answered
_seq = itertools.count()


class PoisonMessageError(DurableError):
    """A message for the instance kept failing and was moved to a poison queue."""


class FaultHook:
    """Test hook: ``check(point)`` runs before and after each storage write of a step."""

    def check(self, point: str) -> None:
        """Raise (or kill the process) to simulate a crash at ``point``."""


@dataclass
class _Loaded:
    """Backend-private part of a LoadedInstance."""

    etag: str | None
    sentinel: dict[str, Any]
    inbox_keys: dict[str, str] = field(default_factory=dict)  # message id -> row key
    drop_keys: list[str] = field(default_factory=list)  # duplicate inbox rows and stale history
    overflow: bool = False  # more inbox rows than one step takes: wake again after commit
    local_rows: dict[str, set[tuple[str | None, int]]] = field(default_factory=dict)
    #: taken from this process's last commit, not read: a hint that only the commit's ETag proves
    hint: bool = False


@dataclass
class _Known:
    """What this process committed last for an instance: lets a hot step skip the load."""

    etag: str | None
    record: InstanceRecord
    history_len: int
    sentinel: dict[str, Any]
    local_rows: dict[str, set[tuple[str | None, int]]]


@dataclass
class _Waker:
    """The wake-up of one instance being sent (``busy``) and the one callers wait for next."""

    busy: bool = False
    waiting: asyncio.Future[None] | None = None
    task: asyncio.Future[None] | None = None


@dataclass(frozen=True)
class SentMessage:
    """A queue message this process sent: enough to delete it again."""

    queue: Any
    id: str
    pop_receipt: str


#: the future of a message's queued copy, handed to the dispatcher while it is being sent
Backup = asyncio.Future[SentMessage]


class LocalDispatcher:
    """Lets the backend apply in this process the messages it sends to instances.

    When ``accepts(due)`` the backend enqueues the message's durable copy made
    invisible for a grace period past its due time, and calls ``run`` with the
    future of that copy; the dispatcher applies the message (at ``due``) and
    then discards the copy through ``AzureBackend.discard``.
    """

    #: how long a queued copy stays invisible past its due time while this process applies it
    grace = timedelta(seconds=10)

    def accepts(self, due: datetime | None) -> bool:  # pragma: no cover - interface
        """Whether it takes one more message, due now (``None``) or at ``due``."""
        return False

    def run(  # pragma: no cover - interface
        self,
        instance_id: str,
        messages: list[Message],
        due: datetime | None,
        backup: Backup,
    ) -> None:
        """Apply ``messages`` (empty: the instance's inbox) to the instance at ``due``."""


class LocalActivities:
    """Lets the backend hand activities to this process instead of the work-item queue.

    ``try_reserve`` takes a slot at commit time (before the outbox is
    written); ``start`` runs the reserved activities after the commit;
    ``release`` gives back a slot that was not used.
    """

    def try_reserve(self) -> bool:  # pragma: no cover - interface
        """Take a slot if one is free."""
        return False

    def release(self) -> None:  # pragma: no cover - interface
        """Give back a reserved slot."""

    def start(self, requests: list[ActivityRequest]) -> None:  # pragma: no cover - interface
        """Run reserved activities (each holds one slot until it finishes)."""


def _visibility_seconds(delay: timedelta | None) -> int:
    """A delay as the queue counts visibility: whole seconds, rounded up (a timer's message must
    not become visible before it is due), 0 for none, at most the service's limit."""
    if delay is None or delay <= timedelta(0):
        return 0
    return math.ceil(min(delay, _MAX_VISIBILITY).total_seconds())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _projection(sentinel: dict[str, Any]) -> dict[str, Any]:
    """The Instances row's properties, from a sentinel row."""
    return {k: v for k, v in sentinel.items() if k not in _SENTINEL_ONLY}


def _conflict(exc: Exception) -> bool:
    code = getattr(exc, "error_code", None) or ""
    text = str(exc)
    needles = ("UpdateConditionNotSatisfied", "EntityAlreadyExists", "ResourceNotFound", "ConditionNotMet")
    return any(n in str(code) or n in text for n in needles)


class AzureBackend(Backend):
    """A task hub in an Azure Storage account (or Azurite)."""

    def __init__(
        self,
        connection: StorageConnection,
        options: DurableTaskOptions,
        *,
        clock: Clock | None = None,
        fault: FaultHook | None = None,
        lease: timedelta = LEASE,
    ) -> None:
        self.connection = connection
        self.options = options
        self.hub = options.hub_name
        self.clock = clock or Clock()
        self.fault = fault or FaultHook()
        tables = connection.table_service()
        queues = connection.queue_service()
        self.history = tables.get_table_client(history_table(self.hub))
        self.instances = tables.get_table_client(instances_table(self.hub))
        self.workers = tables.get_table_client(workers_table(self.hub))
        self.lease = WorkerLease(self.workers, self.recover, clock=self.clock, duration=lease)
        self.claims = Claims(lambda: self.lease.worker_id, self.clock)
        self.background = Background()  # dispatches retried after a failure (held by the lease)
        self.control_queues = [
            queues.get_queue_client(control_queue(self.hub, i)) for i in range(options.partition_count)
        ]
        self.workitems = queues.get_queue_client(workitem_queue(self.hub))
        self.blobs = connection.blob_service().get_container_client(large_messages_container(self.hub))
        self.on_enqueue: Callable[[str], None] | None = None
        self.local_activities: LocalActivities | None = None
        self.dispatcher: LocalDispatcher | None = None
        self.repairs = 0  # repairs the sweep made: 0 unless something failed
        self._known: OrderedDict[str, _Known] = OrderedDict()
        self._wakers: dict[str, _Waker] = {}

    # ------------------------------------------------------------- task hub

    async def create_task_hub(self) -> None:
        """Create the tables, queues and blob container if they do not exist."""

        async def ignore_exists(coro: Any) -> None:
            with contextlib.suppress(ResourceExistsError):
                await coro

        await asyncio.gather(
            ignore_exists(self.history.create_table()),
            ignore_exists(self.instances.create_table()),
            ignore_exists(self.workers.create_table()),
            ignore_exists(self.workitems.create_queue()),
            ignore_exists(self.blobs.create_container()),
            *(ignore_exists(q.create_queue()) for q in self.control_queues),
        )

    async def delete_task_hub(self) -> None:
        """Delete every table, queue and container of the hub (poison queues included)."""

        async def ignore_missing(coro: Any) -> None:
            with contextlib.suppress(ResourceNotFoundError):
                await coro

        queues = self.connection.queue_service()
        names = [q.queue_name for q in [*self.control_queues, self.workitems]]
        await asyncio.gather(
            ignore_missing(self.history.delete_table()),
            ignore_missing(self.instances.delete_table()),
            ignore_missing(self.workers.delete_table()),
            ignore_missing(self.blobs.delete_container()),
            *(ignore_missing(queues.delete_queue(n)) for n in names),
            *(ignore_missing(queues.delete_queue(f"{n}-poison")) for n in names),
        )

    def control_queue_for(self, instance_id: str) -> Any:
        """The control queue client of an instance's partition."""
        return self.control_queues[partition_of(instance_id, len(self.control_queues))]

    # ---------------------------------------------------------- large payloads

    async def _put_blob(self, instance_id: str, data: bytes) -> str:
        name = f"{instance_id}/{uuid.uuid4().hex}"
        await self.blobs.upload_blob(name, data, overwrite=True)
        return name

    async def _get_blob(self, name: str) -> bytes:
        stream = await self.blobs.download_blob(name)
        return await stream.readall()

    async def _text_props(
        self,
        instance_id: str,
        record: InstanceRecord,
        before: tuple[InstanceRecord, dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Record properties with payloads too big for a property moved to blobs.

        ``before`` (the loaded record and its row) lets an unchanged big payload
        keep its blob instead of being uploaded again at every step.
        """
        props = r.record_to_props(record)
        for key in _BLOB_PROPS:
            text = props.get(key)
            if text is not None and r.utf16_len(text) > r.PROPERTY_TEXT_LIMIT:
                props[key] = None
                old_blob = before[1].get(f"{key}Blob") if before else None
                if old_blob and r.record_to_props(before[0]).get(key) == text:  # type: ignore[index]
                    props[f"{key}Blob"] = old_blob
                else:
                    props[f"{key}Blob"] = await self._put_blob(instance_id, text.encode())
        return props

    async def _record(self, instance_id: str, row: dict[str, Any]) -> InstanceRecord:
        record = r.record_from_props(instance_id, row)
        for key in _BLOB_PROPS:
            blob = row.get(f"{key}Blob")
            if blob:
                text = (await self._get_blob(blob)).decode()
                if key == "FailureDetails":
                    record.failure = orjson.loads(text)
                else:
                    setattr(record, _BLOB_PROPS[key], text)
        return record

    # ---------------------------------------------------------------- sending

    async def _enqueue(self, queue: Any, body: dict[str, Any], delay: timedelta | None = None) -> SentMessage:
        data = orjson.dumps(body).decode()
        seconds = _visibility_seconds(delay)
        # time_to_live=-1: never expire, so a long timer's leg cannot age out while invisible
        sent = await queue.send_message(data, visibility_timeout=seconds or None, time_to_live=-1)
        self._visible(queue, seconds)
        return SentMessage(queue, sent.id, sent.pop_receipt)

    def _visible(self, queue: Any, seconds: int) -> None:
        """Tell this process's pollers (the local emulator) of a message visible now."""
        if self.on_enqueue is not None and not seconds:
            self.on_enqueue(queue.queue_name)

    async def discard(self, sent: SentMessage) -> None:
        """Delete a message this process sent (gone, or taken by another process: fine)."""
        with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
            await sent.queue.delete_message(sent.id, sent.pop_receipt)

    async def reveal(self, sent: SentMessage, due: datetime | None) -> None:
        """Make a message this process sent visible at ``due`` (at once when ``None``)."""
        seconds = _visibility_seconds(due - self.clock.now() if due is not None else None)
        with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
            await sent.queue.update_message(sent.id, sent.pop_receipt, visibility_timeout=seconds)
        self._visible(sent.queue, seconds)

    async def _notify(
        self,
        instance_id: str,
        body: dict[str, Any],
        messages: list[Message],
        due: datetime | None,
        in_process: bool = True,
    ) -> None:
        """Put ``body`` on the instance's control queue, and apply it in this process when it can.

        ``messages`` are what the body carries (none for a wake-up of the
        inbox), ``due`` when they may be applied. With a local dispatcher the
        queued copy is the durable backup: invisible until ``grace`` past
        ``due``, and deleted by the dispatcher once it has applied the messages.
        """
        queue = self.control_queue_for(instance_id)
        delay = due - self.clock.now() if due is not None else timedelta(0)
        if delay <= timedelta(0):
            due, delay = None, timedelta(0)
        dispatcher = self._local(due) if in_process else None
        if dispatcher is None:
            await self._enqueue(queue, body, delay)
            return
        backup = asyncio.ensure_future(self._enqueue(queue, body, delay + dispatcher.grace))
        dispatcher.run(instance_id, messages, due, backup)
        await backup

    def _local(self, due: datetime | None) -> LocalDispatcher | None:
        """This process's dispatcher, if it takes one more message due at ``due`` (``None``: now)."""
        dispatcher = self.dispatcher
        if dispatcher is None or (due is not None and due - self.clock.now() > _LOCAL_TIMER_HORIZON):
            return None
        return dispatcher if dispatcher.accepts(due) else None

    async def send_messages(self, messages: list[Message]) -> None:
        """Send messages from a client: each inbox write follows its wake-up (see ``_ahead``)."""

        async def send(message: Message) -> None:
            if message.event["EventType"] in _INLINE:
                await self._send(message)  # carried by its queue message: nothing to orphan
                return
            ahead = await self._ahead(message.instance_id, message.visible_at)
            await self._write_inbox(message)
            await self._after(ahead, message.instance_id, message.visible_at)

        await asyncio.gather(*(send(m) for m in messages))

    async def _ahead(self, instance_id: str, due: datetime | None) -> SentMessage:
        """A wake-up queued before a client writes to an instance, invisible for a lease.

        Nobody holds a client's writes (a client has no lease), so the queue
        does: if the client stops between its writes, the wake-up still comes,
        a lease later, and the instance reads whatever got written.
        """
        delay = max(due - self.clock.now(), timedelta(0)) if due is not None else timedelta(0)
        return await self._enqueue(
            self.control_queue_for(instance_id), {"i": instance_id}, delay + self.lease.duration
        )

    async def _after(self, ahead: SentMessage, instance_id: str, due: datetime | None) -> None:
        """The client's writes are done: apply them here, or let the wake-up come when due."""
        if due is not None and due <= self.clock.now():
            due = None
        dispatcher = self._local(due)
        if dispatcher is not None:
            backup: Backup = asyncio.get_running_loop().create_future()
            backup.set_result(ahead)
            dispatcher.run(instance_id, [], due, backup)
            return
        await self.reveal(ahead, due)

    async def _send(self, message: Message, in_process: bool = True) -> None:
        body = r.message_to_json(message)
        iid = message.instance_id
        due = message.visible_at
        if message.event["EventType"] in _INLINE and len(orjson.dumps(body)) < r.QUEUE_INLINE_LIMIT:
            await self._notify(iid, {"m": body}, [message], due, in_process)
            return
        await self._write_inbox(message)
        if (due is not None and due > self.clock.now()) or not in_process:
            await self._notify(iid, {"i": iid}, [], due, in_process)
        else:
            await self._wake(iid)

    async def _wake(self, instance_id: str) -> None:
        """Enqueue a wake-up that starts after this call: concurrent callers share one.

        A caller joins the wake-up that has not been sent yet, so its own inbox
        row (written before it calls) is there when the wake-up is handled;
        a burst of messages to one instance costs a few enqueues, not one each.
        """
        waker = self._wakers.get(instance_id)
        if waker is None:
            waker = self._wakers[instance_id] = _Waker()
        if waker.waiting is None:
            waker.waiting = asyncio.get_running_loop().create_future()
            if not waker.busy:
                waker.busy = True
                waker.task = asyncio.ensure_future(self._pump_wakes(instance_id, waker))
        await asyncio.shield(waker.waiting)

    async def _pump_wakes(self, instance_id: str, waker: _Waker) -> None:
        try:
            while waker.waiting is not None:
                done, waker.waiting = waker.waiting, None
                try:
                    await self._notify(instance_id, {"i": instance_id}, [], None)
                except Exception as exc:
                    done.set_exception(exc)
                else:
                    done.set_result(None)
        finally:
            waker.busy = False
            if self._wakers.get(instance_id) is waker:
                del self._wakers[instance_id]

    async def _write_inbox(self, message: Message) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self.history.create_entity(await self._inbox_entity(message))

    async def _inbox_entity(self, message: Message) -> dict[str, Any]:
        """The inbox row of a message (its body in a blob when too big for a row)."""
        body = r.message_to_json(message)
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%S%f")
        key = f"i-{stamp}{next(_seq) % 1000:03d}-{message.id}"
        entity: dict[str, Any] = {"PartitionKey": message.instance_id, "RowKey": key}
        data = orjson.dumps(body)
        if len(data) > r.MAX_ROW_BYTES:
            entity["Blob"] = await self._put_blob(message.instance_id, data)
        else:
            entity.update(r.pack(body))
        return entity

    async def complete_activity(
        self, request: ActivityRequest, result: Message, *, in_process: bool = True
    ) -> None:
        """Send an activity's result to its orchestration (``in_process=False``: by queue only)."""
        await self._send(result, in_process)

    async def enqueue_activity(self, request: ActivityRequest) -> None:
        """Put one work item on the work-item queue (input in a blob when large)."""
        body = r.activity_to_json(request)
        if len(orjson.dumps(body)) > r.QUEUE_INLINE_LIMIT:
            body["in"] = None
            body["inb"] = await self._put_blob(request.instance_id, (request.input or "").encode())
        await self._enqueue(self.workitems, body)

    async def decode_activity(self, body: dict[str, Any]) -> ActivityRequest:
        """A work item from its queue body (fetching a blob input)."""
        request = r.activity_from_json(body)
        if body.get("inb"):
            request.input = (await self._get_blob(body["inb"])).decode()
        return request

    # ------------------------------------------------------------- instances

    async def create_instance(self, record: InstanceRecord, start: Message) -> None:
        """Write the record and its start message in one transaction, between the wake-up's two calls.

        The id is taken as new first (a transaction that fails whole if it is
        not); only then is an existing instance read, which may be replaced
        when it has finished.
        """
        iid = record.instance_id
        props = await self._text_props(iid, record)
        ahead = await self._ahead(iid, None)
        sentinel = {"PartitionKey": iid, "RowKey": r.SENTINEL, **props, "HistoryLength": 0}
        inbox = await self._inbox_entity(start)
        try:
            try:  # the record and its start message together
                await submit_transaction(self.history, [("create", sentinel), ("create", inbox)])
            except (TableTransactionError, HttpResponseError) as exc:
                if not _conflict(exc):
                    raise
                await self._recreate(iid, sentinel, inbox)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.discard(ahead)
            raise
        await self._project(iid, props)  # before any step can project Running over it
        await self._after(ahead, iid, None)

    async def _recreate(self, iid: str, sentinel: dict[str, Any], inbox: dict[str, Any]) -> None:
        """Start an id that exists: only over a finished instance (whose dedupe ids are kept)."""
        current = await self.history.get_entity(iid, r.SENTINEL)
        status = Status(current.get("RuntimeStatus") or "Pending")
        if not status.is_terminal:
            raise InstanceAlreadyExistsError(
                f"instance '{iid}' is {status.value}; wait for it to finish, terminate it or use another id"
            )
        sentinel["Dedupe"] = current.get("Dedupe")
        guard = {"mode": UpdateMode.REPLACE, "etag": current.metadata["etag"]}
        op = ("update", sentinel, {**guard, "match_condition": MatchConditions.IfNotModified})
        try:
            await submit_transaction(self.history, [op, ("create", inbox)])
        except (TableTransactionError, HttpResponseError) as exc:
            if _conflict(exc):
                raise InstanceAlreadyExistsError(f"instance '{iid}' was created concurrently") from exc
            raise

    async def _project(self, instance_id: str, props: dict[str, Any]) -> None:
        """Upsert the Instances row that management queries read."""
        entity = {"PartitionKey": instance_id, "RowKey": "", **props}
        await self.instances.upsert_entity(entity, mode=UpdateMode.REPLACE)

    async def _reproject(self, instance_id: str, props: dict[str, Any]) -> None:
        """Write a projection a repair owes, unless the Instances row shows that state or a later one.

        A live process may have stepped the instance and projected it since the
        sentinel was read: an unconditional upsert would put the older state back.
        """
        mine = r.as_utc(props.get("LastUpdatedTime"))
        while True:
            try:
                row = await self.instances.get_entity(instance_id, "")
            except ResourceNotFoundError:
                try:
                    await self.instances.create_entity({"PartitionKey": instance_id, "RowKey": "", **props})
                except ResourceExistsError:
                    continue
                return
            if r.as_utc(row.get("LastUpdatedTime")) >= mine:
                return
            entity = {"PartitionKey": instance_id, "RowKey": "", **props}
            guard = {"etag": row.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
            try:
                await self.instances.update_entity(entity, mode=UpdateMode.REPLACE, **guard)
            except HttpResponseError as exc:
                if _conflict(exc):
                    continue
                raise
            return

    # ------------------------------------------------------------------ load

    async def load(
        self,
        instance_id: str,
        history_from: int = 0,
        messages: list[Message] | None = None,
        *,
        hot: bool = False,
    ) -> LoadedInstance | None:
        """One partition query: sentinel, history tail, inbox and outboxes (plus ``messages``).

        With ``hot`` (only in-process results arrived) and a state this process
        committed last, no query is made at all: the commit's ETag guard catches
        anyone who wrote in between.
        """
        known = self._known.get(instance_id)
        claims = self.claims
        if hot and claims.read_first(instance_id):
            hot = False  # others commit it too, or hand it their messages: read what they wrote
        if hot and known is not None and known.history_len == history_from:
            return LoadedInstance(
                record=replace(known.record),
                history=[],
                history_from=history_from,
                history_len=known.history_len,
                inbox=list(messages or ()),
                etag=_Loaded(known.etag, known.sentinel, local_rows=dict(known.local_rows), hint=True),
            )
        execution = known.record.execution_id if (known is not None and history_from > 0) else None
        flt = "PartitionKey eq @pk"
        params: dict[str, Any] = {"pk": instance_id}
        if execution is not None:
            flt += " and RowKey ge @from"
            params["from"] = r.history_key(execution, history_from)
        else:
            history_from = 0
        entities = [e async for e in self.history.query_entities(flt, parameters=params)]
        sentinel = next((e for e in entities if e["RowKey"] == r.SENTINEL), None)
        if not claims.observe(instance_id, sentinel):
            # taken by another process, or cleared by a step that finished the instance
            self.background.spawn(self._end_claim(instance_id))
        private = _Loaded(None, {})
        inbox: list[Message] = []
        for entity in entities:
            key = entity["RowKey"]
            if key.startswith("i-"):
                try:
                    data = await self._row_data(entity)
                    message = r.message_from_json(data)
                except (KeyError, TypeError, ValueError):
                    log.warning("dropping malformed inbox row %s/%s", instance_id, key)
                    private.drop_keys.append(key)
                    continue
                if message.id in private.inbox_keys:
                    # a second row of one message (its sender re-dispatched after a crash)
                    private.drop_keys.append(key)
                    continue
                inbox.append(message)
                private.inbox_keys[message.id] = key
            elif key.startswith("o-") and key.endswith(_LOCAL):
                data = await self._row_data(entity)
                private.local_rows[key] = {(a.get("x"), int(a["t"])) for a in data.get("a", ())}
        if sentinel is None and inbox and is_entity_instance(instance_id):
            record = new_entity_record(instance_id, self.clock.now())  # created by its first message
            history_len = 0
        elif sentinel is None:
            start = next((m for m in inbox if m.event["EventType"] == EventType.ExecutionStarted), None)
            if start is None:
                # messages to an instance that does not exist (purged, or never started):
                # nobody will ever consume them, so drop them instead of waking for them forever
                orphans = [
                    *private.inbox_keys.values(),
                    *(k for k in private.drop_keys if k.startswith("i-")),
                ]
                if orphans:
                    log.info("dropping %d messages to unknown instance %s", len(orphans), instance_id)
                    await self._delete_rows(instance_id, orphans)
                return None
            now = self.clock.now()
            record = InstanceRecord(
                instance_id, start.event.get("Name", ""), start.execution_id or "", Status.Pending, now, now
            )
            history_len = 0
        else:
            record = await self._record(instance_id, sentinel)
            private.etag = sentinel.metadata["etag"]
            private.sentinel = dict(sentinel)
            history_len = int(sentinel.get("HistoryLength") or 0)
        dedupe = set(orjson.loads(private.sentinel.get("Dedupe") or "[]"))
        fresh: list[Message] = []
        for message in inbox:
            if message.id in dedupe:
                private.drop_keys.append(private.inbox_keys.pop(message.id))
            else:
                fresh.append(message)
        if not fresh and not messages:
            # Nothing to apply, so no step will commit (and delete) these: consumed copies and
            # malformed rows would stay, and the sweep would wake the instance for them forever.
            await self._delete_rows(instance_id, [k for k in private.drop_keys if k.startswith("i-")])
        private.overflow = len(fresh) > _INBOX_PER_STEP
        fresh = fresh[:_INBOX_PER_STEP]
        events: list[Event] = []
        prefix = f"h-{record.execution_id}-"
        for entity in entities:
            key = entity["RowKey"]
            if not key.startswith("h-"):
                continue
            if not key.startswith(prefix):
                if len(private.drop_keys) < 20:
                    private.drop_keys.append(key)  # a finished execution's row: clean up lazily
                continue
            events.extend(await self._row_data(entity))
        if sentinel is not None and len(events) + history_from != history_len:
            log.warning(
                "history of %s has %d events, sentinel says %d", instance_id, len(events), history_len
            )
        return LoadedInstance(
            record=record,
            history=events,
            history_from=history_from,
            history_len=history_len,
            inbox=fresh + list(messages or ()),
            etag=private,
        )

    async def _delete_rows(self, instance_id: str, keys: list[str]) -> None:
        """Delete rows of one partition one by one (a row already gone is fine)."""

        async def delete(key: str) -> None:
            with contextlib.suppress(ResourceNotFoundError):
                await self.history.delete_entity(instance_id, key)

        await asyncio.gather(*(delete(k) for k in keys))

    async def _row_data(self, entity: dict[str, Any]) -> Any:
        if entity.get("Blob"):
            return orjson.loads(await self._get_blob(entity["Blob"]))
        return r.unpack(entity)

    # ---------------------------------------------------------------- commit

    async def commit(self, loaded: LoadedInstance, step: StepResult) -> None:
        private: _Loaded = loaded.etag
        rec = step.record
        iid = rec.instance_id
        ops: list[tuple[Any, ...]] = []

        base = 0 if step.reset_history else loaded.history_len
        history_len = base + len(step.new_events)
        if step.new_events:
            ops.extend(await self._history_rows(iid, rec.execution_id, base, step.new_events))

        consumed = [private.inbox_keys[i] for i in step.consumed if i in private.inbox_keys]
        open_now = set(step.executor.open_activities()) if step.executor is not None else set()
        answered = [
            key
            for key, tasks in private.local_rows.items()
            if not any(x == rec.execution_id and t in open_now for x, t in tasks)
        ]
        deletes = list(dict.fromkeys([*consumed, *private.drop_keys, *answered]))  # once each per batch
        if not (step.new_events or step.reset_history or deletes or rec.input != loaded.record.input):
            if private.hint:
                # Judged against this process's last commit, not a read: another process may have
                # committed since, and what looks like a duplicate may be news. Prove it by reading.
                self.claims.notice(iid, conflict=False)
                raise StaleStateError(f"instance '{iid}' must be read before its messages are judged")
            return  # only duplicates arrived (judged against a state just read): nothing to write
        for key in deletes:
            ops.append(("delete", {"PartitionKey": iid, "RowKey": key}))
        local_rows = {k: v for k, v in private.local_rows.items() if k not in answered}

        before = loaded.record
        project = private.etag is None or (
            rec.status != before.status
            or rec.custom_status != before.custom_status
            or rec.output != before.output
            or rec.execution_id != before.execution_id
            or rec.input != before.input  # an entity's state
        )
        step_id = uuid.uuid4().hex
        wake_at = step.wake_at if step.wake_at != private.sentinel.get("WakeAt") else None
        held = bool(step.activities or step.messages or project or wake_at)
        claim = self.claims.fields(iid, private.sentinel, rec.status.is_terminal)
        taking = claim.get(STEPPER) == self.lease.worker_id and not self.claims.holds(iid)
        if taking:  # others will leave messages to this process: held until it has read them
            await self.lease.hold(iid)
        if held:  # work left in flight after the commit: indexed under this process's lease first
            try:
                await self.lease.hold(iid)
            except BaseException:
                if taking:
                    self.lease.release(iid)
                raise
        local: list[ActivityRequest] = []
        reserve = self.local_activities
        try:
            queued: list[ActivityRequest] = []
            for request in step.activities:
                (local if reserve is not None and reserve.try_reserve() else queued).append(request)
            # A projection alone needs no outbox row: the lease holds the instance until it is
            # written, and a takeover projects every instance it recovers from its sentinel.
            stored = bool(queued or step.messages or wake_at)
            outbox: r.Outbox | None = r.Outbox(step_id, queued, list(step.messages), project, wake_at)
            if not (stored or project):
                outbox = None
            owner = self.lease.worker_id
            if outbox is not None and stored:
                ops.append(("create", await self._outbox_entity(iid, r.outbox_key(step_id), outbox, owner)))
            if local:
                key = r.outbox_key(step_id) + _LOCAL
                kept = r.Outbox(step_id, local, [], False)
                ops.append(("create", await self._outbox_entity(iid, key, kept, owner)))
                local_rows[key] = {(a.execution_id, a.task_id) for a in local}

            props = await self._text_props(iid, rec, (loaded.record, private.sentinel))
            dedupe = orjson.loads(private.sentinel.get("Dedupe") or "[]")
            dedupe.extend(i for i in step.consumed if i in private.inbox_keys)
            sentinel = {
                "PartitionKey": iid,
                "RowKey": r.SENTINEL,
                **props,
                "HistoryLength": history_len,
                "Dedupe": orjson.dumps(dedupe[-r.DEDUPE_IDS :]).decode(),
                "WakeAt": step.wake_at,  # the wake-up already asked for (a later step need not repeat it)
                **claim,
            }
            if private.etag is None:
                ops.append(("create", sentinel))
            else:
                guard = {"etag": private.etag, "match_condition": MatchConditions.IfNotModified}
                ops.append(("update", sentinel, {"mode": UpdateMode.REPLACE, **guard}))

            if len(ops) > r.MAX_TXN_OPS:
                raise ConflictError(f"step of '{iid}' needs {len(ops)} table operations")
            self.fault.check("commit.before")
            try:
                result = await submit_transaction(self.history, ops)
            except (TableTransactionError, HttpResponseError) as exc:
                if _conflict(exc):
                    raise ConflictError(f"instance '{iid}' changed since it was loaded") from exc
                raise
        except BaseException as exc:
            self._known.pop(iid, None)
            if isinstance(exc, ConflictError) and not is_entity_instance(iid):
                self.claims.notice(iid, conflict=True)
            if reserve is not None:
                for _ in local:
                    reserve.release()
            if held:
                self.lease.release(iid)
            if taking:
                self.lease.release(iid)
            raise
        if self.claims.committed(iid, claim)[1]:
            self.background.spawn(self._end_claim(iid))
        if rec.status.is_terminal:
            self._known.pop(iid, None)
        else:
            self._known[iid] = _Known(result[-1].get("etag"), replace(rec), history_len, sentinel, local_rows)
            self._known.move_to_end(iid)
            while len(self._known) > _KNOWN_MAX:
                self._known.popitem(last=False)
        started = False
        try:
            self.fault.check("commit.after")
            if local and reserve is not None:
                self.lease.add(iid, len(local))  # each released once its result is handed on
                reserve.start(local)
                started = True
            if outbox is not None and len(outbox.activities) + len(outbox.messages) > _DISPATCH_INLINE:
                # a big fan-out: the instance steps on (its results may already come in) while the
                # work goes out; the outbox row and the hold keep it until then
                self.background.spawn(self._finish(iid, outbox, props, [], stored))
                held = False  # released by _finish
            elif outbox is not None:
                await self.dispatch(iid, outbox, props, stored)
        except Exception as exc:
            # Committed, so only this process knows what is left to send: keep at it in the background
            # (still held by the lease, so a sweep takes over if this process dies meanwhile).
            log.warning(
                "after the commit of a step of %s: %s: %s; finishing in the background",
                iid,
                type(exc).__name__,
                exc,
            )
            if reserve is not None and not started:
                for _ in local:
                    reserve.release()
            if held:
                self.background.spawn(self._finish(iid, outbox, props, [] if started else local, stored))
            return
        if held:
            self.lease.release(iid)
        if private.overflow:
            await self._wake(iid)

    async def _finish(
        self,
        iid: str,
        outbox: r.Outbox | None,
        props: dict[str, Any] | None,
        unstarted: list[ActivityRequest],
        stored: bool,
    ) -> None:
        """Send what a committed step still owes (queue the activities it could not start here)."""
        left = list(unstarted)

        async def finish() -> None:
            while left:  # one at a time: an activity queued twice would run twice
                await self.enqueue_activity(left[0])
                left.pop(0)
            if outbox is not None:
                await self.dispatch(iid, outbox, props, stored)

        await persist(f"sending what a committed step of {iid} asked for", finish)
        self.lease.release(iid)  # not when cancelled: then the lease's sweep takes it over

    async def _outbox_entity(self, iid: str, key: str, outbox: r.Outbox, owner: str) -> dict[str, Any]:
        """The outbox row (its content in a blob when it would crowd the transaction)."""
        entity: dict[str, Any] = {"PartitionKey": iid, "RowKey": key, "Owner": owner}
        value = outbox.to_json()
        data = orjson.dumps(value)
        if len(data) > r.MAX_OUTBOX_BYTES:
            entity["Blob"] = await self._put_blob(iid, data)
        else:
            entity.update(r.pack(value))
        return entity

    def forget(self, instance_id: str) -> None:
        """Drop what this process remembers of an instance's last commit."""
        self._known.pop(instance_id, None)

    # ---------------------------------------------------------------- claims

    def claimed_elsewhere(self, instance_id: str) -> bool:
        return self.claims.elsewhere(instance_id)

    async def hand_off(self, instance_id: str, messages: list[Message]) -> bool:
        """Leave ``messages`` in the inbox for the claim's holder; False if the claim is gone.

        The messages are in the inbox either way. The sentinel is read after
        they are written: a claim still standing then is given up only after
        its holder has read them (see ``claims.py``).
        """
        rows = [await self._inbox_entity(m) for m in messages]
        for start in range(0, len(rows), _HAND_OFF_TXN):
            chunk = rows[start : start + _HAND_OFF_TXN]
            try:
                await submit_transaction(self.history, [("create", row) for row in chunk])
            except (TableTransactionError, HttpResponseError):
                for row in chunk:  # one by one: a row written before (a retry) is fine
                    with contextlib.suppress(ResourceExistsError):
                        await self.history.create_entity(row)
        try:
            sentinel = await self.history.get_entity(instance_id, r.SENTINEL)
        except ResourceNotFoundError:
            return False
        self.claims.observe(instance_id, sentinel)
        return self.claims.elsewhere(instance_id)

    async def give_up_claim(self, instance_id: str) -> None:
        """Clear this process's claim in the sentinel, then wake the instance once more.

        The wake-up reads whatever was handed over before the claim was
        cleared; the lease holds the instance until it is queued.
        """
        await self._void_claim(instance_id, self.lease.worker_id)
        await self._end_claim(instance_id)

    async def _void_claim(self, instance_id: str, holder: str, row: dict[str, Any] | None = None) -> None:
        """Clear ``holder``'s claim from the sentinel (``row``, if just read), if it is there.

        A takeover voids a dead worker's claims this way before it wakes their
        instances: whoever handles the wake-up must step, not hand off to the dead.
        """
        cleared = self.claims.cleared(instance_id)
        while True:
            if row is None:
                try:
                    row = await self.history.get_entity(instance_id, r.SENTINEL)
                except ResourceNotFoundError:
                    return
            if row.get(STEPPER) != holder:
                return
            entity = {"PartitionKey": instance_id, "RowKey": r.SENTINEL, **cleared}
            etag = row.metadata["etag"]
            try:
                written = await self.history.update_entity(
                    entity, mode=UpdateMode.MERGE, etag=etag, match_condition=MatchConditions.IfNotModified
                )
            except HttpResponseError as exc:
                if _conflict(exc):
                    row = None  # committed meanwhile: read again
                    continue
                raise
            known = self._known.get(instance_id)
            if known is not None and known.etag == etag:  # this process's last commit stays current
                known.etag = written.get("etag")
                known.sentinel.update(cleared)
            return

    def _end_claim(self, instance_id: str) -> Awaitable[None]:
        """This process holds the instance's claim no more: what wakes it once and lets the lease go.

        The wake-up reads whatever was handed over before the claim ended.
        """
        self.claims.drop(instance_id)
        return self._wake_after_claim(instance_id)

    async def _wake_after_claim(self, instance_id: str) -> None:
        await persist(f"waking {instance_id} after its stepping claim", partial(self._wake, instance_id))
        self.lease.release(instance_id)

    async def _history_rows(
        self, iid: str, execution_id: str, first: int, events: list[Event]
    ) -> list[tuple[Any, ...]]:
        """Rows (create ops) holding ``events``, split under the entity and transaction limits."""
        data = orjson.dumps(events)
        sizes = [len(orjson.dumps(e)) for e in events] if len(data) > r.MAX_ROW_BYTES else []
        if len(data) > r.MAX_TXN_BYTES or any(size > r.MAX_ROW_BYTES for size in sizes):
            # too big for the transaction, or one event alone too big for an entity
            blob = await self._put_blob(iid, data)
            entity = {"PartitionKey": iid, "RowKey": r.history_key(execution_id, first), "Blob": blob}
            return [("create", entity)]
        if len(data) <= r.MAX_ROW_BYTES:
            return [
                (
                    "create",
                    {"PartitionKey": iid, "RowKey": r.history_key(execution_id, first), **r.pack(events)},
                )
            ]
        ops: list[tuple[Any, ...]] = []
        start = 0
        while start < len(events):
            end, size = start, 0
            while end < len(events):
                event_size = sizes[end]
                if end > start and size + event_size > r.MAX_ROW_BYTES:
                    break
                size += event_size
                end += 1
            entity = {
                "PartitionKey": iid,
                "RowKey": r.history_key(execution_id, first + start),
                **r.pack(events[start:end]),
            }
            ops.append(("create", entity))
            start = end
        return ops

    async def dispatch(
        self, iid: str, outbox: r.Outbox, props: dict[str, Any] | None, stored: bool = True
    ) -> None:
        """Send what a committed step asked for, then delete its outbox row (if ``stored``)."""
        sends = asyncio.Semaphore(_DISPATCH_CONCURRENCY)  # leave connections for the rest

        async def bounded(send: Awaitable[None]) -> None:
            async with sends:
                await send

        work: list[Any] = [bounded(self.enqueue_activity(a)) for a in outbox.activities]
        work += [bounded(self._send(m)) for m in outbox.messages]
        if outbox.wake_at is not None:
            work.append(self._notify(iid, {"i": iid}, [], outbox.wake_at))
        if outbox.project:
            if props is None:  # a repair: the state may have moved on since the step
                work.append(self._reproject(iid, _projection(await self.history.get_entity(iid, r.SENTINEL))))
            else:
                work.append(self._project(iid, props))
        await asyncio.gather(*work)
        self.fault.check("dispatch.after")
        if stored:
            with contextlib.suppress(ResourceNotFoundError):
                await self.history.delete_entity(iid, r.outbox_key(outbox.step_id))
        self.fault.check("outbox.deleted")

    async def force_fail(self, instance_id: str, reason: str) -> bool:
        """Fail an instance that cannot make progress (its messages are poison)."""
        for _ in range(5):
            loaded = await self.load(instance_id)
            if loaded is None or loaded.record.status.is_terminal:
                return False
            loaded.inbox = []
            step = failure_step(loaded.record, loaded.history, self.clock.now(), PoisonMessageError(reason))
            try:
                await self.commit(loaded, step)
            except ConflictError:
                continue
            return True
        return False

    # --------------------------------------------------------------- queries

    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        try:
            row = await self.instances.get_entity(instance_id, "")
        except ResourceNotFoundError:
            return None
        return await self._record(instance_id, row)

    async def get_history(self, instance_id: str) -> list[Event]:
        loaded = await self.load(instance_id)
        return loaded.history if loaded is not None else []

    async def query_instances(self, query: InstanceQuery) -> QueryPage:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if query.created_from is not None:
            clauses.append("CreatedTime ge @cf")
            params["cf"] = query.created_from
        if query.created_to is not None:
            clauses.append("CreatedTime le @ct")
            params["ct"] = query.created_to
        if query.statuses:
            parts = []
            for n, status in enumerate(sorted(s.value for s in query.statuses)):
                parts.append(f"RuntimeStatus eq @s{n}")
                params[f"s{n}"] = status
            clauses.append("(" + " or ".join(parts) + " )")  # "@s0)" would not be substituted
        if query.instance_id_prefix:
            clauses.append("PartitionKey ge @p0 and PartitionKey lt @p1")
            params["p0"] = query.instance_id_prefix
            params["p1"] = query.instance_id_prefix + "\uffff"
        if query.entities:  # entity ids are "@name@key": between "@" and "A"
            clauses.append("PartitionKey ge '@' and PartitionKey lt 'A'")
        else:
            clauses.append("(PartitionKey lt '@' or PartitionKey ge 'A' )")
        if query.continuation:
            clauses.append("PartitionKey gt @after")
            params["after"] = query.continuation
        flt = " and ".join(clauses) or "PartitionKey ne ''"
        records: list[InstanceRecord] = []
        pages = self.instances.query_entities(flt, parameters=params, results_per_page=query.page_size)
        async for row in pages:
            records.append(await self._record(row["PartitionKey"], row))
            if len(records) > query.page_size:
                break
        more = len(records) > query.page_size
        records = records[: query.page_size]
        return QueryPage(records, records[-1].instance_id if more else None)

    async def purge_instance(self, instance_id: str) -> int:
        # delete_entity does not report a missing row (azure-data-tables 12): look first
        try:
            await self.instances.get_entity(instance_id, "", select=["RowKey"])
            found = True
        except ResourceNotFoundError:
            found = False
        keys = [
            e["RowKey"]
            async for e in self.history.query_entities(
                "PartitionKey eq @pk", parameters={"pk": instance_id}, select=["RowKey"]
            )
        ]
        if not found and r.SENTINEL not in keys:
            return 0
        await self.instances.delete_entity(instance_id, "")
        for start in range(0, len(keys), r.MAX_TXN_OPS):
            chunk = keys[start : start + r.MAX_TXN_OPS]
            await submit_transaction(
                self.history, [("delete", {"PartitionKey": instance_id, "RowKey": k}) for k in chunk]
            )
        async for blob in self.blobs.list_blobs(name_starts_with=f"{instance_id}/"):
            with contextlib.suppress(ResourceNotFoundError):
                await self.blobs.delete_blob(blob.name)
        self._known.pop(instance_id, None)
        return 1

    # ---------------------------------------------------------------- repair

    async def repair(self) -> int:
        """Sweep once: take over the work of every worker process whose lease ran out.

        Returns how many repairs that made (0 unless a process died). Reads one
        row per live process when none died, however big the hub's history.
        """
        before = self.lease.taken_over
        repairs = await self.lease.sweep()
        self.repairs += repairs
        if self.lease.taken_over > before and self.on_enqueue is not None:
            # the queue messages a dead worker was handling came back with the end of its lease:
            # poll for them now instead of after this process's pollers' back-off
            for queue in [*self.control_queues, self.workitems]:
                self.on_enqueue(queue.queue_name)
        return repairs

    async def recover(self, instance_id: str, owner: str) -> tuple[int, int]:
        """Finish what dead worker ``owner`` left in flight on one instance: (repairs, rows read).

        Its outboxes are dispatched again and the activities it ran itself are
        queued (those still unanswered in history); an inbox left unread gets a
        wake-up. Every repair is idempotent (task ids, timer ids, message ids).
        """
        flt = "PartitionKey eq @pk and RowKey ge 'i-'"  # inbox, outboxes and the sentinel
        rows = [e async for e in self.history.query_entities(flt, parameters={"pk": instance_id})]
        mine = [e for e in rows if e["RowKey"].startswith("o-") and e.get("Owner") == owner]
        sentinel = next((e for e in rows if e["RowKey"] == r.SENTINEL), None)
        read = len(rows)
        open_tasks: set[tuple[str | None, int]] = set()
        if any(e["RowKey"].endswith(_LOCAL) for e in mine):
            open_tasks, history_rows = await self._open_activities(instance_id)
            read += history_rows
        repairs = 0
        for entity in mine:
            key = entity["RowKey"]
            outbox = r.Outbox.from_json(key[2:].removesuffix(_LOCAL), await self._row_data(entity))
            if key.endswith(_LOCAL):
                unanswered = [a for a in outbox.activities if (a.execution_id, a.task_id) in open_tasks]
                log.warning(
                    "repair: queueing %d unanswered activities of %s (row %s)",
                    len(unanswered),
                    instance_id,
                    key,
                )
                for request in unanswered:
                    await self.enqueue_activity(request)
                with contextlib.suppress(ResourceNotFoundError):
                    await self.history.delete_entity(instance_id, key)
            else:
                log.warning("repair: dispatching outbox %s of %s again", key, instance_id)
                await self.dispatch(instance_id, outbox, None)
            repairs += 1
        if sentinel is not None:
            # a projection the dead worker owed is in no row: write the sentinel's state again
            await self._reproject(instance_id, _projection(sentinel))
            if sentinel.get(STEPPER) == owner:
                await self._void_claim(instance_id, owner, sentinel)
        if any(e["RowKey"].startswith("i-") for e in rows):
            log.warning("repair: waking %s for its inbox", instance_id)
            await self._wake(instance_id)
            repairs += 1
        return repairs, read

    async def _open_activities(self, instance_id: str) -> tuple[set[tuple[str | None, int]], int]:
        """(execution, task id) of the activities scheduled and not yet answered in history, and
        how many history events that read."""
        self.forget(instance_id)
        loaded = await self.load(instance_id)
        if loaded is None or loaded.record.status.is_terminal:
            return set(), 0
        scheduled: set[int] = set()
        for event in loaded.history:
            kind = event["EventType"]
            if kind == EventType.TaskScheduled:
                scheduled.add(event["EventId"])
            elif kind in (EventType.TaskCompleted, EventType.TaskFailed):
                scheduled.discard(event.get("TaskScheduledId", -1))
        return {(loaded.record.execution_id, t) for t in scheduled}, len(loaded.history)

    async def close(self) -> None:
        if self.claims.mine:  # hand contended instances back at once (else: the lease's sweep does)
            gave_up = asyncio.gather(*(self.give_up_claim(i) for i in list(self.claims.mine)))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(gave_up, _CLOSE_CLAIMS_S)
            for instance_id in list(self.claims.mine):
                self.claims.drop(instance_id)  # not given up: still held, so the lease's sweep wakes it
        await self.background.cancel()
        await self.lease.close()
        await self.connection.close()
