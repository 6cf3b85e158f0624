"""Changed orchestrator code against recorded history: what is flagged, and how.

Each incompatible change must fail with NonDeterministicOrchestrationError whose
message names the recorded history event and the action the new code asks for,
both from ``replay`` and through the engine after a restart; the recorded
history is never rewritten. Compatible changes are not flagged.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Generator
from datetime import timedelta
from typing import Any

import pytest

from durable_ext import NonDeterministicOrchestrationError, OrchestrationRuntimeStatus
from durable_ext.client import DurableOrchestrationStatus
from durable_ext.core.history import Event, EventType
from durable_ext.core.registry import Registry
from durable_ext.testing import DurableTestEnv, replay

Gen = Generator[Any, Any, Any]
Orchestrator = Callable[[Any], Gen]


def program(*steps: str) -> Orchestrator:
    """An orchestrator running ``steps``: ``act:NAME``, ``sub:NAME``, ``timer`` or ``wait``."""

    def orchestrator(context: Any) -> Gen:
        out = []
        for index, step in enumerate(steps):
            kind, _, name = step.partition(":")
            if kind == "act":
                out.append((yield context.call_activity(name, index)))
            elif kind == "sub":
                out.append((yield context.call_sub_orchestrator(name, index)))
            elif kind == "timer":
                yield context.create_timer(context.current_utc_datetime + timedelta(hours=1))
                out.append("timer")
            elif kind == "wait":
                out.append((yield context.wait_for_external_event("go")))
            else:
                raise AssertionError(step)
        return out

    orchestrator.__name__ = "flow"
    return orchestrator


def child(context: Any) -> Gen:
    """A simple sub-orchestration."""
    return ["child", (yield context.call_activity("work", context.get_input()))]


class Calls:
    """Activities that count their calls by name."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def activity(self, name: str) -> Callable[[Any], Any]:
        def run(value: Any) -> Any:
            self.names.append(name)
            return f"{name}({value})"

        return run


ACTIVITIES = ("prep", "work", "labour", "finish", "extra")


def make_registry(orchestrator: Orchestrator, calls: Calls) -> Registry:
    registry = Registry()
    for name in ACTIVITIES:
        registry.add("activity", calls.activity(name), name)
    registry.add("orchestrator", orchestrator, "flow")
    registry.add("orchestrator", child, "child")
    return registry


# (case, v1 steps, v2 steps, history event named, action named)
INCOMPATIBLE = [
    (
        "activity renamed",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "act:labour", "wait", "act:finish"),
        "TaskScheduled #1 'work'",
        "CallActivity #1 'labour'",
    ),
    (
        "timer where an activity was",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "timer", "wait", "act:finish"),
        "TaskScheduled #1 'work'",
        "CreateTimer #1 at ",
    ),
    (
        "activity where a timer was",
        ("act:prep", "timer", "wait", "act:finish"),
        ("act:prep", "act:work", "wait", "act:finish"),
        "TimerCreated #1 at ",
        "CallActivity #1 'work'",
    ),
    (
        "sub-orchestration where an activity was",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "sub:child", "wait", "act:finish"),
        "TaskScheduled #1 'work'",
        "CallSubOrchestrator #1 'child'",
    ),
    (
        "activity where a sub-orchestration was",
        ("act:prep", "sub:child", "wait", "act:finish"),
        ("act:prep", "act:work", "wait", "act:finish"),
        "SubOrchestrationInstanceCreated #1 'child'",
        "CallActivity #1 'work'",
    ),
    (
        "step removed",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "wait", "act:finish"),
        "TaskScheduled #1 'work'",
        "did not ask for it",
    ),
    (
        "steps reordered",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:work", "act:prep", "wait", "act:finish"),
        "TaskScheduled #0 'prep'",
        "CallActivity #0 'work'",
    ),
]
IDS = [case[0] for case in INCOMPATIBLE]


async def _settle(env: DurableTestEnv) -> None:
    """Run until the instance waits for its event (timers on the way fire)."""
    await env.skip(timedelta(hours=2))


async def _run_v1(v1: Orchestrator, calls: Calls) -> tuple[DurableOrchestrationStatus, list[Event]]:
    async with DurableTestEnv(make_registry(v1, calls)) as env:
        iid = await env.start("flow", None, instance_id="flow-1")
        await _settle(env)
        await env.client.raise_event(iid, "go", "went")
        status = await env.wait_for_completion(iid)
        return status, await env.history(iid)


def _assert_names(message: str, event_text: str, action_text: str) -> None:
    assert event_text in message, message
    assert action_text in message, message
    assert "'flow'" in message, message


