"""Storage goes away mid-run and comes back: the worker is stepping again within seconds, nothing lost.

Azurite is stopped with SIGTERM (it saves its data first; a SIGKILLed
Azurite loses up to 5 s of acknowledged writes) while a chain of activities
runs, kept down for 10 s, and started again on the same ports and data.
Every call made meanwhile fails after the retry policy's bounded attempts;
the queue runners poll again within a second while receives fail.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path

import durable_ext as df
from durable_ext import OrchestrationRuntimeStatus as Status
from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.client import DurableOrchestrationClient
from durable_ext.config import DurableTaskOptions
from durable_ext.host.azurite import Azurite
from durable_ext.host.worker import AzureWorker

app = df.DurableApp()
OUTAGE_S = 10.0
BOUND_S = 5.0  # from storage back to the next committed step (the target is 2 s)


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
    await asyncio.sleep(0.02)
    return value


async def test_storage_stopped_for_10_s_mid_run(tmp_path: Path) -> None:
    emulator = Azurite(data_dir=tmp_path / "azurite")
    await asyncio.to_thread(emulator.start)
    doc = {"version": "2.0", "extensions": {"durableTask": {"hubName": f"Outage{os.getpid()}"}}}
    options = DurableTaskOptions.from_host_json(doc, {})
    backend = AzureBackend(resolve_connection({"AzureWebJobsStorage": emulator.connection_string}), options)
    client = DurableOrchestrationClient(backend)
    try:
        await backend.create_task_hub()
        sweep = timedelta(seconds=30)
        async with AzureWorker(app.registry, backend, options, repair_interval=sweep) as worker:
            iid = await client.start_new("chain", "outage-1", 400)
            while worker.engine.stats["steps"] < 20:  # well under way
                await asyncio.sleep(0.05)
            await asyncio.sleep(5.5)  # past Azurite's 5 s save, so its data holds the progress so far
            await asyncio.to_thread(emulator.stop, False)
            await asyncio.sleep(OUTAGE_S)
            steps = worker.engine.stats["steps"]
            await asyncio.to_thread(emulator.start)
            back = time.monotonic()
            while worker.engine.stats["steps"] == steps:
                assert time.monotonic() - back < 60, "no step committed a minute after storage came back"
                await asyncio.sleep(0.02)
            first_step_s = time.monotonic() - back
            status = await client.wait_for_completion(iid, timeout=120)
        print(f"\nstorage back after {OUTAGE_S:.0f} s: first step committed {first_step_s:.2f} s later")
        assert status.runtime_status == Status.Completed and status.output == sum(range(400))
        assert first_step_s < BOUND_S, f"the first step after the outage took {first_step_s:.1f} s"
    finally:
        await backend.close()
        emulator.stop()
