"""The function app of the crash and timer tests (copied as ``function_app.py`` for worker processes).

Every activity run appends one line ``key pid`` to the log file named in its
input, so a test can count how often each activity really ran.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import durable_ext as df

app = df.DurableApp()


def _job(args: dict[str, Any], key: str) -> dict[str, Any]:
    sleep = args.get("sleep_first", 0) if key.endswith(":a") else args.get("sleep", 0)
    return {"log": args["log"], "key": key, "sleep": sleep}


@app.orchestration_trigger(context_name="context")
def crash_flow(context: df.DurableOrchestrationContext):
    """Two activities in sequence, a fan-out of three, a timer, a sub-orchestration, one more activity.

    Input: ``{"log": path, "tag": str, "timer_s": float, "sleep": float, "sleep_first": float}``
    (``sleep_first``: how long the first activity sleeps; ``sleep``: every other one).
    """
    args = context.get_input()
    tag = args["tag"]
    out = []
    for step in ("a", "b"):
        out.append((yield context.call_activity("record", _job(args, f"{tag}:{step}"))))
    fan = [context.call_activity("record", _job(args, f"{tag}:f{i}")) for i in range(3)]
    out.extend((yield context.task_all(fan)))
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=args.get("timer_s", 1)))
    out.append((yield context.call_sub_orchestrator("crash_child", {**args, "tag": f"{tag}:c"})))
    out.append((yield context.call_activity("record", _job(args, f"{tag}:z"))))
    return out


@app.orchestration_trigger(context_name="context")
def crash_child(context: df.DurableOrchestrationContext):
    """Two activities in sequence."""
    args = context.get_input()
    first = yield context.call_activity("record", _job(args, f"{args['tag']}:1"))
    second = yield context.call_activity("record", _job(args, f"{args['tag']}:2"))
    return [first, second]


def expected_output(tag: str) -> list[Any]:
    """What ``crash_flow`` returns for ``tag``."""
    return [
        *(f"ok:{tag}:{k}" for k in ("a", "b", "f0", "f1", "f2")),
        [f"ok:{tag}:c:1", f"ok:{tag}:c:2"],
        f"ok:{tag}:z",
    ]


def expected_keys(tag: str) -> list[str]:
    """The activity keys one ``crash_flow`` instance runs (each at least once)."""
    return [f"{tag}:{k}" for k in ("a", "b", "f0", "f1", "f2", "c:1", "c:2", "z")]


@app.activity_trigger(input_name="job")
def record(job: dict) -> str:
    """Log this run, sleep ``job["sleep"]`` seconds, return ``ok:{key}``."""
    with open(job["log"], "a", encoding="utf-8") as out:
        out.write(f"{job['key']} {os.getpid()}\n")
    if job.get("sleep"):
        time.sleep(job["sleep"])
    return f"ok:{job['key']}"


@app.orchestration_trigger(context_name="context")
def wait_event(context: df.DurableOrchestrationContext):
    """Return the data of the first ``go`` event."""
    return (yield context.wait_for_external_event("go"))


@app.orchestration_trigger(context_name="context")
def timer_flow(context: df.DurableOrchestrationContext):
    """Wait for a timer ``seconds`` from now (may be negative: already due), then report the times.

    Returns the fire time and the orchestration time at which the timer completed.
    """
    args = context.get_input()
    fire_at = context.current_utc_datetime + timedelta(seconds=args["seconds"])
    yield context.create_timer(fire_at)
    return {"fire_at": fire_at.isoformat(), "woke_at": context.current_utc_datetime.isoformat()}
