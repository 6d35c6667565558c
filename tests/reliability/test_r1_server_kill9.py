"""R1 (+ R7): SIGKILL of a real `jupyter server` while sessions on the local target, on the
SLURM test cluster, on Tapis Pods (the stand-in, through real tapipy) and on Tapis Jobs (the
stand-in's Jobs API running the job on the test cluster) are ready and others are still
starting; after a restart every session is found in its true state over REST, none
lost, none duplicated, and nothing runs at the targets that no session accounts for (psutil for
local engines, squeue for jobs, the Pods API for pods and volumes). Then R7: no secret (Jupyter
token, SSH passphrase, Tapis password and access tokens, HF token, per-session API keys, the
master key) in any log, state file, remote session file or REST answer of the run, and the
state directory is private."""

from __future__ import annotations

import json
import os
import secrets as secrets_mod
import stat
import time
from collections.abc import Callable
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
from hpcserve_jupyter.targets.tapis.ids import deployment_ids
from tapis_standin.conftest import PASSWORD

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]
PASS_ENV = "HPCSERVE_RELIABILITY_PASSPHRASE"
HF_ENV = "HPCSERVE_RELIABILITY_HF_TOKEN"
BAD_PASSWORD_ENV = "HPCSERVE_RELIABILITY_WRONG_TAPIS_PASSWORD"


def launch(server: KillableServer, target: str, **extra: object) -> dict:
    r = server.http.post("hpcserve/api/sessions",
                         json={"recipe": "smollm2-135m", "target": target, **extra})
    assert r.status_code == 201, r.text
    return r.json()


ONE_CPU = {"overrides": {"cpus": 1}}  # two jobs at once on the 2-core test node


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


def recording(issue: Callable[..., str], into: list[str]) -> Callable[..., str]:
    """`issue`, keeping every token it hands out (to look for them afterwards)."""

    def issue_and_keep(*args: object, **kw: object) -> str:
        token = issue(*args, **kw)
        into.append(token)
        return token

    return issue_and_keep


