"""Row and message encodings of the Azure Storage task hub (no I/O here).

One table partition per instance in ``{Hub}History`` holds everything a step
commits atomically:

- ``sentinel``: the authoritative instance record, the history length and a
  list of recently consumed message ids; its ETag guards every commit;
- ``h-{execution}-{first event:08d}``: the events of one step, packed as
  orjson bytes in binary properties (64 KB each), or a blob reference;
- ``i-{message id}``: inbox messages from clients and other instances;
- ``o-{step id}``: the outbox of one step, deleted once it is dispatched.

Row keys sort ``h-`` < ``i-`` < ``o-`` < ``sentinel``, so one range query
loads the history tail, the inbox, the outbox and the sentinel together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from ...core.history import format_timestamp, parse_timestamp
from ...core.runtime import ActivityRequest, InstanceRecord, Message
from ...core.status import OrchestrationRuntimeStatus as Status

SENTINEL = "sentinel"
CHUNK = 64 * 1024 - 1  # bytes per binary property
MAX_ROW_BYTES = 900 * 1024  # stay under the 1 MB entity limit with room for keys
# The 4 MiB transaction limit counts the request body, where binary properties are base64
# (4/3 bigger): 2 MiB of history plus the outbox rows and the sentinel stay well under it.
MAX_TXN_BYTES = 2 * 1024 * 1024
MAX_OUTBOX_BYTES = 128 * 1024  # a bigger outbox row is stored as a blob
MAX_TXN_OPS = 100
QUEUE_INLINE_LIMIT = 45 * 1024  # queue messages are 64 KB; base64 and headroom
PROPERTY_TEXT_LIMIT = 30 * 1024  # UTF-16 units kept in a string property (limit: 32K units, 64 KB)
DEDUPE_IDS = 512  # consumed inbox message ids remembered in the sentinel


def utf16_len(text: str) -> int:
    """Length of ``text`` in UTF-16 code units, as Table storage counts a string property."""
    if len(text) * 2 <= PROPERTY_TEXT_LIMIT:
        return len(text)  # even if every character needed two units
    return len(text.encode("utf-16-le")) // 2


def history_key(execution_id: str, first_event: int) -> str:
    """Row key of the history row whose first event has index ``first_event``."""
    return f"h-{execution_id}-{first_event:08d}"


def inbox_key(message_id: str) -> str:
    """Row key of an inbox message."""
    return f"i-{message_id}"


def outbox_key(step_id: str) -> str:
    """Row key of one step's outbox."""
    return f"o-{step_id}"


