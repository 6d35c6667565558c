"""The SSH layer against the real test sshd and SLURM of scripts/testcluster.sh (no mocks)."""

from __future__ import annotations

import concurrent.futures
import http.client
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hpcserve_jupyter.errors import BadInput, TargetUnreachable
from hpcserve_jupyter.targets.slurm.connection import SSHConnection
from hpcserve_jupyter.targets.slurm.sharing import open_shell, shared_connection
from hpcserve_jupyter.targets.slurm.shell import (
    AuthenticationFailed,
    CommandTimeout,
    HostKeyMismatch,
    LocalShell,
    RemoteCommandError,
    Secret,
    Shell,
    SSHUnreachable,
    UnknownHostKey,
    build_command,
)

if TYPE_CHECKING:
    from conftest import ClusterEnv

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


# --- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def conn(cluster: ClusterEnv) -> Iterator[SSHConnection]:
    connection = SSHConnection(cluster.settings())
    yield connection
    connection.close()


@pytest.fixture(params=["ssh", "local"])
def shell(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shell]:
    """The same tests run over SSH and with LocalShell (`host: local`)."""
    if request.param == "local":
        yield LocalShell(cwd=tmp_path)
        return
    cluster: ClusterEnv = request.getfixturevalue("cluster")
    connection = SSHConnection(cluster.settings())
    yield connection
    connection.close()


def new_key(directory: Path, passphrase: str = "") -> Path:
    key = directory / f"key-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-f", str(key)],
                   check=True)
    return key


def server_side_pids(local_port: int, server_port: int) -> list[int]:
    """The sshd processes serving the TCP connection whose client end is `local_port`."""
    out = subprocess.run(
        ["ss", "-tnpH", "state", "established",
         f"( sport = :{server_port} and dport = :{local_port} )"],
        capture_output=True, text=True, check=True).stdout
    return sorted({int(pid) for pid in re.findall(r"pid=(\d+)", out)})


def kill_sshd_child(connection: SSHConnection, cluster: ClusterEnv) -> None:
    """Kill the sshd processes serving this connection (never the listening daemon)."""
    local_port = connection.transport.sock.getsockname()[1]
    pids = server_side_pids(local_port, cluster.port)
    daemon = int(cluster.path("HPCSERVE_TEST_SSHD_PID_FILE").read_text().strip())
    pids = [pid for pid in pids if pid not in (daemon, os.getpid())]
    assert pids, f"no sshd process found for client port {local_port}"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


# --- commands and quoting ---------------------------------------------------------------------


def test_run_returns_stdout_stderr_and_exit_code(shell: Shell) -> None:
    ok = shell.run(["echo", "hello"])
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, "hello\n", "")
    failed = shell.run(["sh", "-c", "echo out; echo err >&2; exit 7"], check=False)
    assert (failed.exit_code, failed.stdout, failed.stderr) == (7, "out\n", "err\n")
    assert not failed.ok


def test_nonzero_exit_raises_with_command_code_and_output(shell: Shell) -> None:
    with pytest.raises(RemoteCommandError) as caught:
        shell.run(["sh", "-c", "echo out; echo 'it broke' >&2; exit 3"])
    error = caught.value
    assert (error.exit_code, error.stdout, error.stderr) == (3, "out\n", "it broke\n")
    assert error.command == "sh -c 'echo out; echo '\"'\"'it broke'\"'\"' >&2; exit 3'"
    assert "exit code 3" in str(error) and "it broke" in str(error)


def test_missing_program_is_exit_127(shell: Shell) -> None:
    result = shell.run(["hpcserve-no-such-program", "x"], check=False)
    assert result.exit_code == 127


@pytest.mark.parametrize("login_shell", [False, True])
def test_arguments_are_passed_literally(shell: Shell, login_shell: bool) -> None:
    canary = Path(f"/tmp/hpcserve-canary-{uuid.uuid4().hex}")
    nasty = [
        f"; touch {canary}",
        f"$(touch {canary})",
        f"`touch {canary}`",
        f"' ; touch {canary}; echo '",
        f'" ; touch {canary}; echo "',
        "line one\nline two",
        "*",
        "$HOME ${PATH} %s \\n",
        "",
        "tab\there",
    ]
    result = shell.run(["printf", "%s\\0", *nasty], login_shell=login_shell)
    assert result.stdout.split("\0")[:-1] == nasty
    assert not canary.exists(), "an argument was interpreted by a shell"


