"""Runtime status of an orchestration instance, with the Durable Functions values."""

from __future__ import annotations

from enum import Enum


class OrchestrationRuntimeStatus(Enum):
    """The runtime status names and values of Durable Functions."""

    Running = "Running"
    Completed = "Completed"
    ContinuedAsNew = "ContinuedAsNew"
    Failed = "Failed"
    Canceled = "Canceled"
    Terminated = "Terminated"
    Pending = "Pending"
    Suspended = "Suspended"

    @property
    def is_terminal(self) -> bool:
        """True when the instance will not run again without a restart or rewind."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        OrchestrationRuntimeStatus.Completed,
        OrchestrationRuntimeStatus.Failed,
        OrchestrationRuntimeStatus.Canceled,
        OrchestrationRuntimeStatus.Terminated,
    }
)
