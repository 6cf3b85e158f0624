"""Errors that orchestration code and callers see."""

from __future__ import annotations

from typing import Any


class DurableError(Exception):
    """Base class of every error durable_ext raises on purpose."""


class NonDeterministicOrchestrationError(DurableError):
    """Replayed orchestrator code asked for something other than history recorded.

    The message names the history event and the action so the user can find
    the change that broke replay; history itself is never modified.
    """


class SerializationError(DurableError, TypeError):
    """A value could not be encoded to or decoded from JSON."""


class TaskFailedError(DurableError):
    """An activity or sub-orchestration failed; raised inside the orchestrator.

    ``error_type`` and ``message`` are those of the original exception,
    ``stack_trace`` its formatted traceback, ``task_name`` what was called.
    """

    def __init__(
        self,
        task_name: str,
        error_type: str,
        message: str,
        stack_trace: str | None = None,
        failure: dict[str, Any] | None = None,
    ) -> None:
        self.task_name = task_name
        self.error_type = error_type
        self.message = message
        self.stack_trace = stack_trace
        self.failure = failure or {
            "ErrorType": error_type,
            "ErrorMessage": message,
            "StackTrace": stack_trace,
        }
        super().__init__(f"{task_name} failed: {error_type}: {message}")


class OrchestrationFailedError(DurableError):
    """An orchestration ended in the Failed state (raised by waiting helpers)."""

    def __init__(self, instance_id: str, message: str, details: Any = None) -> None:
        self.instance_id = instance_id
        self.details = details
        super().__init__(f"orchestration {instance_id!r} failed: {message}")


class InstanceNotFoundError(DurableError, LookupError):
    """No instance with that id exists in the task hub."""


class InstanceNotFailedError(DurableError):
    """Only a Failed instance can be rewound; this one is in another state."""


class InstanceAlreadyExistsError(DurableError):
    """An instance with that id is running and may not be started again."""


class InvalidInstanceIdError(DurableError, ValueError):
    """An instance id is empty, too long or holds characters storage forbids."""


class ConflictError(DurableError):
    """Another worker committed the instance first; reload and retry."""


class StaleStateError(ConflictError):
    """A step was judged against a cached state that no read or ETag proved current; reload."""


class EntityOperationFailedError(TaskFailedError):
    """An entity operation called from an orchestrator raised; its state change was rolled back."""


class LockingRulesViolationError(DurableError):
    """An orchestrator broke a critical-section rule (nested lock, call to an entity it did not lock)."""
