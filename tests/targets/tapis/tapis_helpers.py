"""Names and helpers shared by the Tapis target tests (conftest.py is not importable by name)."""

from __future__ import annotations

import time
from collections.abc import Callable

PASSWORD_ENV = "HPCSERVE_TEST_TAPIS_PASSWORD"
TOKEN_ENV = "HPCSERVE_TEST_TAPIS_TOKEN"
TARGET = "pods"


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "it"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
