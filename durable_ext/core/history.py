"""History events in the Durable Task Framework's JSON shape.

Events are plain dicts with the field names the Durable Functions
out-of-process protocol sends to language workers (``EventType``, ``EventId``,
``Timestamp``, ``IsPlayed``, ``Name``, ``Input``, ``Result``,
``TaskScheduledId``, ``TimerId``, ``FireAt``, ``Reason``, ``Details``, ...).
Keeping them as dicts means a history read from storage or from a JSON file is
replayed without a conversion pass; the constructors below are the one place
that knows each event's fields. Inputs and results are JSON text, as there.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import IntEnum
from typing import Any

Event = dict[str, Any]


class EventType(IntEnum):
    """Durable Task Framework history event types with their integer codes."""

    ExecutionStarted = 0
    ExecutionCompleted = 1
    ExecutionFailed = 2
    ExecutionTerminated = 3
    TaskScheduled = 4
    TaskCompleted = 5
    TaskFailed = 6
    SubOrchestrationInstanceCreated = 7
    SubOrchestrationInstanceCompleted = 8
    SubOrchestrationInstanceFailed = 9
    TimerCreated = 10
    TimerFired = 11
    OrchestratorStarted = 12
    OrchestratorCompleted = 13
    EventSent = 14
    EventRaised = 15
    ContinueAsNew = 16
    GenericEvent = 17
    HistoryState = 18
    ExecutionSuspended = 19
    ExecutionResumed = 20


def format_timestamp(value: datetime) -> str:
    """ISO 8601 UTC text with microseconds and a ``Z`` suffix, as DTFx writes it."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(timespec="microseconds") + "Z"


def parse_timestamp(text: str) -> datetime:
    """Parse ISO 8601 text (``Z`` or offset, up to 7 fractional digits) to aware UTC.

    .NET writes seven fractional digits and Python 3.10's ``fromisoformat``
    accepts neither those nor ``Z``; this normalizes both.
    """
    if text.endswith(("Z", "z")):
        text = text[:-1]
        offset = "+00:00"
    else:
        offset = ""
        if len(text) > 6 and text[-6] in "+-" and text[-3] == ":":
            text, offset = text[:-6], text[-6:]
        elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit() and ":" in text:
            text, offset = text[:-5], f"{text[-5:-2]}:{text[-2:]}"  # basic form +HHMM
    dot = text.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        frac = text[dot + 1 : end]
        if len(frac) != 6:
            text = text[: dot + 1] + (frac + "000000")[:6] + text[end:]
    value = datetime.fromisoformat(text + offset) if offset else datetime.fromisoformat(text)
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    if value.utcoffset():
        return value.astimezone(timezone.utc)
    return value


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


def _event(event_type: EventType, event_id: int, timestamp: str, **fields: Any) -> Event:
    event: Event = {
        "EventType": int(event_type),
        "EventId": event_id,
        "Timestamp": timestamp,
        "IsPlayed": False,
    }
    for key, value in fields.items():
        if value is not None:
            event[key] = value
    return event


def execution_started(
    timestamp: str,
    name: str,
    input_json: str | None,
    instance_id: str,
    execution_id: str,
    parent: dict[str, Any] | None = None,
    version: str | None = None,
    scheduled_start: str | None = None,
) -> Event:
    """The first event of every execution; ``parent`` links a sub-orchestration."""
    return _event(
        EventType.ExecutionStarted,
        -1,
        timestamp,
        Name=name,
        Input=input_json,
        Version=version if version is not None else "",
        OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": execution_id},
        ParentInstance=parent,
        ScheduledStartTime=scheduled_start,
    )


def execution_completed(
    timestamp: str,
    status: str,
    result_json: str | None,
    failure: dict[str, Any] | None = None,
) -> Event:
    """End of an execution: ``status`` is Completed, Failed or ContinuedAsNew."""
    return _event(
        EventType.ExecutionCompleted,
        -1,
        timestamp,
        OrchestrationStatus=status,
        Result=result_json,
        FailureDetails=failure,
    )


def execution_terminated(timestamp: str, reason_json: str | None) -> Event:
    """Termination request; ``Input`` holds the reason as JSON text."""
    return _event(EventType.ExecutionTerminated, -1, timestamp, Input=reason_json)


def execution_suspended(timestamp: str, reason: str | None) -> Event:
    """Suspension request; later events wait until a matching resume."""
    return _event(EventType.ExecutionSuspended, -1, timestamp, Reason=reason)


def execution_resumed(timestamp: str, reason: str | None) -> Event:
    """Resume request; buffered events are applied in order."""
    return _event(EventType.ExecutionResumed, -1, timestamp, Reason=reason)


def orchestrator_started(timestamp: str) -> Event:
    """Start of one episode; its timestamp is the orchestrator's current time."""
    return _event(EventType.OrchestratorStarted, -1, timestamp)


