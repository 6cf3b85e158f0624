"""The chaos soak's function app (``benchmarks/chaos.py`` runs it on worker processes).

Sequences, fan-out/fan-in, timers, an external event racing a timer (the event wins), a timer
racing an event that never comes (the timer wins), sub-orchestrations and a ``counter`` entity.
What each instance gets and must return is in ``chaos_load.py``.

Every run of the ``work`` activity appends ``S key pid time`` when it starts and ``E key pid time``
when it ends to ``activity-runs.log`` beside this file (one ``write`` of one line with
``O_APPEND``, so lines of concurrent processes never interleave), and each process that imports
the app appends ``W pid time path-of-durable_ext``: the soak reads them to count and explain
duplicate runs and to check which code the workers ran. The app also puts the time on the
worker's log lines (``python -m durable_ext.host.worker`` logs without it), so the soak can tell
which process committed each step of an instance when.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import durable_ext as df

app = df.DurableApp()
RUNS = Path(__file__).with_name("activity-runs.log")


def _record(*fields: Any) -> None:
    line = (" ".join(str(f) for f in fields) + "\n").encode()
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


for _handler in logging.getLogger().handlers:
    _handler.setFormatter(logging.Formatter("%(created).6f %(levelname)s:%(name)s:%(message)s"))
_record("W", os.getpid(), f"{time.time():.6f}", Path(df.__file__).resolve().parent)


def _job(context: df.DurableOrchestrationContext, label: str, ms: int) -> dict[str, Any]:
    return {"key": f"{context.instance_id}|{label}", "ms": ms}


@app.activity_trigger(input_name="job")
def work(job: dict[str, Any]) -> str:
    """Log the start, sleep ``job["ms"]`` milliseconds, log the end; return ``ok:{key}``."""
    _record("S", job["key"], os.getpid(), f"{time.time():.6f}")
    time.sleep(job["ms"] / 1000)
    _record("E", job["key"], os.getpid(), f"{time.time():.6f}")
    return f"ok:{job['key']}"


@app.orchestration_trigger(context_name="context")
def sequence(context: df.DurableOrchestrationContext):
    """Three activities in a row."""
    ms = context.get_input()["ms"]
    out = []
    for n in range(3):
        out.append((yield context.call_activity("work", _job(context, f"s{n}", ms))))
    return out


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    """``n`` activities in parallel."""
    args = context.get_input()
    tasks = [context.call_activity("work", _job(context, f"f{n}", args["ms"])) for n in range(args["n"])]
    return (yield context.task_all(tasks))


@app.orchestration_trigger(context_name="context")
def timers(context: df.DurableOrchestrationContext):
    """A durable timer before each activity."""
    args = context.get_input()
    out = []
    for n, seconds in enumerate(args["timers_s"]):
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=seconds))
        out.append((yield context.call_activity("work", _job(context, f"t{n}", args["ms"]))))
    return out


def _race(context: df.DurableOrchestrationContext, event: str):
    args = context.get_input()
    deadline = context.create_timer(context.current_utc_datetime + timedelta(seconds=args["timeout_s"]))
    raised = context.wait_for_external_event(event)
    winner = yield context.task_any([raised, deadline])
    if winner == raised:
        deadline.cancel()
        head: list[Any] = ["event", raised.result]
    else:
        head = ["timer"]
    return [*head, (yield context.call_activity("work", _job(context, "after", args["ms"])))]


@app.orchestration_trigger(context_name="context")
def race_event(context: df.DurableOrchestrationContext):
    """The ``Go`` event (raised by the soak) races a long timer, then one activity."""
    return (yield from _race(context, "Go"))


@app.orchestration_trigger(context_name="context")
def race_timer(context: df.DurableOrchestrationContext):
    """An event nobody raises races a short timer, then one activity."""
    return (yield from _race(context, "Never"))


@app.orchestration_trigger(context_name="context")
def child(context: df.DurableOrchestrationContext):
    """Two activities in a row (a sub-orchestration)."""
    ms = context.get_input()["ms"]
    first = yield context.call_activity("work", _job(context, "a", ms))
    second = yield context.call_activity("work", _job(context, "b", ms))
    return [first, second]


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    """Two sub-orchestrations in parallel (ids ``{id}:c0``, ``{id}:c1``), then one activity."""
    args = context.get_input()
    ids = [f"{context.instance_id}:c{n}" for n in range(2)]
    kids = yield context.task_all([context.call_sub_orchestrator("child", args, i) for i in ids])
    return [*kids, (yield context.call_activity("work", _job(context, "p", args["ms"])))]


@app.orchestration_trigger(context_name="context")
def count(context: df.DurableOrchestrationContext):
    """An activity, a signal ``add`` to a counter, then ask the counter how often it applied it."""
    args = context.get_input()
    pre = yield context.call_activity("work", _job(context, "pre", args["ms"]))
    entity = df.EntityId("counter", args["key"])
    context.signal_entity(entity, "add", {"id": context.instance_id, "amount": args["amount"]})
    times = yield context.call_entity(entity, "times", context.instance_id)
    return [pre, times]


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    """``add {id, amount}``: total += amount, and count the signal under its id; ``times id``."""
    state = context.get_state(lambda: {"total": 0, "seen": {}})
    if context.operation_name == "add":
        signal = context.get_input()
        state["total"] += signal["amount"]
        state["seen"][signal["id"]] = state["seen"].get(signal["id"], 0) + 1
        context.set_state(state)
    elif context.operation_name == "times":
        context.set_result(state["seen"].get(context.get_input(), 0))
