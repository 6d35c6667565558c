"""R8 (every route refuses unauthenticated requests; the proxy cannot be steered anywhere but a
registered session endpoint) and R9 (autostop of an idle session; keepalive and proxied traffic
postpone it; on SLURM and Tapis the job or pod is really gone), against a real `jupyter server`
subprocess, the SLURM test cluster, the Tapis stand-in and the real llama.cpp engine."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time

import pytest

from conftest import (
    KillableServer,
    free_port,
    marked_processes,
    record,
    remote_target,
    slurm_jobs,
    until,
    wait_ready,
)
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.jupyter.routes import ROUTES
from hpcserve_jupyter.sessions import State

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]
TICK = 0.5  # the server's poll_interval (JupyterServer passes --HpcserveApp.poll_interval=0.5)


class Canary:
    """A listening socket that counts every connection it is steered into."""

    def __init__(self, host: str = "127.0.0.1", family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.hits = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.hits += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary")
            conn.close()

    def close(self) -> None:
        self.sock.close()


def raw(port: int, method: str, target: str, headers: dict[str, str] | None = None,
        body: bytes = b"") -> tuple[int, bytes]:
    """An HTTP/1.1 request sent byte for byte (no client-side URL normalisation)."""
    head = {"Host": f"127.0.0.1:{port}", "Connection": "close",
            "Content-Length": str(len(body)), **(headers or {})}
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items()), "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall("\r\n".join(lines).encode() + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def test_r8_unauthenticated_refused_and_proxy_not_steerable(tmp_path):
    port = free_port()
    server = KillableServer(tmp_path, port)
    canary, canary6 = Canary(), None
    with contextlib.suppress(OSError):  # no IPv6 on this machine
        canary6 = Canary("::1", socket.AF_INET6)
    sid = None
    try:
        r = server.http.post("hpcserve/api/sessions", json={"recipe": "smollm2-135m"})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        wait_ready(server, sid)
        fill = {"id": sid, "name": "smollm2-135m", "model": sid, "path": "v1/models"}
        refused = 0
        leaks = []
        for route in ROUTES:
            path = re.sub(r"\{(\w+)\}", lambda m: fill.get(m.group(1), "local"), route.path)
            for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
                for auth in ({}, {"Authorization": "token wrong"},
                             {"Authorization": "Bearer wrong"}):
                    status, data = raw(port, method, path, auth, b"{}")
                    if status in (401, 403, 405) or (status == 302 and b"login" in data):
                        refused += 1
                    else:
                        leaks.append((method, path, auth, status, data[:200]))
        assert leaks == []
        assert server.http.get(f"hpcserve/api/sessions/{sid}").json()["state"] == "ready"

        c = canary.port
        tok = {"Authorization": "token " + server.http.headers["Authorization"].split()[1]}
        steer = [
            f"/hpcserve/proxy/http%3A%2F%2F127.0.0.1%3A{c}/",
            f"/hpcserve/proxy/127.0.0.1:{c}/",
            f"/hpcserve/proxy/127.0.0.1%3A{c}/v1/models",
            f"/hpcserve/proxy/{sid}@127.0.0.1:{c}/",
            f"/hpcserve/proxy/{sid}/@127.0.0.1:{c}/",
            f"/hpcserve/proxy/{sid}/%40127.0.0.1:{c}/",
            f"/hpcserve/proxy/{sid}/..%2F..%2F127.0.0.1:{c}/",
            f"/hpcserve/proxy/{sid}/../../127.0.0.1:{c}/",
            f"/hpcserve/proxy/{sid}/%2F%2F127.0.0.1:{c}/x",
            f"/hpcserve/proxy/{sid}//127.0.0.1:{c}/x",
            f"/hpcserve/proxy/{sid}/http://127.0.0.1:{c}/",
            f"/hpcserve/proxy/{sid}/http:%2F%2F127.0.0.1:{c}/",
            f"/hpcserve/proxy/%5B%3A%3A1%5D:{c}/",
            f"/hpcserve/proxy/[::1]:{c}/",
            f"/hpcserve/proxy/{sid}/[::1]:{c}/",
            f"/hpcserve/proxy/..%2F{sid}/v1/models",
            f"http://127.0.0.1:{c}/hpcserve/proxy/{sid}/v1/models",  # absolute request target
            f"/hpcserve/proxy/{sid}%2F..%2F..%2F127.0.0.1:{c}/",
        ]
        if canary6:
            steer.append(f"/hpcserve/proxy/[::1]:{canary6.port}/")
        errors = []
        for target in steer:
            for headers in (tok, {**tok, "Host": f"127.0.0.1:{c}"},
                            {**tok, "X-Forwarded-Host": f"127.0.0.1:{c}"}):
                status, data = raw(port, "GET", target, headers)
                if (status >= 500 and status not in (502, 503, 504)) or b"canary" in data:
                    errors.append((target, headers, status, data[:200]))
        for model in (f"127.0.0.1:{c}", f"http://127.0.0.1:{c}", f"{sid}@127.0.0.1:{c}"):
            status, data = raw(port, "POST", "/hpcserve/v1/chat/completions",
                               {**tok, "Content-Type": "application/json"},
                               json.dumps({"model": model, "messages": []}).encode())
            if status < 400 or b"canary" in data:
                errors.append(("gateway", model, status, data[:200]))
        time.sleep(0.3)
        hits = canary.hits + (canary6.hits if canary6 else 0)
        assert errors == [] and hits == 0, (errors, hits)
        record("R8", routes=len(ROUTES), unauthenticated_requests_refused=refused,
               unauthenticated_leaks=len(leaks), steering_attempts=len(steer) * 3 + 3,
               canary_connections=hits, ipv6_canary=bool(canary6))
    finally:
        canary.close()
        if canary6:
            canary6.close()
        if sid:
            server.http.delete(f"hpcserve/api/sessions/{sid}")
        server.stop()


def test_r9_autostop_postponed_by_traffic_then_stops(tmp_path, isolated_home):
    idle = 4
    port = free_port()
    server = KillableServer(tmp_path, port)
    sid = None
    try:
        r = server.http.post("hpcserve/api/sessions", json={
            "recipe": "smollm2-135m", "overrides": {"idle_timeout": f"{idle}s"}})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        wait_ready(server, sid)
        assert sid in marked_processes(isolated_home)

        def state() -> str:
            return server.http.get(f"hpcserve/api/sessions/{sid}").json()["state"]

        for _ in range(2 * idle):  # proxied traffic only, for twice the idle timeout
            assert server.http.get(f"hpcserve/proxy/{sid}/v1/models").status_code == 200
            time.sleep(1)
        assert state() == "ready"
        for _ in range(2 * idle):  # keepalive only
            assert server.http.post(f"hpcserve/api/sessions/{sid}/keepalive").status_code == 200
            time.sleep(1)
        assert state() == "ready"
        server.http.post(f"hpcserve/api/sessions/{sid}/keepalive")
        last = time.monotonic()
        assert until(lambda: state() == "stopped", idle + 15, 0.05)
        took = time.monotonic() - last
        body = server.http.get(f"hpcserve/api/sessions/{sid}").json()
        assert "autostop" in body["reason"]
        assert took <= idle + TICK + 1.5, took
        gone = until(lambda: sid not in marked_processes(isolated_home), 5)
        assert gone, marked_processes(isolated_home).get(sid)
        sid = None
        record("R9", idle_timeout_s=idle, poll_interval_s=TICK,
               last_activity_to_stopped_s=round(took, 2),
               postponed_by_proxy_s=2 * idle, postponed_by_keepalive_s=2 * idle,
               process_gone=True)
    finally:
        if sid:
            server.http.delete(f"hpcserve/api/sessions/{sid}")
        server.stop()


@pytest.mark.parametrize("kind", ["slurm", "tapis", "tapis-jobs"])
def test_r9_autostop_really_ends_the_job_or_pod(kind, request):
    """Autostop on the remote targets: the idle session is stopped within idle timeout + one
    tick, and the target confirms the job (squeue) or the pod and its volume (the Pods API) is
    gone, not just the record."""
    idle = 4
    config, truth = remote_target(request, kind)
    hp = Hpcserve(poll_interval=TICK, target_configs={"remote": config})
    try:
        s = hp.launch("smollm2-135m", on="remote", timeout=180, idle_timeout=f"{idle}s",
                      cpus=1)
        assert s.state == State.READY, (s.state, s.reason, s.log_tail)
        hp.keepalive(s.id)
        last, last_wall = time.monotonic(), time.time()
        ended = until(lambda: (x := hp.status(s.id)).state.terminal and x, idle + 30, 0.05)
        took = time.monotonic() - last
        assert ended and ended.state == State.STOPPED and "autostop" in ended.reason, ended
        decided = next(e["ts"] for e in hp.events(s.id)
                       if e["kind"] == "stop" and "autostop" in e["message"]) - last_wall
        assert decided <= idle + TICK + 1.0, decided  # the autostop decision: within one tick
        if kind == "slurm":
            name = s.handle["job_name"]
            gone = until(lambda: name not in slurm_jobs(truth.user), 30)
        elif kind == "tapis-jobs":  # CANCELLED at the Jobs API, and gone from SLURM's queue
            job = truth.jobs.get(s.handle["job_uuid"])
            remote = job.fields["remoteJobId"]
            gone = job.status == "CANCELLED" and until(lambda: not subprocess.run(
                ["squeue", "--noheader", "-j", str(remote)], capture_output=True,
                text=True).stdout.strip(), 30)
        else:
            gone = until(lambda: not truth.pods and not truth.volumes, 30)
        assert gone
        # Stopping includes the target's own stop (scancel / stop_pod + delete): the time
        # from the last activity to `stopped` is idle timeout + one tick + that stop.
        record("R9", **{f"{kind}_last_activity_to_autostop_s": round(decided, 2),
                        f"{kind}_last_activity_to_stopped_s": round(took, 2),
                        f"{kind}_gone_at_target": True})
    finally:
        for x in hp.sessions(live_only=True):
            hp.stop(x.id)
        hp.close()
