"""durable_ext: Durable Functions for Python on standard Azure Functions bindings.

``import durable_ext as df`` is meant to replace ``import azure.durable_functions as df``.
"""

from .app import Blueprint, DFApp, DurableApp
from .client import (
    DurableOrchestrationClient,
    DurableOrchestrationStatus,
    EntityQueryResult,
    EntityStateResponse,
    PurgeHistoryResult,
)
from .compat import Entity, Orchestrator
from .core.context import DurableOrchestrationContext
from .core.entities import CriticalSection, DurableEntityContext, EntityId
from .core.errors import (
    DurableError,
    EntityOperationFailedError,
    InstanceAlreadyExistsError,
    InstanceNotFailedError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    LockingRulesViolationError,
    NonDeterministicOrchestrationError,
    OrchestrationFailedError,
    SerializationError,
    TaskFailedError,
)
from .core.history import EventType
from .core.retry import RetryOptions
from .core.status import OrchestrationRuntimeStatus
from .core.tasks import Task, TimerTask

__version__ = "0.1.0"

__all__ = [
    "Blueprint",
    "CriticalSection",
    "DFApp",
    "DurableApp",
    "DurableEntityContext",
    "DurableError",
    "DurableOrchestrationClient",
    "DurableOrchestrationContext",
    "DurableOrchestrationStatus",
    "Entity",
    "EntityId",
    "EntityOperationFailedError",
    "EntityQueryResult",
    "EntityStateResponse",
    "EventType",
    "InstanceAlreadyExistsError",
    "InstanceNotFailedError",
    "InstanceNotFoundError",
    "InvalidInstanceIdError",
    "LockingRulesViolationError",
    "NonDeterministicOrchestrationError",
    "OrchestrationFailedError",
    "OrchestrationRuntimeStatus",
    "Orchestrator",
    "PurgeHistoryResult",
    "RetryOptions",
    "SerializationError",
    "Task",
    "TaskFailedError",
    "TimerTask",
]
