"""The durable client: start, query, signal and manage orchestration instances.

Method names and arguments follow ``azure.durable_functions``'
``DurableOrchestrationClient``; this client talks to the backend directly
instead of through the extension's HTTP API.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote, urlsplit

import azure.functions as func
import orjson

from .backends.base import Backend, InstanceQuery
from .clock import Clock
from .core import history as h
from .core.entities import (
    EntityId,
    EntityRequest,
    SchedulerState,
    convert_state,
    entity_instance_id,
    entity_state_of,
    is_entity_instance,
)
from .core.errors import InstanceNotFailedError, InstanceNotFoundError, InvalidInstanceIdError
from .core.runtime import InstanceRecord, Message, start_message
from .core.serialization import from_json, to_json
from .core.status import OrchestrationRuntimeStatus as Status

MAX_INSTANCE_ID_LENGTH = 256
DEFAULT_MANAGEMENT_BASE_PATH = "/api/durabletask/"
_FORBIDDEN = set("/\\#?")


def validate_instance_id(instance_id: Any) -> str:
    """Return ``instance_id`` if storage can key it, else raise a message saying why."""
    if not isinstance(instance_id, str) or not instance_id:
        raise InvalidInstanceIdError("instance id must be a non-empty string")
    if len(instance_id) > MAX_INSTANCE_ID_LENGTH:
        raise InvalidInstanceIdError(
            f"instance id is {len(instance_id)} characters; the limit is {MAX_INSTANCE_ID_LENGTH}"
        )
    for ch in instance_id:
        if ch in _FORBIDDEN or ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F:
            raise InvalidInstanceIdError(
                f"instance id {instance_id!r} contains {ch!r}; ids may not contain / \\ # ? "
                "or control characters"
            )
    return instance_id


@dataclass
class DurableOrchestrationStatus:
    """Status of one instance, with the official SDK's attribute names."""

    name: str
    instance_id: str
    created_time: datetime
    last_updated_time: datetime
    runtime_status: Status
    input_: Any = None
    output: Any = None
    custom_status: Any = None
    history: list[dict[str, Any]] | None = None
    failure: dict[str, Any] | None = None

    @classmethod
    def from_record(
        cls, record: InstanceRecord, show_input: bool = True, history: list[dict[str, Any]] | None = None
    ) -> DurableOrchestrationStatus:
        """Build the status view of an instance row (payloads decoded from JSON)."""
        return cls(
            name=record.name,
            instance_id=record.instance_id,
            created_time=record.created_at,
            last_updated_time=record.last_updated_at,
            runtime_status=record.status,
            input_=from_json(record.input) if show_input else None,
            output=from_json(record.output),
            custom_status=from_json(record.custom_status),
            history=history,
            failure=record.failure,
        )

    def to_json(self) -> dict[str, Any]:
        """The Durable Functions HTTP API's status payload."""
        out: dict[str, Any] = {
            "name": self.name,
            "instanceId": self.instance_id,
            "runtimeStatus": self.runtime_status.value,
            "input": self.input_,
            "customStatus": self.custom_status,
            "output": self.output,
            "createdTime": h.format_timestamp(self.created_time)[:19] + "Z",
            "lastUpdatedTime": h.format_timestamp(self.last_updated_time)[:19] + "Z",
        }
        if self.history is not None:
            out["historyEvents"] = self.history
        return out


@dataclass
class PurgeHistoryResult:
    """How many instances a purge deleted."""

    instances_deleted: int


@dataclass
class OrchestrationStatusQueryResult:
    """One page of a status query and the token for the next page (``None`` on the last)."""

    statuses: list[DurableOrchestrationStatus]
    continuation_token: str | None = None


