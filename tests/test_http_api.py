"""The management HTTP API over real HTTP on 127.0.0.1.

Every route and status code, paging with continuation tokens, function keys,
bad input (a table and a hypothesis fuzz: never a 500), the Functions adapters,
the client's check-status helpers, and the official ``azure-functions-durable``
client driven unchanged against the API.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
import azure.durable_functions as official
import azure.functions as func
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from azure.durable_functions.models.utils import http_utils as official_http
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from yarl import URL

import durable_ext as df
from durable_ext.http_api import (
    ApiRequest,
    ManagementApi,
    aiohttp_app,
    decode_json_body,
    from_func_request,
    official_client_binding,
    to_func_response,
)
from durable_ext.testing import DurableTestEnv

Status = df.OrchestrationRuntimeStatus
app = df.DurableApp()


@app.activity_trigger(input_name="city")
def say_hello(city: str) -> str:
    return f"Hello {city}!"


@app.orchestration_trigger(context_name="context")
def sequence(context: df.DurableOrchestrationContext):
    out = []
    for city in context.get_input() or ["Tokyo", "Seattle", "London"]:
        out.append((yield context.call_activity("say_hello", city)))
    return out


@app.orchestration_trigger(context_name="context")
def approval(context: df.DurableOrchestrationContext):
    context.set_custom_status("waiting")
    answer = yield context.wait_for_external_event("Approval")
    return {"input": context.get_input(), "approval": answer}


@app.orchestration_trigger(context_name="context")
def failing(context: df.DurableOrchestrationContext):
    yield context.call_activity("say_hello", "nowhere")
    raise RuntimeError("deliberate failure")


@app.orchestration_trigger(context_name="context")
def echo(context: df.DurableOrchestrationContext):
    return context.get_input()


#: Instance ids whose ``needs_fix`` activity fails until the test removes them.
BROKEN: set[str] = set()


@app.activity_trigger(input_name="key")
def needs_fix(key: str) -> str:
    if key in BROKEN:
        raise RuntimeError(f"{key} is broken")
    return f"{key} fixed"


@app.orchestration_trigger(context_name="context")
def rewindable(context: df.DurableOrchestrationContext):
    greeting = yield context.call_activity("say_hello", "Oslo")
    fixed = yield context.call_activity("needs_fix", context.instance_id)
    return [greeting, fixed]


async def rewound(env: DurableTestEnv, instance_id: str, previous: str) -> df.DurableOrchestrationStatus:
    """Run until a rewound instance finished its new execution."""

    async def check() -> df.DurableOrchestrationStatus | None:
        record = await env.backend.get_instance(instance_id)
        if record is None or record.execution_id == previous or not record.status.is_terminal:
            return None
        return await env.client.get_status(instance_id)

    return await env._drive(check, 30.0, True, f"rewind of '{instance_id}'")


async def failed_rewindable(env: DurableTestEnv, instance_id: str) -> str:
    """Start ``rewindable`` broken, wait until it failed, fix it; returns the failed execution id."""
    BROKEN.add(instance_id)
    await env.client.start_new("rewindable", instance_id)
    assert (await env.wait_for_completion(instance_id)).runtime_status == Status.Failed
    BROKEN.discard(instance_id)
    record = await env.backend.get_instance(instance_id)
    assert record is not None
    return record.execution_id


PAYLOAD_KEYS = {
    "id",
    "statusQueryGetUri",
    "sendEventPostUri",
    "terminatePostUri",
    "rewindPostUri",
    "purgeHistoryDeleteUri",
    "restartPostUri",
    "suspendPostUri",
    "resumePostUri",
}


# ------------------------------------------------------------------------------ harness


@dataclass
class Reply:
    status: int
    headers: Any
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw) if self.raw else None


@dataclass
class Served:
    """A DurableTestEnv behind a real aiohttp server; ``base`` ends with ``/api/durabletask/``."""

    env: DurableTestEnv
    http: aiohttp.ClientSession
    origin: str
    base: str

    async def call(
        self,
        method: str,
        path: str,
        *,
        data: bytes | io.BytesIO | None = None,
        json_value: Any = ...,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        url = (
            path
            if path.startswith("http")
            else (self.origin + path if path.startswith("/") else self.base + path)
        )
        headers = dict(headers or {})
        if json_value is not ...:
            data = json.dumps(json_value).encode()
            headers.setdefault("Content-Type", "application/json")
        async with self.http.request(method, URL(url, encoded=True), data=data, headers=headers) as resp:
            return Reply(resp.status, resp.headers, await resp.read())

    async def start(self, name: str, value: Any = None, instance_id: str | None = None) -> str:
        path = f"orchestrators/{name}" + (f"/{quote(instance_id, safe='')}" if instance_id else "")
        reply = await self.call("POST", path, json_value=value)
        assert reply.status == 202, reply.raw
        return reply.json["id"]


@asynccontextmanager
async def serve(env: DurableTestEnv, **options: Any) -> AsyncIterator[Served]:
    api = ManagementApi(env.client, registry=env.registry, **options)
    server = TestServer(aiohttp_app(api), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            origin = str(server.make_url("")).rstrip("/")
            yield Served(env, session, origin, origin + "/api/durabletask/")
    finally:
        await server.close()


@pytest.fixture
async def env() -> AsyncIterator[DurableTestEnv]:
    async with DurableTestEnv(app) as environment:
        yield environment


@pytest.fixture
async def served(env: DurableTestEnv) -> AsyncIterator[Served]:
    async with serve(env) as s:
        yield s


def assert_error(reply: Reply, status: int, fragment: str = "") -> None:
    assert reply.status == status, (reply.status, reply.raw)
    assert reply.headers["Content-Type"].startswith("application/json")
    body = reply.json
    assert isinstance(body["error"], str) and body["error"]
    assert fragment.lower() in body["error"].lower(), body["error"]


# ------------------------------------------------------------------------------ start


async def test_start_returns_the_check_status_payload(served: Served) -> None:
    reply = await served.call("POST", "orchestrators/sequence", json_value=["Paris", "Rome"])
    assert reply.status == 202
    payload = reply.json
    assert set(payload) == PAYLOAD_KEYS
    iid = payload["id"]
    instance = f"{served.base}instances/{iid}"
    assert payload["statusQueryGetUri"] == instance
    assert payload["sendEventPostUri"] == f"{instance}/raiseEvent/{{eventName}}"
    assert payload["terminatePostUri"] == f"{instance}/terminate?reason={{text}}"
    assert payload["rewindPostUri"] == f"{instance}/rewind?reason={{text}}"
    assert payload["purgeHistoryDeleteUri"] == instance
    assert payload["restartPostUri"] == f"{instance}/restart"
    assert payload["suspendPostUri"] == f"{instance}/suspend?reason={{text}}"
    assert payload["resumePostUri"] == f"{instance}/resume?reason={{text}}"
    assert reply.headers["Location"] == payload["statusQueryGetUri"]
    assert reply.headers["Retry-After"] == "10"
    await served.env.wait_for_completion(iid)
    status = await served.call("GET", payload["statusQueryGetUri"])
    assert status.status == 200
    assert status.json["output"] == ["Hello Paris!", "Hello Rome!"]
    assert status.json["input"] == ["Paris", "Rome"]
    assert status.json["name"] == "sequence"


async def test_start_with_an_instance_id_and_conflict(served: Served) -> None:
    reply = await served.call("POST", "orchestrators/approval/order-%C3%A9t%C3%A9", json_value=1)
    assert reply.status == 202
    assert reply.json["id"] == "order-été"
    assert reply.json["statusQueryGetUri"].endswith("/instances/order-%C3%A9t%C3%A9")
    again = await served.call("POST", "orchestrators/approval/order-%C3%A9t%C3%A9", json_value=2)
    assert_error(again, 409, "order-été")
    # a trailing slash is the same route; no id means a generated one
    fresh = await served.call("POST", "orchestrators/echo/", json_value="x")
    assert fresh.status == 202 and len(fresh.json["id"]) == 32


async def test_start_bad_requests(served: Served) -> None:
    assert_error(
        await served.call("POST", "orchestrators/nope"), 400, "no orchestrator function named 'nope'"
    )
    assert_error(await served.call("POST", "orchestrators/echo", data=b"{oops"), 400, "not valid JSON")
    assert_error(await served.call("POST", "orchestrators/echo/a%23b"), 400, "may not contain")
    assert_error(await served.call("POST", "orchestrators/echo/" + "x" * 257), 400, "limit is 256")
    assert_error(await served.call("GET", "orchestrators/echo"), 405, "POST")
    assert await served.env.client.get_status_all() == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", None),
        (b"42", 42),
        (b'{"a": 1}', {"a": 1}),
        (b'"hello"', "hello"),  # a JSON string that is not JSON text stays a string
        (json.dumps(json.dumps({"a": [1, 2]})).encode(), {"a": [1, 2]}),  # the official client's encoding
        (json.dumps(json.dumps("42")).encode(), "42"),  # a string holding JSON text: encode it twice
        (b'"null"', None),
    ],
)
async def test_start_input_decoding(served: Served, body: bytes, expected: Any) -> None:
    assert decode_json_body(body) == expected
    iid = await served.call(
        "POST", "orchestrators/echo", data=body, headers={"Content-Type": "application/json"}
    )
    status = await served.env.wait_for_completion(iid.json["id"])
    assert status.output == expected


# ------------------------------------------------------------------------------ status


async def test_status_codes_follow_the_runtime_status(served: Served) -> None:
    env = served.env
    waiting = await served.start("approval", "in", "waiting-1")
    await env.wait_for_status(waiting, lambda s: s.custom_status == "waiting")
    running = await served.call("GET", "instances/waiting-1?showInput=true")
    assert running.status == 202
    assert running.headers["Retry-After"] == "5"
    assert running.headers["Location"] == f"{served.base}instances/waiting-1?showInput=true"
    body = running.json
    assert body["runtimeStatus"] == "Running" and body["customStatus"] == "waiting"
    assert body["input"] == "in" and body["output"] is None
    assert body["instanceId"] == "waiting-1" and body["name"] == "approval"
    assert body["createdTime"].endswith("Z") and body["lastUpdatedTime"].endswith("Z")
    assert "historyEvents" not in body

    assert (await served.call("GET", "instances/waiting-1?showInput=false")).json["input"] is None

    assert (await served.call("POST", "instances/waiting-1/suspend")).status == 202
    await env.wait_for_status(waiting, lambda s: s.runtime_status == Status.Suspended)
    suspended = await served.call("GET", "instances/waiting-1")
    assert (suspended.status, suspended.json["runtimeStatus"]) == (202, "Suspended")

    assert (await served.call("POST", "instances/waiting-1/terminate?reason=enough")).status == 202
    await env.wait_for_completion(waiting)
    terminated = await served.call("GET", "instances/waiting-1")
    assert (terminated.status, terminated.json["runtimeStatus"]) == (200, "Terminated")
    assert "Location" not in terminated.headers

    failed_id = await served.start("failing")
    await env.wait_for_completion(failed_id)
    failed = await served.call("GET", f"instances/{failed_id}")
    assert (failed.status, failed.json["runtimeStatus"]) == (200, "Failed")  # documented: 200
    assert "deliberate failure" in failed.json["output"]
    asked = await served.call("GET", f"instances/{failed_id}?returnInternalServerErrorOnFailure=true")
    assert (asked.status, asked.json["runtimeStatus"]) == (500, "Failed")  # documented opt-in

    assert_error(await served.call("GET", "instances/nobody"), 404, "nobody")


async def test_status_with_history(served: Served) -> None:
    iid = await served.start("sequence", ["Oslo"])
    await served.env.wait_for_completion(iid)
    plain = (await served.call("GET", f"instances/{iid}?showHistory=true")).json
    kinds = [e["EventType"] for e in plain["historyEvents"]]
    assert kinds[0] == "OrchestratorStarted" and kinds[-1] == "ExecutionCompleted"
    assert "ExecutionStarted" in kinds and "TaskCompleted" in kinds
    assert all("Result" not in e for e in plain["historyEvents"])
    full = await served.call("GET", f"instances/{iid}?showHistory=True&showHistoryOutput=TRUE")
    completed = [e for e in full.json["historyEvents"] if e["EventType"] == "TaskCompleted"]
    assert completed[0]["Result"] == "Hello Oslo!"
    finished = [e for e in full.json["historyEvents"] if e["EventType"] == "ExecutionCompleted"]
    assert finished[0]["Result"] == ["Hello Oslo!"]


# ------------------------------------------------------------------------------ list


async def populate(served: Served) -> dict[str, datetime]:
    """batch-a-1 completed, batch-a-2 running, batch-b-1 failed, other-1 completed: an hour apart."""
    env = served.env
    created: dict[str, datetime] = {}
    for name, iid in [
        ("echo", "batch-a-1"),
        ("approval", "batch-a-2"),
        ("failing", "batch-b-1"),
        ("echo", "other-1"),
    ]:
        await served.start(name, 1, iid)
        await env.run_until_idle()
        created[iid] = (await env.client.get_status(iid)).created_time
        env.clock.advance(timedelta(hours=1))
    return created


def ids(reply: Reply) -> list[str]:
    assert reply.status == 200, reply.raw
    return sorted(s["instanceId"] for s in reply.json)


async def test_list_with_filters(served: Served) -> None:
    created = await populate(served)
    everything = await served.call("GET", "instances/")
    assert ids(everything) == ["batch-a-1", "batch-a-2", "batch-b-1", "other-1"]
    assert "x-ms-continuation-token" not in everything.headers
    assert all(s["input"] == 1 for s in everything.json)
    assert ids(await served.call("GET", "instances")) == ids(everything)  # no trailing slash either
    no_input = await served.call("GET", "instances/?showInput=false")
    assert all(s["input"] is None for s in no_input.json)

    assert ids(await served.call("GET", "instances/?runtimeStatus=Running")) == ["batch-a-2"]
    finished = await served.call("GET", "instances/?runtimeStatus=Completed,failed")
    assert ids(finished) == ["batch-a-1", "batch-b-1", "other-1"]
    assert ids(await served.call("GET", "instances/?runtimeStatus=Completed&runtimeStatus=Running")) == [
        "batch-a-1",
        "batch-a-2",
        "other-1",
    ]
    assert ids(await served.call("GET", "instances/?instanceIdPrefix=batch-a")) == ["batch-a-1", "batch-a-2"]

    middle = created["batch-b-1"]
    window = urlencode(
        {
            "createdTimeFrom": (middle - timedelta(minutes=1)).isoformat(),
            "createdTimeTo": (middle + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
    )
    assert ids(await served.call("GET", f"instances/?{window}")) == ["batch-b-1"]
    later = urlencode({"createdTimeFrom": middle.isoformat().replace("+00:00", "Z")})
    assert ids(await served.call("GET", f"instances/?{later}")) == ["batch-b-1", "other-1"]


async def test_list_pages_with_continuation_tokens(served: Served) -> None:
    for n in range(7):
        await served.env.client.start_new("echo", f"page-{n}", n)
    await served.env.client.start_new("echo", "zzz-not-in-prefix", 0)
    await served.env.run_until_idle()
    seen: list[str] = []
    sizes: list[int] = []
    token = None
    for _ in range(10):
        headers = {"x-ms-continuation-token": token} if token else {}
        reply = await served.call("GET", "instances/?top=3&instanceIdPrefix=page-", headers=headers)
        assert reply.status == 200
        seen += [s["instanceId"] for s in reply.json]
        sizes.append(len(reply.json))
        token = reply.headers.get("x-ms-continuation-token")
        if not token:
            break
    assert sizes == [3, 3, 1]
    assert sorted(seen) == [f"page-{n}" for n in range(7)] and len(set(seen)) == 7
    bad = await served.call("GET", "instances/?top=3", headers={"x-ms-continuation-token": "%%%not-a-token"})
    assert_error(bad, 400, "x-ms-continuation-token")


# ------------------------------------------------------------------------------ operations


async def test_raise_event(served: Served) -> None:
    env = served.env
    iid = await served.start("approval", "in", "needs-ok")
    await env.wait_for_status(iid, lambda s: s.custom_status == "waiting")
    text = await served.call("POST", f"instances/{iid}/raiseEvent/Approval", data=b'"x"')
    assert_error(text, 400, "application/json")
    broken = await served.call(
        "POST",
        f"instances/{iid}/raiseEvent/Approval",
        data=b"{",
        headers={"Content-Type": "application/json"},
    )
    assert_error(broken, 400, "not valid JSON")
    ok = await served.call("POST", f"instances/{iid}/raiseEvent/Approval", json_value={"by": "me"})
    assert (ok.status, ok.raw) == (202, b"")
    status = await env.wait_for_completion(iid)
    assert status.output == {"input": "in", "approval": {"by": "me"}}
    gone = await served.call("POST", f"instances/{iid}/raiseEvent/Approval", json_value=1)
    assert_error(gone, 410, "Completed")
    assert_error(await served.call("POST", "instances/ghost/raiseEvent/Approval", json_value=1), 404, "ghost")
    assert_error(await served.call("GET", f"instances/{iid}/raiseEvent/Approval"), 405)


async def test_terminate_suspend_resume(served: Served) -> None:
    env = served.env
    iid = await served.start("approval", None, "lifecycle")
    await env.wait_for_status(iid, lambda s: s.custom_status == "waiting")
    assert (await served.call("POST", f"instances/{iid}/suspend?reason=pause")).status == 202
    await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Suspended)
    assert (await served.call("POST", f"instances/{iid}/resume?reason=go")).status == 202
    await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Running)
    assert (await served.call("POST", f"instances/{iid}/terminate?reason=no%20longer%20needed")).status == 202
    status = await env.wait_for_completion(iid)
    assert (status.runtime_status, status.output) == (Status.Terminated, "no longer needed")
    for operation in ("terminate", "suspend", "resume"):
        assert_error(await served.call("POST", f"instances/{iid}/{operation}"), 410, "Terminated")
        assert_error(await served.call("POST", f"instances/ghost/{operation}"), 404, "ghost")
        assert_error(await served.call("GET", f"instances/{iid}/{operation}"), 405)
    assert_error(await served.call("POST", f"instances/{iid}/explode"), 404, "no route")


async def test_restart(served: Served) -> None:
    env = served.env
    iid = await served.start("sequence", ["Lima"], "first")
    await env.wait_for_completion(iid)
    fresh = await served.call("POST", "instances/first/restart")
    assert fresh.status == 202 and set(fresh.json) == PAYLOAD_KEYS
    assert fresh.json["id"] != "first" and fresh.headers["Location"] == fresh.json["statusQueryGetUri"]
    assert (await env.wait_for_completion(fresh.json["id"])).output == ["Hello Lima!"]
    same = await served.call("POST", "instances/first/restart?restartWithNewInstanceId=false")
    assert same.status == 202 and same.json["id"] == "first"
    assert (await env.wait_for_completion("first")).output == ["Hello Lima!"]
    await served.start("approval", None, "busy")
    assert_error(
        await served.call("POST", "instances/busy/restart?restartWithNewInstanceId=false"), 409, "busy"
    )
    assert_error(await served.call("POST", "instances/ghost/restart"), 404, "ghost")
    assert_error(
        await served.call("POST", "instances/first/restart?restartWithNewInstanceId=yes"), 400, "true or"
    )


async def test_rewind(served: Served) -> None:
    env = served.env
    previous = await failed_rewindable(env, "rw-http")
    reply = await served.call("POST", "instances/rw-http/rewind?reason=fixed%20it")
    assert reply.status == 202, reply.raw
    done = await rewound(env, "rw-http", previous)
    assert done.runtime_status == Status.Completed
    assert done.output == ["Hello Oslo!", "rw-http fixed"]
    history = await env.backend.get_history("rw-http")
    assert [e.get("Reason") for e in history if e.get("Name") == "ExecutionRewound"] == ["fixed it"]
    # the instance is Completed now: a second rewind is refused
    assert_error(await served.call("POST", "instances/rw-http/rewind?reason=again"), 410, "only failed")
    done = await served.start("echo", 1)
    await served.env.wait_for_completion(done)
    assert_error(await served.call("POST", f"instances/{done}/rewind"), 410, "only failed")
    assert_error(await served.call("POST", "instances/ghost/rewind"), 404, "ghost")
    assert_error(await served.call("GET", "instances/rw-http/rewind"), 405)


async def test_purge_one(served: Served) -> None:
    iid = await served.start("echo", 1, "purge-me")
    await served.env.wait_for_completion(iid)
    reply = await served.call("DELETE", "instances/purge-me")
    assert (reply.status, reply.json) == (200, {"instancesDeleted": 1})
    assert_error(await served.call("DELETE", "instances/purge-me"), 404, "purge-me")
    assert_error(await served.call("GET", "instances/purge-me"), 404)
    await served.start("approval", None, "alive")
    assert_error(await served.call("DELETE", "instances/alive"), 412, "terminate it first")
    assert (await served.env.client.get_status("alive")) is not None


async def test_purge_by_filter(served: Served) -> None:
    created = await populate(served)
    assert_error(await served.call("DELETE", "instances/"), 400, "createdTimeFrom")
    cutoff = created["batch-b-1"].isoformat()
    query = urlencode({"createdTimeFrom": "2000-01-01T00:00:00Z", "createdTimeTo": cutoff})
    reply = await served.call("DELETE", f"instances/?{query}&runtimeStatus=Completed,Failed,Running")
    assert (reply.status, reply.json) == (
        200,
        {"instancesDeleted": 2},
    )  # batch-a-1 and batch-b-1; never Running
    assert [s.instance_id for s in await served.env.client.get_status_all()] == ["batch-a-2", "other-1"]
    # the official client's datetime.min as Python's strftime writes it on Linux
    everything = await served.call("DELETE", "instances/?createdTimeFrom=1-01-01T00:00:00.000000Z")
    assert (everything.status, everything.json) == (200, {"instancesDeleted": 1})
    assert_error(await served.call("DELETE", "instances/?createdTimeFrom=2000-01-01"), 404, "no finished")


# ------------------------------------------------------------------------------ bad input


BAD_REQUESTS = [
    ("GET", "instances/a%5Cb", {}, b"", 400, "may not contain"),
    ("GET", "instances/a%0Ab", {}, b"", 400, "may not contain"),
    ("GET", "instances/%FF%FE", {}, b"", 400, "UTF-8"),
    ("GET", "instances/" + "y" * 300, {}, b"", 400, "limit is 256"),
    ("GET", "instances/?createdTimeFrom=yesterday", {}, b"", 400, "ISO 8601"),
    ("GET", "instances/?createdTimeTo=2024-13-45T99:00:00Z", {}, b"", 400, "ISO 8601"),
    ("GET", "instances/?runtimeStatus=Running,Sleeping", {}, b"", 400, "Sleeping"),
    ("GET", "instances/?top=ten", {}, b"", 400, "whole number"),
    ("GET", "instances/?top=0", {}, b"", 400, "at least 1"),
    ("GET", "instances/?top=-3", {}, b"", 400, "whole number"),
    ("GET", "instances/?top=99999999999999999999", {}, b"", 400, "whole number"),
    ("GET", "instances/x?showHistory=maybe", {}, b"", 400, "true or false"),
    ("GET", "instances/x?showInput=1", {}, b"", 400, "true or false"),
    ("DELETE", "instances/?createdTimeFrom=", {}, b"", 400, "createdTimeFrom"),
    ("GET", "instances/", {"x-ms-continuation-token": "***"}, b"", 400, "token"),
    ("POST", "orchestrators/echo", {}, b"[1, 2", 400, "not valid JSON"),
    ("POST", "orchestrators/echo", {}, b"\xff\xfe", 400, "not valid JSON"),
    ("POST", "orchestrators/echo", {}, b'"\\ud800"', 400, "JSON"),
    ("POST", "orchestrators/echo", {}, b"[" * 5000, 400, "not valid JSON"),
    ("POST", "orchestrators/%20", {}, b"", 400, "empty"),
    ("POST", "instances/x/restart?restartWithNewInstanceId=2", {}, b"", 400, "true or false"),
    ("PUT", "instances/x", {}, b"", 405, "GET or DELETE"),
    ("PATCH", "instances/", {}, b"", 405, "GET or DELETE"),
    ("POST", "instances/x", {}, b"", 405, "GET or DELETE"),
    ("GET", "orchestrators/echo/abc", {}, b"", 405, "POST"),
    ("POST", "instances/x/raiseEvent/", {}, b"", 404, "no route"),
    ("POST", "instances/x/explode", {}, b"", 404, "no route"),
    ("GET", "nothing/here", {}, b"", 404, "no route"),
    ("GET", "/elsewhere/instances/", {}, b"", 404, "no route"),
    ("GET", "", {}, b"", 404, "no route"),
    ("POST", "orchestrators/echo", {}, b"x" * (1024**2 + 10), 413, ""),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "fragment"), BAD_REQUESTS)
async def test_bad_requests_get_a_4xx_with_a_json_error(
    served: Served, method: str, path: str, headers: dict[str, str], body: bytes, status: int, fragment: str
) -> None:
    data = io.BytesIO(body) if len(body) > 65536 else body or None  # aiohttp streams big bodies from files
    assert_error(await served.call(method, path, data=data, headers=headers), status, fragment)


# ------------------------------------------------------------------------------ function key


async def test_function_key(env: DurableTestEnv) -> None:
    async with serve(env, function_key="s3cr3t", task_hub="TestHub") as keyed:
        assert_error(await keyed.call("GET", "instances/"), 401, "function key")
        assert_error(await keyed.call("GET", "instances/?code=wrong"), 401)
        assert_error(await keyed.call("GET", "instances/", headers={"x-functions-key": "s3cr3"}), 401)
        assert_error(await keyed.call("POST", "orchestrators/echo"), 401)
        assert_error(await keyed.call("GET", "no/such/route"), 401)  # no route details without the key
        assert (await keyed.call("GET", "instances/?code=s3cr3t")).status == 200
        assert (await keyed.call("GET", "instances/", headers={"x-functions-key": "s3cr3t"})).status == 200
        # a wrong header does not spoil a right code, and the other way round
        both = await keyed.call("GET", "instances/?code=s3cr3t", headers={"x-functions-key": "nope"})
        assert both.status == 200

        started = await keyed.call("POST", "orchestrators/echo?code=s3cr3t", json_value="hi")
        assert started.status == 202
        payload = started.json
        assert payload["statusQueryGetUri"].endswith(
            f"/instances/{payload['id']}?taskHub=TestHub&code=s3cr3t"
        )
        assert payload["terminatePostUri"].endswith("/terminate?reason={text}&taskHub=TestHub&code=s3cr3t")
        await env.wait_for_completion(payload["id"])
        assert (await keyed.call("GET", payload["statusQueryGetUri"])).json["output"] == "hi"
        assert (await keyed.call("GET", "instances/?taskHub=testhub&code=s3cr3t")).status == 200
        assert_error(await keyed.call("GET", "instances/?taskHub=Other&code=s3cr3t"), 400, "task hub")


# ------------------------------------------------------------------------------ adapters and client helpers


async def test_functions_adapters(env: DurableTestEnv) -> None:
    api = ManagementApi(env.client, function_key="k")
    request = func.HttpRequest(
        "POST",
        "https://myapp.example/api/durabletask/orchestrators/echo/via-func?code=k",
        headers={"Content-Type": "application/json"},
        body=b'{"x": 1}',
    )
    converted = from_func_request(request)
    assert converted == ApiRequest(
        "POST",
        "/api/durabletask/orchestrators/echo/via-func",
        {"code": "k"},
        {"content-type": "application/json"},
        b'{"x": 1}',
        "https://myapp.example",
    )
    response = to_func_response(await api.handle(converted))
    assert response.status_code == 202 and response.mimetype == "application/json"
    assert response.headers["Location"] == "https://myapp.example/api/durabletask/instances/via-func?code=k"
    assert json.loads(response.get_body())["id"] == "via-func"
    await env.wait_for_completion("via-func")
    status = await api.handle(ApiRequest.from_url("GET", response.headers["Location"]))
    assert (status.status, status.json_body()["output"]) == (200, {"x": 1})
    missing = to_func_response(
        await api.handle(ApiRequest.from_url("GET", "https://h/api/durabletask/instances/"))
    )
    assert missing.status_code == 401 and "function key" in json.loads(missing.get_body())["error"]


async def test_client_management_payload_and_check_status(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = served.env.client
    with pytest.raises(df.InvalidInstanceIdError):
        client.create_http_management_payload("a/b", "https://h.example/api/durabletask/")
    payload = client.create_http_management_payload("a b", "https://h.example/api/durabletask/?code=k")
    assert payload == {
        "id": "a b",
        "statusQueryGetUri": "https://h.example/api/durabletask/instances/a%20b?code=k",
        "sendEventPostUri": "https://h.example/api/durabletask/instances/a%20b/raiseEvent/{eventName}?code=k",
        "terminatePostUri": "https://h.example/api/durabletask/instances/a%20b/terminate?reason={text}&code=k",
        "rewindPostUri": "https://h.example/api/durabletask/instances/a%20b/rewind?reason={text}&code=k",
        "purgeHistoryDeleteUri": "https://h.example/api/durabletask/instances/a%20b?code=k",
        "restartPostUri": "https://h.example/api/durabletask/instances/a%20b/restart?code=k",
        "suspendPostUri": "https://h.example/api/durabletask/instances/a%20b/suspend?reason={text}&code=k",
        "resumePostUri": "https://h.example/api/durabletask/instances/a%20b/resume?reason={text}&code=k",
    }
    monkeypatch.setenv("WEBSITE_HOSTNAME", "myapp.azurewebsites.net")
    assert client.create_http_management_payload("x")["statusQueryGetUri"] == (
        "https://myapp.azurewebsites.net/api/durabletask/instances/x"
    )
    monkeypatch.delenv("WEBSITE_HOSTNAME")
    assert client.create_http_management_payload("x")["restartPostUri"] == (
        "http://localhost:7071/api/durabletask/instances/x/restart"
    )

    # create_check_status_response: URLs on the request's origin, followable over HTTP
    iid = await client.start_new("approval", "checked", "in")
    request = func.HttpRequest("POST", f"{served.origin}/api/orchestrators/approval", body=b"")
    response = client.create_check_status_response(request, iid)
    assert response.status_code == 202 and response.mimetype == "application/json"
    body = json.loads(response.get_body())
    assert set(body) == PAYLOAD_KEYS and response.headers["Location"] == body["statusQueryGetUri"]
    assert response.headers["Retry-After"] == "10"
    assert body["statusQueryGetUri"] == f"{served.base}instances/checked"
    await served.env.wait_for_status(iid, lambda s: s.custom_status == "waiting")
    send = body["sendEventPostUri"].replace("{eventName}", "Approval")
    assert (await served.call("POST", send, json_value="yes")).status == 202
    await served.env.wait_for_completion(iid)
    assert (await served.call("GET", response.headers["Location"])).json["output"]["approval"] == "yes"


async def test_client_wait_for_completion_or_create_check_status_response(served: Served) -> None:
    client = served.env.client
    request = func.HttpRequest("GET", "http://host.example/api/start", body=b"")
    done = await client.start_new("sequence", None, ["Bern"])
    response = await client.wait_for_completion_or_create_check_status_response(request, done, 5000, 20)
    assert (response.status_code, json.loads(response.get_body())) == (200, ["Hello Bern!"])

    waiting = await client.start_new("approval", "slow", None)
    response = await client.wait_for_completion_or_create_check_status_response(request, waiting, 150, 50)
    assert response.status_code == 202
    assert response.headers["Location"] == "http://host.example/api/durabletask/instances/slow"

    await client.terminate(waiting, "stop")
    await served.env.wait_for_completion(waiting)
    response = await client.wait_for_completion_or_create_check_status_response(request, waiting, 1000, 10)
    assert response.status_code == 200 and json.loads(response.get_body())["runtimeStatus"] == "Terminated"

    failed = await client.start_new("failing")
    await served.env.wait_for_completion(failed)
    response = await client.wait_for_completion_or_create_check_status_response(request, failed, 1000, 10)
    assert response.status_code == 500 and json.loads(response.get_body())["runtimeStatus"] == "Failed"
    with pytest.raises(ValueError, match="should be bigger"):
        await client.wait_for_completion_or_create_check_status_response(request, failed, 10, 100)


async def test_client_list_instances_pages(env: DurableTestEnv) -> None:
    for n in range(5):
        await env.client.start_new("echo", f"lp-{n}", n)
    await env.run_until_idle()
    first = await env.client.list_instances(page_size=2, show_input=False)
    assert [s.instance_id for s in first.statuses] == ["lp-0", "lp-1"] and first.continuation_token
    assert all(s.input_ is None for s in first.statuses)
    rest = await env.client.list_instances(page_size=10, continuation_token=first.continuation_token)
    assert [s.instance_id for s in rest.statuses] == ["lp-2", "lp-3", "lp-4"]
    assert rest.continuation_token is None and rest.statuses[0].input_ == 2
    with pytest.raises(ValueError, match="page_size"):
        await env.client.list_instances(page_size=0)


# ------------------------------------------------------------------------------ the official client


@pytest.fixture
async def sdk(served: Served) -> AsyncIterator[official.DurableOrchestrationClient]:
    binding = official_client_binding(served.base, task_hub="TestHub")
    yield official.DurableOrchestrationClient(binding)
    await official_http._close_session()  # its shared session belongs to this test's event loop


async def test_official_client_start_and_status(
    served: Served, sdk: official.DurableOrchestrationClient
) -> None:
    env = served.env
    iid = await sdk.start_new("sequence", None, ["Paris", "Rome"])
    await env.wait_for_completion(iid)
    status = await sdk.get_status(iid, show_history=True, show_history_output=True, show_input=True)
    assert status.runtime_status == official.OrchestrationRuntimeStatus.Completed
    assert status.output == ["Hello Paris!", "Hello Rome!"]
    assert status.input_ == ["Paris", "Rome"]
    assert status.name == "sequence" and status.instance_id == iid
    assert isinstance(status.created_time, datetime)
    assert status.historyEvents[-1]["EventType"] == "ExecutionCompleted"
    # the SDK encodes inputs twice; every JSON value arrives as the orchestrator's input
    for n, value in enumerate(["hello", "42", 7, None, {"nested": {"list": [1, "2"]}}, [None, True]]):
        assert await sdk.start_new("echo", f"sdk-echo-{n}", value) == f"sdk-echo-{n}"
        assert (await env.wait_for_completion(f"sdk-echo-{n}")).output == value
    assert not await sdk.get_status("nobody")  # 404: the SDK's empty status
    await sdk.start_new("approval", "sdk-busy")
    with pytest.raises(Exception, match="sdk-busy"):
        await sdk.start_new("approval", "sdk-busy")  # 409
    with pytest.raises(Exception, match="no orchestrator function named 'missing'"):
        await sdk.start_new("missing")  # 400 with ExceptionMessage, as the SDK reads it


async def test_official_client_events_and_lifecycle(
    served: Served, sdk: official.DurableOrchestrationClient
) -> None:
    env = served.env
    iid = await sdk.start_new("approval", "sdk-wait", {"order": 1})
    await env.wait_for_status(iid, lambda s: s.custom_status == "waiting")
    running = await sdk.get_status(iid)
    assert running.runtime_status == official.OrchestrationRuntimeStatus.Running
    assert running.custom_status == "waiting"
    await sdk.suspend(iid, "pause please")
    await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Suspended)
    assert (await sdk.get_status(iid)).runtime_status == official.OrchestrationRuntimeStatus.Suspended
    await sdk.resume(iid, "carry on")
    await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Running)
    await sdk.raise_event(iid, "Approval", {"ok": True})
    assert (await env.wait_for_completion(iid)).output == {"input": {"order": 1}, "approval": {"ok": True}}
    with pytest.raises(Exception, match="is gone"):
        await sdk.raise_event(iid, "Approval", 1)  # 410
    with pytest.raises(Exception, match="No instance"):
        await sdk.raise_event("ghost", "Approval", 1)  # 404
    assert await sdk.terminate(iid, "late") is None  # 410 is fine for the SDK
    with pytest.raises(Exception, match="ghost"):
        await sdk.terminate("ghost", "why")

    other = await sdk.start_new("approval", "sdk-term")
    await env.wait_for_status(other, lambda s: s.custom_status == "waiting")
    await sdk.raise_event(other, "Unrelated")  # event data None is sent as "null" text, encoded twice
    await sdk.terminate(other, "no longer needed")
    status = await env.wait_for_completion(other)
    assert (status.runtime_status, status.output) == (Status.Terminated, "no longer needed")
    assert await sdk.suspend(other, "x") is None and await sdk.resume(other, "x") is None
    with pytest.raises(Exception, match="ghost"):
        await sdk.suspend("ghost", "x")


async def test_official_client_queries_and_purges(
    served: Served, sdk: official.DurableOrchestrationClient
) -> None:
    created = await populate(served)
    Official = official.OrchestrationRuntimeStatus
    everything = await sdk.get_status_all()
    assert sorted(s.instance_id for s in everything) == ["batch-a-1", "batch-a-2", "batch-b-1", "other-1"]
    running = await sdk.get_status_by(runtime_status=[Official.Running])
    assert [s.instance_id for s in running] == ["batch-a-2"]
    done = await sdk.get_status_by(runtime_status=[Official.Completed, Official.Failed])
    assert sorted(s.instance_id for s in done) == ["batch-a-1", "batch-b-1", "other-1"]
    prefixed = await sdk.get_status_by(instance_id_prefix="batch-")
    assert sorted(s.instance_id for s in prefixed) == ["batch-a-1", "batch-a-2", "batch-b-1"]
    middle = created["batch-b-1"].replace(tzinfo=None)  # the SDK formats naive UTC datetimes
    window = await sdk.get_status_by(
        created_time_from=middle - timedelta(minutes=1), created_time_to=middle + timedelta(minutes=1)
    )
    assert [s.instance_id for s in window] == ["batch-b-1"]

    assert (await sdk.purge_instance_history("other-1")).instances_deleted == 1
    assert (await sdk.purge_instance_history("other-1")).instances_deleted == 0  # 404 means 0
    purged = await sdk.purge_instance_history_by(datetime.min, middle, [Official.Completed, Official.Failed])
    assert purged.instances_deleted == 2
    assert (
        await sdk.purge_instance_history_by(datetime.min, None, [Official.Terminated])
    ).instances_deleted == 0
    assert [s.instance_id for s in await sdk.get_status_all()] == ["batch-a-2"]


async def test_official_client_restart_and_rewind(
    served: Served, sdk: official.DurableOrchestrationClient
) -> None:
    env = served.env
    await sdk.start_new("echo", "sdk-r", 5)
    await env.wait_for_completion("sdk-r")
    # the extension answers restart with the check-status payload, which this SDK version returns as is
    fresh = await sdk.restart("sdk-r")
    assert set(fresh) == PAYLOAD_KEYS and fresh["id"] != "sdk-r"
    assert (await env.wait_for_completion(fresh["id"])).output == 5
    same = await sdk.restart("sdk-r", restart_with_new_instance_id=False)
    assert same["id"] == "sdk-r"
    await env.wait_for_completion("sdk-r")
    with pytest.raises(Exception, match="No instance"):
        await sdk.restart("ghost")

    previous = await failed_rewindable(env, "sdk-rw")
    await sdk.rewind("sdk-rw", "fixed")
    done = await rewound(env, "sdk-rw", previous)
    assert done.runtime_status == Status.Completed and done.output == ["Hello Oslo!", "sdk-rw fixed"]
    with pytest.raises(Exception, match="only supported on failed"):
        await sdk.rewind("sdk-rw", "again")  # 410: Completed now
    with pytest.raises(Exception, match="only supported on failed"):
        await sdk.rewind("sdk-r", "fixed")  # 410
    with pytest.raises(Exception, match="No instance"):
        await sdk.rewind("ghost", "fixed")


async def test_official_client_http_helpers(served: Served, sdk: official.DurableOrchestrationClient) -> None:
    env = served.env
    request = func.HttpRequest("POST", f"{served.origin}/api/orchestrators/sequence", body=b"")
    iid = await sdk.start_new("sequence", None, ["Kyiv"])
    response = sdk.create_check_status_response(request, iid)
    assert response.status_code == 202
    payload = json.loads(response.get_body())
    assert (
        payload["id"] == iid
        and payload["statusQueryGetUri"] == f"{served.base}instances/{iid}?taskHub=TestHub"
    )
    await env.wait_for_completion(iid)
    followed = await served.call("GET", response.headers["Location"])
    assert (followed.status, followed.json["output"]) == (200, ["Hello Kyiv!"])
    assert (
        sdk.create_http_management_payload(iid)["purgeHistoryDeleteUri"] == payload["purgeHistoryDeleteUri"]
    )

    waited = await sdk.wait_for_completion_or_create_check_status_response(request, iid, 3000, 50)
    assert (waited.status_code, json.loads(waited.get_body())) == (200, ["Hello Kyiv!"])
    slow = await sdk.start_new("approval")
    waited = await sdk.wait_for_completion_or_create_check_status_response(request, slow, 200, 50)
    assert waited.status_code == 202 and json.loads(waited.get_body())["id"] == slow


# ------------------------------------------------------------------------------ fuzzing over a real socket


class ThreadedServer:
    """A DurableTestEnv plus a real ``web.AppRunner`` on 127.0.0.1, in its own thread and event loop."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None

    async def _main(self) -> None:
        try:
            async with DurableTestEnv(app) as env:
                await env.client.start_new("approval", "fuzz-waiting", 1)
                await env.client.start_new("echo", "fuzz-done", 1)
                await env.run_until_idle()
                runner = web.AppRunner(aiohttp_app(ManagementApi(env.client, registry=env.registry)))
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                self.port = runner.addresses[0][1]
                self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
                self._ready.set()
                await self._stop.wait()
                await runner.cleanup()
        except BaseException as exc:  # surfaced by the fixture
            self.error = exc
            self._ready.set()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(30) and self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def request(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ThreadedServer]:
    with ThreadedServer() as server:
        yield server


