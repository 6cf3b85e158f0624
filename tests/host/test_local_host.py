"""The sample app through real HTTP against ``python -m durable_ext start`` on Azurite.

One host process serves every sample on its own hub; a second test runs two
host processes on one hub and checks that both do work. Processes are stopped
by their pid with SIGTERM and must exit cleanly.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import azure.durable_functions as official
import pytest
from azure.durable_functions.models.utils import http_utils as official_http
from hostprocs import HostProcess, new_hub

from durable_ext.host.azurite import Azurite
from durable_ext.http_api import official_client_binding


@pytest.fixture(scope="module")
def hub() -> str:
    return new_hub()


@pytest.fixture(scope="module")
def host(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory, hub: str) -> Iterator[HostProcess]:
    process = HostProcess(tmp_path_factory.mktemp("host"), azurite.connection_string, hub)
    try:
        yield process.wait_ready()
    finally:
        code = process.stop()
        assert code == 0, process.log_tail()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def start(http: aiohttp.ClientSession, host: HostProcess, name: str, value: Any = None) -> dict:
    """POST /api/orchestrators/{name}: the check-status payload."""
    async with http.post(f"{host.base}/api/orchestrators/{name}", json=value) as resp:
        assert resp.status == 202, await resp.text()
        payload = await resp.json()
        assert resp.headers["Location"] == payload["statusQueryGetUri"]
        assert payload["statusQueryGetUri"].startswith(f"{host.base}/api/durabletask/instances/")
        return payload


async def poll(http: aiohttp.ClientSession, url: str, timeout: float = 30.0) -> dict:
    """GET statusQueryGetUri until it answers 200 (202 while running)."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url) as resp:
            body = await resp.json()
            if resp.status == 200:
                return body
            assert resp.status == 202, body
            assert "Location" in resp.headers
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} still {body['runtimeStatus']} after {timeout}s")
        await asyncio.sleep(0.1)


async def wait_custom_status(http: aiohttp.ClientSession, url: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url) as resp:
            body = await resp.json()
        if body.get("customStatus") is not None or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.05)


async def test_every_sample_over_http(http: aiohttp.ClientSession, host: HostProcess) -> None:
    started = {
        "hello": await start(http, host, "hello_sequence"),
        "fan": await start(http, host, "fan_out_fan_in", 12),
        "approve": await start(http, host, "approval_workflow", {"timeout_s": 60}),
        "timeout": await start(http, host, "approval_workflow", {"timeout_s": 1}),
        "monitor": await start(http, host, "monitor", {"job": "j", "interval_s": 1}),
        "retry": await start(http, host, "retry_demo"),
        "parent": await start(http, host, "parent_child"),
    }
    # raise the Approval event through the payload's sendEventPostUri
    approve = started["approve"]
    assert (await wait_custom_status(http, approve["statusQueryGetUri"]))["customStatus"] == (
        "waiting for approval"
    )
    send = approve["sendEventPostUri"].replace("{eventName}", "Approval")
    async with http.post(send, json="alice") as resp:
        assert resp.status == 202, await resp.text()

    outputs = {key: await poll(http, p["statusQueryGetUri"]) for key, p in started.items()}
    assert all(o["runtimeStatus"] == "Completed" for o in outputs.values()), outputs
    assert outputs["hello"]["output"] == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    assert outputs["fan"]["output"] == sum(n * n for n in range(1, 13))
    assert outputs["approve"]["output"] == "approved:alice"
    assert outputs["timeout"]["output"] == "timeout"
    assert outputs["monitor"]["output"] == {"checks": 3, "status": "done"}
    assert outputs["retry"]["output"] == "succeeded after 3 attempts"
    assert outputs["parent"]["output"] == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"] * 2
    log = host.log_tail(200_000)
    assert "Executed 'http_start' (Succeeded" in log
    assert "Executed 'durabletask_management' (Succeeded" in log


async def entity_state(http: aiohttp.ClientSession, url: str, expected: Any, timeout: float = 20.0) -> Any:
    """GET an entity's state until it equals ``expected`` (404 while it does not exist yet)."""
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(url) as resp:
            body = await resp.json()
            assert resp.status in (200, 404), body
        if resp.status == 200 and body == expected:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} is {body!r}, not {expected!r}, after {timeout}s")
        await asyncio.sleep(0.1)


