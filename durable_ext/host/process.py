"""How our own processes (``durable-ext start``, ``python -m durable_ext.host.worker``) run and end."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run ``serve(stop)``; SIGTERM or SIGINT sets ``stop`` so that it can stop cleanly."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(stop)

    asyncio.run(run())


def exit_now(code: int) -> NoReturn:
    """End the process without waiting for threads that still run sync activities.

    A clean stop has handed their work back to the queue already; the
    interpreter would otherwise wait for each such thread to finish its
    activity before exiting, delaying a restart by as long. Under a profiler
    the process ends normally, so that the profile gets written.
    """
    if sys.getprofile() is not None:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
