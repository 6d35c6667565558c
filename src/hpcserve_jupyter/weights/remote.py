"""Model weights in a SLURM target's cache, pulled on its login node over SSH (never through
this machine), listed and removed there.

remote_pull.py (stdlib + huggingface_hub) does the work with the target's `python:`. A pull
gets its own private (0700) folder under the target's workdir, weights/<key>, keyed by what is
pulled where: request.json (no secret), then `remote_pull.py start` with the token on stdin,
which leaves a process in its own session pulling (an SSH drop or Ctrl-C here does not stop
it); this side polls `status` and prints the progress. Running the same pull again finds it
running and follows it, or starts it anew, and huggingface_hub resumes from what the cache
holds. With `pull: job` the same script runs as a one-CPU batch job (`run`, the token in the
folder's 0600 file, which it deletes as it starts), polled the same way; the job's id is kept
in the folder so a second pull follows a queued one. The remote cache is the one the target's
engines read: the target's `env:` HF_HUB_CACHE
(else HF_HOME/hub, else ~/.cache/huggingface/hub) over the login node's environment.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import BadInput, HpcserveError, NotFound, close_matches
from ..targets.slurm.shell import RemoteCommandError, Secret
from .formats import GGUF_BACKENDS, HF_FALLBACK_WEIGHTS, HF_SUPPORT, HF_WEIGHTS, HubRef
from .formats import allow_patterns as format_patterns
from .pull import PullProgress, WeightsError, _Where

SCRIPT = Path(__file__).with_name("remote_pull.py")
POLL = 0.5  # seconds between progress reads
CACHE_KEYS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def request(ref: HubRef, backend: str, revision: str | None,
            env: Mapping[str, str]) -> dict[str, Any]:
    """What the login node pulls: formats.allow_patterns's choice, as data (the choice between
    safetensors and the older weights needs the repo's file list, which only it reads)."""
    if ref.filename or backend in GGUF_BACKENDS:
        if not ref.filename:
            raise BadInput(f"{backend} loads one GGUF file: name it in the recipe's model as "
                           f"{ref.repo_id}/FILE.gguf")
        rule: dict[str, Any] = {"patterns": format_patterns(ref, backend, [])}
    else:
        rule = {"rule": {"weights": list(HF_WEIGHTS), "fallback": list(HF_FALLBACK_WEIGHTS),
                         "support": list(HF_SUPPORT)}}
    return {"repo_id": ref.repo_id, "revision": revision or "main",
            "env": {str(k): str(v) for k, v in env.items()}, **rule}


