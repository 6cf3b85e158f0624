"""Replay benchmark: durable_ext against the official SDK on large histories.

Builds two Durable Task Framework histories as JSON text (a long sequential
chain and a wide fan-out/fan-in), replays each from JSON text to the final
result with ``durable_ext.testing.replay`` and, when ``azure.durable_functions``
is importable, with ``Orchestrator.create(fn)`` on the same history. Then it
drives one instance step by step through the engine and the in-memory backend
to show that a step on a cached orchestration costs the same late as early.

Usage: ``python benchmarks/replay.py [--quick]``. Every figure is printed as a
``name: value`` line; ``--quick`` uses small sizes so it finishes in seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# This folder also holds azure.py, which would shadow the ``azure`` namespace package.
sys.path.remove(str(Path(__file__).resolve().parent))

from durable_ext.backends.memory import MemoryBackend
from durable_ext.client import DurableOrchestrationClient
from durable_ext.core.registry import Registry
from durable_ext.engine import Engine
from durable_ext.testing import replay

try:
    from azure.durable_functions import Orchestrator as OfficialOrchestrator
except ImportError:  # the comparison is optional
    OfficialOrchestrator = None

Event = dict[str, Any]

ACTIVITY = "Double"
INSTANCE_ID = "bench-instance"
EXECUTION_ID = "0f0e0d0c0b0a09080706050403020100"
BASE_TIME = datetime(2026, 11, 25, 10, 0, 0, tzinfo=timezone.utc)
TICKS_PER_SECOND = 10_000_000  # .NET ticks are 100 ns

# Event type codes of the Durable Task Framework (HistoryEventType).
EXECUTION_STARTED = 0
TASK_SCHEDULED = 4
TASK_COMPLETED = 5
ORCHESTRATOR_STARTED = 12
ORCHESTRATOR_COMPLETED = 13


# ---------------------------------------------------------------- orchestrators
# Written against the API both SDKs share: get_input, call_activity, task_all.


def sequential(context: Any) -> Generator[Any, Any, int]:
    """Call the activity once per number, each call after the previous one finished."""
    count = context.get_input()
    total = 0
    for i in range(count):
        total += yield context.call_activity(ACTIVITY, i)
    return total


def fan_out(context: Any) -> Generator[Any, Any, int]:
    """Call the activity for every number at once and gather the results with task_all."""
    count = context.get_input()
    tasks = [context.call_activity(ACTIVITY, i) for i in range(count)]
    results = yield context.task_all(tasks)
    return sum(results)


async def double(value: int) -> int:
    """The activity: what the recorded histories say it returned."""
    return 2 * value


def expected_output(count: int) -> int:
    """Sum of ``double(i)`` for ``i`` in ``range(count)``: both orchestrators' output."""
    return count * (count - 1)


# -------------------------------------------------------------------- histories