def pack(value: Any) -> dict[str, Any]:
    """Binary properties ``D0``, ``D1``, ... holding ``value`` as orjson bytes."""
    data = orjson.dumps(value)
    props: dict[str, Any] = {"DN": (len(data) + CHUNK - 1) // CHUNK}
    for i in range(props["DN"]):
        props[f"D{i}"] = data[i * CHUNK : (i + 1) * CHUNK]
    return props


def packed_size(value: Any) -> int:
    """Bytes ``pack`` would store."""
    return len(orjson.dumps(value))


def unpack(row: dict[str, Any]) -> Any:
    """Inverse of ``pack``."""
    count = row.get("DN", 0)
    if not count:
        return None
    return orjson.loads(b"".join(bytes(row[f"D{i}"]) for i in range(count)))


# ------------------------------------------------------------------ records


def record_to_props(record: InstanceRecord) -> dict[str, Any]:
    """Instance record fields as table properties (payloads as text)."""
    return {
        "Name": record.name,
        "ExecutionId": record.execution_id,
        "RuntimeStatus": record.status.value,
        "CreatedTime": record.created_at,
        "LastUpdatedTime": record.last_updated_at,
        "Input": record.input,
        "Output": record.output,
        "CustomStatus": record.custom_status,
        "ParentInstanceId": record.parent_instance_id,
        "FailureDetails": orjson.dumps(record.failure).decode() if record.failure else None,
    }


def record_from_props(instance_id: str, row: dict[str, Any]) -> InstanceRecord:
    """Inverse of ``record_to_props``."""
    failure = row.get("FailureDetails")
    return InstanceRecord(
        instance_id=instance_id,
        name=row.get("Name") or "",
        execution_id=row.get("ExecutionId") or "",
        status=Status(row.get("RuntimeStatus") or "Pending"),
        created_at=as_utc(row.get("CreatedTime")),
        last_updated_at=as_utc(row.get("LastUpdatedTime")),
        input=row.get("Input"),
        output=row.get("Output"),
        custom_status=row.get("CustomStatus"),
        parent_instance_id=row.get("ParentInstanceId"),
        failure=orjson.loads(failure) if failure else None,
    )


def as_utc(value: Any) -> datetime:
    """A table timestamp (datetime or ISO text) as an aware UTC datetime; the epoch when missing."""
    if isinstance(value, datetime):
        return value if value.tzinfo else parse_timestamp(value.isoformat())
    if isinstance(value, str):
        return parse_timestamp(value)
    return parse_timestamp("1970-01-01T00:00:00Z")


# ----------------------------------------------------------------- messages


def message_to_json(message: Message) -> dict[str, Any]:
    """A message as JSON-able dict (inbox rows, outboxes, queue bodies)."""
    out: dict[str, Any] = {"id": message.id, "i": message.instance_id, "e": message.event}
    if message.execution_id:
        out["x"] = message.execution_id
    if message.visible_at is not None:
        out["at"] = format_timestamp(message.visible_at)
    return out


def message_from_json(data: dict[str, Any]) -> Message:
    """Inverse of ``message_to_json``; raises KeyError/TypeError/ValueError on malformed data."""
    if not isinstance(data, dict):
        raise TypeError("a message must be a JSON object")
    at = data.get("at")
    event = data["e"]
    if not isinstance(event, dict) or "EventType" not in event:
        raise TypeError("message event is not a history event")
    return Message(
        instance_id=str(data["i"]),
        event=event,
        execution_id=data.get("x"),
        visible_at=parse_timestamp(at) if at else None,
        id=str(data["id"]),
    )


def activity_to_json(request: ActivityRequest) -> dict[str, Any]:
    """A work item as a JSON-able dict."""
    return {
        "id": request.id,
        "i": request.instance_id,
        "x": request.execution_id,
        "t": request.task_id,
        "n": request.name,
        "in": request.input,
    }


def activity_from_json(data: dict[str, Any]) -> ActivityRequest:
    """Inverse of ``activity_to_json``; raises KeyError/TypeError/ValueError on malformed data."""
    if not isinstance(data, dict):
        raise TypeError("a work item must be a JSON object")
    return ActivityRequest(
        instance_id=str(data["i"]),
        execution_id=data.get("x"),
        task_id=int(data["t"]),
        name=str(data["n"]),
        input=data.get("in"),
        id=str(data["id"]),
    )


@dataclass
class Outbox:
    """What one step sends, kept in the instance's partition until dispatched."""

    step_id: str
    activities: list[ActivityRequest] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    project: bool = True
    #: a wake-up of the instance itself at this time (an entity's held message falls due)
    wake_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form for ``pack``."""
        out: dict[str, Any] = {
            "a": [activity_to_json(a) for a in self.activities],
            "m": [message_to_json(m) for m in self.messages],
            "p": self.project,
        }
        if self.wake_at is not None:
            out["w"] = format_timestamp(self.wake_at)
        return out

    @classmethod
    def from_json(cls, step_id: str, data: dict[str, Any]) -> Outbox:
        """Inverse of ``to_json``."""
        return cls(
            step_id,
            [activity_from_json(a) for a in data.get("a", ())],
            [message_from_json(m) for m in data.get("m", ())],
            bool(data.get("p", True)),
            parse_timestamp(data["w"]) if data.get("w") else None,
        )
