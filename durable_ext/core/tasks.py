"""Tasks: what an orchestrator yields, and the combinators over them.

A task is created (and its action recorded) the moment the orchestrator calls
the context, exactly as in the official SDK; yielding it only suspends the
generator until it completes. Composite tasks (``task_all``, ``task_any`` and
retries) listen to their children.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

_PENDING, _DONE, _FAILED = 0, 1, 2


class Task:
    """A unit of orchestration work that is pending, completed or failed."""

    __slots__ = ("_state", "_result", "_exception", "_listeners", "task_id")

    def __init__(self, task_id: int = -1) -> None:
        self._state = _PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        self._listeners: list[Callable[[Task], None]] | None = None
        self.task_id = task_id

    @property
    def is_completed(self) -> bool:
        """True once the task succeeded or failed."""
        return self._state != _PENDING

    @property
    def is_faulted(self) -> bool:
        """True when the task failed."""
        return self._state == _FAILED

    @property
    def result(self) -> Any:
        """The task's value (``None`` while pending or when it failed)."""
        return self._result

    @property
    def exception(self) -> BaseException | None:
        """The failure, when the task failed."""
        return self._exception

    def _listen(self, listener: Callable[[Task], None]) -> None:
        if self._listeners is None:
            self._listeners = [listener]
        else:
            self._listeners.append(listener)

    def _complete(self, value: Any) -> None:
        if self._state != _PENDING:
            return
        self._state = _DONE
        self._result = value
        self._notify()

    def _fail(self, exc: BaseException) -> None:
        if self._state != _PENDING:
            return
        self._state = _FAILED
        self._exception = exc
        self._notify()

    def _notify(self) -> None:
        listeners = self._listeners
        if listeners:
            self._listeners = None
            for listener in listeners:
                listener(self)

    def __repr__(self) -> str:
        state = ("pending", "completed", "failed")[self._state]
        return f"<{type(self).__name__} #{self.task_id} {state}>"


class AtomicTask(Task):
    """One scheduled action: an activity, sub-orchestration, timer or event wait."""

    __slots__ = ("name", "result_type")

    def __init__(self, task_id: int, name: str | None = None, result_type: Any = None) -> None:
        super().__init__(task_id)
        self.name = name
        self.result_type = result_type


class TimerTask(AtomicTask):
    """A durable timer; ``cancel()`` marks it abandoned (it may still fire)."""

    __slots__ = ("fire_at", "is_cancelled")

    def __init__(self, task_id: int, fire_at: datetime) -> None:
        super().__init__(task_id)
        self.fire_at = fire_at
        self.is_cancelled = False

    def cancel(self) -> None:
        """Stop waiting for the timer; an orchestrator may finish without it."""
        if self.is_completed:
            raise ValueError("a completed timer cannot be cancelled")
        self.is_cancelled = True


class WhenAllTask(Task):
    """Completes with the list of results when every child has; fails on the first failure."""

    __slots__ = ("children", "_remaining")

    def __init__(self, children: Sequence[Task]) -> None:
        super().__init__()
        self.children = list(children)
        self._remaining = 0
        for child in self.children:
            if not isinstance(child, Task):
                raise TypeError(f"task_all takes tasks created by the context, got {child!r}")
        for child in self.children:
            if child._state == _FAILED:
                self._fail(child._exception)  # type: ignore[arg-type]
                return
            if child._state == _PENDING:
                self._remaining += 1
                child._listen(self._on_child)
        if self._remaining == 0:
            self._complete([c._result for c in self.children])

    def _on_child(self, child: Task) -> None:
        if self._state != _PENDING:
            return
        if child._state == _FAILED:
            self._fail(child._exception)  # type: ignore[arg-type]
            return
        self._remaining -= 1
        if self._remaining == 0:
            self._complete([c._result for c in self.children])


class WhenAnyTask(Task):
    """Completes with the first child to finish (success or failure); its value is that task."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Task]) -> None:
        super().__init__()
        self.children = list(children)
        if not self.children:
            raise ValueError("task_any needs at least one task")
        for child in self.children:
            if not isinstance(child, Task):
                raise TypeError(f"task_any takes tasks created by the context, got {child!r}")
        for child in self.children:
            if child._state != _PENDING:
                self._complete(child)
                return
        for child in self.children:
            child._listen(self._on_child)

    def _on_child(self, child: Task) -> None:
        self._complete(child)


class RetryableTask(Task):
    """An activity or sub-orchestration call retried after failures per ``RetryOptions``.

    ``attempt`` schedules one try; ``retry_timer`` schedules the durable wait
    before the next. Both are context callbacks, so every retry is recorded in
    history and replays deterministically.
    """

    __slots__ = ("_attempt_fn", "_timer_fn", "options", "attempts", "_started", "_now")

    def __init__(
        self,
        attempt: Callable[[], Task],
        retry_timer: Callable[[datetime], Task],
        options: Any,
        now: Callable[[], datetime],
    ) -> None:
        super().__init__()
        self._attempt_fn = attempt
        self._timer_fn = retry_timer
        self._now = now
        self.options = options
        self.attempts = 0
        self._started = now()
        self._try()

    def _try(self) -> None:
        self.attempts += 1
        child = self._attempt_fn()
        self.task_id = child.task_id
        if child.is_completed:
            self._on_attempt(child)
        else:
            child._listen(self._on_attempt)

    def _on_attempt(self, child: Task) -> None:
        if child._state == _DONE:
            self._complete(child._result)
            return
        options = self.options
        if self.attempts >= options.max_number_of_attempts:
            self._fail(child._exception)  # type: ignore[arg-type]
            return
        now = self._now()
        timeout = options.retry_timeout_in_milliseconds
        # as the Durable Task Framework: retry while now < first attempt + timeout
        if timeout is not None and (now - self._started).total_seconds() * 1000 >= timeout:
            self._fail(child._exception)  # type: ignore[arg-type]
            return
        timer = self._timer_fn(now + options.delay_after(self.attempts))
        timer._listen(lambda _t: self._try())
