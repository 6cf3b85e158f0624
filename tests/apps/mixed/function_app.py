"""Mixed workload for the many-worker-process checks under the real Python worker.

Sequences, fan-out/fan-in, timers, external events, sub-orchestrations and an
entity, all started over HTTP (``POST /api/start/{name}/{id}`` with the input
as the JSON body), as ``benchmarks/functions_host.py --mixed`` drives them.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import azure.functions as func

import durable_ext as df

app = df.DurableApp(http_auth_level=func.AuthLevel.ANONYMOUS)
TRACE = os.environ.get("MIXED_TRACE_DIR")  # when set: each activity run appends "start end" (ns)


def traced(fn):
    """Log start and end (monotonic ns) of each run to this process's trace file, when tracing."""
    if not TRACE:
        return fn

    def run(value):
        start = time.monotonic_ns()
        try:
            return fn(value)
        finally:
            line = f"{start} {time.monotonic_ns()}\n".encode()
            fd = os.open(os.path.join(TRACE, f"{os.getpid()}.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    run.__name__ = fn.__name__
    return run


@app.route(route="start/{name}/{instance_id}", methods=["POST"])
@app.durable_client_input(client_name="client")
async def start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start orchestrator ``name`` as ``instance_id`` with the JSON body as input."""
    body = req.get_body()
    value = json.loads(body) if body.strip() else None
    iid = await client.start_new(req.route_params["name"], req.route_params["instance_id"], value)
    return client.create_check_status_response(req, iid)


@app.activity_trigger(input_name="value")
@traced
def add_one(value: int) -> int:
    """A sync activity."""
    time.sleep(0.01)
    return value + 1


@app.activity_trigger(input_name="value")
@traced
def square(value: int) -> int:
    """Another sync activity."""
    time.sleep(0.01)
    return value * value


@app.orchestration_trigger(context_name="context")
def sequence(context: df.DurableOrchestrationContext):
    """Three activities in a row."""
    value = context.get_input()
    for _ in range(3):
        value = yield context.call_activity("add_one", value)
    return value


@app.orchestration_trigger(context_name="context")
def fan_out(context: df.DurableOrchestrationContext):
    """Square 0..n-1 in parallel and sum."""
    count = context.get_input()
    results = yield context.task_all([context.call_activity("square", n) for n in range(count)])
    return sum(results)


@app.orchestration_trigger(context_name="context")
def timer_then_activity(context: df.DurableOrchestrationContext):
    """A 1-second durable timer, then an activity."""
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=1))
    return (yield context.call_activity("square", context.get_input()))


@app.orchestration_trigger(context_name="context")
def wait_for_go(context: df.DurableOrchestrationContext):
    """Wait for the ``Go`` event, racing a 5-minute timer."""
    deadline = context.create_timer(context.current_utc_datetime + timedelta(minutes=5))
    go = context.wait_for_external_event("Go")
    winner = yield context.task_any([go, deadline])
    if winner == go:
        deadline.cancel()
        return {"go": go.result}
    return "timed out"


@app.orchestration_trigger(context_name="context")
def parent(context: df.DurableOrchestrationContext):
    """Two sequences as sub-orchestrations."""
    n = context.get_input()
    return (
        yield context.task_all(
            [context.call_sub_orchestrator("sequence", n), context.call_sub_orchestrator("sequence", n * 10)]
        )
    )


@app.orchestration_trigger(context_name="context")
def bump(context: df.DurableOrchestrationContext):
    """Read the ``tally`` entity named in the input, add the amount, return the total right after it.

    (A ``get`` after the ``add`` could see other callers' additions too; the ``add`` answers with
    the total it made, so the callers' answers are distinct and the largest is the final total.)
    """
    args = context.get_input()
    entity = df.EntityId("tally", args["key"])
    yield context.call_entity(entity, "get")
    return (yield context.call_entity(entity, "add", args["amount"]))


@app.entity_trigger(context_name="context")
def tally(context: df.DurableEntityContext) -> None:
    """A counter: ``add`` and ``get``."""
    value = context.get_state(lambda: 0)
    if context.operation_name == "add":
        value += context.get_input()
        context.set_state(value)
    context.set_result(value)
