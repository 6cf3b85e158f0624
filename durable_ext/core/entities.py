"""Durable entities as pure logic: ids, the messages they exchange, and one entity step.

An entity is an instance whose id is ``@{name}@{key}`` (the official scheduler
id). It has no history: its whole durable state is one JSON document, the
*scheduler state*, kept in the instance record's ``input`` and committed with
the inbox rows a step consumed, so an operation is applied exactly when its
message is consumed. Messages are ``EventRaised`` events named ``op`` whose
input is an :class:`EntityRequest`; answers to orchestrators are
``EventRaised`` events named by the request id (the official protocol).

Ordering: a message from an orchestration or entity carries its sender, a
per-receiver sequence number and the time of the sender's previous message
to this receiver. The receiver applies a sender's messages in sequence order,
holding any that arrive early and dropping any it has already applied, so
re-dispatch after a crash neither reorders nor repeats. Client signals have
no sender and apply in arrival order.

Critical sections: a lock request visits the entities of its lock set in
sorted order; each one, when free, records the owner and forwards the request
to the next; the last answers the orchestrator. A locked entity runs only
its owner's requests and queues the rest until the owner's ``release``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from . import history as h
from .errors import DurableError
from .executor import exception_failure
from .registry import FunctionInfo, Registry, UnknownFunctionError
from .runtime import InstanceRecord, Message, StepResult, new_id
from .serialization import annotation_of, convert, from_json, to_json
from .status import OrchestrationRuntimeStatus as Status

#: Name of the ``EventRaised`` that carries a request to an entity.
OPERATION_EVENT = "op"
#: How long a message waits for a missing predecessor from its sender before it is applied anyway.
REORDER_WINDOW = timedelta(minutes=30)


class EntityId:
    """Identifies an entity by name and key; ``str()`` gives its instance id ``@name@key``.

    The name is case-insensitive (stored lower-cased, as the official package does).
    """

    __slots__ = ("name", "key")

    def __init__(self, name: str, key: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("entity name must be a non-empty string")
        if not isinstance(key, str) or not key:
            raise ValueError("entity key must be a non-empty string")
        if "@" in name:
            raise ValueError(f"entity name {name!r} must not contain '@'")
        self.name = name
        self.key = key

    @staticmethod
    def get_scheduler_id(entity_id: EntityId) -> str:
        """The instance id of an entity: ``@{name lower-cased}@{key}``."""
        return f"@{entity_id.name.lower()}@{entity_id.key}"

    @staticmethod
    def get_entity_id(scheduler_id: str) -> EntityId:
        """The EntityId of an instance id ``@name@key``."""
        if not is_entity_instance(scheduler_id):
            raise ValueError(f"{scheduler_id!r} is not an entity instance id ('@name@key')")
        name, key = scheduler_id[1:].split("@", 1)
        return EntityId(name, key)

    @staticmethod
    def get_entity_id_url_path(entity_id: EntityId) -> str:
        """The path of the entity below the management API base."""
        return f"entities/{entity_id.name}/{entity_id.key}"

    def __str__(self) -> str:
        return EntityId.get_scheduler_id(self)

    def __repr__(self) -> str:
        return f"EntityId({self.name!r}, {self.key!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EntityId) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def is_entity_instance(instance_id: str) -> bool:
    """Whether an instance id names an entity (``@name@key``)."""
    second = instance_id.find("@", 1)
    return instance_id.startswith("@") and 1 < second < len(instance_id) - 1


def entity_instance_id(target: EntityId | str) -> str:
    """The instance id of an entity given as an EntityId or as ``@name@key``."""
    if isinstance(target, EntityId):
        return str(target)
    if isinstance(target, str) and is_entity_instance(target):
        return str(EntityId.get_entity_id(target))
    raise TypeError(f"expected an EntityId (or '@name@key'), got {target!r}")


@dataclass(slots=True)
class EntityRequest:
    """A message to an entity: an operation (call or signal), a lock request or a release.

    ``id`` is the request id: the name of the answer for a call, the critical
    section id for a lock and its release. ``sender``/``seq``/``prev`` order
    the messages of one sender (see the module docstring).
    """

    id: str
    kind: str  # "call" | "signal" | "lock" | "release"
    op: str | None = None
    input: str | None = None
    parent: str | None = None
    parent_execution: str | None = None
    lockset: list[str] | None = None
    pos: int = 0
    sender: str | None = None
    seq: int = 0
    prev: str | None = None
    at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The request as a JSON object (empty fields and zero ``pos``/``seq`` left out)."""
        return {f.name: v for f in fields(self) if (v := getattr(self, f.name)) is not None and v != 0}

    def to_json(self) -> str:
        """The JSON text stored in the ``op`` event."""
        return to_json(self.to_dict()) or "{}"

    @classmethod
    def from_dict(cls, data: Any) -> EntityRequest:
        """Build a request from its JSON object; ValueError for anything malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError(f"not an entity request: {data!r:.200}")
        if data.get("kind") not in ("call", "signal", "lock", "release"):
            raise ValueError(f"unknown entity request kind {data.get('kind')!r}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["pos"] = int(values.get("pos") or 0)
        values["seq"] = int(values.get("seq") or 0)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | None) -> EntityRequest:
        """Parse a request's JSON text; ValueError for anything malformed."""
        return cls.from_dict(from_json(text))

    def message(self, target: str, now: datetime) -> Message:
        """The inbox message carrying this request to entity ``target``."""
        visible = h.parse_timestamp(self.at) if self.at else None
        event = h.event_raised(h.format_timestamp(now), OPERATION_EVENT, self.to_json())
        return Message(target, event, None, visible)


