"""Plugins by entry-point group: ours are listed by module path (so a bare source checkout
works), and installed packages add or replace names through the group's entry points."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import entry_points
from typing import Any


def discover(group: str, builtin: dict[str, str]) -> dict[str, str]:
    found = dict(builtin)
    for ep in entry_points(group=group):
        found[ep.name] = ep.value
    return found


def load(ref: str) -> Any:
    """'package.module:Attribute' -> the attribute (imported only now)."""
    module, _, attr = ref.partition(":")
    return getattr(import_module(module), attr)
