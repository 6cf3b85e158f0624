"""Orchestration scenarios end to end through the in-memory test environment.

Every orchestrator and activity used here is defined in this module on one
app; tests that count calls key their bookkeeping by instance id so they stay
independent of each other.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

import durable_ext as df
from durable_ext import (
    EventType,
    OrchestrationFailedError,
    OrchestrationRuntimeStatus,
    RetryOptions,
    TaskFailedError,
)
from durable_ext.core import history as h
from durable_ext.core.history import Event, parse_timestamp
from durable_ext.core.runtime import Message
from durable_ext.core.serialization import to_json
from durable_ext.testing import DurableTestEnv, replay

Status = OrchestrationRuntimeStatus
app = df.DurableApp()

#: Calls of counting activities, by key (usually the calling instance id).
CALLS: dict[str, list[Any]] = defaultdict(list)
#: Side effects orchestrators record, by instance id.
EFFECTS: dict[str, list[Any]] = defaultdict(list)


class Gate:
    """An asyncio.Event the current test owns, for activities that must wait."""

    event: asyncio.Event | None = None

    @classmethod
    def reset(cls) -> asyncio.Event:
        cls.event = asyncio.Event()
        return cls.event


# ---------------------------------------------------------------------------- payload types


@dataclass
class Item:
    sku: str
    qty: int


@dataclass
class Order:
    order_id: str
    items: list[Item]


class Quote(BaseModel):
    order_id: str
    total: float
    lines: list[str]


# ------------------------------------------------------------------------------- activities


@app.activity_trigger(input_name="name")
def hello(name: str) -> str:
    return f"Hello {name}!"


@app.activity_trigger(input_name="value")
def echo(value: Any) -> Any:
    return value


@app.activity_trigger(input_name="n")
async def square(n: int) -> int:
    await asyncio.sleep(0)
    return n * n


@app.activity_trigger(input_name="tag")
def explode(tag: str) -> str:
    raise ValueError(f"boom: {tag}")


@app.activity_trigger(input_name="n")
async def gated(n: int) -> int:
    assert Gate.event is not None
    await Gate.event.wait()
    return n


@app.activity_trigger(input_name="request")
def flaky(request: dict) -> int:
    """Fail the first ``request['fail']`` calls for ``request['key']``, then return the call count."""
    calls = CALLS[request["key"]]
    calls.append(request)
    if len(calls) <= request["fail"]:
        raise RuntimeError(f"attempt {len(calls)} failed")
    return len(calls)


@app.activity_trigger(input_name="order")
def price(order: Order) -> Quote:
    assert isinstance(order, Order), type(order)
    assert all(isinstance(item, Item) for item in order.items)
    lines = [f"{item.qty}x{item.sku}" for item in order.items]
    return Quote(order_id=order.order_id, total=sum(2.5 * item.qty for item in order.items), lines=lines)


@app.activity_trigger(input_name="quote")
async def describe_quote(quote: Quote) -> str:
    assert isinstance(quote, Quote), type(quote)
    return f"{quote.order_id}: {quote.total:.2f}"


@app.activity_trigger(input_name="order")
def split(order: Order) -> list[Item]:
    return [Item(item.sku, 1) for item in order.items for _ in range(item.qty)]


@app.activity_trigger(input_name="batches")
def regroup(batches: list[list[Item]]) -> list[list[Item]]:
    assert all(isinstance(item, Item) for batch in batches for item in batch)
    return [list(reversed(batch)) for batch in batches]


@app.activity_trigger(input_name="value")
def external_call(value: str) -> str:
    raise ConnectionError(f"real service reached with {value}")


# ---------------------------------------------------------------------------- orchestrators


@app.orchestration_trigger(context_name="context")
def sequence(context: df.DurableOrchestrationContext):
    results = []
    for city in context.get_input():
        results.append((yield context.call_activity("hello", city)))
    return results


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    tasks = [context.call_activity(square, n) for n in range(context.get_input())]
    return (yield context.task_all(tasks))


@app.orchestration_trigger(context_name="context")
def fan_out_catch(context: df.DurableOrchestrationContext):
    tasks = [context.call_activity("gated", n) for n in range(3)]
    tasks.append(context.call_activity("explode", "fan-out"))
    try:
        yield context.task_all(tasks)
    except TaskFailedError as err:
        return {
            "task": err.task_name,
            "error_type": err.error_type,
            "message": err.message,
            "stack": err.stack_trace,
            "pending": sum(not t.is_completed for t in tasks),
        }
    return "no failure"


@app.orchestration_trigger(context_name="context")
def fan_out_uncaught(context: df.DurableOrchestrationContext):
    tasks = [context.call_activity("square", n) for n in range(3)]
    tasks.append(context.call_activity("explode", context.get_input()))
    results = yield context.task_all(tasks)
    return results


@app.orchestration_trigger(context_name="context")
def race(context: df.DurableOrchestrationContext):
    timer = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    approval = context.wait_for_external_event("Approval")
    winner = yield context.task_any([approval, timer])
    if winner is approval:
        timer.cancel()
        return {"winner": "event", "data": approval.result, "timer_cancelled": timer.is_cancelled}
    return {"winner": "timer", "event_done": approval.is_completed}


@app.orchestration_trigger(context_name="context")
def late_waiter(context: df.DurableOrchestrationContext):
    yield context.create_timer(timedelta(minutes=10))
    first = yield context.wait_for_external_event("Data")
    second = yield context.wait_for_external_event("data")  # names match case-insensitively
    return [first, second]


@app.orchestration_trigger(context_name="context")
def with_retry(context: df.DurableOrchestrationContext):
    cfg = context.get_input()
    options = RetryOptions(
        cfg["first"],
        cfg["attempts"],
        cfg.get("coefficient", 1.0),
        cfg.get("max_interval"),
        cfg.get("timeout"),
    )
    request = {"key": context.instance_id, "fail": cfg["fail"]}
    try:
        result = yield context.call_activity_with_retry("flaky", options, request)
    except TaskFailedError as err:
        return {"error_type": err.error_type, "error": err.message}
    return {"result": result}


@app.orchestration_trigger(context_name="context")
def child(context: df.DurableOrchestrationContext):
    value = context.get_input()
    if value.get("fail"):
        raise KeyError(f"child refused {value['n']}")
    doubled = yield context.call_activity("echo", value["n"] * 2)
    return {"doubled": doubled, "me": context.instance_id, "parent": context.parent_instance_id}


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    cfg = context.get_input()
    try:
        result = yield context.call_sub_orchestrator("child", cfg, cfg.get("child_id"))
    except TaskFailedError as err:
        return {"caught": err.error_type, "message": err.message, "task": err.task_name}
    return result


@app.orchestration_trigger(context_name="context")
def parent_same_child_twice(context: df.DurableOrchestrationContext):
    first = context.call_sub_orchestrator("child", {"n": 1}, "the-child")
    second = context.call_sub_orchestrator("child", {"n": 2}, "the-child")
    try:
        yield context.task_all([first, second])
    except TaskFailedError as err:
        return {"error_type": err.error_type, "message": err.message}
    return "both ran"


@app.orchestration_trigger(context_name="context")
def bad_output(context: df.DurableOrchestrationContext):
    yield context.call_activity("echo", 1)
    return Opaque()


@app.orchestration_trigger(context_name="context")
def parent_uncaught(context: df.DurableOrchestrationContext):
    return (yield context.call_sub_orchestrator("child", {"n": 1, "fail": True}))


@app.orchestration_trigger(context_name="context")
def parent_fan_out(context: df.DurableOrchestrationContext):
    tasks = [context.call_sub_orchestrator(child, {"n": n}) for n in range(4)]
    results = yield context.task_all(tasks)
    return [r["doubled"] for r in results], [r["me"] for r in results]


@app.orchestration_trigger(context_name="context")
def flaky_child(context: df.DurableOrchestrationContext):
    calls = yield context.call_activity("flaky", context.get_input())
    return {"calls": calls, "me": context.instance_id}


@app.orchestration_trigger(context_name="context")
def parent_retry(context: df.DurableOrchestrationContext):
    options = RetryOptions(500, 4)
    request = {"key": context.instance_id, "fail": 2}
    return (yield context.call_sub_orchestrator_with_retry("flaky_child", options, request))


@app.orchestration_trigger(context_name="context")
def counter(context: df.DurableOrchestrationContext):
    state = context.get_input()
    seen = yield context.call_activity("echo", state["n"])
    if seen < state["until"]:
        context.continue_as_new({**state, "n": seen + 1})
        return None
    return {"n": seen, "started": context.current_utc_datetime.isoformat()}


@app.orchestration_trigger(context_name="context")
def carry_events(context: df.DurableOrchestrationContext):
    cfg = context.get_input()
    if cfg["round"] == 1:
        go = yield context.wait_for_external_event("go")
        context.continue_as_new({**cfg, "round": 2, "go": go}, save_events=cfg["save"])
        return None
    extra = context.wait_for_external_event("extra")
    timer = context.create_timer(timedelta(hours=1))
    winner = yield context.task_any([extra, timer])
    got = extra.result if winner is extra else None
    return {"go": cfg["go"], "extra": got, "timed_out": winner is timer}


@app.orchestration_trigger(context_name="context")
def progress(context: df.DurableOrchestrationContext):
    for step in range(1, 4):
        context.set_custom_status({"step": step, "of": 3})
        yield context.wait_for_external_event("next")
    context.set_custom_status("done")
    return "finished"


@app.orchestration_trigger(context_name="context")
def waiter(context: df.DurableOrchestrationContext):
    value = yield context.wait_for_external_event("go")
    more = yield context.call_activity("echo", value)
    return {"got": more}


@app.orchestration_trigger(context_name="context")
def deterministic(context: df.DurableOrchestrationContext):
    first_id = context.new_uuid()
    first_time = context.current_utc_datetime
    echoed = yield context.call_activity("echo", {"id": first_id, "time": first_time.isoformat()})
    yield context.create_timer(timedelta(hours=2))
    second_id = context.new_uuid()
    second_time = context.current_utc_datetime
    echoed_again = yield context.call_activity("echo", {"id": second_id, "time": second_time.isoformat()})
    return {
        "first": {"id": first_id, "time": first_time.isoformat()},
        "first_echoed": echoed,
        "second": {"id": second_id, "time": second_time.isoformat()},
        "second_echoed": echoed_again,
    }


@app.orchestration_trigger(context_name="context")
def side_effects(context: df.DurableOrchestrationContext):
    for step in range(4):
        EFFECTS[f"{context.instance_id}:all"].append(step)
        if not context.is_replaying:
            EFFECTS[context.instance_id].append(step)
        yield context.call_activity("echo", step)
    return "ok"


@app.orchestration_trigger(context_name="context")
def typed(context: df.DurableOrchestrationContext):
    order = context.get_input(Order)
    assert isinstance(order, Order) and isinstance(order.items[0], Item)
    quote = yield context.call_activity("price", order)
    assert isinstance(quote, Quote), type(quote)
    text = yield context.call_activity(describe_quote, quote)
    units = yield context.call_activity("split", order)
    assert all(isinstance(unit, Item) for unit in units), units
    regrouped = yield context.call_activity("regroup", [units[:2], units[2:]])
    assert all(isinstance(unit, Item) for batch in regrouped for unit in batch)
    return {
        "quote_type": type(quote).__name__,
        "total": quote.total,
        "lines": quote.lines,
        "text": text,
        "units": [u.sku for u in units],
        "regrouped": [[u.sku for u in batch] for batch in regrouped],
    }


@app.orchestration_trigger(context_name="context", input_type=Order)
def typed_input(context: df.DurableOrchestrationContext):
    order = context.get_input()
    yield context.create_timer(timedelta(seconds=1))
    return {"type": type(order).__name__, "first_item": type(order.items[0]).__name__}


class Opaque:
    """Something JSON cannot carry."""


@app.orchestration_trigger(context_name="context")
def bad_payload(context: df.DurableOrchestrationContext):
    kind = context.get_input()
    value: Any = {Opaque(), Opaque()} if kind == "set" else Opaque()
    return (yield context.call_activity("echo", value))


@app.orchestration_trigger(context_name="context")
def uses_external(context: df.DurableOrchestrationContext):
    first = yield context.call_activity("external_call", "a")
    second = yield context.call_activity("external_call", "b")
    return [first, second]


@app.orchestration_trigger(context_name="context")
def long_sleep(context: df.DurableOrchestrationContext):
    start = context.current_utc_datetime
    yield context.create_timer(start + timedelta(days=30))
    return (context.current_utc_datetime - start).total_seconds()


@app.orchestration_trigger(context_name="context")
def yields_garbage(context: df.DurableOrchestrationContext):
    yield context.call_activity("echo", 1)
    yield 42


@app.orchestration_trigger(context_name="context")
def calls_unknown(context: df.DurableOrchestrationContext):
    try:
        yield context.call_activity("no_such_activity", 1)
    except TaskFailedError as err:
        return {"task": err.task_name, "message": err.message}
    return "unexpected success"


@app.orchestration_trigger(context_name="context")
def long_sequence(context: df.DurableOrchestrationContext):
    total = 0
    for n in range(context.get_input()):
        total += yield context.call_activity("square", n)
    return total


# ----------------------------------------------------------------------------------- helpers


@pytest.fixture
async def env() -> AsyncIterator[DurableTestEnv]:
    async with DurableTestEnv(app) as environment:
        yield environment


def events_of(history: list[Event], kind: EventType) -> list[Event]:
    """The events of one type, in history order."""
    return [e for e in history if e["EventType"] == kind]


async def deliver_late_event(env: DurableTestEnv, instance_id: str, name: str, data: Any) -> None:
    """Put an event in the instance's inbox directly (as one already in flight would be)."""
    event = h.event_raised(h.format_timestamp(env.now()), name, to_json(data))
    await env.backend.send_messages([Message(instance_id, event)])
    await env.run_until_idle()