# ------------------------------------------------------------------ replay()


@pytest.mark.parametrize(("case", "v1", "v2", "event_text", "action_text"), INCOMPATIBLE, ids=IDS)
def test_replay_flags_incompatible_change(
    case: str, v1: tuple[str, ...], v2: tuple[str, ...], event_text: str, action_text: str
) -> None:
    status, history = asyncio.run(_run_v1(program(*v1), Calls()))
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed
    assert replay(program(*v1), history).output == status.output
    with pytest.raises(NonDeterministicOrchestrationError) as info:
        replay(program(*v2), history)
    _assert_names(str(info.value), event_text, action_text)
    # The shortest prefix that records the changed step already fails the same way.
    event_id = int(event_text.split("#")[1].split()[0])
    changed_at = next(i for i, e in enumerate(history) if e["EventId"] == event_id)
    with pytest.raises(NonDeterministicOrchestrationError) as info:
        replay(program(*v2), history[: changed_at + 1])
    _assert_names(str(info.value), event_text, action_text)
    replay(program(*v2), history[:changed_at])  # and the one before it does not


def test_replay_flags_step_removed_at_the_end() -> None:
    status, history = asyncio.run(_run_v1(program("act:prep", "wait", "act:finish"), Calls()))
    assert status.output == ["prep(0)", "went", "finish(2)"]
    with pytest.raises(NonDeterministicOrchestrationError) as info:
        replay(program("act:prep", "wait"), history)
    _assert_names(str(info.value), "TaskScheduled #1 'finish'", "did not ask for it")


def test_replay_flags_fan_out_made_sequential() -> None:
    def parallel(context: Any) -> Gen:
        return (yield context.task_all([context.call_activity("work", i) for i in range(3)]))

    def sequential(context: Any) -> Gen:
        out = []
        for i in range(3):
            out.append((yield context.call_activity("work", i)))
        return out

    calls = Calls()
    registry = make_registry(program(), calls)
    registry.add("orchestrator", parallel, "parallel")

    async def go() -> list[Event]:
        async with DurableTestEnv(registry) as env:
            iid = await env.start("parallel", None, instance_id="p")
            await env.wait_for_completion(iid)
            return await env.history(iid)

    history = asyncio.run(go())
    with pytest.raises(NonDeterministicOrchestrationError) as info:
        replay(sequential, history)
    assert "TaskScheduled #1 'work'" in str(info.value)


# ------------------------------------------------------------------ the engine


async def _swap_and_resume(
    v1: Orchestrator, v2: Orchestrator, calls: Calls
) -> tuple[DurableOrchestrationStatus, list[Event], list[Event]]:
    """Run v1 until it waits, deploy v2 over it (restart: cache evicted), raise the event."""
    async with DurableTestEnv(make_registry(v1, calls)) as env:
        iid = await env.start("flow", None, instance_id="flow-1")
        await _settle(env)
        waiting = await env.client.get_status(iid)
        assert waiting is not None
        assert waiting.runtime_status == OrchestrationRuntimeStatus.Running
        before = copy.deepcopy(await env.history(iid))
        env.registry.add("orchestrator", v2, "flow")
        env.engine.evict()
        await env.client.raise_event(iid, "go", "went")
        status = await env.wait_for_completion(iid)
        return status, before, await env.history(iid)


@pytest.mark.parametrize(("case", "v1", "v2", "event_text", "action_text"), INCOMPATIBLE, ids=IDS)
def test_engine_fails_instance_on_incompatible_change(
    case: str, v1: tuple[str, ...], v2: tuple[str, ...], event_text: str, action_text: str
) -> None:
    calls = Calls()
    status, before, after = asyncio.run(_swap_and_resume(program(*v1), program(*v2), calls))

    assert status.runtime_status == OrchestrationRuntimeStatus.Failed
    assert status.failure is not None
    assert status.failure["ErrorType"] == "NonDeterministicOrchestrationError"
    _assert_names(status.failure["ErrorMessage"], event_text, action_text)
    assert isinstance(status.output, str)
    _assert_names(status.output, event_text, action_text)
    assert "finish" not in calls.names  # nothing after the wait ran

    # Recorded history is untouched; only the failing episode is appended.
    assert after[: len(before)] == before
    appended = after[len(before) :]
    assert [EventType(e["EventType"]) for e in appended] == [
        EventType.OrchestratorStarted,
        EventType.ExecutionCompleted,
    ]
    completed = appended[-1]
    assert completed["OrchestrationStatus"] == "Failed"
    assert completed["FailureDetails"]["ErrorType"] == "NonDeterministicOrchestrationError"
    _assert_names(completed["FailureDetails"]["ErrorMessage"], event_text, action_text)


