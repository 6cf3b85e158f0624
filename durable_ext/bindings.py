"""What the standard bindings ``DurableApp`` registers run when the Functions host invokes them.

``DurableRuntime`` holds the backend, the queue handlers, the durable client
and the management API of one process. On Azure it is built on the first
invocation from the app settings (``os.environ``) and host.json; the local
host (``durable_ext.host.server``) installs one that shares its worker's
backend with ``DurableApp.use_durable_runtime``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import DurableOrchestrationClient
from .config import ConfigError, DurableTaskOptions, _strip_json_comments

if TYPE_CHECKING:
    from .handlers import QueueMessage

log = logging.getLogger("durable_ext.bindings")

MANAGEMENT_FUNCTION = "durabletask_management"
WORKITEMS_FUNCTION = "durabletask_workitems"
REPAIR_FUNCTION = "durabletask_repair"
REPAIR_SCHEDULE = "*/10 * * * * *"  # NCRONTAB with seconds: every 10 s (reads a row per process)
MANAGEMENT_KEY_SETTING = "DURABLE_EXT_MANAGEMENT_KEY"


def control_function(index: int) -> str:
    """Name of the function that serves control queue ``index``."""
    return f"durabletask_control_{index:02d}"


def is_builtin_function(name: str) -> bool:
    """Whether ``name`` is one of the functions ``DurableApp`` registers itself."""
    return name.startswith("durabletask_")


#: host.json ``logging.logLevel`` values as Python logging levels
_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "information": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "none": logging.CRITICAL + 10,
}


def apply_log_levels(doc: Mapping[str, Any]) -> None:
    """Set Python log levels from host.json ``logging.logLevel``; the Azure SDK stays at Warning.

    The Python worker logs at Information, so without this every storage
    request and response of the Azure SDK would reach the host's log (and
    Application Insights). Keys naming Python loggers (``azure``,
    ``azure.core.pipeline``, ``durable_ext``, ``durable_ext.activity``, ...) set
    those loggers' levels; the host's own categories are left to the host.
    """
    logging.getLogger("azure").setLevel(logging.WARNING)
    section = doc.get("logging") if isinstance(doc.get("logging"), dict) else None
    levels = section.get("logLevel") if section else None
    if not isinstance(levels, dict):
        return
    for name, value in levels.items():
        if not any(name == root or name.startswith(f"{root}.") for root in ("azure", "durable_ext")):
            continue
        level = _LEVELS.get(str(value).lower())
        if level is None:
            log.warning("host.json logging.logLevel.%s: unknown level %r", name, value)
            continue
        logging.getLogger(name).setLevel(level)


@dataclass
class HostSettings:
    """What the bindings need from host.json at import time."""

    options: DurableTaskOptions
    route_prefix: str = "api"

    @property
    def management_base_path(self) -> str:
        """Path of the management API, e.g. ``/api/durabletask/``."""
        prefix = self.route_prefix.strip("/")
        return f"/{prefix}/durabletask/" if prefix else "/durabletask/"


def read_host_json(app_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """host.json of ``app_dir`` as a dict (empty when there is none)."""
    if app_dir is None:
        return {}
    path = Path(app_dir) / "host.json"
    if not path.is_file():
        return {}
    try:
        doc = json.loads(_strip_json_comments(path.read_text(encoding="utf-8-sig")))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
    return doc if isinstance(doc, dict) else {}


def route_prefix(doc: Mapping[str, Any], settings: Mapping[str, str] | None = None) -> str:
    """``extensions.http.routePrefix`` (default ``api``), with the host's env override."""
    settings = os.environ if settings is None else settings
    override = settings.get("AzureFunctionsJobHost__extensions__http__routePrefix")
    if override is not None:
        return override.strip("/")
    ext = doc.get("extensions") or {}
    http = ext.get("http") if isinstance(ext, dict) else None
    value = http.get("routePrefix") if isinstance(http, dict) else None
    return "api" if value is None else str(value).strip("/")


def load_host_settings(
    app_dir: str | os.PathLike[str] | None, settings: Mapping[str, str] | None = None
) -> HostSettings:
    """Options and route prefix of the app in ``app_dir`` (defaults without a host.json)."""
    settings = os.environ if settings is None else settings
    doc = read_host_json(app_dir)
    options = DurableTaskOptions.from_host_json(doc or {"version": "2.0"}, settings)
    apply_log_levels(doc)
    return HostSettings(options, route_prefix(doc, settings))


def queue_message(msg: Any) -> QueueMessage:
    """A ``func.QueueMessage`` (the host decodes base64 bodies) as the handlers' ``QueueMessage``."""
    from .handlers import QueueMessage

    body = msg.get_body()
    content = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    return QueueMessage(
        id=str(msg.id or ""),
        pop_receipt=str(getattr(msg, "pop_receipt", "") or ""),
        content=content,
        dequeue_count=int(getattr(msg, "dequeue_count", None) or 1),
        inserted_on=getattr(msg, "insertion_time", None),
    )


class DurableRuntime:
    """Backend, handlers, client and management API shared by the built-in functions of one process."""

    def __init__(
        self,
        registry: Any,
        host: HostSettings,
        backend: Any,
        handlers: Any,
        *,
        management_key: str | None = None,
        owned: bool = False,
    ) -> None:
        from .http_api import ManagementApi

        self.registry = registry
        self.host = host
        self.options = host.options
        self.backend = backend
        self.handlers = handlers
        self.owned = owned
        self.management_key = management_key
        self.api = ManagementApi(
            self.new_client(),
            base_path=host.management_base_path,
            registry=registry,
            task_hub=host.options.hub_name,
        )

    def new_client(self) -> DurableOrchestrationClient:
        """A durable client whose check-status URLs point at this app's management API."""
        client = DurableOrchestrationClient(self.backend)
        client.management_base_path = self.host.management_base_path
        client.management_function_key = self.management_key
        return client

    @classmethod
    async def from_settings(
        cls, registry: Any, host: HostSettings, settings: Mapping[str, str] | None = None
    ) -> DurableRuntime:
        """Build from app settings (default ``os.environ``), as on a stock Functions host."""
        from .backends.azure.backend import AzureBackend
        from .backends.azure.connection import resolve_connection
        from .handlers import DurableHandlers

        settings = dict(os.environ if settings is None else settings)
        options = host.options
        backend = AzureBackend(resolve_connection(settings, options.connection_name), options)
        await backend.create_task_hub()
        handlers = DurableHandlers(registry, backend, options)
        handlers.attach()  # activities, starts, events and timers of this process run here at once
        log.info("durable runtime ready for hub %s", options.hub_name)
        key = settings.get(MANAGEMENT_KEY_SETTING) or None
        return cls(registry, host, backend, handlers, management_key=key, owned=True)

    async def close(self) -> None:
        """Hand back in-process work and close the backend when this runtime created it."""
        if self.owned:
            await self.handlers.close()
            await self.backend.close()
