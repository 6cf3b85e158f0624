"""Durable entities in memory: the entity API, calls and signals, critical sections, ordering.

The app is defined here; each test uses its own entity keys so tests stay
independent. The ordering rules of the entity step are also checked directly
on the pure step (``run_entity_step``), including a property test that
shuffles, splits and duplicates the messages of several senders.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.core import history as h
from durable_ext.core.entities import (
    EntityRequest,
    SchedulerState,
    SendCounters,
    needs_step,
    run_entity_step,
)
from durable_ext.core.registry import Registry
from durable_ext.core.runtime import InstanceRecord
from durable_ext.core.serialization import from_json
from durable_ext.testing import DurableTestEnv, replay

app = df.DurableApp()


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    """add / reset / get / delete / fail (changes the state, then raises)."""
    value = context.get_state(lambda: 0)
    op = context.operation_name
    if op == "add":
        value += context.get_input()
    elif op == "reset":
        value = 0
    elif op == "delete":
        context.destruct_on_exit()
        return
    elif op == "fail":
        context.set_state(value + 1000)
        raise ValueError(f"refused at {value}")
    elif op == "forward":  # signal another counter from inside an operation
        context.signal_entity(df.EntityId("counter", context.get_input()), "add", value)
    context.set_state(value)
    context.set_result(value)


@app.entity_trigger(context_name="ctx", entity_name="journal")
def journal(ctx: df.DurableEntityContext) -> None:
    """Appends ``[sender, n]`` inputs; keeps one list per sender."""
    state: dict[str, list[Any]] = ctx.get_state(dict)
    if ctx.operation_name == "append":
        sender, n = ctx.get_input()
        state.setdefault(sender, []).append(n)
    ctx.set_state(state)
    ctx.set_result(state)


class Account:
    """A class-based entity: the object is the state, public methods are the operations."""

    def __init__(self) -> None:
        self.balance = 0

    def deposit(self, amount: int) -> int:
        self.balance += amount
        return self.balance

    def withdraw(self, amount: int) -> int:
        if amount > self.balance:
            raise ValueError(f"balance {self.balance} is less than {amount}")
        self.balance -= amount
        return self.balance

    def get(self) -> int:
        return self.balance


app.entity_trigger(context_name="context", entity_name="account")(Account)


@dataclass
class Point:
    x: int = 0
    y: int = 0

    def move(self, by: list[int]) -> Point:
        self.x += by[0]
        self.y += by[1]
        return self


class Tally(BaseModel):
    count: int = 0
    names: list[str] = []

    def add(self, name: str) -> int:
        self.names.append(name)
        self.count += 1
        return self.count


app.entity_trigger(context_name="context", entity_name="point")(Point)
app.entity_trigger(context_name="context", entity_name="tally")(Tally)


def _wrapped_entity(context: df.DurableEntityContext) -> None:
    context.set_state(context.get_state(lambda: "") + str(context.get_input()))


def _wrapped_orchestrator(context: df.DurableOrchestrationContext):
    yield context.call_entity(df.EntityId("wrapped", context.get_input()), "append", "x")
    return (yield context.call_entity(df.EntityId("wrapped", context.get_input()), "append", "y"))


app.entity_trigger(context_name="context", entity_name="wrapped")(df.Entity.create(_wrapped_entity))
app.orchestration_trigger(context_name="context", orchestration="wrapped_flow")(
    df.Orchestrator.create(_wrapped_orchestrator)
)


@app.orchestration_trigger(context_name="context")
def use_counter(context: df.DurableOrchestrationContext):
    """Signal, call, call an operation that fails, read again."""
    entity = df.EntityId("counter", context.get_input())
    context.signal_entity(entity, "add", 5)
    first = yield context.call_entity(entity, "add", 1)
    try:
        yield context.call_entity(entity, "fail")
        error = None
    except df.EntityOperationFailedError as exc:
        error = [exc.error_type, exc.message]
    after = yield context.call_entity(entity, "get")
    return [first, error, after]


@app.orchestration_trigger(context_name="context")
def typed_call(context: df.DurableOrchestrationContext):
    """A call whose result is rebuilt as a dataclass."""
    point = yield context.call_entity(
        df.EntityId("point", context.get_input()), "move", [2, 3], result_type=Point
    )
    return [type(point).__name__, point.x, point.y]


@app.orchestration_trigger(context_name="context")
def append_many(context: df.DurableOrchestrationContext):
    """Appends 0..n-1 to a journal, some steps apart (a timer every ``every`` signals)."""
    key, n, every = context.get_input()
    target = df.EntityId("journal", key)
    for i in range(n):
        context.signal_entity(target, "append", [context.instance_id, i])
        if every and i % every == every - 1:
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=1))
    return (yield context.call_entity(target, "get"))


@app.orchestration_trigger(context_name="context")
def transfer(context: df.DurableOrchestrationContext):
    """Move an amount between two accounts inside a critical section; False if it does not cover."""
    source, target, amount = context.get_input()
    src, dst = df.EntityId("account", source), df.EntityId("account", target)
    with (yield context.lock([src, dst])):
        assert context.is_locked
        balance = yield context.call_entity(src, "get")
        if balance < amount:
            return False
        yield context.task_all(
            [context.call_entity(src, "withdraw", amount), context.call_entity(dst, "deposit", amount)]
        )
    assert not context.is_locked
    return True


@app.orchestration_trigger(context_name="context")
def hold_lock(context: df.DurableOrchestrationContext):
    """Lock the entities named in the input, then wait for an event (or fail on 'boom') inside."""
    keys, mode = context.get_input()
    section = yield context.lock([df.EntityId("counter", k) for k in keys])
    with section:
        yield context.call_entity(df.EntityId("counter", keys[0]), "add", 1)
        reply = yield context.wait_for_external_event("go")
        if reply == "boom":
            raise RuntimeError("failed inside the critical section")
    if mode == "keep":  # lock again and end without releasing: the end of the orchestration does
        yield context.lock([df.EntityId("counter", k) for k in keys])
    return "done"


@app.orchestration_trigger(context_name="context")
def bad_locking(context: df.DurableOrchestrationContext):
    """Breaks a critical-section rule chosen by the input."""
    rule = context.get_input()
    with (yield context.lock([df.EntityId("counter", "rule-a")])):
        if rule == "nested":
            yield context.lock([df.EntityId("counter", "rule-b")])
        else:
            yield context.call_entity(df.EntityId("counter", "rule-b"), "get")
    return "unreachable"


@app.orchestration_trigger(context_name="context")
def scheduled_signal(context: df.DurableOrchestrationContext):
    """Signal a counter one hour from now."""
    when = context.current_utc_datetime + timedelta(hours=1)
    context.signal_entity(df.EntityId("counter", context.get_input()), "add", 7, scheduled_time=when)
    return "sent"


@pytest.fixture
async def env() -> AsyncIterator[DurableTestEnv]:
    async with DurableTestEnv(app) as environment:
        yield environment


async def state_of(env: DurableTestEnv, name: str, key: str) -> Any:
    response = await env.client.read_entity_state(df.EntityId(name, key))
    return response.entity_state if response.entity_exists else "missing"


# ---------------------------------------------------------------------------- ids


def test_entity_id_follows_the_official_scheduler_id() -> None:
    entity = df.EntityId("Counter", "My Key")
    assert str(entity) == "@counter@My Key"
    assert df.EntityId.get_scheduler_id(entity) == "@counter@My Key"
    assert df.EntityId.get_entity_id("@counter@a@b") == df.EntityId("counter", "a@b")
    assert df.EntityId.get_entity_id_url_path(entity) == "entities/Counter/My Key"
    assert entity == df.EntityId("COUNTER", "My Key") and hash(entity) == hash(
        df.EntityId("counter", "My Key")
    )
    assert entity != df.EntityId("counter", "my key")
    for name, key in (("", "k"), ("n", ""), ("a@b", "k")):
        with pytest.raises(ValueError):
            df.EntityId(name, key)
    for text in ("counter", "@counter@", "@@k", "@counter"):
        with pytest.raises(ValueError, match="not an entity instance id"):
            df.EntityId.get_entity_id(text)


# ------------------------------------------------------------- operations, client


async def test_client_signals_are_applied_in_order_and_read_back(env: DurableTestEnv) -> None:
    entity = df.EntityId("counter", "client")
    assert (await env.client.read_entity_state(entity)).entity_exists is False
    for op, value in (("add", 3), ("add", 4), ("reset", None), ("add", 10)):
        await env.client.signal_entity(entity, op, value)
    await env.run_until_idle()
    assert await state_of(env, "counter", "client") == 10
    await env.client.signal_entity(entity, "delete")
    await env.run_until_idle()
    response = await env.client.read_entity_state(entity)
    assert (response.entity_exists, response.entity_state) == (False, None)


async def test_a_batch_of_signals_is_applied_in_one_step(env: DurableTestEnv) -> None:
    entity = df.EntityId("counter", "batch")
    await env.client.signal_entity(entity, "add", 0)
    await env.run_until_idle()
    steps = env.engine.stats["steps"]
    for _ in range(50):
        await env.client.signal_entity(entity, "add", 1)
    await env.run_until_idle()
    assert await state_of(env, "counter", "batch") == 50
    assert env.engine.stats["steps"] - steps == 1


async def test_orchestrator_calls_signals_and_sees_failures_rolled_back(env: DurableTestEnv) -> None:
    first, error, after = await env.run("use_counter", "orch")
    assert first == 6  # the signal sent before the call was applied before it
    assert error == ["ValueError", "refused at 6"]
    assert after == 6  # the failing operation's set_state(+1000) was rolled back
    assert await state_of(env, "counter", "orch") == 6


async def test_a_failed_operation_rolls_back_within_a_batch(env: DurableTestEnv) -> None:
    entity = df.EntityId("counter", "rollback")
    steps = env.engine.stats["steps"]
    for op, value in (("add", 1), ("fail", None), ("add", 1), ("fail", None)):
        await env.client.signal_entity(entity, op, value)
    await env.run_until_idle()
    assert env.engine.stats["steps"] - steps == 1  # one batch
    assert await state_of(env, "counter", "rollback") == 2


async def test_class_entities_plain_dataclass_and_pydantic(env: DurableTestEnv) -> None:
    await env.client.signal_entity(df.EntityId("account", "c1"), "deposit", 40)
    await env.client.signal_entity(df.EntityId("account", "c1"), "withdraw", 15)
    await env.client.signal_entity(df.EntityId("account", "c1"), "withdraw", 100)  # fails: no change
    await env.client.signal_entity(df.EntityId("tally", "t"), "add", "ann")
    await env.client.signal_entity(df.EntityId("tally", "t"), "add", "bob")
    await env.run_until_idle()
    assert await state_of(env, "account", "c1") == {"balance": 25}
    assert await state_of(env, "tally", "t") == {"count": 2, "names": ["ann", "bob"]}
    assert await env.run("typed_call", "p") == ["Point", 2, 3]
    assert await env.run("typed_call", "p") == ["Point", 4, 6]
    state = await env.client.read_entity_state(df.EntityId("point", "p"), state_type=Point)
    assert state.entity_state == Point(4, 6)
    await env.client.signal_entity(df.EntityId("account", "c1"), "delete")
    await env.run_until_idle()
    assert await state_of(env, "account", "c1") == "missing"


async def test_unknown_operations_and_entities_fail_the_call_with_a_clear_message() -> None:
    registry = Registry()
    registry.add("entity", Account, "account")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for target, op, fragment in (
        ("@account@x", "nope", "has no operation 'nope' (operations: deposit, get, withdraw)"),
        ("@missing@x", "get", "no entity function named 'missing'"),
    ):
        request = EntityRequest("r1", "call", op=op, parent="caller", parent_execution="e1")
        record = InstanceRecord(target, target.split("@")[1], "", Status.Running, now, now)
        step = run_entity_step(registry, record, [request.message(target, now)], now)
        (answer,) = step.messages
        assert answer.instance_id == "caller" and answer.execution_id == "e1"
        assert answer.event["Name"] == "r1"
        assert fragment in answer.event["Input"]


async def test_official_create_wrappers_register_the_functions(env: DurableTestEnv) -> None:
    assert await env.run("wrapped_flow", "w") is None
    assert await state_of(env, "wrapped", "w") == "xy"


async def test_entity_operations_signal_other_entities(env: DurableTestEnv) -> None:
    await env.client.signal_entity(df.EntityId("counter", "src"), "add", 9)
    await env.client.signal_entity(df.EntityId("counter", "src"), "forward", "dst")
    await env.run_until_idle()
    assert await state_of(env, "counter", "dst") == 9


async def test_scheduled_signals_wait_for_their_time(env: DurableTestEnv) -> None:
    entity = df.EntityId("counter", "later")
    await env.client.signal_entity(entity, "add", 2, scheduled_time=env.now() + timedelta(minutes=30))
    assert await env.run("scheduled_signal", "later") == "sent"
    await env.run_until_idle()
    assert await state_of(env, "counter", "later") == "missing"
    await env.skip(timedelta(minutes=31))
    assert await state_of(env, "counter", "later") == 2
    await env.skip(timedelta(minutes=30))
    assert await state_of(env, "counter", "later") == 9


async def test_listing_entities_and_instances_stay_apart(env: DurableTestEnv) -> None:
    for key in ("l1", "l2", "l3"):
        await env.client.signal_entity(df.EntityId("counter", key), "add", 1)
    await env.client.signal_entity(df.EntityId("account", "l9"), "deposit", 1)
    iid = await env.start("use_counter", "l4")
    await env.wait_for_completion(iid)
    await env.client.signal_entity(df.EntityId("counter", "l3"), "delete")
    await env.run_until_idle()
    statuses = await env.client.get_status_all()
    assert [s.instance_id for s in statuses] == [iid]
    page = await env.client.list_entities("counter", page_size=2)
    keys = [e.entity_id.key for e in page.entities]
    while page.continuation_token:
        page = await env.client.list_entities(
            "counter", page_size=2, continuation_token=page.continuation_token
        )
        keys += [e.entity_id.key for e in page.entities]
    assert keys == ["l1", "l2", "l4"]  # l3 was deleted
    everything = await env.client.list_entities(fetch_state=False)
    assert {str(e.entity_id) for e in everything.entities} == {
        "@account@l9",
        "@counter@l1",
        "@counter@l2",
        "@counter@l4",
    }
    assert all(e.state is None for e in everything.entities)
    with pytest.raises(df.InvalidInstanceIdError, match="reserved for entities"):
        await env.client.start_new("use_counter", "@counter@x")
    for call in (env.client.raise_event("@counter@l1", "op", {}), env.client.terminate("@counter@l1")):
        with pytest.raises(df.InvalidInstanceIdError, match="is an entity"):
            await call
    with pytest.raises(ValueError, match="must not contain '@'"):
        await env.client.list_entities("a@b")


# ------------------------------------------------------------------------ ordering


async def test_signals_of_each_orchestration_arrive_in_order(env: DurableTestEnv) -> None:
    ids = [await env.start("append_many", ["order", 12, 5]) for _ in range(3)]
    for iid in ids:
        assert (await env.wait_for_completion(iid)).runtime_status == Status.Completed
    state = await state_of(env, "journal", "order")
    assert state == {iid: list(range(12)) for iid in ids}


NOW = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def journal_registry() -> Registry:
    registry = Registry()
    registry.add("entity", journal, "journal", "ctx")
    return registry


def sequenced(sender: str, count: int, start: datetime = NOW) -> list[Any]:
    """``count`` append requests from ``sender``, numbered as an orchestration numbers them."""
    counters = SendCounters(sender)
    out = []
    for i in range(count):
        request = EntityRequest(
            f"{sender}-{i}", "signal", op="append", input=f'["{sender}",{i}]', parent=sender
        )
        counters.stamp(request, "@journal@j", start + timedelta(seconds=i))
        out.append(request.message("@journal@j", start))
    return out


def apply(
    registry: Registry, record: InstanceRecord, batch: list[Any], now: datetime = NOW
) -> InstanceRecord:
    return run_entity_step(registry, record, batch, now).record


def journal_state(record: InstanceRecord) -> dict[str, list[int]]:
    scheduler = SchedulerState.from_json(record.input)
    return from_json(scheduler.state) if scheduler.state else {}


def fresh_journal() -> InstanceRecord:
    return InstanceRecord("@journal@j", "journal", "", Status.Running, NOW, NOW)


def test_out_of_order_messages_wait_for_their_predecessor_and_copies_are_dropped() -> None:
    registry = journal_registry()
    m0, m1, m2 = sequenced("a", 3)
    record = apply(registry, fresh_journal(), [m2, m1])
    assert journal_state(record) == {}  # seq 2 and 3 wait for seq 1
    assert len(SchedulerState.from_json(record.input).held) == 2
    record = apply(registry, record, [m0, m1])  # seq 1 arrives, with a second copy of seq 2
    assert journal_state(record) == {"a": [0, 1, 2]}
    record = apply(registry, record, [m0, m2])  # late copies of applied messages
    assert journal_state(record) == {"a": [0, 1, 2]}


def test_a_sender_seen_long_ago_or_a_lost_predecessor_does_not_block_forever() -> None:
    registry = journal_registry()
    old = sequenced("b", 3, NOW - timedelta(hours=3))
    # the entity forgot sender b (idle longer than twice the window): seq 3, whose predecessor
    # was sent hours ago, is applied at once
    record = apply(registry, fresh_journal(), [old[2]])
    assert journal_state(record) == {"b": [2]}
    recent = sequenced("c", 3)
    record = apply(registry, record, [recent[2]])
    assert "c" not in journal_state(record)  # its predecessor is recent: wait for it
    later = NOW + timedelta(hours=1)  # past the reorder window: apply what waited
    assert not needs_step(record, NOW) and needs_step(record, later)  # the engine steps even with no inbox
    record = apply(registry, record, [], later)
    assert journal_state(record)["c"] == [2]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_delivery_order_with_copies_applies_each_message_once_in_sender_order(
    data: st.DataObject,
) -> None:
    registry = journal_registry()
    messages = sequenced("s1", 6) + sequenced("s2", 5) + sequenced("s3", 4)
    copies = data.draw(st.lists(st.sampled_from(messages), max_size=8))
    delivery = messages + copies
    rng = random.Random(data.draw(st.integers(0, 2**32 - 1)))
    rng.shuffle(delivery)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(delivery)), max_size=6)))
    record = fresh_journal()
    start = 0
    for cut in [*cuts, len(delivery)]:
        record = apply(registry, record, delivery[start:cut])
        start = max(start, cut)
    assert journal_state(record) == {"s1": list(range(6)), "s2": list(range(5)), "s3": list(range(4))}
    assert SchedulerState.from_json(record.input).held == []


# ------------------------------------------------------------------ critical sections


async def test_transfers_inside_critical_sections_conserve_the_total(env: DurableTestEnv) -> None:
    for key, amount in (("a", 100), ("b", 50), ("c", 0)):
        await env.client.signal_entity(df.EntityId("account", key), "deposit", amount)
    moves = [("a", "b", 30), ("b", "c", 60), ("c", "a", 10), ("b", "a", 200), ("a", "c", 25)] * 3
    ids = [await env.start("transfer", list(move)) for move in moves]
    outputs = [(await env.wait_for_completion(iid)).output for iid in ids]
    balances = {k: (await state_of(env, "account", k))["balance"] for k in "abc"}
    assert sum(balances.values()) == 150
    assert min(balances.values()) >= 0
    assert False in outputs and True in outputs
    for key in "abc":
        scheduler = SchedulerState.from_json((await env.backend.get_instance(f"@account@{key}")).input)
        assert scheduler.lock is None and scheduler.queue == []


async def test_a_lock_holds_back_other_callers_until_released(env: DurableTestEnv) -> None:
    iid = await env.start("hold_lock", [["h1", "h2"], "once"])
    await env.run_until_idle()
    await env.client.signal_entity(df.EntityId("counter", "h2"), "add", 10)
    other = await env.start("use_counter", "h1")
    await env.run_until_idle()
    assert await state_of(env, "counter", "h2") == "missing"  # the signal waits behind the lock
    assert (await env.client.get_status(other)).runtime_status == Status.Running
    assert await state_of(env, "counter", "h1") == 1  # the owner's own call went through
    await env.client.raise_event(iid, "go", "ok")
    assert (await env.wait_for_completion(iid)).output == "done"
    assert (await env.wait_for_completion(other)).output == [7, ["ValueError", "refused at 7"], 7]
    assert await state_of(env, "counter", "h2") == 10


@pytest.mark.parametrize("how", ["fail", "terminate", "end"])
async def test_locks_are_released_however_the_orchestration_ends(env: DurableTestEnv, how: str) -> None:
    keys = [f"{how}-x", f"{how}-y"]
    iid = await env.start("hold_lock", [keys, "keep" if how == "end" else "once"])
    await env.run_until_idle()
    if how == "fail":
        await env.client.raise_event(iid, "go", "boom")
    elif how == "terminate":
        await env.client.terminate(iid, "stop")
    else:
        await env.client.raise_event(iid, "go", "ok")
    status = await env.wait_for_completion(iid)
    expected = {"fail": Status.Failed, "terminate": Status.Terminated, "end": Status.Completed}[how]
    assert status.runtime_status == expected
    other = await env.start("use_counter", keys[1])
    assert (await env.wait_for_completion(other)).runtime_status == Status.Completed
    for key in keys:
        scheduler = SchedulerState.from_json((await env.backend.get_instance(f"@counter@{key}")).input)
        assert scheduler.lock is None


async def test_a_lock_granted_after_termination_is_released(env: DurableTestEnv) -> None:
    holder = await env.start("hold_lock", [["late"], "once"])
    await env.run_until_idle()
    waiter = await env.start("hold_lock", [["late"], "once"])  # waits for the holder's lock
    await env.run_until_idle()
    await env.client.terminate(waiter, "gave up")
    assert (await env.wait_for_completion(waiter)).runtime_status == Status.Terminated
    await env.client.raise_event(holder, "go", "ok")
    await env.wait_for_completion(holder)
    await env.run_until_idle()  # the lock passes to the terminated waiter, which releases it
    scheduler = SchedulerState.from_json((await env.backend.get_instance("@counter@late")).input)
    assert scheduler.lock is None and scheduler.queue == []
    assert (await env.run("use_counter", "late"))[0] == 7


@pytest.mark.parametrize(
    ("rule", "fragment"), [("nested", "inside a critical section"), ("other", "does not lock it")]
)
async def test_locking_rules_fail_the_orchestration_clearly(
    env: DurableTestEnv, rule: str, fragment: str
) -> None:
    iid = await env.start("bad_locking", rule)
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert "LockingRulesViolationError" in str(status.failure) and fragment in str(status.output)
    assert (await env.run("use_counter", "rule-a"))[0] == 6  # the failed orchestration released its lock


async def test_entity_histories_replay_deterministically(env: DurableTestEnv) -> None:
    iid = await env.start("transfer", ["r1", "r2", 0])
    assert (await env.wait_for_completion(iid)).output is True
    history = await env.history(iid)
    sent = [e for e in history if e["EventType"] == h.EventType.EventSent]
    assert [e["InstanceId"] for e in sent][:2] == ["@account@r1", "@account@r1"]  # lock, then get
    result = replay(transfer, history)
    assert result.is_done and result.output is True and result.actions == []


def _official_flow(context: Any):
    """Written against the official API only: signal, call, a failing call, call."""
    entity = df.EntityId("counter", context.instance_id)
    context.signal_entity(entity, "add", 2)
    first = yield context.call_entity(entity, "add", 3)
    try:
        yield context.call_entity(entity, "fail")
        error = None
    except Exception:  # the official SDK raises a plain Exception, durable_ext a subclass of it
        error = "failed"
    return [first, (yield context.call_entity(entity, "get")), error]


app.orchestration_trigger(context_name="context", orchestration="official_flow")(_official_flow)


async def test_the_official_sdk_replays_entity_histories(env: DurableTestEnv) -> None:
    from azure.durable_functions import Orchestrator

    iid = await env.start("official_flow", None, "official-1")
    status = await env.wait_for_completion(iid)
    assert status.output == [5, 5, "failed"]
    history = await env.history(iid)
    body = {
        "history": history,
        "instanceId": iid,
        "isReplaying": True,
        "parentInstanceId": None,
        "input": None,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns about its own bookkeeping
        state = json.loads(Orchestrator.create(_official_flow)(json.dumps(body)))
    assert (state["isDone"], state["output"]) == (True, [5, 5, "failed"])