def test_stdin_is_passed_and_closed(shell: Shell) -> None:
    assert shell.run(["cat"], stdin="line 1\nline 2\n").stdout == "line 1\nline 2\n"
    assert shell.run(["cat"]).stdout == ""  # no stdin: EOF at once, no hang
    big = os.urandom(300_000).hex()  # bigger than the SSH windows: needs concurrent I/O
    assert shell.run(["wc", "-c"], stdin=big).stdout.strip() == str(len(big))


def test_login_shell(shell: Shell) -> None:
    assert shell.run(["shopt", "login_shell"], login_shell=True).stdout.split() == [
        "login_shell", "on"]


def test_timeout(shell: Shell) -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimeout) as caught:
        shell.run(["sh", "-c", "echo early; sleep 20"], timeout=1.5)
    assert time.monotonic() - started < 10
    assert isinstance(caught.value, TargetUnreachable)
    assert "did not finish in 1.5 s" in str(caught.value)


def test_empty_command_is_bad_input() -> None:
    with pytest.raises(BadInput):
        build_command([])


def test_nul_byte_in_an_argument_is_bad_input() -> None:
    # The remote shell receives the command as a C string: it would be cut at the NUL.
    for login_shell in (False, True):
        with pytest.raises(BadInput, match=r"argument 2 of 'mkdir' contains a NUL byte"):
            build_command(["mkdir", "-p", "/tmp/a\0; touch /tmp/x"], login_shell=login_shell)


# --- files ------------------------------------------------------------------------------------


def test_write_read_from_offset_and_stat(shell: Shell) -> None:
    name = f"hpcserve-test-{uuid.uuid4().hex[:8]}.log"
    try:
        shell.write_file(name, "secret\n", mode=0o600)
        info = shell.stat(name)
        assert info.size == 7 and info.mode & 0o777 == 0o600 and not info.is_dir
        shell.write_file(name, b"line 1\n", mode=0o644)  # replaced whole, new mode
        assert shell.stat(name).mode & 0o777 == 0o644
        assert shell.read_file(name) == b"line 1\n"
        offset = len(b"line 1\n")
        shell.run(["sh", "-c", f"printf 'line 2\\n' >> {name}"])
        assert shell.read_file(name, offset) == b"line 2\n"  # following a growing log
        assert shell.read_file(name, offset + 7) == b""
        assert shell.read_file(name, 0, length=4) == b"line"
        with pytest.raises(FileNotFoundError):
            shell.read_file(name + ".missing")
        with pytest.raises(FileNotFoundError):
            shell.stat(name + ".missing")
    finally:
        shell.run(["rm", "-f", name])


# --- host keys --------------------------------------------------------------------------------


