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
from .executor import OrchestrationExecutor, completed_task_id, exception_failure
from .history import Event, EventType
from .registry import Registry, UnknownFunctionError
from .serialization import from_json, to_json
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
    #: The ``ExecutionRewound`` marker of a rewind step (``None`` otherwise).
    rewind_marker: Event | None = None
    #: When the instance needs a step even if no message wakes it (an entity's scheduled signal).
    wake_at: datetime | None = None
    #: An entity step's operations run, and how many of them failed (rolled back).
    operations: int = 0
    failed_operations: int = 0

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

    rewinds = [m for m in others if h.is_rewind(m.event)]
    prefix: list[Event] = []  # a rewind's rewritten history, before this episode
    if rewinds:
        others = [m for m in others if not h.is_rewind(m.event)]
        request = next((m for m in rewinds if m.execution_id in (None, rec.execution_id)), None)
        if request is not None and rec.status == Status.Failed and not started_fresh:
            rewound = _rewind(registry, result, history, request, now)
            if rewound is None:  # unknown orchestrator, or a history that no longer replays
                _report_again(request, rec, result, now)
                return result
            executor, prefix = rewound
        elif rec.status.is_terminal and not started_fresh:
            for message in rewinds:
                _report_again(message, rec, result, now)
    if rec.status.is_terminal and not started_fresh:
        _release_orphan_locks(others, rec, result, now)
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
    if prefix:
        episode.append(result.rewind_marker or {})
    completed: set[int] = set()  # task ids completed in this episode: copies in the same batch
    for message in others:
        event = message.event
        if message.execution_id is not None and message.execution_id != rec.execution_id:
            reopened = executor.previous_executions.get(message.execution_id)
            if reopened is None or completed_task_id(event) not in reopened:
                _release_orphan_locks([message], rec, result, now)
                continue  # a completion meant for an earlier execution
        if executor.accepts(event):
            task_id = completed_task_id(event)
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
        failed = _fail_outright(result, others, stamp, now, exc, executor.parent)
        failed.new_events = prefix + failed.new_events  # a rewind's history stays under its failure
        return failed

    actions = executor.actions
    action_events = [_action_event(a, stamp) for a in actions]
    executor.process(action_events, replaying=False)
    result.new_events = prefix + episode + action_events
    if prefix and not executor.is_done:
        _redispatch(executor, prefix, rec, now, result)
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
    else:  # an event to another instance, or a request to an entity
        event = h.event_raised(h.format_timestamp(now), action.name or "", action.input)
        due = h.parse_timestamp(action.deliver_at) if action.deliver_at else None
        out.messages.append(Message(action.instance_id or "", event, None, due))


def _complete(
    x: OrchestrationExecutor, rec: InstanceRecord, out: StepResult, stamp: str, now: datetime
) -> None:
    from .entities import end_of_execution_releases  # circular: entities builds on this module

    out.messages.extend(end_of_execution_releases(x, now))
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


def _release_orphan_locks(
    messages: list[Message], rec: InstanceRecord, out: StepResult, now: datetime
) -> None:
    """A lock granted to an execution that has ended: release it, or the entities stay locked."""
    from .entities import parse_lock_grant, release_messages

    for message in messages:
        grant = parse_lock_grant(message.event)
        if grant is not None:
            section_id, lockset = grant
            out.messages.extend(release_messages(rec.instance_id, section_id, lockset, now))


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


_SCHEDULING = (
    EventType.TaskScheduled,
    EventType.TimerCreated,
    EventType.SubOrchestrationInstanceCreated,
    EventType.EventSent,
)
_FAILURES = (EventType.TaskFailed, EventType.SubOrchestrationInstanceFailed)


