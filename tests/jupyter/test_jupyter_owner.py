"""Sessions record who launched them: the Jupyter user's name; for a shared-token login (an
anonymous, random user id) the account the server runs as."""

from __future__ import annotations

import getpass
import json
import socket

import pytest

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def jp_server_config(hpcserve_config, request):
    server = {"jpserver_extensions": {"hpcserve_jupyter": True}}
    if request.param == "named":
        server["identity_provider_class"] = "jupyter_authz.NamedUsers"
    return {"ServerApp": server, "HpcserveApp": dict(hpcserve_config)}


@pytest.mark.parametrize(("jp_server_config", "owner"), [("named", "alice"),
                                                         ("anonymous", getpass.getuser())],
                         indirect=["jp_server_config"])
async def test_launch_records_the_owner(jp_fetch, ext, jp_server_config, owner):
    # A launch the target refuses (its port is taken) is still recorded, as failed, with its
    # owner, and nothing runs.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = await jp_fetch("hpcserve", "api", "sessions", method="POST", raise_error=False,
                           body=json.dumps({"recipe": "smollm2-135m",
                                            "overrides": {"port": port}}))
    body = json.loads(r.body)
    assert r.code == 409 and f"port {port}" in body["error"] and body["type"] == "LaunchError"
    assert "Traceback" not in r.body.decode()
    [session] = ext.manager.sessions()
    assert session.state == "failed" and session.owner == owner
