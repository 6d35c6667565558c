"""P2: request latency and streaming throughput through our paramiko tunnel vs OpenSSH
`ssh -L`, to the same sshd and the same upstream, in one run. Goal: latency <= 1.3x OpenSSH.

Upstream: a small HTTP server on 127.0.0.1 (`/ping` answers 2 bytes; `/stream` sends 8 MiB in
64 KiB chunks). Both tunnels end on 127.0.0.1 as seen from the sshd."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
from cluster import cluster_env, slurm_config
from common import stats, write

from hpcserve_jupyter.targets.slurm.target import SlurmTarget

REQUESTS = 300
STREAM_MB = 8


UPSTREAM = f"""
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # no 40 ms delayed-ACK stalls between header and body
    def do_GET(self):
        if self.path.startswith("/stream"):
            chunk = b"x" * 65536
            self.send_response(200)
            self.send_header("Content-Length", str({STREAM_MB} * 16 * len(chunk)))
            self.end_headers()
            for _ in range({STREAM_MB} * 16):
                self.wfile.write(chunk)
            return
        # One write: header and body in one segment, so no Nagle/delayed-ACK stall on any
        # hop (sshd does not set TCP_NODELAY on its forwarded connection to the upstream).
        self.wfile.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str) -> dict:
    with httpx.Client(timeout=30) as client:  # keep-alive: one tunnel connection
        for _ in range(20):
            client.get(url + "/ping")
        lat = []
        for _ in range(REQUESTS):
            start = time.perf_counter()
            client.get(url + "/ping")
            lat.append(time.perf_counter() - start)
        tput = []
        for _ in range(3):
            start = time.perf_counter()
            size = len(client.get(url + "/stream").content)
            tput.append(size / 2**20 / (time.perf_counter() - start))
    fresh = []
    for _ in range(50):  # a new TCP connection (and SSH channel) per request
        start = time.perf_counter()
        httpx.get(url + "/ping", timeout=30)
        fresh.append(time.perf_counter() - start)
    return {"latency_s": stats(lat), "new_connection_latency_s": stats(fresh),
            "throughput_mib_s": stats(tput)}


def main() -> dict:
    env = cluster_env()
    # The upstream runs in its own process, as an engine would: only the tunnel under test
    # shares this process (and its GIL) with the client.
    server = subprocess.Popen([sys.executable, "-c", UPSTREAM], stdout=subprocess.PIPE,
                              text=True)
    up = int(server.stdout.readline())
    target = SlurmTarget("bench", slurm_config(env))
    host, port = target.shell().open_tunnel("127.0.0.1", up)
    ours = f"http://{host}:{port}"
    lport = free_port()
    ssh = subprocess.Popen([
        "ssh", "-N", "-L", f"{lport}:127.0.0.1:{up}", "-p", env["HPCSERVE_TEST_SSH_PORT"],
        "-i", env["HPCSERVE_TEST_SSH_KEY"], "-o", "BatchMode=yes",
        "-o", f"UserKnownHostsFile={env['HPCSERVE_TEST_SSH_KNOWN_HOSTS']}",
        "-o", "ExitOnForwardFailure=yes", f"{env['HPCSERVE_TEST_SSH_USER']}@127.0.0.1"])
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{lport}/ping", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        direct = measure(f"http://127.0.0.1:{up}")
        openssh = measure(f"http://127.0.0.1:{lport}")
        paramiko_ = measure(ours)
    finally:
        ssh.terminate()
        server.terminate()
    ratio = paramiko_["latency_s"]["median"] / openssh["latency_s"]["median"]
    ratio_new = (paramiko_["new_connection_latency_s"]["median"]
                 / openssh["new_connection_latency_s"]["median"])
    tput_ratio = (paramiko_["throughput_mib_s"]["median"]
                  / openssh["throughput_mib_s"]["median"])
    result = {"requests": REQUESTS, "direct": direct, "openssh_L": openssh,
              "paramiko_tunnel": paramiko_, "latency_ratio_vs_openssh": round(ratio, 3),
              "new_connection_latency_ratio_vs_openssh": round(ratio_new, 3),
              "throughput_ratio_vs_openssh": round(tput_ratio, 3), "goal_latency_ratio": 1.3,
              "goal_met": ratio <= 1.3}
    for name, r in (("direct", direct), ("openssh -L", openssh), ("paramiko", paramiko_)):
        print(f"{name:11} p50 {r['latency_s']['p50'] * 1000:6.2f} ms  p99 "
              f"{r['latency_s']['p99'] * 1000:6.2f} ms  new-conn p50 "
              f"{r['new_connection_latency_s']['p50'] * 1000:6.2f} ms  stream "
              f"{r['throughput_mib_s']['median']:7.1f} MiB/s")
    print(f"latency ratio paramiko/openssh: {ratio:.2f} (goal <= 1.3; new connections "
          f"{ratio_new:.2f}); throughput ratio {tput_ratio:.2f}")
    print("wrote", write("p2_tunnel", result))
    return result


if __name__ == "__main__":
    main()
