"""Both facades keep the `Facade` protocol exactly: every member with the protocol's parameters
(names, kinds, defaults, annotations) and return annotation, and no public method the protocol
lacks. Type checking is not run in the suite, so this is what catches a drift: a front end typed
against `Facade` must work the same on the embedded and the remote facade."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.facade import Facade
from hpcserve_jupyter.remote import RemoteHpcserve

FACADES = [Hpcserve, RemoteHpcserve]


def _text(annotation: Any) -> str:
    """An annotation as written (modules use postponed annotations: already strings)."""
    if annotation is inspect.Parameter.empty:
        return "<none>"
    return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)


def shape(fn: Any) -> tuple[list[tuple[str, str, str, str]], str]:
    sig = inspect.signature(fn)
    params = [(p.name, p.kind.name, repr(p.default), _text(p.annotation))
              for p in sig.parameters.values()]
    return params, _text(sig.return_annotation)


def public_functions(cls: type) -> set[str]:
    return {name for name, _ in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")}


PROTOCOL = sorted(name for name, value in vars(Facade).items()
                  if inspect.isfunction(value) and not name.startswith("_"))


def test_the_protocol_lists_the_calls_front_ends_make():
    assert {"launch", "wait", "prompt", "watch", "target_secrets", "client"} <= set(PROTOCOL)


@pytest.mark.parametrize("facade", FACADES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", PROTOCOL)
def test_member_matches_the_protocol(facade, name):
    assert hasattr(facade, name), f"{facade.__name__} lacks {name}"
    expected, got = shape(getattr(Facade, name)), shape(getattr(facade, name))
    assert got == expected, (f"{facade.__name__}.{name}{inspect.signature(getattr(facade, name))}"
                             f" != Facade.{name}{inspect.signature(getattr(Facade, name))}")


@pytest.mark.parametrize("facade", FACADES, ids=lambda c: c.__name__)
def test_no_public_method_outside_the_protocol(facade):
    assert public_functions(facade) - set(PROTOCOL) == set()
