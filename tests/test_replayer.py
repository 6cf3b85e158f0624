"""The history replayer: recorded runs, prefixes, JSON input, extension-shaped and long histories."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Callable, Generator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from azure.durable_functions import Orchestrator

from durable_ext import NonDeterministicOrchestrationError, OrchestrationRuntimeStatus
from durable_ext.client import DurableOrchestrationStatus
from durable_ext.core import history as h
from durable_ext.core.actions import Action, ActionType
from durable_ext.core.errors import TaskFailedError
from durable_ext.core.history import Event, EventType, parse_timestamp
from durable_ext.core.registry import Registry
from durable_ext.testing import DurableTestEnv, ReplayResult, replay

Gen = Generator[Any, Any, Any]
_SCHEDULING = {
    EventType.TaskScheduled: ActionType.CallActivity,
    EventType.TimerCreated: ActionType.CreateTimer,
    EventType.SubOrchestrationInstanceCreated: ActionType.CallSubOrchestrator,
    EventType.EventSent: ActionType.SendEvent,
}

STAMP = "2024-05-06T10:00:00.1234567Z"
STAMP2 = "2024-05-06T10:00:01.7654321Z"

# ------------------------------------------------------------------ the app


def hello(name: str) -> str:
    """Greet someone."""
    return f"Hello {name}!"


def square(n: int) -> int:
    """Square a number."""
    return n * n


def explode(message: str) -> None:
    """Always fail."""
    raise ValueError(message)


def sequence(context: Any) -> Gen:
    """Three greetings in order."""
    out = []
    for city in context.get_input() or ["Tokyo", "Seattle", "London"]:
        out.append((yield context.call_activity("hello", city)))
    context.set_custom_status({"greeted": len(out)})
    return out


def fan_out(context: Any) -> Gen:
    """Square 1..n in parallel and sum."""
    n = context.get_input()
    squares = yield context.task_all([context.call_activity("square", i) for i in range(1, n + 1)])
    return sum(squares)


def timers(context: Any) -> Gen:
    """Two timers between activities; returns how far time moved."""
    start = context.current_utc_datetime
    yield context.create_timer(start + timedelta(hours=1))
    one = yield context.call_activity("square", 3)
    yield context.create_timer(timedelta(days=2))
    elapsed = context.current_utc_datetime - start
    return [one, elapsed >= timedelta(days=2, hours=1)]


def events(context: Any) -> Gen:
    """Wait for two events, one raced against a timer."""
    first = yield context.wait_for_external_event("first")
    timeout = context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    second = context.wait_for_external_event("second")
    winner = yield context.task_any([second, timeout])
    if winner == second:
        timeout.cancel()
        return [first, second.result]
    return [first, "timeout"]


def child(context: Any) -> Gen:
    """Greet the input."""
    return (yield context.call_activity("hello", context.get_input()))


def parent(context: Any) -> Gen:
    """Two sub-orchestrations, one of them in parallel with an activity."""
    one = yield context.call_sub_orchestrator("child", "kid")
    both = yield context.task_all(
        [context.call_sub_orchestrator("child", "other", "fixed-id"), context.call_activity("square", 4)]
    )
    return [one, *both]


def failing(context: Any) -> Gen:
    """Catch one failure, then let one through."""
    try:
        yield context.call_activity("explode", "first")
    except TaskFailedError as exc:
        context.set_custom_status(exc.message)
    yield context.call_activity("explode", "second")
    return "unreachable"


def counter(context: Any) -> Gen:
    """Continue as new until the count reaches 2; each execution waits for a step."""
    n = context.get_input()
    step = yield context.wait_for_external_event("next")
    if n < 2:
        context.continue_as_new(n + step)
        return None
    return n


def _registry() -> Registry:
    registry = Registry()
    for name, fn in [("hello", hello), ("square", square), ("explode", explode)]:
        registry.add("activity", fn, name)
    for fn in (sequence, fan_out, timers, events, child, parent, failing, counter):
        registry.add("orchestrator", fn, fn.__name__)
    return registry


Run = tuple[DurableOrchestrationStatus, list[Event]]


async def _run(name: str, input_: Any = None, raise_events: list[tuple[str, Any]] | None = None) -> Run:
    async with DurableTestEnv(_registry()) as env:
        iid = await env.start(name, input_, instance_id=f"{name}-1")
        for event_name, data in raise_events or []:
            await env.run_until_idle()
            await env.client.raise_event(iid, event_name, data)
        status = await env.wait_for_completion(iid)
        return status, await env.history(iid)


def run(name: str, input_: Any = None, raise_events: list[tuple[str, Any]] | None = None) -> Run:
    """Run an orchestration to the end in a test environment; its status and history."""
    return asyncio.run(_run(name, input_, raise_events))


# ----------------------------------------------------------------- helpers


def _cuts(history: list[Event]) -> list[int]:
    """Indexes just past each OrchestratorCompleted (episode boundaries)."""
    return [i + 1 for i, e in enumerate(history) if e["EventType"] == EventType.OrchestratorCompleted]


def _episode_after(history: list[Event], cut: int) -> list[Event]:
    end = cut
    while end < len(history) and history[end]["EventType"] != EventType.OrchestratorCompleted:
        end += 1
    return history[cut:end]


def _expected_actions(events: list[Event]) -> list[tuple[ActionType, int, str | None, str | None]]:
    return [
        (_SCHEDULING[EventType(e["EventType"])], e["EventId"], e.get("Name"), e.get("Input"))
        for e in events
        if e["EventType"] in _SCHEDULING
    ]


def _actions(result: ReplayResult) -> list[tuple[ActionType, int, str | None, str | None]]:
    return [(a.type, a.id, a.name, a.input) for a in result.actions]


def check_prefixes(fn: Callable[..., Any], history: list[Event]) -> int:
    """Replay every episode-boundary prefix, with and without the next episode's messages.

    Cut right after an OrchestratorCompleted, nothing is asked for beyond what history
    records. Given also the next episode's incoming messages (what the extension sends
    a worker), the replay asks for exactly the actions that episode recorded.
    """
    cuts = _cuts(history)
    for cut in cuts:
        result = replay(fn, history[:cut])
        assert not result.is_done
        assert result.actions == []
        episode = _episode_after(history, cut)
        incoming = [
            e
            for e in episode
            if e["EventType"] not in _SCHEDULING and e["EventType"] != EventType.ExecutionCompleted
        ]
        result = replay(fn, history[:cut] + incoming)
        assert _actions(result) == _expected_actions(episode)
        assert result.is_done == any(e["EventType"] == EventType.ExecutionCompleted for e in episode)
    first = _episode_after(history, 0)
    result = replay(fn, [e for e in first if e["EventType"] not in _SCHEDULING])
    assert _actions(result) == _expected_actions(first)
    return len(cuts)


def check_full_replay(fn: Callable[..., Any], recorded: Run) -> ReplayResult:
    """Replaying the final history reproduces the recorded outcome and asks for nothing."""
    status, history = recorded
    result = replay(fn, history)
    assert result.is_done
    assert result.actions == []
    assert result.output == status.output
    assert result.custom_status == status.custom_status
    assert result.failure == status.failure
    assert not result.continued_as_new
    return result


# ------------------------------------------------------------- recorded runs


def test_replay_sequence() -> None:
    recorded = run("sequence")
    assert recorded[0].output == ["Hello Tokyo!", "Hello Seattle!", "Hello London!"]
    result = check_full_replay(sequence, recorded)
    assert result.custom_status == {"greeted": 3}
    assert check_prefixes(sequence, recorded[1]) == 3


def test_replay_sequence_prefix_asks_for_next_activity() -> None:
    _status, history = run("sequence")
    cut = _cuts(history)[0]
    episode = _episode_after(history, cut)
    incoming = [
        e for e in episode if e["EventType"] in (EventType.OrchestratorStarted, EventType.TaskCompleted)
    ]
    result = replay(sequence, history[:cut] + incoming)
    assert not result.is_done
    assert result.output is None
    assert len(result.actions) == 1
    action = result.actions[0]
    assert isinstance(action, Action)
    assert (action.type, action.id, action.name, action.input) == (
        ActionType.CallActivity,
        1,
        "hello",
        '"Seattle"',
    )
    assert action.to_json() == {"actionType": "CallActivity", "id": 1, "name": "hello", "input": '"Seattle"'}


def test_replay_fan_out() -> None:
    recorded = run("fan_out", 6)
    assert recorded[0].output == 91
    check_full_replay(fan_out, recorded)
    check_prefixes(fan_out, recorded[1])
    first = recorded[1][:2]
    assert [EventType(e["EventType"]) for e in first] == [
        EventType.OrchestratorStarted,
        EventType.ExecutionStarted,
    ]
    result = replay(fan_out, first)
    assert [(a.type, a.id, a.name, a.input) for a in result.actions] == [
        (ActionType.CallActivity, i - 1, "square", str(i)) for i in range(1, 7)
    ]


def test_replay_timers() -> None:
    recorded = run("timers")
    assert recorded[0].output == [9, True]
    check_full_replay(timers, recorded)
    check_prefixes(timers, recorded[1])
    history = recorded[1]
    result = replay(timers, history[:2])
    assert len(result.actions) == 1
    timer = result.actions[0]
    assert timer.type == ActionType.CreateTimer
    assert timer.id == 0
    assert timer.name is None
    created = next(e for e in history if e["EventType"] == EventType.TimerCreated)
    assert timer.fire_at == created["FireAt"]
    assert parse_timestamp(timer.fire_at) == parse_timestamp(history[0]["Timestamp"]) + timedelta(hours=1)


def test_replay_events_with_winner_event() -> None:
    recorded = run("events", raise_events=[("first", 1), ("second", {"x": 2})])
    assert recorded[0].output == [1, {"x": 2}]
    check_full_replay(events, recorded)
    check_prefixes(events, recorded[1])


def test_replay_events_with_winner_timer() -> None:
    recorded = run("events", raise_events=[("first", "a")])
    assert recorded[0].output == ["a", "timeout"]
    check_full_replay(events, recorded)
    check_prefixes(events, recorded[1])


def test_replay_buffered_events() -> None:
    """Events raised before the orchestrator waits are buffered, recorded and replayed in order."""

    async def go() -> Run:
        async with DurableTestEnv(_registry()) as env:
            iid = await env.start("events", None, instance_id="early")
            await env.client.raise_event(iid, "second", "b")
            await env.client.raise_event(iid, "first", "a")
            return await env.wait_for_completion(iid), await env.history(iid)

    recorded = asyncio.run(go())
    assert recorded[0].output == ["a", "b"]
    check_full_replay(events, recorded)
    check_prefixes(events, recorded[1])


def test_replay_sub_orchestrations() -> None:
    recorded = run("parent")
    assert recorded[0].output == ["Hello kid!", "Hello other!", 16]
    check_full_replay(parent, recorded)
    check_prefixes(parent, recorded[1])
    result = replay(parent, recorded[1][:2])
    assert [(a.type, a.id, a.name, a.input, a.instance_id) for a in result.actions] == [
        (ActionType.CallSubOrchestrator, 0, "child", '"kid"', "parent-1:0000")
    ]


def test_replay_failure() -> None:
    recorded = run("failing")
    status, history = recorded
    assert status.runtime_status == OrchestrationRuntimeStatus.Failed
    result = check_full_replay(failing, recorded)
    assert result.custom_status == "first"
    assert result.failure is not None
    assert result.failure["ErrorType"] == "TaskFailedError"
    assert "second" in result.failure["ErrorMessage"]
    assert "second" in result.output
    check_prefixes(failing, history)


def test_replay_continue_as_new() -> None:
    """The stored history is the last execution's; an earlier one replays to continued_as_new."""

    async def go() -> tuple[list[Event], Run]:
        async with DurableTestEnv(_registry()) as env:
            iid = await env.start("counter", 0, instance_id="count")
            await env.run_until_idle()
            first_execution = await env.history(iid)
            await env.client.raise_event(iid, "next", 1)
            await env.run_until_idle()
            await env.client.raise_event(iid, "next", 1)
            await env.run_until_idle()
            await env.client.raise_event(iid, "next", 1)
            return first_execution, (await env.wait_for_completion(iid), await env.history(iid))

    first_execution, recorded = asyncio.run(go())
    assert recorded[0].output == 2
    started = next(e for e in recorded[1] if e["EventType"] == EventType.ExecutionStarted)
    assert started["Input"] == "2"
    check_full_replay(counter, recorded)

    result = replay(counter, first_execution)
    assert not result.is_done
    assert not result.continued_as_new
    episode = [
        h.orchestrator_started(first_execution[-1]["Timestamp"]),
        h.event_raised(first_execution[-1]["Timestamp"], "next", "1"),
    ]
    result = replay(counter, first_execution + episode)
    assert result.is_done
    assert result.continued_as_new
    assert result.output is None
    assert result.actions == []


