"""Property tests of the replay engine over randomly generated orchestration programs.

A program is a list of steps that one generic orchestrator interprets from its
input. Each program runs in a DurableTestEnv (events raised as needed, timers
skipped); its output must match a direct interpretation, its history must
replay (whole and cut at every episode) and keep the DTFx history invariants.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from durable_ext import NonDeterministicOrchestrationError, OrchestrationRuntimeStatus
from durable_ext.core.actions import ActionType
from durable_ext.core.errors import TaskFailedError
from durable_ext.core.history import Event, EventType, parse_timestamp
from durable_ext.core.registry import Registry
from durable_ext.testing import DurableTestEnv, replay

Gen = Generator[Any, Any, Any]
Step = list[Any]
Program = list[Step]

_SCHEDULING = {
    EventType.TaskScheduled: ActionType.CallActivity,
    EventType.TimerCreated: ActionType.CreateTimer,
    EventType.SubOrchestrationInstanceCreated: ActionType.CallSubOrchestrator,
    EventType.EventSent: ActionType.SendEvent,
}
#: completion event -> (field naming the scheduled id, the scheduling event it answers)
_COMPLETIONS = {
    EventType.TaskCompleted: ("TaskScheduledId", EventType.TaskScheduled),
    EventType.TaskFailed: ("TaskScheduledId", EventType.TaskScheduled),
    EventType.SubOrchestrationInstanceCompleted: (
        "TaskScheduledId",
        EventType.SubOrchestrationInstanceCreated,
    ),
    EventType.SubOrchestrationInstanceFailed: ("TaskScheduledId", EventType.SubOrchestrationInstanceCreated),
    EventType.TimerFired: ("TimerId", EventType.TimerCreated),
}

# ------------------------------------------------------------- the programs


def triple(x: int) -> int:
    """The activity every ``act`` and ``fan`` step calls."""
    return 3 * x + 1


async def fail(message: str) -> None:
    """An activity that always fails with ``message``."""
    raise RuntimeError(message)


def child(context: Any) -> Gen:
    """The sub-orchestration of ``sub`` steps."""
    x = context.get_input()
    return [x, (yield context.call_activity("triple", x))]


def interpret(context: Any) -> Gen:
    """Run the program given as input; the custom status is the step being run."""
    out: list[Any] = []
    for index, step in enumerate(context.get_input()):
        context.set_custom_status(index)
        op = step[0]
        if op == "act":
            out.append((yield context.call_activity("triple", step[1])))
        elif op == "fan":
            out.append((yield context.task_all([context.call_activity("triple", x) for x in step[1]])))
        elif op == "timer":
            yield context.create_timer(context.current_utc_datetime + timedelta(seconds=step[1]))
            out.append("timer")
        elif op == "event":
            out.append((yield context.wait_for_external_event(step[3])))
        elif op == "any":
            timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=step[1]))
            event = context.wait_for_external_event(f"e{index}")
            winner = yield context.task_any([timer, event])
            if winner is event:
                timer.cancel()
                out.append(["event", event.result])
            else:
                out.append("timer")
        elif op == "sub":
            out.append((yield context.call_sub_orchestrator("child", step[1])))
        elif op == "fail":
            try:
                yield context.call_activity("fail", step[1])
                out.append("not failed")
            except TaskFailedError as exc:
                out.append(["caught", exc.message])
        else:
            raise ValueError(f"unknown step {step!r}")
    context.set_custom_status("done")
    return out


def reference(program: Program) -> list[Any]:
    """What ``interpret`` must return, computed directly."""
    out: list[Any] = []
    for step in program:
        op = step[0]
        if op == "act":
            out.append(triple(step[1]))
        elif op == "fan":
            out.append([triple(x) for x in step[1]])
        elif op == "timer":
            out.append("timer")
        elif op == "event":
            out.append(step[1])
        elif op == "any":
            out.append(["event", step[3]] if step[2] in _EVENT_WINS else "timer")
        elif op == "sub":
            out.append([step[1], triple(step[1])])
        elif op == "fail":
            out.append(["caught", step[1]])
    return out


def expected_schedule(program: Program) -> list[tuple[EventType, str | None]]:
    """The scheduling events, in id order, that a run of ``program`` records."""
    out: list[tuple[EventType, str | None]] = []
    for step in program:
        op = step[0]
        if op == "act":
            out.append((EventType.TaskScheduled, "triple"))
        elif op == "fan":
            out += [(EventType.TaskScheduled, "triple")] * len(step[1])
        elif op in ("timer", "any"):
            out.append((EventType.TimerCreated, None))
        elif op == "sub":
            out.append((EventType.SubOrchestrationInstanceCreated, "child"))
        elif op == "fail":
            out.append((EventType.TaskScheduled, "fail"))
    return out


#: How an ``any`` step's race goes: the timer alone; the event raised before the program
#: starts, or while the step waits; or both arriving in one episode, in either order.
ANY_MODES = ("timer", "early", "wait", "tie_timer_first", "tie_event_first")
_EVENT_WINS = ("early", "wait", "tie_event_first")


#: ``event`` steps share these names (matched case-insensitively, delivered first-in first-out);
#: each ``any`` step waits for an event of its own.
EVENT_NAMES = ("x", "X", "y")


def _event_name(index: int, step: Step) -> str:
    return step[3] if step[0] == "event" else f"e{index}"


def _payload(step: Step) -> Any:
    return step[3] if step[0] == "any" else step[1]


def _wants_event(step: Step) -> bool:
    return step[0] == "event" or (step[0] == "any" and step[2] == "wait")


def _early(program: Program) -> list[int]:
    """Steps whose event is raised before the program starts, in program order.

    An ``event`` step goes early only if every earlier step sharing its name does,
    so each name's events arrive in the order its steps consume them.
    """
    out: list[int] = []
    late: set[str] = set()
    for index, step in enumerate(program):
        if step[0] == "any" and step[2] == "early":
            out.append(index)
        elif step[0] == "event":
            key = step[3].casefold()
            if step[2] and key not in late:
                out.append(index)
            else:
                late.add(key)
    return out


def _registry() -> Registry:
    registry = Registry()
    registry.add("activity", triple, "triple")
    registry.add("activity", fail, "fail")
    registry.add("orchestrator", child, "child")
    registry.add("orchestrator", interpret, "interpret")
    return registry


_REGISTRY = _registry()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
small_ints = st.integers(-1000, 1000)
steps = st.one_of(
    st.tuples(st.just("act"), small_ints),
    st.tuples(st.just("fan"), st.lists(small_ints, max_size=4)),
    st.tuples(st.just("timer"), st.integers(1, 30 * 24 * 3600)),
    st.tuples(st.just("event"), json_values, st.booleans(), st.sampled_from(EVENT_NAMES)),
    st.tuples(st.just("any"), st.integers(1, 3600), st.sampled_from(ANY_MODES), json_values),
    st.tuples(st.just("sub"), small_ints),
    st.tuples(st.just("fail"), st.text(max_size=12)),
).map(list)
programs = st.lists(steps, max_size=8)


# ------------------------------------------------------------------ running


async def _drive(program: Program, cached: bool = True) -> tuple[Any, dict[str, list[Event]]]:
    """Run the program to the end; its status and every instance's history (parent first).

    Without ``cached`` the engine keeps no replay state: every step replays from history.
    """
    async with DurableTestEnv(_REGISTRY) as env:
        if not cached:
            env.engine.cache_size = 0
        iid = await env.start("interpret", program, instance_id="prog")
        raised: set[int] = set()
        for index in _early(program):
            await env.client.raise_event(iid, _event_name(index, program[index]), _payload(program[index]))
            raised.add(index)
        for _ in range(1000):
            await env.run_until_idle()
            status = await env.client.get_status(iid)
            assert status is not None
            if status.runtime_status.is_terminal:
                break
            index = status.custom_status
            step = program[index]
            name = _event_name(index, step)
            if _wants_event(step) and index not in raised:
                await env.client.raise_event(iid, name, _payload(step))
                raised.add(index)
                continue
            if step[0] == "any" and step[2].startswith("tie") and index not in raised:
                # deliver the step's timer and its event together, in the mode's order
                history = await env.history(iid)
                fire_at = next(
                    e["FireAt"] for e in reversed(history) if e["EventType"] == EventType.TimerCreated
                )
                if step[2] == "tie_event_first":
                    await env.client.raise_event(iid, name, _payload(step))
                env.clock.advance_to(parse_timestamp(fire_at))
                env.backend.release_due_timers()
                if step[2] == "tie_timer_first":
                    await env.client.raise_event(iid, name, _payload(step))
                raised.add(index)
                continue
            due = env.backend.next_timer_due()
            assert due is not None, f"stuck at step {index}: {step!r}"
            env.clock.advance_to(due)
            env.backend.release_due_timers()
        else:
            raise AssertionError("the program did not finish")
        if not cached:
            assert env.engine.stats["cache_hits"] == 0
            assert env.engine.stats["replays"] == env.engine.stats["steps"]
        histories = {iid: await env.history(iid)}
        for other in await env.client.get_status_all():
            if other.instance_id != iid:
                assert other.runtime_status == OrchestrationRuntimeStatus.Completed
                histories[other.instance_id] = await env.history(other.instance_id)
        return status, histories


def check_invariants(history: list[Event]) -> None:
    """The structural rules every finished DTFx execution history obeys."""
    kinds = [EventType(e["EventType"]) for e in history]
    assert kinds[:2] == [EventType.OrchestratorStarted, EventType.ExecutionStarted]
    assert kinds.count(EventType.ExecutionStarted) == 1
    assert kinds.count(EventType.ExecutionCompleted) == 1
    body = kinds[:-1] if kinds[-1] == EventType.OrchestratorCompleted else kinds
    assert body[-1] == EventType.ExecutionCompleted

    # episodes: OrchestratorStarted ... OrchestratorCompleted, strictly alternating
    markers = [k for k in kinds if k in (EventType.OrchestratorStarted, EventType.OrchestratorCompleted)]
    for i, kind in enumerate(markers):
        expected = EventType.OrchestratorStarted if i % 2 == 0 else EventType.OrchestratorCompleted
        assert kind == expected

    scheduled: dict[int, tuple[EventType, int]] = {}
    for position, event in enumerate(history):
        kind = EventType(event["EventType"])
        if kind in _SCHEDULING:
            assert event["EventId"] not in scheduled
            scheduled[event["EventId"]] = (kind, position)
        else:
            assert event["EventId"] == -1
    assert list(scheduled) == list(range(len(scheduled)))  # 0..n-1, in order, no gaps

    answered: set[int] = set()
    for position, event in enumerate(history):
        kind = EventType(event["EventType"])
        if kind not in _COMPLETIONS:
            continue
        field, scheduling_kind = _COMPLETIONS[kind]
        task_id = event[field]
        assert task_id in scheduled, event
        assert scheduled[task_id][0] == scheduling_kind, event
        assert scheduled[task_id][1] < position, event
        assert task_id not in answered, event
        answered.add(task_id)
    for task_id, (kind, _position) in scheduled.items():
        if kind != EventType.TimerCreated:  # an abandoned timer may never fire
            assert task_id in answered


def _cuts(history: list[Event]) -> list[int]:
    return [i + 1 for i, e in enumerate(history) if e["EventType"] == EventType.OrchestratorCompleted]


def check_prefixes(history: list[Event]) -> None:
    """Every episode-boundary prefix replays without error to an unfinished state.

    With the next episode's incoming messages added, the replay asks for exactly
    the actions that episode recorded.
    """
    for cut in [0, *_cuts(history)]:
        if cut:
            result = replay(interpret, history[:cut])
            assert not result.is_done
            assert result.actions == []
        end = cut
        while end < len(history) and history[end]["EventType"] != EventType.OrchestratorCompleted:
            end += 1
        episode = history[cut:end]
        incoming = [
            e
            for e in episode
            if e["EventType"] not in _SCHEDULING and e["EventType"] != EventType.ExecutionCompleted
        ]
        result = replay(interpret, history[:cut] + incoming)
        expected = [
            (_SCHEDULING[EventType(e["EventType"])], e["EventId"], e.get("Name"), e.get("Input"))
            for e in episode
            if e["EventType"] in _SCHEDULING
        ]
        assert [(a.type, a.id, a.name, a.input) for a in result.actions] == expected
        assert result.is_done == any(e["EventType"] == EventType.ExecutionCompleted for e in episode)


# ------------------------------------------------------------------- properties


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, cached=st.booleans())
def test_random_programs_run_replay_and_keep_invariants(program: Program, cached: bool) -> None:
    status, histories = asyncio.run(_drive(program, cached))
    expected = reference(program)
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed, status.output
    assert status.output == expected
    assert status.custom_status == "done"

    history = histories["prog"]
    result = replay(interpret, history)
    assert result.is_done
    assert result.output == expected
    assert result.actions == []
    assert result.custom_status == "done"
    assert result.failure is None
    assert replay(interpret, orjson.dumps(history)).output == expected

    schedule = [(EventType(e["EventType"]), e.get("Name")) for e in history if e["EventType"] in _SCHEDULING]
    assert schedule == expected_schedule(program)
    for events in histories.values():
        check_invariants(events)
    check_prefixes(history)
    assert len(histories) == 1 + sum(step[0] == "sub" for step in program)
    for instance_id, events in histories.items():
        if instance_id != "prog":
            x = orjson.loads(events[1]["Input"])
            assert replay(child, events).output == [x, triple(x)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=programs, data=st.data())
def test_changed_step_kind_is_nondeterministic(program: Program, data: st.DataObject) -> None:
    """Swapping one scheduling step for another kind makes replay name both sides."""
    positions = [i for i, step in enumerate(program) if step[0] in ("act", "timer", "sub", "fail")]
    if not positions:
        program = [*program, ["act", 1]]
        positions = [len(program) - 1]
    index = data.draw(st.sampled_from(positions))
    _status, histories = asyncio.run(_drive(program))
    history = histories["prog"]

    step_id = len(expected_schedule(program[:index]))
    original = program[index]
    replacement: Step = ["timer", 5] if original[0] != "timer" else ["act", 0]
    changed = [*program[:index], replacement, *program[index + 1 :]]
    recorded = {
        "act": f"TaskScheduled #{step_id} 'triple'",
        "fail": f"TaskScheduled #{step_id} 'fail'",
        "timer": f"TimerCreated #{step_id} at ",
        "sub": f"SubOrchestrationInstanceCreated #{step_id} 'child'",
    }[original[0]]
    asked = (
        f"CreateTimer #{step_id} at " if replacement[0] == "timer" else f"CallActivity #{step_id} 'triple'"
    )
    with pytest.raises(NonDeterministicOrchestrationError) as info:
        replay(interpret, history, input=changed)
    assert recorded in str(info.value)
    assert asked in str(info.value)
    # The unchanged program still replays (the override itself is not the problem).
    assert replay(interpret, history, input=program).output == reference(program)
