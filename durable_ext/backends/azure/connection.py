"""The storage account of a task hub, resolved from app settings as the Functions host does.

``resolve_connection`` reads a connection name (``AzureWebJobsStorage`` unless
host.json says otherwise) either as a connection string or as an identity-based
section (``{name}__accountName``, ``{name}__queueServiceUri``, ...). The
resulting ``StorageConnection`` hands out one async service client per storage
service, shared by every caller, and can count the HTTP requests each makes.
"""

from __future__ import annotations

import os
import random
from base64 import b64decode
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.credentials_async import AsyncTokenCredential
from azure.core.pipeline import PipelineRequest
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.data.tables.aio import TableServiceClient
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.blob.aio import ExponentialRetry as _BlobRetry
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue._shared.policies_async import ExponentialRetry as _QueueRetry  # no public name
from azure.storage.queue.aio import QueueServiceClient

from ...config import DEFAULT_CONNECTION_NAME, ConfigError

__all__ = [
    "DEVSTORE_ACCOUNT",
    "DEVSTORE_KEY",
    "SERVICES",
    "StorageCallCounter",
    "StorageConnection",
    "resolve_connection",
]

SERVICES = ("table", "queue", "blob")
DEVSTORE_ACCOUNT = "devstoreaccount1"
DEVSTORE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEVSTORE_PORTS = {"blob": 10000, "queue": 10001, "table": 10002}
_ENDPOINT_KEYS = {"table": "tableendpoint", "queue": "queueendpoint", "blob": "blobendpoint"}
# Azure App Service exposes typed connection strings with these prefixes; .NET configuration maps
# them to ConnectionStrings:{name}, which the host's lookup consults.
_CONNSTR_PREFIXES = ("CUSTOMCONNSTR_", "SQLAZURECONNSTR_", "SQLCONNSTR_", "MYSQLCONNSTR_")


# --------------------------------------------------------------------------- request counting


class _CountingPolicy(SansIOHTTPPolicy):  # type: ignore[type-arg]
    """Adds one to its service's count for every HTTP request that goes out."""

    def __init__(self, counter: StorageCallCounter, service: str) -> None:
        super().__init__()
        self._counter = counter
        self._service = service

    def on_request(self, request: PipelineRequest) -> None:  # type: ignore[type-arg]
        self._counter.counts[self._service] = self._counter.counts.get(self._service, 0) + 1


class StorageCallCounter:
    """Counts storage HTTP requests by service so a benchmark can report calls per operation.

    Every attempt is counted, retries included: each is a billed storage transaction.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(SERVICES, 0)

    @property
    def total(self) -> int:
        """Requests to all services together."""
        return sum(self.counts.values())

    def reset(self) -> None:
        """Set every count back to zero."""
        for service in list(self.counts):
            self.counts[service] = 0

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts, to subtract from a later snapshot."""
        return dict(self.counts)

    def policy(self, service: str) -> SansIOHTTPPolicy:  # type: ignore[type-arg]
        """A SansIOHTTPPolicy counting requests as ``service``, for pipelines built by hand.

        StorageConnection installs its ``on_request`` as the clients' ``raw_request_hook``.
        """
        if service not in SERVICES:
            raise ValueError(f"service must be one of {SERVICES}, not {service!r}")
        return _CountingPolicy(self, service)

    def __repr__(self) -> str:
        return f"StorageCallCounter({self.counts}, total={self.total})"


# --------------------------------------------------------------------------- base64 queue bodies


class LenientBase64DecodePolicy(TextBase64DecodePolicy):
    """Base64 bodies as the Functions host writes them; a body that is not base64 (or not UTF-8
    inside) is handed over as it is instead of failing the whole receive it came with."""

    def decode(self, content: str, response: Any) -> str:
        try:
            return b64decode(content.encode("utf-8"), validate=True).decode("utf-8")
        except (ValueError, TypeError):  # binascii.Error and UnicodeDecodeError are ValueErrors
            return content


# --------------------------------------------------------------------------- retries

