"""Payloads beyond the queue-message and table-property limits, end to end on a real Azurite.

Queue messages hold 64 KB, string properties 64 KB (32K UTF-16 units), an
entity 1 MB and a transaction 4 MB: bigger inputs, outputs, events, custom
statuses and activity results must go to inbox rows and blobs and come back
intact. Purging an instance deletes its blobs and rows.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.client import DurableOrchestrationClient
from durable_ext.host.worker import AzureWorker

app = df.DurableApp()

KB = 1024
MB = 1024 * KB


@app.orchestration_trigger(context_name="context")
def big_round_trip(context: df.DurableOrchestrationContext):
    """Echo a big input through an activity, an external event and a sub-orchestration."""
    data = context.get_input()
    context.set_custom_status({"status": data["status"]})
    echoed = yield context.call_activity("echo_payload", data["payload"])
    event = yield context.wait_for_external_event("Big")
    child = yield context.call_sub_orchestrator("big_child", data["payload"])
    return {"echoed": echoed, "event": event, "child": child, "status": data["status"]}


@app.orchestration_trigger(context_name="context")
def big_child(context: df.DurableOrchestrationContext):
    """Return the reversed input (a big sub-orchestration input and output)."""
    text = context.get_input()
    echoed = yield context.call_activity("echo_payload", text)
    return echoed[::-1]


@app.orchestration_trigger(context_name="context")
def big_output(context: df.DurableOrchestrationContext):
    """Ask an activity for ``n`` bytes of text and return it (or only its length)."""
    spec = context.get_input()
    text = yield context.call_activity("make_text", spec["size"])
    if spec.get("only_length"):
        return len(text)
    return text


@app.orchestration_trigger(context_name="context")
def big_fan_out(context: df.DurableOrchestrationContext):
    """Several big activity results arriving at once (one fan-in step)."""
    sizes = context.get_input()
    texts = yield context.task_all([context.call_activity("make_text", s) for s in sizes])
    return [len(t) for t in texts]


@app.orchestration_trigger(context_name="context")
def big_fan_out_inputs(context: df.DurableOrchestrationContext):
    """Many activities with big inputs (a big outbox) plus a child with a 2 MB input."""
    spec = context.get_input()
    texts = [make_text(spec["size"] + n) for n in range(spec["count"])]
    lengths = yield context.task_all([context.call_activity("text_length", t) for t in texts])
    child = yield context.call_sub_orchestrator("big_child", make_text(spec["child"]))
    return {"lengths": lengths, "child": len(child)}


@app.orchestration_trigger(context_name="context")
def big_loop(context: df.DurableOrchestrationContext):
    """Continue as new three times carrying a big input, then wait for ``Stop``."""
    state = context.get_input()
    if state["round"] < 3:
        grown = yield context.call_activity("echo_payload", state["text"] + str(state["round"]))
        context.continue_as_new({"round": state["round"] + 1, "text": grown})
        return None
    yield context.wait_for_external_event("Stop")
    return state["text"]


@app.orchestration_trigger(context_name="context")
def big_failure(context: df.DurableOrchestrationContext):
    """Fail with an exception message far above the property limit."""
    size = context.get_input()
    yield context.call_activity("echo_payload", "x")
    raise ValueError("boom " + "e" * size)


@app.activity_trigger(input_name="value")
def echo_payload(value: Any) -> Any:
    """Return the input unchanged."""
    return value


@app.activity_trigger(input_name="value")
def text_length(value: str) -> int:
    """The length of a (big) input."""
    return len(value)


@app.activity_trigger(input_name="size")
def make_text(size: int) -> str:
    """A string of ``size`` characters with a recognisable head and tail."""
    body = "0123456789abcdef" * (size // 16 + 1)
    return ("<" + body)[: size - 1] + ">"


@pytest.fixture(params=["local", "queued"])
async def worker(request: pytest.FixtureRequest, backend: AzureBackend) -> AsyncIterator[AzureWorker]:
    """A worker that runs activities in-process at commit time, or only through the work-item queue."""
    async with AzureWorker(app.registry, backend, backend.options, repair_interval=timedelta(seconds=2)) as w:
        if request.param == "queued":
            backend.local_activities = None  # every activity goes through {hub}-workitems
        yield w


@pytest.fixture
def client(backend: AzureBackend) -> DurableOrchestrationClient:
    return DurableOrchestrationClient(backend)


async def blob_names(backend: AzureBackend, instance_id: str) -> list[str]:
    """Blobs of ``instance_id`` in ``{hub}-largemessages``."""
    container = backend.connection.blob_service().get_container_client(f"{backend.hub.lower()}-largemessages")
    return [b.name async for b in container.list_blobs(name_starts_with=f"{instance_id}/")]


async def history_row_keys(backend: AzureBackend, instance_id: str) -> list[str]:
    """Row keys of the instance's partition in ``{Hub}History``."""
    rows = backend.history.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id})
    return [e["RowKey"] async for e in rows]


