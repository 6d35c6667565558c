"""The Tapis Jobs target: a session (or a one-off job) is a Tapis job on an HPC system.

launch   Everything checkable is checked first (request.plan: ids, resources, quoting), then:
         getSystem (once), the app ensured (app.ensure: hpcserve's own is registered on first
         use), a private directory `storage_dir/sessions/<id>` made (mkdir + chmod 700) for
         the secrets file (0600; the app reads and deletes it) and a job's input files (each
         a `fileInputs` entry Tapis stages into the job's directory), then ONE submitJob. A
         failed submit deletes that directory; when the answer was lost (5xx, no answer) the
         job is looked up by its name and cancelled: nothing is left behind.
poll     ONE getJobSearchList (`uuid.in=...`) per tick for all of the target's jobs; a job
         missing from it is confirmed with getJob (404: gone). States: states.py. A running
         session's node and port come from `endpoint.json`, which the app writes in the job's
         directory (read with getJobOutputDownload, allowIfRunning), and are reached through
         an SSH tunnel via the login host (`tunnel: ssh`, the SLURM target's SSH layer) or
         directly (`tunnel: direct`).
stop     cancelJob (an ended job: fine), then wait until Tapis reports it ended.
logs     tapisjob.out of the job (getJobOutputDownload; offsets cut locally).
jobs     A job's files are staged by Tapis (`fileInputs`); progress.json and the output are
         read from the job's directory while it runs and fetched (streamed) when it ended;
         Tapis archives the directory as usual.
adopt    After a launch interrupted before its handle was stored: the job found by its name
         (`<prefix>-<name>-<session id>`, also tagged `hpcserve-session-<id>`).

The handle holds ids and paths only (job uuid, name, the private directory): no token, key or
password, so it can be stored and a restarted server re-attaches by job uuid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BadInput, FixedLimit, HpcserveError, LaunchError, TargetUnreachable
from ...secrets import redact
from ..base import (
    LaunchRequest,
    Phase,
    SecretSetting,
    Target,
    TargetStatus,
    exit_text,
    job_file_name,
)
from ..slurm.script import parse_endpoint
from ..slurm.sharing import close_endpoint_tunnels, endpoint_urls
from ..tapis.auth import secret_settings
from ..tapis.errors import same_error
from ..tapis.jobfiles import walk_files
from . import app, request, states
from .api import JobsApi
from .config import TapisJobsConfig

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 40
READ_LIMIT = 8 << 20  # bytes of a job file returned by one read_file
LOG_READ_LIMIT = 1 << 20


class TapisJobsTarget(Target):
    kind = "tapis-jobs"
    settings_model = TapisJobsConfig
    can_adopt = True
    runs_jobs = True
    settings: TapisJobsConfig

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, config)
        self.api = JobsApi(self.settings)
        self._lock = threading.Lock()
        self._system: dict[str, Any] | None = None
        self._app_ready: str | None = None  # the app version known to exist
        self._shell: Any = None
        self._cleaned: set[str] = set()  # jobs whose private directory was deleted

    def __repr__(self) -> str:
        return f"TapisJobsTarget({self.name!r}, {self.settings.base_url!r})"

    # ------------------------------------------------------------------ plumbing

    def system(self) -> dict[str, Any]:
        with self._lock:
            if self._system is None:
                self._system = self.api.get_system(self.settings.system_id)
            return self._system

    def layout(self) -> app.Layout:
        return app.layout(self.settings, self.system())

    def shell(self) -> Any:
        """The SSH connection to the login host that tunnels reach the nodes through."""
        if self._shell is None:
            from ..slurm.sharing import open_shell

            s, ssh, system = self.settings, self.settings.ssh, self.system()
            host = ssh.host or system.get("host")
            if not host:
                raise BadInput(f"target {self.name!r}: the system records no host",
                               hint="set ssh.host (the login host) or tunnel: direct")
            user = ssh.user or _plain(system.get("effectiveUserId")) or s.username or \
                os.environ.get(s.username_env)
            port = ssh.port or (int(system["port"]) if system.get("port") else None)
            passphrase = os.environ.get(ssh.key_passphrase_env) if ssh.key_passphrase_env \
                else None
            self._shell = open_shell(
                str(host), port=port, user=user, key_file=ssh.key, key_passphrase=passphrase,
                key_passphrase_file=ssh.key_passphrase_file, use_agent=ssh.use_agent,
                proxy_jump=ssh.jump, known_hosts_file=ssh.known_hosts,
                trust_on_first_use=ssh.trust_on_first_use, ssh_config_file=ssh.ssh_config)
        return self._shell

    def plan(self, req: LaunchRequest) -> request.JobPlan:
        s = self.settings
        hf = os.environ.get(s.hf_token_env) if s.hf_token_env else None
        return request.plan(req, s, app_version=app.app_version(s), hf_token=hf)

    # ------------------------------------------------------------------ launch

    async def launch(self, req: LaunchRequest) -> dict[str, Any]:
        plan = self.plan(req)  # bad input fails here, before any call
        for name in req.files:
            job_file_name(name)
        return await asyncio.to_thread(self._launch, req, plan)

    def _launch(self, req: LaunchRequest, plan: request.JobPlan) -> dict[str, Any]:
        s = self.settings
        lay = self.layout()
        with self._lock:
            ready = self._app_ready
        if ready is None:
            ready = app.ensure(self.api, s, lay)
            with self._lock:
                self._app_ready = ready
        private = posixpath.join(lay.storage, "sessions", req.session_id)
        body = plan.body
        step = "files"
        try:
            self.api.mkdir(s.system_id, lay.files_path(private))
            self.api.chmod(s.system_id, lay.files_path(private), "700")
            if plan.secret_values:
                self._upload_secrets(lay, private, plan.secret_values)
                body["parameterSet"]["envVariables"].append(
                    {"key": "HPCSERVE_SECRETS_FILE", "value": posixpath.join(private,
                                                                             "secrets.env")})
            inputs = self._stage_inputs(lay, private, req.files)
            if inputs:
                body["fileInputs"] = inputs
            step = "submit"
            job = self.api.submit(body)
        except HpcserveError as exc:
            secrets = plan.secrets
            lost = step == "submit" and isinstance(exc, TargetUnreachable)
            left = self._undo(plan.name if lost else None, private, lay)
            msg = redact(exc.message, secrets)
            if left:
                msg += f" (and could not remove {left}: remove it in the Tapis UI or API)"
            if lost:
                raise LaunchError(msg, hint="the Jobs API did not answer or failed; try again "
                                  "later (a job it may have created was looked up by name and "
                                  "cancelled)") from None
            raise same_error(exc, msg) from None
        uuid = str(job.get("uuid") or "")
        if not uuid:
            raise LaunchError(f"Tapis accepted job {plan.name} but gave no uuid")
        log.info("submitted Tapis job %s (%s) on %s", uuid, plan.name, self.name)
        return {"job_uuid": uuid, "job_name": plan.name, "session_id": req.session_id,
                "private_dir": private, "system_id": s.system_id, "one_off": bool(req.files)}

    def _upload_secrets(self, lay: app.Layout, private: str, values: Mapping[str, str]) -> None:
        text = request.secrets_file(values)
        target = posixpath.join(private, "secrets.env")
        with tempfile.TemporaryDirectory(prefix="hpcserve-tapis-") as tmp:
            local = Path(tmp) / "secrets.env"
            fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            self.api.upload(self.settings.system_id, local, lay.files_path(target))
        self.api.chmod(self.settings.system_id, lay.files_path(target), "600")

    def _stage_inputs(self, lay: app.Layout, private: str,
                      files: Mapping[str, Path]) -> list[dict[str, Any]]:
        """Upload a job's files beside its secrets; each becomes a fileInput that Tapis copies
        into the job's directory under its name (a directory: each file under it)."""
        inputs: list[dict[str, Any]] = []
        system = self.settings.system_id
        for name, source in files.items():
            for local, rel in walk_files(Path(source), job_file_name(name)):
                remote = posixpath.join(private, "inputs", rel)
                self.api.mkdir(system, lay.files_path(posixpath.dirname(remote)))
                self.api.upload(system, local, lay.files_path(remote))
                inputs.append({"name": f"hpcserve{len(inputs)}",
                               "sourceUrl": f"tapis://{system}/{lay.files_path(remote)}",
                               "targetPath": rel, "autoMountLocal": True})
        return inputs

    def _undo(self, job_name: str | None, private: str, lay: app.Layout) -> str:
        """After a failed launch: cancel a job the lost submit may have created, delete the
        private directory. Returns what could not be removed."""
        left = []
        if job_name:
            try:
                for job in self.api.search({"name.eq": job_name}, f"look up job {job_name}"):
                    if str(job.get("status")) not in states.TERMINAL:
                        self.api.cancel(str(job.get("uuid")))
            except HpcserveError as exc:
                log.warning("could not look up job %s after a failed submit: %s", job_name,
                            exc.message)
                left.append(f"a job named {job_name}, if Tapis created it")
        try:
            self.api.delete(self.settings.system_id, lay.files_path(private))
        except HpcserveError:
            left.append(private)
        return " and ".join(left)

    # ------------------------------------------------------------------ adopt

    async def adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._adopt, session_id, name)

    def _adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        s = self.settings
        job_name = request.job_name(s.job_prefix, name, session_id)
        found = [j for j in self.api.search({"name.eq": job_name}, f"look up job {job_name}")
                 if str(j.get("status")) not in states.TERMINAL]
        lay = self.layout()
        private = posixpath.join(lay.storage, "sessions", session_id)
        if not found:
            with contextlib.suppress(HpcserveError):
                self.api.delete(s.system_id, lay.files_path(private))
            return None
        for extra in found[1:]:  # never more than one submission per session
            with contextlib.suppress(HpcserveError):
                self.api.cancel(str(extra.get("uuid")))
        log.info("adopted Tapis job %s of an interrupted launch", found[0].get("uuid"))
        return {"job_uuid": str(found[0].get("uuid")), "job_name": job_name,
                "session_id": session_id, "private_dir": private, "system_id": s.system_id,
                "one_off": False}

    # ------------------------------------------------------------------ poll

    async def extend(self, handle: Mapping[str, Any], add_s: int) -> str | None:
        raise FixedLimit("a Tapis job's maxMinutes cannot change once it is submitted",
                         hint="relaunch the session (hpcserve relaunch ID) with a longer "
                         "time limit: --set time=...")

    async def poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        if not handles:
            return {}
        return await asyncio.to_thread(self._poll, handles)

    def _poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        uuids = sorted({str(h.get("job_uuid")) for h in handles.values() if h.get("job_uuid")})
        listed: dict[str, dict[str, Any]] = {}
        if uuids:
            found = self.api.search({"uuid.in": ",".join(uuids)}, "list jobs")
            listed = {str(j.get("uuid")): j for j in found}
        out: dict[str, TargetStatus] = {}
        for sid, handle in handles.items():
            try:
                out[sid] = self._status(handle, listed.get(str(handle.get("job_uuid"))))
            except TargetUnreachable as exc:
                out[sid] = TargetStatus(Phase.UNREACHABLE, reason=exc.message)
        return out

    def _status(self, handle: Mapping[str, Any], job: dict[str, Any] | None) -> TargetStatus:
        uuid = str(handle.get("job_uuid") or "")
        if job is None:
            if not uuid:
                return TargetStatus(Phase.EXITED, reason="no Tapis job was submitted")
            try:
                job = self.api.get_job(uuid)
            except HpcserveError as exc:
                if isinstance(exc, TargetUnreachable):
                    raise
                self._cleanup(handle)
                return TargetStatus(Phase.STOPPED, reason=f"Tapis job {uuid} no longer "
                                    "exists (deleted outside hpcserve)")
        status = str(job.get("status") or "").upper()
        phase = states.phase_of(status)
        if phase == Phase.PENDING:
            return TargetStatus(Phase.PENDING, reason=states.reason_of(job),
                                time_limit_s=states.time_limit_of(job))
        if phase == Phase.STOPPING:
            return TargetStatus(Phase.STOPPING, reason=states.reason_of(job))
        if phase == Phase.RUNNING:
            st = self._running(handle, job)
            st.time_limit_s = states.time_limit_of(job)
            st.time_left_s = states.time_left_of(job, time.time())
            return st
        return self._ended(handle, job, phase)

    def _running(self, handle: Mapping[str, Any], job: Mapping[str, Any]) -> TargetStatus:
        where = f"running (SLURM job {job.get('remoteJobId')})" if job.get("remoteJobId") \
            else "running"
        if handle.get("one_off"):
            return TargetStatus(Phase.RUNNING, reason=where)
        update = None
        if "ports" not in handle:
            data = self.api.output(str(handle["job_uuid"]), "endpoint.json")
            published = _endpoint(data)
            if published is None:
                return TargetStatus(Phase.RUNNING, reason=where)
            update = {"node": published[0], "ports": published[1]}
            handle = {**handle, **update}
        return TargetStatus(Phase.RUNNING, reason=where, endpoints=self._urls(handle),
                            handle_update=update)

    def _ended(self, handle: Mapping[str, Any], job: Mapping[str, Any],
               phase: Phase) -> TargetStatus:
        self._close_tunnels(handle)
        self._cleanup(handle)
        reason = states.reason_of(job)
        if states.cancelled_outside(job):
            phase, reason = Phase.STOPPED, f"cancelled outside hpcserve ({reason})"
        if phase == Phase.STOPPED:
            return TargetStatus(Phase.STOPPED, reason=reason, log_tail=self._tail(handle))
        code = states.exit_code_of(job)
        if code is None:
            code = self._exit_code_file(handle)
        if str(job.get("status")).upper() == "FINISHED" and code is None:
            code = 0
        if code is not None and str(job.get("status")).upper() == "FAILED":
            reason += f" (the command's {exit_text(code)})"
        ended = Phase.TIMEOUT if states.is_timeout(job) else Phase.EXITED
        return TargetStatus(ended, reason=reason, exit_code=code, log_tail=self._tail(handle))

    def _exit_code_file(self, handle: Mapping[str, Any]) -> int | None:
        try:
            data = self.api.output(str(handle["job_uuid"]), "exit_code")
            return int(data.decode().strip()) if data else None
        except (HpcserveError, ValueError):
            return None

    def _tail(self, handle: Mapping[str, Any]) -> str:
        try:
            data = self.api.output(str(handle["job_uuid"]), "tapisjob.out") or b""
        except HpcserveError:
            return ""
        lines = data[-65536:].decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]
        return "\n".join(lines)

    def _cleanup(self, handle: Mapping[str, Any]) -> None:
        """The private directory (an unread secrets file, the staged inputs) goes once the
        job ended: Tapis copied the inputs into the job's own directory."""
        uuid, private = str(handle.get("job_uuid")), handle.get("private_dir")
        if not private or uuid in self._cleaned:
            return
        try:
            self.api.delete(self.settings.system_id, self.layout().files_path(str(private)))
            self._cleaned.add(uuid)
        except HpcserveError as exc:
            log.warning("could not delete %s of Tapis job %s: %s", private, uuid, exc.message)

    # ------------------------------------------------------------------ endpoints

    def _urls(self, handle: Mapping[str, Any]) -> list[str]:
        direct = self.settings.tunnel == "direct"
        return endpoint_urls(str(handle["node"]), handle["ports"], None if direct else self.shell)

    async def endpoints(self, handle: Mapping[str, Any]) -> list[str]:
        if "ports" not in handle:
            return []
        return await asyncio.to_thread(self._urls, handle)

    def _close_tunnels(self, handle: Mapping[str, Any]) -> None:
        if self.settings.tunnel == "ssh" and "ports" in handle:
            close_endpoint_tunnels(str(handle["node"]), handle["ports"], self._shell)

    # ------------------------------------------------------------------ stop and logs

    async def stop(self, handle: Mapping[str, Any]) -> None:
        uuid = str(handle.get("job_uuid") or "")
        if not uuid:
            return
        await asyncio.to_thread(self._cancel, uuid)
        deadline = time.monotonic() + self.settings.stop_timeout
        while True:
            status = (await self.poll({"s": handle}))["s"]
            if status.phase not in (Phase.RUNNING, Phase.PENDING, Phase.STOPPING,
                                    Phase.UNREACHABLE):
                return
            if time.monotonic() > deadline:
                raise HpcserveError(f"Tapis job {uuid} has not ended "
                                    f"{self.settings.stop_timeout:g} s after cancelJob "
                                    f"({status.reason})",
                                    hint="check it in the Tapis UI; hpcserve stop can be "
                                    "repeated")
            await asyncio.sleep(1.0)

    def _cancel(self, uuid: str) -> None:
        try:
            self.api.cancel(uuid)
        except HpcserveError as exc:
            if isinstance(exc, TargetUnreachable):
                raise
            # 404 (gone) or 400 (already ended): the poll below confirms it ended.
            log.info("cancelJob %s: %s", uuid, exc.message)

    async def read_logs(self, handle: Mapping[str, Any], offset: int = 0) -> tuple[str, int]:
        data, new = await self.read_file(handle, "tapisjob.out", offset, limit=LOG_READ_LIMIT)
        return data.decode("utf-8", "replace"), new

    async def read_file(self, handle: Mapping[str, Any], name: str, offset: int = 0,
                        limit: int = READ_LIMIT) -> tuple[bytes, int]:
        uuid, path = str(handle.get("job_uuid")), job_file_name(name)
        data = await asyncio.to_thread(self.api.output, uuid, path)
        if not data or offset >= len(data):
            return b"", offset
        chunk = data[offset:offset + limit]
        return chunk, offset + len(chunk)

    async def fetch(self, handle: Mapping[str, Any], name: str, dest: Path) -> bool:
        uuid, path = str(handle.get("job_uuid")), job_file_name(name)
        return await asyncio.to_thread(self.api.output_to, uuid, path, dest)

    async def release(self, handle: Mapping[str, Any]) -> None:
        """The job's directory stays where Tapis put it (and its archive); only hpcserve's
        private copy of its inputs goes."""
        await asyncio.to_thread(self._cleanup, handle)

    # ------------------------------------------------------------------ misc

    def secret_settings(self) -> list[SecretSetting]:
        s = self.settings
        found = secret_settings(s, s.hf_token_env)
        if s.ssh.key_passphrase_env:
            found.append(SecretSetting("SSH key passphrase", s.ssh.key_passphrase_env))
        return found

    async def close(self) -> None:
        # The SSH connection is shared per login host: leave it open for the others.
        self._shell = None
        await asyncio.to_thread(self.api.close)

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {**super().describe(), "system_id": s.system_id, "queue": s.queue,
                "allocation": s.allocation, "app": f"{s.app_id}", "gpus": []}


def _plain(value: Any) -> str | None:
    """A system field as a value, not a Tapis macro (`${apiUserId}`)."""
    text = str(value or "")
    return text if text and "$" not in text else None


def _endpoint(data: bytes | None) -> tuple[str, list[int]] | None:
    """(node, ports) the app published, or None while it has not (yet)."""
    if not data:
        return None
    try:
        return parse_endpoint(data.decode("utf-8", "replace"))
    except (ValueError, KeyError, TypeError):
        return None