def fire_delays(history: list[Event]) -> list[float]:
    """For each TimerCreated, seconds between its FireAt and the moment it was created."""
    return [
        (parse_timestamp(e["FireAt"]) - parse_timestamp(e["Timestamp"])).total_seconds()
        for e in events_of(history, EventType.TimerCreated)
    ]


# ------------------------------------------------------------------------- basic patterns


async def test_sequence_runs_in_order(env: DurableTestEnv) -> None:
    iid = await env.start("sequence", ["Tokyo", "Seattle", "London"])
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    assert status.output == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    scheduled = events_of(await env.history(iid), EventType.TaskScheduled)
    assert [e["Input"] for e in scheduled] == ['"Tokyo"', '"Seattle"', '"London"']
    assert [e["EventId"] for e in scheduled] == [0, 1, 2]


async def test_fan_out_fan_in_keeps_order(env: DurableTestEnv) -> None:
    assert await env.run("fan_out", 25) == [n * n for n in range(25)]


async def test_fan_out_of_nothing_completes_with_empty_list(env: DurableTestEnv) -> None:
    assert await env.run("fan_out", 0) == []


async def test_fan_out_schedules_all_tasks_in_one_step(env: DurableTestEnv) -> None:
    iid = await env.start("fan_out", 10)
    await env.wait_for_completion(iid)
    history = await env.history(iid)
    scheduled = events_of(history, EventType.TaskScheduled)
    assert len(scheduled) == 10
    assert len({e["Timestamp"] for e in scheduled}) == 1  # one episode scheduled them all