# ------------------------------------------------------------ history sources


def test_replay_history_given_as_json_text() -> None:
    status, history = run("sequence")
    for text in (orjson.dumps(history), orjson.dumps(history).decode(), json.dumps(history, indent=2)):
        result = replay(sequence, text)
        assert result.is_done
        assert result.output == status.output
        assert result.custom_status == {"greeted": 3}


def test_replay_accepts_official_sdk_wrapped_function_and_iterables() -> None:
    status, history = run("sequence")
    assert replay(Orchestrator.create(sequence), history).output == status.output
    assert replay(sequence, iter(history)).output == status.output


def test_replay_does_not_modify_history() -> None:
    _status, history = run("parent")
    snapshot = orjson.dumps(history)
    replay(parent, history)
    replay(parent, history[:5])
    replay(parent, history, input="other")
    assert orjson.dumps(history) == snapshot


def test_input_overrides_recorded_input() -> None:
    status, history = run("sequence", ["Oslo", "Rome"])
    assert status.output == ["Hello Oslo!", "Hello Rome!"]
    result = replay(sequence, history, input=["Oslo", "Rome"])
    assert result.output == ["Hello Oslo!", "Hello Rome!"]
    # A longer input makes the code ask for one more call beyond history.
    result = replay(sequence, history, input=["Oslo", "Rome", "Bern"])
    assert not result.is_done
    assert [(a.type, a.id, a.input) for a in result.actions] == [(ActionType.CallActivity, 2, '"Bern"')]
    # The input is the code's: counter would stop at 5 instead of continuing.
    recorded = run("counter", 2, raise_events=[("next", 1)])
    assert replay(counter, recorded[1]).output == 2
    assert replay(counter, recorded[1], input=5).output == 5
    assert replay(counter, recorded[1], input=0).continued_as_new