def response_json(result_json: str | None, failure: dict[str, Any] | None) -> str:
    """The answer to a call: its result, or the failure of the operation."""
    if failure is not None:  # "result" too: the official SDK reads it for failures as well
        message = f"{failure.get('ErrorType')}: {failure.get('ErrorMessage')}"
        body = {"result": to_json(message), "exceptionType": failure.get("ErrorType"), "failure": failure}
        return to_json(body) or "{}"
    return to_json({"result": result_json if result_json is not None else "null"}) or "{}"


def lock_granted_json(request: EntityRequest) -> str:
    """The answer to a lock request once every entity of the lock set is held."""
    return to_json({"lockGranted": request.id, "lockset": request.lockset or []}) or "{}"


def parse_lock_grant(event: h.Event) -> tuple[str, list[str]] | None:
    """(critical section id, lock set) when ``event`` grants a lock; ``None`` otherwise."""
    if event.get("EventType") != h.EventType.EventRaised:
        return None
    text = event.get("Input")
    if not text or "lockGranted" not in text:
        return None
    try:
        data = from_json(text)
    except Exception:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("lockGranted"), str):
        return None
    return data["lockGranted"], [str(i) for i in data.get("lockset") or ()]


def release_messages(
    owner: str, section_id: str, lockset: list[str], now: datetime, counters: SendCounters | None = None
) -> list[Message]:
    """Messages releasing every entity of a lock set (sequenced when the sender has counters)."""
    out = []
    for target in lockset:
        request = EntityRequest(section_id, "release", parent=owner)
        if counters is not None:
            counters.stamp(request, target, now)
        out.append(request.message(target, now))
    return out


@dataclass
class SendCounters:
    """A sender's per-receiver sequence numbers: target -> [last seq, time it was sent]."""

    sender: str
    sent: dict[str, list[Any]] = field(default_factory=dict)

    def stamp(self, request: EntityRequest, target: str, now: datetime) -> None:
        """Give ``request`` the next sequence number towards ``target``.

        A scheduled request (``at``) stays unsequenced: it applies when due,
        and waiting for it must not hold back the sender's later messages.
        """
        if request.at is not None:
            return
        last = self.sent.get(target)
        request.sender = self.sender
        request.seq = (last[0] if last else 0) + 1
        request.prev = last[1] if last else None
        self.sent[target] = [request.seq, h.format_timestamp(now)]


def orchestration_counters(x: Any) -> SendCounters:
    """The send counters of an orchestration execution (its numbers restart with each execution)."""
    return SendCounters(f"{x.instance_id}|{x.execution_id or ''}", x.entity_sent)