class DurableOrchestrationClient:
    """Starts and manages orchestration instances in one task hub."""

    #: Path of the management HTTP API (``durable_ext.http_api``) on the app's host.
    management_base_path: str = DEFAULT_MANAGEMENT_BASE_PATH
    #: Function key the management URLs carry as ``code=`` (``None``: anonymous API).
    management_function_key: str | None = None
    #: Absolute base URL of the management API for payloads built without a request.
    management_base_url: str | None = None

    def __init__(self, backend: Backend, clock: Clock | None = None) -> None:
        self._backend = backend
        self._clock = clock or getattr(backend, "clock", None) or Clock()

    async def start_new(
        self,
        orchestration_function_name: str,
        instance_id: str | None = None,
        client_input: Any = None,
        version: str | None = None,
    ) -> str:
        """Start an instance of an orchestrator; returns its id (a new UUID by default).

        An id that names a finished instance starts it afresh; one that names a
        Pending, Running or Suspended instance raises InstanceAlreadyExistsError.
        """
        if not orchestration_function_name or not isinstance(orchestration_function_name, str):
            raise ValueError("orchestration_function_name must be a non-empty string")
        instance_id = validate_instance_id(instance_id) if instance_id else uuid.uuid4().hex
        if instance_id.startswith("@"):
            raise InvalidInstanceIdError(
                f"instance id {instance_id!r} starts with '@', which is reserved for entities ('@name@key')"
            )
        payload = to_json(client_input, f"input of orchestrator '{orchestration_function_name}'")
        now = self._clock.now()
        start = start_message(instance_id, orchestration_function_name, payload, now)
        record = InstanceRecord(
            instance_id,
            orchestration_function_name,
            start.execution_id or "",
            Status.Pending,
            now,
            now,
            input=payload,
        )
        await self._backend.create_instance(record, start)
        return instance_id

    async def get_status(
        self,
        instance_id: str,
        show_history: bool = False,
        show_history_output: bool = False,
        show_input: bool = False,
    ) -> DurableOrchestrationStatus | None:
        """The instance's status, or ``None`` when there is no such instance."""
        record = await self._backend.get_instance(instance_id)
        if record is None:
            return None
        events = None
        if show_history:
            events = await self._backend.get_history(instance_id)
            if not show_history_output:
                events = [_without_payloads(e) for e in events]
        return DurableOrchestrationStatus.from_record(record, show_input, events)

    async def get_status_all(self) -> list[DurableOrchestrationStatus]:
        """The status of every instance in the task hub."""
        return await self.get_status_by()

    async def get_status_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Iterable[Status] | None = None,
        instance_id_prefix: str | None = None,
    ) -> list[DurableOrchestrationStatus]:
        """Every instance matching all the given conditions."""
        query = InstanceQuery(
            _as_utc(created_time_from),
            _as_utc(created_time_to),
            frozenset(runtime_status) if runtime_status else None,
            instance_id_prefix,
            page_size=1000,
        )
        out: list[DurableOrchestrationStatus] = []
        while True:
            page = await self._backend.query_instances(query)
            out.extend(DurableOrchestrationStatus.from_record(r) for r in page.records)
            if not page.continuation:
                return out
            query.continuation = page.continuation

    async def raise_event(self, instance_id: str, event_name: str, event_data: Any = None) -> None:
        """Deliver an external event; events nobody waits for yet are buffered."""
        if not event_name or not isinstance(event_name, str):
            raise ValueError("event_name must be a non-empty string")
        record = await self._require(instance_id)
        payload = to_json(event_data, f"data of event '{event_name}'")
        event = h.event_raised(h.format_timestamp(self._clock.now()), event_name, payload)
        await self._send(record, event, any_execution=True)

    async def terminate(self, instance_id: str, reason: str | None = None) -> None:
        """Stop a running instance; its output becomes ``reason``."""
        record = await self._require(instance_id)
        event = h.execution_terminated(h.format_timestamp(self._clock.now()), to_json(reason))
        await self._send(record, event)

    async def suspend(self, instance_id: str, reason: str | None = None) -> None:
        """Pause an instance: events still arrive but wait until it is resumed."""
        record = await self._require(instance_id)
        await self._send(record, h.execution_suspended(h.format_timestamp(self._clock.now()), reason))

    async def resume(self, instance_id: str, reason: str | None = None) -> None:
        """Resume a suspended instance."""
        record = await self._require(instance_id)
        await self._send(record, h.execution_resumed(h.format_timestamp(self._clock.now()), reason))

    async def rewind(self, instance_id: str, reason: str) -> None:
        """Rewind a Failed instance: retry its failed activities and sub-orchestrations.

        Results of the calls that succeeded are kept; the instance runs again
        as a new execution and ``reason`` is recorded in its history. Raises
        InstanceNotFoundError for an unknown id and InstanceNotFailedError for
        an instance that is not Failed.
        """
        record = await self._require(instance_id)
        if record.status != Status.Failed:
            raise InstanceNotFailedError(
                f"only failed instances can be rewound; '{instance_id}' is {record.status.value}"
            )
        await self._send(record, h.execution_rewound(h.format_timestamp(self._clock.now()), reason))

    async def restart(self, instance_id: str, restart_with_new_instance_id: bool = True) -> str:
        """Start the instance's orchestrator again with its original input."""
        record = await self._require(instance_id)
        new_id = None if restart_with_new_instance_id else instance_id
        return await self.start_new(record.name, new_id, from_json(record.input))

    async def purge_instance_history(self, instance_id: str) -> PurgeHistoryResult:
        """Delete an instance and its history."""
        return PurgeHistoryResult(await self._backend.purge_instance(instance_id))

    async def purge_instance_history_by(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Iterable[Status] | None = None,
    ) -> PurgeHistoryResult:
        """Delete every instance matching the conditions."""
        query = InstanceQuery(
            _as_utc(created_time_from),
            _as_utc(created_time_to),
            frozenset(runtime_status) if runtime_status else None,
        )
        return PurgeHistoryResult(await self._backend.purge_instances(query))

    async def wait_for_completion(
        self, instance_id: str, timeout: float = 30.0, poll_interval: float = 0.05
    ) -> DurableOrchestrationStatus:
        """Poll until the instance is Completed, Failed or Terminated (TimeoutError after)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await self.get_status(instance_id)
            if status is not None and status.runtime_status.is_terminal:
                return status
            if loop.time() >= deadline:
                state = status.runtime_status.value if status else "missing"
                raise TimeoutError(f"instance '{instance_id}' still {state} after {timeout}s")
            await asyncio.sleep(poll_interval)

    async def list_instances(
        self,
        created_time_from: datetime | None = None,
        created_time_to: datetime | None = None,
        runtime_status: Iterable[Status] | None = None,
        instance_id_prefix: str | None = None,
        page_size: int = 100,
        continuation_token: str | None = None,
        show_input: bool = True,
    ) -> OrchestrationStatusQueryResult:
        """One page of the instances matching all conditions (the .NET client's ``ListInstancesAsync``).

        Pass the returned ``continuation_token`` back to get the next page; a
        page may hold fewer than ``page_size`` instances even when more follow.
        """
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        query = InstanceQuery(
            _as_utc(created_time_from),
            _as_utc(created_time_to),
            frozenset(runtime_status) if runtime_status else None,
            instance_id_prefix or None,
            page_size=page_size,
            continuation=continuation_token or None,
        )
        page = await self._backend.query_instances(query)
        statuses = [DurableOrchestrationStatus.from_record(r, show_input) for r in page.records]
        return OrchestrationStatusQueryResult(statuses, page.continuation)

    # ------------------------------------------------------------------ entities

    async def signal_entity(
        self,
        entityId: EntityId,
        operation_name: str,
        operation_input: Any = None,
        task_hub_name: str | None = None,
        connection_name: str | None = None,
        *,
        scheduled_time: datetime | None = None,
    ) -> None:
        """Send a one-way operation to an entity (run at ``scheduled_time`` when given)."""
        target = validate_instance_id(entity_instance_id(entityId))
        if not isinstance(operation_name, str):
            raise ValueError("operation_name must be a string")
        payload = to_json(operation_input, f"input of operation '{operation_name}' of {target}")
        request = EntityRequest(uuid.uuid4().hex, "signal", op=operation_name, input=payload)
        if scheduled_time is not None:
            request.at = h.format_timestamp(_as_utc(scheduled_time) or scheduled_time)
        await self._backend.send_messages([request.message(target, self._clock.now())])

    async def read_entity_state(
        self,
        entityId: EntityId,
        task_hub_name: str | None = None,
        connection_name: str | None = None,
        *,
        state_type: Any = None,
    ) -> EntityStateResponse:
        """Whether the entity exists and its state (decoded to ``state_type`` when given)."""
        target = validate_instance_id(entity_instance_id(entityId))
        record = await self._backend.get_instance(target)
        if record is None:
            return EntityStateResponse(False)
        exists, state = entity_state_of(record)
        return EntityStateResponse(exists, convert_state(state, state_type) if exists else None)

    async def list_entities(
        self,
        entity_name: str | None = None,
        *,
        fetch_state: bool = False,
        page_size: int = 100,
        continuation_token: str | None = None,
    ) -> EntityQueryResult:
        """One page of existing entities (of one name, when given), with their state."""
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if entity_name is not None:
            EntityId(entity_name, "-")  # the name's rules: non-empty, no '@'
        prefix = f"@{entity_name.lower()}@" if entity_name else "@"
        query = InstanceQuery(
            instance_id_prefix=prefix, page_size=page_size, continuation=continuation_token, entities=True
        )
        page = await self._backend.query_instances(query)
        out = []
        for record in page.records:
            exists, state = entity_state_of(record)
            if not exists:
                continue
            last = SchedulerState.from_json(record.input).last_op
            out.append(
                EntityMetadata(
                    EntityId.get_entity_id(record.instance_id),
                    h.parse_timestamp(last) if last else record.last_updated_at,
                    from_json(state) if fetch_state else None,
                )
            )
        return EntityQueryResult(out, page.continuation)

    def create_http_management_payload(self, instance_id: str, base_url: str | None = None) -> dict[str, str]:
        """The management URLs of an instance, as the check-status payload lists them.

        ``base_url`` is the absolute URL of the management API, e.g.
        ``https://app.example/api/durabletask/``; a query string on it (say
        ``?code=KEY``) is appended to every URL. Without it: ``management_base_url``,
        else ``https://$WEBSITE_HOSTNAME`` (``http://localhost:7071`` locally) plus
        ``management_base_path`` and the ``management_function_key``.
        """
        validate_instance_id(instance_id)
        if base_url is None:
            base_url = self.management_base_url or self._management_base(_default_origin())
        parts = urlsplit(base_url)
        prefix = base_url.split("?", 1)[0].split("#", 1)[0]
        if not prefix.endswith("/"):
            prefix += "/"
        query = parts.query
        tail = f"?{query}" if query else ""  # after a path
        more = f"&{query}" if query else ""  # after ?reason={text}
        instance = f"{prefix}instances/{quote(instance_id, safe='')}"
        return {
            "id": instance_id,
            "statusQueryGetUri": instance + tail,
            "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}{tail}",
            "terminatePostUri": f"{instance}/terminate?reason={{text}}{more}",
            "rewindPostUri": f"{instance}/rewind?reason={{text}}{more}",
            "purgeHistoryDeleteUri": instance + tail,
            "restartPostUri": f"{instance}/restart{tail}",
            "suspendPostUri": f"{instance}/suspend?reason={{text}}{more}",
            "resumePostUri": f"{instance}/resume?reason={{text}}{more}",
        }

    def create_check_status_response(self, request: func.HttpRequest, instance_id: str) -> func.HttpResponse:
        """HTTP 202 with ``Location``, ``Retry-After`` and the management URLs of the instance.

        The URLs use the scheme and host of ``request`` (as the official SDK
        does) and the ``management_base_path`` of this client.
        """
        parts = urlsplit(request.url)
        payload = self.create_http_management_payload(
            instance_id, self._management_base(f"{parts.scheme}://{parts.netloc}")
        )
        return func.HttpResponse(
            body=orjson.dumps(payload),
            status_code=202,
            headers={"Location": payload["statusQueryGetUri"], "Retry-After": "10"},
            mimetype="application/json",
            charset="utf-8",
        )

    async def wait_for_completion_or_create_check_status_response(
        self,
        request: func.HttpRequest,
        instance_id: str,
        timeout_in_milliseconds: int = 10000,
        retry_interval_in_milliseconds: int = 1000,
    ) -> func.HttpResponse:
        """Wait up to the timeout for the instance to finish, then answer as the official SDK does.

        Completed: 200 with the output; Terminated or Canceled: 200 with the
        status; Failed: 500 with the status; still running at the timeout: the
        check-status response (202).
        """
        if retry_interval_in_milliseconds > timeout_in_milliseconds:
            raise ValueError(
                f"Total timeout {timeout_in_milliseconds} (ms) should be bigger than "
                f"retry timeout {retry_interval_in_milliseconds} (ms)"
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_in_milliseconds / 1000
        while True:
            status = await self.get_status(instance_id)
            if status is not None:
                state = status.runtime_status
                if state == Status.Completed:
                    return _json_response(200, status.output)
                if state in (Status.Terminated, Status.Canceled):
                    return _json_response(200, status.to_json())
                if state == Status.Failed:
                    return _json_response(500, status.to_json())
            remaining = deadline - loop.time()
            if remaining <= 0:
                return self.create_check_status_response(request, instance_id)
            await asyncio.sleep(min(retry_interval_in_milliseconds / 1000, remaining))

    def _management_base(self, origin: str) -> str:
        """The management API's base URL on ``origin``, with ``code=`` when a key is set."""
        path = "/" + self.management_base_path.strip("/") + "/"
        base = origin.rstrip("/") + path.replace("//", "/")
        if self.management_function_key:
            base += "?code=" + quote(self.management_function_key, safe="")
        return base

    async def _require(self, instance_id: str) -> InstanceRecord:
        """The record of an orchestration instance (entities are driven only by their operations)."""
        validate_instance_id(instance_id)
        if is_entity_instance(instance_id):
            raise InvalidInstanceIdError(
                f"'{instance_id}' is an entity; use signal_entity, not the orchestration management calls"
            )
        record = await self._backend.get_instance(instance_id)
        if record is None:
            raise InstanceNotFoundError(f"no instance with id '{instance_id}'")
        return record

    async def _send(self, record: InstanceRecord, event: dict[str, Any], any_execution: bool = False) -> None:
        execution = None if any_execution else record.execution_id
        await self._backend.send_messages([Message(record.instance_id, event, execution)])


