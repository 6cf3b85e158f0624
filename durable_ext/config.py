"""Task-hub options read from host.json the way the Functions host and Durable Functions read them.

``DurableTaskOptions.from_host_json`` / ``from_app_dir`` give one frozen, validated
object; the module-level helpers name the task hub's storage resources with the
DTFx Azure Storage provider layout and place instance ids on control queues
exactly as DTFx does, so an app can share a task hub with the .NET extension.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from durable_ext.core.errors import DurableError

__all__ = [
    "DEFAULT_CONNECTION_NAME",
    "DEFAULT_HUB_NAME",
    "ConfigError",
    "DurableTaskOptions",
    "QueuesOptions",
    "control_queue",
    "fnv1a_32",
    "history_table",
    "instances_table",
    "large_messages_container",
    "parse_timespan",
    "partition_of",
    "validate_hub_name",
    "workitem_queue",
]

DEFAULT_HUB_NAME = "TestHubName"
DEFAULT_CONNECTION_NAME = "AzureWebJobsStorage"
HOST_ENV_PREFIX = "AzureFunctionsJobHost"
MIN_HUB_NAME = 3
MAX_HUB_NAME = 45
MAX_PARTITIONS = 16
MAX_QUEUE_BATCH = 32  # Azure Queues returns at most 32 messages per Get Messages call.
MAX_QUEUE_VISIBILITY = timedelta(days=7)  # Queue service limit for a visibility timeout.
MIN_QUEUE_POLLING = timedelta(milliseconds=100)  # QueuePollingIntervals.Minimum (WebJobs).


class ConfigError(DurableError, ValueError):
    """A setting is missing or out of range; the message names it and what is allowed."""


# --------------------------------------------------------------------------- TimeSpan


_TIMESPAN = re.compile(
    r"^\s*(?P<neg>-)?(?:(?P<days_only>\d+)|(?:(?P<days>\d+)\.)?(?P<h>\d+):(?P<m>\d+)"
    r"(?::(?P<s>\d+)(?:\.(?P<frac>\d{1,7}))?)?)\s*$"
)


def parse_timespan(value: str, setting: str = "value") -> timedelta:
    """Parse a .NET TimeSpan string (``d``, ``[d.]hh:mm[:ss[.fffffff]]``) as ``TimeSpan.Parse`` does.

    A bare integer means days, as in .NET; hours must be 0-23, minutes and seconds 0-59.
    """
    match = _TIMESPAN.match(value) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"{setting}: {value!r} is not a TimeSpan; use 'hh:mm:ss', 'd.hh:mm:ss' or 'hh:mm:ss.fff'"
        )
    if match["days_only"] is not None:
        result = timedelta(days=int(match["days_only"]))
    else:
        hours, minutes, seconds = int(match["h"]), int(match["m"]), int(match["s"] or 0)
        if hours > 23 or minutes > 59 or seconds > 59:
            raise ConfigError(
                f"{setting}: {value!r} is out of range (hours 0-23, minutes and seconds 0-59; "
                "write days as 'd.hh:mm:ss')"
            )
        frac = match["frac"] or ""
        ticks = int(frac.ljust(7, "0")) if frac else 0  # 100 ns ticks, up to 7 digits as .NET
        result = timedelta(
            days=int(match["days"] or 0),
            hours=hours,
            minutes=minutes,
            seconds=seconds,
            microseconds=ticks / 10,
        )
    return -result if match["neg"] else result


# --------------------------------------------------------------------------- host.json reading


def _strip_json_comments(text: str) -> str:
    """Drop // and /* */ comments and trailing commas, which the host's JSON reader tolerates."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("//", i):
            while i < n and text[i] not in "\r\n":
                i += 1
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(ch)
            i += 1
    return re.sub(r",(\s*[}\]])", r"\1", "".join(out))


def _get(section: Mapping[str, Any] | None, key: str) -> Any:
    """Case-insensitive key lookup, as .NET configuration keys are case-insensitive."""
    if not section:
        return None
    if key in section:
        return section[key]
    lowered = key.lower()
    for k, v in section.items():
        if isinstance(k, str) and k.lower() == lowered:
            return v
    return None


def _set_path(root: dict[str, Any], path: list[str], value: str) -> None:
    node = root
    for part in path[:-1]:
        child = _get(node, part)
        if not isinstance(child, dict):
            child = {}
            node[_existing_key(node, part)] = child
        node = child
    node[_existing_key(node, path[-1])] = value


def _existing_key(section: Mapping[str, Any], key: str) -> str:
    lowered = key.lower()
    return next((k for k in section if k.lower() == lowered), key)


