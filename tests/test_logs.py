"""The lines a user reads on Azure: one per step, activity run and entity batch; the Azure SDK kept quiet."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import pytest

import durable_ext as df
from durable_ext.bindings import apply_log_levels
from durable_ext.testing import DurableTestEnv

app = df.DurableApp()


@app.orchestration_trigger(context_name="context")
def greet_twice(context: df.DurableOrchestrationContext):
    """Two activities, the second one failing and caught."""
    first = yield context.call_activity("greet", "one")
    with contextlib.suppress(df.TaskFailedError):
        yield context.call_activity("greet", "")
    yield context.call_entity(df.EntityId("visits", "home"), "add", 1)
    return first


@app.activity_trigger(input_name="name")
def greet(name: str) -> str:
    """Greet, or fail on an empty name."""
    if not name:
        raise ValueError("no name")
    return f"hi {name}"


@app.entity_trigger(context_name="context")
def visits(context: df.DurableEntityContext) -> None:
    """A counter."""
    context.set_state(context.get_state(lambda: 0) + context.get_input())


NAMES = ("azure", "azure.core.pipeline.policies.http_logging_policy", "durable_ext", "durable_ext.activity")


@pytest.fixture
def levels() -> Iterator[None]:
    """Put the loggers this test changes back as they were."""
    before = {name: logging.getLogger(name).level for name in NAMES}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


async def test_one_line_per_step_activity_and_entity_batch(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="durable_ext")
    async with DurableTestEnv(app) as env:
        iid = await env.start("greet_twice", instance_id="logged-1")
        status = await env.wait_for_completion(iid)
    assert status.output == "hi one"
    by_logger: dict[str, list[str]] = {}
    for record in caplog.records:
        by_logger.setdefault(record.name, []).append(record.getMessage())
    steps = by_logger["durable_ext.orchestration"]
    assert all("orchestration 'greet_twice' logged-1: " in line for line in steps), steps
    assert any(": Running after " in line for line in steps) and steps[-1].count(": Completed after ") == 1
    assert all(line.rstrip().endswith("ms") for line in steps)
    activities = by_logger["durable_ext.activity"]
    assert any(line.startswith("activity 'greet' of logged-1 (task 0): Completed in ") for line in activities)
    failed = [r for r in caplog.records if r.name == "durable_ext.activity" and r.levelno == logging.WARNING]
    assert len(failed) == 1 and "Failed in" in failed[0].getMessage()
    assert "ValueError: no name" in failed[0].getMessage()
    batches = by_logger["durable_ext.entity"]
    expect = "entity @visits@home: 1 operations (0 failed) from 1 messages in "
    assert any(line.startswith(expect) for line in batches), batches


def test_azure_sdk_logging_is_quiet_by_default(levels: None) -> None:
    logging.getLogger("azure").setLevel(logging.NOTSET)
    apply_log_levels({"version": "2.0"})
    sdk = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    assert not sdk.isEnabledFor(logging.INFO) and sdk.isEnabledFor(logging.WARNING)


def test_host_json_log_levels_set_python_loggers(levels: None, caplog: pytest.LogCaptureFixture) -> None:
    doc = {
        "logging": {
            "logLevel": {
                "azure": "Information",
                "durable_ext.activity": "Warning",
                "Function": "Debug",  # a host category: left to the host
                "durable_ext": "Loud",
            }
        }
    }
    apply_log_levels(doc)
    assert logging.getLogger("azure.core.pipeline.policies.http_logging_policy").isEnabledFor(logging.INFO)
    assert logging.getLogger("durable_ext.activity").level == logging.WARNING
    assert logging.getLogger("Function").level == logging.NOTSET
    assert any("durable_ext: unknown level 'Loud'" in r.getMessage() for r in caplog.records)
