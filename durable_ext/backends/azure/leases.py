"""Worker leases: which process holds which instance's in-flight work, and who takes over a dead one's.

Every process that commits steps to a hub holds a lease row in ``{Hub}Workers``
(partition ``lease``, row key its worker id) and renews it every
``duration / 3``. Before it commits a step that leaves work in flight (an
``o-`` outbox row to dispatch, an ``o-…-l`` row of activities it runs itself)
it makes sure an index row ``(worker id, instance id)`` exists, and it deletes
that row a little after its last such work on the instance is done.

The sweep reads the lease partition (one row per live process) and, for each
lease that has run out, claims it (one ETag-guarded update: one sweeper per
dead worker), reads that worker's index partition and recovers each instance
it names (``recover(instance_id, worker_id)``, which says how many repairs
it made and how many rows it read). Nothing in it grows with history: with no
dead worker a sweep reads one row per live process.

A sweeper whose own renewal failed judges others only after renewing without
a gap for a whole ``duration`` again: after a storage outage every lease looks
expired, and the live ones get that long to renew before anyone takes their
work (they retry every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.data.tables import TableTransactionError, UpdateMode

from ...clock import Clock
from . import rows as r
from .transactions import submit_transaction

log = logging.getLogger("durable_ext.azure")

LEASE = timedelta(seconds=30)  # a process silent this long is taken for dead
LEASES = "lease"  # partition of the lease rows (worker ids start with "w")
IDLE_S = 2.0  # an instance's index row is deleted once its work has been done this long


def new_worker_id() -> str:
    """A fresh worker id (one per process start, and a new one after losing a lease)."""
    return f"w{uuid.uuid4().hex[:20]}"


class WorkerLease:
    """This process's lease in a hub, the index of instances it holds work for, and the sweep.

    ``hold``/``release`` count work per instance: the index row exists
    whenever the count is above 0 (``hold`` writes it first when needed).
    """

    def __init__(
        self,
        table: Any,
        recover: Callable[[str, str], Awaitable[tuple[int, int]]],
        *,
        clock: Clock | None = None,
        duration: timedelta = LEASE,
    ) -> None:
        self.table = table
        self.recover = recover
        self.clock = clock or Clock()
        self.duration = duration
        self.worker_id = new_worker_id()
        self._counts: dict[str, int] = {}
        self._idle: dict[str, float] = {}  # instance -> monotonic time its count fell to 0
        self._indexed: set[str] = set()
        self._writes: dict[str, asyncio.Future[None]] = {}  # index rows being created or deleted
        self._creates: list[str] = []  # index rows waiting to be created
        self._creating: asyncio.Future[None] | None = None
        self._etag: str | None = None
        self._started: asyncio.Future[None] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._steady_since: float | None = None  # monotonic time since which renewals never failed
        self.closed = False
        #: what the last sweep read and how long it took, and what sweeps took over in all
        self.sweep_entities_read = 0
        self.sweep_ms = 0.0
        self.taken_over = 0

    # ------------------------------------------------------------ holding

    async def hold(self, instance_id: str) -> None:
        """Count one piece of work on ``instance_id``; its index row exists when this returns."""
        self._counts[instance_id] = self._counts.get(instance_id, 0) + 1
        self._idle.pop(instance_id, None)
        try:
            await self._index(instance_id)
        except BaseException:
            self.release(instance_id)
            raise

    def add(self, instance_id: str, count: int) -> None:
        """Count more work on an instance already held (no write: its index row exists)."""
        if count:
            self._counts[instance_id] = self._counts.get(instance_id, 0) + count
            self._idle.pop(instance_id, None)

    def release(self, instance_id: str, count: int = 1) -> None:
        """Done with ``count`` pieces of work; the index row goes once none is left for a while."""
        left = self._counts.get(instance_id, 0) - count
        if left > 0:
            self._counts[instance_id] = left
            return
        self._counts.pop(instance_id, None)
        self._idle[instance_id] = time.monotonic()

    @property
    def held(self) -> int:
        """Instances with work counted now."""
        return len(self._counts)

    async def _index(self, instance_id: str) -> None:
        """Make sure the index row exists; creates that wait together go in one transaction."""
        while instance_id not in self._indexed:
            busy = self._writes.get(instance_id)
            if busy is None:
                await self.start()
                if instance_id in self._indexed or instance_id in self._writes:
                    continue
                busy = self._writes[instance_id] = asyncio.get_running_loop().create_future()
                self._creates.append(instance_id)
                if self._creating is None:
                    self._creating = asyncio.ensure_future(self._write_creates())
            await asyncio.shield(busy)  # a failed create raises; a delete never does

    async def _write_creates(self) -> None:
        """Write the waiting index rows, up to a transaction's worth at a time, until none waits.

        ``_writes``/``_indexed`` are settled before a waiter's future is, so a waiter
        that wakes up never finds its finished write still listed (and never spins)."""
        try:
            while self._creates:
                batch, self._creates = self._creates[: r.MAX_TXN_OPS], self._creates[r.MAX_TXN_OPS :]
                owner = self.worker_id
                ops = [("upsert", {"PartitionKey": owner, "RowKey": iid}) for iid in batch]
                try:
                    await submit_transaction(self.table, ops)
                    error: BaseException | None = None
                except Exception as exc:
                    error = exc
                for iid in batch:
                    future = self._writes.pop(iid)
                    if error is None:
                        self._indexed.add(iid)
                        future.set_result(None)
                    else:
                        future.set_exception(error)
                        future.exception()  # retrieved: every waiter gets it through its shield
        finally:
            self._creating = None

    async def _forget_idle(self, older_than: float) -> None:
        """Delete the index rows of instances whose work has been done for ``older_than`` seconds
        (in transactions of up to 100; kept, and tried again later, if storage refuses)."""
        now = time.monotonic()
        done = [i for i, t in self._idle.items() if now - t >= older_than and i not in self._counts]
        for iid in done:
            del self._idle[iid]
        done = [i for i in done if i in self._indexed and i not in self._writes]
        owner = self.worker_id
        for start in range(0, len(done), r.MAX_TXN_OPS):
            batch = done[start : start + r.MAX_TXN_OPS]
            future = asyncio.get_running_loop().create_future()
            for iid in batch:
                self._indexed.discard(iid)
                self._writes[iid] = future
            try:
                await self._delete_rows(owner, batch)
            except Exception as exc:
                log.warning("lease %s: deleting %d index rows failed (%s)", owner, len(batch), exc)
                if owner == self.worker_id:
                    self._indexed.update(batch)
                    self._idle.update(dict.fromkeys(batch, time.monotonic()))
            finally:
                for iid in batch:
                    self._writes.pop(iid, None)
                future.set_result(None)

    async def _delete_rows(self, partition: str, keys: list[str]) -> None:
        """Delete rows of one partition in one transaction (one by one if some are gone already)."""
        try:
            await submit_transaction(
                self.table, [("delete", {"PartitionKey": partition, "RowKey": k}) for k in keys]
            )
        except (TableTransactionError, ResourceNotFoundError):
            for key in keys:
                with contextlib.suppress(ResourceNotFoundError):
                    await self.table.delete_entity(partition, key)

    # -------------------------------------------------------------- lease

    async def start(self) -> None:
        """Write this process's lease row and start renewing it (once)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._create())
        try:
            await asyncio.shield(self._started)
        except BaseException:
            if self._started.done():
                self._started = None  # failed: the next caller tries again
            raise

    async def _create(self) -> None:
        entity = {
            "PartitionKey": LEASES,
            "RowKey": self.worker_id,
            "ExpiresAt": self.clock.now() + self.duration,
            "Host": socket.gethostname(),
            "Pid": os.getpid(),
        }
        meta = await self.table.create_entity(entity)
        self._etag = meta.get("etag")
        # a process that just wrote its lease sees storage as it is: it may judge others at once
        self._steady_since = time.monotonic() - self.duration.total_seconds()
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._keep())

    async def _keep(self) -> None:
        """Renew the lease every third of its duration; forget idle index rows in between."""
        beat = self.duration.total_seconds() / 3
        last = time.monotonic()
        while not self.closed:
            await asyncio.sleep(min(1.0, beat))
            try:
                await self._forget_idle(IDLE_S)
                if time.monotonic() - last >= beat:
                    await self._renew()
                    last = time.monotonic()  # a failed renewal is tried again a second later
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # storage away: keep trying; a sweeper may judge us meanwhile
                self._steady_since = None
                log.warning(
                    "lease %s: renewal failed (%s: %s); retrying", self.worker_id, type(exc).__name__, exc
                )

    async def _renew(self) -> None:
        entity = {
            "PartitionKey": LEASES,
            "RowKey": self.worker_id,
            "ExpiresAt": self.clock.now() + self.duration,
        }
        try:
            meta = await self.table.update_entity(
                entity, mode=UpdateMode.MERGE, etag=self._etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if not isinstance(exc, ResourceNotFoundError) and exc.status_code != 412:
                raise
            self._lost()
            await self._create()
            return
        self._etag = meta.get("etag")
        if self._steady_since is None:
            self._steady_since = time.monotonic()

    def _lost(self) -> None:
        """Another worker took this lease over (this process was silent too long): start afresh."""
        log.error(
            "lease %s was taken over after this process was silent for more than %ss; its work in "
            "flight was recovered elsewhere (activities that were running may run again)",
            self.worker_id,
            self.duration.total_seconds(),
        )
        self.worker_id = new_worker_id()
        self._indexed.clear()
        self._idle.clear()

    def steady(self) -> bool:
        """Whether this process's own renewals have held for a whole lease (it may judge others)."""
        since = self._steady_since
        return since is not None and time.monotonic() - since >= self.duration.total_seconds()

    async def close(self) -> None:
        """Stop renewing; give up the lease (expired at once if work is still held, so it is taken over)."""
        self.closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        if self._started is None or not self._started.done() or self._started.exception() is not None:
            return
        with contextlib.suppress(Exception):
            await self._forget_idle(0.0)
        guard = {"etag": self._etag, "match_condition": MatchConditions.IfNotModified}
        with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
            if self._counts or self._indexed:
                entity = {"PartitionKey": LEASES, "RowKey": self.worker_id, "ExpiresAt": self.clock.now()}
                await self.table.update_entity(entity, mode=UpdateMode.MERGE, **guard)
                log.warning(
                    "lease %s released with work on %d instances: a sweep takes it over",
                    self.worker_id,
                    len(self._counts or self._indexed),
                )
            else:
                await self.table.delete_entity(LEASES, self.worker_id, **guard)

    # -------------------------------------------------------------- sweep

    async def sweep(self) -> int:
        """Take over the work of every worker whose lease ran out; how many repairs that made."""
        began = time.monotonic()
        read = 0
        repairs = 0
        try:
            await self.start()
            now = self.clock.now()
            leases = [
                e async for e in self.table.query_entities("PartitionKey eq @p", parameters={"p": LEASES})
            ]
            read += len(leases)
            for lease in leases:
                owner = lease["RowKey"]
                if owner == self.worker_id or r.as_utc(lease.get("ExpiresAt")) > now:
                    continue
                if not self.steady():
                    break  # just back from an outage ourselves: give the others time to renew
                count, rows = await self._take_over(lease, now)
                repairs += count
                read += rows
        finally:
            self.sweep_entities_read = read
            self.sweep_ms = (time.monotonic() - began) * 1000
        return repairs

    async def _claim(self, owner: str, etag: str) -> str | None:
        """Claim (or keep claiming) a dead worker's lease for a short while; the new ETag, or None
        if it was renewed or claimed by another sweeper meanwhile.

        The claim is short (a third of a lease) and renewed while the takeover
        runs, so that a sweeper dying mid-takeover delays the next one briefly."""
        claim = {
            "PartitionKey": LEASES,
            "RowKey": owner,
            "ExpiresAt": self.clock.now() + self.duration / 3,
            "ClaimedBy": self.worker_id,
        }
        try:
            meta = await self.table.update_entity(
                claim, mode=UpdateMode.MERGE, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        except (ResourceNotFoundError, HttpResponseError):
            return None
        return str(meta.get("etag"))

    async def _take_over(self, lease: dict[str, Any], now: datetime) -> tuple[int, int]:
        """Claim a dead worker's lease, recover every instance it indexed, then delete it all."""
        owner = lease["RowKey"]
        etag = await self._claim(owner, lease.metadata["etag"])
        if etag is None:
            return 0, 0
        claimed = time.monotonic()
        rows = [e async for e in self.table.query_entities("PartitionKey eq @p", parameters={"p": owner})]
        log.warning(
            "lease of worker %s (pid %s on %s) ran out %.0fs ago: taking over its work on %d instances",
            owner,
            lease.get("Pid"),
            lease.get("Host"),
            (now - r.as_utc(lease.get("ExpiresAt"))).total_seconds(),
            len(rows),
        )
        repairs = 0
        read = len(rows)
        for row in rows:
            if time.monotonic() - claimed > self.duration.total_seconds() / 6:
                etag = await self._claim(owner, etag)
                if etag is None:
                    return repairs, read  # another sweeper has it now (ours ran out)
                claimed = time.monotonic()
            iid = row["RowKey"]
            count, rows_read = await self.recover(iid, owner)
            repairs += count
            read += rows_read
            with contextlib.suppress(ResourceNotFoundError):
                await self.table.delete_entity(owner, iid)
        with contextlib.suppress(ResourceNotFoundError, HttpResponseError):
            await self.table.delete_entity(
                LEASES, owner, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        self.taken_over += 1
        return repairs, read