WORDS = [
    "orchestrators",
    "instances",
    "raiseEvent",
    "terminate",
    "suspend",
    "resume",
    "restart",
    "rewind",
    "entities",
    "echo",
    "sequence",
    "approval",
    "fuzz-waiting",
    "fuzz-done",
    "",
    ".",
    "..",
]
QUERY_KEYS = [
    "showHistory",
    "showHistoryOutput",
    "showInput",
    "createdTimeFrom",
    "createdTimeTo",
    "runtimeStatus",
    "instanceIdPrefix",
    "top",
    "reason",
    "restartWithNewInstanceId",
    "returnInternalServerErrorOnFailure",
    "code",
    "taskHub",
    "version",
]
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
segments = st.one_of(
    st.sampled_from(WORDS).map(lambda s: quote(s, safe="")),
    st.text(max_size=30).map(lambda s: quote(s, safe="")),
    st.sampled_from(["%FF", "%ZZ", "%", "%2F", "%C3%28", "a%00b", "%E2%82"]),
)
values = st.one_of(
    st.sampled_from(["true", "false", "True", "3", "0", "-1", "Running,Failed", "2024-01-01T00:00:00Z", ""]),
    st.text(max_size=30),
)
names = st.one_of(st.sampled_from(["echo", "sequence", "approval", "failing", "nope"]), st.text(max_size=12))
known_ids = st.sampled_from(["fuzz-waiting", "fuzz-done", "fuzz-new"])
instance_ids = st.one_of(known_ids, known_ids, known_ids, st.text(max_size=20), st.just("x" * 257))
operations = st.sampled_from(
    ["terminate", "suspend", "resume", "restart", "rewind", "Terminate", "raiseEvent"]
)
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]


