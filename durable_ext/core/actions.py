"""Actions: what an orchestrator asks for next, before history records it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from .history import EventType


class ActionType(IntEnum):
    """Action kinds, numbered as in the Durable Functions out-of-process protocol."""

    CallActivity = 0
    CallSubOrchestrator = 2
    ContinueAsNew = 4
    CreateTimer = 5
    CallEntity = 7
    CallHttp = 8
    SignalEntity = 9
    SendEvent = 14


#: The history event that records each kind of action once it is committed.
RECORDED_AS: dict[ActionType, EventType] = {
    ActionType.CallActivity: EventType.TaskScheduled,
    ActionType.CallSubOrchestrator: EventType.SubOrchestrationInstanceCreated,
    ActionType.CreateTimer: EventType.TimerCreated,
    ActionType.SendEvent: EventType.EventSent,
    ActionType.SignalEntity: EventType.EventSent,
    ActionType.CallEntity: EventType.EventSent,
}


@dataclass(slots=True)
class Action:
    """One scheduled step: ``id`` is its sequence number in the execution."""

    type: ActionType
    id: int
    name: str | None = None
    input: str | None = None
    instance_id: str | None = None
    fire_at: str | None = None
    #: a scheduled entity signal: deliver no earlier than this (ISO text)
    deliver_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly description (for the replayer's result and logs)."""
        out: dict[str, Any] = {"actionType": self.type.name, "id": self.id}
        if self.name is not None:
            out["name"] = self.name
        if self.input is not None:
            out["input"] = self.input
        if self.instance_id is not None:
            out["instanceId"] = self.instance_id
        if self.fire_at is not None:
            out["fireAt"] = self.fire_at
        return out

    def describe(self) -> str:
        """Short text for error messages, e.g. ``CallActivity #3 'say_hello'``."""
        text = f"{self.type.name} #{self.id}"
        if self.name:
            text += f" '{self.name}'"
        if self.fire_at:
            text += f" at {self.fire_at}"
        return text
