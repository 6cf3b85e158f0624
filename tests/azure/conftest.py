"""Fixtures for the Azure Storage path: one real Azurite per test session, a fresh hub per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from procs import Hub, open_hub

from durable_ext.backends.azure.backend import AzureBackend
from durable_ext.backends.azure.connection import resolve_connection
from durable_ext.config import DurableTaskOptions
from durable_ext.host.azurite import Azurite

_hubs = itertools.count(1)


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A real Azurite on free ports for the whole session (installed on first use)."""
    with Azurite() as emulator:
        yield emulator


def hub_options(**overrides: object) -> DurableTaskOptions:
    """Options of a hub no other test uses."""
    name = f"T{os.getpid()}x{next(_hubs)}"
    settings: dict[str, object] = {"hubName": name, "storageProvider": {"partitionCount": 2}}
    settings.update(overrides)
    return DurableTaskOptions.from_host_json({"version": "2.0", "extensions": {"durableTask": settings}})


@pytest.fixture
async def backend(azurite: Azurite) -> AsyncIterator[AzureBackend]:
    """A backend on a fresh task hub, deleted after the test."""
    connection = resolve_connection({"AzureWebJobsStorage": azurite.connection_string})
    store = AzureBackend(connection, hub_options(), lease=timedelta(seconds=2))
    await store.create_task_hub()
    yield store
    await store.delete_task_hub()
    await store.close()


@pytest.fixture
async def hub(azurite: Azurite, tmp_path: Path) -> AsyncIterator[Hub]:
    """A fresh hub serving the crash-test app (``procs.Hub``), deleted after the test."""
    made = await open_hub(tmp_path, azurite.connection_string)
    yield made
    await made.close()
