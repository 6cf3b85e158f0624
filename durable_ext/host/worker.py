"""A worker process for the local emulator: queue runners, the repair sweep, the handlers.

On Azure the Functions host polls the queues and calls the handlers through
the app's bindings; here ``AzureWorker`` polls them itself with
``QueueTriggerRunner`` (the host's queue-trigger semantics) and sweeps on a
timer. ``python -m durable_ext.host.worker APP_DIR`` runs one such process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import orjson

from ..backends.azure.backend import AzureBackend
from ..backends.azure.connection import StorageConnection
from ..backends.azure.leases import LEASE
from ..config import DurableTaskOptions
from ..core.registry import Registry
from ..handlers import DurableHandlers, EnvFaults
from ..retrying import persist
from .process import exit_now, run_until_signalled
from .queues import QueueTriggerOptions, QueueTriggerRunner

log = logging.getLogger("durable_ext.worker")

#: between two sweeps: a dead process's work is taken over within a lease plus this
REPAIR_INTERVAL = timedelta(seconds=10)


class AzureWorker:
    """One worker process's share of a task hub: queue runners plus the repair sweep."""

    def __init__(
        self,
        registry: Registry,
        backend: AzureBackend,
        options: DurableTaskOptions,
        *,
        repair_interval: timedelta = REPAIR_INTERVAL,
    ) -> None:
        self.backend = backend
        self.options = options
        self.handlers = DurableHandlers(registry, backend, options)
        self.engine = self.handlers.engine
        self.slots = self.handlers.slots
        self.repair_interval = repair_interval
        self.runners: dict[str, QueueTriggerRunner] = {}
        self._repair_task: asyncio.Task[None] | None = None

    def _queue_options(self, batch: int, max_concurrency: int) -> QueueTriggerOptions:
        opts = self.options
        return QueueTriggerOptions(
            batch_size=max(1, min(32, batch, max_concurrency)),
            max_dequeue_count=opts.queues.max_dequeue_count,
            max_polling_interval=opts.max_queue_polling_interval,
            visibility_timeout=opts.queues.visibility_timeout,
            # a message being handled is held like any other work: back on the queue a lease
            # after this process dies, not after the 10 minutes the Functions host uses
            message_lease=self.backend.lease.duration,
        )

    async def start(self) -> None:
        """Create the hub if needed (waiting for storage if it is away) and start polling."""
        await persist(f"creating task hub {self.options.hub_name}", self.backend.create_task_hub)
        opts = self.options
        control_opts = self._queue_options(
            opts.control_queue_batch_size, opts.max_concurrent_orchestrator_functions
        )
        for queue in self.backend.control_queues:
            self.runners[queue.queue_name] = QueueTriggerRunner(
                queue,
                self.handlers.on_control,
                control_opts,
                on_poison=self.handlers.on_control_poison,
                name=queue.queue_name,
            )
        work_opts = self._queue_options(
            opts.max_concurrent_activity_functions, opts.max_concurrent_activity_functions
        )
        self.runners[self.backend.workitems.queue_name] = QueueTriggerRunner(
            self.backend.workitems,
            self.handlers.on_work_item,
            work_opts,
            on_poison=self.handlers.on_work_item_poison,
            name=self.backend.workitems.queue_name,
        )
        self.backend.on_enqueue = self._wake
        self.handlers.attach()
        for runner in self.runners.values():
            await runner.start()
        if self.repair_interval > timedelta(0):
            self._repair_task = asyncio.ensure_future(self._repair_loop())

    def _wake(self, queue_name: str) -> None:
        runner = self.runners.get(queue_name)
        if runner is not None:
            runner.wake()

    async def _repair_loop(self) -> None:
        while True:
            await asyncio.sleep(self.repair_interval.total_seconds())
            try:
                await self.backend.repair()
            except Exception:  # the sweep must outlive a storage hiccup
                log.exception("repair sweep failed")

    async def stop(self) -> None:
        """Stop polling and wait for running handlers."""
        if self._repair_task is not None:
            self._repair_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._repair_task
        await asyncio.gather(*(runner.stop() for runner in self.runners.values()))
        await self.handlers.close()
        self.backend.on_enqueue = None

    async def __aenter__(self) -> AzureWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()


def backend_from_settings(
    connection: StorageConnection, options: DurableTaskOptions, settings: Mapping[str, str]
) -> tuple[AzureBackend, timedelta]:
    """The backend and sweep interval a local process uses, with the settings' overrides.

    ``DURABLE_EXT_LEASE`` (seconds, default 30) and ``DURABLE_EXT_REPAIR_INTERVAL``
    (seconds between sweeps, default 10; 0 turns the sweep off) shorten
    recovery in tests; ``DURABLE_EXT_FAULT`` injects crashes (``EnvFaults``).
    """
    lease = timedelta(seconds=float(settings.get("DURABLE_EXT_LEASE", LEASE.total_seconds())))
    interval = float(settings.get("DURABLE_EXT_REPAIR_INTERVAL", REPAIR_INTERVAL.total_seconds()))
    fault = EnvFaults(settings.get("DURABLE_EXT_FAULT", ""))
    return AzureBackend(connection, options, fault=fault, lease=lease), timedelta(seconds=interval)


async def serve(app_dir: str, stop: asyncio.Event | None = None) -> None:
    """Run one worker for the app in ``app_dir`` until ``stop`` is set (or forever)."""
    from ..backends.azure.connection import StorageCallCounter, resolve_connection
    from .loader import load_app, load_settings

    settings = load_settings(app_dir)
    app = load_app(app_dir)
    options = DurableTaskOptions.from_app_dir(app_dir, settings)
    counter = StorageCallCounter()
    connection = resolve_connection(settings, options.connection_name, counter=counter)
    backend, interval = backend_from_settings(connection, options, settings)
    stats_file = settings.get("DURABLE_EXT_STATS_FILE")
    stats_every = float(settings.get("DURABLE_EXT_STATS_INTERVAL", "0.5"))  # seconds between writes
    stop = stop or asyncio.Event()
    async with AzureWorker(app.registry, backend, options, repair_interval=interval) as worker:
        log.info("worker %d serving hub %s", os.getpid(), options.hub_name)
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), stats_every)
            if stats_file:
                _write_stats(stats_file, counter, worker)
    if stats_file:
        _write_stats(stats_file, counter, worker)
    await backend.close()


def _write_stats(path: str, counter: Any, worker: AzureWorker) -> None:
    data = {
        "storage": counter.snapshot(),
        "engine": worker.engine.stats,
        "handlers": worker.handlers.stats,
        "peak_activities": worker.slots.peak,
        "runners": {name: runner.stats() for name, runner in worker.runners.items()},
    }
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as out:
        out.write(orjson.dumps(data, default=str))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    """``python -m durable_ext.host.worker APP_DIR``: one worker process; SIGTERM stops it cleanly."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    app_dir = args[0] if args else "."
    logging.basicConfig(level=os.environ.get("DURABLE_EXT_LOG", "WARNING"))

    run_until_signalled(lambda stop: serve(app_dir, stop))
    exit_now(0)


__all__ = ["AzureWorker", "main", "serve"]

if __name__ == "__main__":
    main()
