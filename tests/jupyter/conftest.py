"""Fixtures for the Jupyter server extension: a real jupyter_server (pytest-jupyter) with the
extension enabled, a stand-in engine, and sessions registered in the server's own manager.

pytest-jupyter's fixtures and hooks are star-imported here rather than listed in
`pytest_plugins`: pytest refuses `pytest_plugins` in a conftest below the rootdir when the whole
suite runs, and as a plugin its hooks (it runs every test function itself, on its event loop)
would apply to the whole suite instead of this directory.
"""

from __future__ import annotations

import itertools
import secrets
import time
from typing import Any

import pytest
from jupyter_standin import StandIn
from pytest_jupyter.jupyter_server import *  # noqa: F403

from hpcserve_jupyter.sessions import Session, State

_names = itertools.count(1)


@pytest.fixture
def hpcserve_config() -> dict[str, Any]:
    """HpcserveApp traits for this test (override in a module to change limits)."""
    return {"poll_interval": 0.5, "events_keepalive_interval": 0.3,
            "replica_recheck_interval": 0.2}


@pytest.fixture
def jp_server_config(hpcserve_config: dict[str, Any]) -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"hpcserve_jupyter": True}},
            "HpcserveApp": dict(hpcserve_config)}


@pytest.fixture
def ext(jp_serverapp: Any) -> Any:
    """The loaded HpcserveApp."""
    return jp_serverapp.web_app.settings["hpcserve_jupyter"]


@pytest.fixture
def standin() -> Any:
    server = StandIn()
    yield server
    server.close()


@pytest.fixture
def register(ext: Any) -> Any:
    """Record a session in the server's own store, serving at the given endpoints (a stand-in
    engine): `register([url], state=State.READY, name=None, model=...) -> Session`."""

    def _register(endpoints: list[str], *, state: State = State.READY, name: str | None = None,
                  model: str = "standin-model", api_flavour: str = "openai") -> Session:
        s = Session(id=secrets.token_hex(4), name=name or f"standin-{next(_names)}",
                    recipe="standin", backend="llama-cpp", target="local", state=state,
                    endpoints=list(endpoints), model=model, api_flavour=api_flavour,
                    spec={"health_path": "/health"}, ready_at=time.time(), owner="tester")
        ext.manager.store.insert(s, "created", "test stand-in")
        return s

    return _register


@pytest.fixture
def base(http_server: Any, jp_http_port: int, jp_base_url: str) -> str:
    """The listening server's URL with its base_url (pytest-jupyter's is /a%40b/), for
    clients other than jp_fetch (httpx, the openai SDK, RemoteHpcserve)."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"