async def instance_rows(backend: AzureBackend, instance_id: str) -> int:
    """How many ``{Hub}Instances`` rows the instance has (0 or 1)."""
    rows = backend.instances.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id})
    return len([e async for e in rows])


async def assert_within_table_limits(backend: AzureBackend) -> None:
    """Every row of the hub fits Table storage limits (Azurite does not enforce the entity ones)."""
    for table in (backend.history, backend.instances):
        async for entity in table.list_entities():
            total = 0
            for name, value in entity.items():
                if isinstance(value, str):
                    units = len(value.encode("utf-16-le")) // 2
                    assert units <= 32 * KB, f"{entity['RowKey']}.{name}: {units} UTF-16 units"
                    total += 2 * units
                elif isinstance(value, (bytes, bytearray)):
                    assert len(value) <= 64 * KB, f"{entity['RowKey']}.{name}: {len(value)} bytes"
                    total += len(value)
            assert total <= MB, f"{entity['PartitionKey']}/{entity['RowKey']}: {total} bytes"


async def test_big_input_event_status_and_sub_orchestration(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend
) -> None:
    """A 200 KB input, event, custom status, activity result and child input/output round-trip."""
    payload = ("ascii-" * 20_000) + ("é漢" * 20_000)  # 160K chars, 240 KB of UTF-8
    status = "s" * 100 * KB
    iid = await client.start_new("big_round_trip", "big-rt", {"payload": payload, "status": status})
    started = await client.get_status(iid, show_input=True)
    assert started is not None and started.input_ == {"payload": payload, "status": status}
    await client.raise_event(iid, "Big", {"event": payload * 2})
    done = await client.wait_for_completion(iid, timeout=30)
    assert done.runtime_status == Status.Completed, done.output
    assert done.output == {
        "echoed": payload,
        "event": {"event": payload * 2},
        "child": payload[::-1],
        "status": status,
    }
    assert done.custom_status == {"status": status}
    assert (await client.get_status(iid, show_input=True)).input_["payload"] == payload
    history = (await client.get_status(iid, show_history=True, show_history_output=True)).history
    assert history is not None
    completed = [e for e in history if e["EventType"] == 1]  # ExecutionCompleted
    assert len(completed) == 1
    # the child's own record holds the big input and output too
    children = [s for s in await client.get_status_all() if s.name == "big_child"]
    assert len(children) == 1 and children[0].output == payload[::-1]
    assert (await client.get_status(children[0].instance_id, show_input=True)).input_ == payload
    assert await blob_names(backend, iid), "big record payloads should live in blobs"
    await assert_within_table_limits(backend)


async def test_five_megabyte_activity_output(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend
) -> None:
    """A 5 MB activity result reaches the orchestrator and becomes the instance output."""
    size = 5 * MB
    iid = await client.start_new("big_output", "big-5mb", {"size": size})
    done = await client.wait_for_completion(iid, timeout=60)
    assert done.runtime_status == Status.Completed, done.failure
    assert isinstance(done.output, str) and len(done.output) == size
    assert done.output == make_text(size)
    # the history (with the 5 MB TaskCompleted) replays from storage alike
    history = await backend.get_history(iid)
    results = [e for e in history if e["EventType"] == 5]  # TaskCompleted
    assert len(results) == 1 and len(results[0]["Result"]) == size + 2
    await assert_within_table_limits(backend)


@pytest.mark.parametrize("size", [950 * KB, int(1.5 * MB), int(2.95 * MB)])
async def test_activity_output_between_row_and_transaction_limits(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend, size: int
) -> None:
    """One event bigger than an entity (1 MB); a step near the 4 MiB transaction (base64 on the wire)."""
    iid = await client.start_new("big_output", f"mid-{size}", {"size": size, "only_length": True})
    done = await client.wait_for_completion(iid, timeout=60)
    assert done.runtime_status == Status.Completed, done.failure
    assert done.output == size
    await assert_within_table_limits(backend)


