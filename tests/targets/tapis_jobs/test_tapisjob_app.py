"""tapisjob_app.sh, run here with bash the way Tapis runs it on a node (the job's directory in
_tapisExecSystemExecDir, the env file named by HPCSERVE_SECRETS_FILE): the env file is read
and deleted, placeholders and spilled words filled in, endpoint.json written once the command
listens, the exit code kept, SIGTERM passed on, and with an image the command runs through
`singularity exec` (a stand-in `singularity` on PATH records how it was called)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

from hpcserve_jupyter.targets.tapis_jobs import app, request
from hpcserve_jupyter.targets.tapis_jobs.config import TapisJobsConfig
from waiting import until

SERVE = ("import json, os, sys, http.server\n"
         "json.dump(dict(argv=sys.argv[1:], env=os.environ.get('PROBE_ENV'),"
         " key=os.environ.get('HPCSERVE_API_KEY')), open('probe.json', 'w'))\n"
         "port = int(sys.argv[-1])\n"
         "http.server.HTTPServer(('127.0.0.1', port), http.server.SimpleHTTPRequestHandler)"
         ".serve_forever()\n")


def start(job: Path, argv: list[str], env_file: dict[str, str], extra_env: dict[str, str]
          | None = None) -> subprocess.Popen[bytes]:
    script = job / "tapisjob_app.sh"
    script.write_bytes(app.wrapper_text())
    script.chmod(0o755)
    secrets = job.parent / "private" / "secrets.env"
    secrets.parent.mkdir(mode=0o700)
    secrets.write_text(request.secrets_file(env_file))
    secrets.chmod(0o600)
    env = {"PATH": os.environ["PATH"], "_tapisExecSystemExecDir": str(job),
           "HPCSERVE_SECRETS_FILE": str(secrets), "HPCSERVE_PYTHON": sys.executable,
           **(extra_env or {})}
    return subprocess.Popen(["bash", str(script), *argv], cwd=job, env=env,
                            stdout=(job / "tapisjob.out").open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_the_script_fills_in_publishes_and_passes_sigterm(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    odd = "a; b | c & `d` $(e) ${JobUUID}\nline"
    args, spilled = request.app_args(("{HPCSERVE_PYTHON}", "-c", SERVE, odd,
                                      "--key={HPCSERVE_API_KEY}", "{HPCSERVE_PORT}"))
    # What Tapis's batch script passes: the appArgs pasted into its command line, split by bash.
    words = subprocess.run(["bash", "-c", 'printf "%s\\0" ' + " ".join(a["arg"] for a in args)],
                           capture_output=True, check=True).stdout.split(b"\0")[:-1]
    proc = start(job, [w.decode() for w in words],
                 {**spilled, "HPCSERVE_API_KEY": "sk-x'y", "PROBE_ENV": "p={HPCSERVE_PORT}"},
                 {"HPCSERVE_TEMPLATED_ENV": "PROBE_ENV"})
    try:
        assert until(lambda: (job / "endpoint.json").exists() or proc.poll() is not None, 30)
        published = json.loads((job / "endpoint.json").read_text())
        port = published["ports"][0]
        assert published["node"] == socket.gethostname()
        got = json.loads((job / "probe.json").read_text())
        assert got["argv"] == [odd, "--key=sk-x'y", str(port)]
        assert got["env"] == f"p={port}" and got["key"] == "sk-x'y"
        assert not (tmp_path / "private" / "secrets.env").exists()  # read, then deleted
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143
        assert (job / "exit_code").read_text().strip() == "143"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_exit_code_of_a_command_that_fails(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    proc = start(job, [sys.executable, "-c", "import sys; sys.exit(7)"], {})
    assert proc.wait(30) == 7
    assert (job / "exit_code").read_text().strip() == "7"
    assert not (job / "endpoint.json").exists()  # it never listened
    assert "exited with code 7" in (job / "tapisjob.out").read_text()


def test_with_an_image_the_command_runs_through_singularity_exec(tmp_path):
    job, bin_dir = tmp_path / "job", tmp_path / "bin"
    job.mkdir()
    bin_dir.mkdir()
    fake = bin_dir / "singularity"  # records its arguments, then runs the command itself
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@" > "$_tapisExecSystemExecDir/called"\n'
                    'shift; while [ "$1" != img.sif ]; do shift; done; shift; exec "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = request.container_env(
        TapisJobsConfig.model_validate({
            "base_url": "https://tacc.tapis.io", "system_id": "ls6", "runtime": "SINGULARITY",
            "image": "img.sif", "container_binds": ["/scratch", "/work:/w:ro"]}), None, 1)
    proc = start(job, [sys.executable, "-c", "print('in the image')"], env,
                 {"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.wait(30) == 0
    called = (job / "called").read_text().splitlines()
    assert called[:6] == ["exec", "--nv", "--bind", "/scratch,/work:/w:ro", "img.sif",
                          sys.executable]
    assert "in the image" in (job / "tapisjob.out").read_text()
