"""No hpcserve URL answers without Jupyter's authentication and authorization: every route and
method of the route table, without credentials, with a wrong token, and with a valid token but
an Authorizer that denies the "hpcserve" resource. Nothing reaches the engine either."""

from __future__ import annotations

import httpx
import pytest

from hpcserve_jupyter.jupyter.routes import ROUTES

pytestmark = pytest.mark.timeout(60)


def route_cases() -> list[tuple[str, str]]:
    from tornado.web import RequestHandler

    cases = []
    for route in ROUTES:
        for m in route.handler.SUPPORTED_METHODS:
            if getattr(route.handler, m.lower()) is not RequestHandler._unimplemented_method:
                cases.append((route.path, m))
    return cases


CASES = route_cases()


def concrete(path: str, session) -> str:
    return (path.replace("{id}", session.id).replace("{name}", "smollm2-135m")
            .replace("{model}", session.name).replace("{path}", "v1/models").lstrip("/"))


async def send(base: str, method: str, url: str, headers: dict[str, str]) -> httpx.Response:
    body = b'{"model": "x", "recipe": "smollm2-135m"}' if method in ("POST", "PUT",
                                                                      "PATCH") else None
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(method, base + url, headers=headers, content=body)


def error_message(r: httpx.Response) -> str:
    err = r.json()["error"]
    return err["message"] if isinstance(err, dict) else err  # the gateway's OpenAI shape


@pytest.mark.parametrize("credentials", [{}, {"Authorization": "token wrong"},
                                         {"Authorization": "Bearer wrong"},
                                         {"Cookie": "username-127-0-0-1=forged"}],
                         ids=["none", "wrong-token", "wrong-bearer", "forged-cookie"])
async def test_unauthenticated_requests_are_refused_on_every_route(base, register, standin, ext,
                                                                   credentials):
    """One server per credential kind; every (route, method) of the table inside."""
    session = register([standin.url])
    answered = []
    for path, method in CASES:
        r = await send(base, method, concrete(path, session), credentials)
        if r.status_code != 403 or (method != "HEAD" and not error_message(r)):
            answered.append((method, path, r.status_code, r.text[:100]))
    assert answered == []
    assert standin.seen == []  # the proxy and gateway forwarded nothing
    assert ext.manager.sessions()[0].state == "ready"  # nothing was stopped or launched


def test_the_route_table_is_covered():
    methods = {m for _, m in CASES}
    assert {"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"} <= methods
    assert len(CASES) >= 28
