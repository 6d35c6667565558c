"""The Hugging Face token reaches a SLURM job like the session's API key: in the job's 0600
secrets file, never its script, its log or the session's handle. A probe standing in for the
engine records what it got on the node (the real test cluster, over the real sshd)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import PORT, PYTHON
from hpcserve_jupyter.targets import target_class
from hpcserve_jupyter.targets.base import LaunchRequest, Phase

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

TOKEN = "hf_probeTOKEN$(touch /tmp/never)'x\""  # quoting matters: the file is sourced by bash
PROBE = ("import json, os, sys, http.server\n"
         "names = ('HF_TOKEN', 'HUGGING_FACE_HUB_TOKEN', 'HPCSERVE_API_KEY')\n"
         "env = {k: os.environ.get(k) for k in names}\n"
         "secrets = 'secrets.env'  # the job runs in its directory\n"
         "mode = oct(os.stat(secrets).st_mode & 0o777) if os.path.exists(secrets) else None\n"
         "open('probe.json', 'w').write(json.dumps(dict(env=env, mode=mode)))\n"
         "http.server.HTTPServer(('0.0.0.0', int(sys.argv[-1])),\n"
         "                       http.server.SimpleHTTPRequestHandler).serve_forever()\n")


def run_probe(config: dict, tmp_path: Path) -> tuple[dict, dict, str]:
    """Launch the probe on the cluster, read what it recorded, stop it. Returns the probe's
    record, the handle and the job's own files and log as text (its secrets file and the
    probe's record left out)."""
    spec = replace(resolve("smollm2-135m", "llama-cpp"), argv=(PYTHON, "-c", PROBE, PORT),
                   env=())
    target = target_class("slurm")("cluster", config)

    async def run() -> tuple[dict, dict, str]:
        # A session of its own each time: a job directory reused would still hold the last
        # probe's record and endpoint.
        req = LaunchRequest(session_id=secrets.token_hex(4), name="probe", spec=spec,
                            workdir=tmp_path,
                            secrets={"api_key": "sk-session-key"})
        handle = await target.launch(req)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                st = (await target.poll({"s": handle}))["s"]
                if st.endpoints:
                    break
                assert st.phase in (Phase.PENDING, Phase.RUNNING), (st.phase, st.reason,
                                                                   st.log_tail)
                await asyncio.sleep(0.5)
            data, _ = await target.read_file(handle, "probe.json")
            logs, _ = await target.read_logs(handle)
            work = Path(handle["workdir"])
            files = "\n".join(p.read_text(errors="replace") for p in sorted(work.iterdir())
                              if p.is_file() and p.name not in ("secrets.env", "probe.json"))
            return json.loads(data), handle, files + logs
        finally:
            await target.stop(handle)
            await target.close()
            shutil.rmtree(handle["workdir"], ignore_errors=True)  # the cluster is this machine

    return asyncio.run(run())


@pytest.fixture
def config(cluster) -> dict:
    return {"host": cluster.host, "port": cluster.port, "user": cluster.user,
            "key": str(cluster.key), "known_hosts": str(cluster.known_hosts),
            "ssh_config": None, "use_agent": False, "partition": "debug",
            "python": cluster.env["HPCSERVE_TEST_REMOTE_PYTHON"], "stop_timeout": 30}


def test_the_token_reaches_the_engine_only_through_the_secrets_file(config, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("MY_HF_TOKEN", TOKEN)
    got, handle, files = run_probe({**config, "hf_token_env": "MY_HF_TOKEN"}, tmp_path)
    assert got["env"] == {"HF_TOKEN": TOKEN, "HUGGING_FACE_HUB_TOKEN": TOKEN,
                          "HPCSERVE_API_KEY": "sk-session-key"}
    assert got["mode"] == oct(0o600)
    assert "hf_probeTOKEN" not in files  # not in job.sh, the job's log or the probe's record
    assert "hf_probeTOKEN" not in json.dumps(handle)
    assert not os.path.exists("/tmp/never")


def test_no_token_set_or_forwarding_off_sends_none(config, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    got, _, _ = run_probe(config, tmp_path)  # the default variable, unset here
    assert got["env"]["HF_TOKEN"] is None
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    got, _, _ = run_probe({**config, "hf_token_env": None}, tmp_path / "off")
    assert got["env"]["HF_TOKEN"] is None and got["env"]["HUGGING_FACE_HUB_TOKEN"] is None


def test_front_ends_are_told_where_the_token_is_read(config):
    target = target_class("slurm")("cluster", {**config, "hf_token_env": "LAB_HF"})
    labels = {(s.label, s.env) for s in target.secret_settings()}
    assert ("Hugging Face token", "LAB_HF") in labels