def _rewind(
    registry: Registry,
    out: StepResult,
    history: list[Event] | Callable[[], list[Event]],
    request: Message,
    now: datetime,
) -> tuple[OrchestrationExecutor, list[Event]] | None:
    """Rewrite a Failed execution's history for a new execution; ``None`` if it cannot be rewound.

    Failures that arrived after the last scheduling event (the ones the
    orchestrator did not handle by scheduling more work) are dropped with the
    final ``ExecutionCompleted``; their tasks become open again. The history
    is copied under a new execution id and replayed by a fresh executor.
    """
    rec = out.record
    events = history() if callable(history) else history
    last_scheduled = max((i for i, e in enumerate(events) if e["EventType"] in _SCHEDULING), default=-1)
    rewound: list[int] = []
    refused: list[int] = []  # sub-orchestrations whose start was refused: start them again
    previous = rec.execution_id
    execution_id = new_id()
    parent = request.event.get("ParentInstance")
    rewritten: list[Event] = []
    for i, event in enumerate(events):
        kind = event["EventType"]
        if kind == EventType.ExecutionCompleted:
            continue
        if kind in _FAILURES and i > last_scheduled:
            rewound.append(event.get("TaskScheduledId", -1))
            if (event.get("FailureDetails") or {}).get("ErrorType") == "InstanceAlreadyExists":
                refused.append(event.get("TaskScheduledId", -1))
            continue
        if kind == EventType.ExecutionStarted:
            event = dict(event)
            instance = dict(event.get("OrchestrationInstance") or {})
            instance["ExecutionId"] = execution_id
            event["OrchestrationInstance"] = instance
            if parent:
                event["ParentInstance"] = parent
        rewritten.append(event)
    try:
        executor = make_executor(registry, rec.name, rec.instance_id)
        executor.process(rewritten, replaying=True)
    except (UnknownFunctionError, NonDeterministicOrchestrationError):
        return None
    open_ids = [i for i in executor.open_tasks if i not in executor.pending_actions]
    reopened = [i for i in open_ids if i not in rewound]
    data = {
        "previousExecutionId": previous,
        "rewoundTasks": rewound,
        "reopenedTasks": reopened,
        "refusedStarts": refused,
    }
    marker = h.execution_rewound(h.format_timestamp(now), request.event.get("Reason"), parent, to_json(data))
    executor.previous_executions[previous] = set(reopened)
    out.rewind_marker = marker
    out.reset_history = True
    rec.execution_id = execution_id
    rec.status = Status.Running
    rec.output = None
    rec.failure = None
    if parent:
        rec.parent_instance_id = (parent.get("OrchestrationInstance") or {}).get("InstanceId")
    return executor, rewritten


def _redispatch(
    x: OrchestrationExecutor, rewritten: list[Event], rec: InstanceRecord, now: datetime, out: StepResult
) -> None:
    """Send again the work of every task a rewind left open, for the new execution.

    Activities run again; timers are re-armed; a sub-orchestration is sent a
    rewind linking it to this execution (a failed child rewinds, a finished
    one reports its outcome again, a running one is unaffected and its late
    answer to the old execution is still taken); a child whose start was
    refused (``InstanceAlreadyExists``) is started again.
    """
    scheduled = {e.get("EventId"): e for e in rewritten if e["EventType"] in _SCHEDULING}
    data = from_json((out.rewind_marker or {}).get("Data")) or {}
    refused = set(data.get("refusedStarts") or ())
    for task_id in sorted(x.open_tasks):
        event = scheduled.get(task_id)
        if event is None or task_id in x.pending_actions:
            continue
        kind = event["EventType"]
        if kind == EventType.TaskScheduled:
            out.activities.append(
                ActivityRequest(
                    rec.instance_id, rec.execution_id, task_id, event.get("Name", ""), event.get("Input")
                )
            )
        elif kind == EventType.TimerCreated:
            fire_at = event.get("FireAt") or h.format_timestamp(now)
            due = h.parse_timestamp(fire_at)
            fired = h.timer_fired(fire_at, task_id, fire_at)
            out.messages.append(Message(rec.instance_id, fired, rec.execution_id, due))
        elif kind == EventType.SubOrchestrationInstanceCreated:
            link = {
                "Name": rec.name,
                "OrchestrationInstance": {"InstanceId": rec.instance_id, "ExecutionId": rec.execution_id},
                "TaskScheduleId": task_id,
            }
            child = event.get("InstanceId", "")
            if task_id in refused:
                out.messages.append(
                    start_message(child, event.get("Name", ""), event.get("Input"), now, parent=link)
                )
            else:
                reason = (out.rewind_marker or {}).get("Reason")
                request = h.execution_rewound(h.format_timestamp(now), reason, link)
                out.messages.append(Message(child, request))


def _report_again(message: Message, rec: InstanceRecord, out: StepResult, now: datetime) -> None:
    """A finished child asked to rewind by its rewound parent: report its outcome again."""
    parent = message.event.get("ParentInstance")
    if not parent:
        return
    if rec.status == Status.Failed:  # it could not be rewound
        failure = rec.failure or h.failure_details("Failed", "the sub-orchestration failed", None)
        _notify_parent(parent, False, None, failure, out, now)
    elif rec.status == Status.Completed:
        _notify_parent(parent, True, rec.output, None, out, now)
    elif rec.status == Status.Terminated:
        failure = h.failure_details("Terminated", f"terminated: {rec.output}", None)
        _notify_parent(parent, False, None, failure, out, now)
