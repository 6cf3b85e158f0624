"""Fixtures of the local-host tests: one Azurite per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durable_ext.host.azurite import Azurite


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """A real Azurite on free ports for the whole session (installed on first use)."""
    with Azurite() as emulator:
        yield emulator
