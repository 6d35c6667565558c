"""Local stand-in for the Tapis Pods, Jobs, Apps, Systems, Files and token APIs, driven by the
real ``tapipy`` client (jobs run for real on the test SLURM cluster).

See :mod:`.server`.  Run it by hand with ``python -m tests.tapis_standin.server --port N``.
Names are re-exported lazily so that ``python -m ...server`` does not import it twice.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "NETWORKING_DEFAULTS",
    "POD_STATES",
    "RESOURCES_DEFAULTS",
    "ROUTES",
    "CallRecord",
    "LaunchRequest",
    "LaunchSpec",
    "PodRecord",
    "Route",
    "StandIn",
    "default_runner",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".server", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
