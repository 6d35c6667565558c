"""The embedded facade as a test fixture, in one place (it was copied into four test files).

    from facade_fixtures import facade_fixture
    hp = facade_fixture(scope="module")   # one facade for the module's tests, as `hp`

Its own state directory, the default `local` target only (no user targets file), a fast monitor
(0.5 s), and on teardown every live session stopped and job cancelled before the facade closes,
so no engine outlives its test module. `make_facade(home)` is the same as a context manager.
(A module of its own: a conftest is not importable by name when several exist.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import HpcserveError

LOCAL_ONLY = {"local": {"kind": "local"}}


@contextlib.contextmanager
def make_facade(home: Path, **kwargs: Any) -> Iterator[Hpcserve]:
    """An embedded facade on `home`; its live sessions stopped and the facade closed after."""
    kwargs = {"poll_interval": 0.5, "target_configs": LOCAL_ONLY, **kwargs}
    facade = Hpcserve(home=home, **kwargs)
    try:
        yield facade
    finally:
        try:
            for s in facade.sessions(live_only=True):
                with contextlib.suppress(HpcserveError):
                    facade.stop(s.id)
            for j in facade.jobs(live_only=True):
                with contextlib.suppress(HpcserveError):
                    facade.cancel_job(j.id)
        finally:
            facade.close()


def facade_fixture(scope: str = "function", name: str = "hp", **kwargs: Any) -> Any:
    """A fixture (assign it to a module-level name) giving `make_facade` at `scope`, its home a
    fresh directory named after the test module."""

    @pytest.fixture(scope=scope, name=name)  # type: ignore[call-overload]
    def fixture(request: pytest.FixtureRequest,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hpcserve]:
        module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
        with make_facade(tmp_path_factory.mktemp(f"{module}-home"), **kwargs) as facade:
            yield facade

    return fixture
