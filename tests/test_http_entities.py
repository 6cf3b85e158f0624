"""The entity routes of the management HTTP API over real HTTP on 127.0.0.1.

Signal (POST/DELETE), state (GET), listing with paging and filters, bad input
(a table and a hypothesis fuzz: never a 500), function keys, the instance
routes refusing entity ids, and the official ``azure-functions-durable``
client's ``signal_entity`` / ``read_entity_state`` against the API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import azure.durable_functions as df_official
import pytest
from aiohttp import web
from azure.durable_functions.models.utils import http_utils as official_http
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from test_http_api import Reply, Served, ThreadedServer, assert_error, bodies, serve

import durable_ext as df
from durable_ext.core.history import parse_timestamp
from durable_ext.http_api import ApiRequest, ManagementApi, aiohttp_app, official_client_binding
from durable_ext.testing import DurableTestEnv

app = df.DurableApp()


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        value += context.get_input()
    elif operation == "reset":
        value = 0
    elif operation == "get":
        context.set_result(value)
        return  # reading does not create the entity
    elif operation == "delete":
        context.destruct_on_exit()
        return
    context.set_state(value)


@app.entity_trigger(context_name="context")
def recorder(context: df.DurableEntityContext) -> None:
    """Keeps the last operation it received and its input, exactly as delivered."""
    context.set_state({"op": context.operation_name, "input": context.get_input()})


@app.entity_trigger(context_name="context", entity_name="Cart")
class Cart:
    """Class-based: the instance is the state, public methods are the operations."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


@pytest.fixture
async def env() -> AsyncIterator[DurableTestEnv]:
    async with DurableTestEnv(app) as environment:
        yield environment


@pytest.fixture
async def served(env: DurableTestEnv) -> AsyncIterator[Served]:
    async with serve(env) as s:
        yield s


async def signal(served: Served, name: str, key: str, op: str | None, value: Any = ...) -> None:
    """POST a signal (``value`` as the JSON body unless left out) and assert the documented 202."""
    path = f"entities/{quote(name, safe='')}/{quote(key, safe='')}"
    if op is not None:
        path += "?" + urlencode({"op": op})
    reply = await served.call("POST", path, json_value=value)
    assert (reply.status, reply.raw) == (202, b""), reply.raw


async def state(served: Served, name: str, key: str) -> Any:
    reply = await served.call("GET", f"entities/{quote(name, safe='')}/{quote(key, safe='')}")
    assert reply.status == 200, reply.raw
    assert reply.headers["Content-Type"].startswith("application/json")
    return reply.json


def keys(reply: Reply) -> list[tuple[str, str]]:
    assert reply.status == 200, reply.raw
    return [(e["entityId"]["name"], e["entityId"]["key"]) for e in reply.json]


# ------------------------------------------------------------------------------ signal and state


async def test_signal_then_get_state(served: Served) -> None:
    env = served.env
    await signal(served, "counter", "steps", "add", 5)
    await env.run_until_idle()
    assert await state(served, "counter", "steps") == 5
    await signal(served, "Counter", "steps", "add", 3)  # names are case-insensitive
    await env.run_until_idle()
    assert await state(served, "COUNTER", "steps") == 8
    await signal(served, "counter", "steps", "reset")
    await signal(served, "counter", "steps", "add", 2)  # one sender's signals apply in order
    await env.run_until_idle()
    assert await state(served, "counter", "steps") == 2
    # keys are case-sensitive, and any character an instance id allows works
    await signal(served, "counter", "Steps é %+&", "add", 1)
    await env.run_until_idle()
    assert await state(served, "counter", "Steps é %+&") == 1
    assert await state(served, "counter", "steps") == 2
    # the same entity, as the core client sees it
    read = await env.client.read_entity_state(df.EntityId("counter", "steps"))
    assert (read.entity_exists, read.entity_state) == (True, 2)