def test_instance_id_defaults_to_recorded_and_can_be_given() -> None:
    def who(context: Any) -> Gen:
        yield context.call_activity("hello", "x")
        return [context.instance_id, context.new_uuid()]

    history = [
        h.orchestrator_started(STAMP),
        h.execution_started(STAMP, "who", None, "recorded-id", "e1"),
        h.task_scheduled(STAMP, 0, "hello", '"x"'),
        h.orchestrator_completed(STAMP),
        h.orchestrator_started(STAMP2),
        h.task_completed(STAMP2, 0, '"Hello x!"'),
    ]
    recorded = replay(who, history)
    assert recorded.output[0] == "recorded-id"
    given = replay(who, history, instance_id="given-id")
    assert given.output[0] == "given-id"
    assert given.output[1] != recorded.output[1]
    assert replay(who, history).output == recorded.output  # new_uuid is deterministic


def test_nondeterminism_raises_from_replay() -> None:
    _status, history = run("sequence")

    def renamed(context: Any) -> Gen:
        yield context.call_activity("hello", "Tokyo")
        yield context.call_activity("goodbye", "Seattle")
        return None

    with pytest.raises(NonDeterministicOrchestrationError, match=r"TaskScheduled #1 'hello'.*'goodbye'"):
        replay(renamed, history)


