"""End-to-end runs of the sample orchestrations through the in-memory test environment."""

from __future__ import annotations

import pytest
from function_app import app

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus
from durable_ext.testing import DurableTestEnv


@pytest.fixture
async def env():
    async with DurableTestEnv(app) as environment:
        yield environment


async def test_hello_sequence(env: DurableTestEnv) -> None:
    assert await env.run("hello_sequence") == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]


async def test_fan_out_fan_in(env: DurableTestEnv) -> None:
    assert await env.run("fan_out_fan_in", 20) == sum(n * n for n in range(1, 21))


async def test_approval_times_out_without_waiting(env: DurableTestEnv) -> None:
    before = env.now()
    assert await env.run("approval_workflow", {"timeout_s": 30 * 24 * 3600}) == "timeout"
    assert (env.now() - before).days >= 30


async def test_approval_approved(env: DurableTestEnv) -> None:
    iid = await env.start("approval_workflow", {"timeout_s": 3600})
    await env.wait_for_status(iid, lambda s: s.custom_status == "waiting for approval")
    await env.client.raise_event(iid, "Approval", "alice")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed
    assert status.output == "approved:alice"


async def test_monitor_continues_as_new(env: DurableTestEnv) -> None:
    assert await env.run("monitor", {"interval_s": 60}) == {"checks": 3, "status": "done"}


async def test_retry_demo(env: DurableTestEnv) -> None:
    assert await env.run("retry_demo") == "succeeded after 3 attempts"


async def test_parent_child(env: DurableTestEnv) -> None:
    assert await env.run("parent_child") == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"] * 2


async def test_counter_entity(env: DurableTestEnv) -> None:
    entity = df.EntityId("counter", "sample")
    for op, value in (("add", 5), ("add", 2.5), ("add", "x"), ("get", None)):
        await env.client.signal_entity(entity, op, value)
    await env.run_until_idle()
    assert (await env.client.read_entity_state(entity)).entity_state == 7.5  # "x" was refused
    await env.client.signal_entity(entity, "reset")
    await env.run_until_idle()
    assert (await env.client.read_entity_state(entity)).entity_state == 0


async def test_transfer_between_accounts(env: DurableTestEnv) -> None:
    await env.client.signal_entity(df.EntityId("account", "alice"), "deposit", 100)
    moved = await env.run("transfer", {"from": "alice", "to": "bob", "amount": 30})
    assert moved == {"transferred": True, "balances": {"alice": 70, "bob": 30}}
    refused = await env.run("transfer", {"from": "bob", "to": "alice", "amount": 31})
    assert refused == {"transferred": False, "reason": "balance 30 is less than 31"}
    state = await env.client.read_entity_state(df.EntityId("account", "alice"))
    assert state.entity_state == {"balance": 70}
