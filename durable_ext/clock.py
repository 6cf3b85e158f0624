"""Clocks: the real one, and a virtual one the test harness moves forward."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone


class Clock:
    """Wall-clock UTC time."""

    virtual = False

    def now(self) -> datetime:
        """The current time as an aware UTC datetime."""
        return datetime.now(timezone.utc)


class VirtualClock(Clock):
    """Time that moves only when told to: durable timers complete without waiting.

    It starts at the real current time and keeps ticking with real time in
    between jumps, so timestamps stay ordered and realistic.
    """

    virtual = True

    def __init__(self, start: datetime | None = None) -> None:
        self._offset = timedelta(0)
        if start is not None:
            self._offset = start - datetime.now(timezone.utc)

    def now(self) -> datetime:
        """Real time plus every jump made so far."""
        return datetime.now(timezone.utc) + self._offset

    def advance(self, delta: timedelta) -> None:
        """Jump forward by ``delta``."""
        if delta > timedelta(0):
            self._offset += delta

    def advance_to(self, when: datetime) -> None:
        """Jump forward to ``when`` (no-op if already past it)."""
        self.advance(when - self.now())
