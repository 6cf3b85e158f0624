"""The function app of the Azure entity tests (copied as ``function_app.py`` for worker processes).

Entities: ``counter`` (a number), ``journal`` (sender -> list of sequence
numbers, mirrored to a ``mirror`` journal by entity-to-entity signals) and
the class-based ``account``. Orchestrators send ordered signals and calls to
them and move money between accounts inside critical sections. Activities
and journal operations that get a ``log`` path append one line per run, so a
test can count re-runs after a crash.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import durable_ext as df

app = df.DurableApp()


def _log(path: str | None, line: str) -> None:
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{line} {os.getpid()}\n")


# ------------------------------------------------------------------ entities


@app.entity_trigger(context_name="context")
def counter(context: df.DurableEntityContext):
    """A number: ``add``, ``get``, ``add_then_fail`` (changes the state, then raises), ``delete``."""
    value = context.get_state(lambda: 0)
    op = context.operation_name
    if op == "add":
        value += context.get_input()
    elif op == "add_then_fail":
        context.set_state(value + context.get_input())
        raise ValueError(f"refused to add {context.get_input()}")
    elif op == "delete":
        context.destruct_on_exit()
        return
    elif op != "get":
        raise ValueError(f"no operation {op!r}")
    context.set_state(value)
    context.set_result(value)


@app.entity_trigger(context_name="context")
def journal(context: df.DurableEntityContext):
    """``append`` {"s": sender, "i": n, "mirror": key?, "log": path?}: ``state[s].append(n)``.

    Returns how many numbers that sender has now; with ``mirror``, signals the
    same append to ``mirror/<key>`` (an entity-to-entity message).
    """
    state: dict[str, list[int]] = context.get_state(dict)
    op = context.operation_name
    if op == "append":
        item = context.get_input()
        _log(item.get("log"), f"{context.entity_id.key}:{item['s']}:{item['i']}")
        state.setdefault(item["s"], []).append(item["i"])
        if item.get("mirror"):
            forward = {"s": item["s"], "i": item["i"]}
            context.signal_entity(df.EntityId("mirror", item["mirror"]), "append", forward)
        context.set_state(state)
        context.set_result(len(state[item["s"]]))
    elif op == "get":
        context.set_result(state)
    else:
        raise ValueError(f"no operation {op!r}")


@app.entity_trigger(context_name="context")
def mirror(context: df.DurableEntityContext):
    """A journal that only receives entity-to-entity signals."""
    state: dict[str, list[int]] = context.get_state(dict)
    item = context.get_input()
    state.setdefault(item["s"], []).append(item["i"])
    context.set_state(state)


class Account:
    """A class-based entity: the instance is the state. ``withdraw`` does not check the balance,
    so only the critical sections keep balances from going negative. With ``ENTITY_APP_TRACE``
    set, deposits and withdrawals log the process that ran them."""

    def __init__(self) -> None:
        self.balance = 0

    def deposit(self, amount: int) -> int:
        _log(os.environ.get("ENTITY_APP_TRACE"), "deposit")
        self.balance += amount
        return self.balance

    def withdraw(self, amount: int) -> int:
        _log(os.environ.get("ENTITY_APP_TRACE"), "withdraw")
        self.balance -= amount
        return self.balance

    def get(self) -> int:
        return self.balance


app.entity_trigger(context_name="context", entity_name="account")(Account)


# ------------------------------------------------------------- orchestrators


@app.activity_trigger(input_name="job")
def tick(job: dict) -> int:
    """Log this run; return ``job["n"]``."""
    _log(job.get("log"), f"tick:{job['key']}")
    return job["n"]


@app.orchestration_trigger(context_name="context")
def caller(context: df.DurableOrchestrationContext):
    """Add to a counter by a call, try ``add_then_fail``, read it back, call an unknown entity."""
    target = df.EntityId("counter", context.get_input())
    first = yield context.call_entity(target, "add", 5)
    try:
        yield context.call_entity(target, "add_then_fail", 100)
        failed = None
    except df.EntityOperationFailedError as exc:
        failed = str(exc)
    after = yield context.call_entity(target, "get")
    try:
        yield context.call_entity(df.EntityId("nosuch", "x"), "get")
        unknown = None
    except df.EntityOperationFailedError as exc:
        unknown = str(exc)
    return {"first": first, "failed": failed, "after": after, "unknown": unknown}


@app.orchestration_trigger(context_name="context")
def schedule_signal(context: df.DurableOrchestrationContext):
    """Signal ``add 1`` to a counter at a time ``seconds`` from now."""
    args = context.get_input()
    when = context.current_utc_datetime + timedelta(seconds=args["seconds"])
    yield context.signal_entity(df.EntityId("counter", args["key"]), "add", 1, scheduled_time=when)
    return when.isoformat()


@app.orchestration_trigger(context_name="context")
def writer(context: df.DurableOrchestrationContext):
    """Send ``append`` 0..n-1 to ``journal/<key>`` over several steps; signals and calls mixed.

    Input: ``{"n", "key", "call_every", "pause_every", "pause": "activity"|"timer", "mirror", "log"}``.
    Every ``call_every``-th append is a call (its answer is checked); an activity or a short
    timer follows every ``pause_every``-th append, so the appends span steps.
    """
    args: dict[str, Any] = context.get_input()
    target = df.EntityId("journal", args["key"])
    me = context.instance_id
    calls = []
    for i in range(args["n"]):
        item = {"s": me, "i": i, "mirror": args.get("mirror"), "log": args.get("log")}
        if args.get("call_every") and i % args["call_every"] == args["call_every"] - 1:
            calls.append((yield context.call_entity(target, "append", item)))
        else:
            context.signal_entity(target, "append", item)
        if args.get("pause_every") and i % args["pause_every"] == args["pause_every"] - 1:
            if args.get("pause") == "timer":
                yield context.create_timer(context.current_utc_datetime + timedelta(milliseconds=200))
            else:
                yield context.call_activity("tick", {"n": i, "key": f"{me}:{i}", "log": args.get("log")})
    return calls


@app.orchestration_trigger(context_name="context")
def transfer(context: df.DurableOrchestrationContext):
    """Move ``amount`` from ``src`` to ``dst`` if ``src`` has it, inside a critical section."""
    args = context.get_input()
    src, dst = df.EntityId("account", args["src"]), df.EntityId("account", args["dst"])
    with (yield context.lock([src, dst])):
        balance = yield context.call_entity(src, "get")
        if balance < args["amount"]:
            return 0
        yield context.call_entity(src, "withdraw", args["amount"])
        yield context.call_entity(dst, "deposit", args["amount"])
    return args["amount"]


@app.orchestration_trigger(context_name="context")
def hold_lock(context: df.DurableOrchestrationContext):
    """Lock the given accounts and wait for the ``go`` event inside the critical section."""
    keys = context.get_input()
    with (yield context.lock([df.EntityId("account", k) for k in keys])):
        context.set_custom_status("locked")
        yield context.wait_for_external_event("go")
    return "released"


@app.orchestration_trigger(context_name="context")
def rounds(context: df.DurableOrchestrationContext):
    """``per_round`` appends to ``journal/<key>`` per round; between rounds wait for a ``next`` event.

    The custom status is the number of the round whose appends were just sent.
    """
    args = context.get_input()
    target = df.EntityId("journal", args["key"])
    i = 0
    for r in range(args["rounds"]):
        for _ in range(args["per_round"]):
            context.signal_entity(target, "append", {"s": context.instance_id, "i": i})
            i += 1
        context.set_custom_status(r)
        if r + 1 < args["rounds"]:
            yield context.wait_for_external_event("next")
    return i


@app.orchestration_trigger(context_name="context")
def fail_in_lock(context: df.DurableOrchestrationContext):
    """Lock the given accounts, read the first, then raise inside the critical section."""
    keys = context.get_input()
    with (yield context.lock([df.EntityId("account", k) for k in keys])):
        balance = yield context.call_entity(df.EntityId("account", keys[0]), "get")
        raise RuntimeError(f"failing while holding the lock (balance {balance})")