async def test_class_based_entity(served: Served) -> None:
    env = served.env
    await signal(served, "Cart", "c1", "add", {"sku": "apple", "n": 2})
    await signal(served, "cart", "c1", "add", "pear")
    await env.run_until_idle()
    assert await state(served, "cart", "c1") == {"items": [{"sku": "apple", "n": 2}, "pear"]}
    await signal(served, "cart", "c1", "clear")
    await env.run_until_idle()
    assert await state(served, "Cart", "c1") == {"items": []}
    # DELETE signals the operation "delete": a class without one is deleted
    reply = await served.call("DELETE", "entities/cart/c1")
    assert (reply.status, reply.raw) == (202, b"")
    await env.run_until_idle()
    assert_error(await served.call("GET", "entities/cart/c1"), 404, "@cart@c1")


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b"", None, None),
        (b"5", "application/json", 5),
        (b'{"a": [1, "x"]}', "application/json; charset=utf-8", {"a": [1, "x"]}),
        (b'"hello"', "application/json", "hello"),
        (json.dumps(json.dumps({"a": [1, 2]})).encode(), "application/json", {"a": [1, 2]}),  # the SDK
        (b'"\\"42\\""', "application/json", "42"),  # a string that parses as JSON: encoded twice
        (b"null", "APPLICATION/JSON", None),
    ],
)
async def test_signal_input_decoding(
    served: Served, body: bytes, content_type: str | None, expected: Any
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    reply = await served.call("POST", "entities/recorder/r?op=set", data=body or None, headers=headers)
    assert (reply.status, reply.raw) == (202, b"")
    await served.env.run_until_idle()
    assert await state(served, "recorder", "r") == {"op": "set", "input": expected}


async def test_signal_without_op_is_the_empty_operation(served: Served) -> None:
    await signal(served, "recorder", "no-op", None, [1, 2])
    await served.env.run_until_idle()
    assert await state(served, "recorder", "no-op") == {"op": "", "input": [1, 2]}


async def test_unknown_and_deleted_entities_are_404(served: Served) -> None:
    env = served.env
    assert_error(
        await served.call("GET", "entities/counter/never"), 404, "no entity with id '@counter@never'"
    )
    # an operation that does not set state leaves the entity nonexistent
    await signal(served, "counter", "peek", "get")
    await env.run_until_idle()
    assert_error(await served.call("GET", "entities/counter/peek"), 404, "never signaled, or deleted")
    # deleted by its own operation, then by the DELETE route
    await signal(served, "counter", "gone", "add", 4)
    await env.run_until_idle()
    assert await state(served, "counter", "gone") == 4
    await signal(served, "counter", "gone", "delete")
    await env.run_until_idle()
    assert_error(await served.call("GET", "entities/counter/gone"), 404, "@counter@gone")
    await signal(served, "counter", "gone", "add", 1)  # signaled again: exists again, from scratch
    await env.run_until_idle()
    assert await state(served, "counter", "gone") == 1
    assert (await served.call("DELETE", "entities/Counter/gone")).status == 202
    await env.run_until_idle()
    assert_error(await served.call("GET", "entities/counter/gone"), 404)
    # an entity name the app does not define: 404 (documented), and nothing is created
    assert_error(
        await served.call("POST", "entities/nobody/k?op=add", json_value=1), 404, "no entity function"
    )
    await env.run_until_idle()
    assert await env.backend.get_instance("@nobody@k") is None
    assert_error(await served.call("GET", "entities/nobody/k"), 404)


async def test_without_a_registry_any_name_can_be_signaled(env: DurableTestEnv) -> None:
    api = ManagementApi(env.client)  # no registry: names are not checked
    reply = await api.handle(ApiRequest("POST", "/api/durabletask/entities/nobody/k", {"op": "add"}, {}, b""))
    assert (reply.status, reply.body) == (202, b"")
    assert await env.backend.get_instance("@nobody@k") is not None  # the signal was sent
    await env.run_until_idle()
    # the app has no such entity: the operation fails and the entity does not come to exist
    missing = await api.handle(ApiRequest("GET", "/api/durabletask/entities/nobody/k"))
    assert missing.status == 404 and "@nobody@k" in missing.json_body()["error"]


# ------------------------------------------------------------------------------ listing


async def populate(served: Served) -> dict[str, datetime]:
    """Counters c0..c6 (one deleted), recorders r0, r1 and one cart; returns a time between batches."""
    env = served.env
    for n in range(7):
        await signal(served, "counter", f"c{n}", "add", n + 1)
    await signal(served, "counter", "c3", "delete")
    await signal(served, "cart", "basket", "add", "milk")
    await env.run_until_idle()
    env.clock.advance(timedelta(hours=1))
    middle = env.now()
    env.clock.advance(timedelta(hours=1))
    await signal(served, "recorder", "r0", "set", 0)
    await signal(served, "recorder", "r1", "set", 1)
    await env.run_until_idle()
    return {"middle": middle}


COUNTERS = [("counter", f"c{n}") for n in (0, 1, 2, 4, 5, 6)]


async def test_list_all_and_by_name(served: Served) -> None:
    await populate(served)
    everything = await served.call("GET", "entities")
    assert "x-ms-continuation-token" not in everything.headers
    assert sorted(keys(everything)) == sorted(
        [("cart", "basket"), *COUNTERS, ("recorder", "r0"), ("recorder", "r1")]
    )
    for entry in everything.json:  # the documented fields; no state unless asked for
        assert set(entry) == {"entityId", "lastOperationTime"}
        assert parse_timestamp(entry["lastOperationTime"]).tzinfo is not None
    assert keys(await served.call("GET", "entities/")) == keys(everything)
    assert sorted(keys(await served.call("GET", "entities/counter"))) == COUNTERS
    assert keys(await served.call("GET", "entities/CART")) == [("cart", "basket")]  # case-insensitive
    assert keys(await served.call("GET", "entities/nobody")) == []
    assert keys(await served.call("GET", "entities/count")) == []  # a name, not a prefix


async def test_list_with_fetch_state(served: Served) -> None:
    await populate(served)
    reply = await served.call("GET", "entities/counter?fetchState=true")
    states = {e["entityId"]["key"]: e["state"] for e in reply.json}
    assert states == {"c0": 1, "c1": 2, "c2": 3, "c4": 5, "c5": 6, "c6": 7}
    cart = (await served.call("GET", "entities/cart?fetchState=True")).json
    assert cart == [
        {
            "entityId": {"name": "cart", "key": "basket"},
            "lastOperationTime": cart[0]["lastOperationTime"],
            "state": {"items": ["milk"]},
        }
    ]
    without = await served.call("GET", "entities/counter?fetchState=false")
    assert all("state" not in e for e in without.json) and len(without.json) == 6


async def test_list_pages_with_continuation_tokens(served: Served) -> None:
    await populate(served)
    seen: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    pages = 0
    while True:
        reply = await served.call("GET", "entities/counter?top=2&fetchState=true", headers=headers)
        page = keys(reply)
        assert len(page) <= 2
        assert all("state" in e for e in reply.json)
        seen += page
        pages += 1
        token = reply.headers.get("x-ms-continuation-token")
        if not token:
            break
        headers = {"x-ms-continuation-token": token}
        assert pages < 10
    assert sorted(seen) == COUNTERS and len(seen) == len(set(seen))
    assert pages >= 3
    # across every name too
    first = await served.call("GET", "entities?top=4")
    assert len(first.json) <= 4 and first.headers["x-ms-continuation-token"]
    rest = await served.call(
        "GET",
        "entities?top=100",
        headers={"x-ms-continuation-token": first.headers["x-ms-continuation-token"]},
    )
    assert "x-ms-continuation-token" not in rest.headers
    assert sorted(keys(first) + keys(rest)) == sorted(
        [("cart", "basket"), *COUNTERS, ("recorder", "r0"), ("recorder", "r1")]
    )
    assert_error(
        await served.call("GET", "entities", headers={"x-ms-continuation-token": "***"}), 400, "token"
    )


async def test_list_by_last_operation_time(served: Served) -> None:
    times = await populate(served)
    middle = times["middle"].isoformat().replace("+00:00", "Z")
    later = await served.call("GET", "entities?" + urlencode({"lastOperationTimeFrom": middle}))
    assert sorted(keys(later)) == [("recorder", "r0"), ("recorder", "r1")]
    earlier = await served.call("GET", "entities?" + urlencode({"lastOperationTimeTo": middle}))
    assert sorted(keys(earlier)) == sorted([("cart", "basket"), *COUNTERS])
    both = await served.call(
        "GET",
        "entities/counter?" + urlencode({"lastOperationTimeFrom": middle, "lastOperationTimeTo": middle}),
    )
    assert keys(both) == []


# ------------------------------------------------------------------------------ bad input


LONG_KEY = "k" * 300
BAD_REQUESTS = [
    (
        "POST",
        "entities/counter/k?op=add",
        {"Content-Type": "application/json"},
        b"[1,",
        400,
        "not valid JSON",
    ),
    ("POST", "entities/counter/k?op=add", {"Content-Type": "application/json"}, b"\xff", 400, "JSON"),
    ("POST", "entities/counter/k?op=add", {"Content-Type": "text/plain"}, b"5", 400, "application/json"),
    ("POST", "entities/counter/k?op=add", {}, b"5", 400, "application/json"),
    ("POST", "entities/%20/k", {}, b"", 400, "empty"),
    ("POST", "entities//k", {}, b"", 400, "empty"),
    ("GET", "entities//k", {}, b"", 400, "empty"),
    ("POST", "entities/a%40b/k", {}, b"", 400, "must not contain '@'"),
    ("GET", "entities/%40counter/k", {}, b"", 400, "must not contain '@'"),
    ("GET", "entities/a%40b", {}, b"", 400, "must not contain '@'"),
    ("POST", "entities/coun%2Fter/k", {}, b"", 400, "may not contain"),
    ("POST", "entities/counter/a%2Fb", {}, b"", 400, "may not contain"),
    ("POST", "entities/counter/a%5Cb", {}, b"", 400, "may not contain"),
    ("POST", "entities/counter/a%23b", {}, b"", 400, "may not contain"),
    ("POST", "entities/counter/a%3Fb", {}, b"", 400, "may not contain"),
    ("GET", "entities/counter/a%0Ab", {}, b"", 400, "may not contain"),
    ("GET", "entities/counter/a%7Fb", {}, b"", 400, "may not contain"),
    ("GET", "entities/coun%09ter", {}, b"", 400, "may not contain"),
    ("GET", f"entities/counter/{LONG_KEY}", {}, b"", 400, "limit is 256"),
    ("POST", f"entities/{'n' * 200}/{'k' * 60}", {}, b"", 400, "invalid entity id"),
    ("GET", "entities/%FF/k", {}, b"", 400, "UTF-8"),
    ("GET", "entities?top=0", {}, b"", 400, "at least 1"),
    ("GET", "entities/counter?top=ten", {}, b"", 400, "whole number"),
    ("GET", "entities?fetchState=maybe", {}, b"", 400, "true or false"),
    ("GET", "entities?lastOperationTimeFrom=yesterday", {}, b"", 400, "ISO 8601"),
    ("GET", "entities?lastOperationTimeTo=2024-13-45", {}, b"", 400, "ISO 8601"),
    ("PUT", "entities/counter/k", {}, b"", 405, "GET or POST or DELETE"),
    ("POST", "entities/counter", {}, b"", 405, "GET"),
    ("DELETE", "entities", {}, b"", 405, "GET"),
    ("GET", "entities/counter/k/more", {}, b"", 404, "no route"),
    ("POST", "entities/nothere/k?op=x", {}, b"", 404, "no entity function named 'nothere'"),
    # the instance routes do not act on entities
    ("GET", "instances/%40counter%40k", {}, b"", 404, "is an entity"),
    ("POST", "instances/%40counter%40k/terminate", {}, b"", 404, "entities/"),
    ("POST", "instances/%40counter%40k/restart", {}, b"", 404, "is an entity"),
    ("POST", "instances/%40counter%40k/rewind", {}, b"", 404, "is an entity"),
]


@pytest.mark.parametrize(("method", "path", "headers", "body", "status", "fragment"), BAD_REQUESTS)
async def test_bad_requests_get_a_4xx_with_a_json_error(
    served: Served, method: str, path: str, headers: dict[str, str], body: bytes, status: int, fragment: str
) -> None:
    assert_error(await served.call(method, path, data=body or None, headers=headers), status, fragment)
    await served.env.run_until_idle()
    assert (await served.env.client.list_entities()).entities == []  # nothing was signaled


async def test_instance_routes_refuse_entity_ids(served: Served) -> None:
    env = served.env
    await signal(served, "counter", "k", "add", 5)
    await env.run_until_idle()
    status = await served.call("GET", "instances/%40counter%40k")
    assert_error(status, 404, "entities/{entityName}/{entityKey}")
    assert "exists" not in status.raw.decode()  # no internal scheduler state leaks
    # an event named "op" would reach the entity as a forged request: refused
    forged = await served.call(
        "POST",
        "instances/%40counter%40k/raiseEvent/op",
        json_value={"id": "x", "kind": "signal", "op": "add", "input": "100"},
    )
    assert_error(forged, 404, "is an entity")
    await env.run_until_idle()
    assert await state(served, "counter", "k") == 5
    listing = await served.call("GET", "instances/")
    assert [s["instanceId"] for s in listing.json] == []  # entities are not listed as instances
    # purging an entity through the instances route works, as in the extension
    purged = await served.call("DELETE", "instances/%40counter%40k")
    assert (purged.status, purged.json) == (200, {"instancesDeleted": 1})
    assert_error(await served.call("GET", "entities/counter/k"), 404)
    assert_error(await served.call("DELETE", "instances/%40counter%40k"), 404, "no entity")


async def test_function_key(env: DurableTestEnv) -> None:
    async with serve(env, function_key="s3cr3t", task_hub="TestHub") as keyed:
        assert_error(await keyed.call("POST", "entities/counter/k?op=add", json_value=1), 401, "function key")
        assert_error(await keyed.call("GET", "entities/counter/k?code=wrong"), 401)
        assert_error(await keyed.call("GET", "entities"), 401)
        assert_error(await keyed.call("GET", "entities/a%40b/k"), 401)  # no validation details without it
        ok = await keyed.call("POST", "entities/counter/k?op=add&code=s3cr3t", json_value=4)
        assert ok.status == 202
        await env.run_until_idle()
        got = await keyed.call("GET", "entities/counter/k", headers={"x-functions-key": "s3cr3t"})
        assert (got.status, got.json) == (200, 4)
        listed = await keyed.call("GET", "entities?code=s3cr3t&taskHub=testhub")
        assert keys(listed) == [("counter", "k")]
        assert_error(await keyed.call("GET", "entities?code=s3cr3t&taskHub=Other"), 400, "TestHub")


# ------------------------------------------------------------------------------ the official client


@pytest.fixture
async def sdk(served: Served) -> AsyncIterator[df_official.DurableOrchestrationClient]:
    binding = official_client_binding(served.base, task_hub="TestHub")
    yield df_official.DurableOrchestrationClient(binding)
    await official_http._close_session()  # its shared session belongs to this test's event loop


async def test_official_client_signal_and_read(
    served: Served, sdk: df_official.DurableOrchestrationClient
) -> None:
    env = served.env
    await sdk.signal_entity(df_official.EntityId("counter", "k"), "add", 5)
    await env.run_until_idle()
    read = await sdk.read_entity_state(df_official.EntityId("counter", "k"))
    assert (read.entity_exists, read.entity_state) == (True, 5)
    # mixed-case names, and the taskHub / connectionName query parameters it adds
    await sdk.signal_entity(df_official.EntityId("Counter", "k"), "add", 2, task_hub_name="TestHub")
    await env.run_until_idle()
    read = await sdk.read_entity_state(df_official.EntityId("COUNTER", "k"), "TestHub", "Storage")
    assert (read.entity_exists, read.entity_state) == (True, 7)
    # inputs the SDK encodes twice arrive as sent: objects, and strings that look like JSON
    await sdk.signal_entity(df_official.EntityId("Cart", "sdk"), "add", {"sku": "tea", "n": [1, 2]})
    await sdk.signal_entity(df_official.EntityId("Cart", "sdk"), "add", "42")
    await env.run_until_idle()
    cart = await sdk.read_entity_state(df_official.EntityId("Cart", "sdk"))
    assert cart.entity_state == {"items": [{"sku": "tea", "n": [1, 2]}, "42"]}
    # unknown and deleted entities
    missing = await sdk.read_entity_state(df_official.EntityId("counter", "unknown"))
    assert (missing.entity_exists, missing.entity_state) == (False, None)
    await sdk.signal_entity(df_official.EntityId("counter", "k"), "delete")
    await env.run_until_idle()
    assert not (await sdk.read_entity_state(df_official.EntityId("counter", "k"))).entity_exists
    # a signal the API refuses surfaces as the SDK's error
    with pytest.raises(Exception, match="404"):
        await sdk.signal_entity(df_official.EntityId("nobody", "k"), "add", 1)


# ------------------------------------------------------------------------------ fuzzing over a real socket


class EntityServer(ThreadedServer):
    """``ThreadedServer`` serving this module's entity app, with a few entities in place."""

    async def _main(self) -> None:
        try:
            async with DurableTestEnv(app) as env:
                await env.client.signal_entity(df.EntityId("counter", "fuzz"), "add", 1)
                await env.client.signal_entity(df.EntityId("Cart", "fuzz"), "add", "x")
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


@pytest.fixture(scope="module")
def entity_server() -> Iterator[EntityServer]:
    with EntityServer() as server:
        yield server


known_names = st.sampled_from(["counter", "Counter", "cart", "recorder"])
names = st.one_of(
    known_names,
    known_names,
    st.sampled_from(["nobody", "a@b", "", " ", "$", "@", "a/b"]),
    st.text(max_size=12),
)
entity_keys = st.one_of(st.sampled_from(["fuzz", "k", "$", "", "a/b", "x" * 300]), st.text(max_size=20))
ops = st.one_of(
    st.sampled_from(["add", "reset", "get", "delete", "clear", "", "_secret"]), st.text(max_size=10)
)
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"]


def route(methods: list[str], paths: st.SearchStrategy[str]) -> st.SearchStrategy[tuple[str, str]]:
    """A route shape, mostly sent with its own methods, sometimes with any method."""
    return st.tuples(st.sampled_from(methods * 12 + METHODS), paths)


def segment(text: str) -> str:
    return quote(text, safe="")


requests = st.one_of(
    route(
        ["POST", "POST", "GET", "DELETE"],
        st.tuples(names, entity_keys).map(lambda t: f"entities/{segment(t[0])}/{segment(t[1])}"),
    ),
    route(["GET"], names.map(lambda n: f"entities/{segment(n)}")),
    route(["GET"], st.sampled_from(["entities", "entities/", "entities//", "entities/counter/fuzz/x"])),
    route(
        ["GET", "POST"],
        st.sampled_from(["%FF", "%ZZ", "%", "%2F", "%C3%28", "a%00b", "%40counter%40fuzz"]).map(
            lambda raw: f"entities/counter/{raw}"
        ),
    ),
    route(
        ["GET", "DELETE", "POST"],
        st.sampled_from(["%40counter%40fuzz", "%40cart%40fuzz", "%40cart%40fuzz/raiseEvent/op"]).map(
            lambda raw: f"instances/{raw}"
        ),
    ),
)
queries = st.dictionaries(
    st.sampled_from(
        ["op", "top", "fetchState", "lastOperationTimeFrom", "lastOperationTimeTo", "taskHub", "x"]
    ),
    st.one_of(st.sampled_from(["true", "false", "1", "0", "-2", "2024-01-01T00:00:00Z", "add", ""]), ops),
    max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    request=requests,
    query=queries,
    body=bodies,
    content_type=st.sampled_from([None, "application/json", "text/plain", "application/json; charset=utf-8"]),
    token=st.one_of(
        st.none(), st.none(), st.text(max_size=20), st.sampled_from(["QGNvdW50ZXJAZnV6eg", "AA"])
    ),
)
def test_fuzzed_entity_requests_never_get_a_500(
    entity_server: EntityServer,
    request: tuple[str, str],
    query: dict[str, str],
    body: bytes,
    content_type: str | None,
    token: str | None,
) -> None:
    method, path = request
    target = "/api/durabletask/" + path
    if query:
        target += "?" + urlencode(query)
    headers = {}
    if content_type:
        headers["Content-Type"] = content_type
    if token is not None and token.isprintable() and token.isascii():
        headers["x-ms-continuation-token"] = token
    status, raw = entity_server.request(method, target, body, headers)
    event(f"HTTP {status}")
    assert status < 500, (status, method, target, raw[:300])
    if method != "HEAD" and status >= 400:
        assert isinstance(json.loads(raw)["error"], str), raw
    if method == "GET" and status == 200:
        json.loads(raw)  # a state or a listing: JSON either way
    # the server is still up and serving
    alive, listing = entity_server.request("GET", "/api/durabletask/entities?top=1", b"", {})
    assert alive == 200 and isinstance(json.loads(listing), list)