# ------------------------------------------------ extension-shaped histories


#: A history exactly as the Durable Functions extension sends it to a Python worker.
EXTENSION_HISTORY = r"""[
{"EventType":12,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T10:00:00.1234567Z"},
{"OrchestrationInstance":{"InstanceId":"7f3d0c2e","ExecutionId":"0b6f9f1e7d8c4a6b"},"EventType":0,
 "ParentInstance":null,"Name":"HelloCities","Version":"","Input":"[\"Tokyo\",\"Seattle\"]","Tags":null,
 "Correlation":null,"ScheduledStartTime":null,"Generation":0,"EventId":-1,"IsPlayed":true,
 "Timestamp":"2024-05-06T09:59:59.9876543Z"},
{"EventType":4,"Name":"SayHello","Version":"","Input":"\"Tokyo\"","Tags":null,"EventId":0,"IsPlayed":true,
 "Timestamp":"2024-05-06T10:00:00.2000001Z"},
{"EventType":13,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T10:00:00.2100000Z"},
{"EventType":12,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T10:00:01.0000000Z"},
{"EventType":5,"TaskScheduledId":0,"Result":"\"Hello Tokyo!\"","EventId":-1,"IsPlayed":true,
 "Timestamp":"2024-05-06T10:00:00.9000000Z"},
{"EventType":4,"Name":"SayHello","Version":"","Input":"\"Seattle\"","Tags":null,"EventId":1,"IsPlayed":true,
 "Timestamp":"2024-05-06T10:00:01.0100000Z"},
{"EventType":13,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T10:00:01.0200000Z"},
{"EventType":12,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T10:00:02.5000000Z"},
{"EventType":5,"TaskScheduledId":1,"Result":"\"Hello Seattle!\"","EventId":-1,"IsPlayed":true,
 "Timestamp":"2024-05-06T10:00:02.4000000Z"},
{"EventType":10,"FireAt":"2024-05-06T11:00:02.5000000Z","EventId":2,"IsPlayed":true,
 "Timestamp":"2024-05-06T10:00:02.5100000Z"},
{"EventType":13,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T10:00:02.5200000Z"},
{"EventType":12,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T11:00:03.1234567Z"},
{"EventType":11,"FireAt":"2024-05-06T11:00:02.5000000Z","TimerId":2,"EventId":-1,"IsPlayed":true,
 "Timestamp":"2024-05-06T11:00:02.6000000Z"},
{"EventType":13,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T11:00:03.2000000Z"},
{"EventType":12,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T11:30:00.0000001Z"},
{"EventType":15,"Name":"Approval","Input":"{\"by\":\"alice\"}","EventId":-1,"IsPlayed":true,
 "Timestamp":"2024-05-06T11:29:59.0000000Z"},
{"EventType":4,"Name":"Risky","Version":"","Input":null,"Tags":null,"EventId":3,"IsPlayed":true,
 "Timestamp":"2024-05-06T11:30:00.0100000Z"},
{"EventType":13,"EventId":-1,"IsPlayed":true,"Timestamp":"2024-05-06T11:30:00.0200000Z"},
{"EventType":12,"EventId":-1,"IsPlayed":false,"Timestamp":"2024-05-06T11:30:05.7654321Z"},
{"EventType":6,"TaskScheduledId":3,"Reason":"Activity function 'Risky' failed: no luck",
 "Details":"Traceback (most recent call last): ...","EventId":-1,"IsPlayed":false,
 "Timestamp":"2024-05-06T11:30:05.0000000Z"}
]"""