@pytest.mark.parametrize(
    ("size", "count", "child"),
    [(200 * KB, 20, 2 * MB), (740 * KB, 4, 10)],
    ids=["20x200KB+2MB-child", "4x740KB"],
)
async def test_big_outbox(
    worker: AzureWorker,
    client: DurableOrchestrationClient,
    backend: AzureBackend,
    size: int,
    count: int,
    child: int,
) -> None:
    """A step scheduling big activity inputs (big history rows and outbox) and a child with a big input."""
    spec = {"size": size, "count": count, "child": child}
    iid = await client.start_new("big_fan_out_inputs", "big-outbox", spec)
    done = await client.wait_for_completion(iid, timeout=60)
    assert done.runtime_status == Status.Completed, done.failure
    assert done.output == {"lengths": [size + n for n in range(count)], "child": child}
    await assert_within_table_limits(backend)


async def test_big_fan_in(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend
) -> None:
    """Four 1 MB results arriving together (a step of about 4 MB) commit and replay."""
    sizes = [MB, MB + 1, MB + 2, MB + 3]
    iid = await client.start_new("big_fan_out", "fan-4mb", sizes)
    done = await client.wait_for_completion(iid, timeout=60)
    assert done.runtime_status == Status.Completed, done.failure
    assert done.output == sizes
    await assert_within_table_limits(backend)


async def test_custom_status_over_property_limit_in_utf16_units(
    worker: AzureWorker, client: DurableOrchestrationClient
) -> None:
    """20K astral characters are 20K code points but 40K UTF-16 units (80 KB): too big for a property."""
    status = "\U0001f600" * 20_000
    iid = await client.start_new("big_round_trip", "astral", {"payload": "p", "status": status})
    await client.raise_event(iid, "Big", "e")
    done = await client.wait_for_completion(iid, timeout=30)
    assert done.runtime_status == Status.Completed, done.failure
    assert done.custom_status == {"status": status}
    assert done.output["status"] == status


async def test_failure_with_huge_message(worker: AzureWorker, client: DurableOrchestrationClient) -> None:
    """An orchestrator failing with a 200 KB exception message is Failed, not stuck."""
    iid = await client.start_new("big_failure", "huge-failure", 200 * KB)
    done = await client.wait_for_completion(iid, timeout=30)
    assert done.runtime_status == Status.Failed
    assert "boom eee" in str(done.output)
    assert done.failure is not None and done.failure["ErrorType"] == "ValueError"
    assert done.failure["ErrorMessage"].startswith("boom eee")
    assert len(done.failure["ErrorMessage"]) == len("boom ") + 200 * KB


async def test_continue_as_new_and_terminate_with_big_payloads(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend
) -> None:
    """Big inputs survive continue-as-new; a 100 KB termination reason becomes the output."""
    text = "c" * 100 * KB
    iid = await client.start_new("big_loop", "loop", {"round": 0, "text": text})
    for _ in range(200):
        status = await client.get_status(iid, show_input=True)
        if status is not None and status.input_ and status.input_["round"] == 3:
            break
        await asyncio.sleep(0.05)
    assert status is not None and status.input_ == {"round": 3, "text": text + "012"}
    await asyncio.sleep(0.2)
    reason = "why " * 25 * KB
    await client.terminate(iid, reason)
    done = await client.wait_for_completion(iid, timeout=30)
    assert done.runtime_status == Status.Terminated
    assert done.output == reason
    await assert_within_table_limits(backend)


async def test_purge_deletes_blobs_and_rows(
    worker: AzureWorker, client: DurableOrchestrationClient, backend: AzureBackend
) -> None:
    """Purging a big instance deletes its blobs, its History partition and its Instances row."""
    payload = "z" * 200 * KB
    iid = await client.start_new("big_round_trip", "purge-me", {"payload": payload, "status": payload})
    other = await client.start_new("big_output", "keep-me", {"size": 4 * MB})
    await client.raise_event(iid, "Big", payload)
    assert (await client.wait_for_completion(iid, timeout=30)).runtime_status == Status.Completed
    assert (await client.wait_for_completion(other, timeout=60)).runtime_status == Status.Completed
    assert await blob_names(backend, iid)
    assert await history_row_keys(backend, iid)
    assert await instance_rows(backend, iid) == 1
    kept_blobs = await blob_names(backend, other)
    kept_rows = await history_row_keys(backend, other)
    assert kept_blobs and kept_rows

    result = await client.purge_instance_history(iid)
    assert result.instances_deleted == 1
    assert await blob_names(backend, iid) == []
    assert await history_row_keys(backend, iid) == []
    assert await instance_rows(backend, iid) == 0
    assert await client.get_status(iid) is None
    # the other instance is untouched
    assert await blob_names(backend, other) == kept_blobs
    assert await history_row_keys(backend, other) == kept_rows
    assert (await client.get_status(other)).output == make_text(4 * MB)
    assert (await client.purge_instance_history(iid)).instances_deleted == 0