def orchestrator_completed(timestamp: str) -> Event:
    """End of one episode."""
    return _event(EventType.OrchestratorCompleted, -1, timestamp)


def task_scheduled(timestamp: str, event_id: int, name: str, input_json: str | None) -> Event:
    """An activity call the orchestrator made."""
    return _event(EventType.TaskScheduled, event_id, timestamp, Name=name, Input=input_json)


def task_completed(timestamp: str, task_id: int, result_json: str | None) -> Event:
    """An activity's successful result."""
    return _event(EventType.TaskCompleted, -1, timestamp, TaskScheduledId=task_id, Result=result_json)


def failure_details(error_type: str, message: str, stack: str | None) -> dict[str, Any]:
    """DTFx ``FailureDetails`` of a failed task or execution."""
    return {"ErrorType": error_type, "ErrorMessage": message, "StackTrace": stack}


def _failed(event_type: EventType, timestamp: str, task_id: int, failure: dict[str, Any]) -> Event:
    return _event(
        event_type,
        -1,
        timestamp,
        TaskScheduledId=task_id,
        Reason=failure.get("ErrorMessage"),
        Details=failure.get("StackTrace"),
        FailureDetails=failure,
    )


def task_failed(timestamp: str, task_id: int, failure: dict[str, Any]) -> Event:
    """An activity's failure: ``Reason`` is the message, ``Details`` the trace."""
    return _failed(EventType.TaskFailed, timestamp, task_id, failure)


def sub_orchestration_created(
    timestamp: str, event_id: int, name: str, instance_id: str, input_json: str | None
) -> Event:
    """A sub-orchestration the orchestrator started."""
    return _event(
        EventType.SubOrchestrationInstanceCreated,
        event_id,
        timestamp,
        Name=name,
        InstanceId=instance_id,
        Input=input_json,
    )


def sub_orchestration_completed(timestamp: str, task_id: int, result_json: str | None) -> Event:
    """A sub-orchestration's output, delivered to its parent."""
    return _event(
        EventType.SubOrchestrationInstanceCompleted,
        -1,
        timestamp,
        TaskScheduledId=task_id,
        Result=result_json,
    )


def sub_orchestration_failed(timestamp: str, task_id: int, failure: dict[str, Any]) -> Event:
    """A sub-orchestration's failure, delivered to its parent."""
    return _failed(EventType.SubOrchestrationInstanceFailed, timestamp, task_id, failure)


def timer_created(timestamp: str, event_id: int, fire_at: str) -> Event:
    """A durable timer the orchestrator created."""
    return _event(EventType.TimerCreated, event_id, timestamp, FireAt=fire_at)


def timer_fired(timestamp: str, timer_id: int, fire_at: str) -> Event:
    """A durable timer that came due."""
    return _event(EventType.TimerFired, -1, timestamp, TimerId=timer_id, FireAt=fire_at)


def event_sent(timestamp: str, event_id: int, instance_id: str, name: str, input_json: str | None) -> Event:
    """An event (or entity signal) the orchestrator sent to another instance."""
    return _event(
        EventType.EventSent, event_id, timestamp, InstanceId=instance_id, Name=name, Input=input_json
    )


def event_raised(timestamp: str, name: str, input_json: str | None) -> Event:
    """An external event delivered to the instance."""
    return _event(EventType.EventRaised, -1, timestamp, Name=name, Input=input_json)


#: ``Name`` of the ``GenericEvent`` that asks for, and then marks, a rewind.
REWIND = "ExecutionRewound"


def execution_rewound(
    timestamp: str,
    reason: str | None,
    parent: dict[str, Any] | None = None,
    data: str | None = None,
) -> Event:
    """A rewind: as a message, the request; in history, the marker of what was rewound.

    A ``GenericEvent`` named ``ExecutionRewound`` (DTFx marks rewound events as
    generic events too). ``parent`` re-links a rewound sub-orchestration to its
    parent's new execution; ``data`` (JSON text, in history only) names the
    previous execution and the rewound and reopened task ids.
    """
    return _event(
        EventType.GenericEvent,
        -1,
        timestamp,
        Name=REWIND,
        Reason=reason,
        ParentInstance=parent,
        Data=data,
    )


def is_rewind(event: Event) -> bool:
    """Whether ``event`` is a rewind request or marker."""
    return event.get("EventType") == EventType.GenericEvent and event.get("Name") == REWIND


def event_name(event: Event) -> str:
    """The event type's name of an event dict (for messages and errors)."""
    try:
        return EventType(event["EventType"]).name
    except (KeyError, ValueError):
        return f"EventType {event.get('EventType')!r}"


def describe(event: Event) -> str:
    """A short human description of an event for error messages."""
    parts = [event_name(event)]
    if event.get("EventId", -1) >= 0:
        parts.append(f"#{event['EventId']}")
    if event.get("Name"):
        parts.append(f"'{event['Name']}'")
    if event.get("FireAt"):
        parts.append(f"at {event['FireAt']}")
    return " ".join(parts)