def _apply_env_overrides(doc: dict[str, Any], settings: Mapping[str, str]) -> dict[str, Any]:
    """Layer ``AzureFunctionsJobHost__a__b`` app settings over host.json, as the host does."""
    prefix = HOST_ENV_PREFIX.lower()
    merged = copy.deepcopy(doc)
    for key, value in settings.items():
        parts = re.split(r"__|:", key)
        if len(parts) > 1 and parts[0].lower() == prefix and all(parts[1:]):
            _set_path(merged, parts[1:], value)
    return merged


def _resolve_percent(value: str, settings: Mapping[str, str]) -> str:
    """``%Name%`` as a whole string resolves to the app setting ``Name`` (INameResolver)."""
    match = re.fullmatch(r"%([^%]+)%", value)
    if match:
        resolved = _get(settings, match[1])
        if resolved is not None:
            return str(resolved)
    return value


def _int(
    section: Mapping[str, Any] | None, key: str, default: int, path: str, lo: int, hi: int | None
) -> int:
    raw = _get(section, key)
    if raw is None:
        value = default
    elif isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ConfigError(f"{path}: {raw!r} is not an integer")
    else:
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{path}: {raw!r} is not an integer") from None
    if value < lo or (hi is not None and value > hi):
        allowed = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
        raise ConfigError(f"{path} must be {allowed} (got {value})")
    return value


def _bool(section: Mapping[str, Any] | None, key: str, default: bool, path: str) -> bool:
    raw = _get(section, key)
    if raw is None:
        return default
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
        return raw.strip().lower() == "true"
    raise ConfigError(f"{path}: {raw!r} is not a boolean; use true or false")


def _span(
    section: Mapping[str, Any] | None,
    key: str,
    default: timedelta,
    path: str,
    lo: timedelta,
    hi: timedelta | None,
    lo_inclusive: bool = True,
) -> timedelta:
    raw = _get(section, key)
    if raw is None:
        value = default
    elif isinstance(raw, str):
        value = parse_timespan(raw, path)
    else:
        # .NET would read a JSON number as a TimeSpan of that many *days*; refuse rather than guess.
        raise ConfigError(f"{path}: {raw!r} must be a TimeSpan string such as '00:00:30'")
    too_low = value < lo if lo_inclusive else value <= lo
    if too_low or (hi is not None and value > hi):
        low = f"{'at least' if lo_inclusive else 'more than'} {_fmt(lo)}"
        allowed = f"{low} and at most {_fmt(hi)}" if hi is not None else low
        raise ConfigError(f"{path} must be {allowed} (got {_fmt(value)})")
    return value


def _fmt(span: timedelta) -> str:
    sign = "-" if span < timedelta(0) else ""
    span = abs(span)
    hours, rem = divmod(span.seconds, 3600)
    text = f"{hours:02d}:{rem // 60:02d}:{rem % 60:02d}"
    if span.microseconds:
        text += f".{span.microseconds:06d}".rstrip("0")
    return f"{sign}{span.days}.{text}" if span.days else f"{sign}{text}"


def _cpu_count() -> int:
    return os.cpu_count() or 1


def _is_dynamic_sku(settings: Mapping[str, str]) -> bool:
    sku = _get(settings, "WEBSITE_SKU")
    return isinstance(sku, str) and sku.lower() == "dynamic"


# --------------------------------------------------------------------------- hub names


_HUB_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*")


def validate_hub_name(hub_name: str, setting: str = "extensions.durableTask.hubName") -> str:
    """Return ``hub_name`` if Durable Functions accepts it, else raise ConfigError saying why.

    Letters and digits only, starting with a letter, 3-45 characters: the hub name
    prefixes table, queue and container names, which forbid anything else.
    """
    if not isinstance(hub_name, str) or not hub_name:
        raise ConfigError(f"A non-empty {setting} is required")
    if not (MIN_HUB_NAME <= len(hub_name) <= MAX_HUB_NAME) or not _HUB_NAME.fullmatch(hub_name):
        raise ConfigError(
            f"{setting}: task hub name {hub_name!r} should contain only alphanumeric characters, "
            f"start with a letter, and have length between {MIN_HUB_NAME} and {MAX_HUB_NAME}"
        )
    return hub_name


