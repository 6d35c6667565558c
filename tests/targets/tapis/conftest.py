"""Fixtures: the Tapis stand-in (reused from tests/tapis_standin), a proxy to its pods, and an
embedded Hpcserve whose `pods` target talks to the stand-in through the real tapipy client."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import pytest
from tapis_helpers import PASSWORD_ENV, TARGET, TOKEN_ENV
from tapis_pod_proxy import PodProxy

from hpcserve_jupyter.api import Hpcserve
from tapis_standin.conftest import PASSWORD, USERNAME, standin, tapis  # noqa: F401  (fixtures)


@pytest.fixture
def pod_proxy(standin) -> Iterator[PodProxy]:  # noqa: F811
    proxy = PodProxy(standin).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def pods_config(standin, pod_proxy, monkeypatch) -> dict:  # noqa: F811
    """The target's config: credentials by environment variable name only."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    return {
        "kind": "tapis-pods",
        "base_url": standin.base_url,
        "tenant_id": standin.tenant_id,
        "username": USERNAME,
        "password_env": PASSWORD_ENV,
        "token_env": TOKEN_ENV,
        "keyring_service": None,
        "prompt": False,
        "python": sys.executable,  # the stand-in runs the pod's argv with this interpreter
        "endpoint_template": pod_proxy.endpoint_template,
        "request_timeout": 5,
        "stop_timeout": 15,
    }


@pytest.fixture
def make_hp(pods_config, standin) -> Iterator[Callable[..., Hpcserve]]:  # noqa: F811
    """`make_hp(**config_overrides)`: an embedded manager with the `pods` target."""
    made: list[Hpcserve] = []

    def make(*, monitor: bool = True, poll_interval: float = 0.3, **overrides) -> Hpcserve:
        cfg = {**pods_config, **overrides}
        hp = Hpcserve(monitor=monitor, poll_interval=poll_interval,
                      target_configs={"local": {"kind": "local"}, TARGET: cfg})
        made.append(hp)
        return hp

    yield make
    standin.clear_faults()
    for hp in made:
        if not hp._loop.thread.is_alive():  # closed by the test already
            continue
        with contextlib.suppress(Exception):
            for s in hp.sessions(live_only=True):
                hp.stop(s.id)
        with contextlib.suppress(Exception):
            hp.close()

