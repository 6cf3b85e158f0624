"""Rewind of Failed instances, end to end in the in-memory test environment."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import pytest

import durable_ext as df
from durable_ext import EventType, InstanceNotFailedError, InstanceNotFoundError, RetryOptions
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.core import history as h
from durable_ext.core.runtime import Message, run_step
from durable_ext.core.serialization import from_json
from durable_ext.testing import DurableTestEnv

app = df.DurableApp()

#: Calls of each activity, by key (the calling instance id).
CALLS: dict[str, list[str]] = defaultdict(list)
#: Keys whose next ``fragile`` call fails (cleared by that failure).
BROKEN: set[str] = set()


@app.activity_trigger(input_name="request")
def step(request: dict) -> str:
    CALLS[request["key"]].append(f"step:{request['n']}")
    return f"s{request['n']}"


@app.activity_trigger(input_name="request")
def fragile(request: dict) -> str:
    """Fails while ``request['key']`` is in BROKEN, succeeds after it is fixed."""
    CALLS[request["key"]].append("fragile")
    if request["key"] in BROKEN:
        raise RuntimeError(f"dependency down for {request['key']}")
    return "fixed"


@app.orchestration_trigger(context_name="context")
def pipeline(context: df.DurableOrchestrationContext):
    key = context.instance_id
    first = yield context.call_activity("step", {"key": key, "n": 1})
    second = yield context.call_activity("step", {"key": key, "n": 2})
    third = yield context.call_activity("fragile", {"key": key})
    last = yield context.call_activity("step", {"key": key, "n": 3})
    return [first, second, third, last]


@app.orchestration_trigger(context_name="context")
def retrying(context: df.DurableOrchestrationContext):
    key = context.instance_id
    retry = RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=2)
    done = yield context.call_activity("step", {"key": key, "n": 1})
    value = yield context.call_activity_with_retry("fragile", retry, {"key": key})
    return [done, value]


@app.orchestration_trigger(context_name="context")
def fan(context: df.DurableOrchestrationContext):
    key = context.instance_id
    tasks = [context.call_activity("step", {"key": key, "n": n}) for n in range(3)]
    tasks.append(context.call_activity("fragile", {"key": key}))
    return (yield context.task_all(tasks))


class Gate:
    """An asyncio.Event the current test owns, for an activity that must wait."""

    event: asyncio.Event | None = None

    @classmethod
    def reset(cls) -> asyncio.Event:
        cls.event = asyncio.Event()
        return cls.event


@app.activity_trigger(input_name="key")
async def slow(key: str) -> str:
    CALLS[key].append("slow")
    assert Gate.event is not None
    await Gate.event.wait()
    return f"slow:{key}"


@app.orchestration_trigger(context_name="context")
def waiting_fan(context: df.DurableOrchestrationContext):
    key = context.instance_id
    tasks = [context.call_activity("fragile", {"key": key}), context.call_activity("slow", key)]
    return (yield context.task_all(tasks))


@app.orchestration_trigger(context_name="context")
def child_pipeline(context: df.DurableOrchestrationContext):
    key = context.get_input()["key"]
    done = yield context.call_activity("step", {"key": key, "n": 10})
    fixed = yield context.call_activity("fragile", {"key": key})
    return [done, fixed]


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    key = context.instance_id
    before = yield context.call_activity("step", {"key": key, "n": 0})
    child = yield context.call_sub_orchestrator("child_pipeline", {"key": f"{key}:child"}, f"{key}:child")
    return [before, child]


@pytest.fixture
async def env() -> AsyncIterator[DurableTestEnv]:
    CALLS.clear()
    BROKEN.clear()
    async with DurableTestEnv(app) as environment:
        yield environment


async def wait_rewound(env: DurableTestEnv, instance_id: str, previous: str) -> df.DurableOrchestrationStatus:
    """Run until the instance finished an execution other than ``previous`` (skipping time)."""

    async def check() -> df.DurableOrchestrationStatus | None:
        record = await env.backend.get_instance(instance_id)
        if record is None or record.execution_id == previous or not record.status.is_terminal:
            return None
        return await env.client.get_status(instance_id)

    return await env._drive(check, 30.0, True, f"rewind of '{instance_id}'")


async def fail_then_rewind(env: DurableTestEnv, name: str, instance_id: str, broken: str) -> Any:
    """Run ``name`` with ``broken`` failing until it is Failed, fix it, rewind, wait for the end."""
    BROKEN.add(broken)
    await env.client.start_new(name, instance_id)
    failed = await env.wait_for_completion(instance_id)
    assert failed.runtime_status == Status.Failed
    before = await env.backend.get_instance(instance_id)
    assert before is not None
    BROKEN.discard(broken)
    await env.client.rewind(instance_id, "dependency fixed")
    done = await wait_rewound(env, instance_id, before.execution_id)
    after = await env.backend.get_instance(instance_id)
    assert after is not None and after.execution_id != before.execution_id
    return done


def rewind_marker(history: list[dict[str, Any]]) -> dict[str, Any]:
    markers = [e for e in history if h.is_rewind(e)]
    assert len(markers) == 1
    return markers[0]


async def test_rewind_retries_only_the_failed_activity(env: DurableTestEnv) -> None:
    done = await fail_then_rewind(env, "pipeline", "p1", "p1")
    assert done.runtime_status == Status.Completed
    assert done.output == ["s1", "s2", "fixed", "s3"]
    # the successful calls before the failure ran once; only the failed one ran again
    assert CALLS["p1"] == ["step:1", "step:2", "fragile", "fragile", "step:3"]

    history = await env.backend.get_history("p1")
    kinds = [e["EventType"] for e in history]
    assert EventType.TaskFailed not in kinds
    assert kinds.count(EventType.ExecutionCompleted) == 1
    assert history[-1]["OrchestrationStatus"] == "Completed"
    assert [e["EventId"] for e in history if e["EventType"] == EventType.TaskScheduled] == [0, 1, 2, 3]
    marker = rewind_marker(history)
    assert marker["Reason"] == "dependency fixed"
    data = from_json(marker["Data"])
    assert data["rewoundTasks"] == [2] and data["reopenedTasks"] == []
    started = next(e for e in history if e["EventType"] == EventType.ExecutionStarted)
    record = await env.backend.get_instance("p1")
    assert record is not None
    assert started["OrchestrationInstance"]["ExecutionId"] == record.execution_id
    assert data["previousExecutionId"] != record.execution_id


async def test_rewind_of_a_retried_call_retries_the_last_attempt(env: DurableTestEnv) -> None:
    done = await fail_then_rewind(env, "retrying", "r1", "r1")
    assert done.runtime_status == Status.Completed
    assert done.output == ["s1", "fixed"]
    assert CALLS["r1"] == ["step:1", "fragile", "fragile", "fragile"]
    history = await env.backend.get_history("r1")
    failed = [e["TaskScheduledId"] for e in history if e["EventType"] == EventType.TaskFailed]
    assert failed == [1]  # the first attempt's failure was handled (a retry timer followed): kept


async def test_rewind_of_a_fan_out_reruns_the_failed_branch(env: DurableTestEnv) -> None:
    done = await fail_then_rewind(env, "fan", "f1", "f1")
    assert done.runtime_status == Status.Completed
    assert done.output == ["s0", "s1", "s2", "fixed"]
    assert CALLS["f1"].count("fragile") == 2
    # a sibling still running when the fan-out failed may run again; finished ones never do
    assert {"step:0", "step:1", "step:2"} <= set(CALLS["f1"])


async def test_rewind_reopens_work_still_running_at_the_failure(env: DurableTestEnv) -> None:
    """A sibling that had not answered when the instance failed is sent again; either answer counts."""
    gate = Gate.reset()
    BROKEN.add("w1")
    await env.client.start_new("waiting_fan", "w1")
    assert (await env.wait_for_completion("w1")).runtime_status == Status.Failed
    before = await env.backend.get_instance("w1")
    assert before is not None
    BROKEN.discard("w1")
    await env.client.rewind("w1", "retry")
    gate.set()
    done = await wait_rewound(env, "w1", before.execution_id)
    assert done.runtime_status == Status.Completed and done.output == ["fixed", "slow:w1"]
    assert CALLS["w1"].count("fragile") == 2 and CALLS["w1"].count("slow") == 2
    data = from_json(rewind_marker(await env.backend.get_history("w1"))["Data"])
    assert data["rewoundTasks"] == [0] and data["reopenedTasks"] == [1]


async def test_rewind_of_a_failed_sub_orchestration_rewinds_the_child(env: DurableTestEnv) -> None:
    done = await fail_then_rewind(env, "parent", "p2", "p2:child")
    assert done.runtime_status == Status.Completed
    assert done.output == ["s0", ["s10", "fixed"]]
    assert CALLS["p2"] == ["step:0"]
    # the child was rewound too: its successful activity was not run again
    assert CALLS["p2:child"] == ["step:10", "fragile", "fragile"]
    child = await env.client.get_status("p2:child")
    assert child is not None and child.runtime_status == Status.Completed
    parent_history = await env.backend.get_history("p2")
    kinds = [e["EventType"] for e in parent_history]
    assert EventType.SubOrchestrationInstanceFailed not in kinds
    assert kinds.count(EventType.SubOrchestrationInstanceCreated) == 1
    assert from_json(rewind_marker(parent_history)["Data"])["rewoundTasks"] == [1]
    child_history = await env.backend.get_history("p2:child")
    assert EventType.TaskFailed not in [e["EventType"] for e in child_history]
    record = await env.backend.get_instance("p2")
    started = next(e for e in child_history if e["EventType"] == EventType.ExecutionStarted)
    assert record is not None
    assert started["ParentInstance"]["OrchestrationInstance"]["ExecutionId"] == record.execution_id


async def test_rewind_that_fails_again_leaves_the_instance_failed(env: DurableTestEnv) -> None:
    BROKEN.add("p3")
    await env.client.start_new("pipeline", "p3")
    await env.wait_for_completion("p3")
    first = await env.backend.get_instance("p3")
    assert first is not None
    await env.client.rewind("p3", "not fixed yet")
    again = await wait_rewound(env, "p3", first.execution_id)
    assert again.runtime_status == Status.Failed
    assert CALLS["p3"] == ["step:1", "step:2", "fragile", "fragile"]
    second = await env.backend.get_instance("p3")
    assert second is not None
    BROKEN.discard("p3")
    await env.client.rewind("p3", "fixed now")
    done = await wait_rewound(env, "p3", second.execution_id)
    assert done.runtime_status == Status.Completed and done.output == ["s1", "s2", "fixed", "s3"]
    assert CALLS["p3"].count("step:1") == 1


async def test_rewind_needs_a_failed_instance(env: DurableTestEnv) -> None:
    await env.client.start_new("pipeline", "ok")
    assert (await env.wait_for_completion("ok")).runtime_status == Status.Completed
    with pytest.raises(InstanceNotFailedError, match="only failed instances"):
        await env.client.rewind("ok", "why")
    with pytest.raises(InstanceNotFoundError):
        await env.client.rewind("ghost", "why")


async def test_a_rewind_for_a_completed_instance_is_ignored(env: DurableTestEnv) -> None:
    """The core drops a rewind that reaches an instance that is not Failed."""
    await env.client.start_new("pipeline", "ok2")
    await env.wait_for_completion("ok2")
    history = await env.backend.get_history("ok2")
    record = await env.backend.get_instance("ok2")
    assert record is not None
    event = h.execution_rewound(h.format_timestamp(env.now()), "late")
    await env.backend.send_messages([Message("ok2", event, record.execution_id)])

    async def drained() -> bool | None:
        return True if env.backend.is_idle else None

    await env._drive(drained, 10.0, False, "the rewind message")
    status = await env.client.get_status("ok2")
    assert status is not None and status.runtime_status == Status.Completed
    assert await env.backend.get_history("ok2") == history


async def test_run_step_drops_stale_answers_of_rewound_tasks(env: DurableTestEnv) -> None:
    """Pure core: after a rewind, an old execution's copy of the rewound failure is ignored."""
    BROKEN.add("core1")
    await env.client.start_new("pipeline", "core1")
    await env.wait_for_completion("core1")
    record = await env.backend.get_instance("core1")
    history = await env.backend.get_history("core1")
    assert record is not None
    stale = next(e for e in history if e["EventType"] == EventType.TaskFailed)
    now = env.now()
    request = Message("core1", h.execution_rewound(h.format_timestamp(now), "why"), record.execution_id)

    step = run_step(env.registry, record, history, [request], now)
    assert step.reset_history and step.record.status == Status.Running
    assert step.record.execution_id != record.execution_id
    assert [(a.task_id, a.name, a.execution_id) for a in step.activities] == [
        (2, "fragile", step.record.execution_id)
    ]
    assert EventType.TaskFailed not in [e["EventType"] for e in step.new_events]

    # a stale copy of the old failure (pinned to the old execution) changes nothing
    late = run_step(
        env.registry, step.record, step.new_events, [Message("core1", stale, record.execution_id)], now
    )
    assert not late.changed
    # the same failure for the new execution is taken: the retried call failed again
    again = run_step(
        env.registry, step.record, step.new_events, [Message("core1", stale, step.record.execution_id)], now
    )
    assert again.record.status == Status.Failed

    # a rewind that reaches an instance that is not Failed is dropped
    ignored = run_step(env.registry, step.record, step.new_events, [request], now)
    assert not ignored.changed and ignored.record.status == Status.Running
