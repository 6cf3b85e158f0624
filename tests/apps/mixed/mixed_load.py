"""The mixed load for ``function_app.py`` beside this file: what to start and what each must return.

Shared by ``benchmarks/many_workers.py`` (under the real Python worker) and
``tests/azure/test_workers.py`` (the local worker processes).
"""

from __future__ import annotations

from typing import Any

KINDS = ["sequence", "fan_out", "timer_then_activity", "wait_for_go", "parent", "bump"]
KEYS = [f"k{n}" for n in range(5)]
#: activities each kind runs (fan_out: its input; bump: none, it calls an entity)
ACTIVITIES = {"sequence": 3, "timer_then_activity": 1, "wait_for_go": 0, "parent": 6, "bump": 0}


def plan(count: int) -> dict[str, tuple[str, Any]]:
    """Instance id -> (orchestrator, input), the kinds in turn."""
    out: dict[str, tuple[str, Any]] = {}
    for n in range(count):
        name = KINDS[n % len(KINDS)]
        if name == "fan_out":
            value: Any = 3 + n % 7
        elif name == "wait_for_go":
            value = None
        elif name == "bump":
            value = {"key": KEYS[n % len(KEYS)], "amount": 1 + n % 9}
        else:
            value = n
        out[f"{name}-{n}"] = (name, value)
    return out


def go_event(iid: str) -> str:
    """The payload of the ``Go`` event raised to ``wait_for_go`` instance ``iid``."""
    return f"go-{iid}"


def expected(name: str, value: Any, iid: str) -> Any:
    """The output of one instance (``None`` for ``bump``: its running total depends on order)."""
    if name == "sequence":
        return value + 3
    if name == "fan_out":
        return sum(n * n for n in range(value))
    if name == "timer_then_activity":
        return value * value
    if name == "wait_for_go":
        return {"go": go_event(iid)}
    if name == "parent":
        return [value + 3, value * 10 + 3]
    return None


def activity_count(work: dict[str, tuple[str, Any]]) -> int:
    """Activities the load runs when each runs once."""
    return sum(value if name == "fan_out" else ACTIVITIES[name] for name, value in work.values())


def entity_totals(work: dict[str, tuple[str, Any]]) -> dict[str, int]:
    """What each ``tally`` entity must hold at the end."""
    totals: dict[str, int] = {}
    for name, value in work.values():
        if name == "bump":
            totals[value["key"]] = totals.get(value["key"], 0) + value["amount"]
    return totals