async def test_entity_samples_over_http(http: aiohttp.ClientSession, host: HostProcess) -> None:
    api = f"{host.base}/api/durabletask"
    counter = f"{api}/entities/counter/visits"
    async with http.get(counter) as resp:
        assert resp.status == 404  # never signaled
    for op, value in (("add", 5), ("add", 2), ("reset", None), ("add", 10), ("add", 1)):
        async with http.post(f"{counter}?op={op}", json=value) as resp:
            assert resp.status == 202, await resp.text()
    assert await entity_state(http, counter, 11) == 11  # signals of one sender, in order

    async with http.post(f"{api}/entities/account/alice?op=deposit", json=100) as resp:
        assert resp.status == 202, await resp.text()
    await entity_state(http, f"{api}/entities/account/alice", {"balance": 100})
    orders = [{"from": "alice", "to": "bob", "amount": 30}, {"from": "bob", "to": "carol", "amount": 20}]
    orders += [{"from": "carol", "to": "alice", "amount": 50}, {"from": "alice", "to": "carol", "amount": 25}]
    started = [await start(http, host, "transfer", order) for order in orders]
    outputs = [await poll(http, p["statusQueryGetUri"]) for p in started]
    assert all(o["runtimeStatus"] == "Completed" for o in outputs), outputs
    balances = {}
    for name in ("alice", "bob", "carol"):
        async with http.get(f"{api}/entities/account/{name}") as resp:
            balances[name] = (await resp.json())["balance"]
    assert sum(balances.values()) == 100 and min(balances.values()) >= 0, balances
    assert outputs[0]["output"] == {"transferred": True, "balances": {"alice": 70, "bob": 30}}

    async with http.get(f"{api}/entities/account?fetchState=true") as resp:
        listed = {e["entityId"]["key"]: e["state"] for e in await resp.json()}
    assert listed == {name: {"balance": value} for name, value in balances.items()}
    async with http.get(f"{api}/instances/@counter@visits") as resp:
        assert resp.status == 404  # entities are not orchestration instances


async def test_terminate_via_terminate_post_uri(http: aiohttp.ClientSession, host: HostProcess) -> None:
    payload = await start(http, host, "approval_workflow", {"timeout_s": 3600})
    await wait_custom_status(http, payload["statusQueryGetUri"])
    url = payload["terminatePostUri"].replace("{text}", "enough")
    async with http.post(url) as resp:
        assert resp.status == 202, await resp.text()
    status = await poll(http, payload["statusQueryGetUri"])
    assert (status["runtimeStatus"], status["output"]) == ("Terminated", "enough")
    async with http.post(url) as resp:  # a finished instance cannot be terminated again
        assert resp.status == 410


async def test_unknown_routes_and_methods(http: aiohttp.ClientSession, host: HostProcess) -> None:
    async with http.get(f"{host.base}/api/nothing/here") as resp:
        assert resp.status == 404
    async with http.get(f"{host.base}/api/orchestrators/hello_sequence") as resp:
        assert resp.status == 405
    async with http.post(f"{host.base}/api/orchestrators/hello_sequence", data=b"{not json") as resp:
        assert resp.status == 400
    async with http.post(f"{host.base}/api/orchestrators/no_such_thing") as resp:
        assert resp.status == 404


async def test_official_client_drives_the_running_host(host: HostProcess, hub: str) -> None:
    sdk = official.DurableOrchestrationClient(
        official_client_binding(f"{host.base}/api/durabletask/", task_hub=hub)
    )
    try:
        iid = await sdk.start_new("hello_sequence", None, None)
        deadline = time.monotonic() + 30
        while (status := await sdk.get_status(iid)).runtime_status != (
            official.OrchestrationRuntimeStatus.Completed
        ):
            assert time.monotonic() < deadline, status.runtime_status
            await asyncio.sleep(0.1)
        assert status.output == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]

        waiting = await sdk.start_new("approval_workflow", None, {"timeout_s": 3600})
        while (await sdk.get_status(waiting)).custom_status is None:
            await asyncio.sleep(0.05)
        await sdk.raise_event(waiting, "Approval", "bob")
        while (status := await sdk.get_status(waiting)).runtime_status != (
            official.OrchestrationRuntimeStatus.Completed
        ):
            await asyncio.sleep(0.1)
        assert status.output == "approved:bob"

        stuck = await sdk.start_new("approval_workflow", None, {"timeout_s": 3600})
        await sdk.terminate(stuck, "stop")
        while (await sdk.get_status(stuck)).runtime_status != official.OrchestrationRuntimeStatus.Terminated:
            await asyncio.sleep(0.1)
        completed = await sdk.get_status_by(runtime_status=[official.OrchestrationRuntimeStatus.Completed])
        assert {iid, waiting} <= {s.instance_id for s in completed}
        purged = await sdk.purge_instance_history(iid)
        assert purged.instances_deleted == 1
    finally:
        await official_http._close_session()


async def test_two_hosts_share_one_hub(http: aiohttp.ClientSession, azurite: Azurite, tmp_path: Path) -> None:
    hub = new_hub("Two")
    hosts = [HostProcess(tmp_path, azurite.connection_string, hub, name=f"h{i}") for i in range(2)]
    try:
        for h in hosts:
            h.wait_ready()
        payloads = [await start(http, hosts[n % 2], "fan_out_fan_in", 40) for n in range(8)]
        expected = ("Completed", sum(n * n for n in range(1, 41)))
        for p in payloads:
            status = await poll(http, p["statusQueryGetUri"], timeout=60)
            assert (status["runtimeStatus"], status["output"]) == expected
    finally:
        codes = [h.stop(sig=sig) for h, sig in zip(hosts, (signal.SIGTERM, signal.SIGINT), strict=True)]
    assert codes == [0, 0], [h.log_tail() for h in hosts]
    for h in hosts:
        stats = h.stats()
        durable = {k: v for k, v in stats["invocations"].items() if k.startswith("durabletask_")}
        assert sum(durable.values()) > 0, (h.log_path, stats)
        assert stats["engine"]["steps"] > 0 and stats["engine"]["activities"] > 0, stats
    assert sum(h.stats()["engine"]["activities"] for h in hosts) >= 8 * 40