def _sanitize_default_hub_name(name: str) -> str:
    """AzureStorageOptions.IsSanitizedHubName: keep letters/digits, 't' before a digit, cut, pad."""
    chars = [c for c in name if c.isalpha() or c.isdecimal()]  # char.IsLetterOrDigit
    if not chars:
        return "DefaultTaskHub"
    if chars[0].isdecimal():
        chars.insert(0, "t")
    sanitized = "".join(chars[:MAX_HUB_NAME])
    return sanitized + "Hub" if len(sanitized) < MIN_HUB_NAME else sanitized


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class QueuesOptions:
    """``extensions.queues`` of host.json: the Functions queue-trigger settings (WebJobs QueuesOptions)."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_dequeue_count: int = 5
    visibility_timeout: timedelta = timedelta(0)
    max_polling_interval: timedelta = timedelta(minutes=1)

    @classmethod
    def from_section(
        cls, section: Mapping[str, Any] | None, settings: Mapping[str, str] | None = None
    ) -> QueuesOptions:
        """Read and validate an ``extensions.queues`` section (missing keys take host defaults)."""
        settings = os.environ if settings is None else settings
        p = "extensions.queues."
        batch = _int(section, "batchSize", 16, p + "batchSize", 1, MAX_QUEUE_BATCH)
        # Default (batchSize / 2) * processors, processors = 1 on the Consumption (Dynamic) SKU.
        processors = 1 if _is_dynamic_sku(settings) else _cpu_count()
        return cls(
            batch_size=batch,
            new_batch_threshold=_int(
                section, "newBatchThreshold", (batch // 2) * processors, p + "newBatchThreshold", 0, None
            ),
            max_dequeue_count=_int(section, "maxDequeueCount", 5, p + "maxDequeueCount", 1, None),
            visibility_timeout=_span(
                section,
                "visibilityTimeout",
                timedelta(0),
                p + "visibilityTimeout",
                timedelta(0),
                MAX_QUEUE_VISIBILITY,
            ),
            max_polling_interval=_span(
                section,
                "maxPollingInterval",
                timedelta(minutes=1),
                p + "maxPollingInterval",
                MIN_QUEUE_POLLING,
                None,
            ),
        )


@dataclass(frozen=True)
class DurableTaskOptions:
    """``extensions.durableTask`` (Azure Storage provider) plus the queue-trigger settings.

    Defaults and limits follow the Durable Functions extension and DTFx, so the same
    host.json behaves the same here and on a stock Functions host.
    """

    hub_name: str = DEFAULT_HUB_NAME
    partition_count: int = 4
    control_queue_batch_size: int = 32
    # Read for host.json compatibility with DTFx; durable_ext holds a message being handled, and
    # work kept in-process, under a worker lease of 30 s instead (docs/storage.md, "Leases").
    control_queue_visibility_timeout: timedelta = timedelta(minutes=5)
    work_item_queue_visibility_timeout: timedelta = timedelta(minutes=5)
    max_queue_polling_interval: timedelta = timedelta(seconds=30)
    connection_name: str = DEFAULT_CONNECTION_NAME
    max_concurrent_activity_functions: int = field(default_factory=lambda: 10 * _cpu_count())
    max_concurrent_orchestrator_functions: int = field(default_factory=lambda: 10 * _cpu_count())
    extended_sessions_enabled: bool = False
    default_version: str | None = None
    queues: QueuesOptions = field(default_factory=QueuesOptions)

    def __post_init__(self) -> None:
        validate_hub_name(self.hub_name)
        if not 1 <= self.partition_count <= MAX_PARTITIONS:
            raise ConfigError(
                f"extensions.durableTask.storageProvider.partitionCount must be between 1 and "
                f"{MAX_PARTITIONS} (got {self.partition_count})"
            )

    @classmethod
    def from_host_json(
        cls,
        source: str | os.PathLike[str] | Mapping[str, Any],
        settings: Mapping[str, str] | None = None,
    ) -> DurableTaskOptions:
        """Read options from a host.json path or its parsed dict.

        ``settings`` are the app settings (default: ``os.environ``): they supply
        ``WEBSITE_SITE_NAME`` for the default hub name, ``%Name%`` references and
        ``AzureFunctionsJobHost__...`` overrides, as on the Functions host.
        """
        settings = os.environ if settings is None else settings
        if isinstance(source, Mapping):
            doc: Any = dict(source)
        else:
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8-sig")
            except OSError as exc:
                raise ConfigError(f"cannot read host.json at {path}: {exc}") from exc
            try:
                doc = json.loads(_strip_json_comments(text))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError("host.json must contain a JSON object")
        doc = _apply_env_overrides(doc, settings)
        extensions = _section(doc, "extensions", "extensions")
        durable = _section(extensions, "durableTask", "extensions.durableTask")
        provider = _section(durable, "storageProvider", "extensions.durableTask.storageProvider")
        queues = _section(extensions, "queues", "extensions.queues")
        return cls._from_sections(durable, provider, queues, settings)

    @classmethod
    def from_app_dir(
        cls, app_dir: str | os.PathLike[str], settings: Mapping[str, str] | None = None
    ) -> DurableTaskOptions:
        """Read ``host.json`` from a function app folder (it must exist, as for the host)."""
        path = Path(app_dir) / "host.json"
        if not path.is_file():
            raise ConfigError(f"no host.json in {Path(app_dir)}; a function app folder needs one")
        return cls.from_host_json(path, settings)

    @classmethod
    def _from_sections(
        cls,
        durable: Mapping[str, Any],
        provider: Mapping[str, Any],
        queues: Mapping[str, Any],
        settings: Mapping[str, str],
    ) -> DurableTaskOptions:
        d = "extensions.durableTask."
        sp = d + "storageProvider."
        hub_name = _hub_name(durable, settings)
        connection = _get(provider, "connectionName") or _get(provider, "connectionStringName")
        if connection is not None and (not isinstance(connection, str) or not connection.strip()):
            raise ConfigError(f"{sp}connectionName must be the name of an app setting (got {connection!r})")
        flex = (_get(settings, "WEBSITE_SKU") or "").lower() == "flexconsumption"
        default_version = _get(durable, "defaultVersion")
        if default_version is not None and not isinstance(default_version, str):
            raise ConfigError(f"{d}defaultVersion must be a string (got {default_version!r})")
        concurrency = 10 * _cpu_count()
        return cls(
            hub_name=hub_name,
            partition_count=_int(provider, "partitionCount", 4, sp + "partitionCount", 1, MAX_PARTITIONS),
            control_queue_batch_size=_int(
                provider, "controlQueueBatchSize", 32, sp + "controlQueueBatchSize", 1, MAX_QUEUE_BATCH
            ),
            control_queue_visibility_timeout=_span(
                provider,
                "controlQueueVisibilityTimeout",
                timedelta(minutes=5),
                sp + "controlQueueVisibilityTimeout",
                timedelta(minutes=1),
                timedelta(minutes=60),
            ),
            work_item_queue_visibility_timeout=_span(
                provider,
                "workItemQueueVisibilityTimeout",
                timedelta(minutes=5),
                sp + "workItemQueueVisibilityTimeout",
                timedelta(0),
                MAX_QUEUE_VISIBILITY,
                lo_inclusive=False,
            ),
            max_queue_polling_interval=_span(
                provider,
                "maxQueuePollingInterval",
                timedelta(seconds=1) if flex else timedelta(seconds=30),
                sp + "maxQueuePollingInterval",
                timedelta(0),
                None,
                lo_inclusive=False,
            ),
            connection_name=(connection or DEFAULT_CONNECTION_NAME).strip(),
            max_concurrent_activity_functions=_int(
                durable,
                "maxConcurrentActivityFunctions",
                concurrency,
                d + "maxConcurrentActivityFunctions",
                1,
                None,
            ),
            max_concurrent_orchestrator_functions=_int(
                durable,
                "maxConcurrentOrchestratorFunctions",
                concurrency,
                d + "maxConcurrentOrchestratorFunctions",
                1,
                None,
            ),
            extended_sessions_enabled=_bool(
                durable, "extendedSessionsEnabled", False, d + "extendedSessionsEnabled"
            ),
            default_version=default_version or None,
            queues=QueuesOptions.from_section(queues, settings),
        )

    # Flat views of the queue-trigger settings, for code that reads them next to the hub's.

    @property
    def max_dequeue_count(self) -> int:
        """``extensions.queues.maxDequeueCount``: deliveries before a message is poison."""
        return self.queues.max_dequeue_count

    @property
    def queue_visibility_timeout(self) -> timedelta:
        """``extensions.queues.visibilityTimeout``: delay before a failed message is retried."""
        return self.queues.visibility_timeout

    # Resource names of this hub (DTFx Azure Storage provider layout).

    @property
    def instances_table(self) -> str:
        """Name of the Instances table."""
        return instances_table(self.hub_name)

    @property
    def history_table(self) -> str:
        """Name of the History table."""
        return history_table(self.hub_name)

    @property
    def workitem_queue(self) -> str:
        """Name of the work-item (activity) queue."""
        return workitem_queue(self.hub_name)

    @property
    def control_queues(self) -> list[str]:
        """Names of the control queues, partition 0 first."""
        return [control_queue(self.hub_name, i) for i in range(self.partition_count)]

    @property
    def large_messages_container(self) -> str:
        """Name of the blob container for payloads too large for a queue message or table cell."""
        return large_messages_container(self.hub_name)

    def control_queue_for(self, instance_id: str) -> str:
        """The control queue that carries messages for ``instance_id``."""
        return control_queue(self.hub_name, partition_of(instance_id, self.partition_count))


def _section(parent: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = _get(parent, key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path} must be a JSON object (got {value!r})")
    return value


def _hub_name(durable: Mapping[str, Any], settings: Mapping[str, str]) -> str:
    """Explicit hubName is resolved (%Name%) and validated; the default is sanitized instead."""
    raw = _get(durable, "hubName")
    if raw is None:
        site = _get(settings, "WEBSITE_SITE_NAME")
        return _sanitize_default_hub_name(site) if site else DEFAULT_HUB_NAME
    if not isinstance(raw, str):
        raise ConfigError(f"extensions.durableTask.hubName must be a string (got {raw!r})")
    resolved = _resolve_percent(raw, settings)
    if resolved != raw or not re.fullmatch(r"%[^%]+%", raw):
        return validate_hub_name(resolved)
    raise ConfigError(
        f"extensions.durableTask.hubName refers to app setting {raw[1:-1]!r}, which is not set; "
        "add it or put the hub name itself in host.json"
    )


# --------------------------------------------------------------------------- resource names


def instances_table(hub: str) -> str:
    """``{hub}Instances``: one row per orchestration instance."""
    return f"{hub}Instances"


def history_table(hub: str) -> str:
    """``{hub}History``: the history events of every instance."""
    return f"{hub}History"


def workers_table(hub: str) -> str:
    """``{hub}Workers``: the lease of each worker process and the instances it holds work for."""
    return f"{hub}Workers"


def control_queue(hub: str, index: int) -> str:
    """``{hub}-control-NN`` (lower case): orchestrator messages of partition ``index``."""
    return f"{hub.lower()}-control-{index:02d}"


def workitem_queue(hub: str) -> str:
    """``{hub}-workitems`` (lower case): activity messages, one queue for the whole hub."""
    return f"{hub.lower()}-workitems"


def large_messages_container(hub: str) -> str:
    """``{hub}-largemessages`` (lower case): blobs holding oversized payloads."""
    return f"{hub.lower()}-largemessages"


# --------------------------------------------------------------------------- partitioning

# Placement follows DTFx's Azure Storage provider exactly (Azure/durabletask):
#   AzureStorageOrchestrationService.GetControlQueueAsync(instanceId):
#       uint partitionIndex = Fnv1aHashHelper.ComputeHash(instanceId) % (uint)settings.PartitionCount;
#   Fnv1aHashHelper.ComputeHash(string value) (src/DurableTask.AzureStorage/Fnv1aHashHelper.cs, later
#   moved to DurableTask.Core/Common) hashes `(encoding ?? Encoding.UTF8).GetBytes(value)` with the
#   32-bit FNV-1a (offset basis 2166136261, prime 16777619, xor-then-multiply per byte, unchecked uint).
# So: UTF-8 (not UTF-16) bytes of the whole instance id, unsigned modulo the partition count. There is
# no special case for '!' in the Azure Storage provider: the "...!nn" explicit-placement suffix exists
# only in DurableTask.Netherite's GetPartitionId, so ids containing '!' are hashed like any other.
# .NET's Encoding.UTF8 replaces each lone surrogate with U+FFFD (bytes EF BF BD) instead of failing;
# _dotnet_utf8 reproduces that so every Python str maps to the partition .NET would choose.

FNV_OFFSET_BASIS = 2166136261
FNV_PRIME = 16777619


def fnv1a_32(data: bytes, seed: int = FNV_OFFSET_BASIS) -> int:
    """32-bit FNV-1a of ``data`` (DTFx Fnv1aHashHelper.ComputeHash(byte[], hash))."""
    value = seed
    for byte in data:
        value = ((value ^ byte) * FNV_PRIME) & 0xFFFFFFFF
    return value


def _dotnet_utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: pair what pairs, replace the rest with U+FFFD
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace").encode("utf-8")


def partition_of(instance_id: str, partition_count: int) -> int:
    """Control-queue partition of ``instance_id``: FNV-1a(UTF-8 bytes) mod ``partition_count`` as in DTFx."""
    if partition_count < 1:
        raise ConfigError(f"partition_count must be at least 1 (got {partition_count})")
    return fnv1a_32(_dotnet_utf8(instance_id)) % partition_count