async def test_fan_out_failure_caught_fails_fast(env: DurableTestEnv) -> None:
    gate = Gate.reset()
    iid = await env.start("fan_out_catch")
    status = await env.wait_for_completion(iid, skip_time=False)
    gate.set()
    assert status.runtime_status == Status.Completed
    out = status.output
    assert out["task"] == "explode"
    assert out["error_type"] == "ValueError"
    assert out["message"] == "boom: fan-out"
    assert "raise ValueError" in out["stack"]
    assert out["pending"] == 3  # task_all failed without waiting for the gated activities


async def test_fan_out_failure_uncaught_fails_instance(env: DurableTestEnv) -> None:
    iid = await env.start("fan_out_uncaught", "nobody caught me")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert "fan_out_uncaught" in status.output
    assert "boom: nobody caught me" in status.output
    failure = status.failure
    assert failure is not None
    assert failure["ErrorType"] == "TaskFailedError"
    assert "boom: nobody caught me" in failure["ErrorMessage"]
    stack = failure["StackTrace"]
    assert "Traceback" in stack and "ValueError" in stack
    assert "raise ValueError" in stack  # the activity's own frame is part of the trace
    inner = failure["InnerFailure"]
    assert inner["ErrorType"] == "ValueError"
    assert inner["ErrorMessage"] == "boom: nobody caught me"
    history = await env.history(iid)
    completed = events_of(history, EventType.ExecutionCompleted)
    assert completed[-1]["OrchestrationStatus"] == "Failed"
    with pytest.raises(OrchestrationFailedError, match="boom"):
        await env.run("fan_out_uncaught", "again")


