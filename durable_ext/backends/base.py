"""The backend interface: where instances, history and messages live.

A backend stores one row per instance, its history, and an inbox of
messages; it commits a whole orchestration step atomically and dispatches
what the step sends. The engine drives it; the backend knows nothing about
replay. Two implementations: ``memory`` (in-process, for tests and the test
harness) and ``azure`` (Tables, Queues and Blobs).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..core.entities import is_entity_instance
from ..core.history import Event
from ..core.runtime import ActivityRequest, InstanceRecord, Message, StepResult
from ..core.status import OrchestrationRuntimeStatus


@dataclass
class LoadedInstance:
    """An instance as loaded for one step.

    ``history`` holds the events after ``history_from`` (all of them when it is
    0): a caller with a cached replay asks only for what is newer.
    ``etag`` guards the commit against a concurrent worker.
    """

    record: InstanceRecord
    history: list[Event]
    history_from: int
    history_len: int
    inbox: list[Message]
    etag: Any = None


@dataclass
class InstanceQuery:
    """Filter of the management queries (all conditions must hold)."""

    created_from: datetime | None = None
    created_to: datetime | None = None
    statuses: frozenset[OrchestrationRuntimeStatus] | None = None
    instance_id_prefix: str | None = None
    page_size: int = 100
    continuation: str | None = None
    #: list entities (ids ``@name@key``) instead of orchestration instances
    entities: bool = False

    def matches(self, record: InstanceRecord) -> bool:
        """Whether ``record`` passes every condition of the filter."""
        if is_entity_instance(record.instance_id) != self.entities:
            return False
        if self.created_from is not None and record.created_at < self.created_from:
            return False
        if self.created_to is not None and record.created_at > self.created_to:
            return False
        if self.statuses and record.status not in self.statuses:
            return False
        prefix = self.instance_id_prefix
        return not (prefix and not record.instance_id.startswith(prefix))


@dataclass
class QueryPage:
    """One page of instances and the token for the next (``None`` at the end)."""

    records: list[InstanceRecord] = field(default_factory=list)
    continuation: str | None = None


class Backend(ABC):
    """Storage and dispatch for one task hub."""

    @abstractmethod
    async def create_instance(self, record: InstanceRecord, start: Message) -> None:
        """Create (or restart a finished) instance and queue its start message.

        Raises InstanceAlreadyExistsError when the instance is Pending, Running
        or Suspended.
        """

    @abstractmethod
    async def send_messages(self, messages: list[Message]) -> None:
        """Put messages in their instances' inboxes and wake those instances."""

    @abstractmethod
    async def load(
        self,
        instance_id: str,
        history_from: int = 0,
        messages: list[Message] | None = None,
        *,
        hot: bool = False,
    ) -> LoadedInstance | None:
        """Record, history after ``history_from`` and inbox of an instance.

        ``messages`` arrived with the wake-up itself (not stored); they join the
        inbox. ``hot`` says only in-process results arrived, so a backend may
        reuse what it committed last instead of reading.
        """

    @abstractmethod
    async def commit(self, loaded: LoadedInstance, step: StepResult) -> None:
        """Write the step atomically, then dispatch it; ConflictError if the etag moved."""

    def claimed_elsewhere(self, instance_id: str) -> bool:
        """Whether another process holds the instance's stepping claim (then ``hand_off``)."""
        return False

    async def hand_off(self, instance_id: str, messages: list[Message]) -> bool:
        """Store ``messages`` in the inbox for the claim's holder; False: step them after all."""
        raise NotImplementedError("this backend has no stepping claims")

    @abstractmethod
    async def complete_activity(self, request: ActivityRequest, result: Message) -> None:
        """Deliver an activity's result to its orchestration and retire the work item."""

    @abstractmethod
    async def get_instance(self, instance_id: str) -> InstanceRecord | None:
        """The instance row, or ``None``."""

    @abstractmethod
    async def get_history(self, instance_id: str) -> list[Event]:
        """The history of the current execution (empty for an unknown instance)."""

    @abstractmethod
    async def query_instances(self, query: InstanceQuery) -> QueryPage:
        """One page of instances matching ``query``."""

    @abstractmethod
    async def purge_instance(self, instance_id: str) -> int:
        """Delete an instance with its history and messages; returns how many (0 or 1)."""

    async def purge_instances(self, query: InstanceQuery) -> int:
        """Delete every instance matching ``query``; returns how many."""
        count = 0
        query.continuation = None
        while True:
            page = await self.query_instances(query)
            for record in page.records:
                count += await self.purge_instance(record.instance_id)
            if not page.continuation:
                return count
            query.continuation = page.continuation

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
