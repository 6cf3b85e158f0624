"""What a commit writes about the stepping claim (``Claims.fields``), and what a read tells."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from durable_ext.backends.azure.claims import CLAIM, STEPPER, STEPPER_UNTIL, Claims
from durable_ext.clock import Clock

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


class Fixed(Clock):
    def now(self) -> datetime:
        return NOW


def claims(me: str = "w-me") -> Claims:
    return Claims(lambda: me, Fixed())


def sentinel(holder: str, seconds_left: float) -> dict[str, object]:
    return {STEPPER: holder, STEPPER_UNTIL: (NOW + timedelta(seconds=seconds_left)).timestamp()}


def test_no_conflict_keeps_what_was_loaded() -> None:
    c = claims()
    assert c.fields("i", {}, terminal=False) == {}
    other = sentinel("w-other", 5)
    assert c.fields("i", other, terminal=False) == other


def test_a_conflict_claims_unless_another_live_claim_stands() -> None:
    c = claims()
    c.notice("i", conflict=True)
    until = (NOW + CLAIM).timestamp()
    assert c.fields("i", {}, terminal=False) == {STEPPER: "w-me", STEPPER_UNTIL: until}
    assert c.fields("i", sentinel("w-other", 5), terminal=False) == sentinel("w-other", 5)
    assert c.fields("i", sentinel("w-other", -1), terminal=False)[STEPPER] == "w-me"  # lapsed: taken


def test_a_stale_read_alone_does_not_claim() -> None:
    c = claims()
    c.notice("i", conflict=False)
    assert c.read_first("i")
    assert c.fields("i", {}, terminal=False) == {}


def test_the_holder_renews_until_the_instance_finishes() -> None:
    c = claims()
    c.notice("i", conflict=True)
    written = c.fields("i", {}, terminal=False)
    assert c.committed("i", written) == (True, False)
    assert c.holds("i") and c.read_first("i")
    assert c.fields("i", written, terminal=False)[STEPPER] == "w-me"
    assert c.fields("i", written, terminal=True) == {}
    assert c.committed("i", {}) == (False, True)
    assert not c.holds("i")


def test_a_read_shows_whether_another_process_holds_it() -> None:
    c = claims()
    assert c.observe("i", sentinel("w-other", 5))
    assert c.elsewhere("i")
    assert c.observe("i", sentinel("w-other", -1))
    assert not c.elsewhere("i")  # lapsed: step it
    c.notice("j", conflict=True)
    c.committed("j", c.fields("j", {}, terminal=False))
    assert not c.observe("j", sentinel("w-other", 5))  # this process lost its claim