def test_unknown_host_is_refused_with_trust_hint(cluster: ClusterEnv, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    with pytest.raises(UnknownHostKey) as caught:
        SSHConnection(cluster.settings(known_hosts_file=str(known))).connect()
    message = str(caught.value)
    assert "[127.0.0.1]:2222" in message and "not known" in message
    assert f"ssh-keyscan -p {cluster.port} {cluster.host} >> {known}" in message
    assert "trust_on_first_use: true" in message
    assert not known.exists()


def test_trust_on_first_use_records_the_key(cluster: ClusterEnv, tmp_path: Path) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    with SSHConnection(cluster.settings(known_hosts_file=str(known),
                                        trust_on_first_use=True)) as first:
        assert first.run(["true"]).ok
    assert known.read_text() == f"[{cluster.host}]:{cluster.port} {cluster.host_key_line}\n"
    with SSHConnection(cluster.settings(known_hosts_file=str(known))) as second:
        assert second.run(["echo", "known now"]).stdout == "known now\n"
    assert len(known.read_text().splitlines()) == 1


def test_changed_host_key_is_refused_even_with_tofu(cluster: ClusterEnv,
                                                    tmp_path: Path) -> None:
    other = Path(f"{new_key(tmp_path)}.pub")
    known = tmp_path / "known_hosts"
    fake = " ".join(other.read_text().split()[:2])
    known.write_text(f"[{cluster.host}]:{cluster.port} {fake}\n")
    with pytest.raises(HostKeyMismatch) as caught:
        SSHConnection(cluster.settings(known_hosts_file=str(known),
                                       trust_on_first_use=True)).connect()
    assert "CHANGED" in str(caught.value) and "ssh-keygen -R" in str(caught.value)
    assert known.read_text().count("\n") == 1


# --- authentication ---------------------------------------------------------------------------


def test_wrong_key_is_refused_naming_user_host_and_key(cluster: ClusterEnv,
                                                       tmp_path: Path) -> None:
    stranger = new_key(tmp_path)
    with pytest.raises(AuthenticationFailed) as caught:
        SSHConnection(cluster.settings(key_file=str(stranger))).connect()
    message = str(caught.value)
    assert f"{cluster.user}@{cluster.host}:{cluster.port}" in message
    assert str(stranger) in message and "refused" in message


def test_passphrase_key_works(cluster: ClusterEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = cluster.settings(key_file=str(cluster.passphrase_key),
                                key_passphrase=cluster.passphrase)
    with SSHConnection(settings) as connection:
        assert connection.run(["whoami"]).stdout.strip() == cluster.user
        assert cluster.passphrase not in repr(connection)
    assert cluster.passphrase not in repr(settings)
    assert cluster.passphrase not in caplog.text


def test_passphrase_from_file(cluster: ClusterEnv) -> None:
    settings = cluster.settings(
        key_file=str(cluster.passphrase_key),
        key_passphrase_file=cluster.env["HPCSERVE_TEST_SSH_KEY_PASSPHRASE_FILE"])
    with SSHConnection(settings) as connection:
        assert connection.run(["true"]).ok


def test_wrong_or_missing_passphrase_is_clear_and_secret(
        cluster: ClusterEnv, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "not-the-passphrase-" + uuid.uuid4().hex
    settings = cluster.settings(key_file=str(cluster.passphrase_key), key_passphrase=wrong)
    with pytest.raises(AuthenticationFailed) as caught:
        SSHConnection(settings).connect()
    for text in (str(caught.value), repr(caught.value), repr(settings), caplog.text):
        assert wrong not in text
    assert "wrong passphrase" in str(caught.value)
    assert str(cluster.passphrase_key) in str(caught.value)
    assert repr(Secret(wrong)) == "Secret('***')"

    with pytest.raises(AuthenticationFailed) as missing:
        SSHConnection(cluster.settings(key_file=str(cluster.passphrase_key))).connect()
    assert "encrypted and no passphrase was given" in str(missing.value)


def test_ssh_agent(cluster: ClusterEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = tmp_path / "agent.sock"
    started = subprocess.run(["ssh-agent", "-a", str(sock), "-s"], capture_output=True,
                             text=True, check=True).stdout
    agent_pid = int(re.search(r"SSH_AGENT_PID=(\d+)", started).group(1))  # type: ignore[union-attr]
    try:
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        subprocess.run(["ssh-add", "-q", str(cluster.key)], check=True, capture_output=True)
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on
        settings = cluster.settings(key_file=None, use_agent=True)
        with SSHConnection(settings) as connection:
            assert connection.run(["whoami"]).stdout.strip() == cluster.user
    finally:
        os.kill(agent_pid, signal.SIGTERM)


# --- ~/.ssh/config and ProxyJump --------------------------------------------------------------


def test_ssh_config_host_alias(cluster: ClusterEnv, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(f"Host testcluster\n  HostName {cluster.host}\n  Port {cluster.port}\n"
                      f"  User {cluster.user}\n  IdentityFile {cluster.key}\n")
    settings = cluster.settings(host="testcluster", port=None, user=None, key_file=None,
                                ssh_config_file=str(config))
    with SSHConnection(settings) as connection:
        assert connection.endpoint.label == f"{cluster.user}@{cluster.host}:{cluster.port}"
        assert connection.run(["whoami"]).stdout.strip() == cluster.user


def assert_came_through_sshd(connection: SSHConnection) -> None:
    """The target sshd's client must be the jump sshd, not this test process.

    The socket is named by both ports: Linux gives one ephemeral port to several outgoing
    connections to different destinations, so the source port alone also matched an unrelated
    socket of this process (a CI run failed on that)."""
    fields = connection.run(["sh", "-c", "echo $SSH_CONNECTION"]).stdout.split()
    client_port, server_port = int(fields[1]), int(fields[3])
    owners = subprocess.run(["ss", "-tnpH", "state", "established",
                             f"( sport = :{client_port} and dport = :{server_port} )"],
                            capture_output=True, text=True, check=True).stdout
    assert '"sshd"' in owners, owners
    assert f"pid={os.getpid()}," not in owners, owners


def test_proxy_jump_setting(cluster: ClusterEnv) -> None:
    jump = f"{cluster.user}@{cluster.host}:{cluster.port}"
    with SSHConnection(cluster.settings(proxy_jump=jump)) as connection:
        assert [hop.label for hop in connection.jumps] == [jump]
        assert connection.run(["echo", "via jump"]).stdout == "via jump\n"
        assert_came_through_sshd(connection)


def test_proxy_jump_from_ssh_config(cluster: ClusterEnv, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        f"Host bastion\n  HostName {cluster.host}\n  Port {cluster.port}\n  User {cluster.user}\n"
        f"  IdentityFile {cluster.key}\n"
        f"Host cluster\n  HostName {cluster.host}\n  Port {cluster.port}\n  User {cluster.user}\n"
        f"  IdentityFile {cluster.key}\n  ProxyJump bastion\n")
    settings = cluster.settings(host="cluster", port=None, user=None, key_file=None,
                                ssh_config_file=str(config))
    with SSHConnection(settings) as connection:
        assert len(connection.jumps) == 1
        assert_came_through_sshd(connection)


# --- one connection, reconnects ---------------------------------------------------------------


def test_one_transport_serves_every_command(conn: SSHConnection) -> None:
    transport = conn.transport
    for i in range(10):
        assert conn.run(["echo", str(i)]).stdout == f"{i}\n"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        outputs = list(pool.map(lambda i: conn.run(["echo", str(i)]).stdout, range(40)))
    assert outputs == [f"{i}\n" for i in range(40)]
    conn.read_file(".profile")
    assert conn.transport is transport and conn.generation == 1


def test_shared_connection_is_one_per_cluster(cluster: ClusterEnv) -> None:
    settings = cluster.settings()
    first = shared_connection(settings)
    try:
        assert shared_connection(cluster.settings()) is first
        assert open_shell(settings.host, **{k: getattr(settings, k) for k in (
            "port", "user", "key_file", "known_hosts_file", "ssh_config_file",
            "user_known_hosts_file", "use_agent", "connect_timeout", "reconnect_attempts",
            "reconnect_backoff")}) is first
    finally:
        first.close()
    assert shared_connection(settings) is not first
    shared_connection(settings).close()
    assert isinstance(open_shell("local"), LocalShell)


def test_reconnects_after_the_sshd_child_is_killed(conn: SSHConnection,
                                                   cluster: ClusterEnv) -> None:
    assert conn.run(["true"]).ok
    old = conn.transport
    kill_sshd_child(conn, cluster)
    wait_until(lambda: not old.is_active(), 10, "paramiko to notice the dead connection")
    assert conn.run(["echo", "back"]).stdout == "back\n"
    assert conn.transport is not old and conn.generation == 2
    assert conn.read_file(".profile")


def test_connection_lost_mid_command_is_unreachable_not_failed(conn: SSHConnection,
                                                               cluster: ClusterEnv) -> None:
    conn.run(["true"])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(conn.run, ["sleep", "30"])
        time.sleep(0.5)
        kill_sshd_child(conn, cluster)
        with pytest.raises(SSHUnreachable) as caught:
            running.result(timeout=20)
    assert "lost while running sleep 30" in str(caught.value)
    assert "unknown" in str(caught.value)
    assert conn.run(["echo", "again"]).stdout == "again\n"


def test_unreachable_host_gives_up_after_backoff(cluster: ClusterEnv) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    settings = cluster.settings(port=closed_port, reconnect_attempts=3, reconnect_backoff=0.1)
    started = time.monotonic()
    with pytest.raises(SSHUnreachable) as caught:
        SSHConnection(settings).run(["true"])
    assert time.monotonic() - started >= 0.3  # waited 0.1 + 0.2 between the attempts
    assert f"cannot reach {cluster.user}@127.0.0.1:{closed_port} after 3 attempt(s)" in str(
        caught.value)
    assert "Connection refused" in str(caught.value)


def test_slow_reader_gets_all_of_stdin(shell: Shell) -> None:
    data = "x" * 6_000_000  # more than the SSH window and pipe buffers hold
    result = shell.run(["sh", "-c", "sleep 1.5; wc -c"], stdin=data)
    assert result.stdout.strip() == str(len(data))


def test_command_right_after_a_silent_kill_still_runs(conn: SSHConnection,
                                                      cluster: ClusterEnv) -> None:
    """No waiting for paramiko to notice: the channel open fails or succeeds, never hangs."""
    conn.run(["true"])
    kill_sshd_child(conn, cluster)
    assert conn.run(["echo", "ok"]).stdout == "ok\n"


# --- tunnels ----------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """`/stream` sends one chunk, waits until the client says it saw it, then sends the rest."""

    server: _TestServer

    def do_GET(self) -> None:
        if self.path == "/stream":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(b"first-chunk\n")
            self.wfile.flush()
            seen = self.server.first_chunk_seen.wait(15)
            self.wfile.write(b"last-chunk " + (b"after-client-saw-first\n" if seen else b"late\n"))
            return
        body = f"hello from {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class _TestServer(ThreadingHTTPServer):
    daemon_threads = True
    first_chunk_seen: threading.Event


@pytest.fixture
def http_server() -> Iterator[_TestServer]:
    server = _TestServer(("127.0.0.1", 0), _Handler)
    server.first_chunk_seen = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def http_get(address: tuple[str, int], path: str) -> str:
    client = http.client.HTTPConnection(*address, timeout=15)
    try:
        client.request("GET", path)
        response = client.getresponse()
        assert response.status == 200
        return response.read().decode()
    finally:
        client.close()


def test_tunnel_forwards_http(conn: SSHConnection, http_server: _TestServer) -> None:
    remote_port = http_server.server_address[1]
    local = conn.open_tunnel("127.0.0.1", remote_port)
    assert local[0] == "127.0.0.1" and local[1] != remote_port
    assert conn.open_tunnel("127.0.0.1", remote_port) == local
    assert http_get(local, "/hello") == "hello from /hello"


def test_tunnel_streams_without_buffering(conn: SSHConnection,
                                          http_server: _TestServer) -> None:
    local = conn.open_tunnel("127.0.0.1", http_server.server_address[1])
    with socket.create_connection(local, timeout=10) as client:
        client.sendall(b"GET /stream HTTP/1.0\r\nHost: test\r\n\r\n")
        received = b""
        while b"first-chunk" not in received:
            chunk = client.recv(4096)
            assert chunk, "connection closed before the first chunk"
            received += chunk
        assert b"last-chunk" not in received
        http_server.first_chunk_seen.set()  # only now does the server write the last chunk
        while chunk := client.recv(4096):
            received += chunk
    assert received.endswith(b"last-chunk after-client-saw-first\n")


def test_tunnel_many_concurrent_connections(conn: SSHConnection,
                                            http_server: _TestServer) -> None:
    local = conn.open_tunnel("127.0.0.1", http_server.server_address[1])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda i: http_get(local, f"/n{i}"), range(64)))
    assert bodies == [f"hello from /n{i}" for i in range(64)]


def test_tunnel_survives_a_reconnect(conn: SSHConnection, cluster: ClusterEnv,
                                     http_server: _TestServer) -> None:
    local = conn.open_tunnel("127.0.0.1", http_server.server_address[1])
    assert http_get(local, "/before") == "hello from /before"
    old = conn.transport
    kill_sshd_child(conn, cluster)
    wait_until(lambda: not old.is_active(), 10, "paramiko to notice the dead connection")
    assert conn.open_tunnel("127.0.0.1", http_server.server_address[1]) == local
    assert http_get(local, "/after") == "hello from /after"
    assert conn.generation == 2


def test_tunnel_to_closed_port_drops_only_that_client(conn: SSHConnection,
                                                      http_server: _TestServer) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    local = conn.open_tunnel("127.0.0.1", closed_port)
    with socket.create_connection(local, timeout=10) as client:
        assert client.recv(100) == b""
    assert conn.run(["true"]).ok


def test_close_stops_tunnels_and_commands(cluster: ClusterEnv, http_server: _TestServer) -> None:
    connection = SSHConnection(cluster.settings())
    local = connection.open_tunnel("127.0.0.1", http_server.server_address[1])
    connection.close()
    with pytest.raises(OSError):
        socket.create_connection(local, timeout=2).close()
    with pytest.raises(TargetUnreachable):
        connection.run(["true"])


def test_local_shell_tunnel_is_direct(http_server: _TestServer) -> None:
    address = ("127.0.0.1", http_server.server_address[1])
    assert LocalShell().open_tunnel(*address) == address


# --- SLURM over the SSH connection ------------------------------------------------------------


def job_states(conn: SSHConnection, job_id: str) -> str:
    return conn.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], check=False
                    ).stdout.strip()


def test_sbatch_squeue_scancel(conn: SSHConnection) -> None:
    submitted = conn.run(["sbatch", "--parsable", "--output=/dev/null", "--job-name",
                          "hpcserve-smoke", "--wrap", "sleep 30"])
    job_id = submitted.stdout.strip().split(";")[0]
    assert job_id.isdigit()
    listed = conn.run(["squeue", "-h", "-j", job_id, "-o", "%i %j"]).stdout.split()
    assert listed == [job_id, "hpcserve-smoke"]
    conn.run(["scancel", job_id])
    wait_until(lambda: job_states(conn, job_id) in ("CANCELLED", ""), 30, "the job to cancel")
    active = conn.run(["squeue", "-h", "-j", job_id, "-t", "PD,R,CG", "-o", "%i"], check=False)
    assert active.stdout.strip() == ""


def test_fake_gpus_give_distinct_cuda_visible_devices(conn: SSHConnection,
                                                      cluster: ClusterEnv) -> None:
    workdir = f"{conn.home()}/hpcserve-test-{uuid.uuid4().hex[:8]}"
    conn.run(["mkdir", "-p", workdir])
    jobs = []
    try:
        for _ in range(2):
            out = conn.run(["sbatch", "--parsable", "--gres=gpu:2", f"--chdir={workdir}",
                            f"--output={workdir}/%j.out", "--wrap",
                            'echo "$CUDA_VISIBLE_DEVICES"; sleep 4'])
            jobs.append(out.stdout.strip().split(";")[0])
        wait_until(lambda: all(job_states(conn, j) == "RUNNING" for j in jobs), 60,
                   "both GPU jobs to run at once")
        wait_until(lambda: all(conn.run(["test", "-s", f"{workdir}/{j}.out"], check=False).ok
                               for j in jobs), 30, "the jobs' output")
        devices = [conn.read_file(f"{workdir}/{j}.out").decode().split()[0].split(",")
                   for j in jobs]
        assert all(len(d) == 2 for d in devices), devices
        assert len(set(devices[0]) | set(devices[1])) == 4, devices
        assert set(devices[0]) | set(devices[1]) <= {str(i) for i in
                                                     range(int(cluster.env["HPCSERVE_TEST_SLURM_GPUS"]))}
    finally:
        conn.run(["scancel", *jobs], check=False)
        conn.run(["rm", "-rf", workdir], check=False)