# ------------------------------------------------------------------------ timers and events


async def test_race_event_wins(env: DurableTestEnv) -> None:
    iid = await env.start("race")
    await env.run_until_idle()
    assert (await env.client.get_status(iid)).runtime_status == Status.Running
    await env.client.raise_event(iid, "Approval", {"by": "alice"})
    status = await env.wait_for_completion(iid, skip_time=False)
    assert status.output == {"winner": "event", "data": {"by": "alice"}, "timer_cancelled": True}
    # the abandoned timer firing later does not disturb the finished instance
    await env.skip(timedelta(hours=2))
    after = await env.client.get_status(iid)
    assert after.runtime_status == Status.Completed and after.output == status.output


async def test_race_timer_wins(env: DurableTestEnv) -> None:
    before = env.now()
    iid = await env.start("race")
    status = await env.wait_for_completion(iid)
    assert status.output == {"winner": "timer", "event_done": False}
    assert env.now() - before >= timedelta(hours=1)
    # an event still in flight when the instance finished is dropped
    await deliver_late_event(env, iid, "Approval", "too late")
    after = await env.client.get_status(iid)
    assert after.runtime_status == Status.Completed and after.output == status.output


async def test_event_raised_before_waiting_is_buffered(env: DurableTestEnv) -> None:
    iid = await env.start("late_waiter")
    await env.run_until_idle()  # now waiting on its 10-minute timer
    await env.client.raise_event(iid, "Data", 1)
    await env.client.raise_event(iid, "DATA", 2)
    await env.run_until_idle()
    assert (await env.client.get_status(iid)).runtime_status == Status.Running
    status = await env.wait_for_completion(iid)
    assert status.output == [1, 2]  # delivered in arrival order
    history = await env.history(iid)
    kinds = [e["EventType"] for e in history]
    assert kinds.index(EventType.EventRaised) < kinds.index(EventType.TimerFired)


