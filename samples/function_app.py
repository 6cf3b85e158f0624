"""Sample function app: the classic Durable Functions patterns.

Run it with ``durable-ext start samples`` (see the README) or drive it in
memory with ``durable_ext.testing.DurableTestEnv``.
"""

from __future__ import annotations

from datetime import timedelta

import azure.functions as func

import durable_ext as df

app = df.DurableApp()


# ------------------------------------------------------------------ HTTP starter


@app.route(route="orchestrators/{functionName}", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@app.durable_client_input(client_name="client")
async def http_start(req: func.HttpRequest, client: df.DurableOrchestrationClient) -> func.HttpResponse:
    """Start the orchestrator named in the route with the JSON body as input; answer with its status URLs."""
    body = req.get_body()
    try:
        value = req.get_json() if body.strip() else None
    except ValueError:
        return func.HttpResponse("the request body must be JSON", status_code=400)
    name = req.route_params["functionName"]
    if app.registry.find("orchestrator", name) is None:
        return func.HttpResponse(f"no orchestrator named {name!r}", status_code=404)
    instance_id = await client.start_new(name, None, value)
    return client.create_check_status_response(req, instance_id)


CITIES = ["Tokyo", "Seattle", "London"]


# --------------------------------------------------------------- function chaining


@app.orchestration_trigger(context_name="context")
def hello_sequence(context: df.DurableOrchestrationContext):
    """Call ``say_hello`` for three cities in order."""
    results = []
    for city in CITIES:
        results.append((yield context.call_activity("say_hello", city)))
    return results


@app.activity_trigger(input_name="city")
def say_hello(city: str) -> str:
    """Greet one city."""
    return f"Hello {city}!"


# ------------------------------------------------------------------ fan-out/fan-in


@app.orchestration_trigger(context_name="context")
def fan_out_fan_in(context: df.DurableOrchestrationContext):
    """Square 1..N in parallel (input: N, default 10) and sum the squares."""
    count = context.get_input() or 10
    tasks = [context.call_activity("square", n) for n in range(1, count + 1)]
    squares = yield context.task_all(tasks)
    return sum(squares)


@app.activity_trigger(input_name="n")
async def square(n: int) -> int:
    """An async activity: square a number."""
    return n * n


# ------------------------------------------------------------- human interaction


@app.orchestration_trigger(context_name="context")
def approval_workflow(context: df.DurableOrchestrationContext):
    """Wait for the ``Approval`` event, racing a timer of ``timeout_s`` seconds."""
    timeout_s = (context.get_input() or {}).get("timeout_s", 3600)
    deadline = context.current_utc_datetime + timedelta(seconds=timeout_s)
    timeout = context.create_timer(deadline)
    approval = context.wait_for_external_event("Approval")
    context.set_custom_status("waiting for approval")
    winner = yield context.task_any([approval, timeout])
    if winner == approval:
        timeout.cancel()
        return f"approved:{approval.result}"
    return "timeout"


# ----------------------------------------------------------------------- monitor


@app.orchestration_trigger(context_name="context")
def monitor(context: df.DurableOrchestrationContext):
    """Poll ``check_job`` every ``interval_s`` until done, one execution per check.

    Input: ``{"job": str, "interval_s": int, "max_checks": int, "checks": int}``.
    """
    state = context.get_input() or {}
    checks = state.get("checks", 0) + 1
    status = yield context.call_activity("check_job", {"job": state.get("job", "job"), "checks": checks})
    context.set_custom_status({"checks": checks, "status": status})
    if status == "done" or checks >= state.get("max_checks", 10):
        return {"checks": checks, "status": status}
    yield context.create_timer(context.current_utc_datetime + timedelta(seconds=state.get("interval_s", 5)))
    context.continue_as_new({**state, "checks": checks})
    return None


@app.activity_trigger(input_name="probe")
def check_job(probe: dict) -> str:
    """Pretend job status: done on the third check."""
    return "done" if probe["checks"] >= 3 else "running"


# ------------------------------------------------------------------------ retries


@app.orchestration_trigger(context_name="context")
def retry_demo(context: df.DurableOrchestrationContext):
    """Call an activity that fails twice before it succeeds, with retries."""
    options = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=5)
    key = context.instance_id
    return (yield context.call_activity_with_retry("flaky", options, key))


_FLAKY_CALLS: dict[str, int] = {}


@app.activity_trigger(input_name="key")
def flaky(key: str) -> str:
    """Fail on the first two calls for ``key``, then succeed."""
    _FLAKY_CALLS[key] = _FLAKY_CALLS.get(key, 0) + 1
    if _FLAKY_CALLS[key] <= 2:
        raise RuntimeError(f"transient failure #{_FLAKY_CALLS[key]}")
    return f"succeeded after {_FLAKY_CALLS[key]} attempts"


# ------------------------------------------------------------- sub-orchestrations


@app.orchestration_trigger(context_name="context")
def parent_child(context: df.DurableOrchestrationContext):
    """Run ``hello_sequence`` as two sub-orchestrations in parallel."""
    children = [context.call_sub_orchestrator("hello_sequence") for _ in range(2)]
    results = yield context.task_all(children)
    return [greeting for result in results for greeting in result]


# ------------------------------------------------------------------------ entities


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext) -> None:
    """A counter: ``add`` (input: a number), ``reset`` and ``get`` (returns the value)."""
    value = context.get_state(lambda: 0)
    operation = context.operation_name
    if operation == "add":
        amount = context.get_input()
        if not isinstance(amount, (int, float)) or isinstance(amount, bool):
            raise ValueError(f"add takes a number, got {amount!r}")
        value += amount
    elif operation == "reset":
        value = 0
    elif operation != "get":
        raise ValueError(f"counter has no operation {operation!r} (add, reset, get)")
    context.set_state(value)
    context.set_result(value)


class Account:
    """A bank account, as a class-based entity: public methods are its operations."""

    def __init__(self) -> None:
        self.balance = 0

    def deposit(self, amount: int) -> int:
        """Add ``amount``; returns the new balance."""
        if amount <= 0:
            raise ValueError("a deposit must be positive")
        self.balance += amount
        return self.balance

    def withdraw(self, amount: int) -> int:
        """Take ``amount`` out; refuses to go below zero."""
        if amount <= 0 or amount > self.balance:
            raise ValueError(f"cannot withdraw {amount} from a balance of {self.balance}")
        self.balance -= amount
        return self.balance

    def get(self) -> int:
        """The balance."""
        return self.balance


app.entity_trigger(context_name="context", entity_name="account")(Account)


@app.orchestration_trigger(context_name="context")
def transfer(context: df.DurableOrchestrationContext):
    """Move ``amount`` from account ``from`` to account ``to`` inside a critical section.

    Input ``{"from": "alice", "to": "bob", "amount": 30}``. While both accounts
    are locked no other orchestration can touch them, so the balance checked
    is the balance debited; the balances returned are those right after the move.
    """
    order = context.get_input()
    source = df.EntityId("account", order["from"])
    target = df.EntityId("account", order["to"])
    amount = order["amount"]
    with (yield context.lock([source, target])):
        balance = yield context.call_entity(source, "get")
        if balance < amount:
            return {"transferred": False, "reason": f"balance {balance} is less than {amount}"}
        left = yield context.call_entity(source, "withdraw", amount)
        now = yield context.call_entity(target, "deposit", amount)
    return {"transferred": True, "balances": {order["from"]: left, order["to"]: now}}