#: Retries of one storage call. The storage SDKs wait 15 s (±3) before their first retry, so a
#: single dropped keep-alive connection ("Server disconnected", which Azurite and load balancers
#: cause routinely) stalled every caller sharing that call for 15-21 s. Here the first retry is
#: at once, then the wait grows fourfold up to a cap, with jitter; the total stays bounded.
RETRY_TOTAL = 10
RETRY_FIRST_S = 0.1
RETRY_CAP_S = 2.0


def retry_backoff(retry: int, rng: random.Random) -> float:
    """Seconds to wait before retry number ``retry`` (1 = the first): 0, then 0.1, 0.4, 1.6, 2, 2, ..."""
    if retry <= 1:
        return 0.0
    return min(RETRY_CAP_S, RETRY_FIRST_S * 4 ** (retry - 2)) * rng.uniform(0.5, 1.5)


_rng = random.Random()


class _QuickBackoff:
    """Mixed into a storage SDK's retry policy: its waits are ``retry_backoff``'s."""

    def get_backoff_time(self, settings: dict[str, Any]) -> float:
        return retry_backoff(int(settings["count"]), _rng)


class _QuickQueueRetry(_QuickBackoff, _QueueRetry):  # type: ignore[misc]
    """The queue SDK's retry policy with ``retry_backoff``."""


class _QuickBlobRetry(_QuickBackoff, _BlobRetry):  # type: ignore[misc]
    """The blob SDK's retry policy with ``retry_backoff``."""


#: every kind of failure gets the whole budget (the policies allow 3 refused connections by default)
_BUDGET = {
    "retry_total": RETRY_TOTAL,
    "retry_connect": RETRY_TOTAL,
    "retry_read": RETRY_TOTAL,
    "retry_status": RETRY_TOTAL,
}


def _retry_kwargs(service: str) -> dict[str, Any]:
    """The retry settings of one service's clients."""
    if service == "queue":
        return {"retry_policy": _QuickQueueRetry(**_BUDGET)}
    if service == "blob":
        return {"retry_policy": _QuickBlobRetry(**_BUDGET)}
    # tables use azure-core's policy: first retry at once, then factor * 2 ** (n - 1), capped
    return {**_BUDGET, "retry_backoff_factor": RETRY_FIRST_S, "retry_backoff_max": RETRY_CAP_S}


