"""With a valid token but an Authorizer that denies the "hpcserve" resource, every route and
method is refused (403) and nothing reaches the engine; Jupyter's own API still answers."""

from __future__ import annotations

import httpx
import pytest
from test_jupyter_auth import CASES, concrete, error_message, send

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def jp_server_config(hpcserve_config):
    return {"ServerApp": {"jpserver_extensions": {"hpcserve_jupyter": True},
                          "authorizer_class": "jupyter_authz.DenyHpcserve"},
            "HpcserveApp": dict(hpcserve_config)}


async def test_authenticated_but_unauthorized_requests_are_refused(base, register, standin,
                                                                   ext, jp_auth_header):
    session = register([standin.url])
    answered = []
    for path, method in CASES:
        r = await send(base, method, concrete(path, session), dict(jp_auth_header))
        if r.status_code != 403 or (method != "HEAD"
                                    and "not authorized" not in error_message(r)):
            answered.append((method, path, r.status_code, r.text[:100]))
    assert answered == []
    assert standin.seen == []
    # ... while Jupyter's own API still answers this user: authentication itself worked.
    async with httpx.AsyncClient() as client:
        assert (await client.get(base + "api/status", headers=jp_auth_header)).status_code == 200
