"""Storage connection resolution (every settings form) and request counting against a real Azurite."""

from __future__ import annotations

import random
import time
import uuid

import pytest
from aiohttp import web
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.data.tables.aio import TableServiceClient
from azure.identity.aio import ClientSecretCredential, DefaultAzureCredential, ManagedIdentityCredential
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue.aio import QueueServiceClient

from durable_ext.backends.azure.connection import (
    DEVSTORE_ACCOUNT,
    DEVSTORE_KEY,
    RETRY_CAP_S,
    RETRY_TOTAL,
    StorageCallCounter,
    StorageConnection,
    resolve_connection,
    retry_backoff,
)
from durable_ext.config import ConfigError
from durable_ext.host.azurite import Azurite, free_port

KEY = "a2V5"  # any base64 will do: nothing here is sent


def urls(conn: StorageConnection) -> tuple[str, str, str]:
    return conn.table_url, conn.queue_url, conn.blob_url


# --------------------------------------------------------------------------- connection strings


def test_use_development_storage_means_local_azurite() -> None:
    conn = resolve_connection({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert urls(conn) == (
        "http://127.0.0.1:10002/devstoreaccount1",
        "http://127.0.0.1:10001/devstoreaccount1",
        "http://127.0.0.1:10000/devstoreaccount1",
    )
    assert isinstance(conn.credential, AzureNamedKeyCredential)
    assert conn.credential.named_key == (DEVSTORE_ACCOUNT, DEVSTORE_KEY)
    assert conn.source == "AzureWebJobsStorage" and conn.account_name == DEVSTORE_ACCOUNT
    assert not conn.uses_identity


def test_development_storage_proxy_uri_keeps_the_emulator_ports() -> None:
    conn = resolve_connection(
        {"AzureWebJobsStorage": "UseDevelopmentStorage=True;DevelopmentStorageProxyUri=https://devbox:8080"}
    )
    assert urls(conn) == (
        "https://devbox:10002/devstoreaccount1",
        "https://devbox:10001/devstoreaccount1",
        "https://devbox:10000/devstoreaccount1",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("UseDevelopmentStorage=false", "must be 'true'"),
        ("UseDevelopmentStorage=true;AccountName=x", "only DevelopmentStorageProxyUri"),
        ("UseDevelopmentStorage=true;DevelopmentStorageProxyUri=devbox", "not an absolute URI"),
        ("AccountName=acct", "neither AccountName\\+AccountKey nor SharedAccessSignature"),
        ("BlobEndpoint=https://b;SharedAccessSignature=sv=1", "no endpoint for TableEndpoint, QueueEndpoint"),
        ("AccountName=acct;garbage", "malformed connection string segment 'garbage'"),
    ],
)
def test_bad_connection_strings_name_the_setting(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"AzureWebJobsStorage: .*{message}"):
        resolve_connection({"AzureWebJobsStorage": value})


def test_account_key_connection_string() -> None:
    conn = resolve_connection(
        {
            "AzureWebJobsStorage": f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={KEY};"
            "EndpointSuffix=core.chinacloudapi.cn"
        }
    )
    assert urls(conn) == (
        "https://acct.table.core.chinacloudapi.cn",
        "https://acct.queue.core.chinacloudapi.cn",
        "https://acct.blob.core.chinacloudapi.cn",
    )
    assert conn.credential.named_key == ("acct", KEY)  # type: ignore[union-attr]
    assert conn.account_name == "acct"
    assert KEY not in repr(conn)


def test_explicit_endpoints_and_sas() -> None:
    conn = StorageConnection.from_connection_string(
        "TableEndpoint=https://t.example/;QueueEndpoint=https://q.example;"
        "BlobEndpoint=https://b.example;SharedAccessSignature=?sv=2024&sig=abc"
    )
    assert urls(conn) == ("https://t.example", "https://q.example", "https://b.example")
    assert isinstance(conn.credential, AzureSasCredential)
    assert conn.credential.signature == "sv=2024&sig=abc"


# --------------------------------------------------------------------------- where the host looks


def test_lookup_order_prefers_the_azurewebjobs_prefixed_name() -> None:
    settings = {
        "Storage": "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://plain",
        "AzureWebJobsStorage": "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://prefixed",
    }
    conn = resolve_connection(settings, "Storage")
    assert conn.blob_url.startswith("http://prefixed:") and conn.source == "AzureWebJobsStorage"


@pytest.mark.parametrize(
    "key",
    [
        "ConnectionStrings:MyStorage",
        "ConnectionStrings__MyStorage",
        "CUSTOMCONNSTR_MyStorage",
        "mystorage",
        "AzureWebJobsMyStorage",
    ],
)
def test_connection_strings_section_and_plain_settings(key: str) -> None:
    conn = resolve_connection({key: "UseDevelopmentStorage=true"}, "MyStorage")
    assert conn.blob_url == "http://127.0.0.1:10000/devstoreaccount1"


def test_connection_strings_section_wins_over_a_plain_setting() -> None:
    settings = {
        "MyStorage": "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://plain",
        "ConnectionStrings:MyStorage": "UseDevelopmentStorage=true;DevelopmentStorageProxyUri=http://section",
    }
    assert resolve_connection(settings, "MyStorage").blob_url.startswith("http://section:")


def test_nothing_configured_says_which_setting_to_add() -> None:
    with pytest.raises(
        ConfigError, match=r"'AzureWebJobsStorage'.*UseDevelopmentStorage=true.*__accountName"
    ):
        resolve_connection({"AzureWebJobsStorage": "", "Other": "x"})
    with pytest.raises(ConfigError, match="'MyStorage' is not configured"):
        resolve_connection({}, "MyStorage")


def test_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", "UseDevelopmentStorage=true")
    assert resolve_connection().table_url == "http://127.0.0.1:10002/devstoreaccount1"


# --------------------------------------------------------------------------- identity-based


async def test_account_name_uses_default_azure_credential() -> None:
    conn = resolve_connection({"AzureWebJobsStorage__accountName": "acct"})
    try:
        assert urls(conn) == (
            "https://acct.table.core.windows.net",
            "https://acct.queue.core.windows.net",
            "https://acct.blob.core.windows.net",
        )
        assert isinstance(conn.credential, DefaultAzureCredential) and conn.uses_identity
        assert conn.account_name == "acct"
    finally:
        await conn.close()
        await conn.close()  # the credential it created is closed once


async def test_service_uris_win_over_account_name() -> None:
    conn = resolve_connection(
        {
            "AzureWebJobsStorage:accountName": "acct",
            "AzureWebJobsStorage__tableServiceUri": "https://tables.example/",
        }
    )
    try:
        assert urls(conn) == (
            "https://tables.example",
            "https://acct.queue.core.windows.net",
            "https://acct.blob.core.windows.net",
        )
    finally:
        await conn.close()


async def test_managed_identity_with_client_id() -> None:
    settings = {
        "MyConn__tableServiceUri": "https://t.example",
        "MyConn__queueServiceUri": "https://q.example",
        "MyConn__blobServiceUri": "https://b.example",
        "MyConn__credential": "managedidentity",
        "MyConn__clientId": "00000000-0000-0000-0000-000000000001",
    }
    conn = resolve_connection(settings, "MyConn")
    try:
        assert urls(conn) == ("https://t.example", "https://q.example", "https://b.example")
        assert isinstance(conn.credential, ManagedIdentityCredential)
        assert conn.source == "MyConn"
    finally:
        await conn.close()


async def test_system_assigned_managed_identity() -> None:
    conn = resolve_connection(
        {"AzureWebJobsStorage__accountName": "a1", "AzureWebJobsStorage__credential": "ManagedIdentity"}
    )
    try:
        assert isinstance(conn.credential, ManagedIdentityCredential)
    finally:
        await conn.close()


async def test_client_id_without_managedidentity_stays_default_credential() -> None:
    # Microsoft.Extensions.Azure: a clientId alone sets DefaultAzureCredential's managed identity.
    conn = resolve_connection(
        {"AzureWebJobsStorage__accountName": "a1", "AzureWebJobsStorage__clientId": "id"}
    )
    try:
        assert isinstance(conn.credential, DefaultAzureCredential)
    finally:
        await conn.close()


async def test_client_secret_credential() -> None:
    settings = {
        "AzureWebJobsStorage__accountName": "a1",
        "AzureWebJobsStorage__tenantId": "t",
        "AzureWebJobsStorage__clientId": "c",
        "AzureWebJobsStorage__clientSecret": "s",
    }
    conn = resolve_connection(settings)
    try:
        assert isinstance(conn.credential, ClientSecretCredential)
    finally:
        await conn.close()


def test_identity_without_every_endpoint_is_rejected() -> None:
    with pytest.raises(
        ConfigError, match=r"AzureWebJobsStorage__queueServiceUri, AzureWebJobsStorage__blobServiceUri"
    ):
        resolve_connection({"AzureWebJobsStorage__tableServiceUri": "https://t.example"})
    with pytest.raises(ConfigError, match="not an absolute URI"):
        resolve_connection(
            {"AzureWebJobsStorage__accountName": "a", "AzureWebJobsStorage__blobServiceUri": "b"}
        )


# --------------------------------------------------------------------------- the counter


def test_counter_bookkeeping() -> None:
    counter = StorageCallCounter()
    assert counter.counts == {"table": 0, "queue": 0, "blob": 0} and counter.total == 0
    counter.policy("queue").on_request(None)  # type: ignore[arg-type]
    counter.policy("queue").on_request(None)  # type: ignore[arg-type]
    counter.policy("blob").on_request(None)  # type: ignore[arg-type]
    before = counter.snapshot()
    assert before == {"table": 0, "queue": 2, "blob": 1} and counter.total == 3
    counter.reset()
    assert counter.total == 0 and before["queue"] == 2
    with pytest.raises(ValueError):
        counter.policy("file")


# --------------------------------------------------------------------------- against Azurite


# The ``azurite`` fixture is the session-wide emulator of tests/azure/conftest.py: one Azurite for
# every Azure test instead of one per module. Names carry a random suffix so tests never collide.


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def test_resolved_connection_talks_to_azurite_and_counts_by_service(azurite: Azurite) -> None:
    counter = StorageCallCounter()
    async with resolve_connection(
        {"AzureWebJobsStorage": azurite.connection_string}, counter=counter
    ) as conn:
        tables = conn.table_service()
        assert isinstance(tables, TableServiceClient) and conn.table_service() is tables
        table_name = unique("ConnTest")
        await tables.create_table(table_name)
        assert table_name in [t.name async for t in tables.list_tables()]
        assert counter.snapshot() == {"table": 2, "queue": 0, "blob": 0}

        queues = conn.queue_service()
        assert isinstance(queues, QueueServiceClient) and conn.queue_service() is queues
        queue_name = unique("conn-test-")
        await queues.create_queue(queue_name)
        assert queue_name in [q.name async for q in queues.list_queues()]
        assert counter.snapshot() == {"table": 2, "queue": 2, "blob": 0}

        blobs = conn.blob_service()
        assert isinstance(blobs, BlobServiceClient) and conn.blob_service() is blobs
        container_name = unique("conn-test-")
        await blobs.create_container(container_name)
        assert container_name in [c.name async for c in blobs.list_containers()]
        assert counter.snapshot() == {"table": 2, "queue": 2, "blob": 2}
        assert counter.total == 6


async def test_derived_clients_are_counted_too(azurite: Azurite) -> None:
    counter = StorageCallCounter()
    conn = StorageConnection.from_connection_string(azurite.connection_string, counter=counter)
    try:
        table = conn.table_service().get_table_client(unique("ConnDerived"))
        await table.create_table()
        await table.submit_transaction(
            [("upsert", {"PartitionKey": "p", "RowKey": str(i), "n": i}) for i in range(3)]
        )
        assert [e["n"] async for e in table.query_entities("PartitionKey eq 'p'")] == [0, 1, 2]
        queue = conn.queue_service().get_queue_client(unique("conn-derived-"))
        await queue.create_queue()
        await queue.send_message("hello")
        container = conn.blob_service().get_container_client(unique("conn-derived-"))
        await container.create_container()
        await container.upload_blob("payload", b"x" * 10)
        # One request each: create, one batch for the transaction, one query page; create, send.
        assert counter.snapshot() == {"table": 3, "queue": 2, "blob": 2}
    finally:
        await conn.close()
        await conn.close()  # closing twice is harmless


async def test_connection_without_counter_works(azurite: Azurite) -> None:
    async with StorageConnection.from_connection_string(azurite.connection_string) as conn:
        name = unique("conn-plain-")
        queue = conn.queue_service().get_queue_client(name)
        await queue.create_queue()
        assert (await queue.get_queue_properties()).name == name


# --------------------------------------------------------------------------- retries


def test_retry_backoff_starts_at_once_and_stays_bounded() -> None:
    rng = random.Random(1)
    waits = [retry_backoff(n, rng) for n in range(1, RETRY_TOTAL + 1)]
    assert waits[0] == 0.0  # a dropped keep-alive connection is retried at once
    assert all(0 < w <= RETRY_CAP_S * 1.5 for w in waits[1:])
    assert sum(waits) < 25  # bounded: a real outage is reported, not waited out for minutes


@pytest.mark.parametrize("service", ["queue", "blob", "table"])
async def test_a_failing_call_is_retried_within_a_second(service: str) -> None:
    """A service that answers 503 twice: the third attempt succeeds well under a second later
    (the storage SDKs' own policy would first wait 15 s)."""
    attempts: list[float] = []

    async def flaky(request: web.Request) -> web.Response:
        attempts.append(time.monotonic())
        if len(attempts) <= 2:
            return web.Response(status=503, text="busy")
        if service == "table":
            return web.Response(status=204)  # the answer to a table delete
        return web.Response(status=200, headers={"x-ms-approximate-messages-count": "0"})

    server = web.Application()
    server.router.add_route("*", "/{tail:.*}", flaky)
    runner = web.AppRunner(server)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    account = "devstoreaccount1"
    urls = {n: f"http://127.0.0.1:{port}/{account}" for n in ("table_url", "queue_url", "blob_url")}
    conn = StorageConnection(**urls, credential=AzureNamedKeyCredential(account, "a2V5"), source="test")
    try:
        began = time.monotonic()
        if service == "queue":
            await conn.queue_service().get_queue_client("q").get_queue_properties()
        elif service == "blob":
            await conn.blob_service().get_container_client("c").get_container_properties()
        else:
            await conn.table_service().get_table_client("t").delete_table()
        elapsed = time.monotonic() - began
    finally:
        await conn.close()
        await runner.cleanup()
    assert len(attempts) == 3
    assert elapsed < 1.0, elapsed
