"""Drive the stand-in ONLY through the real tapipy client (plus plain HTTP to the pod's own
process, which is what a user of a pod does too).

Besides checking the stand-in, these tests pin down how tapipy 25.4.0 behaves, because the
project's Tapis target has to live with it:

* 401: tapipy never re-authenticates on its own; it raises ``UnauthorizedError``.  It only
  refreshes *before* a call whose token expires within 5 s, and only via the refresh-token
  grant, which needs ``client_id``/``client_key`` (without them the refresh attempt raises
  inside tapipy, is swallowed, and the call goes out with the old token).
* timeouts: tapipy passes no timeout to ``requests`` (``requests_session.send(r, verify=...)``),
  so a slow server blocks forever; a timeout must be put on ``Tapis.requests_session``.
  The resulting ``requests`` exception is wrapped as a plain ``BaseTapyException``.
* a falsy ``result`` (``""`` from delete_pod) makes tapipy return the whole envelope dict.
* body fields not in tapipy's bundled spec (``secret_map``, ``template_overrides``) are dropped
  silently; ``volume_mounts`` is passed through untouched in either shape.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from tapipy import errors
from tapipy.configuration import Config
from tapipy.tapis import Tapis

from .conftest import PASSWORD, USERNAME
from .server import StandIn

pytestmark = pytest.mark.timeout(120)

REPO_ROOT = Path(__file__).resolve().parents[2]

# A tiny real HTTP server: writes <root>/hello.txt (from $GREETING) and serves <root>.
POD_SERVER = """
import functools, http.server, os, sys
port, root = int(sys.argv[1]), sys.argv[2]
os.makedirs(root, exist_ok=True)
with open(os.path.join(root, "hello.txt"), "w") as f:
    f.write(os.environ.get("GREETING", "hi"))
print(f"pod server listening on {port}, serving {root}", flush=True)
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"""
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]
# An HTTP server taking --host/--port flags, like vLLM or llama.cpp's server do.
PORT_FLAG_SERVER = """
import argparse, http.server
p = argparse.ArgumentParser()
p.add_argument("--host")
p.add_argument("--port", type=int)
a = p.parse_args()
http.server.ThreadingHTTPServer((a.host, a.port), http.server.SimpleHTTPRequestHandler
                                ).serve_forever()
