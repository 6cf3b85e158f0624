"""One orchestration step, as pure logic: (instance, history, inbox, now) -> commit.

A backend loads an instance, calls :func:`run_step` and commits the result
atomically: the new history events (or a reset for continue-as-new), the
updated instance record, the inbox messages consumed, and the outgoing
activity requests and messages to dispatch. Nothing here does I/O, so both
backends share every rule about ordering, duplicates and failures.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from . import history as h
from .actions import Action, ActionType
from .errors import NonDeterministicOrchestrationError
from .executor import OrchestrationExecutor, exception_failure
from .history import Event, EventType
from .registry import Registry, UnknownFunctionError
from .serialization import to_json
from .status import OrchestrationRuntimeStatus as Status


def new_id() -> str:
    """A random 32-hex-digit id for executions and messages."""
    return uuid.uuid4().hex


@dataclass(slots=True)
class Message:
    """A history event addressed to one instance's inbox.

    ``execution_id`` pins completions to the execution that asked for them
    (``None`` for events any execution may take); ``visible_at`` delays a
    durable timer until it is due.
    """

    instance_id: str
    event: Event
    execution_id: str | None = None
    visible_at: datetime | None = None
    id: str = field(default_factory=new_id)


@dataclass(slots=True)
class ActivityRequest:
    """A work item: run activity ``name`` and report to ``instance_id`` task ``task_id``."""

    instance_id: str
    execution_id: str | None
    task_id: int
    name: str
    input: str | None
    id: str = field(default_factory=new_id)


@dataclass(slots=True)
class InstanceRecord:
    """What management queries read about an instance (one row per instance)."""

    instance_id: str
    name: str
    execution_id: str
    status: Status
    created_at: datetime
    last_updated_at: datetime
    input: str | None = None
    output: str | None = None
    custom_status: str | None = None
    parent_instance_id: str | None = None
    failure: dict[str, Any] | None = None


@dataclass
class StepResult:
    """Everything one step commits atomically, then dispatches."""

    record: InstanceRecord
    new_events: list[Event]
    reset_history: bool = False
    consumed: list[str] = field(default_factory=list)
    activities: list[ActivityRequest] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    executor: OrchestrationExecutor | None = None

    @property
    def changed(self) -> bool:
        """False when every message was a duplicate or stray and nothing else moves."""
        return bool(self.new_events or self.reset_history or self.activities or self.messages)


def make_executor(registry: Registry, name: str, instance_id: str) -> OrchestrationExecutor:
    """A fresh executor for the registered orchestrator ``name``."""
    info = registry.get("orchestrator", name)
    executor = OrchestrationExecutor(
        info.fn, instance_id, input_type=info.input_type, type_resolver=registry.result_type
    )
    executor.name = info.name
    return executor


def start_message(
    instance_id: str,
    name: str,
    input_json: str | None,
    now: datetime,
    *,
    execution_id: str | None = None,
    parent: dict[str, Any] | None = None,
) -> Message:
    """The inbox message that starts a new execution of ``instance_id``."""
    execution_id = execution_id or new_id()
    event = h.execution_started(h.format_timestamp(now), name, input_json, instance_id, execution_id, parent)
    return Message(instance_id, event, execution_id)


def run_step(
    registry: Registry,
    record: InstanceRecord,
    history: list[Event] | Callable[[], list[Event]],
    inbox: list[Message],
    now: datetime,
    executor: OrchestrationExecutor | None = None,
) -> StepResult:
    """Apply ``inbox`` to the instance and return what to commit.

    ``executor`` is a cached executor that has already consumed exactly the
    stored history; without one, ``history`` (a list, or a loader called only
    when needed) is replayed first.
    """
    stamp = h.format_timestamp(now)
    consumed = [m.id for m in inbox]
    result = StepResult(replace(record), [], consumed=consumed)
    rec = result.record

    starts = [m for m in inbox if m.event["EventType"] == EventType.ExecutionStarted]
    others = [m for m in inbox if m.event["EventType"] != EventType.ExecutionStarted]

    started_fresh = False
    for start in starts:
        same = start.execution_id == rec.execution_id
        if same:
            fresh = rec.status in (Status.Pending, Status.ContinuedAsNew)
        else:
            fresh = rec.status.is_terminal
        if fresh and not started_fresh:
            started_fresh = True
            event = start.event
            rec.execution_id = start.execution_id or rec.execution_id
            rec.name = event.get("Name") or rec.name
            rec.input = event.get("Input")
            rec.output = None
            rec.failure = None
            rec.custom_status = None
            parent = event.get("ParentInstance") or {}
            rec.parent_instance_id = (parent.get("OrchestrationInstance") or {}).get("InstanceId")
            executor = None
            history = []
            result.reset_history = True
            others.insert(0, start)
        elif not same:
            _reject_start(start, result, stamp)

    if rec.status.is_terminal and not started_fresh:
        return result  # a finished execution takes no more messages

    # load (or reuse) the replayed state of the current execution
    if executor is None:
        try:
            executor = make_executor(registry, rec.name, rec.instance_id)
        except UnknownFunctionError as exc:
            return _fail_outright(result, others, stamp, now, exc, None)
        events = history() if callable(history) else history
        try:
            executor.process(events, replaying=True)
        except NonDeterministicOrchestrationError as exc:
            return _fail_outright(result, others, stamp, now, exc, executor.parent)

    episode: list[Event] = [h.orchestrator_started(stamp)]
    completed: set[int] = set()  # task ids completed in this episode: copies in the same batch
    for message in others:
        if message.execution_id is not None and message.execution_id != rec.execution_id:
            continue  # a completion meant for an earlier execution
        event = message.event
        if executor.accepts(event):
            task_id = _completed_task(event)
            if task_id is not None:
                if task_id in completed:
                    continue  # a duplicate of a completion this episode already takes
                completed.add(task_id)
            episode.append(event)
    if len(episode) == 1:
        result.executor = executor
        return result

    try:
        executor.process(episode, replaying=False)
    except NonDeterministicOrchestrationError as exc:
        return _fail_outright(result, others, stamp, now, exc, executor.parent)

    actions = executor.actions
    action_events = [_action_event(a, stamp) for a in actions]
    executor.process(action_events, replaying=False)
    result.new_events = episode + action_events
    for action in actions:
        _dispatch(action, executor, rec, now, result)

    rec.custom_status = executor.custom_status_json
    rec.last_updated_at = now
    if not executor.is_done:
        result.new_events.append(h.orchestrator_completed(stamp))
        rec.status = Status.Suspended if executor.suspended else Status.Running
        result.executor = executor
        return result

    _complete(executor, rec, result, stamp, now)
    return result


def _completed_task(event: Event) -> int | None:
    """The task id a completion event completes (``None`` for other events)."""
    kind = event["EventType"]
    if kind == EventType.TimerFired:
        return event.get("TimerId")
    if kind in (
        EventType.TaskCompleted,
        EventType.TaskFailed,
        EventType.SubOrchestrationInstanceCompleted,
        EventType.SubOrchestrationInstanceFailed,
    ):
        return event.get("TaskScheduledId")
    return None


def failure_step(record: InstanceRecord, history: list[Event], now: datetime, error: Exception) -> StepResult:
    """A step that fails the instance without running its code (e.g. a poison message)."""
    started = next((e for e in history if e["EventType"] == EventType.ExecutionStarted), None)
    parent = started.get("ParentInstance") if started else None
    result = StepResult(replace(record), [])
    return _fail_outright(result, [], h.format_timestamp(now), now, error, parent)


def _action_event(action: Action, stamp: str) -> Event:
    t = action.type
    if t == ActionType.CallActivity:
        return h.task_scheduled(stamp, action.id, action.name or "", action.input)
    if t == ActionType.CreateTimer:
        return h.timer_created(stamp, action.id, action.fire_at or stamp)
    if t == ActionType.CallSubOrchestrator:
        return h.sub_orchestration_created(
            stamp, action.id, action.name or "", action.instance_id or "", action.input
        )
    return h.event_sent(stamp, action.id, action.instance_id or "", action.name or "", action.input)


def _dispatch(
    action: Action, x: OrchestrationExecutor, rec: InstanceRecord, now: datetime, out: StepResult
) -> None:
    t = action.type
    if t == ActionType.CallActivity:
        out.activities.append(
            ActivityRequest(rec.instance_id, rec.execution_id, action.id, action.name or "", action.input)
        )
    elif t == ActionType.CreateTimer:
        fire_at = h.parse_timestamp(action.fire_at or "")
        event = h.timer_fired(h.format_timestamp(fire_at), action.id, action.fire_at or "")
        out.messages.append(Message(rec.instance_id, event, rec.execution_id, fire_at))
    elif t == ActionType.CallSubOrchestrator:
        parent = {
            "Name": rec.name,
            "OrchestrationInstance": {"InstanceId": rec.instance_id, "ExecutionId": rec.execution_id},
            "TaskScheduleId": action.id,
        }
        out.messages.append(
            start_message(action.instance_id or "", action.name or "", action.input, now, parent=parent)
        )
    else:
        event = h.event_raised(h.format_timestamp(now), action.name or "", action.input)
        out.messages.append(Message(action.instance_id or "", event))


def _complete(
    x: OrchestrationExecutor, rec: InstanceRecord, out: StepResult, stamp: str, now: datetime
) -> None:
    if x.continue_as_new_requested:
        payload = to_json(x.continue_as_new_input)
        out.new_events = []
        out.reset_history = True
        rec.status = Status.ContinuedAsNew
        start = start_message(rec.instance_id, rec.name, payload, now, parent=x.parent)
        rec.execution_id = start.execution_id or rec.execution_id
        out.messages.append(start)
        if x.save_events:
            for name, data in x.carried_over_events():
                out.messages.append(Message(rec.instance_id, h.event_raised(stamp, name, data)))
        out.executor = None
        return
    if x.terminated:
        rec.status = Status.Terminated
        rec.output = x.output_json
        out.new_events.append(h.execution_completed(stamp, "Terminated", x.output_json))
        failure = h.failure_details("Terminated", f"terminated: {x.output_json}", None)
        _notify_parent(x.parent, False, None, failure, out, now)
        return
    rec.output = x.output_json
    if x.failure is not None:
        rec.status = Status.Failed
        rec.failure = x.failure
        out.new_events.append(h.execution_completed(stamp, "Failed", x.output_json, x.failure))
        _notify_parent(x.parent, False, None, x.failure, out, now)
    else:
        rec.status = Status.Completed
        out.new_events.append(h.execution_completed(stamp, "Completed", x.output_json))
        _notify_parent(x.parent, True, x.output_json, None, out, now)


def _notify_parent(
    parent: dict[str, Any] | None,
    ok: bool,
    output: str | None,
    failure: dict[str, Any] | None,
    out: StepResult,
    now: datetime,
) -> None:
    if not parent:
        return
    instance = parent.get("OrchestrationInstance") or {}
    task_id = parent.get("TaskScheduleId", -1)
    stamp = h.format_timestamp(now)
    if ok:
        event = h.sub_orchestration_completed(stamp, task_id, output)
    else:
        event = h.sub_orchestration_failed(stamp, task_id, failure or {})
    out.messages.append(Message(instance.get("InstanceId", ""), event, instance.get("ExecutionId")))


def _reject_start(start: Message, out: StepResult, stamp: str) -> None:
    """A start for an instance that is already running: tell a parent, drop otherwise."""
    parent = start.event.get("ParentInstance")
    if parent:
        failure = h.failure_details(
            "InstanceAlreadyExists",
            f"an orchestration with id '{out.record.instance_id}' is already running",
            None,
        )
        _notify_parent(parent, False, None, failure, out, h.parse_timestamp(stamp))


def _fail_outright(
    out: StepResult,
    inbox: list[Message],
    stamp: str,
    now: datetime,
    exc: Exception,
    parent: dict[str, Any] | None,
) -> StepResult:
    """Fail the instance without running its code (unknown name, nondeterminism).

    Only new events are appended: the recorded history stays as it was.
    """
    rec = out.record
    failure = exception_failure(exc)
    rec.status = Status.Failed
    rec.failure = failure
    rec.output = to_json(f"Orchestrator function '{rec.name}' failed: {exc}")
    rec.last_updated_at = now
    start = next((m for m in inbox if m.event["EventType"] == EventType.ExecutionStarted), None)
    events = [h.orchestrator_started(stamp)]
    if start is not None:
        events.append(start.event)
    events.append(h.execution_completed(stamp, "Failed", rec.output, failure))
    out.new_events = events
    out.executor = None
    if start is not None:
        parent = start.event.get("ParentInstance")
    _notify_parent(parent, False, None, failure, out, now)
    return out
