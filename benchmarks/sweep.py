"""What one repair sweep costs as the hub's history grows: it must not grow with it.

For each size in ``--rows`` the script fills a fresh hub on a private Azurite
with that many History rows (written directly, 500 rows per instance
partition, each holding one packed event, plus a sentinel), with two live
workers holding leases, then measures:

- ``sweep_entities_read`` / ``sweep_ms``: one sweep with no worker dead
  (it reads the lease rows, one per live worker);
- ``takeover_entities_read`` / ``takeover_ms``: one sweep after a worker died
  holding work on ``--held`` instances (its lease row, its index rows, and
  each held instance's inbox/outbox rows, never its history: the count
  includes those rows);
- ``history_scan_ms``: for comparison, one cross-partition query of History
  for overdue rows, which is what a sweep without leases has to do.

Figures are ``name: value`` lines per size, then ``sweep_growth`` (read at
the largest size over read at the smallest; 1.0 is flat) and ``PASS``, or
``FAIL <reasons>`` when the sweep read more at a bigger size or repaired
anything with no worker dead.

Usage: ``python benchmarks/sweep.py [--rows 10000,1000000] [--held 20]``;
``--quick`` is ``--rows 2000,20000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# benchmarks/azure.py beside this file must not shadow the ``azure`` namespace package
with contextlib.suppress(ValueError):
    sys.path.remove(str(Path(__file__).resolve().parent))

from azure.core.exceptions import ResourceExistsError  # noqa: E402

from durable_ext.backends.azure import rows as r  # noqa: E402
from durable_ext.backends.azure.backend import AzureBackend  # noqa: E402
from durable_ext.backends.azure.connection import resolve_connection  # noqa: E402
from durable_ext.backends.azure.leases import LEASES  # noqa: E402
from durable_ext.config import DurableTaskOptions  # noqa: E402
from durable_ext.core import history as h  # noqa: E402
from durable_ext.core.runtime import ActivityRequest  # noqa: E402
from durable_ext.host.azurite import Azurite  # noqa: E402

ROWS_PER_INSTANCE = 500
WRITERS = 16  # transactions in flight while filling


def backend_for(connection_string: str, hub: str) -> AzureBackend:
    """A backend on ``hub`` with its own connection, as one worker process has."""
    options = DurableTaskOptions.from_host_json({"extensions": {"durableTask": {"hubName": hub}}}, {})
    return AzureBackend(resolve_connection({"AzureWebJobsStorage": connection_string}), options)


async def fill(backend: AzureBackend, rows: int) -> float:
    """Write ``rows`` history rows (plus a sentinel per instance); seconds it took."""
    began = time.monotonic()
    stamp = h.format_timestamp(datetime.now(timezone.utc))
    event = h.task_completed(stamp, 1, '"x" ' * 20)
    packed = r.pack([event])
    queue: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue(maxsize=WRITERS * 2)

    async def writer() -> None:
        while (batch := await queue.get()) is not None:
            await backend.history.submit_transaction([("upsert", e) for e in batch])

    tasks = [asyncio.ensure_future(writer()) for _ in range(WRITERS)]
    for first in range(0, rows, ROWS_PER_INSTANCE):
        iid = f"fill-{first // ROWS_PER_INSTANCE:07d}"
        count = min(ROWS_PER_INSTANCE, rows - first)
        entities = [{"PartitionKey": iid, "RowKey": r.history_key("x", n), **packed} for n in range(count)]
        sentinel = {
            "PartitionKey": iid,
            "RowKey": r.SENTINEL,
            "RuntimeStatus": "Running",
            "HistoryLength": count,
        }
        entities.append(sentinel)
        for start in range(0, len(entities), r.MAX_TXN_OPS):
            await queue.put(entities[start : start + r.MAX_TXN_OPS])
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return time.monotonic() - began


async def dead_worker(backend: AzureBackend, held: int) -> str:
    """A worker that died holding an undispatched outbox on ``held`` instances: its lease expired."""
    owner = f"w{uuid.uuid4().hex[:20]}"
    now = datetime.now(timezone.utc)
    await backend.workers.create_entity(
        {"PartitionKey": LEASES, "RowKey": owner, "ExpiresAt": now - timedelta(seconds=1)}
    )
    for n in range(held):
        iid = f"fill-{n:07d}"
        await backend.workers.upsert_entity({"PartitionKey": owner, "RowKey": iid})
        with contextlib.suppress(ResourceExistsError):  # every held instance exists, whatever the fill
            sentinel = {"PartitionKey": iid, "RowKey": r.SENTINEL, "RuntimeStatus": "Running"}
            await backend.history.create_entity(sentinel)
        outbox = r.Outbox(uuid.uuid4().hex, [ActivityRequest(iid, "x", 10_000 + n, "noop", None)], [], False)
        entity = {"PartitionKey": iid, "RowKey": r.outbox_key(outbox.step_id), "Owner": owner}
        await backend.history.create_entity({**entity, **r.pack(outbox.to_json())})
    return owner


async def history_scan(backend: AzureBackend) -> float:
    """Milliseconds of one cross-partition query of History for overdue rows (none match)."""
    began = time.monotonic()
    flt = "(RowKey ge 'i-' and RowKey lt 'j' and Timestamp le @cutoff )"
    params = {"cutoff": datetime(2000, 1, 1, tzinfo=timezone.utc)}
    async for _ in backend.history.query_entities(flt, parameters=params):
        pass
    return (time.monotonic() - began) * 1000


async def measure(connection_string: str, rows: int, held: int) -> dict[str, float]:
    """Fill a fresh hub with ``rows`` history rows and time the sweeps; the figures."""
    hub = f"Sweep{uuid.uuid4().hex[:8]}"
    live = [backend_for(connection_string, hub) for _ in range(2)]
    sweeper = live[0]
    try:
        await sweeper.create_task_hub()
        fill_s = await fill(sweeper, rows)
        for backend in live:
            await backend.lease.start()
        repairs = await sweeper.repair()
        figures = {
            "fill_s": fill_s,
            "sweep_entities_read": sweeper.lease.sweep_entities_read,
            "sweep_ms": sweeper.lease.sweep_ms,
            "sweep_repairs": repairs,
        }
        await dead_worker(sweeper, held)
        taken = await sweeper.repair()
        figures.update(
            takeover_entities_read=sweeper.lease.sweep_entities_read,
            takeover_ms=sweeper.lease.sweep_ms,
            takeover_repairs=taken,
            history_scan_ms=await history_scan(sweeper),
        )
        return figures
    finally:
        with contextlib.suppress(Exception):
            await sweeper.delete_task_hub()
        for backend in live:
            await backend.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="10000,1000000", help="history sizes, comma-separated")
    parser.add_argument("--held", type=int, default=20, help="instances a dead worker held")
    parser.add_argument("--quick", action="store_true", help="sizes 2000 and 20000")
    args = parser.parse_args(argv)
    sizes = [2000, 20000] if args.quick else [int(x) for x in args.rows.split(",")]
    logging.getLogger("durable_ext").setLevel(logging.ERROR)  # the takeover logs each repair
    failures: list[str] = []
    reads: list[float] = []
    signal.signal(signal.SIGTERM, _interrupt)  # so that the emulator is stopped on the way out
    with Azurite(in_memory=True) as emulator:
        for rows in sizes:
            figures = asyncio.run(measure(emulator.connection_string, rows, args.held))
            for name, value in figures.items():
                print(
                    f"rows_{rows}_{name}: {value:.1f}"
                    if isinstance(value, float)
                    else f"rows_{rows}_{name}: {value}"
                )
            reads.append(figures["sweep_entities_read"] + figures["takeover_entities_read"])
            if figures["sweep_repairs"]:
                failures.append(f"{figures['sweep_repairs']} repairs with no worker dead at {rows} rows")
            if figures["takeover_repairs"] < args.held:
                failures.append(
                    f"the takeover repaired {figures['takeover_repairs']} of {args.held} at {rows} rows"
                )
    print(f"sweep_growth: {reads[-1] / reads[0]:.2f}")
    if reads[-1] > reads[0]:
        failures.append(
            f"a sweep read {reads[-1]:.0f} entities at {sizes[-1]} rows, {reads[0]:.0f} at {sizes[0]}"
        )
    print("PASS" if not failures else "FAIL " + "; ".join(failures))
    return 1 if failures else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