"""


def wait_status(tapis: Tapis, pod_id: str, targets: set[str], timeout: float = 30.0,
                interval: float = 0.05) -> list[str]:
    """Poll get_pod until the status is in ``targets``; return the distinct statuses seen."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = tapis.pods.get_pod(pod_id=pod_id).status
        if not seen or seen[-1] != status:
            seen.append(status)
        if status in targets:
            return seen
        time.sleep(interval)
    raise AssertionError(f"pod {pod_id} did not reach {targets}; saw {seen}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def local_endpoint(standin: StandIn, pod_id: str) -> dict:
    """The stand-in-specific route (not Tapis): where the pod's process really listens."""
    resp = requests.get(f"{standin.base_url}/standin/pods/{pod_id}", timeout=10)
    resp.raise_for_status()
    return resp.json()["result"]


class TimeoutSession(requests.Session):
    """tapipy has no timeout option; give its requests session a default timeout."""

    def __init__(self, timeout: float):
        super().__init__()
        self.default_timeout = timeout

    def send(self, request, **kwargs):
        kwargs.setdefault("timeout", self.default_timeout)
        return super().send(request, **kwargs)


# ------------------------------------------------------------------------- tokens


def test_get_tokens_hits_only_the_token_route(standin: StandIn):
    t = Tapis(base_url=standin.base_url, tenant_id="tacc", username=USERNAME,
              password=PASSWORD)
    assert standin.calls == []  # constructing the client makes no request
    t.get_tokens()
    assert [(c.method, c.path, c.status) for c in standin.calls] == [
        ("POST", "/v3/oauth2/tokens", 201)]
    assert standin.calls[0].body == {"username": USERNAME, "password": PASSWORD,
                                     "grant_type": "password"}
    token = t.access_token
    assert token.access_token.count(".") == 2  # a JWT
    assert token.claims["tapis/username"] == USERNAME and "exp" in token.claims
    assert token.expires_in().total_seconds() > 3600
    assert t.refresh_token is None  # no client credentials -> no refresh token
    assert t.pods.list_pods() == []


def test_wrong_password_is_401(standin: StandIn):
    t = Tapis(base_url=standin.base_url, tenant_id="tacc", username=USERNAME, password="nope")
    with pytest.raises(errors.UnauthorizedError) as err:
        t.get_tokens()
    assert err.value.message == "Invalid username/password combination."


def test_access_token_given_directly(standin: StandIn):
    t = Tapis(base_url=standin.base_url, tenant_id="tacc",
              access_token=standin.issue_token(USERNAME))
    assert t.pods.list_pods() == []
    assert [c.operation_id for c in standin.calls] == ["list_pods"]


def test_tenant_resolved_from_tenants_api_when_no_tenant_id(standin: StandIn):
    t = Tapis(base_url=standin.base_url, username=USERNAME, password=PASSWORD)
    assert t.tenant_id == "tacc"
    assert [c.path for c in standin.calls] == ["/v3/sites", "/v3/tenants"]


def test_missing_invalid_expired_tokens_are_401(standin: StandIn):
    no_token = Tapis(base_url=standin.base_url, tenant_id="tacc")
    with pytest.raises(errors.UnauthorizedError) as err:
        no_token.pods.list_pods()
    assert err.value.message == "No Tapis access token found in the request."
    assert "X-Tapis-Token" not in standin.calls[-1].headers

    forged = Tapis(base_url=standin.base_url, tenant_id="tacc",
                   access_token=standin.issue_token(USERNAME, secret=b"x" * 32))
    with pytest.raises(errors.UnauthorizedError) as err:
        forged.pods.list_pods()
    assert err.value.message == "Invalid Tapis token."

    # an expired token: tapipy sees expires_in() < 5 s, tries refresh_user_tokens(), which
    # raises (no client_id) and is swallowed; the call goes out with the expired token
    expired = Tapis(base_url=standin.base_url, tenant_id="tacc",
                    access_token=standin.issue_token(USERNAME, ttl=-10))
    with pytest.raises(errors.UnauthorizedError) as err:
        expired.pods.list_pods()
    assert "expired" in err.value.message
    assert standin.token_requests == []


def test_401_is_not_handled_by_tapipy_refresh_then_succeeds(standin: StandIn, tapis: Tapis):
    tokens_before = len(standin.token_requests)
    first_jwt = tapis.get_access_jwt()

    standin.fail_next("list_pods", status=401)  # one injected 401
    with pytest.raises(errors.UnauthorizedError) as err:
        tapis.pods.list_pods()
    assert err.value.response.status_code == 401
    assert len(standin.token_requests) == tokens_before  # tapipy did not re-authenticate
    assert tapis.get_access_jwt() == first_jwt

    # a real invalidation: revoke every token issued so far
    standin.revoke_tokens()
    with pytest.raises(errors.UnauthorizedError) as err:
        tapis.pods.list_pods()
    assert "revoked" in err.value.message
    assert len(standin.token_requests) == tokens_before

    tapis.get_tokens()  # what the caller must do: get a fresh token, retry
    assert tapis.get_access_jwt() != first_jwt
    assert tapis.pods.list_pods() == []
    assert [r["grant_type"] for r in standin.token_requests[tokens_before:]] == ["password"]


def test_tapipy_refreshes_near_expiry_only_with_client_credentials(tmp_path):
    # NB: with client credentials, a token TTL under 5 s makes get_tokens() itself recurse
    # (validating the refresh token loads the tenants via list_sites, whose call refreshes,
    # which validates the new refresh token, ...): observed 244 refresh requests and ~21 s
    # before tapipy swallowed the RecursionError.  So: 8 s tokens (exp has 1 s resolution:
    # 7-8 s left), then wait into the window.
    with StandIn(workdir=tmp_path / "s", token_ttl=8, clients={"myclient": "mykey"}) as s:
        t = Tapis(base_url=s.base_url, tenant_id="tacc", username=USERNAME, password=PASSWORD,
                  client_id="myclient", client_key="mykey")
        t.get_tokens()
        assert t.refresh_token is not None  # issued because Basic client credentials came
        # tapipy validated the refresh token against the tenants API (and failed quietly:
        # stand-in tokens are HS256 without a public key)
        assert [c.path for c in s.calls] == ["/v3/oauth2/tokens", "/v3/sites", "/v3/tenants"]
        first_jwt = t.get_access_jwt()
        t.pods.list_pods()
        assert [r["grant_type"] for r in s.token_requests] == ["password"]  # > 5 s left
        time.sleep(3.5)  # now 3.5-4.5 s left: inside tapipy's 5 s window
        t.pods.list_pods()
        # refreshed BEFORE the call, by itself, with the refresh-token grant
        assert [r["grant_type"] for r in s.token_requests] == ["password", "refresh_token"]
        assert s.token_requests[-1]["client_id"] == "myclient"
        assert t.get_access_jwt() != first_jwt
        assert s.calls[-1].headers["X-Tapis-Token"] == t.get_access_jwt()

        # without client credentials tapipy cannot refresh: the attempt raises inside tapipy,
        # is swallowed, the old token is sent; once expired the call is a 401
        plain = Tapis(base_url=s.base_url, tenant_id="tacc",
                      access_token=s.issue_token(USERNAME, ttl=2))
        n = len(s.token_requests)
        assert plain.pods.list_pods() == []
        time.sleep(2.2)
        with pytest.raises(errors.UnauthorizedError):
            plain.pods.list_pods()
        assert len(s.token_requests) == n


# ------------------------------------------------------------------------- lifecycle


def test_full_pod_lifecycle(standin: StandIn, tapis: Tapis):
    vol = tapis.pods.create_volume(volume_id="models", description="weights", size_limit=64)
    assert (vol.volume_id, vol.status, vol.size_limit) == ("models", "AVAILABLE", 64)
    assert standin.volumes["models"].path.is_dir()

    mounts = {"/app/data": {"type": "tapisvolume", "source_id": "models", "sub_path": ""}}
    pod = tapis.pods.create_pod(
        pod_id="webpod", image="python:3.11", description="tiny http server",
        command=[sys.executable, "-u", "-c", POD_SERVER], arguments=["{port}", "/app/data"],
        environment_variables={"GREETING": "hello from the pod"},
        networking={"default": {"protocol": "http", "port": 8000}},
        volume_mounts=mounts)
    assert pod.status == "REQUESTED" and pod.status_requested == "ON"
    assert pod.networking.default.url == "webpod.pods.tacc.tapis.io"  # no scheme
    assert pod.networking.default.port == 8000

    seen = wait_status(tapis, "webpod", {"AVAILABLE", "ERROR"})
    assert seen == ["REQUESTED", "SPAWNER SETUP", "CREATING", "AVAILABLE"]
    assert standin.pods["webpod"].statuses == seen

    # what arrived: volume_mounts untouched (live shape), and the process saw the local dir
    record = standin.pods["webpod"]
    assert record.raw_body["volume_mounts"] == mounts
    assert record.volume_mounts_shape == "live"
    assert record.mounts == {"/app/data": str(standin.volumes["models"].path)}
    ep = local_endpoint(standin, "webpod")
    assert ep["url"] == standin.local_url("webpod") == f"http://127.0.0.1:{ep['port']}"
    assert standin.endpoints == {"webpod": ep["url"]}
    listing = requests.get(f"{standin.base_url}/standin/pods", timeout=10).json()["result"]
    assert listing["webpod"]["url"] == ep["url"]
    assert ep["argv"][-2:] == [str(ep["port"]), str(standin.volumes["models"].path)]

    # fetch from the running process
    resp = requests.get(f"{ep['url']}/hello.txt", timeout=10)
    assert resp.status_code == 200 and resp.text == "hello from the pod"
    files = tapis.pods.list_volume_files(volume_id="models")
    assert [f.name for f in files] == ["hello.txt"]

    logs = tapis.pods.get_pod_logs(pod_id="webpod")
    assert f"pod server listening on {ep['port']}" in logs.logs
    assert "GET /hello.txt" in logs.logs  # http.server's stderr is in the logs too
    assert any("created by 'testuser'" in line for line in logs.action_logs)

    creds = tapis.pods.get_pod_credentials(pod_id="webpod")
    assert creds.user_username == "webpod" and len(creds.user_password) >= 20

    # start is only allowed from STOPPED; the live service answers 500 (RuntimeError)
    with pytest.raises(errors.InternalServerError) as err:
        tapis.pods.start_pod(pod_id="webpod")
    assert "must be in 'STOPPED' status" in err.value.message

    # stop: status_requested OFF now, DELETING -> STOPPED later, process group gone
    first_pid = record.pids[-1]
    stopped = tapis.pods.stop_pod(pod_id="webpod")
    assert stopped.status_requested == "OFF"
    seen = wait_status(tapis, "webpod", {"STOPPED"})
    assert seen[-2:] == ["DELETING", "STOPPED"]
    assert not group_alive(first_pid)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{ep['url']}/hello.txt", timeout=5)
    assert local_endpoint(standin, "webpod")["url"] is None
    assert "pod server listening" in tapis.pods.get_pod_logs(pod_id="webpod").logs

    # start again
    started = tapis.pods.start_pod(pod_id="webpod")
    assert (started.status, started.status_requested) == ("REQUESTED", "ON")
    assert wait_status(tapis, "webpod", {"AVAILABLE", "ERROR"}) == [
        "REQUESTED", "SPAWNER SETUP", "CREATING", "AVAILABLE"]
    url = standin.local_url("webpod")
    assert requests.get(f"{url}/hello.txt", timeout=10).text == "hello from the pod"
    second_pid = record.pids[-1]
    assert second_pid != first_pid

    assert [p.pod_id for p in tapis.pods.list_pods()] == ["webpod"]

    # delete: falsy result "" -> tapipy hands back the whole envelope dict
    deleted = tapis.pods.delete_pod(pod_id="webpod")
    assert isinstance(deleted, dict)
    assert deleted == {"message": "Pod successfully deleted.", "metadata": {}, "result": "",
                       "status": "success", "version": "1.9.0"}
    assert not group_alive(second_pid)
    with pytest.raises(errors.NotFoundError):
        tapis.pods.get_pod(pod_id="webpod")

    deleted = tapis.pods.delete_volume(volume_id="models")
    assert isinstance(deleted, dict) and deleted["result"] == ""
    assert tapis.pods.list_volumes() == []


def test_restart_walks_through_stopped(standin: StandIn, tapis: Tapis):
    tapis.pods.create_pod(pod_id="restartme", image="img",
                          command=[sys.executable, "-m", "http.server"],
                          arguments=["{port}", "--bind", "127.0.0.1"])
    wait_status(tapis, "restartme", {"AVAILABLE"})
    assert tapis.pods.restart_pod(pod_id="restartme").status_requested == "RESTART"
    wait_status(tapis, "restartme", {"STOPPED", "REQUESTED", "SPAWNER SETUP", "CREATING"})
    wait_status(tapis, "restartme", {"AVAILABLE"})
    assert standin.pods["restartme"].statuses == [
        "REQUESTED", "SPAWNER SETUP", "CREATING", "AVAILABLE", "DELETING", "STOPPED",
        "REQUESTED", "SPAWNER SETUP", "CREATING", "AVAILABLE"]
    pod = tapis.pods.get_pod(pod_id="restartme")
    assert pod.status_requested == "ON"
    assert requests.get(standin.local_url("restartme"), timeout=10).status_code == 200


def test_image_config_mapping_and_port_rewrite(tmp_path):
    # the runner's config mapping gives images an entrypoint; "--port 8000" (the pod's
    # declared port) is rewritten to the free local port
    entrypoint = [sys.executable, "-c", PORT_FLAG_SERVER]
    images = {"example/http": entrypoint}
    with StandIn(workdir=tmp_path / "s", images=images, phase_seconds=0.1) as s:
        t = Tapis(base_url=s.base_url, tenant_id="tacc", access_token=s.issue_token())
        t.pods.create_pod(pod_id="imgpod", image="example/http:latest",
                          arguments=["--host", "127.0.0.1", "--port", "8000"],
                          networking={"default": {"protocol": "http", "port": 8000}})
        wait_status(t, "imgpod", {"AVAILABLE"})
        ep = local_endpoint(s, "imgpod")
        assert ep["argv"] == [*entrypoint, "--host", "127.0.0.1", "--port", str(ep["port"])]
        assert requests.get(ep["url"], timeout=10).status_code == 200


def test_spec_shape_volume_mounts_and_dropped_fields(standin: StandIn, tapis: Tapis):
    tapis.pods.create_volume(volume_id="shared")
    spec_shape = {"shared": {"type": "tapisvolume", "mount_path": "/data", "sub_path": "sub"}}
    pod = tapis.pods.create_pod(
        pod_id="specpod", image="img", status_requested="OFF", volume_mounts=spec_shape,
        # not in tapipy's bundled NewPod schema -> tapipy drops them without a word
        secret_map={"TOKEN": "${secret:mine}"}, template_overrides={"x": 1}, bogus=True)
    assert pod.status == "STOPPED"
    record = standin.pods["specpod"]
    assert record.raw_body == {"pod_id": "specpod", "image": "img", "status_requested": "OFF",
                               "volume_mounts": spec_shape}
    assert record.volume_mounts_shape == "spec"
    assert record.mounts == {"/data": str(standin.volumes["shared"].path / "sub")}
    assert pod.volume_mounts.shared.mount_path == "/data"

    # update_pod: volume_mounts switch to the live shape; the body arrives as given
    live = {"/models": {"type": "tapisvolume", "source_id": "shared", "sub_path": ""}}
    updated = tapis.pods.update_pod(pod_id="specpod", volume_mounts=live, description="d2")
    assert updated.description == "d2"
    assert record.update_bodies[-1] == {"volume_mounts": live, "description": "d2"}
    assert record.volume_mounts_shape == "live"

    with pytest.raises(errors.BadRequestError) as err:
        tapis.pods.create_pod(pod_id="badmount", image="img", volume_mounts={
            "/x": {"type": "tapisvolume", "source_id": "nosuchvol"}})
    assert err.value.message == [
        "volume_mounts: Value error, volume_mounts['/x'] source_id 'nosuchvol' not found. "
        "No volume with this ID exists."]


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize("pod_id", ["Bad", "1abc", "ab", "a" * 65, "my-pod", "volumes",
                                    "snapshots", "admin"])
def test_invalid_pod_ids_are_400_with_list_message(standin: StandIn, tapis: Tapis, pod_id):
    with pytest.raises(errors.BadRequestError) as err:
        tapis.pods.create_pod(pod_id=pod_id, image="img")
    assert isinstance(err.value.message, list) and len(err.value.message) == 1
    assert err.value.message[0].startswith("pod_id: Value error, pod_id ")
    assert err.value.response.status_code == 400
    assert tapis.pods.list_pods() == []


def test_duplicate_pod_and_other_400s(standin: StandIn, tapis: Tapis):
    tapis.pods.create_pod(pod_id="dup", image="img", status_requested="OFF")
    with pytest.raises(errors.BadRequestError) as err:
        tapis.pods.create_pod(pod_id="dup", image="img")
    assert "already exists" in str(err.value.message)

    with pytest.raises(errors.BadRequestError) as err:
        tapis.pods.create_pod(pod_id="noimage")
    assert err.value.message == [": Value error, image is required if template is not "
                                 "provided."]

    with pytest.raises(errors.BadRequestError) as err:
        tapis.pods.create_pod(pod_id="badenv", image="img", environment_variables={"A": 1},
                              networking={"default": {"protocol": "udp", "port": 5}})
    assert len(err.value.message) == 3

    with pytest.raises(errors.InvalidInputError):  # tapipy itself enforces required fields
        tapis.pods.create_pod(image="img")


# ------------------------------------------------------------------------- fault injection


def test_injected_500_on_create_pod(standin: StandIn, tapis: Tapis):
    standin.fail_next("create_pod", status=500)
    with pytest.raises(errors.InternalServerError) as err:
        tapis.pods.create_pod(pod_id="flaky", image="img", status_requested="OFF")
    assert err.value.response.status_code == 500
    with pytest.raises(errors.NotFoundError):
        tapis.pods.get_pod(pod_id="flaky")  # the failed call created nothing
    assert tapis.pods.create_pod(pod_id="flaky", image="img", status_requested="OFF").pod_id

    # tapipy's own retry (Config(retries=...)) retries InternalServerError only
    standin.fail_next("get_pod", status=500, times=2)
    pod = tapis.pods.get_pod(pod_id="flaky", _config=Config(retries=2))
    assert pod.pod_id == "flaky"
    assert [c.status for c in standin.calls_to("get_pod")][-3:] == [500, 500, 200]

    standin.fail_next("get_pod", status=503)
    with pytest.raises(errors.ServiceUnavailableError):  # 503 is NOT retried by default
        tapis.pods.get_pod(pod_id="flaky", _config=Config(retries=2))


@pytest.mark.parametrize(("status", "exc"), [
    (400, errors.BadRequestError),
    (401, errors.UnauthorizedError),
    (403, errors.ForbiddenError),
    (404, errors.NotFoundError),
    (409, errors.BaseTapyException),  # no dedicated class: the catch-all
    (500, errors.InternalServerError),
    (502, errors.InternalServerError),  # any 5xx except 503
    (503, errors.ServiceUnavailableError),
])
def test_tapipy_exception_class_per_status(standin: StandIn, tapis: Tapis, status, exc):
    standin.fail_next("list_pods", status=status, message=f"injected {status}")
    with pytest.raises(errors.BaseTapyException) as err:
        tapis.pods.list_pods()
    assert type(err.value) is exc
    assert err.value.message == f"injected {status}"
    assert err.value.version == "1.9.0"
    assert err.value.response.status_code == status
    assert tapis.pods.list_pods() == []  # only the next call failed


def test_slow_response_and_client_timeout(standin: StandIn, tapis: Tapis):
    # tapipy sets no timeout: a 1.5 s delay just makes the call slow
    standin.delay(1.5, "list_pods", times=1)
    start = time.monotonic()
    assert tapis.pods.list_pods() == []
    assert time.monotonic() - start >= 1.5

    # with a timeout on tapipy's requests session the call fails fast
    tapis.requests_session = TimeoutSession(0.5)
    standin.delay(3.0, "list_pods", times=1)
    start = time.monotonic()
    with pytest.raises(errors.BaseTapyException) as err:
        tapis.pods.list_pods()
    assert time.monotonic() - start < 2.5
    assert type(err.value) is errors.BaseTapyException  # not a subclass
    assert "Unable to make request to Tapis server" in err.value.message
    assert "timed out" in err.value.message
    assert err.value.response is None
    assert tapis.pods.list_pods() == []


def test_pod_deleted_behind_the_back_is_404(standin: StandIn, tapis: Tapis):
    tapis.pods.create_pod(pod_id="ghost", image="img", command=SLEEPER)
    wait_status(tapis, "ghost", {"CREATING"})
    pid = standin.pods["ghost"].pids[-1]
    standin.delete_pod_behind_back("ghost")
    assert not group_alive(pid)
    with pytest.raises(errors.NotFoundError) as err:
        tapis.pods.get_pod(pod_id="ghost")
    assert err.value.message == "Pod with identifier pod_id: 'ghost' not found"
    with pytest.raises(errors.NotFoundError):
        tapis.pods.stop_pod(pod_id="ghost")


def test_forced_error_with_log_text(standin: StandIn, tapis: Tapis):
    tapis.pods.create_pod(pod_id="crashy", image="img", command=SLEEPER)
    wait_status(tapis, "crashy", {"CREATING"})
    pid = standin.pods["crashy"].pids[-1]
    standin.force_error("crashy", "torch.cuda.OutOfMemoryError: CUDA out of memory")
    pod = tapis.pods.get_pod(pod_id="crashy")
    assert pod.status == "ERROR"
    assert not group_alive(pid)
    assert "CUDA out of memory" in tapis.pods.get_pod_logs(pod_id="crashy").logs
    tapis.pods.stop_pod(pod_id="crashy")
    assert wait_status(tapis, "crashy", {"STOPPED"})[-2:] == ["DELETING", "STOPPED"]


@pytest.mark.parametrize(("code", "final"), [(0, "COMPLETE"), (3, "ERROR")])
def test_process_exit_gives_complete_or_error(standin: StandIn, tapis: Tapis, code, final):
    script = f"import sys; print('doing work'); sys.exit({code})"
    tapis.pods.create_pod(pod_id=f"exit{code}", image="img",
                          command=[sys.executable, "-c", script])
    assert wait_status(tapis, f"exit{code}", {"COMPLETE", "ERROR"})[-1] == final
    assert "doing work" in tapis.pods.get_pod_logs(pod_id=f"exit{code}").logs
    assert tapis.pods.get_pod(pod_id=f"exit{code}").status_container.exit_code == code


def test_unknown_command_ends_in_error(standin: StandIn, tapis: Tapis):
    tapis.pods.create_pod(pod_id="nocmd", image="not/configured")
    assert wait_status(tapis, "nocmd", {"ERROR", "AVAILABLE"})[-1] == "ERROR"
    assert "is not configured" in tapis.pods.get_pod_logs(pod_id="nocmd").logs


def test_healthcheck_needs_no_token(standin: StandIn):
    t = Tapis(base_url=standin.base_url, tenant_id="tacc")
    assert t.pods.healthcheck() == "I promise I'm healthy."


def test_module_runs_as_a_script():
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.tapis_standin.server", "--port", "0",
         "--phase-seconds", "0.1"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not lines or "listening on" not in lines[-1]:
            lines.append(proc.stdout.readline())
            assert lines[-1], f"server exited: {lines}"
        assert lines[-1].startswith("Tapis stand-in listening on http://127.0.0.1:"), lines
        assert len(lines) == 1, lines  # no warnings before the banner
        base_url = lines[-1].split()[4]
        t = Tapis(base_url=base_url, tenant_id="tacc", username="any", password="thing")
        t.get_tokens()
        assert t.pods.list_pods() == []
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
