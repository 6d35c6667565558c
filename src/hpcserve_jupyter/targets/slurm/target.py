"""The SLURM target: sessions are batch jobs, reached over SSH (or run on the cluster itself).

Per monitor tick it runs one `squeue` for all of a cluster's jobs and, only when some job
left the queue or ended, one `sacct` for those. Endpoints are published by the job itself
(`endpoint.json`; those of all jobs that run but are not yet known are read with one remote
command per tick, not one SFTP read each) and reached through a local SSH tunnel, or directly
when hpcserve runs on the cluster (`host: local`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ...errors import BadInput, HpcserveError, LaunchError, Refused, TargetUnreachable
from ..base import (
    LaunchRequest,
    Phase,
    SecretSetting,
    Target,
    TargetStatus,
    exit_text,
    job_file_name,
)
from . import script
from .sharing import close_endpoint_tunnels, endpoint_urls, open_shell
from .shell import RemoteCommandError, Shell
from .states import SACCT_FIELDS, SQUEUE_FORMAT, JobInfo, parse_sacct, parse_squeue

log = logging.getLogger(__name__)
LOG_TAIL_BYTES = 16384
UNREACHABLE_HINTS = ("Unable to contact slurm controller", "Socket timed out",
                     "Connection refused", "Zero Bytes were transmitted")
# Reads the paths given on stdin (one a line) and prints each file's first line, or an empty
# line when it does not exist yet: shell builtins only, so one process for any number of jobs.
READ_FIRST_LINES = ('while IFS= read -r f; do line=; '
                    'if [ -f "$f" ]; then IFS= read -r line 2>/dev/null < "$f"; fi; '
                    "printf '%s\\n' \"$line\"; done")


class Container(BaseModel):
    model_config = ConfigDict(extra="forbid")
    runtime: Literal["apptainer", "singularity"] | None = None
    image: str | None = Field(None, description="image path or URI; default: the recipe's")
    binds: list[str] = Field(default_factory=list)


class SlurmConfig(BaseModel):
    """targets.yaml settings of a `kind: slurm` target."""

    model_config = ConfigDict(extra="forbid")
    host: str = Field(description="login node (an ~/.ssh/config alias works), or 'local'")
    user: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    key: str | None = Field(None, description="private key file")
    key_passphrase_env: str | None = Field(
        None, description="environment variable holding the key's passphrase")
    key_passphrase_file: str | None = None
    hf_token_env: str | None = Field(
        "HF_TOKEN", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable whose value reaches the engine as HF_TOKEN (gated "
        "models), in the job's 0600 secrets file, never its script; null: never forwarded")
    jump: str | None = Field(None, description="ProxyJump: [user@]host[:port][,...]")
    known_hosts: str | None = None
    trust_on_first_use: bool = False
    ssh_config: str | None = "~/.ssh/config"
    use_agent: bool = True
    login_shell: bool = Field(False, description="run commands under bash -l (module load)")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    sbatch_extra: list[str] = Field(default_factory=list)
    modules: list[str] = Field(default_factory=list)
    container: Container = Field(default_factory=Container)
    workdir: str = Field("~/.hpcserve", description="remote directory for session files")
    python: str = Field("python3", description="remote interpreter for Python engines")
    offline: bool = Field(False, description="the nodes have no internet: launch hub models "
                          "only from the model cache (hpcserve pull), refuse the others at once")
    pull: Literal["login", "job"] = Field(
        "login", description="where `hpcserve pull` downloads weights: on the login node, or "
        "as a short CPU job (sites whose login nodes may not download)")
    env: dict[str, str] = Field(default_factory=dict)
    gpu_request: Literal["gres", "gpus-per-node"] = "gres"
    accounting: Literal["auto", "sacct", "jobcomp", "none"] = "auto"
    bind_host: str = "0.0.0.0"
    command_timeout: float = Field(60.0, gt=0)
    stop_timeout: float = Field(30.0, gt=0, description="seconds to wait for scancel to finish")


class SlurmTarget(Target):
    kind = "slurm"
    settings_model = SlurmConfig
    can_adopt = True
    runs_jobs = True
    settings: SlurmConfig

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, config)
        self._shell: Shell | None = None
        self._base: str | None = None
        self._accounting = self.settings.accounting
        self.scheduler_calls: Counter[str] = Counter()  # per command name, for benchmarks

    # ------------------------------------------------------------------ plumbing

    def shell(self) -> Shell:
        """This machine for `host: local`, else the cluster's one shared SSH connection."""
        if self._shell is None:
            s = self.settings
            passphrase = os.environ.get(s.key_passphrase_env) if s.key_passphrase_env else None
            ssh: dict[str, object] = {} if s.host == "local" else dict(
                port=s.port, user=s.user, key_file=s.key, key_passphrase=passphrase,
                key_passphrase_file=s.key_passphrase_file, use_agent=s.use_agent,
                proxy_jump=s.jump, known_hosts_file=s.known_hosts,
                trust_on_first_use=s.trust_on_first_use, ssh_config_file=s.ssh_config)
            self._shell = open_shell(s.host, **ssh)
        return self._shell

    def _run(self, argv: list[str], **kw: Any) -> Any:
        kw.setdefault("timeout", self.settings.command_timeout)
        return self.shell().run(argv, login_shell=self.settings.login_shell, **kw)

    def _scheduler(self, argv: list[str]) -> str:
        """A SLURM command whose failure to reach slurmctld means 'unreachable', not 'failed'."""
        self.scheduler_calls[argv[0]] += 1
        try:
            return self._run(argv).stdout
        except RemoteCommandError as exc:
            text = exc.stderr + exc.stdout
            if any(h in text for h in UNREACHABLE_HINTS):
                raise TargetUnreachable(f"the SLURM controller of {self.name!r} does not answer: "
                                        f"{text.strip()[-300:]}") from None
            raise

    def base_dir(self) -> str:
        if self._base is None:
            wd = self.settings.workdir
            if wd.startswith("~"):
                home = self.shell().home() if self.settings.host != "local" else \
                    os.path.expanduser("~")
                wd = home + wd[1:]
            self._base = posixpath.normpath(wd)
        return self._base

    # ------------------------------------------------------------------ launch

    def job_options(self, spec_image: str | None, workdir: str) -> script.JobOptions:
        s = self.settings
        return script.JobOptions(
            workdir=workdir, python=s.python, partition=s.partition, account=s.account,
            qos=s.qos, reservation=s.reservation, constraint=s.constraint,
            sbatch_extra=tuple(s.sbatch_extra), modules=tuple(s.modules),
            container_runtime=s.container.runtime,
            container_image=s.container.image or spec_image, container_binds=tuple(
                s.container.binds), gpu_request=s.gpu_request, env=tuple(sorted(s.env.items())),
            bind_host=s.bind_host)

    def render(self, req: LaunchRequest, workdir: str) -> str:
        try:
            return script.build(req.spec, self.job_options(req.spec.image, workdir),
                                name=req.name, session_id=req.session_id)
        except ValueError as exc:
            raise BadInput(f"target {self.name!r}: {exc}",
                           hint="fix the value in targets.yaml or the launch overrides") from None

    async def launch(self, req: LaunchRequest) -> dict[str, Any]:
        return await asyncio.to_thread(self._launch, req)

    def _launch(self, req: LaunchRequest) -> dict[str, Any]:
        if not re.fullmatch(r"[a-f0-9]{4,32}", req.session_id):
            raise BadInput(f"invalid session id {req.session_id!r}")
        kind = "jobs" if req.files else "sessions"  # one-off jobs stage files
        workdir = posixpath.join(self.base_dir(), kind, req.session_id)
        text = self.render(req, workdir)  # bad values fail here, before anything remote
        self._run(["mkdir", "-p", workdir])
        self._run(["chmod", "700", workdir])
        for name, local in req.files.items():  # over SFTP, into the job's directory
            self.shell().upload(local, posixpath.join(workdir, job_file_name(name)))
        secrets = {script.secret_var(k): v for k, v in req.secrets.items()}
        secrets.update(self.hf_token())
        self.shell().write_file(posixpath.join(workdir, "secrets.env"),
                                script.secrets_file(secrets), mode=0o600)
        job_file = posixpath.join(workdir, "job.sh")
        self.shell().write_file(job_file, text, mode=0o700)
        try:
            out = self._scheduler(["sbatch", "--parsable", f"--chdir={workdir}", job_file])
        except RemoteCommandError as exc:
            raise LaunchError(f"sbatch refused the job on {self.name!r}: "
                              f"{(exc.stderr or exc.stdout).strip()[-500:]}",
                              hint="check partition, account, qos and resources "
                              "(sbatch --test-only shows why)") from None
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise LaunchError(f"sbatch answered {out.strip()!r} instead of a job id")
        return {"job_id": job_id, "workdir": workdir, "session_id": req.session_id,
                "job_name": script.job_name(req.name, req.session_id)}

    async def adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        """After a launch whose handle was never recorded: the handle of the job submitted
        for it (found by its name), or None when none is queued or running."""
        return await asyncio.to_thread(self._adopt, session_id, name)

    def _adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"[a-f0-9]{4,32}", session_id):
            return None
        job_name = script.job_name(name, session_id)
        out = self._scheduler(["squeue", "--noheader", "--me", f"--name={job_name}",
                               "--format=%i"])
        jobs = sorted((j for j in out.split() if j.isdigit()), key=int)
        if not jobs:
            return None
        workdir = posixpath.join(self.base_dir(), "sessions", session_id)
        for extra in jobs[1:]:  # never more than one submission per session
            self._stop({"job_id": extra})
        return {"job_id": jobs[0], "workdir": workdir, "session_id": session_id,
                "job_name": job_name}

    # ------------------------------------------------------------------ poll

    async def poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        if not handles:
            return {}
        return await asyncio.to_thread(self._poll, handles)

    def _poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        queue = parse_squeue(self._scheduler(
            ["squeue", "--noheader", "--states=all", "--me", f"--format={SQUEUE_FORMAT}"]))
        wanted = {sid: str(h.get("job_id")) for sid, h in handles.items()}
        gone = [j for j in wanted.values() if j not in queue or queue[j].ended]
        finished = self._accounting_info(gone) if gone else {}
        infos = {sid: finished.get(job_id) or queue.get(job_id) for sid, job_id in wanted.items()}
        unpublished = [handles[sid] for sid, info in infos.items() if info is not None
                       and info.phase == Phase.RUNNING and "ports" not in handles[sid]]
        try:
            published = self._read_endpoints(unpublished)
        except TargetUnreachable as exc:
            return {sid: TargetStatus(Phase.UNREACHABLE, reason=exc.message) for sid in handles}
        out: dict[str, TargetStatus] = {}
        for sid, info in infos.items():
            handle = handles[sid]
            try:
                out[sid] = self._status(handle, info, published.get(handle.get("workdir")))
            except TargetUnreachable as exc:
                out[sid] = TargetStatus(Phase.UNREACHABLE, reason=exc.message)
        return out

    def _accounting_info(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """One sacct call for the jobs that ended or left the queue (exit codes, reasons)."""
        if self._accounting == "none":
            return {}
        base = ["sacct", "-P", "-n", "-o", SACCT_FIELDS, "-j", ",".join(job_ids)]
        if self._accounting in ("auto", "sacct"):
            try:
                return parse_sacct(self._scheduler(base))
            except RemoteCommandError as exc:
                if "accounting storage is disabled" not in exc.stderr + exc.stdout:
                    raise
                self._accounting = "jobcomp"  # no slurmdbd: the job completion log instead
        try:
            return parse_sacct(self._scheduler([*base[:1], "-c", *base[1:]]))
        except RemoteCommandError:
            return {}

    def _status(self, handle: Mapping[str, Any], info: JobInfo | None,
                published: tuple[str, list[int]] | None = None) -> TargetStatus:
        """`published`: the endpoint the job wrote, when it runs and its ports are new."""
        if info is None:
            code = self._exit_code_file(handle)
            return TargetStatus(Phase.EXITED, reason="the job is no longer known to SLURM"
                                + (f" (the engine's {exit_text(code)})" if code is not None
                                   else ""), exit_code=code, log_tail=self._log_tail(handle))
        phase = info.phase
        timing = {"time_limit_s": info.time_limit_s}
        if phase == Phase.PENDING:
            return TargetStatus(Phase.PENDING, reason=info.describe(), **timing)
        if phase == Phase.RUNNING:
            timing["time_left_s"] = info.time_left_s
            update = None
            if "ports" not in handle:
                if published is None:
                    return TargetStatus(Phase.RUNNING, reason=f"running on {info.nodes}",
                                        **timing)
                update = {"node": published[0], "ports": published[1]}
                handle = {**handle, **update}
            return TargetStatus(Phase.RUNNING, endpoints=self._urls(handle),
                                handle_update=update, **timing)
        if phase == Phase.STOPPING:
            return TargetStatus(Phase.STOPPING, reason=f"job {info.state.lower()}")
        self._close_tunnels(handle)
        reason = info.describe()
        exit_code = info.exit_code
        if exit_code is None:  # accounting without it (e.g. the job completion log lost it)
            exit_code = self._exit_code_file(handle)
            if exit_code is not None:
                reason += f" (the engine's {exit_text(exit_code)})"
        return TargetStatus(phase, reason=reason, exit_code=exit_code,
                            log_tail=self._log_tail(handle))

    def _read_endpoints(self, handles: list[Mapping[str, Any]]
                        ) -> dict[str, tuple[str, list[int]]]:
        """The endpoints published so far by these running jobs, by workdir: one remote
        command for all (an SFTP read each costs three round trips, serialised, per job and
        tick). Not yet written (or unreadable) means not published yet."""
        paths = {posixpath.join(str(h["workdir"]), "endpoint.json"): str(h["workdir"])
                 for h in handles if "\n" not in str(h.get("workdir", "\n"))}
        if not paths:
            return {}
        try:
            out = self._run(["sh", "-c", READ_FIRST_LINES], stdin="".join(
                p + "\n" for p in paths)).stdout
        except RemoteCommandError:  # e.g. an odd login shell: the same, one SFTP read each
            lines = [self._read_endpoint_file(p) for p in paths]
        else:
            lines = out.split("\n")[:len(paths)]
        found = {}
        for (_, workdir), line in zip(paths.items(), lines, strict=False):
            try:
                found[workdir] = script.parse_endpoint(line)
            except (ValueError, KeyError, TypeError):  # empty: not written yet
                continue
        return found

    def _read_endpoint_file(self, path: str) -> str:
        try:
            return self.shell().read_file(path).decode("utf-8", "replace")
        except OSError:  # not written yet (a lost connection raises SSHUnreachable instead)
            return ""

    def _exit_code_file(self, handle: Mapping[str, Any]) -> int | None:
        try:
            return int(self.shell().read_file(
                posixpath.join(handle["workdir"], "exit_code")).decode().strip())
        except (OSError, ValueError):
            return None

    def _log_tail(self, handle: Mapping[str, Any]) -> str:
        """The end of the engine log, and of the job's own output (module load errors...)."""
        parts = []
        for name in ("engine.log", f"slurm-{handle.get('job_id')}.out"):
            path = posixpath.join(handle["workdir"], name)
            try:
                size = self.shell().stat(path).size
                data = self.shell().read_file(path, max(0, size - LOG_TAIL_BYTES))
            except OSError:
                continue
            lines = data.decode("utf-8", "replace").splitlines()[-30:]
            if lines:
                parts.append(f"--- {name} ---\n" + "\n".join(lines))
        return "\n".join(parts)

    # ------------------------------------------------------------------ endpoints

    def _urls(self, handle: Mapping[str, Any]) -> list[str]:
        direct = self.settings.host == "local"
        return endpoint_urls(handle["node"], handle["ports"], None if direct else self.shell)

    async def endpoints(self, handle: Mapping[str, Any]) -> list[str]:
        if "ports" not in handle:
            return []
        return await asyncio.to_thread(self._urls, handle)

    def _close_tunnels(self, handle: Mapping[str, Any]) -> None:
        if self.settings.host != "local" and "ports" in handle:
            close_endpoint_tunnels(handle["node"], handle["ports"], self._shell)

    # ------------------------------------------------------------------ stop and logs

    async def gpu_report(self, handle: Mapping[str, Any]) -> Any:
        """nvidia-smi inside the job's allocation (`srun --overlap --jobid`), from the login
        node: the GPUs the job was given."""
        from ..metrics import NVIDIA_SMI, GpuReport, gpu_report

        job = str(handle.get("job_id") or "")
        if not job.isdigit():
            return GpuReport(reason="the session has no SLURM job yet")
        argv = ["srun", "--overlap", f"--jobid={job}", "--ntasks=1", "--quiet", *NVIDIA_SMI]
        try:
            out = await asyncio.to_thread(self._run, argv)
            return gpu_report(0, out.stdout, out.stderr)
        except RemoteCommandError as exc:
            return gpu_report(exc.exit_code, exc.stdout, exc.stderr)

    async def extend(self, handle: Mapping[str, Any], add_s: int) -> str | None:
        """`scontrol update JobId=J TimeLimit+=M`: only an operator or administrator may raise
        a time limit on most sites, so SLURM's own refusal is passed on as it is."""
        job = str(handle.get("job_id") or "")
        if not job.isdigit():
            raise BadInput("this session has no SLURM job yet to extend")
        minutes = max(1, -(-add_s // 60))  # SLURM counts whole minutes, rounding up
        argv = ["scontrol", "update", f"JobId={job}", f"TimeLimit+={minutes}"]
        try:
            out = await asyncio.to_thread(self._scheduler, argv)
        except RemoteCommandError as exc:
            answer = (exc.stderr.strip() or exc.stdout.strip() or f"exit {exc.exit_code}")
            raise Refused(f"SLURM refused to extend job {job} by {minutes} min: {answer}",
                           hint="raising a time limit usually needs a SLURM operator or "
                           "administrator; ask your site, or relaunch the session") from None
        return out.strip() or f"job {job}: time limit raised by {minutes} min"

    async def stop(self, handle: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._stop, handle)
        deadline = asyncio.get_running_loop().time() + self.settings.stop_timeout
        while asyncio.get_running_loop().time() < deadline:
            status = (await self.poll({"s": handle}))["s"]
            if status.phase not in (Phase.RUNNING, Phase.PENDING, Phase.STOPPING):
                return
            await asyncio.sleep(0.5)
        raise HpcserveError(f"job {handle.get('job_id')} is still in the queue "
                            f"{self.settings.stop_timeout:g} s after scancel",
                            hint="check it with squeue; hpcserve stop can be repeated")

    def _stop(self, handle: Mapping[str, Any]) -> None:
        job_id = str(handle.get("job_id", ""))
        if not job_id.isdigit():
            return
        try:
            self._scheduler(["scancel", job_id])
        except RemoteCommandError as exc:
            if "Invalid job id" not in exc.stderr and "already completing" not in exc.stderr:
                raise
        self._close_tunnels(handle)

    async def read_logs(self, handle: Mapping[str, Any], offset: int = 0) -> tuple[str, int]:
        return await asyncio.to_thread(self._read_logs, handle, offset)

    def _read_logs(self, handle: Mapping[str, Any], offset: int) -> tuple[str, int]:
        path = posixpath.join(handle["workdir"], "engine.log")
        try:
            data = self.shell().read_file(path, offset, 1 << 20)
        except OSError:  # the job has not started writing yet
            return "", offset
        return data.decode("utf-8", "replace"), offset + len(data)

    # ------------------------------------------------------------------ job files

    async def read_file(self, handle: Mapping[str, Any], name: str,
                        offset: int = 0) -> tuple[bytes, int]:
        path = posixpath.join(handle["workdir"], job_file_name(name))

        def read() -> tuple[bytes, int]:
            try:
                data = self.shell().read_file(path, offset, 8 << 20)
            except FileNotFoundError:
                return b"", offset
            return data, offset + len(data)

        return await asyncio.to_thread(read)

    async def fetch(self, handle: Mapping[str, Any], name: str, dest: Path) -> bool:
        path = posixpath.join(handle["workdir"], job_file_name(name))

        def get() -> bool:
            try:
                dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                self.shell().download(path, dest)
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(get)

    def secret_settings(self) -> list[SecretSetting]:
        """The key's passphrase and the Hugging Face token, when the settings name variables
        for them."""
        s = self.settings
        found = [SecretSetting("SSH key passphrase", s.key_passphrase_env)] \
            if s.key_passphrase_env else []
        if s.hf_token_env:
            found.append(SecretSetting("Hugging Face token", s.hf_token_env))
        return found

    async def cached_model(self, repo_id: str, filename: str | None = None,
                           revision: str = "main") -> str | None:
        """In the model cache the engines read on the cluster (the target's `env:` over the
        login node's, as `hpcserve pull --on` fills it), asked on the login node. A lookup that
        fails (no such interpreter...) answers None: the launch goes on as before, or is
        refused when the target is offline."""
        from ...weights.pull import WeightsError
        from ...weights.remote import RemoteCache

        try:
            return await asyncio.to_thread(RemoteCache(self).find, repo_id, filename, revision)
        except (BadInput, WeightsError) as exc:
            log.info("model cache lookup on %s failed: %s", self.name, exc)
            return None

    def hf_token(self) -> dict[str, str]:
        """The Hugging Face token as the hub's clients read it (both names), when set here:
        sourced by the job from its 0600 secrets file, like the session's API key."""
        token = os.environ.get(self.settings.hf_token_env or "")
        return {"HF_TOKEN": token, "HUGGING_FACE_HUB_TOKEN": token} if token else {}

    async def close(self) -> None:
        # The SSH connection is shared by every target of the same cluster: leave it open.
        self._shell = None

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {**super().describe(), "host": s.host, "partition": s.partition,
                "account": s.account, "gpus": []}
