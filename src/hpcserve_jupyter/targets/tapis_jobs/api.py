"""JobsApi: each Jobs, Apps, Systems and Files operation the target uses, through tapipy.

One method = one tapipy call (blocking; the target runs them in worker threads), with the
Pods target's rules (`TapisApi`): one token refresh on 401, tapipy errors mapped to ours
(5xx and no answer = unreachable), plain-dict results. File uploads stream from disk with
tapipy's own `upload` (multipart `file` part, as the Files spec says); downloads of a job's
output stream to disk on tapipy's session.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..tapis.client import TapisApi
from ..tapis.errors import TapisNotFound
from .config import TapisJobsConfig

# The job fields a poll needs (one search call for all of a target's jobs).
POLL_FIELDS = ("uuid,name,status,lastMessage,condition,remoteJobId,remoteResultInfo,"
               "execSystemExecDir,execSystemOutputDir,tags,maxMinutes,remoteStarted")


class JobsApi(TapisApi):
    service = "Jobs"
    settings: TapisJobsConfig

    def __init__(self, settings: TapisJobsConfig) -> None:
        super().__init__(settings)

    # ------------------------------------------------------------------ systems and apps

    def get_system(self, system_id: str) -> dict[str, Any]:
        return self.call_on("systems", "getSystem", f"read system {system_id}",
                            systemId=system_id)

    def get_app(self, app_id: str, version: str) -> dict[str, Any] | None:
        try:
            return self.call_on("apps", "getApp", f"read app {app_id} {version}", appId=app_id,
                                appVersion=version)
        except TapisNotFound:
            return None

    def create_app(self, body: dict[str, Any]) -> None:
        self.call_on("apps", "createAppVersion", f"create app {body['id']} {body['version']}",
                     **body)

    def put_app(self, body: dict[str, Any]) -> None:
        fields = {k: v for k, v in body.items() if k not in ("id", "version", "owner")}
        self.call_on("apps", "putApp", f"update app {body['id']} {body['version']}",
                     appId=body["id"], appVersion=body["version"], **fields)

    # ------------------------------------------------------------------ files

    def mkdir(self, system_id: str, path: str) -> None:
        self.call_on("files", "mkdir", f"create {path} on {system_id}", systemId=system_id,
                     path=path)

    def chmod(self, system_id: str, path: str, mode: str) -> None:
        self.call_on("files", "runLinuxNativeOp", f"chmod {path} on {system_id}",
                     systemId=system_id, path=path, operation="CHMOD", argument=mode)

    def upload(self, system_id: str, local: Path, path: str) -> None:
        """The local file as `path` on the system (streamed from disk by tapipy)."""
        self.call_on("", "upload", f"upload {local.name} to {path} on {system_id}",
                     source_file_path=str(local), system_id=system_id, dest_file_path=path)

    def delete(self, system_id: str, path: str) -> None:
        with contextlib.suppress(TapisNotFound):  # already gone
            self.call_on("files", "delete", f"delete {path} on {system_id}",
                         systemId=system_id, path=path)

    # ------------------------------------------------------------------ jobs

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call_on("jobs", "submitJob", f"submit job {body.get('name')}", **body)

    def get_job(self, uuid: str) -> dict[str, Any]:
        return self.call_on("jobs", "getJob", f"read job {uuid}", jobUuid=uuid)

    def search(self, query: dict[str, str], what: str) -> list[dict[str, Any]]:
        """getJobSearchList with Tapis's query-parameter search (`uuid.in=a,b`...)."""
        found = self.call_on("jobs", "getJobSearchList", what, select=POLL_FIELDS,
                             limit=1000, orderBy="created(desc)",
                             _tapis_query_parameters=query)
        return [j for j in found if isinstance(j, dict)] if isinstance(found, list) else []

    def cancel(self, uuid: str) -> None:
        self.call_on("jobs", "cancelJob", f"cancel job {uuid}", jobUuid=uuid)

    def output(self, uuid: str, path: str) -> bytes | None:
        """A (small) file of the job's output directory, while it runs too; None if absent.
        Read as bytes whatever its content type (tapipy would parse a JSON file)."""
        with tempfile.TemporaryDirectory(prefix="hpcserve-tapis-") as tmp:
            dest = Path(tmp) / "out"
            if not self.output_to(uuid, path, dest):
                return None
            return dest.read_bytes()

    def output_to(self, uuid: str, path: str, dest: Path) -> bool:
        """A file of the job's output streamed into `dest`; False when it does not exist."""
        url = (f"{self.settings.base_url}/v3/jobs/{quote(uuid, safe='')}/output/download/"
               f"{quote(path)}?allowIfRunning=true")
        return self.stream_to(url, dest, f"fetch {path} of job {uuid}")
