"""Fixtures: a running stand-in and a real tapipy client logged into it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import StandIn

USERNAME = "testuser"
PASSWORD = "testpass"


@pytest.fixture
def standin(tmp_path) -> Iterator[StandIn]:
    server = StandIn(workdir=tmp_path / "standin", users={USERNAME: PASSWORD},
                     phase_seconds=0.3, stop_grace_seconds=3.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tapis(standin: StandIn):
    """A real ``tapipy.tapis.Tapis`` client with a user token from the stand-in."""
    from tapipy.tapis import Tapis

    client = Tapis(base_url=standin.base_url, tenant_id="tacc", username=USERNAME,
                   password=PASSWORD)
    client.get_tokens()
    return client