class _Base64QueueService(QueueServiceClient):
    """A QueueServiceClient whose queue clients read and write base64 bodies.

    ``QueueServiceClient.get_queue_client`` does not pass the service's message policies on,
    so they are given to every queue client here.
    """

    def get_queue_client(self, queue: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("message_encode_policy", TextBase64EncodePolicy())
        kwargs.setdefault("message_decode_policy", LenientBase64DecodePolicy())
        return super().get_queue_client(queue, **kwargs)


# --------------------------------------------------------------------------- the connection


class StorageConnection:
    """One storage account: its three service endpoints, a credential, and shared clients.

    ``credential`` is an ``AzureNamedKeyCredential`` / ``AzureSasCredential`` (connection
    strings) or an async token credential (identity-based); token credentials the
    connection created itself are closed with it.
    """

    def __init__(
        self,
        *,
        table_url: str,
        queue_url: str,
        blob_url: str,
        credential: AzureNamedKeyCredential | AzureSasCredential | AsyncTokenCredential,
        source: str = "",
        counter: StorageCallCounter | None = None,
        owns_credential: bool = False,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.table_url = table_url.rstrip("/")
        self.queue_url = queue_url.rstrip("/")
        self.blob_url = blob_url.rstrip("/")
        self.credential = credential
        self.source = source
        self.counter = counter
        self._owns_credential = owns_credential
        self._client_kwargs = dict(client_kwargs or {})
        self._table: TableServiceClient | None = None
        self._queue: QueueServiceClient | None = None
        self._blob: BlobServiceClient | None = None

    @classmethod
    def from_connection_string(
        cls,
        connection_string: str,
        *,
        counter: StorageCallCounter | None = None,
        source: str = "connection string",
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> StorageConnection:
        """Build a connection from a storage connection string (``UseDevelopmentStorage=true`` too)."""
        urls, credential = _parse_connection_string(connection_string, source)
        return cls(**urls, credential=credential, source=source, counter=counter, client_kwargs=client_kwargs)

    @property
    def uses_identity(self) -> bool:
        """Whether requests are authorised with Microsoft Entra tokens rather than a key or SAS."""
        return not isinstance(self.credential, (AzureNamedKeyCredential, AzureSasCredential))

    @property
    def account_name(self) -> str | None:
        """The account name when the key credential or endpoint shows it."""
        if isinstance(self.credential, AzureNamedKeyCredential):
            return self.credential.named_key.name
        parts = urlsplit(self.blob_url)
        host = parts.hostname or ""
        if host.count(".") >= 2 and not host.replace(".", "").isdigit():
            return host.split(".", 1)[0]
        path = parts.path.strip("/")
        return path.split("/", 1)[0] or None

    def _kwargs(self, service: str) -> dict[str, Any]:
        kwargs = {**_retry_kwargs(service), **self._client_kwargs}
        if self.counter is not None:
            # Installed as the clients' raw_request_hook: the one hook that tables, queues and blobs
            # all honour for the clients they derive (get_table_client, get_queue_client, ...). The
            # storage SDKs build their own pipelines and drop per_call_policies, and TableClients
            # made by get_table_client do not inherit them either. The hook runs after the retry
            # policy in all three SDKs, so every attempt is counted.
            count = self.counter.policy(service).on_request
            user_hook = kwargs.get("raw_request_hook")
            if user_hook is None:
                kwargs["raw_request_hook"] = count
            else:

                def both(request: PipelineRequest) -> None:  # type: ignore[type-arg]
                    count(request)
                    user_hook(request)

                kwargs["raw_request_hook"] = both
        return kwargs

    def table_service(self) -> TableServiceClient:
        """The account's async TableServiceClient, created on first use and then shared."""
        if self._table is None:
            self._table = TableServiceClient(
                self.table_url, credential=self.credential, **self._kwargs("table")
            )
        return self._table

    def queue_service(self) -> QueueServiceClient:
        """The account's async QueueServiceClient, created on first use and then shared."""
        if self._queue is None:
            # base64 bodies, as the Functions host's queue trigger expects by default
            self._queue = _Base64QueueService(
                self.queue_url, credential=self.credential, **self._kwargs("queue")
            )
        return self._queue

    def blob_service(self) -> BlobServiceClient:
        """The account's async BlobServiceClient, created on first use and then shared."""
        if self._blob is None:
            self._blob = BlobServiceClient(self.blob_url, credential=self.credential, **self._kwargs("blob"))
        return self._blob

    async def close(self) -> None:
        """Close the clients handed out (and a credential this connection created)."""
        clients = [self._table, self._queue, self._blob]
        self._table = self._queue = self._blob = None
        for client in clients:
            if client is not None:
                await client.close()
        if self._owns_credential:
            self._owns_credential = False  # close it once, however often close() is called
            close = getattr(self.credential, "close", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> StorageConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        kind = type(self.credential).__name__
        return (
            f"StorageConnection(source={self.source!r}, table={self.table_url!r}, "
            f"queue={self.queue_url!r}, blob={self.blob_url!r}, credential={kind})"
        )


# --------------------------------------------------------------------------- settings lookup


def _normalize(settings: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """Lower-cased keys with ``__`` read as ``:``, as .NET configuration does: key -> (original, value)."""
    out: dict[str, tuple[str, str]] = {}
    for key, value in settings.items():
        if value is None or not isinstance(key, str):
            continue
        name = key
        for prefix in _CONNSTR_PREFIXES:
            if name.upper().startswith(prefix):
                name = "ConnectionStrings:" + name[len(prefix) :]
                break
        out[name.replace("__", ":").lower()] = (key, str(value))
    return out


def _find_section(
    config: dict[str, tuple[str, str]], name: str
) -> tuple[str, str | None, dict[str, str]] | None:
    """The host's lookup (WebJobs GetWebJobsConnectionStringSection): the first section that exists of
    ``ConnectionStrings:AzureWebJobs{name}``, ``AzureWebJobs{name}``, ``ConnectionStrings:{name}``
    and ``{name}``. Returns (setting name as written, value, children by lower-cased key).
    """
    for base in (f"AzureWebJobs{name}", name):
        for candidate in (f"ConnectionStrings:{base}", base):
            key = candidate.lower()
            value = config.get(key)
            prefix = key + ":"
            children = {k[len(prefix) :]: v for k, (_, v) in config.items() if k.startswith(prefix)}
            children = {k: v for k, v in children.items() if v != ""}
            if (value is not None and value[1] != "") or children:
                shown = value[0] if value is not None else candidate.replace(":", "__")
                return shown, (value[1] if value is not None and value[1] != "" else None), children
    return None


def resolve_connection(
    settings: Mapping[str, str] | None = None,
    name: str = DEFAULT_CONNECTION_NAME,
    *,
    counter: StorageCallCounter | None = None,
    client_kwargs: Mapping[str, Any] | None = None,
) -> StorageConnection:
    """Resolve connection ``name`` from app settings (default ``os.environ``) as the Functions host does.

    A value is a connection string; otherwise ``{name}__accountName`` or
    ``{name}__{table,queue,blob}ServiceUri`` select identity-based access.
    """
    settings = os.environ if settings is None else settings
    name = name.strip() or DEFAULT_CONNECTION_NAME
    found = _find_section(_normalize(settings), name)
    if found is None:
        raise ConfigError(
            f"storage connection {name!r} is not configured: add the app setting {name!r} with a "
            f"connection string (locally 'UseDevelopmentStorage=true' for Azurite), or "
            f"'{name}__accountName' for identity-based access"
        )
    shown, value, children = found
    if value is not None:
        return StorageConnection.from_connection_string(
            value, counter=counter, source=shown, client_kwargs=client_kwargs
        )
    return _identity_connection(shown, children, counter, client_kwargs)


# --------------------------------------------------------------------------- connection strings


def _parse_connection_string(
    text: str, source: str
) -> tuple[dict[str, str], AzureNamedKeyCredential | AzureSasCredential]:
    parts: dict[str, str] = {}
    for segment in text.strip().split(";"):
        segment = segment.strip()
        if not segment:
            continue
        key, sep, value = segment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: malformed connection string segment {segment.split('=')[0]!r}")
        parts[key.strip().lower()] = value.strip()
    if "usedevelopmentstorage" in parts:
        return _development_storage(parts, source)

    account, key, sas = parts.get("accountname"), parts.get("accountkey"), parts.get("sharedaccesssignature")
    protocol = parts.get("defaultendpointsprotocol", "https").lower()
    suffix = parts.get("endpointsuffix", "core.windows.net")
    urls: dict[str, str] = {}
    missing = []
    for service in SERVICES:
        explicit = parts.get(_ENDPOINT_KEYS[service])
        if explicit:
            urls[f"{service}_url"] = explicit
        elif account:
            urls[f"{service}_url"] = f"{protocol}://{account}.{service}.{suffix}"
        else:
            missing.append(service.capitalize() + "Endpoint")
    if missing:
        raise ConfigError(
            f"{source}: connection string gives no endpoint for {', '.join(missing)}; "
            "add AccountName (with DefaultEndpointsProtocol) or the endpoints themselves"
        )
    if account and key:
        return urls, AzureNamedKeyCredential(account, key)
    if sas:
        return urls, AzureSasCredential(sas.lstrip("?"))
    raise ConfigError(
        f"{source}: connection string has neither AccountName+AccountKey nor SharedAccessSignature"
    )


def _development_storage(
    parts: dict[str, str], source: str
) -> tuple[dict[str, str], AzureNamedKeyCredential]:
    """``UseDevelopmentStorage=true``: Azurite on 10000-10002, via DevelopmentStorageProxyUri if set."""
    if parts["usedevelopmentstorage"].lower() != "true":
        raise ConfigError(f"{source}: UseDevelopmentStorage must be 'true'")
    extra = set(parts) - {"usedevelopmentstorage", "developmentstorageproxyuri"}
    if extra:
        raise ConfigError(
            f"{source}: UseDevelopmentStorage=true allows only DevelopmentStorageProxyUri besides it, "
            f"not {', '.join(sorted(extra))}"
        )
    scheme, host = "http", "127.0.0.1"
    proxy = parts.get("developmentstorageproxyuri")
    if proxy:
        # As the .NET SDKs: the proxy's scheme and host, with the emulator's standard ports.
        split = urlsplit(proxy)
        if not split.scheme or not split.hostname:
            raise ConfigError(f"{source}: DevelopmentStorageProxyUri {proxy!r} is not an absolute URI")
        scheme, host = split.scheme, split.hostname
    urls = {
        f"{service}_url": f"{scheme}://{host}:{DEVSTORE_PORTS[service]}/{DEVSTORE_ACCOUNT}"
        for service in SERVICES
    }
    return urls, AzureNamedKeyCredential(DEVSTORE_ACCOUNT, DEVSTORE_KEY)


# --------------------------------------------------------------------------- identity-based


def _identity_connection(
    shown: str,
    section: dict[str, str],
    counter: StorageCallCounter | None,
    client_kwargs: Mapping[str, Any] | None,
) -> StorageConnection:
    """``{name}__{service}ServiceUri`` wins over ``{name}__accountName`` (as the Durable extension)."""
    account = section.get("accountname")
    urls: dict[str, str] = {}
    missing = []
    for service in SERVICES:
        uri = section.get(f"{service}serviceuri")
        if uri:
            if not urlsplit(uri).scheme:
                raise ConfigError(f"{shown}__{service}ServiceUri: {uri!r} is not an absolute URI")
            urls[f"{service}_url"] = uri
        elif account:
            urls[f"{service}_url"] = f"https://{account}.{service}.core.windows.net"
        else:
            missing.append(f"{shown}__{service}ServiceUri")
    if missing:
        raise ConfigError(
            f"identity-based connection {shown!r} has no endpoint for {', '.join(missing)}; "
            f"set {shown}__accountName (or each service URI)"
        )
    return StorageConnection(
        **urls,
        credential=_token_credential(shown, section),
        source=shown,
        counter=counter,
        owns_credential=True,
        client_kwargs=client_kwargs,
    )


def _token_credential(shown: str, section: dict[str, str]) -> AsyncTokenCredential:
    """The credential Microsoft.Extensions.Azure's ClientFactory.CreateCredential picks for the section."""
    from azure.identity import aio as identity

    kind = (section.get("credential") or "").strip().lower()
    client_id = section.get("clientid")
    mi_client_id = section.get("managedidentityclientid")
    tenant_id = section.get("tenantid")
    if kind == "managedidentity":
        if client_id and mi_client_id:
            raise ConfigError(
                f"{shown}: set only one of {shown}__clientId and {shown}__managedIdentityClientId"
            )
        # System-assigned without an id; user-assigned with clientId.
        return identity.ManagedIdentityCredential(client_id=mi_client_id or client_id)
    if kind == "workloadidentity":
        return identity.WorkloadIdentityCredential(
            tenant_id=tenant_id, client_id=client_id, token_file_path=section.get("tokenfilepath")
        )
    secret = section.get("clientsecret")
    if tenant_id and client_id and secret:
        return identity.ClientSecretCredential(tenant_id, client_id, secret)
    user_assigned = mi_client_id or client_id
    if user_assigned:
        return identity.DefaultAzureCredential(managed_identity_client_id=user_assigned)
    return identity.DefaultAzureCredential()
