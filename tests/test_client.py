"""The durable client: starting, querying, signalling, purging and restarting instances."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

import durable_ext as df
from durable_ext import (
    DurableOrchestrationStatus,
    EventType,
    InstanceAlreadyExistsError,
    InstanceNotFoundError,
    InvalidInstanceIdError,
    OrchestrationRuntimeStatus,
    PurgeHistoryResult,
)
from durable_ext.testing import DurableTestEnv

Status = OrchestrationRuntimeStatus
app = df.DurableApp()


@app.activity_trigger(input_name="value")
def double(value: int) -> int:
    return value * 2


@app.orchestration_trigger(context_name="context")
def quick(context: df.DurableOrchestrationContext):
    value = context.get_input()
    return {"doubled": (yield context.call_activity("double", value or 0)), "me": context.instance_id}


@app.orchestration_trigger(context_name="context")
def immediate(context: df.DurableOrchestrationContext):
    return context.get_input()


@app.orchestration_trigger(context_name="context")
def waits(context: df.DurableOrchestrationContext):
    context.set_custom_status({"waiting": True})
    value = yield context.wait_for_external_event("go")
    context.set_custom_status({"waiting": False})
    return {"input": context.get_input(), "event": value}


@app.orchestration_trigger(context_name="context")
def fails(context: df.DurableOrchestrationContext):
    yield context.call_activity("double", 1)
    raise RuntimeError("deliberate")


@pytest.fixture
async def env() -> AsyncIterator[DurableTestEnv]:
    async with DurableTestEnv(app) as environment:
        yield environment


# --------------------------------------------------------------------------------- start_new


async def test_start_new_with_explicit_id(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("quick", "order-42", 5)
    assert iid == "order-42"
    status = await env.wait_for_completion(iid)
    assert status.instance_id == "order-42"
    assert status.name == "quick"
    assert status.output == {"doubled": 10, "me": "order-42"}


async def test_start_new_generates_unique_ids(env: DurableTestEnv) -> None:
    ids = [await env.client.start_new("immediate", None, n) for n in range(5)]
    assert len(set(ids)) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", iid) for iid in ids)
    for n, iid in enumerate(ids):
        assert (await env.wait_for_completion(iid)).output == n


async def test_start_new_with_empty_id_generates_one(env: DurableTestEnv) -> None:
    # as the official SDK and the Durable Functions HTTP API: no id means a new one
    iid = await env.client.start_new("immediate", "", "x")
    assert re.fullmatch(r"[0-9a-f]{32}", iid)
    assert (await env.wait_for_completion(iid)).output == "x"


async def test_start_new_status_is_pending_before_it_runs(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("quick", "pending-one", 1)
    status = await env.client.get_status(iid)  # nothing awaited in between: no step ran yet
    assert status is not None
    assert status.runtime_status == Status.Pending
    assert status.output is None
    assert (await env.wait_for_completion(iid)).runtime_status == Status.Completed


async def test_start_new_needs_an_orchestrator_name(env: DurableTestEnv) -> None:
    with pytest.raises(ValueError, match="orchestration_function_name"):
        await env.client.start_new("", "x")


async def test_starting_a_running_id_raises(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("waits", "busy", 1)
    with pytest.raises(InstanceAlreadyExistsError, match="busy"):
        await env.client.start_new("waits", "busy", 2)
    await env.run_until_idle()
    assert (await env.client.get_status(iid)).runtime_status == Status.Running
    with pytest.raises(InstanceAlreadyExistsError, match="Running"):
        await env.client.start_new("quick", "busy", 2)
    await env.client.suspend(iid)
    await env.wait_for_status(iid, lambda s: s.runtime_status == Status.Suspended)
    with pytest.raises(InstanceAlreadyExistsError, match="Suspended"):
        await env.client.start_new("waits", "busy", 2)
    # the running instance was not disturbed
    await env.client.resume(iid)
    await env.client.raise_event(iid, "go", "ok")
    status = await env.wait_for_completion(iid)
    assert status.output == {"input": 1, "event": "ok"}


async def test_starting_a_finished_id_restarts_it(env: DurableTestEnv) -> None:
    await env.client.start_new("quick", "again", 1)
    first = await env.wait_for_completion("again")
    assert first.output == {"doubled": 2, "me": "again"}
    env.clock.advance(timedelta(minutes=5))
    await env.client.start_new("quick", "again", 7)
    second = await env.wait_for_completion("again")
    assert second.runtime_status == Status.Completed
    assert second.output == {"doubled": 14, "me": "again"}
    assert second.created_time > first.created_time
    history = await env.history("again")
    started = [e for e in history if e["EventType"] == EventType.ExecutionStarted]
    assert [e["Input"] for e in started] == ["7"]  # the old execution's history is gone


async def test_a_failed_or_terminated_id_can_be_started_again(env: DurableTestEnv) -> None:
    await env.client.start_new("fails", "phoenix")
    assert (await env.wait_for_completion("phoenix")).runtime_status == Status.Failed
    await env.client.start_new("waits", "phoenix", "second")
    await env.run_until_idle()
    await env.client.terminate("phoenix", "enough")
    assert (await env.wait_for_completion("phoenix")).runtime_status == Status.Terminated
    await env.client.start_new("quick", "phoenix", 3)
    status = await env.wait_for_completion("phoenix")
    assert status.runtime_status == Status.Completed
    assert status.name == "quick"
    assert status.output == {"doubled": 6, "me": "phoenix"}
    assert status.failure is None


@pytest.mark.parametrize(
    ("bad_id", "fragment"),
    [
        ("x" * 257, "limit is 256"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\\\\\'"),
        ("a#b", "'#'"),
        ("a?b", "'?'"),
        ("a\nb", "'\\\\n'"),
        ("a\x00b", "'\\\\x00'"),
        ("a\x7fb", "'\\\\x7f'"),
        ("tab\there", "'\\\\t'"),
    ],
)
async def test_invalid_instance_ids(env: DurableTestEnv, bad_id: str, fragment: str) -> None:
    with pytest.raises(InvalidInstanceIdError, match=fragment) as info:
        await env.client.start_new("quick", bad_id, 1)
    assert isinstance(info.value, ValueError)  # callers may catch it as a ValueError
    if len(bad_id) <= 256:
        assert "may not contain" in str(info.value)
    for call in (
        env.client.raise_event(bad_id, "go"),
        env.client.terminate(bad_id, "x"),
        env.client.suspend(bad_id),
        env.client.resume(bad_id),
        env.client.restart(bad_id),
    ):
        with pytest.raises(InvalidInstanceIdError):
            await call
    assert await env.client.get_status_all() == []


async def test_longest_valid_instance_id(env: DurableTestEnv) -> None:
    iid = "y" * 256
    assert await env.client.start_new("immediate", iid, 1) == iid
    assert (await env.wait_for_completion(iid)).output == 1


async def test_empty_id_is_invalid_for_instance_operations(env: DurableTestEnv) -> None:
    for call in (env.client.raise_event("", "go"), env.client.terminate(""), env.client.restart("")):
        with pytest.raises(InvalidInstanceIdError, match="non-empty"):
            await call


async def test_unicode_ids_are_fine(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("immediate", "commande-été-🚀", "ok")
    assert (await env.wait_for_completion(iid)).output == "ok"


# -------------------------------------------------------------------------------- get_status


async def test_get_status_of_unknown_instance_is_none(env: DurableTestEnv) -> None:
    assert await env.client.get_status("nobody") is None
    assert await env.client.get_status("nobody", show_history=True, show_input=True) is None


async def test_get_status_show_input(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("quick", "inputs", {"a": 1})
    await env.wait_for_completion(iid)
    assert (await env.client.get_status(iid)).input_ is None
    assert (await env.client.get_status(iid, show_input=True)).input_ == {"a": 1}


async def test_get_status_show_history(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("quick", "with-history", 4)
    await env.wait_for_completion(iid)
    plain = await env.client.get_status(iid)
    assert plain.history is None
    status = await env.client.get_status(iid, show_history=True)
    kinds = [e["EventType"] for e in status.history]
    assert kinds[0] == EventType.OrchestratorStarted
    assert EventType.ExecutionStarted in kinds
    assert EventType.TaskScheduled in kinds and EventType.TaskCompleted in kinds
    assert kinds[-1] == EventType.ExecutionCompleted
    assert all("Input" not in e and "Result" not in e for e in status.history)
    with_output = await env.client.get_status(iid, show_history=True, show_history_output=True)
    completed = [e for e in with_output.history if e["EventType"] == EventType.TaskCompleted]
    assert completed[0]["Result"] == "8"
    assert "historyEvents" in with_output.to_json()


async def test_get_status_while_running(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("waits", "live", "in")
    status = await env.wait_for_status(iid, lambda s: s.custom_status == {"waiting": True})
    assert status.runtime_status == Status.Running
    assert status.output is None
    assert status.last_updated_time >= status.created_time
    await env.client.raise_event(iid, "go", 3)
    done = await env.wait_for_completion(iid)
    assert done.custom_status == {"waiting": False}
    assert done.output == {"input": "in", "event": 3}
    assert done.last_updated_time >= status.last_updated_time


async def test_get_status_of_failed_instance(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("fails", "broken")
    status = await env.wait_for_completion(iid)
    assert status.runtime_status == Status.Failed
    assert "deliberate" in status.output
    assert status.failure["ErrorType"] == "RuntimeError"
    assert "raise RuntimeError" in status.failure["StackTrace"]


async def _populate(env: DurableTestEnv) -> dict[str, list[str]]:
    """Instances an hour apart: two completed, two running, one failed."""
    made: dict[str, list[str]] = {"completed": [], "running": [], "failed": []}
    plan = [
        ("quick", "batch-a-1", "completed"),
        ("waits", "batch-a-2", "running"),
        ("fails", "batch-b-1", "failed"),
        ("quick", "other-1", "completed"),
        ("waits", "other-2", "running"),
    ]
    for name, iid, kind in plan:
        await env.client.start_new(name, iid, 1)
        await env.run_until_idle()
        made[kind].append(iid)
        env.clock.advance(timedelta(hours=1))
    return made


async def test_get_status_by_and_all(env: DurableTestEnv) -> None:
    made = await _populate(env)
    everything = await env.client.get_status_all()
    assert sorted(s.instance_id for s in everything) == sorted(iid for ids in made.values() for iid in ids)
    assert all(isinstance(s, DurableOrchestrationStatus) for s in everything)

    running = await env.client.get_status_by(runtime_status=[Status.Running])
    assert sorted(s.instance_id for s in running) == sorted(made["running"])
    finished = await env.client.get_status_by(runtime_status=[Status.Completed, Status.Failed])
    assert sorted(s.instance_id for s in finished) == sorted(made["completed"] + made["failed"])
    assert await env.client.get_status_by(runtime_status=[Status.Terminated]) == []

    batch = await env.client.get_status_by(instance_id_prefix="batch-")
    assert sorted(s.instance_id for s in batch) == ["batch-a-1", "batch-a-2", "batch-b-1"]
    batch_a_running = await env.client.get_status_by(
        runtime_status=[Status.Running], instance_id_prefix="batch-a"
    )
    assert [s.instance_id for s in batch_a_running] == ["batch-a-2"]

    created = {s.instance_id: s.created_time for s in everything}
    middle = created["batch-b-1"]
    around = await env.client.get_status_by(
        created_time_from=middle - timedelta(minutes=1), created_time_to=middle + timedelta(minutes=1)
    )
    assert [s.instance_id for s in around] == ["batch-b-1"]
    later = await env.client.get_status_by(created_time_from=middle)
    assert sorted(s.instance_id for s in later) == ["batch-b-1", "other-1", "other-2"]
    earlier = await env.client.get_status_by(created_time_to=middle - timedelta(seconds=1))
    assert sorted(s.instance_id for s in earlier) == ["batch-a-1", "batch-a-2"]


async def test_get_status_by_pages_through_many_instances(env: DurableTestEnv) -> None:
    count = 1005  # more than one page of the client's queries
    for n in range(count):
        await env.client.start_new("immediate", f"many-{n:05d}", n)
    await env.run_until_idle()
    statuses = await env.client.get_status_by(runtime_status=[Status.Completed])
    assert len(statuses) == count
    assert sorted(s.output for s in statuses) == list(range(count))


# ------------------------------------------------------------------- signals on unknown ids


async def test_operations_on_unknown_instance_raise(env: DurableTestEnv) -> None:
    with pytest.raises(InstanceNotFoundError, match="ghost"):
        await env.client.raise_event("ghost", "go", 1)
    with pytest.raises(InstanceNotFoundError, match="ghost"):
        await env.client.terminate("ghost", "why")
    with pytest.raises(InstanceNotFoundError):
        await env.client.suspend("ghost")
    with pytest.raises(InstanceNotFoundError):
        await env.client.resume("ghost")
    with pytest.raises(InstanceNotFoundError):
        await env.client.restart("ghost")
    assert isinstance(InstanceNotFoundError("x"), LookupError)
    assert await env.client.get_status("ghost") is None


async def test_raise_event_needs_a_name(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("waits", "named", 1)
    with pytest.raises(ValueError, match="event_name"):
        await env.client.raise_event(iid, "", 1)
    await env.client.terminate(iid)


async def test_raise_event_data_must_serialize(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("waits", "serial", 1)
    with pytest.raises(df.SerializationError, match="data of event 'go'"):
        await env.client.raise_event(iid, "go", object())
    await env.client.terminate(iid)


# ------------------------------------------------------------------------------------- purge


async def test_purge_instance_history(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("quick", "to-purge", 1)
    await env.wait_for_completion(iid)
    result = await env.client.purge_instance_history(iid)
    assert isinstance(result, PurgeHistoryResult)
    assert result.instances_deleted == 1
    assert await env.client.get_status(iid) is None
    assert await env.history(iid) == []
    assert (await env.client.purge_instance_history(iid)).instances_deleted == 0
    assert (await env.client.purge_instance_history("never-existed")).instances_deleted == 0
    # the id is free again
    await env.client.start_new("quick", iid, 2)
    assert (await env.wait_for_completion(iid)).output == {"doubled": 4, "me": iid}


async def test_purge_instance_history_by(env: DurableTestEnv) -> None:
    made = await _populate(env)
    everything = {s.instance_id: s for s in await env.client.get_status_all()}
    cutoff = everything["batch-b-1"].created_time

    result = await env.client.purge_instance_history_by(
        created_time_to=cutoff, runtime_status=[Status.Completed, Status.Failed]
    )
    assert result.instances_deleted == 2  # batch-a-1 (completed) and batch-b-1 (failed)
    remaining = sorted(s.instance_id for s in await env.client.get_status_all())
    assert remaining == ["batch-a-2", "other-1", "other-2"]

    result = await env.client.purge_instance_history_by(runtime_status=[Status.Completed])
    assert result.instances_deleted == 1
    remaining = sorted(s.instance_id for s in await env.client.get_status_all())
    assert remaining == sorted(made["running"])

    result = await env.client.purge_instance_history_by(created_time_from=cutoff + timedelta(days=1))
    assert result.instances_deleted == 0


async def test_naive_datetimes_mean_utc(env: DurableTestEnv) -> None:
    await env.client.start_new("immediate", "old-one", 1)
    await env.run_until_idle()
    env.clock.advance(timedelta(days=40))
    await env.client.start_new("immediate", "new-one", 2)
    await env.run_until_idle()
    now = env.now().replace(tzinfo=None)
    recent = await env.client.get_status_by(created_time_from=now - timedelta(days=1))
    assert [s.instance_id for s in recent] == ["new-one"]
    # the official documentation's purge example: naive datetime.min and a naive cutoff
    result = await env.client.purge_instance_history_by(
        datetime.min, now + timedelta(days=-30), [Status.Completed]
    )
    assert result.instances_deleted == 1
    assert [s.instance_id for s in await env.client.get_status_all()] == ["new-one"]


async def test_purge_by_many(env: DurableTestEnv) -> None:
    for n in range(250):  # more than one page of the backend's queries
        await env.client.start_new("immediate", f"bulk-{n:03d}", n)
    await env.run_until_idle()
    result = await env.client.purge_instance_history_by(runtime_status=[Status.Completed])
    assert result.instances_deleted == 250
    assert await env.client.get_status_all() == []


# ----------------------------------------------------------------------------------- restart


async def test_restart_with_new_instance_id(env: DurableTestEnv) -> None:
    await env.client.start_new("quick", "original", 21)
    await env.wait_for_completion("original")
    new_id = await env.client.restart("original")
    assert new_id != "original"
    status = await env.wait_for_completion(new_id)
    assert status.name == "quick"
    assert status.output == {"doubled": 42, "me": new_id}
    assert (await env.client.get_status(new_id, show_input=True)).input_ == 21
    assert (await env.client.get_status("original")).output == {"doubled": 42, "me": "original"}


async def test_restart_with_same_instance_id(env: DurableTestEnv) -> None:
    await env.client.start_new("fails", "retry-me")
    assert (await env.wait_for_completion("retry-me")).runtime_status == Status.Failed
    assert await env.client.restart("retry-me", restart_with_new_instance_id=False) == "retry-me"
    status = await env.wait_for_completion("retry-me")
    assert status.runtime_status == Status.Failed  # it ran again (and failed again)
    history = await env.history("retry-me")
    assert sum(e["EventType"] == EventType.ExecutionStarted for e in history) == 1

    await env.client.start_new("waits", "running-one", {"k": 1})
    with pytest.raises(InstanceAlreadyExistsError):
        await env.client.restart("running-one", restart_with_new_instance_id=False)
    copy = await env.client.restart("running-one")
    await env.run_until_idle()
    await env.client.raise_event(copy, "go", "copy")
    assert (await env.wait_for_completion(copy)).output == {"input": {"k": 1}, "event": "copy"}


# ------------------------------------------------------------------------------------ to_json


async def test_status_to_json(env: DurableTestEnv) -> None:
    iid = await env.client.start_new("waits", "json-me", {"x": [1, 2]})
    await env.wait_for_status(iid, lambda s: s.custom_status == {"waiting": True})
    env.clock.advance(timedelta(seconds=90))
    await env.client.raise_event(iid, "go", "yes")
    await env.wait_for_completion(iid)
    status = await env.client.get_status(iid, show_input=True)
    data = status.to_json()
    assert set(data) == {
        "name",
        "instanceId",
        "runtimeStatus",
        "input",
        "customStatus",
        "output",
        "createdTime",
        "lastUpdatedTime",
    }
    assert data["name"] == "waits"
    assert data["instanceId"] == "json-me"
    assert data["runtimeStatus"] == "Completed"
    assert data["input"] == {"x": [1, 2]}
    assert data["customStatus"] == {"waiting": False}
    assert data["output"] == {"input": {"x": [1, 2]}, "event": "yes"}
    assert data["createdTime"] == status.created_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["lastUpdatedTime"] == status.last_updated_time.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert status.last_updated_time - status.created_time >= timedelta(seconds=90)
    hidden = (await env.client.get_status(iid)).to_json()
    assert hidden["input"] is None