async def test_thirty_day_timer_completes_at_once(env: DurableTestEnv) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    waited = await env.run("long_sleep")
    assert waited >= 30 * 24 * 3600
    assert loop.time() - started < 5


# ------------------------------------------------------------------------------------ retries


async def test_retry_succeeds_after_failures(env: DurableTestEnv) -> None:
    cfg = {"first": 1000, "attempts": 5, "fail": 2}
    iid = await env.start("with_retry", cfg)
    status = await env.wait_for_completion(iid)
    assert status.output == {"result": 3}
    assert len(CALLS[iid]) == 3
    history = await env.history(iid)
    assert len(events_of(history, EventType.TaskScheduled)) == 3
    assert len(events_of(history, EventType.TaskFailed)) == 2
    assert fire_delays(history) == [1.0, 1.0]


async def test_retry_exhausted_with_backoff(env: DurableTestEnv) -> None:
    cfg = {"first": 1000, "attempts": 6, "coefficient": 2.0, "max_interval": 5000, "fail": 100}
    iid = await env.start("with_retry", cfg)
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    assert status.output == {"error_type": "RuntimeError", "error": "attempt 6 failed"}
    assert len(CALLS[iid]) == 6
    history = await env.history(iid)
    assert fire_delays(history) == [1.0, 2.0, 4.0, 5.0, 5.0]
    # each retry is scheduled only once the durable timer before it fired
    timers = events_of(history, EventType.TimerCreated)
    retries = events_of(history, EventType.TaskScheduled)[1:]
    assert len(timers) == len(retries) == 5
    for timer, retry in zip(timers, retries, strict=True):
        assert parse_timestamp(retry["Timestamp"]) >= parse_timestamp(timer["FireAt"])
    fire_times = [parse_timestamp(t["FireAt"]) for t in timers]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fire_times)]
    for gap, delay in zip(gaps, [2.0, 4.0, 5.0, 5.0], strict=True):
        assert delay <= gap < delay + 1


async def test_retry_timeout_stops_early(env: DurableTestEnv) -> None:
    # Durable Task semantics: retry while now < first attempt + timeout. The tries
    # fail at about 0s and 1s (both retried), then at about 3s: past 2.5s, give up.
    cfg = {"first": 1000, "attempts": 10, "coefficient": 2.0, "timeout": 2500, "fail": 100}
    iid = await env.start("with_retry", cfg)
    status = await env.wait_for_completion(iid)
    assert status.output == {"error_type": "RuntimeError", "error": "attempt 3 failed"}
    assert len(CALLS[iid]) == 3
    assert fire_delays(await env.history(iid)) == [1.0, 2.0]


async def test_single_attempt_is_not_retried(env: DurableTestEnv) -> None:
    iid = await env.start("with_retry", {"first": 1000, "attempts": 1, "fail": 1})
    status = await env.wait_for_completion(iid)
    assert status.output == {"error_type": "RuntimeError", "error": "attempt 1 failed"}
    assert events_of(await env.history(iid), EventType.TimerCreated) == []


def test_retry_options_validate() -> None:
    with pytest.raises(ValueError, match="first_retry_interval"):
        RetryOptions(0, 3)
    with pytest.raises(ValueError, match="max_number_of_attempts"):
        RetryOptions(100, 0)
    with pytest.raises(ValueError, match="backoff_coefficient"):
        RetryOptions(100, 3, 0.5)


# -------------------------------------------------------------------------- sub-orchestrations


async def test_sub_orchestration_success(env: DurableTestEnv) -> None:
    iid = await env.start("parent", {"n": 21})
    status = await env.wait_for_completion(iid)
    out = status.output
    assert out["doubled"] == 42
    assert out["parent"] == iid
    assert out["me"] != iid
    child_status = await env.client.get_status(out["me"], show_input=True)
    assert child_status.runtime_status == Status.Completed
    assert child_status.name == "child"
    assert child_status.input_ == {"n": 21}


