"""Hostile words in the engine's command line and environment reach the engine literally
through Tapis Jobs: Tapis pastes appArgs into its batch script unquoted, refuses `; | & < > ``
and control characters in them and expands `${...}` macros, and writes envVariables into
tapisjob.env with `$` left to bash. A probe standing in for the engine records what it got on
the SLURM node; each hostile value would create a canary file if any shell interpreted it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hpcserve_jupyter.resolve import resolve
from hpcserve_jupyter.spec import PORT, PYTHON
from hpcserve_jupyter.targets import target_class
from hpcserve_jupyter.targets.base import LaunchRequest, Phase

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]

PROBE = ("import json, os, sys, http.server\n"
         "args = sys.argv[1:]\n"
         "env = dict(value=os.environ.get('PROBE_ENV'), port=os.environ.get('PROBE_PORT'))\n"
         "open('probe.json', 'w').write(json.dumps(dict(argv=args, env=env)))\n"
         "server = http.server.HTTPServer(('0.0.0.0', int(args[-1])),\n"
         "                                http.server.SimpleHTTPRequestHandler)\n"
         "server.serve_forever()\n")


def hostile(canary: Path) -> list[str]:
    c = str(canary)
    return [f"semi; touch {c}/semi", f"$(touch {c}/subst)", f"`touch {c}/tick`",
            f"pipe | touch {c}/pipe", f"amp & touch {c}/amp", f"redir > {c}/redir",
            f"new\nline; touch {c}/nl", "it's \"quoted\" \\ back", "${JobUUID} ${HOME}",
            "$HOME", "'", "", " lead and trail ", "--flag=a b"]


def test_hostile_words_reach_the_engine_literally(tapis_jobs_config, jobs_standin, cluster,
                                                  tmp_path):
    user = pwd.getpwnam(cluster.user)
    canary = Path(user.pw_dir) / "hpcserve-canary" / tmp_path.name
    shutil.rmtree(canary, ignore_errors=True)  # an earlier run's
    canary.mkdir(parents=True)
    shutil.chown(canary, user.pw_uid, user.pw_gid)
    try:
        check_literal(tapis_jobs_config, jobs_standin, canary, tmp_path)
    finally:
        shutil.rmtree(canary, ignore_errors=True)
        with contextlib.suppress(OSError):
            canary.parent.rmdir()


def check_literal(tapis_jobs_config, jobs_standin, canary: Path, tmp_path: Path) -> None:
    words = hostile(canary)
    env_value = f"$(touch {canary}/env) `touch {canary}/envtick`; x | y & z"
    base = resolve("smollm2-135m", "llama-cpp")
    spec = replace(base, argv=(PYTHON, "-c", PROBE, *words, PORT),
                   env=(("PROBE_ENV", env_value), ("PROBE_PORT", f"p={PORT}")),
                   secret_env=())
    config = {k: v for k, v in tapis_jobs_config.items() if k != "kind"}
    target = target_class("tapis-jobs")("hpc", config)

    async def run() -> tuple[dict, dict]:
        req = LaunchRequest(session_id="abcd1234", name="probe", spec=spec,
                            workdir=tmp_path, secrets={"api_key": "sk-probe-key"})
        handle = await target.launch(req)
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                st = (await target.poll({"s": handle}))["s"]
                if st.handle_update:
                    handle = {**handle, **st.handle_update}
                if st.endpoints:
                    break
                assert st.phase in (Phase.PENDING, Phase.RUNNING), (st.phase, st.reason,
                                                                   st.log_tail)
                await asyncio.sleep(0.5)
            data, _ = await target.read_file(handle, "probe.json")
            return json.loads(data), handle
        finally:
            await target.stop(handle)
            await target.close()

    got, handle = asyncio.run(run())
    assert got["argv"][:-1] == words
    assert got["argv"][-1].isdigit()  # {HPCSERVE_PORT}, filled in on the node
    assert got["env"] == {"value": env_value, "port": f"p={got['argv'][-1]}"}
    assert sorted(os.listdir(canary)) == []  # no shell ran any of it
    record = jobs_standin.jobs.get(handle["job_uuid"])
    assert record.status == "CANCELLED"
    assert "sk-probe-key" not in json.dumps(record.fields)
