"""The orchestration context: the API an orchestrator function calls.

Method names and signatures follow ``azure.durable_functions``'
``DurableOrchestrationContext`` so that ported code runs unchanged. Every
method is deterministic: it reads only history-derived state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .actions import ActionType
from .entities import OPERATION_EVENT, EntityId, EntityRequest, entity_instance_id, orchestration_counters
from .errors import LockingRulesViolationError
from .history import format_timestamp
from .retry import RetryOptions
from .serialization import from_json, to_json
from .tasks import AtomicTask, RetryableTask, Task, TimerTask, WhenAllTask, WhenAnyTask

if TYPE_CHECKING:
    from .executor import OrchestrationExecutor


def function_name(target: str | Callable[..., Any]) -> str:
    """The registered name of a function given by name or by the function itself."""
    if isinstance(target, str):
        if not target:
            raise ValueError("function name must not be empty")
        return target
    name = getattr(target, "__durable_name__", None) or getattr(target, "__name__", None)
    if not name:
        raise TypeError(f"expected a function or its name, got {target!r}")
    return name


class DurableOrchestrationContext:
    """What an orchestrator function receives; create tasks here and ``yield`` them."""

    __slots__ = ("_x",)

    def __init__(self, executor: OrchestrationExecutor) -> None:
        self._x = executor

    # ---------------------------------------------------------------- properties

    @property
    def instance_id(self) -> str:
        """The id of this orchestration instance."""
        return self._x.instance_id

    @property
    def parent_instance_id(self) -> str | None:
        """The id of the orchestration that started this one as a sub-orchestration."""
        parent = self._x.parent
        if not parent:
            return None
        return (parent.get("OrchestrationInstance") or {}).get("InstanceId")

    @property
    def is_replaying(self) -> bool:
        """True while the code re-runs steps that history already recorded."""
        return self._x.is_replaying

    @property
    def current_utc_datetime(self) -> datetime:
        """Deterministic current time: the start of the episode being replayed."""
        return self._x.now()

    @property
    def function_name(self) -> str:
        """The orchestrator's registered name."""
        return self._x.name

    @property
    def will_continue_as_new(self) -> bool:
        """True after ``continue_as_new`` was called in this execution."""
        return self._x.continue_as_new_requested

    def get_input(self, expected_type: Any = None) -> Any:
        """The instance's input, decoded (to ``expected_type`` or the declared input type)."""
        x = self._x
        return from_json(x.input_json, expected_type or x.input_type, f"input of '{x.name}'")

    def new_uuid(self) -> str:
        """A UUID that is the same every time this step replays."""
        return self._x.new_uuid()

    def new_guid(self) -> str:
        """Alias of ``new_uuid`` kept for ported code."""
        return self._x.new_uuid()

    def set_custom_status(self, status: Any) -> None:
        """Publish a JSON-serializable status that management queries return."""
        self._x.custom_status_json = to_json(status, "custom status")

    # ------------------------------------------------------------------- tasks

    def call_activity(
        self, name: str | Callable[..., Any], input_: Any = None, *, result_type: Any = None
    ) -> Task:
        """Schedule an activity; the task's value is its return value."""
        x = self._x
        fname = function_name(name)
        payload = to_json(input_, f"input of activity '{fname}'")
        if result_type is None and x.type_resolver is not None:
            result_type = x.type_resolver("activity", fname)
        return x.schedule(
            ActionType.CallActivity, AtomicTask(-1, fname, result_type), name=fname, input=payload
        )

    def call_activity_with_retry(
        self,
        name: str | Callable[..., Any],
        retry_options: RetryOptions,
        input_: Any = None,
        *,
        result_type: Any = None,
    ) -> Task:
        """Schedule an activity retried on failure; waits between tries are durable timers."""
        _check_retry(retry_options)
        return RetryableTask(
            lambda: self.call_activity(name, input_, result_type=result_type),
            self.create_timer,
            retry_options,
            self._x.now,
        )

    def call_sub_orchestrator(
        self,
        name: str | Callable[..., Any],
        input_: Any = None,
        instance_id: str | None = None,
        *,
        result_type: Any = None,
    ) -> Task:
        """Start a sub-orchestration; the task's value is its output."""
        x = self._x
        fname = function_name(name)
        payload = to_json(input_, f"input of sub-orchestration '{fname}'")
        if instance_id is None:
            instance_id = f"{x.instance_id}:{x.next_id:04d}"
        if result_type is None and x.type_resolver is not None:
            result_type = x.type_resolver("orchestrator", fname)
        return x.schedule(
            ActionType.CallSubOrchestrator,
            AtomicTask(-1, fname, result_type),
            name=fname,
            input=payload,
            instance_id=instance_id,
        )

    def call_sub_orchestrator_with_retry(
        self,
        name: str | Callable[..., Any],
        retry_options: RetryOptions,
        input_: Any = None,
        instance_id: str | None = None,
        *,
        result_type: Any = None,
    ) -> Task:
        """Start a sub-orchestration retried on failure (each try gets its own instance id)."""
        _check_retry(retry_options)
        attempt = [0]

        def one_try() -> Task:
            attempt[0] += 1
            child_id = (
                instance_id
                if instance_id is None or attempt[0] == 1
                else (f"{instance_id}:retry{attempt[0]}")
            )
            return self.call_sub_orchestrator(name, input_, child_id, result_type=result_type)

        return RetryableTask(one_try, self.create_timer, retry_options, self._x.now)

    def create_timer(self, fire_at: datetime | timedelta) -> TimerTask:
        """A durable timer firing at ``fire_at`` (a UTC datetime, or a delay from now)."""
        x = self._x
        if isinstance(fire_at, timedelta):
            fire_at = x.now() + fire_at
        elif not isinstance(fire_at, datetime):
            raise TypeError(f"create_timer takes a datetime or timedelta, got {fire_at!r}")
        text = format_timestamp(fire_at)
        task = TimerTask(-1, fire_at)
        x.schedule(ActionType.CreateTimer, task, fire_at=text)
        return task

    def wait_for_external_event(self, name: str, *, result_type: Any = None) -> Task:
        """A task completed by the next event of that name raised to this instance."""
        if not name or not isinstance(name, str):
            raise ValueError("event name must be a non-empty string")
        return self._x.wait_for_event(name, result_type)

    def task_all(self, activities: Sequence[Task]) -> Task:
        """Completes with all results, in order, when every task has; fails on the first failure."""
        return WhenAllTask(activities)

    def task_any(self, activities: Sequence[Task]) -> Task:
        """Completes with the first task to finish (the winner task itself)."""
        return WhenAnyTask(activities)

    def continue_as_new(self, input_: Any = None, *, save_events: bool = False) -> None:
        """End this execution and start afresh with ``input_``, truncating history.

        With ``save_events`` external events not yet consumed carry over.
        """
        to_json(input_, f"continue_as_new input of '{self._x.name}'")
        self._x.request_continue_as_new(input_, save_events)

    # ------------------------------------------------------------------ entities

    def call_entity(
        self,
        entity_id: EntityId | str,
        operation_name: str,
        operation_input: Any = None,
        *,
        result_type: Any = None,
    ) -> Task:
        """Run an entity operation and wait for its result; a failure raises in the orchestrator."""
        x = self._x
        target = entity_instance_id(entity_id)
        section = x.critical_section
        if section is not None and target not in section["lockset"]:
            raise LockingRulesViolationError(
                f"orchestrator '{x.name}' called entity {target} inside a critical section that does "
                f"not lock it (locked: {', '.join(section['lockset'])}); lock it too, or call it after "
                "the section"
            )
        payload = to_json(operation_input, f"input of operation '{operation_name}' of {target}")
        request = EntityRequest(
            x.new_uuid(),
            "call",
            op=operation_name,
            input=payload,
            parent=x.instance_id,
            parent_execution=x.execution_id,
        )
        task = AtomicTask(-1, f"operation '{operation_name}' of entity {target}", result_type)
        return self._send_entity(ActionType.CallEntity, target, request, task)

    def signal_entity(
        self,
        entity_id: EntityId | str,
        operation_name: str,
        operation_input: Any = None,
        *,
        scheduled_time: datetime | None = None,
    ) -> Task:
        """Send a one-way entity operation (at ``scheduled_time`` when given); returns a done task."""
        x = self._x
        target = entity_instance_id(entity_id)
        payload = to_json(operation_input, f"input of signal '{operation_name}' to {target}")
        request = EntityRequest(
            x.new_uuid(), "signal", op=operation_name, input=payload, parent=x.instance_id
        )
        if scheduled_time is not None:
            if not isinstance(scheduled_time, datetime):
                raise TypeError(f"scheduled_time must be a datetime, got {scheduled_time!r}")
            request.at = format_timestamp(scheduled_time)
        return self._send_entity(ActionType.SignalEntity, target, request, AtomicTask(-1, operation_name))

    def lock(self, entities: Sequence[EntityId | str]) -> Task:
        """Lock entities for a critical section; the task's value is a context manager that releases.

        ``with (yield context.lock([a, b])):`` runs its body while no other
        orchestration can operate on ``a`` or ``b``. Entities are locked in one
        global order, so two critical sections never deadlock; the locks are
        released when the block ends, or when the orchestration ends however it ends.
        """
        x = self._x
        if isinstance(entities, (str, EntityId)):
            entities = [entities]
        lockset = sorted({entity_instance_id(e) for e in entities})
        if not lockset:
            raise ValueError("lock needs at least one entity")
        if x.critical_section is not None:
            raise LockingRulesViolationError(
                f"orchestrator '{x.name}' asked for a lock inside a critical section; lock every "
                "entity it needs in one call"
            )
        request = EntityRequest(
            x.new_uuid(), "lock", parent=x.instance_id, parent_execution=x.execution_id, lockset=lockset
        )
        x.critical_section = {"id": request.id, "lockset": lockset}
        return self._send_entity(ActionType.CallEntity, lockset[0], request, AtomicTask(-1, "lock"))

    @property
    def is_locked(self) -> bool:
        """True inside a critical section."""
        return self._x.critical_section is not None

    def _send_entity(self, kind: ActionType, target: str, request: EntityRequest, task: AtomicTask) -> Task:
        x = self._x
        orchestration_counters(x).stamp(request, target, x.now())
        x.schedule(
            kind,
            task,
            name=OPERATION_EVENT,
            input=request.to_json(),
            instance_id=target,
            deliver_at=request.at,
        )
        if kind == ActionType.CallEntity:
            x.entity_calls[request.id] = task
        return task

    def call_http(self, method: str, uri: str, content: Any = None, **kwargs: Any) -> Task:
        """Durable HTTP calls are not available yet; call an activity that uses aiohttp."""
        raise NotImplementedError("call_http is not available in this version; use an activity")


def _check_retry(options: Any) -> None:
    if not isinstance(options, RetryOptions):
        raise TypeError(f"retry_options must be a RetryOptions, got {options!r}")
