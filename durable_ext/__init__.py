"""durable_ext: Durable Functions for Python on standard Azure Functions bindings.

``import durable_ext as df`` is meant to replace ``import azure.durable_functions as df``.
"""

from .app import Blueprint, DFApp, DurableApp
from .client import DurableOrchestrationClient, DurableOrchestrationStatus, PurgeHistoryResult
from .core.context import DurableOrchestrationContext
from .core.errors import (
    DurableError,
    InstanceAlreadyExistsError,
    InstanceNotFailedError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
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
    "DFApp",
    "DurableApp",
    "DurableError",
    "DurableOrchestrationClient",
    "DurableOrchestrationContext",
    "DurableOrchestrationStatus",
    "EventType",
    "InstanceAlreadyExistsError",
    "InstanceNotFailedError",
    "InstanceNotFoundError",
    "InvalidInstanceIdError",
    "NonDeterministicOrchestrationError",
    "OrchestrationFailedError",
    "OrchestrationRuntimeStatus",
    "PurgeHistoryResult",
    "RetryOptions",
    "SerializationError",
    "Task",
    "TaskFailedError",
    "TimerTask",
]
