"""Timer schedules (NCRONTAB via croniter, TimeSpan); how the local host runs and reports timers."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import azure.functions as func
import pytest

import durable_ext as df
from durable_ext.host import server
from durable_ext.host.server import LocalHost, Schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def fires(schedule: str, start: str, count: int) -> list[str]:
    """The next ``count`` fire times after ``start``, as ISO strings without the offset."""
    s, now, out = Schedule(schedule), at(start), []
    for _ in range(count):
        now = s.next_after(now)
        assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
        out.append(now.replace(tzinfo=None).isoformat())
    return out


# ------------------------------------------------------------------------------ NCRONTAB


def test_leap_day_schedule() -> None:
    assert fires("0 0 0 29 2 *", "2026-03-01T00:00:00", 2) == ["2028-02-29T00:00:00", "2032-02-29T00:00:00"]


def test_weekday_range_ending_in_7_fires_every_day() -> None:
    assert fires("0 0 9 * * 1-7", "2026-03-01T10:00:00", 7) == [
        f"2026-03-{d:02}T09:00:00" for d in range(2, 9)
    ]


def test_weekday_7_and_0_are_sunday() -> None:
    sundays = ["2026-03-08T12:00:00", "2026-03-15T12:00:00", "2026-03-22T12:00:00"]
    for weekday in ("7", "0", "SUN", "sun"):
        assert fires(f"0 0 12 * * {weekday}", "2026-03-01T12:00:00", 3) == sundays  # 2026-03-01 is a Sunday


def test_day_and_month_names_case_insensitive() -> None:
    # 2026-03-07 is a Saturday: the next weekday 09:30 is Monday the 9th
    for expr in ("0 30 9 * * MON-FRI", "0 30 9 * * mon-fri", "0 30 9 * * 1-5"):
        assert fires(expr, "2026-03-07T10:00:00", 2) == ["2026-03-09T09:30:00", "2026-03-10T09:30:00"]
    assert fires("0 0 0 1 JAN *", "2026-03-01T00:00:00", 2) == ["2027-01-01T00:00:00", "2028-01-01T00:00:00"]
    assert fires("0 0 0 1 jan,Jul *", "2026-03-01T00:00:00", 2) == [
        "2026-07-01T00:00:00",
        "2027-01-01T00:00:00",
    ]


def test_seconds_come_first_in_six_fields() -> None:
    assert fires("*/30 * * * * *", "2026-03-01T12:00:10", 3) == [
        "2026-03-01T12:00:30",
        "2026-03-01T12:01:00",
        "2026-03-01T12:01:30",
    ]
    # strictly after: a fire time is not returned again
    assert Schedule("*/30 * * * * *").next_after(at("2026-03-01T12:00:30")) == at("2026-03-01T12:01:00")
    assert fires("5 0 * * * *", "2026-03-01T12:30:00", 2) == ["2026-03-01T13:00:05", "2026-03-01T14:00:05"]
    assert fires("5/20 * * * * *", "2026-03-01T12:00:06", 3) == [
        "2026-03-01T12:00:25",
        "2026-03-01T12:00:45",
        "2026-03-01T12:01:05",
    ]
    assert Schedule("* * * * * *").next_after(at("2026-03-01T12:00:00.500000")) == at("2026-03-01T12:00:01")


def test_five_fields_are_minute_first() -> None:
    assert fires("5 0 * * *", "2026-03-01T12:00:00", 2) == ["2026-03-02T00:05:00", "2026-03-03T00:05:00"]
    assert fires("*/15 * * * *", "2026-03-01T12:07:30", 2) == ["2026-03-01T12:15:00", "2026-03-01T12:30:00"]


def test_day_and_weekday_must_both_match() -> None:
    # Friday the 13th, as NCrontab reads it (Vixie cron would fire on every Friday and every 13th)
    assert fires("0 0 0 13 * 5", "2026-03-01T00:00:00", 3) == [
        "2026-03-13T00:00:00",
        "2026-11-13T00:00:00",
        "2027-08-13T00:00:00",
    ]
    assert fires("0 0 0 13 * FRI", "2026-03-01T00:00:00", 1) == ["2026-03-13T00:00:00"]


def test_timespan_schedule() -> None:
    s = Schedule("00:00:30")
    assert s.interval == timedelta(seconds=30)
    assert s.next_after(at("2026-03-01T12:00:10")) == at("2026-03-01T12:00:40")
    assert Schedule("01:00:00").next_after(at("2026-03-01T12:00:00")) == at("2026-03-01T13:00:00")


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("bad", "neither NCRONTAB nor a TimeSpan"),
        ("00:00:00", "must be positive"),
        ("0 0 0 30 2 *", "never fires"),
        ("0 0 0 31 4 *", "never fires"),
        ("* * * * * * *", "has 7 fields"),
        ("* * *", "has 3 fields"),
        ("61 * * * * *", "out of range"),
        ("0 0 24 * * *", "out of range"),
        ("0 0 0 * * 8", "out of range"),
        ("x * * * * *", "'x' is not allowed"),
        ("0 0 0 1 MON *", "'MON' is not allowed"),
        ("0 0 0 * * JAN", "'JAN' is not allowed"),
        ("0 0 0 L * *", "'L' is not allowed"),  # croniter extensions NCrontab has not
        ("0 0 0 * * 5#2", "use *, n, a-b"),
        ("0 0 0 ? * *", "use *, n, a-b"),
        ("*/0 * * * * *", "not valid NCRONTAB"),
    ],
)
def test_invalid_schedules(expr: str, reason: str) -> None:
    with pytest.raises(ValueError, match="schedule") as info:
        Schedule(expr)
    message = str(info.value)
    assert repr(expr) in message and reason in message, message


def test_next_after_is_fast() -> None:
    s = Schedule("0 0 0 29 2 1")  # 29 February on a Monday: years apart
    begin = time.perf_counter()
    assert s.next_after(at("2026-03-01T00:00:00")) == at("2044-02-29T00:00:00")
    assert s.next_after(at("2072-03-01T00:00:00")) == at("2112-02-29T00:00:00")
    assert time.perf_counter() - begin < 0.5


# ------------------------------------------------------------------------------ the host's timers


def timer_app(calls: list[str]) -> df.DurableApp:
    app = df.DurableApp()

    @app.route(route="ping")
    def ping(req: func.HttpRequest) -> str:
        return "pong"

    @app.timer_trigger(arg_name="timer", schedule="0 0 0 30 2 *")
    def cleanup(timer: func.TimerRequest) -> None:
        calls.append("cleanup")

    @app.timer_trigger(arg_name="timer", schedule="bad")
    def broken(timer: func.TimerRequest) -> None:
        calls.append("broken")

    @app.timer_trigger(arg_name="timer", schedule="* * * * * *")
    def tick(timer: func.TimerRequest) -> None:
        calls.append("tick")

    return app


async def wait_for(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_host_logs_and_skips_timers_with_bad_schedules(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    host = LocalHost(tmp_path)
    caplog.set_level(logging.INFO, logger="durable_ext.host")
    try:
        for function in timer_app(calls).get_functions():
            if function.get_function_name() in ("ping", "cleanup", "broken", "tick"):
                await host._add_function(function)
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 2, errors
        assert "timer function 'cleanup' has an invalid schedule '0 0 0 30 2 *'" in errors[0]
        assert "never fires" in errors[0] and errors[0].endswith("it will not run")
        assert "timer function 'broken' has an invalid schedule 'bad'" in errors[1]
        assert [f.name for f in host.http_functions] == ["ping"]
        assert len(host._tasks) == 1  # only the good timer runs
        await wait_for(lambda: host.invocations.get("tick", 0) >= 1)  # counted once the run ended
        assert set(calls) == {"tick"}
    finally:
        await host.stop()


class FlakySchedule(Schedule):
    """Fails its first computation, then fires every few milliseconds."""

    def __init__(self) -> None:
        super().__init__("00:00:01")
        self.calls = 0

    def next_after(self, now: datetime) -> datetime:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("clock trouble")
        return now + timedelta(milliseconds=5)


async def test_timer_loop_survives_an_unexpected_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "TIMER_RETRY_SECONDS", 0.01)
    calls: list[str] = []
    host = LocalHost(tmp_path)
    task = asyncio.create_task(
        host._timer_loop("flaky", lambda timer: calls.append("x"), {"name": "timer"}, FlakySchedule())
    )
    try:
        await wait_for(lambda: len(calls) >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "timer function 'flaky'" in failures[0].getMessage() and failures[0].exc_info is not None
    assert "clock trouble" in str(failures[0].exc_info[1])
    assert host.invocations["flaky"] >= 2