class CriticalSection:
    """The value of a granted lock: a context manager whose exit releases every entity locked."""

    def __init__(self, executor: Any, section_id: str, lockset: list[str]) -> None:
        self._x = executor
        self.id = section_id
        self.lockset = lockset

    def __enter__(self) -> CriticalSection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Release the locks now (once; the orchestration's end releases them too)."""
        from .actions import ActionType
        from .tasks import AtomicTask

        x = self._x
        section = x.critical_section
        if x.is_done or section is None or section["id"] != self.id:
            return  # already released, or the orchestration's end releases them
        x.critical_section = None
        for target in self.lockset:
            request = EntityRequest(self.id, "release", parent=x.instance_id)
            x.context._send_entity(ActionType.SignalEntity, target, request, AtomicTask(-1, "release"))


def end_of_execution_releases(x: Any, now: datetime) -> list[Message]:
    """Releases an orchestration still in (or waiting for) a critical section sends as it ends."""
    section = x.critical_section
    if section is None:
        return []
    x.critical_section = None
    return release_messages(x.instance_id, section["id"], section["lockset"], now, orchestration_counters(x))


# ----------------------------------------------------------------------- scheduler state


@dataclass
class SchedulerState:
    """Everything durable about one entity (the JSON in its record's ``input``)."""

    exists: bool = False
    state: str | None = None  # the user state as JSON text
    lock: dict[str, Any] | None = None  # {"owner", "id", "lockset"} while held
    queue: list[dict[str, Any]] = field(default_factory=list)  # delivered, waiting for the lock
    held: list[dict[str, Any]] = field(default_factory=list)  # early: out of order or scheduled later
    senders: dict[str, list[Any]] = field(default_factory=dict)  # sender -> [last seq, last seen]
    sent: dict[str, list[Any]] = field(default_factory=dict)  # this entity's SendCounters
    last_op: str | None = None  # time of the last operation (ISO)

    def to_json(self) -> str:
        """Compact JSON (empty parts left out)."""
        out: dict[str, Any] = {"exists": self.exists}
        for key in ("state", "lock", "queue", "held", "senders", "sent", "last_op"):
            value = getattr(self, key)
            if value:
                out[key] = value
        return to_json(out) or "{}"

    @classmethod
    def from_json(cls, text: str | None) -> SchedulerState:
        """The scheduler state of a record (a fresh one for ``None``)."""
        data = from_json(text) if text else None
        if not isinstance(data, dict):
            return cls()
        return cls(
            exists=bool(data.get("exists")),
            state=data.get("state"),
            lock=data.get("lock"),
            queue=list(data.get("queue") or ()),
            held=list(data.get("held") or ()),
            senders=dict(data.get("senders") or {}),
            sent=dict(data.get("sent") or {}),
            last_op=data.get("last_op"),
        )


def entity_state_of(record: InstanceRecord) -> tuple[bool, str | None]:
    """(exists, state JSON) of an entity record: what read_entity_state returns."""
    scheduler = SchedulerState.from_json(record.input)
    return scheduler.exists, scheduler.state if scheduler.exists else None


# ------------------------------------------------------------------------- user API


class DurableEntityContext:
    """What an entity function receives: the operation, its input and the entity's state.

    Names follow ``azure.durable_functions.DurableEntityContext``.
    """

    def __init__(self, name: str, key: str, exists: bool, state_json: str | None) -> None:
        self._entity_name = name
        self._entity_key = key
        self._exists = exists
        self._state_json = state_json
        self._state: Any = None
        self._state_loaded = False
        self._state_type: Any = None
        self._operation: str | None = None
        self._input_json: str | None = None
        self._input_type: Any = None
        self._result: Any = None
        self._signals: list[tuple[str, str, str | None, datetime | None]] = []
        self._is_newly_constructed = False

    @property
    def entity_name(self) -> str:
        """The entity's name (lower-cased)."""
        return self._entity_name

    @property
    def entity_key(self) -> str:
        """The entity's key."""
        return self._entity_key

    @property
    def entity_id(self) -> EntityId:
        """The entity's id."""
        return EntityId(self._entity_name, self._entity_key)

    @property
    def operation_name(self) -> str | None:
        """The name of the operation being run."""
        return self._operation

    @property
    def is_newly_constructed(self) -> bool:
        """True when this operation found no state and the initializer made it."""
        return self._is_newly_constructed

    def get_input(self, expected_type: Any = None) -> Any:
        """The operation's input, decoded (to ``expected_type`` when given)."""
        return from_json(self._input_json, expected_type or self._input_type, f"input of '{self._operation}'")

    def get_state(self, initializer: Callable[[], Any] | None = None, expected_type: Any = None) -> Any:
        """The entity's state; ``initializer()`` when it has none (the entity does not exist yet)."""
        if not self._state_loaded:
            self._state_loaded = True
            if self._exists and self._state_json is not None:
                self._state = from_json(
                    self._state_json, expected_type, f"state of entity '{self.entity_id}'"
                )
            else:
                self._state = None
        if self._state is None and initializer is not None:
            self._state = initializer()
            self._is_newly_constructed = True
        return self._state

    def set_state(self, state: Any) -> None:
        """Replace the entity's state (JSON-serializable: plain values, dataclasses, pydantic)."""
        self._state = state
        self._state_loaded = True
        self._exists = True

    def set_result(self, result: Any) -> None:
        """The value a caller of this operation receives."""
        self._result = result

    def destruct_on_exit(self) -> None:
        """Delete the entity (its state) when the operation ends."""
        self._exists = False
        self._state = None
        self._state_loaded = True

    def signal_entity(
        self,
        entity_id: EntityId | str,
        operation_name: str,
        operation_input: Any = None,
        *,
        scheduled_time: datetime | None = None,
    ) -> None:
        """Send a one-way operation to another entity when this operation succeeds."""
        target = entity_instance_id(entity_id)
        payload = to_json(operation_input, f"input of signal '{operation_name}'")
        self._signals.append((target, operation_name, payload, scheduled_time))

    # -- engine side

    def _begin(self, operation: str | None, input_json: str | None) -> None:
        self._operation = operation
        self._input_json = input_json
        self._result = None
        self._signals = []
        self._is_newly_constructed = False

    def _snapshot(self) -> tuple[bool, str | None]:
        """(exists, state JSON) after the operation (serializes the state once)."""
        if not self._state_loaded:
            return self._exists, self._state_json if self._exists else None
        if not self._exists:
            return False, None
        text = to_json(self._state, f"state of entity '{self.entity_id}'")
        return True, text

    def _reset(self, exists: bool, state_json: str | None) -> None:
        self._exists = exists
        self._state_json = state_json
        self._state = None
        self._state_loaded = False


def _run_class_operation(cls: type, ctx: DurableEntityContext) -> Any:
    """Class-based entity: the instance is the state, public methods are the operations."""
    op = ctx.operation_name or ""
    if op.startswith("_") or not callable(getattr(cls, op, None)):
        if op == "delete":
            ctx.destruct_on_exit()
            return None
        public = sorted(n for n, v in vars(cls).items() if callable(v) and not n.startswith("_"))
        raise AttributeError(
            f"entity class '{cls.__name__}' has no operation '{op}' (operations: {', '.join(public)})"
        )
    obj = ctx.get_state(lambda: None, cls if _typed(cls) else None)
    if obj is None:
        obj = cls()
    elif not isinstance(obj, cls):  # a plain class: state saved as its attributes
        data = obj
        obj = cls.__new__(cls)
        obj.__dict__.update(data)
    method = getattr(obj, op)
    params = [p for p in inspect.signature(method).parameters.values() if p.kind != p.VAR_KEYWORD]
    if params:
        hint = annotation_of(method, params[0].name)
        result = method(ctx.get_input(hint))
    else:
        result = method()
    ctx.set_state(obj if _typed(cls) else dict(vars(obj)))
    return result


def _typed(cls: type) -> bool:
    """Whether pydantic can rebuild ``cls`` from JSON (dataclass or pydantic model)."""
    return hasattr(cls, "__dataclass_fields__") or hasattr(cls, "model_validate")


def run_operation(info: FunctionInfo, ctx: DurableEntityContext) -> Any:
    """Run one operation of a registered entity; returns the operation's result."""
    fn = info.fn
    if inspect.isclass(fn):
        return _run_class_operation(fn, ctx)
    returned = fn(**{info.input_name: ctx}) if info.input_name else fn(ctx)
    if inspect.iscoroutine(returned):
        returned.close()
        raise TypeError(f"entity '{info.name}' is async; entity functions must be plain functions")
    return ctx._result if returned is None else returned


# ----------------------------------------------------------------------------- the step


class _Step:
    """Applies one batch of messages to one entity."""

    def __init__(
        self, registry: Registry, record: InstanceRecord, now: datetime, reorder_window: timedelta
    ) -> None:
        self.registry = registry
        self.record = record
        self.now = now
        self.stamp = h.format_timestamp(now)
        self.window = reorder_window
        self.s = SchedulerState.from_json(record.input)
        entity = EntityId.get_entity_id(record.instance_id)
        self.entity = entity
        self.counters = SendCounters(record.instance_id, self.s.sent)
        self.out: list[Message] = []
        self.ctx = DurableEntityContext(entity.name, entity.key, self.s.exists, self.s.state)
        self.info: FunctionInfo | None = None
        self.lookup_error: Exception | None = None
        try:
            self.info = registry.get("entity", entity.name)
        except UnknownFunctionError as exc:
            self.lookup_error = exc
        self.applied = 0
        self.failed = 0

    # -- ordering

    def deliverable(self, incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Requests to run now, in order; the rest stay held (early, or out of sender order)."""
        s = self.s
        ready: list[dict[str, Any]] = []
        candidates = [*s.held, *incoming]
        s.held = []
        seen: set[tuple[str, int]] = set()
        by_sender: dict[str, list[dict[str, Any]]] = {}
        for req in candidates:
            at = req.get("at")
            if at and h.parse_timestamp(at) > self.now:
                s.held.append(req)
                continue
            sender = req.get("sender")
            if not sender or not req.get("seq"):
                ready.append(req)
                continue
            key = (sender, int(req["seq"]))
            if key in seen:
                continue  # two copies of one message in this batch
            seen.add(key)
            by_sender.setdefault(sender, []).append(req)
        for sender, reqs in by_sender.items():
            reqs.sort(key=lambda r: int(r["seq"]))
            entry = s.senders.get(sender)
            last = int(entry[0]) if entry else None
            for req in reqs:
                seq = int(req["seq"])
                if last is not None and seq <= last:
                    continue  # applied before: a re-dispatched copy
                if last is not None:
                    in_order = seq == last + 1
                else:  # first message we see from this sender (or we forgot it)
                    prev = req.get("prev")
                    in_order = seq == 1 or (
                        prev is not None and h.parse_timestamp(prev) < self.now - self.window
                    )
                overdue = h.parse_timestamp(req.get("recv") or self.stamp) <= self.now - self.window
                if in_order or overdue:
                    ready.append(req)
                    last = seq
                else:
                    req.setdefault("recv", self.stamp)
                    s.held.append(req)
            if last is not None:
                s.senders[sender] = [last, self.stamp]
        self._forget_idle_senders()
        return ready

    def _forget_idle_senders(self) -> None:
        cutoff = h.format_timestamp(self.now - 2 * self.window)
        stale = [k for k, (_seq, seen) in self.s.senders.items() if seen < cutoff]
        for key in stale:
            del self.s.senders[key]

    # -- running

    def run(self, ready: list[dict[str, Any]]) -> None:
        """Run requests in order under the lock rules; what the lock blocks stays queued."""
        s = self.s
        pending = [*s.queue, *ready]
        deferred: list[dict[str, Any]] = []
        i = 0
        while i < len(pending):
            req = pending[i]
            i += 1
            lock = s.lock
            if lock is not None and req.get("parent") != lock["owner"]:
                deferred.append(req)
                continue
            if lock is not None and req["kind"] == "lock" and req["id"] != lock["id"]:
                deferred.append(req)  # the owner's next critical section waits for this one's release
                continue
            was_locked = lock is not None
            self._apply(EntityRequest.from_dict(req))
            if was_locked and s.lock is None and deferred:  # released: retry what the lock held back
                pending = [*deferred, *pending[i:]]
                deferred = []
                i = 0
        s.queue = deferred

    def _apply(self, req: EntityRequest) -> None:
        s = self.s
        if req.kind == "release":
            if s.lock is not None and s.lock["id"] == req.id:
                s.lock = None
            return
        if req.kind == "lock":
            if s.lock is not None:
                return  # a copy of the request that took this lock
            s.lock = {"owner": req.parent, "id": req.id, "lockset": req.lockset or []}
            lockset = req.lockset or []
            if req.pos + 1 < len(lockset):
                target = lockset[req.pos + 1]
                forward = replace(req, pos=req.pos + 1, sender=None, seq=0, prev=None)
                self.counters.stamp(forward, target, self.now)
                self.out.append(forward.message(target, self.now))
            else:
                self._answer(req, lock_granted_json(req))
            return
        self._operation(req)

    def _operation(self, req: EntityRequest) -> None:
        s = self.s
        ctx = self.ctx
        self.applied += 1
        s.last_op = self.stamp
        ctx._begin(req.op, req.input)
        before = (s.exists, s.state)
        failure: dict[str, Any] | None = None
        result_json: str | None = None
        try:
            if self.info is None:
                raise self.lookup_error or UnknownFunctionError(f"no entity '{self.entity.name}'")
            result = run_operation(self.info, ctx)
            result_json = to_json(result, f"result of operation '{req.op}' of entity '{self.entity}'")
            exists, state = ctx._snapshot()
        except Exception as exc:
            failure = exception_failure(exc)
            self.failed += 1
            ctx._reset(*before)  # roll back: the state as it was before this operation
        else:
            s.exists, s.state = exists, state
            ctx._reset(exists, state)
            for target, op, payload, when in ctx._signals:
                signal = EntityRequest(new_id(), "signal", op=op, input=payload)
                if when is not None:
                    signal.at = h.format_timestamp(when)
                self.counters.stamp(signal, target, self.now)
                self.out.append(signal.message(target, self.now))
        if req.kind == "call":
            self._answer(req, response_json(result_json, failure))

    def _answer(self, req: EntityRequest, payload: str) -> None:
        if not req.parent:
            return
        event = h.event_raised(self.stamp, req.id, payload)
        self.out.append(Message(req.parent, event, req.parent_execution))

    def next_due(self) -> datetime | None:
        """When a held message becomes due without any new message (for a wake-up backstop)."""
        return next_due(self.s, self.window)


def next_due(scheduler: SchedulerState, window: timedelta = REORDER_WINDOW) -> datetime | None:
    """When the earliest held message becomes due: a scheduled signal's time, or the end
    of an out-of-order message's wait for its predecessor."""
    times = []
    for req in scheduler.held:
        if req.get("at"):
            times.append(h.parse_timestamp(req["at"]))
        elif req.get("recv"):
            times.append(h.parse_timestamp(req["recv"]) + window)
    return min(times) if times else None


def needs_step(record: InstanceRecord, now: datetime) -> bool:
    """Whether an entity with an empty inbox still has held messages that are due by ``now``."""
    due = next_due(SchedulerState.from_json(record.input))
    return due is not None and due <= now


def run_entity_step(
    registry: Registry,
    record: InstanceRecord,
    inbox: list[Message],
    now: datetime,
    *,
    reorder_window: timedelta = REORDER_WINDOW,
) -> StepResult:
    """Apply ``inbox`` to the entity ``record`` and return what to commit.

    Every message is consumed: applied, dropped as a duplicate, or moved into
    the scheduler state (held or queued behind a lock).
    """
    step = _Step(registry, record, now, reorder_window)
    incoming: list[dict[str, Any]] = []
    for message in inbox:
        event = message.event
        if event.get("EventType") != h.EventType.EventRaised or event.get("Name") != OPERATION_EVENT:
            continue  # not an entity message (e.g. an orchestration start sent to an entity id)
        try:
            request = EntityRequest.from_json(event.get("Input"))
        except (ValueError, TypeError, DurableError):
            continue
        incoming.append(request.to_dict())
    step.run(step.deliverable(incoming))

    rec = replace(record)
    rec.input = step.s.to_json()
    rec.status = Status.Running
    rec.name = step.entity.name
    rec.last_updated_at = now
    result = StepResult(rec, [], consumed=[m.id for m in inbox], messages=step.out)
    result.wake_at = step.next_due()
    result.operations, result.failed_operations = step.applied, step.failed
    return result


def new_entity_record(instance_id: str, now: datetime) -> InstanceRecord:
    """The record of an entity that receives its first message."""
    entity = EntityId.get_entity_id(instance_id)
    return InstanceRecord(instance_id, entity.name, "", Status.Running, now, now)


def convert_state(state_json: str | None, type_: Any = None) -> Any:
    """Decode an entity's state JSON (to ``type_`` when given)."""
    value = from_json(state_json)
    return convert(value, type_, "entity state") if type_ is not None else value
