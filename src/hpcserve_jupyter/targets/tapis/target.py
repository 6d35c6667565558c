"""The Tapis Pods target (FlexServ-style deployments): one session = one pod + one volume.

launch   create_volume (model files, `volume_size_mb`), then create_pod running the spec's argv
         (see deploy.py). Anything failing after the volume exists deletes what was created
         (the pod too, if create_pod may have gone through): no orphans. Bad ids, resources or
         config fail before the first call.
poll     ONE list_pods per tick for all of the target's sessions (states.py maps statuses); a
         pod missing from the list is confirmed with get_pod, and a 404 means it was deleted
         outside hpcserve (its own volume is then deleted too). Pods that ended without our
         stop (ERROR, COMPLETE, time_to_stop, stopped in the Tapis UI) give their logs as the
         log tail and are then deleted with their own volume, since the session is over and
         nothing would ever clean them up (`delete_ended: false` keeps them for debugging;
         `keep_volume` keeps the volume).
stop     stop_pod (the engine gets SIGTERM), wait up to `stop_timeout` for STOPPED, then
         delete_pod and delete_volume: stop ends all of the session's resources, as the
         Target contract asks (`keep_volume: true` keeps the volume, a shared `volume_id` is
         never deleted). A pod already gone is fine: stop is idempotent.
logs     get_pod_logs (the whole text; offsets are cut locally). After stop deleted the pod,
         the logs read just before the delete are served from memory.
jobs     A launch with files (a one-off job) uploads them with upload_to_volume into `job/` of
         the pod's own volume (jobfiles.py; {HPCSERVE_JOBDIR} = <mount>/job) before creating
         the pod, whose command is the job driver: the pod ends when the job does. A job's
         volume outlives its pod: poll never deletes an ended job pod or its volume, and stop
         (SIGTERM: the driver writes its cancelled progress and partial output) deletes the
         pod only, so the manager can still read progress.json and fetch the output
         (get_volume_contents, streamed to disk). `release` then deletes the pod and the
         volume, unless `keep_volume` (setting, or the job's handle) keeps it.
endpoint `endpoint_template` (default `https://{url}`, where url is the API's networking url,
         `<pod_id>.pods.<tenant host>` or `<pod_id>-<key>.pods...`); fields {url}, {pod_id},
         {key}, {tenant_host}. A site behind a gateway or a local tunnel/proxy sets e.g.
         `http://127.0.0.1:8080/{pod_id}` (which is how the tests reach the stand-in's pods).

Errors: a timeout, refused connection or 5xx is TargetUnreachable during polls (state unknown,
not failed) and LaunchError during a launch; 400 is BadInput with the service's message; 401
(after one token refresh) and 403 are TapisAuthError (a BadInput) with a hint; 404 on a pod is
"the pod is gone".

The handle holds ids only (deployment_id, pod_id, volume_id, volume_owned, url, port; for a
job also job_volume_id, job_dir, keep_volume):
no token, password or key, so it can be stored and a restarted manager re-attaches by pod id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import BadInput, FixedLimit, HpcserveError, LaunchError, TargetUnreachable
from ...secrets import redact
from ..base import LaunchRequest, Phase, SecretSetting, Target, TargetStatus
from . import deploy, jobfiles, states
from .auth import secret_settings
from .client import PodsApi
from .config import TapisPodsConfig
from .errors import TapisNotFound, same_error
from .ids import deployment_ids

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 40
ENDED_MEMORY = 256  # pods that ended and were deleted: statuses and logs kept in memory
FINAL_LOG_BYTES = 1 << 20  # the end of one pod's logs, kept to be read after its deletion
# Memory for all kept logs together: without it, 256 pods' logs (~100 KB of text from an
# engine's start, up to 4 bytes a character in memory) grew a long-lived server by hundreds
# of MB (found by the R11 soak).
FINAL_LOGS_BUDGET = 4 << 20


class TapisPodsTarget(Target):
    kind = "tapis-pods"
    settings_model = TapisPodsConfig
    can_adopt = True
    runs_jobs = True
    settings: TapisPodsConfig

    def __init__(self, name: str, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(name, config)
        self.api = PodsApi(self.settings)
        self._final_logs: dict[str, str] = {}  # pod id -> logs read just before deleting it
        self._ended: dict[str, TargetStatus] = {}  # pod id -> how it ended (cleaned up)
        self._stopping: set[str] = set()  # pods our stop() is ending (poll leaves them alone)

    def __repr__(self) -> str:
        return f"TapisPodsTarget({self.name!r}, {self.settings.base_url!r})"

    # ------------------------------------------------------------------ launch

    async def launch(self, req: LaunchRequest) -> dict[str, Any]:
        plan = deploy.plan(req, self.settings)  # bad input fails here, before any call
        return await asyncio.to_thread(self._launch, req, plan)

    def _launch(self, req: LaunchRequest, plan: deploy.Plan) -> dict[str, Any]:
        ids = plan.ids
        step, made = "volume", []  # the volumes this launch created
        try:
            if plan.volume_owned:
                self.api.create_volume(plan.volume)
                made.append(ids.volume)
            else:
                self._ensure_shared_volume(plan)
            if plan.job_volume_body:  # a job beside a shared volume: its own for its files
                step = "job volume"
                self.api.create_volume(plan.job_volume_body)
                made.append(plan.job_volume)
            if req.files:
                step = "files"
                staged = jobfiles.stage(self.api, plan.job_volume, req.files)
                log.info("staged %d job files into volume %s", staged, plan.job_volume)
            step = "pod"
            created = self.api.create_pod(plan.pod, plan.secrets)
        except HpcserveError as exc:
            # No answer or a 5xx: the service may have created the object anyway.
            maybe = isinstance(exc, TargetUnreachable)
            pod = ids.pod if step == "pod" and maybe else None
            volumes = list(made)
            if maybe and step == "volume" and plan.volume_owned:
                volumes.append(ids.volume)
            if maybe and step == "job volume":
                volumes.append(plan.job_volume)
            leftovers = self._undo(pod, volumes)
            msg = redact(exc.message, list(plan.secrets))
            if leftovers:
                msg += f" (and could not delete {leftovers}: delete it in the Tapis UI or API)"
            if not maybe:
                raise same_error(exc, msg) from None
            unsure = " and ".join(f"{kind} {name}" for kind, name in
                                  (("pod", pod), *(("volume", v) for v in volumes)) if name)
            raise LaunchError(msg, hint="the Pods API did not answer or failed; try again later. "
                              f"{unsure} was deleted again, but if the service creates it late, "
                              "delete it in the Tapis UI or API") from None
        networking = (created or {}).get("networking") or {}
        stanza = networking.get(self.settings.networking_key) or {}
        url = stanza.get("url") if isinstance(stanza, dict) else None
        log.info("launched pod %s (volume %s) on %s", ids.pod, ids.volume, self.name)
        handle = {"deployment_id": ids.deployment, "pod_id": ids.pod, "volume_id": ids.volume,
                  "volume_owned": plan.volume_owned, "session_id": req.session_id,
                  "networking_key": self.settings.networking_key, "port": self.settings.port,
                  "url": url or plan.url}
        if req.files:
            handle.update(job_volume_id=plan.job_volume, job_dir=plan.job_dir,
                          keep_volume=self.settings.keep_volume)
        return handle

    def _ensure_shared_volume(self, plan: deploy.Plan) -> None:
        try:
            self.api.get_volume(plan.ids.volume)
        except TapisNotFound:
            self.api.create_volume(plan.volume)

    def _undo(self, pod_id: str | None, volume_ids: list[str]) -> str:
        """Delete what a failed launch created; returns what could not be deleted."""
        left = []
        if pod_id:
            try:
                self.api.delete_pod(pod_id)
            except TapisNotFound:
                pass
            except HpcserveError as exc:
                log.warning("could not delete pod %s after a failed launch: %s", pod_id,
                            exc.message)
                left.append(f"pod {pod_id}")
        for volume_id in volume_ids:
            if not self._delete_volume(volume_id, deadline=time.monotonic() + 10):
                left.append(f"volume {volume_id}")
        return " and ".join(left)

    async def extend(self, handle: Mapping[str, Any], add_s: int) -> str | None:
        raise FixedLimit("a pod's time_to_stop counts from its start and changes only when "
                         "the pod restarts, which would end this session",
                         hint="relaunch the session (hpcserve relaunch ID) with a longer time "
                         "limit: --set time=...")

    async def cached_model(self, repo_id: str, filename: str | None = None,
                           revision: str = "main") -> str | None:
        """In the shared model volume (`volume_id`), as `hpcserve pull --on` fills it: the
        path in the pod. A session's own volume starts empty, so without `volume_id`: None.
        A lookup that fails answers None: the launch goes on, or is refused when offline."""
        if not self.settings.volume_id:
            return None
        from ...weights.volume import VolumeCache

        try:
            return await asyncio.to_thread(VolumeCache(self).find, repo_id, filename, revision)
        except HpcserveError as exc:
            log.info("model volume lookup on %s failed: %s", self.name, exc.message)
            return None

    # ------------------------------------------------------------------ adopt

    def secret_settings(self) -> list[SecretSetting]:
        return secret_settings(self.settings, self.settings.hf_token_env)

    async def adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        """After a launch whose handle was never recorded: the handle of the pod created for
        it (its id derives from the session), or None once a volume made without a pod was
        deleted again, so nothing of the launch is left unknown."""
        return await asyncio.to_thread(self._adopt, session_id, name)

    def _adopt(self, session_id: str, name: str) -> dict[str, Any] | None:
        s = self.settings
        try:
            ids = deployment_ids(s.id_prefix, name, session_id, s.volume_id)
        except BadInput:
            return None  # no pod could ever have been created under such ids
        owned = s.volume_id is None
        try:
            pod = self.api.get_pod(ids.pod)
        except TapisNotFound:
            pod = None
        if pod is None:
            if owned and not self._delete_volume(ids.volume, deadline=time.monotonic() + 10):
                raise LaunchError(f"the volume {ids.volume} of an interrupted launch could "
                                  "not be deleted", hint="delete it in the Tapis UI or API")
            return None
        networking = pod.get("networking") or {}
        stanza = networking.get(s.networking_key) if isinstance(networking, dict) else None
        url = stanza.get("url") if isinstance(stanza, dict) else None
        assert s.tenant_host is not None
        log.info("adopted pod %s of an interrupted launch on %s", ids.pod, self.name)
        return {"deployment_id": ids.deployment, "pod_id": ids.pod, "volume_id": ids.volume,
                "volume_owned": owned, "session_id": session_id,
                "networking_key": s.networking_key, "port": s.port,
                "url": url or deploy.pod_url(ids.pod, s.networking_key, s.tenant_host)}

    # ------------------------------------------------------------------ poll

    async def poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        if not handles:
            return {}
        return await asyncio.to_thread(self._poll, handles)

    def _poll(self, handles: Mapping[str, Mapping[str, Any]]) -> dict[str, TargetStatus]:
        listed = {p.get("pod_id"): p for p in self.api.list_pods() if isinstance(p, dict)}
        out: dict[str, TargetStatus] = {}
        for sid, handle in handles.items():
            try:
                out[sid] = self._status(handle, listed.get(handle.get("pod_id")))
            except TargetUnreachable as exc:
                out[sid] = TargetStatus(Phase.UNREACHABLE, reason=exc.message)
        return out

    def _status(self, handle: Mapping[str, Any], pod: dict[str, Any] | None) -> TargetStatus:
        pod_id = str(handle.get("pod_id", ""))
        if pod is None:
            if pod_id in self._ended:
                return self._ended[pod_id]
            try:
                pod = self.api.get_pod(pod_id)  # not listed: make sure before calling it gone
            except TapisNotFound:
                return self._gone(handle)
        st = states.phase_of(pod)
        if st.phase == Phase.RUNNING and str(pod.get("status")).upper() == "AVAILABLE":
            st.endpoints = self._urls(handle, pod)
        elif st.phase in (Phase.EXITED, Phase.TIMEOUT, Phase.STOPPED) and \
                pod_id not in self._stopping:
            st.log_tail = self._tail(pod_id)
            detail = states.container_detail(pod)
            if detail and detail not in st.log_tail:
                st.log_tail = f"{st.log_tail}\n--- pod status ---\n{detail}".lstrip("\n")
            if not jobfiles.is_job(handle):  # a job's pod and files wait for `release`
                self._cleanup_ended(handle, st)
        return st

    def _gone(self, handle: Mapping[str, Any]) -> TargetStatus:
        pod_id = str(handle.get("pod_id"))
        if pod_id in self._stopping:
            return TargetStatus(Phase.STOPPED, reason=f"pod {pod_id} deleted")
        reason = f"pod {pod_id} no longer exists (deleted outside hpcserve)"
        if jobfiles.is_job(handle):  # its volume holds the job's output: kept for `release`
            reason = f"pod {pod_id} no longer exists"
        elif self._owned_volume(handle):
            if self._delete_volume(str(handle["volume_id"]), deadline=time.monotonic() + 5):
                reason += f"; its volume {handle['volume_id']} was deleted"
            else:
                reason += f"; its volume {handle['volume_id']} is left: delete it yourself"
        st = TargetStatus(Phase.STOPPED, reason=reason, log_tail=self._final_logs.get(pod_id))
        self._remember(pod_id, st)
        return st

    def _cleanup_ended(self, handle: Mapping[str, Any], st: TargetStatus) -> None:
        """A pod that ended by itself: logs are read, now delete it (and its own volume)."""
        if not self.settings.delete_ended:
            return
        pod_id = str(handle.get("pod_id"))
        try:
            self.api.delete_pod(pod_id)
        except TapisNotFound:
            pass
        except HpcserveError as exc:
            log.warning("could not delete ended pod %s: %s", pod_id, exc.message)
            return
        if self._owned_volume(handle) and not self._delete_volume(
                str(handle["volume_id"]), deadline=time.monotonic() + 5):
            st.reason += f"; its volume {handle['volume_id']} is left: delete it yourself"
        self._remember(pod_id, st)

    def _keep_logs(self, pod_id: str, text: str) -> None:
        """Keep the end of a pod's logs for after its deletion; the oldest pods' logs go first
        once ENDED_MEMORY pods or FINAL_LOGS_BUDGET bytes of memory are kept."""
        self._final_logs.pop(pod_id, None)
        self._final_logs[pod_id] = text[-FINAL_LOG_BYTES:]
        kept = sum(map(sys.getsizeof, self._final_logs.values()))
        while len(self._final_logs) > 1 and (len(self._final_logs) > ENDED_MEMORY
                                             or kept > FINAL_LOGS_BUDGET):
            kept -= sys.getsizeof(self._final_logs.pop(next(iter(self._final_logs))))

    def _remember(self, pod_id: str, st: TargetStatus) -> None:
        self._ended[pod_id] = st
        while len(self._ended) > ENDED_MEMORY:
            self._ended.pop(next(iter(self._ended)))

    def _owned_volume(self, handle: Mapping[str, Any]) -> bool:
        return bool(handle.get("volume_owned") and handle.get("volume_id")
                    and not self.settings.keep_volume)

    def _tail(self, pod_id: str) -> str:
        try:
            text = self.api.pod_logs(pod_id)
            self._keep_logs(pod_id, text)  # the pod may be deleted next (delete_ended)
        except TapisNotFound:
            text = self._final_logs.get(pod_id, "")
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])

    # ------------------------------------------------------------------ endpoints

    def _urls(self, handle: Mapping[str, Any], pod: Mapping[str, Any] | None = None) -> list[str]:
        key = str(handle.get("networking_key") or self.settings.networking_key)
        url = handle.get("url")
        if pod is not None:
            stanza = (pod.get("networking") or {}).get(key)
            if isinstance(stanza, dict) and stanza.get("url"):
                url = stanza["url"]
        pod_id = str(handle.get("pod_id"))
        assert self.settings.tenant_host is not None
        url = url or deploy.pod_url(pod_id, key, self.settings.tenant_host)
        url = str(url).removeprefix("https://").removeprefix("http://")
        return [self.settings.endpoint_template.format(
            url=url, pod_id=pod_id, key=key, tenant_host=self.settings.tenant_host).rstrip("/")]

    async def endpoints(self, handle: Mapping[str, Any]) -> list[str]:
        return self._urls(handle) if handle.get("pod_id") else []

    # ------------------------------------------------------------------ stop

    async def stop(self, handle: Mapping[str, Any]) -> None:
        if handle.get("pod_id"):
            await asyncio.to_thread(self._stop, handle)

    def _stop(self, handle: Mapping[str, Any]) -> None:
        pod_id = str(handle["pod_id"])
        deadline = time.monotonic() + self.settings.stop_timeout
        self._stopping.add(pod_id)
        try:
            with contextlib.suppress(TapisNotFound):
                self._keep_logs(pod_id, self.api.pod_logs(pod_id))
            try:
                self.api.stop_pod(pod_id)
                self._wait_stopped(pod_id, deadline)
                if jobfiles.is_job(handle):
                    self._stopped_job(pod_id)
                self.api.delete_pod(pod_id)
            except TapisNotFound:
                pass  # already gone
            if jobfiles.is_job(handle):
                return  # the job's progress and output stay in its volume until `release`
            if self._owned_volume(handle) and not self._delete_volume(
                    str(handle["volume_id"]), deadline=max(deadline, time.monotonic() + 5)):
                raise HpcserveError(f"pod {pod_id} is deleted but its volume "
                                    f"{handle['volume_id']} could not be",
                                    hint="stop again to retry, or delete it in the Tapis UI")
        finally:
            self._stopping.discard(pod_id)

    def _stopped_job(self, pod_id: str) -> None:
        """A stopped job pod's last logs (the driver's own last lines come after SIGTERM), and
        how it ended for polls that no longer find it."""
        with contextlib.suppress(TapisNotFound):
            self._keep_logs(pod_id, self.api.pod_logs(pod_id))
        tail = "\n".join(self._final_logs.get(pod_id, "").splitlines()[-LOG_TAIL_LINES:])
        self._remember(pod_id, TargetStatus(Phase.STOPPED, reason=f"pod {pod_id} was stopped",
                                            log_tail=tail))

    def _wait_stopped(self, pod_id: str, deadline: float) -> None:
        """Until the pod is no longer running (delete_pod then ends it hard if it still is)."""
        while time.monotonic() < deadline:
            status = str(self.api.get_pod(pod_id).get("status", "")).upper()
            if status in ("STOPPED", *states.ENDED_STATES):
                return
            time.sleep(0.25)

    def _delete_volume(self, volume_id: str, *, deadline: float) -> bool:
        """Delete a volume, retrying while the service still refuses (pod not yet gone)."""
        while True:
            try:
                self.api.delete_volume(volume_id)
                return True
            except TapisNotFound:
                return True
            except HpcserveError as exc:
                if time.monotonic() >= deadline:
                    log.warning("could not delete volume %s: %s", volume_id, exc.message)
                    return False
            time.sleep(0.5)

    # ------------------------------------------------------------------ job files

    async def read_file(self, handle: Mapping[str, Any], name: str,
                        offset: int = 0) -> tuple[bytes, int]:
        """A small file of the job's directory (progress.json) from `offset` on."""
        if not jobfiles.is_job(handle):
            return b"", offset
        path = jobfiles.volume_path(name)
        try:
            data = await asyncio.to_thread(self.api.volume_file,
                                           str(handle["job_volume_id"]), path)
        except TapisNotFound:
            return b"", offset
        chunk = data[offset:]
        return chunk, offset + len(chunk)

    async def fetch(self, handle: Mapping[str, Any], name: str, dest: Path) -> bool:
        if not jobfiles.is_job(handle):
            return False
        return await asyncio.to_thread(self.api.download, str(handle["job_volume_id"]),
                                       jobfiles.volume_path(name), dest)

    async def release(self, handle: Mapping[str, Any]) -> None:
        """After the job's output was fetched: delete its pod and its volume (`keep_volume`
        keeps the volume; `delete_ended: false` keeps both, for debugging)."""
        if jobfiles.is_job(handle) and handle.get("pod_id"):
            await asyncio.to_thread(self._release, handle)

    def _release(self, handle: Mapping[str, Any]) -> None:
        pod_id, volume_id = str(handle["pod_id"]), str(handle["job_volume_id"])
        if not self.settings.delete_ended:
            log.info("job pod %s and volume %s kept (delete_ended: false)", pod_id, volume_id)
            return
        with contextlib.suppress(HpcserveError):  # logs are nice to have; the delete is not
            self._keep_logs(pod_id, self.api.pod_logs(pod_id))
        with contextlib.suppress(TapisNotFound):
            self.api.delete_pod(pod_id)
        self._remember(pod_id, self._ended.get(pod_id) or TargetStatus(
            Phase.STOPPED, reason=f"pod {pod_id} was deleted after its job ended"))
        if handle.get("keep_volume") or self.settings.keep_volume:
            log.info("job volume %s kept (keep_volume)", volume_id)
            return
        if not self._delete_volume(volume_id, deadline=time.monotonic() + 10):
            raise HpcserveError(f"the job's volume {volume_id} could not be deleted",
                                hint="delete it in the Tapis UI or API")

    # ------------------------------------------------------------------ logs

    async def read_logs(self, handle: Mapping[str, Any], offset: int = 0) -> tuple[str, int]:
        pod_id = handle.get("pod_id")
        if not pod_id:
            return "", offset
        try:
            text = await asyncio.to_thread(self.api.pod_logs, str(pod_id))
        except TapisNotFound:
            text = self._final_logs.get(str(pod_id), "")
        data = text.encode("utf-8", "replace")
        if len(data) < offset:  # a restarted pod starts its logs afresh
            offset = 0
        return data[offset:].decode("utf-8", "replace"), len(data)

    async def close(self) -> None:
        self.api.close()

    def describe(self) -> dict[str, Any]:
        s = self.settings
        return {**super().describe(), "base_url": s.base_url, "tenant_id": s.tenant_id,
                "image": s.image, "gpus": []}
