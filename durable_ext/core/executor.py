"""The replay engine: drives a generator orchestrator against its history.

The executor is fed history events in order. Scheduling events
(``TaskScheduled``, ``TimerCreated``, ...) must match the actions the code
asks for, id for id; completion events complete tasks and resume the
generator. Whatever the code asks for beyond history is the next set of
actions. Because the executor keeps its state between calls, a worker can
keep it in a cache and feed it only the events of the next step: O(new
events) per step instead of O(history).
"""

from __future__ import annotations

import traceback
import types
import uuid
from collections import deque
from collections.abc import Callable, Generator
from datetime import datetime
from typing import Any

from .actions import RECORDED_AS, Action, ActionType
from .errors import (
    EntityOperationFailedError,
    NonDeterministicOrchestrationError,
    SerializationError,
    TaskFailedError,
)
from .history import (
    Event,
    EventType,
    describe,
    failure_details,
    format_timestamp,
    is_rewind,
    parse_timestamp,
)
from .serialization import from_json, to_json
from .tasks import AtomicTask, Task, TimerTask

#: Resolves the declared result type of a called function: (kind, name) -> type or None.
TypeResolver = Callable[[str, str], Any]

_ET = EventType
_SCHEDULING = frozenset(
    {_ET.TaskScheduled, _ET.TimerCreated, _ET.SubOrchestrationInstanceCreated, _ET.EventSent}
)
_COMPLETIONS = frozenset(
    {
        _ET.TaskCompleted,
        _ET.TaskFailed,
        _ET.SubOrchestrationInstanceCompleted,
        _ET.SubOrchestrationInstanceFailed,
        _ET.TimerFired,
    }
)
_UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_OID, "9e952958-5e33-4daf-827f-2fa12937b875")


def completed_task_id(event: Event) -> int | None:
    """The task id a completion event (TaskCompleted/Failed, sub-orchestration result,
    TimerFired) answers; ``None`` for any other event."""
    kind = event["EventType"]
    if kind not in _COMPLETIONS:
        return None
    return event.get("TimerId") if kind == _ET.TimerFired else event.get("TaskScheduledId")


def exception_failure(exc: BaseException) -> dict[str, Any]:
    """FailureDetails for an exception: its type name, message and formatted trace."""
    error_type = type(exc).__name__
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, TaskFailedError):  # keep the trace of where the task really failed
        if exc.stack_trace:
            stack += f"\nCaused by the failure of '{exc.task_name}':\n{exc.stack_trace}"
        details = failure_details(error_type, str(exc), stack)
        details["InnerFailure"] = exc.failure
        return details
    return failure_details(error_type, str(exc), stack)