async def test_sub_orchestration_explicit_instance_id(env: DurableTestEnv) -> None:
    iid = await env.start("parent", {"n": 5, "child_id": "my-child"})
    status = await env.wait_for_completion(iid)
    assert status.output == {"doubled": 10, "me": "my-child", "parent": iid}
    assert (await env.client.get_status("my-child")).output == status.output
    created = events_of(await env.history(iid), EventType.SubOrchestrationInstanceCreated)
    assert [e["InstanceId"] for e in created] == ["my-child"]


async def test_sub_orchestration_failure_caught_by_parent(env: DurableTestEnv) -> None:
    iid = await env.start("parent", {"n": 7, "fail": True, "child_id": "failing-child"})
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    assert status.output["caught"] == "KeyError"
    assert "child refused 7" in status.output["message"]
    assert status.output["task"] == "child"
    child_status = await env.client.get_status("failing-child")
    assert child_status.runtime_status == Status.Failed


async def test_sub_orchestration_failure_uncaught_fails_parent(env: DurableTestEnv) -> None:
    iid = await env.start("parent_uncaught")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert "child refused 1" in status.output
    assert "KeyError" in status.failure["StackTrace"]


async def test_sub_orchestration_id_already_running_fails_the_task(env: DurableTestEnv) -> None:
    iid = await env.start("parent_same_child_twice")
    status = await env.wait_for_completion(iid)
    assert status.output["error_type"] == "InstanceAlreadyExists"
    assert "the-child" in status.output["message"]
    child_status = await env.client.get_status("the-child", show_input=True)
    assert child_status.runtime_status == Status.Completed
    assert child_status.input_ == {"n": 1}


async def test_sub_orchestrations_fan_out(env: DurableTestEnv) -> None:
    iid = await env.start("parent_fan_out")
    status = await env.wait_for_completion(iid)
    doubled, ids = status.output
    assert doubled == [0, 2, 4, 6]
    assert len(set(ids)) == 4 and all(i.startswith(iid) for i in ids)


async def test_sub_orchestration_with_retry(env: DurableTestEnv) -> None:
    iid = await env.start("parent_retry")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    assert status.output["calls"] == 3
    assert len(CALLS[iid]) == 3
    history = await env.history(iid)
    assert len(events_of(history, EventType.SubOrchestrationInstanceFailed)) == 2
    assert fire_delays(history) == [0.5, 0.5]


# ----------------------------------------------------------------------------- continue-as-new


async def test_continue_as_new_loops_and_truncates_history(env: DurableTestEnv) -> None:
    iid = await env.start("counter", {"n": 0, "until": 5})
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    assert status.output["n"] == 5
    history = await env.history(iid)
    started = events_of(history, EventType.ExecutionStarted)
    assert len(started) == 1  # only the last execution is kept
    assert started[0]["Input"] == '{"n":5,"until":5}'
    assert len(events_of(history, EventType.TaskScheduled)) == 1
    # every execution had its own id; the last one's replay gives the same output
    result = replay(counter, history)
    assert result.is_done and result.output == status.output


async def test_continue_as_new_history_stays_small_while_looping(env: DurableTestEnv) -> None:
    iid = await env.start("counter", {"n": 0, "until": 40})
    lengths: set[int] = set()
    while True:
        status = await env.client.get_status(iid)
        lengths.add(len(await env.history(iid)))
        if status is not None and status.runtime_status.is_terminal:
            break
        await asyncio.sleep(0)
    assert status.output["n"] == 40
    assert len(lengths) > 1
    assert max(lengths) <= 8  # one execution's worth, not forty


@pytest.mark.parametrize("save", [True, False])
async def test_continue_as_new_save_events(env: DurableTestEnv, save: bool) -> None:
    iid = await env.start("carry_events", {"round": 1, "save": save})
    await env.run_until_idle()
    await env.client.raise_event(iid, "extra", "kept?")
    await env.run_until_idle()
    await env.client.raise_event(iid, "go", "now")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    if save:
        assert status.output == {"go": "now", "extra": "kept?", "timed_out": False}
    else:
        assert status.output == {"go": "now", "extra": None, "timed_out": True}
    raised = events_of(await env.history(iid), EventType.EventRaised)
    assert [e["Name"] for e in raised] == (["extra"] if save else [])


# ------------------------------------------------------------------ status, terminate, suspend


async def test_custom_status_progress(env: DurableTestEnv) -> None:
    iid = await env.start("progress")
    for step in range(1, 4):
        status = await env.wait_for_status(
            iid, lambda s, step=step: s.custom_status == {"step": step, "of": 3}
        )
        assert status.runtime_status == Status.Running
        assert status.to_json()["customStatus"] == {"step": step, "of": 3}
        await env.client.raise_event(iid, "next")
    status = await env.wait_for_completion(iid)
    assert status.custom_status == "done"
    assert status.output == "finished"


