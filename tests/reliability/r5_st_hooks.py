"""Schemathesis hooks for R5 (loaded by `st run` through SCHEMATHESIS_HOOKS=r5_st_hooks).

`deliberate_5xx_only` makes the one relaxation of the R5 schemathesis run exact: the config
lets three kinds of operations answer a documented 5xx (a health probe's 503, the proxy's and
the gateway's 502/503/504 about a session's engine), and this check fails every 5xx that is
not one of those, with the body that says so. A 500 always fails.
"""

from __future__ import annotations

import json
import re
from typing import Any

import schemathesis

PROBE = re.compile(r"^/hpcserve/api/sessions/\{id\}/v1/(live|ready)$")
RELAYS = re.compile(r"^/hpcserve/(proxy/\{id\}/\{path\}|v1/(chat/completions|completions|"
                    r"embeddings))$")
# proxy.require_ready / proxy._unreachable: why a session's engine cannot answer.
ENGINE_REASONS = {502: {"gone", "unreachable"}, 503: {"starting", "overloaded"},
                  504: {"timeout"}}


def deliberate(path: str, status: int, body: Any, method: str = "GET") -> str | None:
    """None when a 5xx answer is a documented, deliberate one; else what is wrong with it."""
    if status < 500:
        return None
    if method.upper() == "HEAD" and RELAYS.match(path):  # no body to look at
        return None if status in ENGINE_REASONS else f"HEAD answered {status}"
    if not isinstance(body, dict):
        return f"a {status} without a JSON object body"
    if PROBE.match(path):
        probe = path.rsplit("/", 1)[1]
        if status == 503 and body.get(probe) is False and "state" in body:
            return None
        return f"a probe may answer 503 with {{{probe!r}: false, 'state': ...}} only"
    if RELAYS.match(path):
        err = body.get("error")
        fields = err if isinstance(err, dict) else body  # the gateway nests, the proxy not
        if fields.get("reason") in ENGINE_REASONS.get(status, ()) and fields.get("session_id"):
            return None
        return f"the proxy/gateway may answer {status} only about a session's engine"
    return f"{status} from an operation that must never answer 5xx"


@schemathesis.check
def deliberate_5xx_only(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 5xx is a documented, deliberate answer (see the module docstring)."""
    if response.status_code < 500:
        return None
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        body = None
    problem = deliberate(case.operation.path, response.status_code, body, case.method)
    if problem:
        raise AssertionError(f"{case.operation.label}: {problem}: {response.content[:300]!r}")
    return None
