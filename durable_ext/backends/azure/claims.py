"""Stepping claims: one process steps a contended instance, the others hand it their messages.

Any process may commit any instance (the sentinel's ETag decides), and that
stays the rule. But when several processes step one instance at once (a
fan-in whose results land on every process), most of their commits lose, and
each loss costs a reload and a replay. So after a conflict, the process that
commits next writes a claim into the sentinel (``Stepper``: its worker id,
``StepperUntil``: when the claim lapses unless a later commit renews it).
While a claim of another process is live, a process does not step the
instance: it writes its messages to the inbox and reads the sentinel again.
If the claim is still there, the holder will read them:

- the holder polls the inbox while it holds the claim, and gives the claim
  up only by clearing it in the sentinel (an ETag-guarded write) and then
  waking the instance once more (a durable wake-up) for whatever came before;
- so a message written before a read that saw the claim is read by the holder,
  whatever the clocks say;
- the holder keeps the instance in its lease index while it holds the claim:
  if it dies, the sweep that takes its lease over wakes the unread inbox.

``StepperUntil`` only tells the others when to stop trusting a holder that
went quiet (hung, or dead and not yet swept): then they step again, which is
always safe. Claims are a performance device, never a correctness one.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from ...clock import Clock

CLAIM = timedelta(seconds=10)  # a claim no commit renewed for this long is void
CONTENDED_S = 5.0  # how long a conflict (or another process's commit) is news about an instance
QUIET_S = 2.0  # the holder gives a claim up after this long without a step
POLL_MIN_S = 0.01  # the holder reads the inbox this soon after a step that found messages...
POLL_MAX_S = 0.2  # ...and ever more slowly, up to this, while none come
_MAX = 4096  # instances whose claims and conflicts this process remembers

STEPPER = "Stepper"
STEPPER_UNTIL = "StepperUntil"
FIELDS = (STEPPER, STEPPER_UNTIL)


class Claims:
    """What this process knows of the stepping claims of instances, and the ones it holds."""

    def __init__(self, worker_id: Callable[[], str], clock: Clock, duration: timedelta = CLAIM) -> None:
        self._worker_id = worker_id
        self.clock = clock
        self.duration = duration
        #: instance -> (holder, until as a POSIX timestamp) from the last sentinel read or written
        self._seen: OrderedDict[str, tuple[str, float]] = OrderedDict()
        #: instance -> monotonic time another process was last seen committing it under this one
        self._noticed: OrderedDict[str, float] = OrderedDict()
        #: instance -> monotonic time of its last conflict (cleared when a claim of it ends)
        self._conflicts: OrderedDict[str, float] = OrderedDict()
        self.mine: set[str] = set()
        self.taken = 0
        self.given_up = 0

    # ------------------------------------------------------------ knowledge

    def notice(self, instance_id: str, conflict: bool) -> None:
        """Another process committed the instance since this one did: read before stepping it.

        On the hot path a step is judged against this process's last commit and
        its ETag; with another writer that ETag is stale almost every time, and
        a lost commit costs a full replay, while reading first costs one query.
        A ``conflict`` (both stepped at once) also makes the next commit claim it.
        """
        now = time.monotonic()
        _remember(self._noticed, instance_id, now)
        if conflict:
            _remember(self._conflicts, instance_id, now)

    def read_first(self, instance_id: str) -> bool:
        """Whether the instance's next step must read, not trust this process's last commit."""
        return instance_id in self.mine or _recent(self._noticed, instance_id)

    def observe(self, instance_id: str, sentinel: dict[str, Any] | None) -> bool:
        """Note the claim a sentinel just read carries; False when this process lost its own."""
        holder, until = _claim_of(sentinel)
        if holder:
            _remember(self._seen, instance_id, (holder, until))
        else:
            self._seen.pop(instance_id, None)
        return not (instance_id in self.mine and holder != self._worker_id())

    def elsewhere(self, instance_id: str) -> bool:
        """Whether another process holds a live claim on the instance, as last seen."""
        seen = self._seen.get(instance_id)
        if seen is None or seen[0] == self._worker_id():
            return False
        return seen[1] > self.clock.now().timestamp()

    def holds(self, instance_id: str) -> bool:
        """Whether this process holds the instance's claim (and so polls its inbox)."""
        return instance_id in self.mine

    # -------------------------------------------------------------- commits

    def fields(self, instance_id: str, loaded: dict[str, Any], terminal: bool) -> dict[str, Any]:
        """The claim properties the next commit writes into the sentinel.

        Renewed by the holder, taken after a conflict when no live claim of
        another process stands, kept as loaded otherwise, and dropped when the
        instance finishes (nobody steps it any more).
        """
        if terminal:
            return {}
        me = self._worker_id()
        holder, until = _claim_of(loaded)
        live_elsewhere = bool(holder) and holder != me and until > self.clock.now().timestamp()
        if instance_id in self.mine or (_recent(self._conflicts, instance_id) and not live_elsewhere):
            until = (self.clock.now() + self.duration).timestamp()
            return {STEPPER: me, STEPPER_UNTIL: until}
        return {STEPPER: holder, STEPPER_UNTIL: until} if holder else {}

    def committed(self, instance_id: str, written: dict[str, Any]) -> tuple[bool, bool]:
        """Note the claim a commit wrote: (taken now, given up now)."""
        holder = written.get(STEPPER) or ""
        if holder:
            _remember(self._seen, instance_id, (holder, float(written[STEPPER_UNTIL])))
        else:
            self._seen.pop(instance_id, None)
        mine = holder == self._worker_id()
        if mine and instance_id not in self.mine:
            self.mine.add(instance_id)
            self.taken += 1
            return True, False
        if not mine and instance_id in self.mine:
            self.drop(instance_id)
            return False, True
        return False, False

    def drop(self, instance_id: str) -> None:
        """This process no longer holds the instance's claim."""
        if instance_id in self.mine:
            self.mine.discard(instance_id)
            self.given_up += 1
        self._conflicts.pop(instance_id, None)

    def cleared(self, instance_id: str) -> dict[str, Any]:
        """The properties that give a claim up."""
        self._seen.pop(instance_id, None)
        return {STEPPER: "", STEPPER_UNTIL: 0.0}


def _claim_of(sentinel: dict[str, Any] | None) -> tuple[str, float]:
    if not sentinel:
        return "", 0.0
    return str(sentinel.get(STEPPER) or ""), float(sentinel.get(STEPPER_UNTIL) or 0.0)


def _recent(table: OrderedDict[str, float], key: str) -> bool:
    """Whether ``key`` was noted in ``table`` less than ``CONTENDED_S`` ago (older notes go)."""
    since = table.get(key)
    if since is None:
        return False
    if time.monotonic() - since < CONTENDED_S:
        return True
    del table[key]
    return False


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > _MAX:
        table.popitem(last=False)
