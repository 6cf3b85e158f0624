"""The chaos soak's load for ``function_app.py`` beside this file: what to start, what each must return.

Used by ``benchmarks/chaos.py``. Every activity key is ``{owner instance id}|{label}`` and an
activity returns ``ok:{key}``, so an output names every activity result it holds. Activities sleep
0.3-1.5 s and timers wait 2-5 s, so that at the soak's pace (about one instance a second) a killed
worker usually holds some work.
"""

from __future__ import annotations

from typing import Any

KINDS = ["sequence", "fan_out", "timers", "race_event", "race_timer", "parent", "count"]
COUNTERS = [f"c{n}" for n in range(4)]
#: the event ``race_event`` waits for; the script raises it with ``go_data(iid)``
EVENT = "Go"
#: the timer ``race_event``'s event races: long enough that the event always wins
RACE_EVENT_TIMEOUT_S = 1800
#: the timer ``race_timer``'s event (never raised) races
RACE_TIMER_S = 5


def ok(key: str) -> str:
    """What the ``work`` activity returns for ``key``."""
    return f"ok:{key}"


def children(iid: str) -> list[str]:
    """Instance ids of the sub-orchestrations a ``parent`` instance starts."""
    return [f"{iid}:c0", f"{iid}:c1"]


def plan(count: int) -> dict[str, tuple[str, dict[str, Any]]]:
    """Instance id -> (orchestrator, input), the kinds in turn."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for n in range(count):
        name = KINDS[n % len(KINDS)]
        value: dict[str, Any]
        if name == "sequence":
            value = {"ms": 1000}
        elif name == "fan_out":
            value = {"n": 4 + n % 7, "ms": 1500}
        elif name == "timers":
            value = {"ms": 500, "timers_s": [4, 2]}
        elif name == "race_event":
            value = {"timeout_s": RACE_EVENT_TIMEOUT_S, "ms": 300}
        elif name == "race_timer":
            value = {"timeout_s": RACE_TIMER_S, "ms": 300}
        elif name == "parent":
            value = {"ms": 800}
        else:
            value = {"key": COUNTERS[n % len(COUNTERS)], "amount": 1 + n % 9, "ms": 500}
        out[f"{name}-{n:05d}"] = (name, value)
    return out


def go_data(iid: str) -> str:
    """The data of the ``Go`` event raised to ``race_event`` instance ``iid``."""
    return f"go-{iid}"


def child_output(child: str) -> list[str]:
    """What one ``child`` sub-orchestration returns."""
    return [ok(f"{child}|a"), ok(f"{child}|b")]


def expected(name: str, value: dict[str, Any], iid: str) -> Any:
    """The output of one instance."""
    if name == "sequence":
        return [ok(f"{iid}|s{n}") for n in range(3)]
    if name == "fan_out":
        return [ok(f"{iid}|f{n}") for n in range(value["n"])]
    if name == "timers":
        return [ok(f"{iid}|t{n}") for n in range(len(value["timers_s"]))]
    if name == "race_event":
        return ["event", go_data(iid), ok(f"{iid}|after")]
    if name == "race_timer":
        return ["timer", ok(f"{iid}|after")]
    if name == "parent":
        return [*(child_output(c) for c in children(iid)), ok(f"{iid}|p")]
    return [ok(f"{iid}|pre"), 1]  # count: the entity saw this instance's signal exactly once


def activity_keys(name: str, value: dict[str, Any], iid: str) -> list[str]:
    """The activity keys one instance (and its children) runs, each at least once."""
    if name == "parent":
        return [f"{c}|{x}" for c in children(iid) for x in "ab"] + [f"{iid}|p"]
    return [
        text[3:] for text in expected(name, value, iid) if isinstance(text, str) and text.startswith("ok:")
    ]


def entity_signals(work: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """Counter key -> {signalling instance id: amount}: what each ``counter`` entity must have applied."""
    out: dict[str, dict[str, int]] = {key: {} for key in COUNTERS}
    for iid, (name, value) in work.items():
        if name == "count":
            out[value["key"]][iid] = value["amount"]
    return {key: signals for key, signals in out.items() if signals}
