"""R1 (+ R7): SIGKILL of a real `jupyter server` while sessions on the local target and on the
SLURM test cluster are ready; after a restart every session is found in its true state over
REST, none lost, none duplicated, and nothing runs at the targets that no session accounts for
(psutil for local engines, squeue for jobs). Then R7: no secret in any log, state file, remote
session file or REST answer of the run, and the state directory is private."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from conftest import (
    TOKEN,
    KillableServer,
    free_port,
    marked_processes,
    record,
    slurm_jobs,
    until,
    wait_ready,
)
from hpcserve_jupyter.secrets import MASTER_FILE, master_key, session_api_key
from hpcserve_jupyter.targets.slurm.script import job_name

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]
PASS_ENV = "HPCSERVE_RELIABILITY_PASSPHRASE"


def launch(server: KillableServer, target: str, **extra: object) -> dict:
    r = server.http.post("hpcserve/api/sessions",
                         json={"recipe": "smollm2-135m", "target": target, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def states(server: KillableServer) -> list[dict]:
    r = server.http.get("hpcserve/api/sessions")
    assert r.status_code == 200, r.text
    body = r.json()
    return body["sessions"] if isinstance(body, dict) else body


def prompt(server: KillableServer, sid: str) -> str:
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
            "temperature": 0}
    r = server.http.post(f"hpcserve/proxy/{sid}/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_kill9_of_jupyter_server_loses_nothing(tmp_path, isolated_home, monkeypatch,
                                               slurm_config, cluster):
    monkeypatch.setenv(PASS_ENV, cluster.passphrase)
    cfg = {**slurm_config, "key": str(cluster.passphrase_key), "key_passphrase_env": PASS_ENV}
    (tmp_path / "targets.yaml").write_text(json.dumps({"targets": {"cluster": cfg}}))
    port = free_port()
    server = KillableServer(tmp_path, port)
    rest_answers: list[str] = []
    try:
        a = launch(server, "local")
        b = launch(server, "local")
        c = launch(server, "cluster")
        d = launch(server, "local")
        for s in (a, b, c, d):
            wait_ready(server, s["id"], timeout=240)
        assert server.http.delete(f"hpcserve/api/sessions/{d['id']}").status_code == 200
        c_job = job_name(c["name"], c["id"])
        assert slurm_jobs(cluster.user).get(c_job) == "RUNNING"

        server.kill9()
        b_pids = marked_processes(isolated_home)[b["id"]]
        for pid in b_pids:  # one engine dies while no server runs: its true state is failed
            os.kill(pid, 9)
        t0 = time.monotonic()
        server = KillableServer(tmp_path, port)
        restart_s = time.monotonic() - t0
        want = {a["id"]: "ready", b["id"]: "failed", c["id"]: "ready", d["id"]: "stopped"}

        def settled() -> list[dict] | None:
            now = states(server)
            got = {s["id"]: s["state"] for s in now}
            return now if got == want and not any(s.get("unreachable") for s in now) else None

        t1 = time.monotonic()
        found = until(settled, 30, 0.2)
        settle_s = time.monotonic() - t1
        now = states(server)
        rest_answers.append(json.dumps(now))
        assert found, ({s["id"]: s["state"] for s in now}, want, server.logs())
        ids = [s["id"] for s in now]
        lost = len(set(want) - set(ids))
        duplicated = len(ids) - len(set(ids))
        assert lost == 0 and duplicated == 0
        failed_b = next(s for s in now if s["id"] == b["id"])
        assert "killed" in failed_b["reason"]

        # The targets' truth: only the live sessions run anything.
        node_dir = Path(os.path.expanduser(f"~{cluster.user}")) / ".hpcserve" / "sessions"
        marks = marked_processes(isolated_home, node_dir)
        local_orphans = sorted(set(marks) - {a["id"], c["id"]})  # c runs on the SLURM node
        jobs = slurm_jobs(cluster.user)
        # Jobs of this run's sessions (the test cluster may serve other test runs meanwhile).
        job_orphans = sorted(job_name(s["name"], s["id"]) for s in (a, b, c, d)
                             if job_name(s["name"], s["id"]) in jobs and s is not c)
        assert local_orphans == [] and job_orphans == [], (local_orphans, job_orphans)
        assert jobs.get(c_job) == "RUNNING"
        assert prompt(server, a["id"]).strip() and prompt(server, c["id"]).strip()

        for sid in (a["id"], c["id"]):
            r = server.http.delete(f"hpcserve/api/sessions/{sid}")
            assert r.status_code == 200, r.text
            rest_answers.append(r.text)
        assert until(lambda: not marked_processes(isolated_home, node_dir), 15)
        assert until(lambda: c_job not in slurm_jobs(cluster.user), 30)
        record("R1", sessions=len(want), lost=lost, duplicated=duplicated,
               orphaned_processes=len(local_orphans), orphaned_jobs=len(job_orphans),
               restart_to_rest_s=round(restart_s, 2), restart_to_true_states_s=round(settle_s, 2),
               targets=["local", "slurm"], tapis="not exercised")
        rest_answers.append(server.http.get("hpcserve/api/events/log").text)
    finally:
        for s in (states(server) if server.proc.poll() is None else []):
            if s["state"] in ("pending", "starting", "ready"):
                server.http.delete(f"hpcserve/api/sessions/{s['id']}")
        server.stop()

    # ---------------------------------------------------------------- R7: secrets
    master = master_key(isolated_home)
    keys = {sid: session_api_key(master, sid) for sid in want}
    secrets = {"jupyter token": TOKEN, "ssh passphrase": cluster.passphrase,
               "master key": master.hex(), **{f"api key {sid}": k for sid, k in keys.items()}}
    remote = Path(os.path.expanduser(f"~{cluster.user}")) / ".hpcserve" / "sessions" / c["id"]
    places = [p for p in isolated_home.rglob("*") if p.is_file() and p.name != MASTER_FILE]
    places += [p for p in tmp_path.glob("server-*.log")]
    places += [p for p in remote.rglob("*") if p.is_file() and p.name != "secrets.env"]
    assert any(p.name == "engine.log" for p in places)
    assert any(p.name.startswith("slurm-") for p in places), list(remote.iterdir())
    hits = []
    for path in places:
        data = path.read_bytes()
        hits += [f"{what} in {path}" for what, value in secrets.items()
                 if value.encode() in data]
    for text in rest_answers:
        hits += [f"{what} in a REST answer" for what, value in secrets.items() if value in text]
    assert hits == []
    loose = [str(p) for p in [isolated_home, *isolated_home.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) & 0o077]
    # The local runner writes the engine's exit code (not a secret) with the default umask;
    # the 0700 state directory keeps it private anyway.
    exit_files = [p for p in loose if Path(p).name.startswith("exit")]
    assert sorted(set(loose) - set(exit_files)) == [], loose
    assert stat.S_IMODE(isolated_home.stat().st_mode) == 0o700
    for private in (isolated_home / MASTER_FILE, isolated_home / "sessions.db"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    secret_file = remote / "secrets.env"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(remote.stat().st_mode) == 0o700
    record("R7", files_scanned=len(places), rest_answers_scanned=len(rest_answers),
           secrets_checked=sorted({"api key" if k.startswith("api key") else k
                                   for k in secrets}), api_keys_checked=len(keys),
           occurrences=len(hits), loose_modes=len(loose) - len(exit_files),
           world_readable_exit_code_files=len(exit_files),
           not_checked="Tapis password/token, HF token (no Tapis/HF run in this test)")
