"""host.json options, TimeSpan parsing, task-hub resource names and DTFx partition placement."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from durable_ext.config import (
    ConfigError,
    DurableTaskOptions,
    QueuesOptions,
    control_queue,
    fnv1a_32,
    history_table,
    instances_table,
    large_messages_container,
    parse_timespan,
    partition_of,
    validate_hub_name,
    workitem_queue,
)
from durable_ext.core.errors import DurableError


def opts(durable: dict | None = None, provider: dict | None = None, queues: dict | None = None, **settings):
    """Options from a host.json built of these sections, with ``settings`` as the app settings."""
    durable = dict(durable or {})
    if provider is not None:
        durable["storageProvider"] = provider
    extensions: dict = {"durableTask": durable}
    if queues is not None:
        extensions["queues"] = queues
    return DurableTaskOptions.from_host_json({"version": "2.0", "extensions": extensions}, settings)


@pytest.fixture
def cpus(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("durable_ext.config.os.cpu_count", lambda: 3)
    return 3


# --------------------------------------------------------------------------- defaults


def test_defaults_match_durable_functions(cpus: int) -> None:
    o = DurableTaskOptions.from_host_json({}, {})
    assert o.hub_name == "TestHubName"
    assert o.partition_count == 4
    assert o.control_queue_batch_size == 32
    assert o.control_queue_visibility_timeout == timedelta(minutes=5)
    assert o.work_item_queue_visibility_timeout == timedelta(minutes=5)
    assert o.max_queue_polling_interval == timedelta(seconds=30)
    assert o.connection_name == "AzureWebJobsStorage"
    assert o.max_concurrent_activity_functions == 30
    assert o.max_concurrent_orchestrator_functions == 30
    assert o.extended_sessions_enabled is False
    assert o.default_version is None
    assert o.queues == QueuesOptions(
        batch_size=16,
        new_batch_threshold=8 * cpus,
        max_dequeue_count=5,
        visibility_timeout=timedelta(0),
        max_polling_interval=timedelta(minutes=1),
    )
    assert o.max_dequeue_count == 5 and o.queue_visibility_timeout == timedelta(0)


def test_flex_consumption_polls_every_second() -> None:
    assert opts(WEBSITE_SKU="FlexConsumption").max_queue_polling_interval == timedelta(seconds=1)


def test_new_batch_threshold_is_half_the_batch_per_processor(cpus: int) -> None:
    assert opts(queues={"batchSize": 10}).queues.new_batch_threshold == 5 * cpus
    assert opts(queues={"batchSize": 10}, WEBSITE_SKU="Dynamic").queues.new_batch_threshold == 5
    assert opts(queues={"batchSize": 10, "newBatchThreshold": 0}).queues.new_batch_threshold == 0


def test_reads_every_setting() -> None:
    o = opts(
        {
            "hubName": "MyHub1",
            "maxConcurrentActivityFunctions": 16,
            "maxConcurrentOrchestratorFunctions": "8",
            "extendedSessionsEnabled": "true",
            "defaultVersion": "1.2",
        },
        {
            "partitionCount": 16,
            "controlQueueBatchSize": 10,
            "controlQueueVisibilityTimeout": "00:01:00",
            "workItemQueueVisibilityTimeout": "00:00:30",
            "maxQueuePollingInterval": "00:00:00.5",
            "connectionName": "MyStorage",
        },
        {
            "batchSize": 32,
            "newBatchThreshold": 4,
            "maxDequeueCount": 2,
            "visibilityTimeout": "00:00:10",
            "maxPollingInterval": "00:00:02",
        },
    )
    assert (o.hub_name, o.partition_count, o.control_queue_batch_size) == ("MyHub1", 16, 10)
    assert o.control_queue_visibility_timeout == timedelta(minutes=1)
    assert o.work_item_queue_visibility_timeout == timedelta(seconds=30)
    assert o.max_queue_polling_interval == timedelta(milliseconds=500)
    assert o.connection_name == "MyStorage"
    assert (o.max_concurrent_activity_functions, o.max_concurrent_orchestrator_functions) == (16, 8)
    assert o.extended_sessions_enabled is True and o.default_version == "1.2"
    assert o.queues == QueuesOptions(32, 4, 2, timedelta(seconds=10), timedelta(seconds=2))


def test_keys_are_case_insensitive_like_dotnet_configuration() -> None:
    doc = {"Extensions": {"DurableTask": {"HubName": "CaseHub", "StorageProvider": {"PARTITIONCOUNT": 2}}}}
    o = DurableTaskOptions.from_host_json(doc, {})
    assert (o.hub_name, o.partition_count) == ("CaseHub", 2)


def test_connection_string_name_is_an_alias_and_connection_name_wins() -> None:
    assert opts(provider={"connectionStringName": "Old"}).connection_name == "Old"
    assert opts(provider={"connectionStringName": "Old", "connectionName": "New"}).connection_name == "New"


def test_frozen() -> None:
    o = DurableTaskOptions.from_host_json({}, {})
    with pytest.raises(AttributeError):
        o.partition_count = 5  # type: ignore[misc]


# --------------------------------------------------------------------------- files and overrides


def test_from_app_dir_reads_host_json_with_comments_and_trailing_commas(tmp_path) -> None:
    (tmp_path / "host.json").write_text(
        """{
          // the hub
          "version": "2.0",
          "extensions": {
            "durableTask": {
              "hubName": "FileHub", /* inline */
              "storageProvider": { "partitionCount": 2, },
            },
          },
        }"""
    )
    o = DurableTaskOptions.from_app_dir(tmp_path, {})
    assert (o.hub_name, o.partition_count) == ("FileHub", 2)
    assert DurableTaskOptions.from_host_json(tmp_path / "host.json", {}) == o


def test_comment_markers_inside_strings_are_kept(tmp_path) -> None:
    path = tmp_path / "host.json"
    doc = {"extensions": {"durableTask": {"hubName": "Hub1", "defaultVersion": "a//b/*c*/"}}}
    path.write_text(json.dumps(doc))
    assert DurableTaskOptions.from_host_json(path, {}).default_version == "a//b/*c*/"


def test_missing_or_broken_host_json_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"no host\.json"):
        DurableTaskOptions.from_app_dir(tmp_path, {})
    (tmp_path / "host.json").write_text("{ nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        DurableTaskOptions.from_app_dir(tmp_path, {})
    (tmp_path / "host.json").write_text("[]")
    with pytest.raises(ConfigError, match="JSON object"):
        DurableTaskOptions.from_app_dir(tmp_path, {})


def test_app_settings_override_host_json_as_on_the_host() -> None:
    settings = {
        "AzureFunctionsJobHost__extensions__durableTask__hubName": "EnvHub",
        "AzureFunctionsJobHost__extensions__durableTask__storageProvider__partitionCount": "3",
        "AzureFunctionsJobHost:extensions:queues:maxDequeueCount": "9",
    }
    o = opts({"hubName": "FileHub"}, {"partitionCount": 1}, **settings)
    assert (o.hub_name, o.partition_count, o.queues.max_dequeue_count) == ("EnvHub", 3, 9)


def test_hub_name_can_name_an_app_setting() -> None:
    assert opts({"hubName": "%MyHub%"}, MyHub="FromSetting").hub_name == "FromSetting"
    with pytest.raises(ConfigError, match="'MyHub', which is not set"):
        opts({"hubName": "%MyHub%"})


# --------------------------------------------------------------------------- hub names


@pytest.mark.parametrize(
    ("site", "hub"),
    [
        ("my-func-app", "myfuncapp"),
        ("1st-app", "t1stapp"),
        ("a-", "aHub"),
        ("--", "DefaultTaskHub"),
        ("x" * 60, "x" * 45),
    ],
)
def test_default_hub_name_is_the_sanitized_site_name(site: str, hub: str) -> None:
    assert opts(WEBSITE_SITE_NAME=site).hub_name == hub


@pytest.mark.parametrize("bad", ["ab", "1abc", "my-hub", "my_hub", "h" * 46, "hüb1"])
def test_invalid_explicit_hub_names_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"hubName.*alphanumeric.*start with a letter.*between 3 and 45"):
        opts({"hubName": bad})


def test_empty_hub_name_is_rejected() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        opts({"hubName": ""})


def test_hub_name_limits() -> None:
    assert validate_hub_name("abc") == "abc"
    assert validate_hub_name("A" + "1" * 44) == "A" + "1" * 44
    with pytest.raises(ConfigError):
        DurableTaskOptions(hub_name="no-dashes")


# --------------------------------------------------------------------------- range checks


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        ({"partitionCount": 0}, r"storageProvider\.partitionCount must be between 1 and 16 \(got 0\)"),
        ({"partitionCount": 17}, r"partitionCount must be between 1 and 16"),
        ({"partitionCount": "many"}, r"partitionCount: 'many' is not an integer"),
        ({"partitionCount": 2.5}, r"partitionCount: 2.5 is not an integer"),
        ({"controlQueueBatchSize": 33}, r"controlQueueBatchSize must be between 1 and 32"),
        ({"controlQueueVisibilityTimeout": "00:00:30"}, r"at least 00:01:00 and at most 01:00:00"),
        ({"controlQueueVisibilityTimeout": "02:00:00"}, r"controlQueueVisibilityTimeout must be"),
        ({"workItemQueueVisibilityTimeout": "00:00:00"}, r"more than 00:00:00 and at most 7\.00:00:00"),
        ({"maxQueuePollingInterval": "-00:00:01"}, r"maxQueuePollingInterval must be more than 00:00:00"),
        ({"maxQueuePollingInterval": 30}, r"must be a TimeSpan string"),
        ({"connectionName": 5}, r"connectionName must be the name of an app setting"),
    ],
)
def test_storage_provider_values_are_checked(provider: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        opts(provider=provider)


@pytest.mark.parametrize(
    ("durable", "message"),
    [
        ({"maxConcurrentActivityFunctions": 0}, r"maxConcurrentActivityFunctions must be at least 1"),
        (
            {"maxConcurrentOrchestratorFunctions": -1},
            r"maxConcurrentOrchestratorFunctions must be at least 1",
        ),
        ({"extendedSessionsEnabled": "yes"}, r"extendedSessionsEnabled: 'yes' is not a boolean"),
        ({"defaultVersion": 2}, r"defaultVersion must be a string"),
        ({"storageProvider": []}, r"storageProvider must be a JSON object"),
    ],
)
def test_durable_task_values_are_checked(durable: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        opts(durable)


@pytest.mark.parametrize(
    ("queues", "message"),
    [
        ({"batchSize": 0}, r"extensions\.queues\.batchSize must be between 1 and 32"),
        ({"batchSize": 33}, r"batchSize must be between 1 and 32"),
        ({"newBatchThreshold": -1}, r"newBatchThreshold must be at least 0"),
        ({"maxDequeueCount": 0}, r"maxDequeueCount must be at least 1"),
        ({"visibilityTimeout": "8.00:00:00"}, r"visibilityTimeout must be at least 00:00:00 and at most"),
        ({"maxPollingInterval": "00:00:00.05"}, r"maxPollingInterval must be at least 00:00:00\.1"),
    ],
)
def test_queue_values_are_checked(queues: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        opts(queues=queues)


def test_config_error_is_a_durable_error() -> None:
    assert issubclass(ConfigError, DurableError) and issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- TimeSpan


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:05:00", timedelta(minutes=5)),
        ("00:00:30", timedelta(seconds=30)),
        ("01:02", timedelta(hours=1, minutes=2)),
        ("1.02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("00:00:01.5", timedelta(seconds=1.5)),
        ("00:00:00.001", timedelta(milliseconds=1)),
        ("00:00:00.1234567", timedelta(microseconds=123457)),
        ("2.00:00:00.25", timedelta(days=2, milliseconds=250)),
        ("7", timedelta(days=7)),
        (" 00:00:10 ", timedelta(seconds=10)),
        ("-00:00:05", timedelta(seconds=-5)),
    ],
)
def test_parse_timespan(text: str, expected: timedelta) -> None:
    assert parse_timespan(text) == expected


@pytest.mark.parametrize(
    "text", ["24:00:00", "00:60:00", "00:00:60", "abc", "", "1:2:3:4", "00:00:00.12345678"]
)
def test_parse_timespan_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"setting\.x"):
        parse_timespan(text, "setting.x")


# --------------------------------------------------------------------------- resource names


def test_resource_names_follow_the_dtfx_layout() -> None:
    assert instances_table("MyHub") == "MyHubInstances"
    assert history_table("MyHub") == "MyHubHistory"
    assert control_queue("MyHub", 3) == "myhub-control-03"
    assert control_queue("MyHub", 12) == "myhub-control-12"
    assert workitem_queue("MyHub") == "myhub-workitems"
    assert large_messages_container("MyHub") == "myhub-largemessages"
    o = opts({"hubName": "MyHub"}, {"partitionCount": 2})
    assert o.control_queues == ["myhub-control-00", "myhub-control-01"]
    assert (o.instances_table, o.history_table) == ("MyHubInstances", "MyHubHistory")
    assert (o.workitem_queue, o.large_messages_container) == ("myhub-workitems", "myhub-largemessages")


def test_longest_hub_name_keeps_every_resource_name_valid() -> None:
    hub = "H" * 45
    assert len(large_messages_container(hub)) <= 63 and len(instances_table(hub)) <= 63


# --------------------------------------------------------------------------- partitioning


def test_fnv1a_32_reference_vectors() -> None:
    # Published FNV-1a 32-bit test vectors.
    assert fnv1a_32(b"") == 0x811C9DC5
    assert fnv1a_32(b"a") == 0xE40C292C
    assert fnv1a_32(b"foobar") == 0xBF9CF968


def test_partition_is_fnv1a_of_the_utf8_bytes_mod_count() -> None:
    assert partition_of("foobar", 4) == 0xBF9CF968 % 4
    assert partition_of("foobar", 7) == 0xBF9CF968 % 7
    # UTF-8, not UTF-16: 'é' hashes as C3 A9.
    assert partition_of("é", 16) == fnv1a_32(b"\xc3\xa9") % 16 != fnv1a_32("é".encode("utf-16-le")) % 16
    assert partition_of("anything", 1) == 0


def test_bang_in_an_instance_id_is_not_special() -> None:
    # "!nn" explicit placement is a Netherite feature, not the Azure Storage provider's.
    for iid in ("order!01", "order!15", "@counter@key!3"):
        assert partition_of(iid, 16) == fnv1a_32(iid.encode()) % 16


def test_lone_surrogates_hash_like_dotnet_replacement() -> None:
    replaced = "a\ufffdb".encode()
    assert partition_of("a\ud800b", 16) == fnv1a_32(replaced) % 16
    assert partition_of("\U0001f600", 16) == fnv1a_32("\U0001f600".encode()) % 16


def test_partitions_spread_and_control_queue_for() -> None:
    o = opts({"hubName": "SpreadHub"}, {"partitionCount": 4})
    seen = {partition_of(f"instance-{i}", 4) for i in range(200)}
    assert seen == {0, 1, 2, 3}
    assert o.control_queue_for("foobar") == f"spreadhub-control-{0xBF9CF968 % 4:02d}"
    with pytest.raises(ConfigError):
        partition_of("x", 0)