def test_kill9_of_jupyter_server_loses_nothing(tmp_path, isolated_home, monkeypatch,
                                               slurm_config, cluster, pods_config, standin,
                                               tapis_jobs_config, jobs_standin):
    hf_token = "hf_" + secrets_mod.token_hex(16)
    wrong_password = "wrong-" + secrets_mod.token_hex(8)
    monkeypatch.setenv(PASS_ENV, cluster.passphrase)
    monkeypatch.setenv("HF_TOKEN", hf_token)  # local engines inherit it
    monkeypatch.setenv(BAD_PASSWORD_ENV, wrong_password)
    tapis_tokens: list[str] = []  # every token the Pods and Jobs stand-ins hand out
    for service in (standin, jobs_standin):
        monkeypatch.setattr(service, "issue_token", recording(service.issue_token,
                                                               tapis_tokens))
    hpc = {**tapis_jobs_config, "hf_token_env": HF_ENV}
    cfg = {**slurm_config, "key": str(cluster.passphrase_key), "key_passphrase_env": PASS_ENV}
    pods = {**pods_config, "hf_token_env": HF_ENV}
    bad_pods = {**pods_config, "password_env": BAD_PASSWORD_ENV}
    (tmp_path / "targets.yaml").write_text(json.dumps(
        {"targets": {"cluster": cfg, "pods": pods, "badpods": bad_pods, "hpc": hpc}}))
    port = free_port()
    server = KillableServer(tmp_path, port)
    rest_answers: list[str] = []
    try:
        # The HF token goes in through the REST route the sidebar uses, never echoed.
        r = server.http.put("hpcserve/api/targets/pods/secrets", json={HF_ENV: hf_token})
        assert r.status_code == 204, r.text
        rest_answers.append(r.text)
        r = server.http.get("hpcserve/api/targets/pods/secrets")
        rest_answers.append(r.text)
        assert {"env": HF_ENV, "is_set": True}.items() <= next(
            f for f in r.json()["secrets"] if f["env"] == HF_ENV).items()
        bad = server.http.post("hpcserve/api/sessions",
                               json={"recipe": "smollm2-135m", "target": "badpods"})
        rest_answers.append(bad.text)

        a = launch(server, "local")
        b = launch(server, "local")
        c = launch(server, "cluster", **ONE_CPU)
        d = launch(server, "local")
        t = launch(server, "pods")
        for s in (a, b, c, d, t):
            wait_ready(server, s["id"], timeout=240)
        assert server.http.delete(f"hpcserve/api/sessions/{d['id']}").status_code == 200
        c_job = job_name(c["name"], c["id"])
        assert slurm_jobs(cluster.user).get(c_job) == "RUNNING"
        # Two more, still starting when the server dies (the Tapis job takes the node's
        # other CPU: one job each on the 2-core test node).
        e = launch(server, "hpc", **ONE_CPU)
        u = launch(server, "pods")
        starting = {x["id"]: x["state"] for x in states(server) if x["id"] in (e["id"], u["id"])}

        server.kill9()
        b_pids = marked_processes(isolated_home)[b["id"]]
        for pid in b_pids:  # one engine dies while no server runs: its true state is failed
            os.kill(pid, 9)
        t0 = time.monotonic()
        server = KillableServer(tmp_path, port)
        restart_s = time.monotonic() - t0
        want = {a["id"]: "ready", b["id"]: "failed", c["id"]: "ready", d["id"]: "stopped",
                e["id"]: "ready", t["id"]: "ready", u["id"]: "ready"}

        def settled() -> list[dict] | None:
            now = [x for x in states(server) if x["target"] != "badpods"]
            got = {x["id"]: x["state"] for x in now}
            return now if got == want and not any(x.get("unreachable") for x in now) else None

        t1 = time.monotonic()
        found = until(settled, 240, 0.5)
        settle_s = time.monotonic() - t1
        now = [x for x in states(server) if x["target"] != "badpods"]
        everything = states(server)
        rest_answers.append(json.dumps(everything))
        bad_reason = " ".join(x["reason"] or "" for x in everything if x["target"] == "badpods")
        assert "401" in bad.text + bad_reason or "password" in bad.text + bad_reason, bad.text
        assert found, ({x["id"]: x["state"] for x in now}, want, server.logs())
        ids = [x["id"] for x in now]
        lost = len(set(want) - set(ids))
        duplicated = len(ids) - len(set(ids))
        assert lost == 0 and duplicated == 0
        failed_b = next(x for x in now if x["id"] == b["id"])
        assert "killed" in failed_b["reason"]
        pod_ids = {x["id"]: deployment_ids(pods_config.get("id_prefix", "hps"), x["name"],
                                           x["id"]) for x in (t, u)}

        # The targets' truth: only the live sessions run anything.
        node_dir = Path(os.path.expanduser(f"~{cluster.user}")) / ".hpcserve" / "sessions"
        # Engines on the SLURM node run in the cluster user's shared session directory, where
        # other tests' sessions may still be ending: only this run's sessions count there.
        ours = set(marked_processes(isolated_home)) | (set(marked_processes(node_dir)) & set(want))
        local_orphans = sorted(ours - {a["id"], c["id"], e["id"]})  # c, e: SLURM node
        jobs = slurm_jobs(cluster.user)
        live_jobs = {job_name(c["name"], c["id"])}
        # The Jobs API's truth: one live Tapis job, e's (named hpcserve-NAME-ID).
        tapis_jobs = {j.fields["name"]: j for j in jobs_standin.jobs.jobs.values()
                      if j.status not in ("FINISHED", "FAILED", "CANCELLED")}
        e_job = f"hpcserve-{e['name']}-{e['id']}"
        tapis_job_orphans = sorted(set(tapis_jobs) - {e_job})
        # Jobs of this run's sessions (the test cluster may serve other test runs meanwhile).
        job_orphans = sorted(job_name(x["name"], x["id"]) for x in (a, b, d, e, t, u)
                             if job_name(x["name"], x["id"]) in jobs)
        live_pods = {ids.pod for ids in pod_ids.values()}
        pod_orphans = sorted(set(standin.pods) - live_pods)
        volume_orphans = sorted(set(standin.volumes) - {ids.volume for ids in pod_ids.values()})
        assert local_orphans == [] and job_orphans == [], (local_orphans, job_orphans)
        assert tapis_job_orphans == [] and e_job in tapis_jobs, tapis_jobs
        assert tapis_jobs[e_job].status == "RUNNING"
        e_dir = Path(tapis_jobs[e_job].fields["execSystemExecDir"])
        assert pod_orphans == [] and volume_orphans == [], (pod_orphans, volume_orphans)
        assert all(jobs.get(j) == "RUNNING" for j in live_jobs), jobs
        assert live_pods <= set(standin.pods), (live_pods, standin.pods)
        for x in (a, c, e, t, u):
            assert prompt(server, x["id"]).strip()
        rest_answers.append(server.http.get(f"hpcserve/api/sessions/{t['id']}/logs").text)

        for x in (a, c, e, t, u):
            r = server.http.delete(f"hpcserve/api/sessions/{x['id']}")
            assert r.status_code == 200, r.text
            rest_answers.append(r.text)
        assert until(lambda: not marked_processes(isolated_home, node_dir, e_dir), 15)
        assert until(lambda: not live_jobs & set(slurm_jobs(cluster.user)), 30)
        assert until(lambda: not standin.pods and not standin.volumes, 30), standin.pods
        assert tapis_jobs[e_job].status == "CANCELLED"
        record("R1", sessions=len(want), lost=lost, duplicated=duplicated,
               starting_at_kill=starting,
               orphaned_processes=len(local_orphans), orphaned_jobs=len(job_orphans),
               orphaned_pods=len(pod_orphans), orphaned_volumes=len(volume_orphans),
               orphaned_tapis_jobs=len(tapis_job_orphans),
               restart_to_rest_s=round(restart_s, 2), restart_to_true_states_s=round(settle_s, 2),
               targets=["local", "slurm", "tapis-pods", "tapis-jobs"])
        rest_answers.append(server.http.get("hpcserve/api/events/log").text)
    finally:
        for x in (states(server) if server.proc.poll() is None else []):
            if x["state"] in ("pending", "starting", "ready"):
                server.http.delete(f"hpcserve/api/sessions/{x['id']}")
        server.stop()

    # ---------------------------------------------------------------- R7: secrets
    master = master_key(isolated_home)
    keys = {sid: session_api_key(master, sid) for sid in want}
    assert tapis_tokens, "the Pods service handed out no token"
    secrets = {"jupyter token": TOKEN, "ssh passphrase": cluster.passphrase,
               "tapis password": PASSWORD, "wrong tapis password": wrong_password,
               "hf token": hf_token, "master key": master.hex(),
               **{f"tapis token {i}": tok for i, tok in enumerate(tapis_tokens)},
               **{f"api key {sid}": k for sid, k in keys.items()}}
    remote = Path(os.path.expanduser(f"~{cluster.user}")) / ".hpcserve" / "sessions" / c["id"]
    places = [p for p in isolated_home.rglob("*") if p.is_file() and p.name != MASTER_FILE]
    places += [p for p in tmp_path.glob("server-*.log")]
    places += [p for p in remote.rglob("*") if p.is_file() and p.name != "secrets.env"]
    # The Tapis job's directory on the node: its tapisjob.sh / .env (what Tapis wrote from the
    # job request), the engine's output; the 0600 env file with the key was read and deleted.
    tapis_places = [p for p in e_dir.rglob("*") if p.is_file()]
    assert {"tapisjob.sh", "tapisjob.env", "tapisjob.out"} <= {p.name for p in tapis_places}
    assert not list(e_dir.rglob("secrets.env"))
    places += tapis_places
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
    assert loose == []
    assert stat.S_IMODE(isolated_home.stat().st_mode) == 0o700
    for private in (isolated_home / MASTER_FILE, isolated_home / "sessions.db"):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    secret_file = remote / "secrets.env"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert b"HF_TOKEN=" in secret_file.read_bytes()  # forwarded to the SLURM job, there only
    assert stat.S_IMODE(remote.stat().st_mode) == 0o700
    record("R7", files_scanned=len(places), rest_answers_scanned=len(rest_answers),
           secrets_checked=sorted({k.rsplit(" ", 1)[0] if k.startswith(("api key ",
                                   "tapis token ")) else k for k in secrets}),
           api_keys_checked=len(keys), tapis_tokens_checked=len(tapis_tokens),
           occurrences=len(hits), loose_modes=len(loose))