class EntityStateResponse:
    """What ``read_entity_state`` returns (the official class's attributes)."""

    def __init__(self, entity_exists: bool, entity_state: Any = None) -> None:
        self.entity_exists = entity_exists
        self.entity_state = entity_state

    def __repr__(self) -> str:
        return (
            f"EntityStateResponse(entity_exists={self.entity_exists!r}, entity_state={self.entity_state!r})"
        )


@dataclass
class EntityMetadata:
    """One entity in a listing: its id, when it last ran an operation, and its state."""

    entity_id: EntityId
    last_operation_time: datetime
    state: Any = None

    def to_json(self) -> dict[str, Any]:
        """The management API's JSON for one entity."""
        out: dict[str, Any] = {
            "entityId": {"name": self.entity_id.name, "key": self.entity_id.key},
            "lastOperationTime": h.format_timestamp(self.last_operation_time),
        }
        if self.state is not None:
            out["state"] = self.state
        return out


@dataclass
class EntityQueryResult:
    """A page of entities and the token for the next page (``None`` at the end)."""

    entities: list[EntityMetadata]
    continuation_token: str | None = None


def _as_utc(value: datetime | None) -> datetime | None:
    """Naive datetimes mean UTC, as the official SDK sends them (``datetime.min`` included)."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _without_payloads(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in ("Input", "Result")}


def _default_origin() -> str:
    """The app's public origin as the Functions host knows it (``WEBSITE_HOSTNAME``)."""
    host = os.environ.get("WEBSITE_HOSTNAME")
    return f"https://{host}" if host else "http://localhost:7071"


def _json_response(status_code: int, value: Any) -> func.HttpResponse:
    return func.HttpResponse(
        body=orjson.dumps(value), status_code=status_code, mimetype="application/json", charset="utf-8"
    )
