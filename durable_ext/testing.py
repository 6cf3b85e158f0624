"""Testing tools: an in-memory environment with time skipping, and a history replayer.

``DurableTestEnv`` runs an app's orchestrations and activities in this
process on the in-memory backend. Its clock is virtual: while a test waits
for an instance and nothing else can run, time jumps to the next durable
timer, so a 30-day timer completes at once. ``replay`` checks that current
orchestrator code still replays a recorded history.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from .backends.memory import MemoryBackend
from .client import DurableOrchestrationClient, DurableOrchestrationStatus
from .clock import VirtualClock
from .core.actions import Action
from .core.errors import OrchestrationFailedError
from .core.executor import OrchestrationExecutor
from .core.history import Event
from .core.registry import Registry
from .core.serialization import from_json
from .core.status import OrchestrationRuntimeStatus
from .engine import Engine, LocalWorker

__all__ = ["DurableTestEnv", "ReplayResult", "replay"]


class DurableTestEnv:
    """Runs an app (or a Registry) in memory; use as ``async with DurableTestEnv(app) as env``.

    ``env.client`` is a durable client; ``mock_activity`` replaces an activity;
    ``wait_for_completion`` runs the instance to the end, skipping time.
    """

    def __init__(
        self,
        app: Any,
        *,
        start_time: datetime | None = None,
        max_concurrent_activities: int = 16,
    ) -> None:
        source: Registry = app if isinstance(app, Registry) else app.registry
        self.registry = Registry()
        for info in source:
            self.registry.add(info.kind, info.fn, info.name, info.input_name, info.input_type)
        self.clock = VirtualClock(start_time)
        self.backend = MemoryBackend(self.clock)
        self.engine = Engine(self.registry, self.backend, clock=self.clock)
        self.worker = LocalWorker(self.engine, max_concurrent_activities=max_concurrent_activities)
        self.client = DurableOrchestrationClient(self.backend, self.clock)
        self.activity_calls: dict[str, list[Any]] = {}

    async def __aenter__(self) -> DurableTestEnv:
        await self.worker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.worker.stop()

    def mock_activity(self, name: str, fn: Callable[..., Any]) -> None:
        """Replace activity ``name`` with ``fn`` (sync or async, same single input)."""
        original = self.registry.get("activity", name)
        info = self.registry.add("activity", fn, original.name, None, original.input_type)
        if info.return_type is None:  # an unannotated mock keeps the typed result
            info.return_type = original.return_type

    def now(self) -> datetime:
        """The environment's (virtual) current time."""
        return self.clock.now()

    async def start(self, name: str, input: Any = None, instance_id: str | None = None) -> str:
        """Start an orchestration; shorthand for ``client.start_new``."""
        return await self.client.start_new(name, instance_id, input)

    async def run(self, name: str, input: Any = None, instance_id: str | None = None) -> Any:
        """Start an orchestration, run it to the end and return its output.

        Raises OrchestrationFailedError if it fails or is terminated.
        """
        iid = await self.start(name, input, instance_id)
        status = await self.wait_for_completion(iid)
        if status.runtime_status != OrchestrationRuntimeStatus.Completed:
            raise OrchestrationFailedError(iid, str(status.output), status.failure)
        return status.output

    async def wait_for_completion(
        self, instance_id: str, *, timeout: float = 30.0, skip_time: bool = True
    ) -> DurableOrchestrationStatus:
        """Run until the instance is finished; with ``skip_time`` idle waits jump to the next timer."""

        async def finished() -> DurableOrchestrationStatus | None:
            status = await self.client.get_status(instance_id)
            return status if status is not None and status.runtime_status.is_terminal else None

        return await self._drive(finished, timeout, skip_time, f"instance '{instance_id}'")

    async def wait_for_status(
        self,
        instance_id: str,
        predicate: Callable[[DurableOrchestrationStatus], bool],
        *,
        timeout: float = 30.0,
        skip_time: bool = False,
    ) -> DurableOrchestrationStatus:
        """Run until ``predicate(status)`` holds (e.g. a custom status was set)."""

        async def check() -> DurableOrchestrationStatus | None:
            status = await self.client.get_status(instance_id, show_input=True)
            return status if status is not None and predicate(status) else None

        return await self._drive(check, timeout, skip_time, f"instance '{instance_id}'")

    async def run_until_idle(self, timeout: float = 30.0) -> None:
        """Let every runnable step and activity finish, without moving time."""

        async def idle() -> bool | None:
            return True if self.backend.is_idle else None

        await self._drive(idle, timeout, False, "the environment")

    async def skip(self, delta: timedelta) -> None:
        """Move time forward by ``delta``, fire the timers due, and run until idle."""
        await self.run_until_idle()
        self.clock.advance(delta)
        self.backend.release_due_timers()
        await self.run_until_idle()

    async def history(self, instance_id: str) -> list[Event]:
        """The stored history of the instance's current execution."""
        return await self.backend.get_history(instance_id)

    async def _drive(self, check: Callable[[], Any], timeout: float, skip_time: bool, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        backend = self.backend
        while True:
            self._raise_worker_errors()
            result = await check()
            if result is not None:
                return result
            if backend.is_idle:
                due = backend.next_timer_due()
                if skip_time and due is not None:
                    self.clock.advance_to(due)
                    backend.release_due_timers()
                    continue
                if due is not None and due <= self.clock.now():
                    backend.release_due_timers()
                    continue
            if loop.time() >= deadline:
                raise TimeoutError(f"{what} did not get there within {timeout}s")
            await backend.wait_for_work(0.01)

    def _raise_worker_errors(self) -> None:
        if self.worker.errors:
            raise self.worker.errors[0]


@dataclass
class ReplayResult:
    """What a recorded history replays to under the current code."""

    is_done: bool
    output: Any
    actions: list[Action] = field(default_factory=list)
    custom_status: Any = None
    failure: dict[str, Any] | None = None
    continued_as_new: bool = False
    continue_as_new_input: Any = None


def replay(
    orchestrator: Callable[..., Any],
    history: Iterable[Event] | str | bytes,
    instance_id: str | None = None,
    input: Any = None,
    *,
    app: Any = None,
) -> ReplayResult:
    """Replay ``history`` (event dicts, or their JSON text) through ``orchestrator``.

    Raises NonDeterministicOrchestrationError when the code asks for something
    other than what history recorded. ``input`` overrides the recorded input.
    ``app`` (a DurableApp or Registry) supplies the declared payload types, so
    code that relies on typed activity results replays as it ran.
    """
    events = orjson.loads(history) if isinstance(history, (str, bytes)) else list(history)
    if input is not None:
        events = [_with_input(e, input) for e in events]
    started = next((e for e in events if e.get("EventType") == 0), None)
    if instance_id is None:
        instance = (started or {}).get("OrchestrationInstance") or {}
        instance_id = instance.get("InstanceId") or "replay"
    fn = getattr(orchestrator, "orchestrator_function", orchestrator)
    input_type = type_resolver = None
    if app is not None:
        registry: Registry = app if isinstance(app, Registry) else app.registry
        type_resolver = registry.result_type
        own = [i for i in registry if i.kind == "orchestrator" and i.fn is fn]
        input_type = own[0].input_type if own else None
    executor = OrchestrationExecutor(fn, instance_id, input_type=input_type, type_resolver=type_resolver)
    # events flagged IsPlayed replay as old; without flags the whole history is old
    played = sum(1 for e in events if e.get("IsPlayed"))
    split = len(events) if played == 0 else played
    executor.process(events[:split], replaying=True)
    executor.process(events[split:], replaying=False)
    executor.is_replaying = False
    return ReplayResult(
        is_done=executor.is_done,
        output=from_json(executor.output_json),
        actions=executor.actions,
        custom_status=from_json(executor.custom_status_json),
        failure=executor.failure,
        continued_as_new=executor.continue_as_new_requested,
        continue_as_new_input=executor.continue_as_new_input,
    )


def _with_input(event: Event, value: Any) -> Event:
    if event.get("EventType") != 0:
        return event
    from .core.serialization import to_json

    return {**event, "Input": to_json(value)}
