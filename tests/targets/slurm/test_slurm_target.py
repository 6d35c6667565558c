"""The SLURM target end to end on the real test cluster: sbatch through the real sshd, engines
on the (fake-GPU) node, prompts through the paramiko tunnel, and the failure cases."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import httpx
import pytest

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import BadInput, HpcserveError
from hpcserve_jupyter.sessions import State
from waiting import until

pytestmark = [pytest.mark.slurm, pytest.mark.model]


def squeue(job_id: str) -> str:
    out = subprocess.run(["squeue", "--noheader", "--states=all", "-j", job_id, "-o", "%T"],
                         capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def configs(cluster, tmp_path):
    base = {"kind": "slurm", "host": cluster.host, "port": cluster.port, "user": cluster.user,
            "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
            "ssh_config": None, "use_agent": False, "partition": "debug",
            "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 30}
    onsite = tmp_path / "onsite"
    onsite.mkdir()
    return {"local": {"kind": "local"}, "cluster": base,
            "onsite": {**base, "host": "local", "workdir": str(onsite)}}


@pytest.fixture
def hp(configs):
    h = Hpcserve(poll_interval=1.0, target_configs=configs)
    yield h
    for s in h.sessions(live_only=True):
        with contextlib.suppress(HpcserveError):
            h.stop(s.id)
    h.close()


def test_launch_prompt_logs_stop_over_ssh(hp):
    states: list[str] = []
    s = hp.launch("smollm2-135m", on="cluster", timeout=180,
                  progress=lambda x: states.append(str(x.state)))
    assert s.state == State.READY, (s.reason, s.log_tail)
    # Queued first, ready last, never backwards; `starting` shows only when a tick sees the job
    # running before its engine answers (a fast engine goes from pending to ready).
    order = ["pending", "starting", "ready"]
    assert states[0] == "pending" and states[-1] == "ready", states
    assert [order.index(x) for x in states] == sorted(order.index(x) for x in states), states
    job = s.handle["job_id"]
    assert squeue(job) == "RUNNING"
    url = s.endpoints[0]
    assert url.startswith("http://127.0.0.1:")  # the local end of the tunnel
    deltas = list(hp.stream(s.id, "Name a color.", max_tokens=16, temperature=0))
    assert len(deltas) > 2
    assert "chat/completions" in hp.logs(s.id, tail=50)
    # the engine refuses requests without the session's key, also through the tunnel
    assert httpx.get(url + "/v1/models").status_code == 401
    stopped = hp.stop(s.id)
    assert stopped.state == State.STOPPED
    assert until(lambda: squeue(job) in ("CANCELLED", ""), 20)
    assert "hps-" not in Path(hp.manager.home / "sessions.db").read_text(errors="ignore")


def test_on_cluster_mode_runs_without_ssh(hp):
    s = hp.launch("smollm2-135m", on="onsite", timeout=180)
    assert s.state == State.READY, (s.reason, s.log_tail)
    assert s.endpoints[0] == f"http://{s.handle['node']}:{s.handle['ports'][0]}"  # no tunnel
    assert hp.prompt(s.id, "Say hi", max_tokens=8)
    hp.stop(s.id)
    assert until(lambda: squeue(s.handle["job_id"]) in ("CANCELLED", ""), 20)


def test_two_replicas_get_distinct_gpus_and_ports(hp):
    s = hp.launch("smollm2-135m", on="cluster", gpus="2", gpu_per_replica="1", timeout=180)
    assert s.state == State.READY, (s.reason, s.log_tail)
    assert len(s.endpoints) == 2 and len(set(s.handle["ports"])) == 2
    workdir = s.handle["workdir"]
    logs = [Path(workdir, name).read_text() for name in ("engine.log", "engine-1.log")]
    devices = [log.split("CUDA_VISIBLE_DEVICES=")[1].split()[0] for log in logs]
    assert len(set(devices)) == 2 and all(d.isdigit() for d in devices), devices
    assert {hp.prompt(s.id, "hi", max_tokens=4) is not None for _ in range(2)} == {True}
    hp.stop(s.id)


def test_engine_that_exits_at_once_fails_with_log_tail(hp):
    s = hp.launch("smollm2-135m", on="cluster", model="/nonexistent/model.gguf", timeout=120)
    assert s.state == State.FAILED
    assert "exit code" in s.reason or "FAILED" in s.reason, s.reason
    assert "/nonexistent/model.gguf" in s.log_tail
    assert until(lambda: squeue(s.handle["job_id"]) in ("FAILED", "COMPLETED", ""), 20)


def test_job_cancelled_outside_the_tool_is_noticed(hp):
    s = hp.launch("smollm2-135m", on="cluster", timeout=180)
    subprocess.run(["scancel", s.handle["job_id"]], check=True)
    done = until(lambda: hp.status(s.id).state.terminal and hp.status(s.id), 30)
    assert done.state == State.STOPPED and "cancelled" in done.reason


def test_time_limit_reached_is_timeout(hp):
    # max_lifetime off: otherwise hpcserve's own autostop ends the job first, at the limit.
    s = hp.launch("smollm2-135m", on="cluster", time="1m", max_lifetime="off", timeout=180)
    assert s.state == State.READY
    done = until(lambda: hp.status(s.id).state.terminal and hp.status(s.id), 150, step=1)
    assert done and done.state == State.TIMEOUT, done and done.reason


def test_shell_metacharacters_never_execute(hp):
    # The job runs as the cluster's user: the canary's directory must be writable for it, or
    # an executed `touch` would fail and the check could not fail (tests/reliability/test_r6
    # covers every field; this is the quick check of the common path).
    box = Path(tempfile.mkdtemp(prefix="hpcserve-canary-", dir="/tmp"))
    box.chmod(0o777)
    canary = box / "canary"
    evil = f"$(touch {canary}); `touch {canary}`; touch {canary} #'\"\n"
    try:
        s = hp.launch("smollm2-135m", on="cluster", name="evil-name", timeout=180,
                      **{"env.EVIL": evil, "engine_args.chat_format": evil,
                         "served_model_name": "x-model"})
        # launch() returns once the engine answered or the job ended: the script has run.
        # The engine rejects the odd chat format or starts; either way nothing was executed.
        assert s.state in (State.READY, State.FAILED), (s.state, s.reason)
        assert not canary.exists()
        job_text = Path(s.handle["workdir"], "job.sh").read_text()
        assert f"touch {canary}" in job_text  # present, but only inside quotes
        with pytest.raises(BadInput, match="partition"):
            Hpcserve(target_configs={"c": {"kind": "slurm", "host": "local",
                                           "partition": "debug\n#SBATCH --uid=0"}}).launch(
                "smollm2-135m", on="c", wait=False)
        assert not canary.exists()
    finally:
        shutil.rmtree(box, ignore_errors=True)


def test_unknown_host_key_is_refused_with_a_hint(configs, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    configs["cluster"]["known_hosts"] = str(empty)
    h = Hpcserve(poll_interval=1.0, target_configs=configs)
    try:
        with pytest.raises(BadInput, match=r"ssh-keyscan|trust_on_first_use"):
            h.launch("smollm2-135m", on="cluster", wait=False)
        assert h.sessions()[-1].state == State.FAILED
    finally:
        h.close()


def test_wrong_key_is_refused_clearly(configs, tmp_path):
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    configs["cluster"]["key"] = str(key)
    h = Hpcserve(poll_interval=1.0, target_configs=configs)
    try:
        with pytest.raises(BadInput, match=r"hpcuser@127\.0\.0\.1"):
            h.launch("smollm2-135m", on="cluster", wait=False)
    finally:
        h.close()


def _kill_sshd(cluster) -> None:
    """The listener and every connection it serves (ours included): sshd is gone."""
    pid = int(Path(cluster.env["HPCSERVE_TEST_SSHD_PID_FILE"]).read_text())
    os.kill(pid, signal.SIGTERM)
    subprocess.run(["pkill", "-f", f"sshd: {cluster.user}"], check=False)


def _kill_slurmctld(cluster) -> None:
    state = Path(cluster.env["HPCSERVE_TEST_STATE_DIR"])
    os.kill(int((state / "run" / "slurmctld.pid").read_text()), signal.SIGTERM)


@pytest.mark.parametrize("outage", [_kill_sshd, _kill_slurmctld], ids=["sshd", "slurmctld"])
def test_outages_show_unreachable_then_recover(hp, cluster, outage):
    s = hp.launch("smollm2-135m", on="cluster", timeout=180)
    assert s.state == State.READY
    script = str(Path(__file__).resolve().parents[3] / "scripts" / "testcluster.sh")
    outage(cluster)
    try:
        bad = until(lambda: hp.status(s.id).unreachable and hp.status(s.id), 60)
        assert bad and bad.state == State.READY  # unknown, not failed
        assert any(e["kind"] == "unreachable" for e in hp.events(s.id))
    finally:
        subprocess.run(["bash", script, "start"], check=True, capture_output=True)
    good = until(lambda: not hp.status(s.id).unreachable and hp.status(s.id), 90)
    assert good and good.state == State.READY
    assert hp.prompt(s.id, "still there?", max_tokens=8)
    hp.stop(s.id)


def test_generated_scripts_pass_sbatch_test_only(cluster, configs, tmp_path):
    """sbatch itself accepts what the builder writes, for the shapes we generate."""
    from hpcserve_jupyter.resolve import resolve
    from hpcserve_jupyter.targets.base import LaunchRequest
    from hpcserve_jupyter.targets.slurm.target import SlurmTarget

    settings = {k: v for k, v in configs["cluster"].items() if k != "kind"}
    target = SlurmTarget("cluster", settings)
    for overrides in ({}, {"gpus": "2", "gpu_per_replica": "1"}, {"gpus": "4", "time": "1:30:00"},
                      {"env.X": "$(touch /tmp/never)", "engine_args.chat_format": "a b'c"}):
        spec = resolve("smollm2-135m", overrides=overrides)
        req = LaunchRequest(session_id="abcd0123", name="test-only", spec=spec,
                            workdir=tmp_path)
        text = target.render(req, target.base_dir() + "/test-only")
        target.shell().write_file(target.base_dir() + "/test-only.sh", text, mode=0o700)
        out = target.shell().run(["sbatch", "--test-only", target.base_dir() + "/test-only.sh"],
                                 check=False)
        assert out.exit_code == 0 and "to start at" in (out.stdout + out.stderr), (
            overrides, out.stderr)


def test_restarted_manager_reattaches_by_job_id(configs):
    first = Hpcserve(poll_interval=1.0, target_configs=configs)
    s = first.launch("smollm2-135m", on="cluster", timeout=180)
    assert s.state == State.READY
    first.close()  # the manager goes away; the job keeps running
    second = Hpcserve(poll_interval=1.0, target_configs=configs)
    try:
        again = second.status(s.id)
        assert again.state == State.READY and again.handle["job_id"] == s.handle["job_id"]
        assert squeue(s.handle["job_id"]) == "RUNNING"
        assert second.prompt(s.id, "Hello again", max_tokens=8)  # a new tunnel, same job
    finally:
        second.stop(s.id)
        second.close()