class HistoryWriter:
    """Appends events in DTFx JSON shape with .NET-style timestamps (7 digits and ``Z``)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._ticks = 0

    def advance(self, ticks: int) -> None:
        """Move the recorded clock forward (ticks of 100 ns)."""
        self._ticks += ticks

    def stamp(self) -> str:
        """The current recorded time as DTFx writes it, e.g. ``2026-11-25T10:00:00.1234567Z``."""
        seconds, fraction = divmod(self._ticks, TICKS_PER_SECOND)
        whole = (BASE_TIME + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{whole}.{fraction:07d}Z"

    def add(self, event_type: int, event_id: int = -1, **fields: Any) -> None:
        """Append one event; ``IsPlayed`` is fixed afterwards by :meth:`finish`."""
        self.advance(12_345)
        event: Event = {
            "EventType": event_type,
            "EventId": event_id,
            "IsPlayed": True,
            "Timestamp": self.stamp(),
        }
        event.update(fields)
        self.events.append(event)

    def orchestrator_started(self) -> None:
        """Start of an episode (its timestamp is the orchestrator's current time)."""
        self.add(ORCHESTRATOR_STARTED)

    def orchestrator_completed(self) -> None:
        """End of an episode."""
        self.add(ORCHESTRATOR_COMPLETED)

    def execution_started(self, name: str, input_json: str) -> None:
        """The instance's start with its input."""
        instance = {"InstanceId": INSTANCE_ID, "ExecutionId": EXECUTION_ID}
        self.add(EXECUTION_STARTED, Name=name, Version="", Input=input_json, OrchestrationInstance=instance)

    def task_scheduled(self, task_id: int) -> None:
        """The orchestrator's call of the activity with input ``task_id``."""
        self.add(TASK_SCHEDULED, task_id, Name=ACTIVITY, Version="", Input=json.dumps(task_id))

    def task_completed(self, task_id: int) -> None:
        """The activity's result for the call ``task_id``."""
        self.add(TASK_COMPLETED, TaskScheduledId=task_id, Result=json.dumps(2 * task_id))

    def finish(self) -> list[Event]:
        """Events of the last (current) episode are new: ``IsPlayed`` false from its start."""
        last_start = max(i for i, e in enumerate(self.events) if e["EventType"] == ORCHESTRATOR_STARTED)
        for event in self.events[last_start:]:
            event["IsPlayed"] = False
        return self.events


def sequential_history(count: int) -> list[Event]:
    """History of ``sequential`` when its last activity just completed (4 * count + 2 events).

    Episode 1: OrchestratorStarted, ExecutionStarted, TaskScheduled #0,
    OrchestratorCompleted; episode k: OrchestratorStarted, TaskCompleted #k-1,
    TaskScheduled #k, OrchestratorCompleted; the last one ends with the last
    TaskCompleted, so replay produces the output.
    """
    writer = HistoryWriter()
    writer.orchestrator_started()
    writer.execution_started("Sequential", json.dumps(count))
    writer.task_scheduled(0)
    writer.orchestrator_completed()
    for task_id in range(count):
        writer.advance(1_234_567)  # the activity ran
        writer.orchestrator_started()
        writer.task_completed(task_id)
        if task_id + 1 < count:
            writer.task_scheduled(task_id + 1)
            writer.orchestrator_completed()
    return writer.finish()


def fan_out_history(count: int, batch: int = 50, seed: int = 7) -> list[Event]:
    """History of ``fan_out`` when its last activity just completed.

    One episode schedules every activity; completions then arrive in a
    shuffled order, ``batch`` per episode, the last episode ending with the
    last TaskCompleted.
    """
    writer = HistoryWriter()
    writer.orchestrator_started()
    writer.execution_started("FanOut", json.dumps(count))
    for task_id in range(count):
        writer.task_scheduled(task_id)
    writer.orchestrator_completed()
    order = list(range(count))
    random.Random(seed).shuffle(order)
    for start in range(0, count, batch):
        writer.advance(1_234_567)
        writer.orchestrator_started()
        for task_id in order[start : start + batch]:
            writer.task_completed(task_id)
        if start + batch < count:
            writer.orchestrator_completed()
    return writer.finish()


def official_context(history_json: str, input_json: str) -> str:
    """The context JSON the Functions host hands the official SDK, around the same history text."""
    fields = {
        "input": input_json,
        "instanceId": INSTANCE_ID,
        "isReplaying": False,
        "parentInstanceId": None,
        "upperSchemaVersion": 1,
    }
    return '{"history": ' + history_json + ", " + json.dumps(fields)[1:]


# ---------------------------------------------------------------------- timing


def best_of(runs: int, fn: Callable[[], Any]) -> float:
    """The fastest of ``runs`` timed calls, in seconds (each after a full collection)."""
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def replay_durable_ext(fn: Callable[..., Any], history_json: str, count: int) -> None:
    """Replay with durable_ext from JSON text and check the final output."""
    result = replay(fn, history_json)
    assert result.is_done, "durable_ext did not finish the replay"
    assert result.failure is None, result.failure
    assert result.output == expected_output(count), result.output


def replay_official(handle: Callable[[str], str], context_json: str, count: int) -> None:
    """Replay with the official SDK from its context JSON and check the final output."""
    state = json.loads(handle(context_json))
    assert state.get("isDone") is True, "the official SDK did not finish the replay"
    assert state.get("output") == expected_output(count), state.get("output")


@dataclass
class Shape:
    """One benchmarked history: its figure prefix, orchestrator and history builder."""

    label: str
    fn: Callable[..., Any]
    build: Callable[[int], list[Event]]
    count: int


def bench_shape(shape: Shape, runs: int) -> list[tuple[str, float]]:
    """Figures for one history shape: sizes, times, per-event cost and the ratio."""
    events = shape.build(shape.count)
    history_json = json.dumps(events)
    label = shape.label
    figures: list[tuple[str, float]] = [(f"{label}_events", len(events))]
    ours = best_of(runs, lambda: replay_durable_ext(shape.fn, history_json, shape.count))
    figures.append((f"{label}_durable_ext_s", ours))
    figures.append((f"{label}_durable_ext_us_per_event", ours / len(events) * 1e6))
    if OfficialOrchestrator is not None:
        handle = OfficialOrchestrator.create(shape.fn)
        context_json = official_context(history_json, json.dumps(shape.count))
        theirs = best_of(runs, lambda: replay_official(handle, context_json, shape.count))
        figures.append((f"{label}_official_s", theirs))
        figures.append((f"{label}_official_us_per_event", theirs / len(events) * 1e6))
        figures.append((f"{label}_ratio", theirs / ours))
    return figures


# ------------------------------------------------------------------ cached steps


async def cached_steps(points: list[int], window: int) -> list[tuple[str, float]]:
    """Median cost of one orchestration step around each step number in ``points``.

    Step 1 starts the instance; step ``s`` delivers the completion of activity
    ``s - 2`` and schedules the next, so the stored history holds about ``4 * s``
    events. Every timed step must be served from the engine's cache.
    """
    registry = Registry()
    registry.add("orchestrator", sequential, "Sequential")
    registry.add("activity", double, ACTIVITY)
    backend = MemoryBackend()
    engine = Engine(registry, backend)
    client = DurableOrchestrationClient(backend)
    total = max(points) + window + 2  # the timed steps are never the last one
    iid = await client.start_new("Sequential", "cached-bench", total)
    timed = {s: p for p in points for s in range(p - window, p + window + 1)}
    samples: dict[int, list[float]] = {p: [] for p in points}
    step_no = 0
    while True:
        taken = backend.take_instance()
        assert taken == iid, f"expected work for {iid}, got {taken}"
        step_no += 1
        stats = dict(engine.stats)
        start = time.perf_counter()
        step = await engine.process_instance(iid)
        elapsed = time.perf_counter() - start
        backend.release_instance(iid)
        assert step is not None and step.changed, f"step {step_no} did nothing"
        if step_no in timed:
            assert engine.stats["cache_hits"] == stats["cache_hits"] + 1, "step missed the cache"
            assert engine.stats["replays"] == stats["replays"], "step replayed history"
            samples[timed[step_no]].append(elapsed)
        if step.record.status.is_terminal:
            break
        while (request := backend.take_activity()) is not None:
            message = await engine.run_activity(request)
            await backend.complete_activity(request, message)
            backend.activity_done()
    record = await backend.get_instance(iid)
    assert record is not None and record.output == json.dumps(expected_output(total)), record
    figures = [(f"cached_step_at_{p}_us", statistics.median(samples[p]) * 1e6) for p in points]
    figures.append(("cached_steps_total", step_no))
    figures.append(("cached_steps_replays", engine.stats["replays"]))
    figures.append(("cached_steps_cache_hits", engine.stats["cache_hits"]))
    return figures


# ------------------------------------------------------------------------ main


def format_value(value: float) -> str:
    """Integers as such, times with enough significant digits to compare."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}" if value < 1000 else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark and print one ``name: value`` line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few runs (a few seconds)")
    args = parser.parse_args(argv)
    sequential_count, fan_out_count, runs, window = (500, 200, 2, 3) if args.quick else (5000, 2000, 5, 5)

    if OfficialOrchestrator is not None:
        version = metadata.version("azure-functions-durable")
        print(f"# official SDK: azure-functions-durable {version}")
    else:
        print("# official SDK: not installed (azure-functions-durable); its figures are skipped")
    print(f"# python {sys.version.split()[0]}, best of {runs} runs")

    shapes = [
        Shape(f"sequential_{sequential_count}", sequential, sequential_history, sequential_count),
        Shape(f"fanout_{fan_out_count}", fan_out, fan_out_history, fan_out_count),
    ]
    for shape in shapes:
        for name, value in bench_shape(shape, runs):
            print(f"{name}: {format_value(value)}", flush=True)
    asyncio.run(cached_steps([10], window))  # warm-up: first steps in a process run cold code
    for name, value in asyncio.run(cached_steps([10, sequential_count], window)):
        print(f"{name}: {format_value(value)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