def route(method: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    """A route shape with fuzzed parts, sent with its own method three times out of four."""
    return st.tuples(st.sampled_from([method] * 18 + METHODS), st.tuples(*parts)).map(
        lambda pair: (pair[0], "/".join(quote(part, safe="") for part in pair[1]))
    )


requests = st.one_of(
    route("POST", st.just("orchestrators"), names),
    route("POST", st.just("orchestrators"), names, instance_ids),
    route("GET", st.just("instances"), st.just("")),
    route("DELETE", st.just("instances"), st.just("")),
    route("GET", st.just("instances"), instance_ids),
    route("DELETE", st.just("instances"), instance_ids),
    route("POST", st.just("instances"), instance_ids, operations),
    route("POST", st.just("instances"), instance_ids, st.just("raiseEvent"), st.text(max_size=10)),
    st.tuples(
        st.sampled_from(METHODS), st.lists(st.one_of(segments, st.sampled_from(WORDS)), max_size=5)
    ).map(lambda pair: (pair[0], "/".join(pair[1]))),
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=requests,
    prefix=st.sampled_from(["/api/durabletask/"] * 8 + ["/API/DurableTask/", "/api/", "/"]),
    query=st.dictionaries(st.one_of(st.sampled_from(QUERY_KEYS), printable), values, max_size=4),
    raw_query=st.sampled_from(["", "&top=%FF", "&runtimeStatus=%E2%82", "&x", "&&=&"]),
    body=bodies,
    content_type=st.sampled_from([None, "application/json", "text/plain", "application/json; charset=utf-8"]),
    token=st.one_of(st.none(), st.none(), printable, st.sampled_from(["ZnV6ei1kb25l", "AA", "_-_-"])),
)
def test_fuzzed_requests_never_get_a_500(
    threaded_server: ThreadedServer,
    request: tuple[str, str],
    prefix: str,
    query: dict[str, str],
    raw_query: str,
    body: bytes,
    content_type: str | None,
    token: str | None,
) -> None:
    method, path = request
    target = prefix + path
    query_string = urlencode(query) + raw_query
    if query_string:
        target += "?" + query_string
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token is not None:
        headers["x-ms-continuation-token"] = token
    status, raw = threaded_server.request(method, target, body, headers)
    event(f"HTTP {status}")
    assert status < 500 or status == 501 or _documented_500(query, raw), (status, target, raw[:300])
    if method != "HEAD" and status >= 400 and status != 413:
        assert isinstance(json.loads(raw)["error"], str), raw
    # the server is still up and serving
    alive, _ = threaded_server.request("GET", "/api/durabletask/instances/?top=1", b"", {})
    assert alive == 200


def _documented_500(query: dict[str, str], raw: bytes) -> bool:
    """The one deliberate 500: a Failed instance's status with returnInternalServerErrorOnFailure=true."""
    asked = query.get("returnInternalServerErrorOnFailure", "").strip().lower() == "true"
    return asked and json.loads(raw).get("runtimeStatus") == "Failed"


def test_urls_in_payloads_are_absolute(threaded_server: ThreadedServer) -> None:
    status, raw = threaded_server.request("POST", "/api/durabletask/orchestrators/echo", b"1", {})
    assert status == 202
    url = urlsplit(json.loads(raw)["statusQueryGetUri"])
    assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", threaded_server.port)
