"""``transactions.submit_transaction`` on Azurite: what the SDK's transactions do, and the same errors."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

import pytest
from azure.core import MatchConditions
from azure.data.tables import TableTransactionError, UpdateMode

from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.backends.azure.transactions import submit_transaction
from durable_ext.host.azurite import Azurite


@pytest.fixture
async def table(azurite: Azurite) -> AsyncIterator[Any]:
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    client = connection.table_service().get_table_client(f"Txn{uuid.uuid4().hex[:12]}")
    await client.create_table()
    yield client
    await client.delete_table()
    await connection.close()


def plain(entity: Any) -> dict[str, Any]:
    return {k: (bytes(v) if isinstance(v, bytes | bytearray) else v) for k, v in entity.items()}


async def test_every_operation_kind_in_one_transaction(table: Any) -> None:
    when = datetime(2026, 12, 1, 5, 30, 0, 123456, tzinfo=timezone.utc)
    await table.create_entity({"PartitionKey": "p", "RowKey": "gone"})
    guarded = await table.create_entity({"PartitionKey": "p", "RowKey": "sentinel", "N": 1})
    await table.create_entity({"PartitionKey": "p", "RowKey": "merged", "Keep": "yes"})
    ops = [
        (
            "create",
            {
                "PartitionKey": "p",
                "RowKey": "h-x'y %1",
                "D0": b"\x00\xffdata",
                "DN": 1,
                "At": when,
                "S": "é✓",
            },
        ),
        ("upsert", {"PartitionKey": "p", "RowKey": "fresh"}, {"mode": UpdateMode.REPLACE}),
        ("upsert", {"PartitionKey": "p", "RowKey": "merged", "More": 2}),
        ("delete", {"PartitionKey": "p", "RowKey": "gone"}),
        (
            "update",
            {"PartitionKey": "p", "RowKey": "sentinel", "N": 2, "Gone": None},
            {
                "mode": UpdateMode.REPLACE,
                "etag": guarded["etag"],
                "match_condition": MatchConditions.IfNotModified,
            },
        ),
    ]
    results = await submit_transaction(table, ops)
    assert len(results) == len(ops)
    rows = {e["RowKey"]: e async for e in table.list_entities()}
    assert sorted(rows) == ["fresh", "h-x'y %1", "merged", "sentinel"]
    created = plain(rows["h-x'y %1"])
    assert created["D0"] == b"\x00\xffdata" and created["DN"] == 1 and created["S"] == "é✓"
    assert created["At"] == when
    assert plain(rows["merged"])["Keep"] == "yes" and rows["merged"]["More"] == 2
    assert rows["sentinel"]["N"] == 2 and "Gone" not in rows["sentinel"]
    # the ETag handed back is the row's: a guarded update with it succeeds
    assert results[4]["etag"] == rows["sentinel"].metadata["etag"]
    assert results[0]["etag"] == rows["h-x'y %1"].metadata["etag"]


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ("stale", "UpdateConditionNotSatisfied"),
        ("exists", "EntityAlreadyExists"),
        ("missing", "ResourceNotFound"),
    ],
)
async def test_a_rejected_transaction_applies_nothing_and_says_why(table: Any, bad: str, code: str) -> None:
    first = await table.create_entity({"PartitionKey": "p", "RowKey": "sentinel", "N": 1})
    await table.update_entity({"PartitionKey": "p", "RowKey": "sentinel", "N": 2})
    failing = {
        "stale": (
            "update",
            {"PartitionKey": "p", "RowKey": "sentinel", "N": 3},
            {
                "mode": UpdateMode.REPLACE,
                "etag": first["etag"],
                "match_condition": MatchConditions.IfNotModified,
            },
        ),
        "exists": ("create", {"PartitionKey": "p", "RowKey": "sentinel"}),
        "missing": ("delete", {"PartitionKey": "p", "RowKey": "nothing"}),
    }[bad]
    with pytest.raises(TableTransactionError) as raised:
        await submit_transaction(table, [("create", {"PartitionKey": "p", "RowKey": "h-1"}), failing])
    assert raised.value.error_code == code, raised.value
    assert sorted([e["RowKey"] async for e in table.list_entities()]) == ["sentinel"]
