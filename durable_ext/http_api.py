"""The management HTTP API of Durable Functions, framework-neutral.

Routes, methods, query parameters, status codes and JSON field names follow
the documented Durable Functions HTTP API ("HTTP API reference",
learn.microsoft.com/azure/azure-functions/durable/durable-functions-http-api)
and, where the page is silent, the extension's own handler
(``HttpApiHandler.cs`` in Azure/azure-functions-durable-extension), which is
what the official Python client talks to. The paths are relative to one base
(``/api/durabletask/`` by default: the Functions host reserves routes that
start with ``admin`` and ``runtime``)::

    POST   orchestrators/{functionName}[/{instanceId}]     start      202 | 400 | 409
    GET    instances/{instanceId}                          status     200 | 202 | 404 (| 500 on request)
    GET    instances/                                      list       200 (+ x-ms-continuation-token)
    DELETE instances/{instanceId}                          purge one  200 | 404 | 412
    DELETE instances/?createdTimeFrom=...                  purge many 200 | 400 | 404
    POST   instances/{instanceId}/raiseEvent/{eventName}   raise      202 | 400 | 404 | 410
    POST   instances/{instanceId}/terminate?reason=        terminate  202 | 404 | 410
    POST   instances/{instanceId}/suspend?reason=          suspend    202 | 404 | 410
    POST   instances/{instanceId}/resume?reason=           resume     202 | 404 | 410
    POST   instances/{instanceId}/restart                  restart    202 | 404 | 409
    POST   instances/{instanceId}/rewind?reason=           rewind     202 | 404 | 410
    POST   entities/{entityName}/{entityKey}?op=           signal     202 | 400 | 404
    DELETE entities/{entityName}/{entityKey}               signal     202 | 400 | 404 (operation "delete")
    GET    entities/{entityName}/{entityKey}               state      200 | 400 | 404
    GET    entities/[{entityName}]                         list       200 (+ x-ms-continuation-token)

Entities: a signal's body is the operation input (decoded as raiseEvent's
data: ``Content-Type: application/json``, the official client's double
encoding undone); a missing ``op`` is the operation ``""``, as in the
extension. With a ``registry``, signaling an entity name the app does not
define is a 404 (documented). The state of an entity that was never signaled
or was deleted is a 404. Listing takes ``top``, ``fetchState`` (default
false), ``lastOperationTimeFrom`` / ``lastOperationTimeTo`` and the
continuation header; a page may hold fewer than ``top`` entities (deleted
ones are skipped) and still carry a token. The ``instances/`` routes do not
act on entity ids (``@name@key``): they answer 404 and point to
``entities/``, except ``DELETE instances/@name@key``, which purges the entity
as the extension does.

``ManagementApi.handle`` takes an ``ApiRequest`` and returns an ``ApiResponse``;
``aiohttp_app`` serves it with aiohttp, ``from_func_request`` and
``to_func_response`` adapt it to an Azure Functions HTTP trigger. Bad input
gets a 4xx with ``{"error": "..."}`` (400 bad id, JSON, date, status name or
number, entity name or key; 401 missing function key; 404 unknown route;
405 wrong method). No request produces a 500 except the documented
opt-in ``returnInternalServerErrorOnFailure=true`` on a Failed instance.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import azure.functions as func
import orjson
from aiohttp import web

from .client import (
    DEFAULT_MANAGEMENT_BASE_PATH,
    DurableOrchestrationClient,
    DurableOrchestrationStatus,
    validate_instance_id,
)
from .core.entities import EntityId, is_entity_instance
from .core.errors import (
    InstanceAlreadyExistsError,
    InstanceNotFailedError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    SerializationError,
)
from .core.history import EventType, parse_timestamp
from .core.status import OrchestrationRuntimeStatus as Status

__all__ = [
    "ApiRequest",
    "ApiResponse",
    "ManagementApi",
    "aiohttp_app",
    "decode_json_body",
    "from_func_request",
    "official_client_binding",
    "to_func_response",
]

log = logging.getLogger(__name__)

CONTINUATION_HEADER = "x-ms-continuation-token"
DEFAULT_PAGE_SIZE = 100  # the extension's default for ``top``
MAX_PAGE_SIZE = 1000  # an Azure Table page; the docs allow fewer items than ``top``
STATUS_RETRY_AFTER = "5"  # seconds; the extension's status endpoint asks for 5
CHECK_STATUS_RETRY_AFTER = "10"  # the check-status response's documented default
JSON_TYPE = "application/json; charset=utf-8"

_RUNNING = frozenset({Status.Pending, Status.Running, Status.ContinuedAsNew, Status.Suspended})
_TERMINAL = frozenset(s for s in Status if s.is_terminal)
_STATUS_BY_NAME = {s.value.lower(): s for s in Status}
_INSTANCE_OPERATIONS = ("terminate", "suspend", "resume", "restart", "rewind")
_DIGITS = re.compile(r"[0-9]{1,9}")
_MAX_TOKEN_LENGTH = 4096


class _Registry(Protocol):
    def find(self, kind: Any, name: str) -> Any: ...


# ------------------------------------------------------------------------------ messages


@dataclass
class ApiRequest:
    """An HTTP request as the API sees it.

    ``path`` is the URL path as sent (percent-encoded); ``query`` holds decoded
    parameters (a repeated key's values joined by ``,``); ``origin`` is the
    ``scheme://host[:port]`` the caller used, for the absolute URLs it gets back.
    """

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    origin: str = "http://localhost"

    @classmethod
    def from_url(
        cls, method: str, url: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> ApiRequest:
        """Build a request from an absolute URL (path and query string included)."""
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        return cls(
            method=method,
            path=parts.path or "/",
            query=_join_repeated(pairs),
            headers=dict(headers or {}),
            body=body or b"",
            origin=f"{parts.scheme}://{parts.netloc}",
        )


@dataclass
class ApiResponse:
    """Status, headers and body bytes of an answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> ApiResponse:
        """A response whose body is ``payload`` as JSON."""
        return cls(status, _dumps(payload), {"Content-Type": JSON_TYPE, **(headers or {})})

    def json_body(self) -> Any:
        """The body decoded from JSON (``None`` when empty)."""
        return orjson.loads(self.body) if self.body else None


class ApiError(Exception):
    """A request the API refuses: becomes ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> ApiResponse:
    """``{"error": message}``; ``ExceptionMessage`` too, the field the official client reads on a 400."""
    return ApiResponse.json(status, {"error": message, "ExceptionMessage": message}, headers)


# ------------------------------------------------------------------------------ the API


@dataclass
class _Call:
    """One request, normalized: lower-case query keys and header names, decoded path segments."""

    request: ApiRequest
    query: dict[str, str]
    headers: dict[str, str]
    segments: list[str]


class ManagementApi:
    """The Durable Functions management HTTP API over a ``DurableOrchestrationClient``.

    ``function_key``: when set, every request needs it as ``code=`` or in the
    ``x-functions-key`` header (compared in constant time), else 401.
    ``registry``: the app's functions; with it, starting an unknown
    orchestrator is a 400 instead of an instance that fails.
    ``task_hub``: named in the returned URLs; a request for another hub is a 400.
    ``base_url_builder``: the absolute API base URL for a request (default: its
    origin plus ``base_path``), e.g. to honour a proxy's forwarded host.
    """

    def __init__(
        self,
        client: DurableOrchestrationClient,
        *,
        base_path: str = DEFAULT_MANAGEMENT_BASE_PATH,
        function_key: str | None = None,
        registry: _Registry | None = None,
        task_hub: str | None = None,
        base_url_builder: Callable[[ApiRequest], str] | None = None,
    ) -> None:
        self.client = client
        self.base_path = "/" + base_path.strip("/") + "/" if base_path.strip("/") else "/"
        self.function_key = function_key or None
        self.registry = registry
        self.task_hub = task_hub
        self._base_url_builder = base_url_builder

    async def handle(self, request: ApiRequest) -> ApiResponse:
        """Answer one request; never raises."""
        try:
            return await self._dispatch(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.headers)
        except InvalidInstanceIdError as exc:
            return error_response(400, str(exc))
        except InstanceNotFoundError as exc:
            return error_response(404, str(exc))
        except InstanceAlreadyExistsError as exc:
            return error_response(409, str(exc))
        except InstanceNotFailedError as exc:
            return error_response(410, str(exc))
        except SerializationError as exc:
            return error_response(400, str(exc))
        except Exception:
            log.exception("management API: %s %s failed", request.method, request.path)
            return error_response(500, "internal error while handling the request; see the server log")

    # ------------------------------------------------------------------ routing

    async def _dispatch(self, request: ApiRequest) -> ApiResponse:
        path = request.path.split("?", 1)[0]
        base = self.base_path
        if path.lower() + "/" == base.lower():
            rest = ""
        elif path.lower().startswith(base.lower()):
            rest = path[len(base) :]
        else:
            raise ApiError(404, f"no route for {path!r}; the management API lives under {base!r}")
        call = _Call(
            request,
            {str(k).lower(): _utf8(v, "query string") for k, v in request.query.items()},
            {str(k).lower(): _utf8(v, "header") for k, v in request.headers.items()},
            [],
        )
        self._authorize(call)
        hub = call.query.get("taskhub")
        if self.task_hub and hub and hub.lower() != self.task_hub.lower():
            raise ApiError(400, f"this endpoint serves task hub '{self.task_hub}', not '{hub}'")
        call.segments = [_segment(s) for s in rest.split("/")] if rest else []
        if len(call.segments) > 1 and call.segments[-1] == "":
            call.segments.pop()
        return await self._route(call)

    async def _route(self, call: _Call) -> ApiResponse:
        segs = call.segments
        method = call.request.method.upper()
        head = segs[0].lower() if segs else ""
        if head == "orchestrators" and len(segs) in (2, 3):
            _allow(method, "POST")
            return await self._start(call, segs[1], segs[2] if len(segs) == 3 else None)
        if head == "instances":
            if len(segs) == 1:
                _allow(method, "GET", "DELETE")
                return await (self._list(call) if method == "GET" else self._purge_by(call))
            if len(segs) == 2:
                _allow(method, "GET", "DELETE")
                return await (self._status(call, segs[1]) if method == "GET" else self._purge(segs[1]))
            operation = segs[2].lower()
            if len(segs) == 4 and operation == "raiseevent":
                _allow(method, "POST")
                return await self._raise_event(call, segs[1], segs[3])
            if len(segs) == 3 and operation in _INSTANCE_OPERATIONS:
                _allow(method, "POST")
                return await getattr(self, f"_{operation}")(call, segs[1])
        if head == "entities" and len(segs) == 3:
            _allow(method, "GET", "POST", "DELETE")
            entity = _entity_id(segs[1], segs[2])
            if method == "GET":
                return await self._entity_state(entity)
            return await self._signal_entity(call, entity, "delete" if method == "DELETE" else None)
        if head == "entities" and len(segs) in (1, 2):
            _allow(method, "GET")
            return await self._list_entities(call, segs[1] if len(segs) == 2 else None)
        raise ApiError(
            404,
            f"no route for {call.request.path!r}; routes below {self.base_path!r} are "
            "orchestrators/{name}[/{instanceId}], instances/, instances/{instanceId}, "
            "instances/{instanceId}/raiseEvent/{eventName}, "
            "instances/{instanceId}/terminate|suspend|resume|restart|rewind, "
            "entities/[{entityName}] and entities/{entityName}/{entityKey}",
        )

    def _authorize(self, call: _Call) -> None:
        key = self.function_key
        if key is None:
            return
        expected = key.encode("utf-8", "surrogatepass")
        supplied = [call.headers.get("x-functions-key"), call.query.get("code")]
        # compare every candidate so the time taken does not depend on which one matched
        ok = [hmac.compare_digest(s.encode("utf-8", "surrogatepass"), expected) for s in supplied if s]
        if not any(ok):
            raise ApiError(401, "a valid function key is required: pass it as ?code=KEY or x-functions-key")

    # ------------------------------------------------------------------ handlers

    async def _start(self, call: _Call, name: str, instance_id: str | None) -> ApiResponse:
        if not name.strip():
            raise ApiError(400, "the orchestrator function name in orchestrators/{functionName} is empty")
        if self.registry is not None and self.registry.find("orchestrator", name) is None:
            raise ApiError(400, f"no orchestrator function named '{name}' is registered in this app")
        if instance_id:
            validate_instance_id(instance_id)
        data = decode_json_body(call.request.body, "orchestrator input")
        new_id = await self.client.start_new(name, instance_id or None, data, call.query.get("version"))
        return self._check_status_response(call, new_id)

    async def _status(self, call: _Call, instance_id: str) -> ApiResponse:
        _orchestration_id(instance_id)
        show_history = _bool(call, "showHistory", False)
        show_history_output = _bool(call, "showHistoryOutput", False)
        show_input = _bool(call, "showInput", True)
        fail_with_500 = _bool(call, "returnInternalServerErrorOnFailure", False)
        status = await self.client.get_status(instance_id, show_history, show_history_output, show_input)
        if status is None:
            raise ApiError(404, f"no instance with id '{instance_id}'")
        payload = _status_payload(status)
        state = status.runtime_status
        if state in _RUNNING:
            location = self._base_url(call.request) + "/".join(quote(s, safe="") for s in call.segments)
            if call.request.query:
                location += "?" + urlencode(dict(call.request.query), errors="replace")
            return ApiResponse.json(202, payload, {"Location": location, "Retry-After": STATUS_RETRY_AFTER})
        # Failed is 200 unless the caller asks for 500 (documented; the extension does the same)
        return ApiResponse.json(500 if state == Status.Failed and fail_with_500 else 200, payload)

    async def _list(self, call: _Call) -> ApiResponse:
        top = _int(call, "top", DEFAULT_PAGE_SIZE)
        result = await self.client.list_instances(
            created_time_from=_date(call, "createdTimeFrom"),
            created_time_to=_date(call, "createdTimeTo"),
            runtime_status=_statuses(call),
            instance_id_prefix=call.query.get("instanceidprefix") or None,
            page_size=min(top, MAX_PAGE_SIZE),
            continuation_token=_decode_token(call.headers.get(CONTINUATION_HEADER)),
            show_input=_bool(call, "showInput", True),
        )
        headers = {}
        if result.continuation_token:
            headers[CONTINUATION_HEADER] = _encode_token(result.continuation_token)
        return ApiResponse.json(200, [_status_payload(s) for s in result.statuses], headers)

    async def _purge(self, instance_id: str) -> ApiResponse:
        validate_instance_id(instance_id)
        if is_entity_instance(instance_id):
            # the extension purges entities here, whatever their state (they never finish)
            purged = await self.client.purge_instance_history(instance_id)
            if not purged.instances_deleted:
                raise ApiError(404, f"no entity with id '{instance_id}'")
            return ApiResponse.json(200, {"instancesDeleted": purged.instances_deleted})
        status = await self.client.get_status(instance_id)
        if status is None:
            raise ApiError(404, f"no instance with id '{instance_id}'")
        if not status.runtime_status.is_terminal:
            # the extension answers 412 here: purging a live instance would lose its work
            raise ApiError(
                412,
                f"only finished instances can be purged; '{instance_id}' is "
                f"{status.runtime_status.value} (terminate it first)",
            )
        result = await self.client.purge_instance_history(instance_id)
        if not result.instances_deleted:
            raise ApiError(404, f"no instance with id '{instance_id}'")
        return ApiResponse.json(200, {"instancesDeleted": result.instances_deleted})

    async def _purge_by(self, call: _Call) -> ApiResponse:
        created_from = _date(call, "createdTimeFrom")
        if created_from is None:
            raise ApiError(400, "purging by filter needs createdTimeFrom (an ISO 8601 timestamp)")
        requested = _statuses(call)
        # only finished instances are purged, whatever the filter says
        statuses = sorted(_TERMINAL & set(requested) if requested else _TERMINAL, key=lambda s: s.value)
        deleted = 0
        if statuses:
            result = await self.client.purge_instance_history_by(
                created_from, _date(call, "createdTimeTo"), statuses
            )
            deleted = result.instances_deleted
        if not deleted:
            raise ApiError(404, "no finished instances match the filter")
        return ApiResponse.json(200, {"instancesDeleted": deleted})

    async def _raise_event(self, call: _Call, instance_id: str, event_name: str) -> ApiResponse:
        if not event_name:
            raise ApiError(400, "the event name in raiseEvent/{eventName} is empty")
        await self._require_active(instance_id, "can no longer receive events")
        data = _json_content(call, "event data", f"data of event '{event_name}'")
        await self.client.raise_event(instance_id, event_name, data)
        return ApiResponse(202)

    async def _terminate(self, call: _Call, instance_id: str) -> ApiResponse:
        await self._require_active(instance_id, "cannot be terminated")
        await self.client.terminate(instance_id, call.query.get("reason"))
        return ApiResponse(202)

    async def _suspend(self, call: _Call, instance_id: str) -> ApiResponse:
        await self._require_active(instance_id, "cannot be suspended")
        await self.client.suspend(instance_id, call.query.get("reason"))
        return ApiResponse(202)

    async def _resume(self, call: _Call, instance_id: str) -> ApiResponse:
        await self._require_active(instance_id, "cannot be resumed")
        await self.client.resume(instance_id, call.query.get("reason"))
        return ApiResponse(202)

    async def _restart(self, call: _Call, instance_id: str) -> ApiResponse:
        _orchestration_id(instance_id)
        new_id = _bool(call, "restartWithNewInstanceId", True)
        restarted = await self.client.restart(instance_id, new_id)
        return self._check_status_response(call, restarted)

    async def _rewind(self, call: _Call, instance_id: str) -> ApiResponse:
        status = await self._require(instance_id)
        if status.runtime_status != Status.Failed:
            raise ApiError(
                410,
                f"only failed instances can be rewound; '{instance_id}' is {status.runtime_status.value}",
            )
        await self.client.rewind(instance_id, call.query.get("reason") or "")
        return ApiResponse(202)

    async def _signal_entity(self, call: _Call, entity: EntityId, operation: str | None) -> ApiResponse:
        if self.registry is not None and self.registry.find("entity", entity.name) is None:
            raise ApiError(404, f"no entity function named '{entity.name}' is registered in this app")
        if operation is None:
            operation = call.query.get("op") or ""  # optional; the extension sends "" without it
        data = _json_content(call, "the operation input", f"input of operation '{operation}'")
        await self.client.signal_entity(entity, operation, data)
        return ApiResponse(202)

    async def _entity_state(self, entity: EntityId) -> ApiResponse:
        response = await self.client.read_entity_state(entity)
        if not response.entity_exists:
            raise ApiError(404, f"no entity with id '{entity}' (never signaled, or deleted)")
        return ApiResponse.json(200, response.entity_state)

    async def _list_entities(self, call: _Call, name: str | None) -> ApiResponse:
        if name is not None:
            _entity_name(name)
        top = _int(call, "top", DEFAULT_PAGE_SIZE)
        fetch_state = _bool(call, "fetchState", False)
        after = _date(call, "lastOperationTimeFrom")
        before = _date(call, "lastOperationTimeTo")
        result = await self.client.list_entities(
            name or None,
            fetch_state=fetch_state,
            page_size=min(top, MAX_PAGE_SIZE),
            continuation_token=_decode_token(call.headers.get(CONTINUATION_HEADER)),
        )
        entities = [
            e
            for e in result.entities
            if (after is None or e.last_operation_time >= after)
            and (before is None or e.last_operation_time <= before)
        ]
        headers = {}
        if result.continuation_token:
            headers[CONTINUATION_HEADER] = _encode_token(result.continuation_token)
        return ApiResponse.json(200, [e.to_json() for e in entities], headers)

    # ------------------------------------------------------------------ helpers

    async def _require(self, instance_id: str) -> DurableOrchestrationStatus:
        _orchestration_id(instance_id)
        status = await self.client.get_status(instance_id)
        if status is None:
            raise ApiError(404, f"no instance with id '{instance_id}'")
        return status

    async def _require_active(self, instance_id: str, what: str) -> None:
        status = await self._require(instance_id)
        if status.runtime_status.is_terminal:
            raise ApiError(410, f"instance '{instance_id}' is {status.runtime_status.value} and {what}")

    def _base_url(self, request: ApiRequest) -> str:
        if self._base_url_builder is not None:
            base = self._base_url_builder(request)
            return base if base.endswith("/") else base + "/"
        return request.origin.rstrip("/") + self.base_path

    def _check_status_response(self, call: _Call, instance_id: str) -> ApiResponse:
        params = {}
        if self.task_hub:
            params["taskHub"] = self.task_hub
        if self.function_key:
            params["code"] = self.function_key
        base = self._base_url(call.request)
        if params:
            base += "?" + urlencode(params)
        payload = self.client.create_http_management_payload(instance_id, base)
        headers = {"Location": payload["statusQueryGetUri"], "Retry-After": CHECK_STATUS_RETRY_AFTER}
        return ApiResponse.json(202, payload, headers)


# ------------------------------------------------------------------------------ parsing


def decode_json_body(body: bytes, what: str = "request body") -> Any:
    """The JSON value of a request body (``None`` when empty), unwrapping double encoding.

    The official Python client serializes a payload to JSON text and hands that
    *string* to aiohttp's ``json=``, which encodes it again: starting with
    ``{"a": 1}`` sends the body ``"{\\"a\\": 1}"``. Its orchestrator context
    undoes this by decoding a string input a second time. The rule here does
    the same, deliberately: when the body is a JSON string whose content is
    itself valid JSON, the inner value is used; any other string stays a
    string. So ``"{\\"a\\": 1}"`` means ``{"a": 1}`` and ``"hello"`` means
    ``"hello"``; a client that wants the literal string ``"42"`` (text that
    parses as JSON) sends it encoded twice: ``"\\"42\\""``.
    """
    if not body.strip():
        return None
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"{what} is not valid JSON: {exc}") from None
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _json_content(call: _Call, what: str, payload: str) -> Any:
    """A JSON request body (raiseEvent, signal): ``Content-Type: application/json`` when not empty."""
    body = call.request.body
    if body.strip():
        media = call.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            raise ApiError(400, f"{what} must be sent as Content-Type: application/json")
    return decode_json_body(body, payload)


def _entity_name(name: str) -> str:
    """The name of an ``entities/{name}`` route; 400 for a name an entity id cannot hold."""
    if not name.strip():
        raise ApiError(400, "the entity name in entities/{entityName} is empty")
    if "@" in name:
        raise ApiError(400, f"entity name {name!r} must not contain '@'")
    try:
        validate_instance_id(name)
    except InvalidInstanceIdError as exc:
        raise ApiError(400, f"invalid entity name: {exc}") from None
    return name


def _entity_id(name: str, key: str) -> EntityId:
    """The entity of an ``entities/{name}/{key}`` route; 400 for a name or key storage cannot take."""
    _entity_name(name)
    if not key:
        raise ApiError(400, "the entity key in entities/{entityName}/{entityKey} is empty")
    entity = EntityId(name, key)
    try:
        validate_instance_id(key)
    except InvalidInstanceIdError as exc:
        raise ApiError(400, f"invalid entity key: {exc}") from None
    try:
        validate_instance_id(str(entity))  # name and key fit, but together they may be too long
    except InvalidInstanceIdError as exc:
        raise ApiError(400, f"invalid entity id: {exc}") from None
    return entity


def _orchestration_id(instance_id: str) -> str:
    """A valid orchestration instance id; an entity's id (``@name@key``) is a 404 here."""
    validate_instance_id(instance_id)
    if is_entity_instance(instance_id):
        raise ApiError(
            404,
            f"'{instance_id}' is an entity, not an orchestration instance; "
            "use entities/{entityName}/{entityKey}",
        )
    return instance_id


def _status_payload(status: DurableOrchestrationStatus) -> dict[str, Any]:
    """The documented status JSON; history events get their type names and JSON payloads."""
    payload = status.to_json()
    if status.history is not None:
        payload["historyEvents"] = [_history_event(e) for e in status.history]
    return payload


def _history_event(event: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(event)
    kind = out.get("EventType")
    if isinstance(kind, int):
        with contextlib.suppress(ValueError):
            out["EventType"] = EventType(kind).name
    for key in ("Input", "Result"):
        text = out.get(key)
        if isinstance(text, str):
            with contextlib.suppress(orjson.JSONDecodeError):
                out[key] = orjson.loads(text)
    return out


def _segment(raw: str) -> str:
    try:
        text = unquote(raw, errors="strict")
        text.encode("utf-8")
    except UnicodeError:
        raise ApiError(400, f"path segment {raw!r} is not valid UTF-8 percent-encoding") from None
    return text


def _utf8(value: Any, where: str) -> str:
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeError:
        raise ApiError(400, f"the {where} is not valid UTF-8") from None
    return text


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise ApiError(
            405,
            f"method {method} is not allowed here; use {' or '.join(allowed)}",
            {"Allow": ", ".join(allowed)},
        )


def _bool(call: _Call, name: str, default: bool) -> bool:
    value = call.query.get(name.lower())
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise ApiError(400, f"query parameter {name} must be true or false, got {value!r}")


def _int(call: _Call, name: str, default: int) -> int:
    value = call.query.get(name.lower())
    if value is None or value == "":
        return default
    if not _DIGITS.fullmatch(value.strip()) or int(value) < 1:
        raise ApiError(400, f"query parameter {name} must be a whole number of at least 1, got {value!r}")
    return int(value)


def _date(call: _Call, name: str) -> datetime | None:
    value = call.query.get(name.lower())
    if value is None or not value.strip():
        return None
    text = value.strip()
    dash = text.find("-")
    if 0 < dash < 4 and text[:dash].isdigit():
        # Python's strftime writes year 1 as "1" on Linux (the official client's datetime.min)
        text = text[:dash].zfill(4) + text[dash:]
    try:
        if len(text) > 64:
            raise ValueError(text)
        return parse_timestamp(text)
    except (ValueError, OverflowError, IndexError):
        raise ApiError(
            400,
            f"query parameter {name} must be an ISO 8601 time (e.g. 2024-05-01T12:00:00Z), got {value!r}",
        ) from None


def _statuses(call: _Call) -> list[Status] | None:
    value = call.query.get("runtimestatus")
    if value is None or not value.strip():
        return None
    out: list[Status] = []
    for part in value.split(","):
        name = part.strip()
        if not name:
            continue
        status = _STATUS_BY_NAME.get(name.lower())
        if status is None:
            known = ", ".join(s.value for s in Status)
            raise ApiError(400, f"unknown runtimeStatus {name!r}; use a comma-separated list of: {known}")
        out.append(status)
    return out or None


def _encode_token(token: str) -> str:
    """Continuation tokens are base64url in the header: backend tokens may be any text."""
    return base64.urlsafe_b64encode(token.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_token(header: str | None) -> str | None:
    if header is None or not header.strip():
        return None
    text = header.strip()
    try:
        if len(text) > _MAX_TOKEN_LENGTH:
            raise ValueError(text)
        token = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
        if not token:
            raise ValueError(text)
        return token.decode("utf-8")
    except (ValueError, binascii.Error):
        raise ApiError(
            400, f"the {CONTINUATION_HEADER} header is not a token this API returned; drop it to start over"
        ) from None


def _join_repeated(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in pairs:
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _dumps(payload: Any) -> bytes:
    try:
        return orjson.dumps(payload)
    except TypeError:  # e.g. lone surrogates in text echoed back: stdlib json escapes them
        return json.dumps(payload, default=str).encode("ascii")


# ------------------------------------------------------------------------------ adapters


def from_func_request(request: func.HttpRequest) -> ApiRequest:
    """An Azure Functions HTTP trigger's request as an ``ApiRequest``."""
    return ApiRequest.from_url(request.method, request.url, dict(request.headers), request.get_body() or b"")


def to_func_response(response: ApiResponse) -> func.HttpResponse:
    """An ``ApiResponse`` as the ``func.HttpResponse`` an HTTP trigger returns."""
    headers = dict(response.headers)
    content_type = next((headers.pop(k) for k in list(headers) if k.lower() == "content-type"), None)
    mimetype = content_type.split(";", 1)[0].strip() if content_type else None
    return func.HttpResponse(
        body=response.body,
        status_code=response.status,
        headers=headers,
        mimetype=mimetype,
        charset="utf-8" if mimetype else None,
    )


def aiohttp_app(api: ManagementApi, *, client_max_size: int = 1024**2) -> web.Application:
    """An aiohttp application serving ``api`` on every path (bodies up to ``client_max_size``)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            body = await request.read()
        except web.HTTPException as exc:  # e.g. 413 for a body over client_max_size
            answer = error_response(exc.status, exc.reason)
        else:
            answer = await api.handle(
                ApiRequest(
                    method=request.method,
                    path=request.rel_url.raw_path,
                    query=_join_repeated(request.rel_url.query.items()),
                    headers=dict(request.headers),
                    body=body,
                    origin=f"{request.scheme}://{request.host}",
                )
            )
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    app = web.Application(client_max_size=client_max_size)
    app.router.add_route("*", r"/{tail:[\s\S]*}", handler)  # any path, decoded newlines included
    return app


def official_client_binding(
    rpc_base_url: str,
    *,
    task_hub: str = "DurableFunctionsHub",
    management_base_url: str | None = None,
    function_key: str | None = None,
) -> str:
    """The binding JSON ``azure.durable_functions.DurableOrchestrationClient`` is built from.

    The official client calls ``rpc_base_url`` + ``instances/...`` with no key, as
    it does the extension's loopback RPC endpoint: point it at a ManagementApi
    without a function key that listens on 127.0.0.1 only. The management URLs
    it hands out (``create_check_status_response``) use ``management_base_url``
    (default: ``rpc_base_url``) and carry ``code=function_key`` when given.
    """
    rpc = rpc_base_url if rpc_base_url.endswith("/") else rpc_base_url + "/"
    public = management_base_url or rpc
    public = public if public.endswith("/") else public + "/"
    query = urlencode({"taskHub": task_hub, **({"code": function_key} if function_key else {})})
    placeholder = "INSTANCEID"
    instance = f"{public}instances/{placeholder}"
    create = f"{public}orchestrators/{{functionName}}[/{{instanceId}}]"
    return json.dumps(
        {
            "taskHubName": task_hub,
            "creationUrls": {
                "createNewInstancePostUri": f"{create}?{query}",
                "createAndWaitOnNewInstancePostUri": (
                    f"{create}?timeout={{timeoutInSeconds}}&pollingInterval={{intervalInSeconds}}&{query}"
                ),
            },
            "managementUrls": {
                "id": placeholder,
                "statusQueryGetUri": f"{instance}?{query}",
                "sendEventPostUri": f"{instance}/raiseEvent/{{eventName}}?{query}",
                "terminatePostUri": f"{instance}/terminate?reason={{text}}&{query}",
                "rewindPostUri": f"{instance}/rewind?reason={{text}}&{query}",
                "purgeHistoryDeleteUri": f"{instance}?{query}",
                "restartPostUri": f"{instance}/restart?{query}",
                "suspendPostUri": f"{instance}/suspend?reason={{text}}&{query}",
                "resumePostUri": f"{instance}/resume?reason={{text}}&{query}",
            },
            "baseUrl": public.rstrip("/"),
            "requiredQueryStringParameters": urlencode({"code": function_key}) if function_key else "",
            "rpcBaseUrl": rpc,
        }
    )