async def test_terminate(env: DurableTestEnv) -> None:
    iid = await env.start("waiter")
    await env.run_until_idle()
    await env.client.terminate(iid, "no longer needed")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Terminated
    assert status.output == "no longer needed"
    # an event still in flight at termination changes nothing
    await deliver_late_event(env, iid, "go", 1)
    after = await env.client.get_status(iid)
    assert after.runtime_status == Status.Terminated and after.output == "no longer needed"
    history = await env.history(iid)
    assert events_of(history, EventType.ExecutionCompleted)[-1]["OrchestrationStatus"] == "Terminated"
    assert events_of(history, EventType.TaskScheduled) == []


async def test_suspend_and_resume(env: DurableTestEnv) -> None:
    iid = await env.start("waiter")
    await env.run_until_idle()
    await env.client.suspend(iid, "maintenance")
    status = await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Suspended)
    assert status.runtime_status == Status.Suspended
    await env.client.raise_event(iid, "go", "while suspended")
    await env.run_until_idle()
    status = await env.client.get_status(iid)
    assert status.runtime_status == Status.Suspended
    assert status.output is None
    await env.client.resume(iid, "done")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed
    assert status.output == {"got": "while suspended"}


async def test_terminate_suspended_instance(env: DurableTestEnv) -> None:
    iid = await env.start("waiter")
    await env.run_until_idle()
    await env.client.suspend(iid)
    await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Suspended)
    await env.client.terminate(iid, "gone")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Terminated and status.output == "gone"


# ------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("cache", [True, False])
async def test_new_uuid_and_time_are_deterministic(env: DurableTestEnv, cache: bool) -> None:
    if not cache:
        env.engine.cache_size = 0  # every step replays the whole history
    iid = await env.start("deterministic")
    status = await env.wait_for_completion(iid)
    out = status.output
    assert out["first"] == out["first_echoed"]
    assert out["second"] == out["second_echoed"]
    assert out["first"]["id"] != out["second"]["id"]
    first = datetime.fromisoformat(out["first"]["time"])
    second = datetime.fromisoformat(out["second"]["time"])
    assert second - first >= timedelta(hours=2)
    history = await env.history(iid)
    episodes = events_of(history, EventType.OrchestratorStarted)
    assert parse_timestamp(episodes[0]["Timestamp"]) == first
    if not cache:
        assert env.engine.stats["replays"] >= 3
    result = replay(deterministic, history)
    assert result.is_done
    assert result.output == out


async def test_new_uuid_matches_the_official_recipe(env: DurableTestEnv) -> None:
    import uuid

    iid = await env.start("deterministic", instance_id="uuid-check")
    status = await env.wait_for_completion(iid)
    episode = events_of(await env.history(iid), EventType.OrchestratorStarted)[0]
    stamp = parse_timestamp(episode["Timestamp"]).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    namespace = uuid.uuid5(uuid.NAMESPACE_OID, "9e952958-5e33-4daf-827f-2fa12937b875")
    assert status.output["first"]["id"] == str(uuid.uuid5(namespace, f"uuid-check_{stamp}_0"))


async def test_is_replaying_guards_side_effects(env: DurableTestEnv) -> None:
    env.engine.cache_size = 0
    iid = await env.start("side_effects")
    status = await env.wait_for_completion(iid)
    assert status.output == "ok"
    assert EFFECTS[iid] == [0, 1, 2, 3]
    # the unguarded list proves the code really re-ran: 1 + 2 + 3 + 4 + 4 executions of steps
    assert len(EFFECTS[f"{iid}:all"]) > 4


async def test_is_replaying_false_with_cache(env: DurableTestEnv) -> None:
    iid = await env.start("side_effects")
    await env.wait_for_completion(iid)
    assert EFFECTS[iid] == [0, 1, 2, 3]
    assert EFFECTS[f"{iid}:all"] == [0, 1, 2, 3]  # cached state: nothing was replayed


# ----------------------------------------------------------------------------- typed payloads


async def test_typed_payloads(env: DurableTestEnv) -> None:
    order = Order("o-1", [Item("apple", 2), Item("pear", 3)])
    iid = await env.start("typed", order)
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Completed, status.output
    assert status.output == {
        "quote_type": "Quote",
        "total": 12.5,
        "lines": ["2xapple", "3xpear"],
        "text": "o-1: 12.50",
        "units": ["apple", "apple", "pear", "pear", "pear"],
        "regrouped": [["apple", "apple"], ["pear", "pear", "pear"]],
    }
    # payloads are stored as plain JSON
    history = await env.history(iid)
    scheduled = events_of(history, EventType.TaskScheduled)
    assert (
        scheduled[0]["Input"] == '{"order_id":"o-1","items":[{"sku":"apple","qty":2},{"sku":"pear","qty":3}]}'
    )