class OrchestrationExecutor:
    """Replays one execution of an orchestrator function and tracks what it wants next."""

    def __init__(
        self,
        fn: Callable[..., Any],
        instance_id: str,
        *,
        input_type: Any = None,
        type_resolver: TypeResolver | None = None,
    ) -> None:
        from .context import DurableOrchestrationContext  # circular: context wraps executor

        self.fn = fn
        self.instance_id = instance_id
        self.input_type = input_type
        self.type_resolver = type_resolver
        self.context = DurableOrchestrationContext(self)
        self.name: str = getattr(fn, "__name__", "orchestrator")
        self.execution_id: str | None = None
        self.parent: dict[str, Any] | None = None
        #: Executions this one was rewound from: id -> task ids still open at the rewind
        #: (their late completions are still taken; those of rewound tasks are not).
        self.previous_executions: dict[str, set[int]] = {}
        self.input_json: str | None = None
        self.is_replaying = False
        self.events_processed = 0
        self.next_id = 0
        self.pending_actions: dict[int, Action] = {}
        self.open_tasks: dict[int, AtomicTask] = {}
        self.activity_ids: set[int] = set()
        self.waiters: dict[str, deque[AtomicTask]] = {}
        self.buffered_events: dict[str, deque[tuple[int, str, str | None]]] = {}
        self._buffer_seq = 0
        self.suspended = False
        self.suspended_events: list[Event] = []
        self.started = False
        self.is_done = False
        self.output_json: str | None = None
        self.failure: dict[str, Any] | None = None
        self.terminated = False
        self.continue_as_new_input: Any = None
        self.continue_as_new_requested = False
        self.save_events = False
        self.custom_status_json: str | None = None
        #: entity calls and lock requests waiting for their answer: request id -> task
        self.entity_calls: dict[str, AtomicTask] = {}
        self.answered_requests: set[str] = set()
        #: per-entity sequence numbers of what this execution sent (see core/entities.py)
        self.entity_sent: dict[str, list[Any]] = {}
        #: the critical section requested or held: {"id", "lockset"} (None outside one)
        self.critical_section: dict[str, Any] | None = None
        self.uuid_counter = 0
        self._now_text = ""
        self._now: datetime | None = None
        self._gen: Generator[Any, Any, Any] | None = None
        self._waiting: Task | None = None
        self._handlers: dict[int, Callable[[Event], None]] = {
            _ET.ExecutionStarted: self._on_started,
            _ET.OrchestratorStarted: self._on_orchestrator_started,
            _ET.TaskScheduled: self._on_scheduled,
            _ET.TimerCreated: self._on_scheduled,
            _ET.SubOrchestrationInstanceCreated: self._on_scheduled,
            _ET.EventSent: self._on_scheduled,
            _ET.TaskCompleted: self._on_completed,
            _ET.SubOrchestrationInstanceCompleted: self._on_completed,
            _ET.TimerFired: self._on_timer_fired,
            _ET.TaskFailed: self._on_failed,
            _ET.SubOrchestrationInstanceFailed: self._on_failed,
            _ET.EventRaised: self._on_event_raised,
            _ET.ExecutionTerminated: self._on_terminated,
            _ET.ExecutionSuspended: self._on_suspended,
            _ET.ExecutionResumed: self._on_resumed,
            _ET.GenericEvent: self._on_generic,
        }

    # ------------------------------------------------------------------ feeding

    def process(self, events: list[Event], replaying: bool) -> None:
        """Apply history events in order; raises NonDeterministicOrchestrationError."""
        self.is_replaying = replaying
        handlers = self._handlers
        suspended_ok = (_ET.ExecutionResumed, _ET.ExecutionTerminated)
        for event in events:
            self.events_processed += 1
            if self.suspended and event["EventType"] not in suspended_ok:
                self.suspended_events.append(event)
                continue
            handler = handlers.get(event["EventType"])
            if handler is not None:
                handler(event)

    def accepts(self, event: Event) -> bool:
        """Whether a new message event belongs in history (drops duplicates and strays)."""
        if self.is_done:
            return False
        kind = event["EventType"]
        if kind == _ET.ExecutionStarted:
            return not self.started
        key = completed_task_id(event)
        if key is not None:
            return key in self.open_tasks and key not in self.pending_actions
        if kind == _ET.EventRaised:  # a second answer to an entity call is a duplicate
            return event.get("Name") not in self.answered_requests
        return True

    def open_timers(self) -> dict[int, datetime]:
        """Timers created and not yet fired: id -> fire time (for repair sweeps)."""
        return {i: t.fire_at for i, t in self.open_tasks.items() if isinstance(t, TimerTask)}

    def open_activities(self) -> list[int]:
        """Ids of activities scheduled and not yet answered."""
        return [i for i in self.open_tasks if i in self.activity_ids]

    @property
    def actions(self) -> list[Action]:
        """Actions the code asked for that history does not record yet, in id order."""
        return list(self.pending_actions.values())

    # ------------------------------------------------------------ scheduling API

    def now(self) -> datetime:
        """The orchestrator's deterministic current time (its episode's start)."""
        if self._now is None:
            self._now = parse_timestamp(self._now_text) if self._now_text else datetime.min
        return self._now

    def schedule(self, action_type: ActionType, task: AtomicTask, **fields: Any) -> AtomicTask:
        """Record an action under the next sequence id and return its task."""
        action_id = self.next_id
        self.next_id = action_id + 1
        task.task_id = action_id
        self.pending_actions[action_id] = Action(action_type, action_id, **fields)
        if action_type != ActionType.SignalEntity and action_type != ActionType.SendEvent:
            self.open_tasks[action_id] = task
            if action_type == ActionType.CallActivity:
                self.activity_ids.add(action_id)
        else:
            task._complete(None)
        return task

    def wait_for_event(self, name: str, result_type: Any) -> AtomicTask:
        """A task completed by the next ``EventRaised`` of that name (buffered ones first)."""
        task = AtomicTask(-1, name, result_type)
        key = name.casefold()
        buffered = self.buffered_events.get(key)
        if buffered:
            _seq, _name, payload = buffered.popleft()
            task._complete(self._decode(payload, result_type, f"event '{name}'"))
        else:
            self.waiters.setdefault(key, deque()).append(task)
        return task

    def new_uuid(self) -> str:
        """A name-based UUID that is the same on every replay (the official SDK's recipe)."""
        stamp = self.now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        name = f"{self.instance_id}_{stamp}_{self.uuid_counter}"
        self.uuid_counter += 1
        return str(uuid.uuid5(_UUID_NAMESPACE, name))

    def request_continue_as_new(self, input_: Any, save_events: bool) -> None:
        """Mark this execution to end by restarting with ``input_``."""
        self.continue_as_new_requested = True
        self.continue_as_new_input = input_
        self.save_events = save_events

    def carried_over_events(self) -> list[tuple[str, str | None]]:
        """Unconsumed external events (name, JSON payload) in arrival order."""
        items = [item for queue in self.buffered_events.values() for item in queue]
        items.sort(key=lambda item: item[0])
        return [(name, payload) for _seq, name, payload in items]

    # ------------------------------------------------------------- event handlers

    def _on_orchestrator_started(self, event: Event) -> None:
        self._now_text = event["Timestamp"]
        self._now = None

    def _on_started(self, event: Event) -> None:
        if self.started:
            return
        self.started = True
        self.name = event.get("Name") or self.name
        self.input_json = event.get("Input")
        instance = event.get("OrchestrationInstance") or {}
        self.execution_id = instance.get("ExecutionId")
        self.parent = event.get("ParentInstance")
        if not self._now_text:
            self._now_text = event["Timestamp"]
        try:
            result = self.fn(self.context)
        except Exception as exc:  # the orchestrator raised before its first yield
            self._finish_failed(exc)
            return
        if isinstance(result, types.GeneratorType):
            self._gen = result
            self._step(None, None)
        else:
            self._finish(result)

    def _on_scheduled(self, event: Event) -> None:
        event_id = event.get("EventId", -1)
        action = self.pending_actions.pop(event_id, None)
        if action is None:
            if self.failure is not None and not self.terminated:
                raise NonDeterministicOrchestrationError(
                    f"history has {describe(event)} but orchestrator '{self.name}' raised "
                    f"{self.failure['ErrorType']}: {self.failure['ErrorMessage']} before reaching it "
                    "during replay"
                )
            raise NonDeterministicOrchestrationError(
                f"history has {describe(event)} but orchestrator '{self.name}' did not ask for it "
                f"(the code now has {self.next_id} steps at this point: was a step removed, "
                "moved or made conditional?)"
            )
        expected = RECORDED_AS.get(action.type)
        if expected != event["EventType"] or not _same_name(action, event):
            raise NonDeterministicOrchestrationError(
                f"history has {describe(event)} but orchestrator '{self.name}' now asks for "
                f"{action.describe()} at that step: orchestrator code must replay the same "
                "sequence of calls"
            )

    def _on_completed(self, event: Event) -> None:
        task = self.open_tasks.pop(event.get("TaskScheduledId", -1), None)
        if task is None:
            return  # a duplicate or stray completion: history makes it harmless
        what = f"result of '{task.name}'"
        task._complete(self._decode(event.get("Result"), task.result_type, what))
        self._resume_if_ready()

    def _on_timer_fired(self, event: Event) -> None:
        task = self.open_tasks.pop(event.get("TimerId", -1), None)
        if task is None:
            return
        task._complete(None)
        self._resume_if_ready()

    def _on_failed(self, event: Event) -> None:
        task = self.open_tasks.pop(event.get("TaskScheduledId", -1), None)
        if task is None:
            return
        details = event.get("FailureDetails") or {}
        message = details.get("ErrorMessage") or event.get("Reason") or ""
        error_type = details.get("ErrorType") or "Exception"
        stack = details.get("StackTrace") or event.get("Details")
        task._fail(TaskFailedError(task.name or "task", error_type, message, stack, details or None))
        self._resume_if_ready()

    def _on_event_raised(self, event: Event) -> None:
        name = event.get("Name") or ""
        call = self.entity_calls.pop(name, None)
        if call is not None:  # the answer of an entity operation or lock request
            self.open_tasks.pop(call.task_id, None)
            self.answered_requests.add(name)
            self._answer_entity_call(call, event.get("Input"))
            self._resume_if_ready()
            return
        key = name.casefold()
        waiting = self.waiters.get(key)
        if waiting:
            task = waiting.popleft()
            task._complete(self._decode(event.get("Input"), task.result_type, f"event '{name}'"))
            self._resume_if_ready()
        else:
            self._buffer_seq += 1
            self.buffered_events.setdefault(key, deque()).append((self._buffer_seq, name, event.get("Input")))

    def _answer_entity_call(self, task: AtomicTask, text: str | None) -> None:
        from .entities import CriticalSection  # circular: entities builds on the executor

        data = from_json(text) if text else {}
        if not isinstance(data, dict):
            data = {}
        if "lockGranted" in data:
            task._complete(CriticalSection(self, data["lockGranted"], list(data.get("lockset") or ())))
            return
        failure = data.get("failure")
        if failure is not None or data.get("exceptionType"):
            failure = failure or {"ErrorType": data.get("exceptionType"), "ErrorMessage": ""}
            task._fail(
                EntityOperationFailedError(
                    task.name or "entity operation",
                    failure.get("ErrorType") or "Exception",
                    failure.get("ErrorMessage") or "",
                    failure.get("StackTrace"),
                    failure,
                )
            )
            return
        task._complete(self._decode(data.get("result"), task.result_type, f"result of {task.name}"))

    def _on_terminated(self, event: Event) -> None:
        if self.is_done:
            return
        self.terminated = True
        self.is_done = True
        self.output_json = event.get("Input")
        self.pending_actions.clear()
        if self._gen is not None:
            self._gen.close()

    def _on_generic(self, event: Event) -> None:
        if not is_rewind(event) or not event.get("Data"):
            return
        data = from_json(event["Data"]) or {}
        previous = data.get("previousExecutionId")
        if previous:
            self.previous_executions[previous] = set(data.get("reopenedTasks") or ())

    def _on_suspended(self, event: Event) -> None:
        self.suspended = True

    def _on_resumed(self, event: Event) -> None:
        if not self.suspended:
            return
        self.suspended = False
        held, self.suspended_events = self.suspended_events, []
        replaying = self.is_replaying
        self.events_processed -= len(held)
        self.process(held, replaying)

    # ---------------------------------------------------------- driving the code

    def _decode(self, text: str | None, type_: Any, what: str) -> Any:
        return from_json(text, type_, what)

    def _resume_if_ready(self) -> None:
        waiting = self._waiting
        if waiting is not None and waiting._state != 0:
            self._step(waiting._result, waiting._exception)

    def _step(self, value: Any, error: BaseException | None) -> None:
        gen = self._gen
        if gen is None or self.is_done:
            return
        while True:
            try:
                if error is not None:
                    yielded = gen.throw(error)
                else:
                    yielded = gen.send(value)
            except StopIteration as stop:
                self._waiting = None
                self._finish(stop.value)
                return
            except NonDeterministicOrchestrationError:
                raise
            except Exception as exc:
                self._waiting = None
                self._finish_failed(exc)
                return
            if self.continue_as_new_requested:
                self._waiting = None
                self._finish(None)
                return
            if not isinstance(yielded, Task):
                gen.close()
                self._waiting = None
                self._finish_failed(
                    TypeError(
                        f"orchestrator '{self.name}' yielded {yielded!r}; yield a task created by "
                        "the context (call_activity, create_timer, task_all, ...)"
                    )
                )
                return
            self._waiting = yielded
            if yielded._state == 0:
                return
            value, error = yielded._result, yielded._exception

    def _finish(self, result: Any) -> None:
        self.is_done = True
        if self.continue_as_new_requested:
            return
        try:
            self.output_json = to_json(result, f"output of orchestrator '{self.name}'")
        except SerializationError as exc:
            self._finish_failed(exc)

    def _finish_failed(self, exc: BaseException) -> None:
        self.is_done = True
        self.continue_as_new_requested = False
        self.failure = exception_failure(exc)
        self.output_json = to_json(f"Orchestrator function '{self.name}' failed: {exc}")
        if self._gen is not None:
            self._gen.close()


def _same_name(action: Action, event: Event) -> bool:
    if action.type == ActionType.CreateTimer:
        return True
    recorded = event.get("Name")
    if recorded is None or action.name is None:
        return True
    return recorded.casefold() == action.name.casefold()


def timestamp_of(value: datetime) -> str:
    """Re-exported formatter so the context need not import history directly."""
    return format_timestamp(value)