def test_engine_without_restart_keeps_running_old_code() -> None:
    """A cached replay state keeps the code it was built with until it is evicted."""
    calls = Calls()
    v1 = program("act:prep", "act:work", "wait", "act:finish")
    v2 = program("act:prep", "act:labour", "wait", "act:finish")

    async def go() -> DurableOrchestrationStatus:
        async with DurableTestEnv(make_registry(v1, calls)) as env:
            iid = await env.start("flow", None, instance_id="flow-1")
            await _settle(env)
            env.registry.add("orchestrator", v2, "flow")
            await env.client.raise_event(iid, "go", "went")
            return await env.wait_for_completion(iid)

    status = asyncio.run(go())
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed
    assert status.output == ["prep(0)", "work(1)", "went", "finish(3)"]


def test_engine_reports_nondeterministic_child_to_parent() -> None:
    calls = Calls()

    def parent(context: Any) -> Gen:
        return (yield context.call_sub_orchestrator("flow", None, "kid"))

    v1 = program("act:prep", "act:work", "wait", "act:finish")
    v2 = program("act:prep", "act:labour", "wait", "act:finish")

    async def go() -> tuple[DurableOrchestrationStatus | None, DurableOrchestrationStatus]:
        registry = make_registry(v1, calls)
        registry.add("orchestrator", parent, "parent")
        async with DurableTestEnv(registry) as env:
            pid = await env.start("parent", None, instance_id="parent")
            await _settle(env)
            env.registry.add("orchestrator", v2, "flow")
            env.engine.evict()
            await env.client.raise_event("kid", "go", "went")
            status = await env.wait_for_completion(pid)
            return await env.client.get_status("kid"), status

    kid, status = asyncio.run(go())
    assert kid is not None
    assert kid.runtime_status == OrchestrationRuntimeStatus.Failed
    assert status.runtime_status == OrchestrationRuntimeStatus.Failed
    assert "TaskScheduled #1 'work'" in str(status.output)


# ---------------------------------------------------------- compatible changes

COMPATIBLE = [
    (
        "step added at the end",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "act:work", "wait", "act:finish", "act:extra"),
        ["prep(0)", "work(1)", "went", "finish(3)", "extra(4)"],
    ),
    (
        "step added after the point history reached",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "act:work", "wait", "act:extra", "act:finish"),
        ["prep(0)", "work(1)", "went", "extra(3)", "finish(4)"],
    ),
    (
        "name differs only in case",
        ("act:prep", "act:work", "wait", "act:finish"),
        ("act:prep", "act:Work", "wait", "act:finish"),
        ["prep(0)", "work(1)", "went", "finish(3)"],
    ),
]


@pytest.mark.parametrize(("case", "v1", "v2", "expected"), COMPATIBLE, ids=[case[0] for case in COMPATIBLE])
def test_compatible_change_is_not_flagged(
    case: str, v1: tuple[str, ...], v2: tuple[str, ...], expected: list[Any]
) -> None:
    calls = Calls()
    status, before, after = asyncio.run(_swap_and_resume(program(*v1), program(*v2), calls))
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed, status.output
    assert status.failure is None
    assert status.output == expected
    assert after[: len(before)] == before
    assert replay(program(*v2), after).output == expected
    # replay() of the recorded in-flight prefix with the new code does not raise either
    result = replay(program(*v2), before)
    assert not result.is_done
    assert result.actions == []


def test_step_added_at_end_of_finished_history_only_asks_for_more() -> None:
    status, history = asyncio.run(_run_v1(program("act:prep", "wait", "act:finish"), Calls()))
    assert status.runtime_status == OrchestrationRuntimeStatus.Completed
    result = replay(program("act:prep", "wait", "act:finish", "act:extra"), history)
    assert not result.is_done
    assert [(a.type.name, a.id, a.name, a.input) for a in result.actions] == [
        ("CallActivity", 2, "extra", "3")
    ]


def test_changed_input_is_not_flagged() -> None:
    """As in the Durable Task Framework, inputs are not compared on replay; results come from history."""
    status, history = asyncio.run(_run_v1(program("act:prep", "wait", "act:finish"), Calls()))

    def other_inputs(context: Any) -> Gen:
        first = yield context.call_activity("prep", "something else")
        event = yield context.wait_for_external_event("go")
        last = yield context.call_activity("finish", {"x": 1})
        return [first, event, last]

    assert replay(other_inputs, history).output == status.output