async def test_typed_history_replays_with_the_app(env: DurableTestEnv) -> None:
    iid = await env.start("typed", Order("o-4", [Item("lime", 3)]))
    status = await env.wait_for_completion(iid)
    result = replay(typed, await env.history(iid), app=app)
    assert result.is_done and result.failure is None
    assert result.output == status.output
    iid = await env.start("typed_input", Order("o-5", [Item("fig", 1)]))
    status = await env.wait_for_completion(iid)
    assert replay(typed_input, await env.history(iid), app=app).output == status.output


async def test_orchestrator_input_type_from_trigger(env: DurableTestEnv) -> None:
    order = Order("o-2", [Item("fig", 1)])
    assert await env.run("typed_input", order) == {"type": "Order", "first_item": "Item"}


@pytest.mark.parametrize("kind", ["set", "object"])
async def test_unserializable_activity_input_fails_clearly(env: DurableTestEnv, kind: str) -> None:
    iid = await env.start("bad_payload", kind)
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert status.failure["ErrorType"] == "SerializationError"
    message = status.failure["ErrorMessage"]
    assert "input of activity 'echo'" in message
    assert "Opaque" in message
    assert "input of activity 'echo'" in status.output
    assert events_of(await env.history(iid), EventType.TaskScheduled) == []


async def test_unserializable_orchestrator_output_fails(env: DurableTestEnv) -> None:
    iid = await env.start("bad_output")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert status.failure["ErrorType"] == "SerializationError"
    assert "output of orchestrator 'bad_output'" in status.failure["ErrorMessage"]


async def test_unserializable_client_input_raises_at_once(env: DurableTestEnv) -> None:
    with pytest.raises(df.SerializationError, match="input of orchestrator 'sequence'"):
        await env.start("sequence", Opaque())


# ---------------------------------------------------------------------------- activities


async def test_async_activities(env: DurableTestEnv) -> None:
    assert await env.run("fan_out", 5) == [0, 1, 4, 9, 16]


async def test_mock_activity(env: DurableTestEnv) -> None:
    seen: list[str] = []

    def fake(value: str) -> str:
        seen.append(value)
        return f"fake-{value}"

    env.mock_activity("external_call", fake)
    assert await env.run("uses_external") == ["fake-a", "fake-b"]
    assert seen == ["a", "b"]


async def test_mock_activity_async_keeps_typed_results(env: DurableTestEnv) -> None:
    async def fake_price(order):  # no annotations: the original's types apply
        assert isinstance(order, Order)
        return {"order_id": order.order_id, "total": 1.0, "lines": ["mocked"]}

    env.mock_activity("price", fake_price)
    out = await env.run("typed", Order("o-3", [Item("kiwi", 2)]))
    assert out["quote_type"] == "Quote"
    assert out["lines"] == ["mocked"]
    assert out["text"] == "o-3: 1.00"


async def test_unmocked_activity_failure_is_reported(env: DurableTestEnv) -> None:
    iid = await env.start("uses_external")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert "real service reached with a" in status.output


# ----------------------------------------------------------------------------------- mistakes


async def test_yielding_a_non_task_fails_clearly(env: DurableTestEnv) -> None:
    iid = await env.start("yields_garbage")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert status.failure["ErrorType"] == "TypeError"
    assert "yielded 42" in status.failure["ErrorMessage"]
    assert "yields_garbage" in status.output


async def test_unknown_activity_fails_the_task(env: DurableTestEnv) -> None:
    out = await env.run("calls_unknown")
    assert out["task"] == "no_such_activity"
    assert "no activity function named 'no_such_activity' is registered" in out["message"]
    assert "echo" in out["message"]  # lists what is registered


async def test_unknown_orchestrator_fails_the_instance(env: DurableTestEnv) -> None:
    iid = await env.start("no_such_orchestrator", 1)
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert "no orchestrator function named 'no_such_orchestrator' is registered" in status.output
    assert status.failure["ErrorType"] == "UnknownFunctionError"


# ------------------------------------------------------------------------------- engine cache


async def test_long_sequence_uses_the_cache(env: DurableTestEnv) -> None:
    count = 300
    iid = await env.start("long_sequence", count)
    status = await env.wait_for_completion(iid)
    assert status.output == sum(n * n for n in range(count))
    stats = env.engine.stats
    assert stats["activities"] == count
    assert stats["replays"] <= 2
    assert stats["cache_hits"] >= count - 2
    assert stats["cache_hits"] > 100 * stats["replays"]
    assert len(events_of(await env.history(iid), EventType.TaskCompleted)) == count
