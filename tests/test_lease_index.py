"""The bookkeeping of a worker lease's index rows under concurrent holds, against a fake table.

The index row of an instance must exist whenever work on it is held, and its
writes race with each other (two steps holding at once, a hold arriving while
the row is being deleted): no waiter may spin or return before the row is there.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from durable_ext.backends.azure import leases as leases_module
from durable_ext.backends.azure.leases import LEASES, WorkerLease


class Row(dict):  # type: ignore[type-arg]
    """A stored row, with its ETag where the SDK puts it."""

    metadata: dict[str, Any]


class FakeTable:
    """The table calls a lease makes, each taking a little while, with ETags and a log of writes."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.etags: dict[tuple[str, str], int] = {}
        self.claims = 0
        self.writes: list[tuple[str, str]] = []
        self.refuse = 0  # transactions to refuse, as storage away would

    async def _pause(self) -> None:
        await asyncio.sleep(0.01)

    def _store(self, entity: dict[str, Any]) -> dict[str, Any]:
        key = entity["PartitionKey"], entity["RowKey"]
        self.rows[key] = entity
        self.etags[key] = self.etags.get(key, 0) + 1
        return {"etag": str(self.etags[key])}

    async def create_entity(self, entity: dict[str, Any]) -> dict[str, Any]:
        await self._pause()
        return self._store(entity)

    async def upsert_entity(self, entity: dict[str, Any], mode: Any = None) -> dict[str, Any]:
        await self._pause()
        self.writes.append(("upsert", entity["RowKey"]))
        return self._store(entity)

    async def update_entity(self, entity: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        await self._pause()
        key = entity["PartitionKey"], entity["RowKey"]
        if key not in self.rows:
            raise ResourceNotFoundError("gone")
        if kwargs.get("etag") not in (None, str(self.etags.get(key, 0))):
            raise HttpResponseError("UpdateConditionNotSatisfied")
        self.rows[key].update(entity)
        self.etags[key] = self.etags.get(key, 0) + 1
        self.claims += "ClaimedBy" in entity
        return {"etag": str(self.etags[key])}

    async def query_entities(self, flt: str, parameters: dict[str, Any]) -> AsyncIterator[Row]:
        await self._pause()
        for (part, key), entity in list(self.rows.items()):
            if part == parameters["p"]:
                row = Row(entity)
                row.metadata = {"etag": str(self.etags.get((part, key), 0))}
                yield row

    async def delete_entity(self, partition: str, row: str, **kwargs: Any) -> None:
        await self._pause()
        if kwargs.get("etag") not in (None, str(self.etags.get((partition, row), 0))):
            raise HttpResponseError("UpdateConditionNotSatisfied")
        self.rows.pop((partition, row), None)
        self.writes.append(("delete", row))

    async def submit_transaction(self, ops: list[tuple[str, dict[str, Any]]]) -> None:
        await self._pause()
        if self.refuse:
            self.refuse -= 1
            raise ConnectionError("storage is away")
        for kind, entity in ops:
            key = entity["PartitionKey"], entity["RowKey"]
            if kind == "upsert":
                self.rows[key] = entity
            else:
                self.rows.pop(key)
            self.writes.append((kind, entity["RowKey"]))


async def no_recover(instance_id: str, owner: str) -> tuple[int, int]:
    return 0, 0


@pytest.fixture(autouse=True)
def fake_transactions(monkeypatch: pytest.MonkeyPatch) -> None:
    async def submit(table: FakeTable, ops: list[tuple[str, dict[str, Any]]]) -> None:
        await table.submit_transaction(ops)

    monkeypatch.setattr(leases_module, "submit_transaction", submit)


def index_rows(table: FakeTable, lease: WorkerLease) -> list[str]:
    return sorted(row for part, row in table.rows if part == lease.worker_id)


async def test_concurrent_holds_write_each_index_row_once() -> None:
    table = FakeTable()
    lease = WorkerLease(table, no_recover)
    await asyncio.wait_for(asyncio.gather(*(lease.hold(i) for i in "aaaaabbc")), 2)
    assert index_rows(table, lease) == ["a", "b", "c"]
    assert sorted(table.writes) == [("upsert", "a"), ("upsert", "b"), ("upsert", "c")]
    assert (LEASES, lease.worker_id) in table.rows
    await lease.close()


async def test_a_hold_during_the_delete_writes_the_row_again() -> None:
    table = FakeTable()
    lease = WorkerLease(table, no_recover)
    await lease.hold("a")
    lease.release("a")
    forgetting = asyncio.ensure_future(lease._forget_idle(0.0))
    await asyncio.sleep(0.001)  # the delete is in flight
    await asyncio.wait_for(lease.hold("a"), 2)
    await forgetting
    assert index_rows(table, lease) == ["a"], table.writes
    assert table.writes == [("upsert", "a"), ("delete", "a"), ("upsert", "a")]
    lease.release("a")
    await lease.close()  # nothing held: the index row and the lease row go
    assert table.rows == {}


async def test_a_failed_index_write_fails_every_hold_waiting_on_it_and_the_next_one_writes() -> None:
    table = FakeTable()
    lease = WorkerLease(table, no_recover)
    await lease.start()
    table.refuse = 1
    outcomes = await asyncio.gather(lease.hold("a"), lease.hold("a"), return_exceptions=True)
    assert [type(x) for x in outcomes] == [ConnectionError, ConnectionError]
    assert lease.held == 0  # a failed hold counts nothing
    await asyncio.wait_for(lease.hold("a"), 2)
    assert index_rows(table, lease) == ["a"]
    lease.release("a")
    await lease.close()


async def test_a_slow_takeover_keeps_renewing_its_short_claim() -> None:
    """A dead worker's lease is claimed for a third of a lease and the claim renewed while its
    instances are recovered, so a sweeper that dies mid-way holds up the next one only briefly."""
    table = FakeTable()
    expired = datetime.now(timezone.utc) - timedelta(seconds=1)
    table.rows[LEASES, "wdead"] = {"PartitionKey": LEASES, "RowKey": "wdead", "ExpiresAt": expired}
    for iid in ("a", "b", "c"):
        table.rows["wdead", iid] = {"PartitionKey": "wdead", "RowKey": iid}
    recovered: list[str] = []

    async def slow_recover(instance_id: str, owner: str) -> tuple[int, int]:
        assert owner == "wdead"
        await asyncio.sleep(0.6)  # longer than half the claim: it must be renewed in between
        recovered.append(instance_id)
        return 1, 2

    lease = WorkerLease(table, slow_recover, duration=timedelta(seconds=3))
    other = WorkerLease(table, no_recover, duration=timedelta(seconds=3))
    sweep = asyncio.ensure_future(lease.sweep())
    await asyncio.sleep(0.3)  # claimed by now: another sweeper finds it taken
    assert await other.sweep() == 0 and other.taken_over == 0
    assert await asyncio.wait_for(sweep, 10) == 3
    assert sorted(recovered) == ["a", "b", "c"]
    assert table.claims >= 3, "the claim was not renewed during the takeover"
    assert not [k for k in table.rows if "wdead" in k], table.rows
    assert lease.sweep_entities_read == 2 + 3 + 3 * 2  # two leases, three index rows, what recover read
    await lease.close()
    await other.close()