class RemoteCache:
    """A SLURM target's model cache, through its shell and interpreter."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.s = target.settings

    # ------------------------------------------------------------ plumbing

    def _run(self, argv: list[str], stdin: str | None = None, timeout: float | None = None
             ) -> str:
        try:
            return self.target.shell().run(
                argv, stdin=stdin, login_shell=self.s.login_shell,
                timeout=timeout or self.s.command_timeout).stdout
        except RemoteCommandError as exc:
            if exc.exit_code in (126, 127):  # the shell found no such program
                raise BadInput(f"target {self.target.name!r}: cannot run its python "
                               f"({self.s.python}) on the login node",
                               hint="set `python:` in targets.yaml to an interpreter there "
                               "that has huggingface_hub") from None
            raise WeightsError(f"the model cache command failed on {self.target.name!r} "
                               f"(exit {exc.exit_code}): "
                               f"{(exc.stderr or exc.stdout).strip()[-300:]}") from None

    def _json(self, text: str) -> dict[str, Any]:
        for line in reversed(text.strip().splitlines()):
            try:
                return dict(json.loads(line))
            except ValueError:
                continue
        raise WeightsError(f"unexpected answer from the login node of {self.target.name!r}: "
                           f"{text.strip()[-200:]!r}")

    def _script(self, *args: str) -> dict[str, Any]:
        """remote_pull.py piped in (no file needed): list and rm."""
        return self._json(self._run([self.s.python, "-", *args], stdin=SCRIPT.read_text()))

    def _env(self) -> str:
        return json.dumps({k: v for k, v in self.s.env.items() if k in CACHE_KEYS})

    # ------------------------------------------------------------ list, rm

    def list(self) -> tuple[str, list[dict[str, Any]]]:
        answer = self._script("list", self._env())
        return answer["cache"], list(answer["models"])

    def find(self, repo_id: str, filename: str | None, revision: str = "main") -> str | None:
        """Where the target's engines find this model in its cache (checked on the login
        node, files only: no huggingface_hub needed), or None."""
        return self._script("find", self._env(), repo_id, filename or "", revision).get("path")

    def remove(self, repo_id: str) -> tuple[str, int]:
        answer = self._script("rm", self._env(), repo_id)
        if not answer.get("ok"):
            raise NotFound(f"no model {repo_id!r} in the cache {answer.get('cache')} of target "
                           f"{self.target.name!r}",
                           hint=close_matches(repo_id, list(answer.get("known") or [])))
        return answer["cache"], int(answer["freed"])

    # ------------------------------------------------------------ pull

    def folder(self, req: Mapping[str, Any]) -> str:
        key = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()[:16]
        return posixpath.join(self.target.base_dir(), "weights", key)

    def pull(self, req: dict[str, Any], token: str | None, token_env: str,
             progress: Callable[[PullProgress], None] | None = None,
             started: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Starts (or finds running) the pull on the login node and follows it to its end.
        The token is held as a Secret from here on and revealed only where it is handed over
        (stdin, or the job's 0600 file)."""
        secret = Secret(token) if token else None
        del token
        folder = self.folder(req)
        shell = self.target.shell()
        weights = posixpath.dirname(folder)
        self._run(["mkdir", "-p", folder])
        self._run(["chmod", "700", weights, folder])
        script = posixpath.join(weights, "remote_pull.py")
        shell.write_file(script, SCRIPT.read_text(), mode=0o600)
        shell.write_file(posixpath.join(folder, "request.json"), json.dumps(req), mode=0o600)
        if self.s.pull == "job":
            job, state = self._submit(script, folder, secret)
        else:
            job = None
            answer = self._json(self._run([self.s.python, script, "start", folder],
                                          stdin=(secret.reveal() if secret else "") + "\n"))
            if not answer.get("ok"):
                raise self._error(answer, req, secret, token_env)
            state = str(answer.get("state"))
        if started is not None:
            started(state)
        last = None
        while True:
            state = self._json(self._run([self.s.python, script, "status", folder]))
            p = state.get("progress")
            if p and progress is not None and p != last:
                last = p
                progress(PullProgress(p["phase"], p["bytes_done"], p["bytes_total"],
                                      p["files_done"], p["files_total"]))
            result = state.get("result")
            if result is not None and not state.get("running"):
                if not result.get("ok"):
                    raise self._error(result, req, secret, token_env)
                return result
            if not state.get("running") and job is not None and self._queued(job):
                time.sleep(POLL)
                continue
            if not state.get("running"):
                if job is not None:  # a job that never ran leaves the token's file behind
                    self._run(["rm", "-f", posixpath.join(folder, "token")])
                log = _scrub(str(state.get("log") or ""), secret).strip()
                raise WeightsError(f"the pull on the login node of {self.target.name!r} "
                                   "stopped without a result"
                                   + (f": {log.splitlines()[-1]}" if log else ""),
                                   hint=f"its log: {posixpath.join(folder, 'log')}")
            time.sleep(POLL)

    def _queued(self, job: str) -> bool:
        """The pull's batch job is pending or running (squeue still lists it, not ended)."""
        out = self._run(["squeue", "--noheader", "--jobs", job, "--format=%T"])
        return any(st in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED",
                          "RESIZING", "SUSPENDED") for st in out.split())

    def _submit(self, script: str, folder: str, token: Secret | None) -> tuple[str, str]:
        """`pull: job`: the same script as a one-CPU batch job (the target's partition and
        account), unless the last one submitted for this folder is still queued or running;
        the token goes in the folder's 0600 file, which the job deletes as it starts."""
        try:
            job = self.target.shell().read_file(posixpath.join(folder, "job")).decode().strip()
        except (OSError, UnicodeDecodeError):
            job = ""
        if job.isdigit() and self._queued(job):
            return job, "running"
        self._run(["rm", "-f", *(posixpath.join(folder, n) for n in
                                 ("result.json", "progress.json", "token"))])
        if token:
            self.target.shell().write_file(posixpath.join(folder, "token"),
                                           token.reveal() + "\n", mode=0o600)
        s = self.s
        command = shlex.join([s.python, script, "run", folder])
        if s.modules:
            command = f"module load {shlex.join(s.modules)} && {command}"
        argv = ["sbatch", "--parsable", f"--chdir={folder}", "--job-name=hpcserve-pull",
                "--ntasks=1", "--cpus-per-task=1", f"--output={posixpath.join(folder, 'log')}",
                *(f"--{k}={v}" for k, v in (("partition", s.partition), ("account", s.account),
                                             ("qos", s.qos), ("reservation", s.reservation))
                  if v), "--wrap", command]
        out = self._run(argv).strip()
        job = out.split(";")[0]
        if not job.isdigit():
            raise WeightsError(f"sbatch answered {out!r} instead of a job id")
        self.target.shell().write_file(posixpath.join(folder, "job"), job + "\n", mode=0o600)
        return job, f"submitted job {job}"

    def _error(self, answer: Mapping[str, Any], req: Mapping[str, Any],
               secret: Secret | None, token_env: str) -> HpcserveError:
        kind = answer.get("error")
        name = self.target.name
        if kind == "no_huggingface_hub":
            return BadInput(f"the python of target {name!r} on its login node "
                            f"({self.s.python}) has no huggingface_hub, which pulls weights",
                            hint=f"pip install huggingface_hub with {self.s.python} there, or "
                            "set `python:` in targets.yaml to an interpreter that has it")
        where = _Where(str(req["repo_id"]), str(req["revision"]),
                       str(answer.get("endpoint") or "the hub"), token_env,
                       secret.reveal() if secret else None)
        message = _scrub(str(answer.get("message") or ""), secret)
        if kind == "gated":
            return where.gated(answer.get("status"))
        if kind == "repo_not_found":
            return NotFound(f"no model {where.repo_id!r} on {where.endpoint}",
                            hint=f"check the repo id; a private repo also needs {token_env}")
        if kind == "revision_not_found":
            return NotFound(f"{where.repo_id} has no revision {where.revision!r}")
        if kind == "bad_token":
            return BadInput(f"{where.endpoint} refused the token in {token_env} (invalid or "
                            "expired)", hint=f"create a token at {where.endpoint}/settings/"
                            f"tokens, or unset {token_env} for public models")
        if kind == "no_match":
            return BadInput(message)
        if kind == "network":
            return WeightsError(f"the login node of {name!r} cannot reach the Hugging Face Hub "
                                f"at {where.endpoint}: {message}",
                                hint="set HF_ENDPOINT (a mirror) or a proxy in the target's "
                                "env:, or use `pull: job` if only compute nodes reach it")
        if kind == "verify":
            return WeightsError(f"{answer.get('count')} file(s) of {where.repo_id} failed "
                                f"verification on {name!r} and were removed from its cache: "
                                f"{message}", hint="run the pull again to fetch them anew")
        return WeightsError(f"pulling {where.repo_id} on the login node of {name!r} failed: "
                            f"{message}")


def _scrub(text: str, secret: Secret | None) -> str:
    """The text with the token (a Secret, or None) masked."""
    return text.replace(secret.reveal(), "***") if secret else text
