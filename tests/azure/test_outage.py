"""Storage goes away mid-run and comes back: the worker is stepping again within seconds, nothing lost.

Azurite is stopped with SIGTERM (it saves its data first; a SIGKILLed
Azurite loses up to 5 s of acknowledged writes) while a chain of activities
runs, kept down for 10 s (one worker) or 60 s (two workers, longer than a
lease), and started again on the same ports and data.
Every call made meanwhile fails after the retry policy's bounded attempts;
the queue runners poll again within a second while receives fail.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import time
from pathlib import Path

import pytest

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.config import DurableTaskOptions
from durable_ext.host.azurite import Azurite
from durable_ext.host.worker import AzureWorker

app = df.DurableApp()
BOUND_S = 5.0  # from storage back to the next committed step (the target is 2 s)
RUNS: collections.Counter[int] = collections.Counter()  # activity runs per input


@app.orchestration_trigger(context_name="context")
def chain(context: df.DurableOrchestrationContext):
    """``n`` activities in a row."""
    total = 0
    for n in range(context.get_input()):
        total += yield context.call_activity("tick", n)
    return total


@app.activity_trigger(input_name="value")
async def tick(value: int) -> int:
    """A short activity."""
    RUNS[value] += 1
    await asyncio.sleep(0.02)
    return value


@pytest.mark.parametrize(("outage_s", "workers"), [(10.0, 1), (60.0, 2)])
async def test_storage_stopped_mid_run(tmp_path: Path, outage_s: float, workers: int) -> None:
    """Default settings. With 60 s down every lease has run out when storage returns: the workers
    renew theirs before anyone may judge them, so nobody takes live work over."""
    emulator = Azurite(data_dir=tmp_path / "azurite")
    await asyncio.to_thread(emulator.start)
    doc = {"version": "2.0", "extensions": {"durableTask": {"hubName": f"Outage{os.getpid()}"}}}
    options = DurableTaskOptions.from_host_json(doc, {})
    connection_string = emulator.connection_string
    backends = [
        AzureBackend(resolve_connection({"AzureWebJobsStorage": connection_string}), options)
        for _ in range(workers)
    ]
    client = DurableOrchestrationClient(backends[0])
    RUNS.clear()
    try:
        await backends[0].create_task_hub()
        async with contextlib.AsyncExitStack() as stack:
            running = [
                await stack.enter_async_context(AzureWorker(app.registry, b, options)) for b in backends
            ]

            def steps() -> int:
                return sum(w.engine.stats["steps"] for w in running)

            iid = await client.start_new("chain", "outage-1", 400)
            while steps() < 20:  # well under way
                await asyncio.sleep(0.05)
            await asyncio.to_thread(emulator.stop, False)  # SIGTERM: Azurite saves its data first
            await asyncio.sleep(outage_s)
            before = steps()
            await asyncio.to_thread(emulator.start)
            back = time.monotonic()
            while steps() == before:
                assert time.monotonic() - back < 60, "no step committed a minute after storage came back"
                await asyncio.sleep(0.02)
            first_step_s = time.monotonic() - back
            status = await client.wait_for_completion(iid, timeout=180)
            repairs = [await b.repair() for b in backends]
        print(f"\nstorage back after {outage_s:.0f} s: first step committed {first_step_s:.2f} s later")
        assert status.runtime_status == Status.Completed and status.output == sum(range(400))
        assert first_step_s < BOUND_S, f"the first step after the outage took {first_step_s:.1f} s"
        assert repairs == [0] * workers and [b.repairs for b in backends] == [0] * workers
        assert [b.lease.taken_over for b in backends] == [0] * workers, "live work was taken over"
        assert sorted(RUNS) == list(range(400))
        # an activity cut off by the outage may run again (its result could not be delivered)
        assert sum(RUNS.values()) - 400 <= workers, RUNS.most_common(3)
    finally:
        for backend in backends:
            await backend.close()
        emulator.stop()
