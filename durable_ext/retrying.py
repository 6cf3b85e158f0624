"""Retrying work that must not be lost, loudly: every failure is logged, nothing gives up in silence."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger("durable_ext.worker")

#: waits between attempts of work that only this process can do: quick at first, then every 5 s
FOREVER_S: Iterable[float] = (0.5, 1.0, 1.0, 2.0)


async def attempt(what: str, work: Callable[[], Awaitable[None]], level: int) -> bool:
    """Run ``work``; whether it worked (a failure is logged at ``level``)."""
    try:
        await work()
    except Exception as exc:
        log.log(level, "%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
        return False
    return True


async def retry(
    what: str, work: Callable[[], Awaitable[None]], waits: Iterable[float], level: int, then: str
) -> bool:
    """Run ``work`` again after each of ``waits`` until it works; say so, or that it gave up."""
    n = 0
    for n, wait in enumerate(waits, 1):
        await asyncio.sleep(wait)
        if await attempt(what, work, level):
            log.warning("%s succeeded on retry %d", what, n)
            return True
    log.error("%s: gave up after %d retries; %s", what, n, then)
    return False


async def persist(what: str, work: Callable[[], Awaitable[None]], level: int = logging.WARNING) -> None:
    """Run ``work`` until it works: at once, then after the waits of ``FOREVER_S`` and every 5 s.

    For work only this process can do (its result lives in this process's memory,
    or a lease holds it here): giving up would strand it.
    """
    if not await attempt(what, work, level):
        await retry(what, work, itertools.chain(FOREVER_S, itertools.repeat(5.0)), level, "")


class Background:
    """Tasks this process keeps running until they are done (kept referenced, cancelled at close)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Future[object]] = set()

    def spawn(self, work: Awaitable[object]) -> None:
        """Run ``work`` in the background."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def cancel(self) -> None:
        """Cancel what is still running and wait for it to end."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
