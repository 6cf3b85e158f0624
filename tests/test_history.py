"""History events: DTFx codes, protocol field names, JSON payloads, timestamps, SDK compatibility."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Generator
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from azure.durable_functions import Orchestrator
from azure.durable_functions.models.history import HistoryEvent, HistoryEventType
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_ext.core import history as h
from durable_ext.core.history import Event, EventType, format_timestamp, parse_timestamp
from durable_ext.core.registry import Registry
from durable_ext.testing import DurableTestEnv

#: Every field name the Durable Task Framework uses on the history events durable_ext writes.
DTFX_FIELDS = frozenset(
    {
        "EventType",
        "EventId",
        "Timestamp",
        "IsPlayed",
        "Name",
        "Input",
        "Result",
        "Version",
        "OrchestrationInstance",
        "ParentInstance",
        "ScheduledStartTime",
        "Tags",
        "Correlation",
        "TaskScheduledId",
        "TimerId",
        "FireAt",
        "Reason",
        "Details",
        "FailureDetails",
        "InstanceId",
        "OrchestrationStatus",
    }
)
BASE_FIELDS = {"EventType", "EventId", "Timestamp", "IsPlayed"}
STAMP = "2024-05-06T07:08:09.123456Z"


def _camel_to_upper_snake(name: str) -> str:
    out = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(name))
    return out.upper()


# ------------------------------------------------------------------ event types


def test_event_type_codes_match_dtfx_and_official_sdk() -> None:
    sdk = {m.name: m.value for m in HistoryEventType}
    ours = {_camel_to_upper_snake(m.name): m.value for m in EventType}
    assert ours == sdk
    assert len(EventType) == 21
    assert EventType.ExecutionStarted == 0
    assert EventType.TaskScheduled == 4
    assert EventType.TimerFired == 11
    assert EventType.OrchestratorStarted == 12
    assert EventType.EventRaised == 15
    assert EventType.ExecutionResumed == 20


def test_event_type_values_are_plain_ints_in_event_dicts() -> None:
    event = h.task_scheduled(STAMP, 0, "act", '"x"')
    assert type(event["EventType"]) is int
    assert orjson.loads(orjson.dumps(event))["EventType"] == 4


def test_event_name_and_describe() -> None:
    assert h.event_name(h.timer_fired(STAMP, 3, STAMP)) == "TimerFired"
    assert h.event_name({"EventType": 99}) == "EventType 99"
    assert h.event_name({}) == "EventType None"
    text = h.describe(h.task_scheduled(STAMP, 7, "say_hello", None))
    assert text == "TaskScheduled #7 'say_hello'"
    assert h.describe(h.timer_created(STAMP, 2, STAMP)) == f"TimerCreated #2 at {STAMP}"
    assert h.describe(h.orchestrator_started(STAMP)) == "OrchestratorStarted"


# --------------------------------------------------------------- constructors


def _check_base(event: Event, event_type: EventType, event_id: int = -1) -> None:
    assert set(event) >= BASE_FIELDS
    assert set(event) <= DTFX_FIELDS
    assert event["EventType"] == int(event_type)
    assert event["EventId"] == event_id
    assert event["Timestamp"] == STAMP
    assert event["IsPlayed"] is False


def test_execution_started_fields() -> None:
    parent = {
        "Name": "parent",
        "OrchestrationInstance": {"InstanceId": "p", "ExecutionId": "pe"},
        "TaskScheduleId": 3,
    }
    event = h.execution_started(STAMP, "orch", '{"a":1}', "iid", "eid", parent=parent, version="1.0")
    _check_base(event, EventType.ExecutionStarted)
    assert event["Name"] == "orch"
    assert event["Input"] == '{"a":1}'
    assert event["Version"] == "1.0"
    assert event["OrchestrationInstance"] == {"InstanceId": "iid", "ExecutionId": "eid"}
    assert event["ParentInstance"] == parent
    bare = h.execution_started(STAMP, "orch", None, "iid", "eid")
    assert "Input" not in bare and "ParentInstance" not in bare
    assert bare["Version"] == ""  # DTFx always writes Version; the official SDK reads it


def test_scheduling_event_fields() -> None:
    scheduled = h.task_scheduled(STAMP, 4, "act", "[1,2]")
    _check_base(scheduled, EventType.TaskScheduled, 4)
    assert (scheduled["Name"], scheduled["Input"]) == ("act", "[1,2]")

    timer = h.timer_created(STAMP, 5, "2024-05-06T08:00:00.000000Z")
    _check_base(timer, EventType.TimerCreated, 5)
    assert timer["FireAt"] == "2024-05-06T08:00:00.000000Z"

    sub = h.sub_orchestration_created(STAMP, 6, "child", "iid:0006", '"in"')
    _check_base(sub, EventType.SubOrchestrationInstanceCreated, 6)
    assert (sub["Name"], sub["InstanceId"], sub["Input"]) == ("child", "iid:0006", '"in"')

    sent = h.event_sent(STAMP, 7, "other", "ping", "true")
    _check_base(sent, EventType.EventSent, 7)
    assert (sent["InstanceId"], sent["Name"], sent["Input"]) == ("other", "ping", "true")


def test_completion_event_fields() -> None:
    done = h.task_completed(STAMP, 4, '"ok"')
    _check_base(done, EventType.TaskCompleted)
    assert (done["TaskScheduledId"], done["Result"]) == (4, '"ok"')

    failure = h.failure_details("ValueError", "bad input", "Traceback ...")
    assert failure == {"ErrorType": "ValueError", "ErrorMessage": "bad input", "StackTrace": "Traceback ..."}
    failed = h.task_failed(STAMP, 4, failure)
    _check_base(failed, EventType.TaskFailed)
    assert failed["TaskScheduledId"] == 4
    assert failed["Reason"] == "bad input"
    assert failed["Details"] == "Traceback ..."
    assert failed["FailureDetails"] == failure

    sub_done = h.sub_orchestration_completed(STAMP, 6, "[1]")
    _check_base(sub_done, EventType.SubOrchestrationInstanceCompleted)
    assert (sub_done["TaskScheduledId"], sub_done["Result"]) == (6, "[1]")

    sub_failed = h.sub_orchestration_failed(STAMP, 6, failure)
    _check_base(sub_failed, EventType.SubOrchestrationInstanceFailed)
    assert (sub_failed["Reason"], sub_failed["Details"]) == ("bad input", "Traceback ...")

    fired = h.timer_fired(STAMP, 5, "2024-05-06T08:00:00.000000Z")
    _check_base(fired, EventType.TimerFired)
    assert (fired["TimerId"], fired["FireAt"]) == (5, "2024-05-06T08:00:00.000000Z")

    raised = h.event_raised(STAMP, "Approval", '{"by":"alice"}')
    _check_base(raised, EventType.EventRaised)
    assert (raised["Name"], raised["Input"]) == ("Approval", '{"by":"alice"}')


def test_lifecycle_event_fields() -> None:
    for event, kind in [
        (h.orchestrator_started(STAMP), EventType.OrchestratorStarted),
        (h.orchestrator_completed(STAMP), EventType.OrchestratorCompleted),
    ]:
        _check_base(event, kind)
        assert set(event) == BASE_FIELDS

    completed = h.execution_completed(STAMP, "Completed", '"out"')
    _check_base(completed, EventType.ExecutionCompleted)
    assert (completed["OrchestrationStatus"], completed["Result"]) == ("Completed", '"out"')
    assert "FailureDetails" not in completed

    failure = h.failure_details("E", "m", None)
    failed = h.execution_completed(STAMP, "Failed", '"msg"', failure)
    assert failed["OrchestrationStatus"] == "Failed"
    assert failed["FailureDetails"] == failure

    terminated = h.execution_terminated(STAMP, '"stop"')
    _check_base(terminated, EventType.ExecutionTerminated)
    assert terminated["Input"] == '"stop"'

    suspended = h.execution_suspended(STAMP, "pause")
    _check_base(suspended, EventType.ExecutionSuspended)
    assert suspended["Reason"] == "pause"
    resumed = h.execution_resumed(STAMP, "go")
    _check_base(resumed, EventType.ExecutionResumed)
    assert resumed["Reason"] == "go"


def test_none_fields_are_omitted_not_null() -> None:
    event = h.task_scheduled(STAMP, 0, "act", None)
    assert "Input" not in event
    assert h.task_completed(STAMP, 0, None) == {
        "EventType": 5,
        "EventId": -1,
        "Timestamp": STAMP,
        "IsPlayed": False,
        "TaskScheduledId": 0,
    }


# ------------------------------------------------------------------ timestamps


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T10:20:30Z", datetime(2024, 3, 1, 10, 20, 30, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30z", datetime(2024, 3, 1, 10, 20, 30, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.123456Z", datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.1234567Z", datetime(2024, 3, 1, 10, 20, 30, 123456, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.9999999Z", datetime(2024, 3, 1, 10, 20, 30, 999999, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.5Z", datetime(2024, 3, 1, 10, 20, 30, 500000, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.120Z", datetime(2024, 3, 1, 10, 20, 30, 120000, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30", datetime(2024, 3, 1, 10, 20, 30, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30+00:00", datetime(2024, 3, 1, 10, 20, 30, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.5+02:00", datetime(2024, 3, 1, 8, 20, 30, 500000, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.1234567-07:30", datetime(2024, 3, 1, 17, 50, 30, 123456, tzinfo=timezone.utc)),
        ("2024-03-01T10:20:30.1234567+0200", datetime(2024, 3, 1, 8, 20, 30, 123456, tzinfo=timezone.utc)),
        ("2024-03-01T00:30:00-0100", datetime(2024, 3, 1, 1, 30, 0, tzinfo=timezone.utc)),
        ("2023-12-31T23:59:59.9999999-01:00", datetime(2024, 1, 1, 0, 59, 59, 999999, tzinfo=timezone.utc)),
    ],
)
def test_parse_timestamp_formats(text: str, expected: datetime) -> None:
    value = parse_timestamp(text)
    assert value == expected
    assert value.utcoffset() == timedelta(0)


def test_format_timestamp_shape() -> None:
    aware = datetime(2024, 3, 1, 10, 20, 30, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(aware) == "2024-03-01T08:20:30.000000Z"
    naive = datetime(2024, 3, 1, 10, 20, 30, 7)
    assert format_timestamp(naive) == "2024-03-01T10:20:30.000007Z"


_aware = st.datetimes(
    min_value=datetime(1900, 1, 2),
    max_value=datetime(9998, 12, 30),
    timezones=st.just(timezone.utc),
)
_offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@settings(max_examples=200, deadline=None)
@given(value=_aware)
def test_timestamp_round_trip(value: datetime) -> None:
    text = format_timestamp(value)
    assert text.endswith("Z")
    assert parse_timestamp(text) == value
    assert format_timestamp(parse_timestamp(text)) == text


@settings(max_examples=200, deadline=None)
@given(value=_aware, tick=st.integers(min_value=0, max_value=9))
def test_dotnet_seven_digit_timestamps(value: datetime, tick: int) -> None:
    text = value.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{tick}Z"
    assert parse_timestamp(text) == value
    assert format_timestamp(parse_timestamp(text)) == format_timestamp(value)


@settings(max_examples=200, deadline=None)
@given(value=_aware, tz=_offsets, seven=st.booleans())
def test_timestamps_with_offsets(value: datetime, tz: timezone, seven: bool) -> None:
    local = value.astimezone(tz)
    text = local.isoformat(timespec="microseconds")
    if seven:
        text = text[:-6] + "0" + text[-6:]  # a seventh fractional digit before the offset
    parsed = parse_timestamp(text)
    assert parsed == value
    assert parsed.utcoffset() == timedelta(0)
    assert parse_timestamp(format_timestamp(parsed)) == value


# --------------------------------------------------- histories from a real run


def hello(name: str) -> str:
    """Greet someone."""
    return f"Hello {name}"


def explode(message: str) -> None:
    """Always fail."""
    raise ValueError(message)


def child(context: Any) -> Generator[Any, Any, Any]:
    """Greet the input."""
    return (yield context.call_activity("hello", context.get_input()))


def tour(context: Any) -> Generator[Any, Any, Any]:
    """Touch every kind of scheduling and completion event."""
    first_uuid = context.new_uuid()
    one = yield context.call_activity("hello", "one")
    yield context.create_timer(context.current_utc_datetime + timedelta(minutes=5))
    second_uuid = context.new_uuid()
    event = yield context.wait_for_external_event("go")
    many = yield context.task_all([context.call_activity("hello", str(i)) for i in range(3)])
    kid = yield context.call_sub_orchestrator("child", "kid")
    try:
        yield context.call_activity("explode", "boom")
        caught = None
    except Exception as exc:
        caught = type(exc).__name__
    context.set_custom_status({"phase": "done"})
    return [first_uuid, one, second_uuid, event, many, kid, caught is not None, context.instance_id]


def failing_child(context: Any) -> Generator[Any, Any, Any]:
    """Fail after one activity."""
    yield context.call_activity("explode", "child failed")
    return None


def troubled(context: Any) -> Generator[Any, Any, Any]:
    """Catch a failed sub-orchestration, then wait forever (to be suspended and terminated)."""
    try:
        yield context.call_sub_orchestrator("failing_child", None, "troubled-child")
    except Exception as exc:
        context.set_custom_status(type(exc).__name__)
    return (yield context.wait_for_external_event("never"))


def _registry() -> Registry:
    registry = Registry()
    registry.add("activity", hello, "hello")
    registry.add("activity", explode, "explode")
    registry.add("orchestrator", child, "child")
    registry.add("orchestrator", tour, "tour")
    registry.add("orchestrator", failing_child, "failing_child")
    registry.add("orchestrator", troubled, "troubled")
    return registry


async def _run_troubled() -> list[Event]:
    async with DurableTestEnv(_registry()) as env:
        iid = await env.start("troubled", None, instance_id="troubled")
        await env.run_until_idle()
        await env.client.suspend(iid, "pause")
        await env.run_until_idle()
        await env.client.resume(iid, "go on")
        await env.run_until_idle()
        await env.client.terminate(iid, "enough")
        status = await env.wait_for_completion(iid)
        assert status.output == "enough"
        return await env.history(iid) + await env.history("troubled-child")


def test_failure_and_lifecycle_events_use_protocol_fields() -> None:
    """Failed sub-orchestrations, failed executions, suspend, resume and terminate."""
    events = asyncio.run(_run_troubled())
    kinds = [EventType(e["EventType"]) for e in events]
    for kind in (
        EventType.SubOrchestrationInstanceFailed,
        EventType.ExecutionSuspended,
        EventType.ExecutionResumed,
        EventType.ExecutionTerminated,
        EventType.TaskFailed,
    ):
        assert kind in kinds, kind
    for event in events:
        assert set(event) >= BASE_FIELDS, event
        assert set(event) <= DTFX_FIELDS, event
        loaded = HistoryEvent(**json.loads(json.dumps(event)))
        assert loaded.event_type == event["EventType"]
        assert loaded.timestamp == parse_timestamp(event["Timestamp"])
    sub_failed = events[kinds.index(EventType.SubOrchestrationInstanceFailed)]
    assert "child failed" in sub_failed["Reason"]
    assert isinstance(sub_failed["Details"], str)
    assert sub_failed["TaskScheduledId"] == 0
    assert events[kinds.index(EventType.ExecutionSuspended)]["Reason"] == "pause"
    assert events[kinds.index(EventType.ExecutionResumed)]["Reason"] == "go on"
    assert events[kinds.index(EventType.ExecutionTerminated)]["Input"] == '"enough"'
    outcomes = [e["OrchestrationStatus"] for e in events if e["EventType"] == EventType.ExecutionCompleted]
    assert sorted(outcomes) == ["Failed", "Terminated"]
    failed = next(e for e in events if e.get("OrchestrationStatus") == "Failed")
    assert failed["FailureDetails"]["ErrorType"] == "TaskFailedError"
    assert isinstance(orjson.loads(failed["Result"]), str)


async def _run_tour() -> tuple[Any, list[Event], list[Event]]:
    async with DurableTestEnv(_registry()) as env:
        iid = await env.start("tour", {"n": 1}, instance_id="tour-1")
        await env.run_until_idle()
        await env.client.raise_event(iid, "go", {"k": [1, 2]})
        status = await env.wait_for_completion(iid)
        assert status.failure is None, status.output
        return status.output, await env.history(iid), await env.history("tour-1:0005")


@pytest.fixture(scope="module")
def tour_run() -> tuple[Any, list[Event], list[Event]]:
    return asyncio.run(_run_tour())


def test_recorded_history_uses_protocol_fields(tour_run: tuple[Any, list[Event], list[Event]]) -> None:
    _output, history, child_history = tour_run
    for event in history + child_history:
        assert set(event) >= BASE_FIELDS, event
        assert set(event) <= DTFX_FIELDS, event
        assert isinstance(event["EventType"], int)
        assert isinstance(event["EventId"], int)
        assert isinstance(event["IsPlayed"], bool)
    kinds = {EventType(e["EventType"]) for e in history}
    assert {
        EventType.ExecutionStarted,
        EventType.OrchestratorStarted,
        EventType.OrchestratorCompleted,
        EventType.TaskScheduled,
        EventType.TaskCompleted,
        EventType.TaskFailed,
        EventType.TimerCreated,
        EventType.TimerFired,
        EventType.EventRaised,
        EventType.SubOrchestrationInstanceCreated,
        EventType.SubOrchestrationInstanceCompleted,
        EventType.ExecutionCompleted,
    } <= kinds


def test_recorded_payloads_are_json_text(tour_run: tuple[Any, list[Event], list[Event]]) -> None:
    output, history, _child = tour_run
    payloads = [(e, key) for e in history for key in ("Input", "Result") if key in e]
    assert payloads
    for event, key in payloads:
        assert isinstance(event[key], str), event
        orjson.loads(event[key])
    by_type = {EventType(e["EventType"]): e for e in history}
    assert orjson.loads(by_type[EventType.ExecutionStarted]["Input"]) == {"n": 1}
    assert orjson.loads(by_type[EventType.EventRaised]["Input"]) == {"k": [1, 2]}
    assert orjson.loads(by_type[EventType.ExecutionCompleted]["Result"]) == output
    scheduled = [e for e in history if e["EventType"] == EventType.TaskScheduled]
    assert scheduled[0]["Input"] == '"one"'
    completed = [e for e in history if e["EventType"] == EventType.TaskCompleted]
    assert completed[0]["Result"] == '"Hello one"'
    failed = next(e for e in history if e["EventType"] == EventType.TaskFailed)
    assert failed["Reason"] == "boom"
    assert "ValueError" in failed["Details"]
    assert failed["FailureDetails"]["ErrorType"] == "ValueError"


def test_recorded_timestamps_parse_and_round_trip(tour_run: tuple[Any, list[Event], list[Event]]) -> None:
    _output, history, _child = tour_run
    for event in history:
        for key in ("Timestamp", "FireAt"):
            if key in event:
                text = event[key]
                assert format_timestamp(parse_timestamp(text)) == text
    created = next(e for e in history if e["EventType"] == EventType.TimerCreated)
    fired = next(e for e in history if e["EventType"] == EventType.TimerFired)
    assert fired["TimerId"] == created["EventId"]
    assert fired["FireAt"] == created["FireAt"]
    episode_start = max(
        parse_timestamp(e["Timestamp"])
        for e in history[: history.index(created)]
        if e["EventType"] == EventType.OrchestratorStarted
    )
    assert parse_timestamp(created["FireAt"]) == episode_start + timedelta(minutes=5)


def test_sub_orchestration_links(tour_run: tuple[Any, list[Event], list[Event]]) -> None:
    _output, history, child_history = tour_run
    created = next(e for e in history if e["EventType"] == EventType.SubOrchestrationInstanceCreated)
    assert created["InstanceId"] == "tour-1:0005"
    started = next(e for e in child_history if e["EventType"] == EventType.ExecutionStarted)
    assert started["OrchestrationInstance"]["InstanceId"] == "tour-1:0005"
    parent = started["ParentInstance"]
    assert parent["TaskScheduleId"] == created["EventId"]
    assert parent["OrchestrationInstance"]["InstanceId"] == "tour-1"
    assert parent["Name"] == "tour"
    done = next(e for e in history if e["EventType"] == EventType.SubOrchestrationInstanceCompleted)
    assert done["TaskScheduledId"] == created["EventId"]
    assert orjson.loads(done["Result"]) == "Hello kid"


def test_official_sdk_history_event_loads_every_event(
    tour_run: tuple[Any, list[Event], list[Event]],
) -> None:
    _output, history, child_history = tour_run
    for event in history + child_history:
        loaded = HistoryEvent(**json.loads(json.dumps(event)))
        assert loaded.event_type == event["EventType"]
        assert HistoryEventType(loaded.event_type).value == event["EventType"]
        assert loaded.event_id == event["EventId"]
        assert loaded.is_played is False
        assert loaded.timestamp == parse_timestamp(event["Timestamp"])
        assert loaded.Name == event.get("Name")
        assert loaded.Input == event.get("Input")


def test_official_sdk_replays_recorded_history_to_same_output(
    tour_run: tuple[Any, list[Event], list[Event]],
) -> None:
    """The official SDK's orchestrator replays our history: same output, same uuids, same actions."""
    output, history, _child = tour_run
    body = json.dumps(
        {
            "history": history,
            "instanceId": "tour-1",
            "isReplaying": True,
            "parentInstanceId": None,
            "input": None,
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK warns about its own bookkeeping
        state = json.loads(Orchestrator.create(tour)(body))
    assert state["isDone"] is True
    assert state["output"] == output
    assert state["customStatus"] == {"phase": "done"}
    sdk_actions = [
        (a["actionType"], a.get("functionName"), a.get("input"))
        for group in state["actions"]
        for a in group
        if a["actionType"] != 6  # WaitForExternalEvent takes no sequence number
    ]
    codes = {
        EventType.TaskScheduled: 0,
        EventType.SubOrchestrationInstanceCreated: 2,
        EventType.TimerCreated: 5,
    }
    ours = [
        (codes[EventType(e["EventType"])], e.get("Name"), e.get("Input"))
        for e in sorted(history, key=lambda e: e["EventId"])
        if e["EventType"] in codes
    ]
    assert sdk_actions == ours