def hello_cities(context: Any) -> Gen:
    """The orchestrator the extension-shaped history was recorded with."""
    greetings = []
    for city in context.get_input():
        greetings.append((yield context.call_activity("SayHello", city)))
    yield context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    approval = yield context.wait_for_external_event("Approval")
    try:
        yield context.call_activity("Risky")
        risky = "ok"
    except TaskFailedError as exc:
        risky = exc.message
    context.set_custom_status("finished")
    return {
        "greetings": greetings,
        "approved_by": approval["by"],
        "risky": risky,
        "now": context.current_utc_datetime.isoformat(),
        "instance": context.instance_id,
    }


def test_replay_extension_shaped_history() -> None:
    result = replay(hello_cities, EXTENSION_HISTORY)
    assert result.is_done
    assert result.failure is None
    assert result.actions == []
    assert result.custom_status == "finished"
    now = datetime(2024, 5, 6, 11, 30, 5, 765432, tzinfo=timezone.utc)
    assert result.output == {
        "greetings": ["Hello Tokyo!", "Hello Seattle!"],
        "approved_by": "alice",
        "risky": "Activity function 'Risky' failed: no luck",
        "now": now.isoformat(),
        "instance": "7f3d0c2e",
    }


def test_replay_extension_shaped_prefixes_ask_for_next_steps() -> None:
    history = json.loads(EXTENSION_HISTORY)
    # The extension sends past episodes plus the new messages; the worker answers with actions.
    result = replay(hello_cities, history[:2])
    assert _actions(result) == [(ActionType.CallActivity, 0, "SayHello", '"Tokyo"')]
    result = replay(hello_cities, history[:6])
    assert _actions(result) == [(ActionType.CallActivity, 1, "SayHello", '"Seattle"')]
    result = replay(hello_cities, history[:10])
    assert [(a.type, a.id, a.fire_at) for a in result.actions] == [
        (ActionType.CreateTimer, 2, "2024-05-06T11:00:02.500000Z")
    ]
    result = replay(hello_cities, history[:14])
    assert result.actions == []  # now waiting for the Approval event: nothing to schedule
    assert not result.is_done
    result = replay(hello_cities, history[:17])
    assert _actions(result) == [(ActionType.CallActivity, 3, "Risky", None)]
    for cut in _cuts(history):
        partial = replay(hello_cities, history[:cut])
        assert not partial.is_done
        assert partial.actions == []


def uuids_and_clock(context: Any) -> Gen:
    """Deterministic values only: uuids, the clock and the input, around every step."""
    seen = [context.get_input(), context.new_uuid(), context.current_utc_datetime.isoformat()]
    for city in context.get_input():
        seen.append((yield context.call_activity("SayHello", city)))
        seen.append(context.new_uuid())
    yield context.create_timer(context.current_utc_datetime + timedelta(hours=1))
    seen.append(context.current_utc_datetime.isoformat())
    seen.append((yield context.wait_for_external_event("Approval")))
    try:
        yield context.call_activity("Risky")
    except Exception:
        seen.append("failed")
    seen += [context.new_uuid(), context.new_uuid(), context.current_utc_datetime.isoformat()]
    return seen


def test_extension_shaped_history_replays_like_the_official_sdk() -> None:
    """Same history, same code: the official SDK and replay() agree on every deterministic value."""
    history = json.loads(EXTENSION_HISTORY)
    started = history[1]
    body = json.dumps(
        {
            "history": history,
            "instanceId": started["OrchestrationInstance"]["InstanceId"],
            "isReplaying": True,
            "parentInstanceId": None,
            "input": started["Input"],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns about its own bookkeeping
        state = json.loads(Orchestrator.create(uuids_and_clock)(body))
    assert state["isDone"] is True
    result = replay(uuids_and_clock, history)
    assert result.is_done
    assert result.output == state["output"]
    assert result.output[-1] == "2024-05-06T11:30:05.765432+00:00"


def test_replay_extension_shaped_history_detects_changed_code() -> None:
    def changed(context: Any) -> Gen:
        for city in context.get_input():
            yield context.call_activity("SayHello", city)
        yield context.call_activity("SayGoodbye", "all")
        return None

    with pytest.raises(NonDeterministicOrchestrationError) as info:
        replay(changed, EXTENSION_HISTORY)
    message = str(info.value)
    assert "TimerCreated #2" in message
    assert "CallActivity #2 'SayGoodbye'" in message


# ------------------------------------------------------------ long histories


def _long_history(steps: int) -> list[Event]:
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)

    def stamp(i: int) -> str:
        return h.format_timestamp(base + timedelta(seconds=i))

    events: list[Event] = [
        h.orchestrator_started(stamp(0)),
        h.execution_started(stamp(0), "long_sequence", str(steps), "long", "e1"),
    ]
    for i in range(steps):
        events.append(h.task_scheduled(stamp(i), i, "increment", str(i)))
        events.append(h.orchestrator_completed(stamp(i)))
        events.append(h.orchestrator_started(stamp(i + 1)))
        events.append(h.task_completed(stamp(i + 1), i, str(i + 1)))
    events.append(h.execution_completed(stamp(steps), "Completed", str(steps * (steps + 1) // 2)))
    return events


def long_sequence(context: Any) -> Gen:
    """Add up the results of ``n`` activities called one after another."""
    total = 0
    for i in range(context.get_input()):
        total += yield context.call_activity("increment", i)
    return total


def test_replay_5000_step_history() -> None:
    steps = 5000
    history = _long_history(steps)
    assert len(history) == 4 * steps + 3
    result = replay(long_sequence, history)
    assert result.is_done
    assert result.output == steps * (steps + 1) // 2
    assert result.actions == []
    text = orjson.dumps(history)
    assert replay(long_sequence, text).output == steps * (steps + 1) // 2
    partial = replay(long_sequence, history[:-2])
    assert not partial.is_done
    assert partial.actions == []
    partial = replay(long_sequence, history[:-1], input=steps + 1)
    assert not partial.is_done
    assert _actions(partial) == [(ActionType.CallActivity, steps, "increment", str(steps))]


def test_replay_long_history_recorded_by_engine() -> None:
    registry = Registry()
    registry.add("activity", lambda i: i + 1, "increment")
    registry.add("orchestrator", long_sequence, "long_sequence")

    async def go() -> Run:
        async with DurableTestEnv(registry) as env:
            iid = await env.start("long_sequence", 1000, instance_id="long")
            return await env.wait_for_completion(iid), await env.history(iid)

    status, history = asyncio.run(go())
    assert status.output == 1000 * 1001 // 2
    assert sum(e["EventType"] == EventType.TaskScheduled for e in history) == 1000
    check_full_replay(long_sequence, (status, history))


# ------------------------------------------------- replaying flags and errors


def test_is_replaying_follows_is_played_flags() -> None:
    """Events flagged IsPlayed replay as old; the unplayed last episode runs live."""
    seen: list[bool] = []

    def watched(context: Any) -> Gen:
        seen.append(context.is_replaying)
        yield context.call_activity("hello", "a")
        seen.append(context.is_replaying)
        yield context.call_activity("hello", "b")
        return "done"

    ts = "2026-11-25T10:00:00.0000000Z"
    events = [
        h.orchestrator_started(ts),
        h.execution_started(ts, "watched", None, "w-1", "e1"),
        h.task_scheduled(ts, 0, "hello", '"a"'),
        h.orchestrator_completed(ts),
        h.orchestrator_started(ts),
        h.task_completed(ts, 0, '"Hello a!"'),
    ]
    for event in events[:4]:
        event["IsPlayed"] = True
    result = replay(watched, events)
    assert seen == [True, False]
    assert [a.name for a in result.actions] == ["hello"]


def test_code_that_raises_during_replay_is_named_in_the_error() -> None:
    """A replay that fails because new code raises says so instead of blaming a removed step."""
    recorded = run("sequence", ["x", "y"])

    def broken(context: Any) -> Gen:
        names = context.get_input()
        first = yield context.call_activity("hello", names[0])
        raise ValueError(f"new bug after {first}")

    with pytest.raises(NonDeterministicOrchestrationError, match="raised ValueError: new bug"):
        replay(broken, recorded[1])


def test_continue_as_new_input_is_reported() -> None:
    """ReplayResult carries the input the next execution would start with."""
    ts = "2026-11-25T10:00:00.0000000Z"
    events = [
        h.orchestrator_started(ts),
        h.execution_started(ts, "counter", "0", "c-1", "e1"),
        h.event_raised(ts, "next", "1"),
    ]
    result = replay(counter, events)
    assert result.continued_as_new and result.continue_as_new_input == 1
