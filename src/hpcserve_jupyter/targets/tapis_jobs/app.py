"""The Tapis app hpcserve submits its jobs with: bundle, definition, registration.

The app is a ZIP-runtime BATCH app whose bundle holds one script, `tapisjob_app.sh` (shipped
beside this module): it runs the command given as the job's arguments (an engine's, or a
one-off job's driver), publishes `endpoint.json` once it listens and exits with its code. The
app therefore knows no engine: each job's `appArgs` carry the backend's command line, each word
shell-quoted (request.py). The bundle is a deterministic tar.gz (same bytes for the same
script), uploaded under `storage_dir/apps/` with its digest in the name, so a changed script
is a new file and never overwrites the one running jobs unpacked.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import re
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..._version import __version__
from ...errors import BadInput
from .api import JobsApi
from .config import DEFAULT_APP_ID, TapisJobsConfig
from .request import JOB_DIR, TOOL_TAG

WRAPPER = "tapisjob_app.sh"


def wrapper_text() -> bytes:
    return resources.files(__package__).joinpath(WRAPPER).read_bytes()


def bundle() -> bytes:
    """The app's tar.gz: tapisjob_app.sh (0755), fixed times and owners, so its digest only
    changes with the script."""
    data = wrapper_text()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(WRAPPER)
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def app_version(s: TapisJobsConfig) -> str:
    """The configured version, else this package's (a Tapis version is free text)."""
    return s.app_version or __version__


@dataclass(frozen=True)
class Layout:
    """Where hpcserve keeps its files on the system: absolute paths, and the same as the
    Files API names them (relative to the system's rootDir)."""

    root: str  # the system's rootDir
    storage: str  # absolute

    def files_path(self, absolute: str) -> str:
        root = self.root.rstrip("/")
        if root and absolute != root and not absolute.startswith(root + "/"):
            raise BadInput(f"{absolute} is outside the system's root directory {self.root}",
                           hint="set storage_dir to a directory under it")
        return absolute[len(root):].lstrip("/") or "."

    def bundle_path(self, s: TapisJobsConfig, digest: str) -> str:
        return posixpath.join(self.storage, "apps",
                              f"{s.app_id}-{app_version(s)}-{digest[:12]}.tgz")


def layout(s: TapisJobsConfig, system: dict[str, Any]) -> Layout:
    root = str(system.get("rootDir") or "/")
    storage = s.storage_dir
    if storage is None:
        working = str(system.get("jobWorkingDir") or "")
        if not re.fullmatch(r"/[A-Za-z0-9_./+-]*", working) or ".." in working.split("/"):
            raise BadInput(f"system {s.system_id!r} has jobWorkingDir {working!r}, which "
                           "hpcserve cannot resolve through the Files API",
                           hint="set storage_dir: an absolute directory you own on the system, "
                           "e.g. your $WORK/hpcserve")
        if not working.startswith(root.rstrip("/") + "/") and root != "/":
            working = posixpath.join(root, working.lstrip("/"))
        storage = posixpath.join(working, "hpcserve")
    return Layout(root=root, storage=storage)


def definition(s: TapisJobsConfig, bundle_path: str, digest: str) -> dict[str, Any]:
    """The createAppVersion body (no secret can be in it: none is known here)."""
    attributes: dict[str, Any] = {
        "description": "an engine or job driver started by hpcserve-jupyter",
        "execSystemId": s.system_id,
        "execSystemExecDir": JOB_DIR,
        "execSystemInputDir": JOB_DIR,
        "execSystemOutputDir": JOB_DIR,
        "archiveOnAppError": True,
        "nodeCount": 1,
        "coresPerNode": 1,
        "memoryMB": 1024,
        "maxMinutes": 60,
        "parameterSet": {
            "appArgs": [],
            "envVariables": [{"key": "HPCSERVE_PYTHON", "value": s.python}],
            "archiveFilter": {"excludes": [WRAPPER], "includeLaunchFiles": True},
        },
        "tags": [TOOL_TAG],
    }
    if s.queue:
        attributes["execSystemLogicalQueue"] = s.queue
    if s.archive_system_id:
        attributes["archiveSystemId"] = s.archive_system_id
    return {
        "id": s.app_id,
        "version": app_version(s),
        "description": "hpcserve-jupyter: serve a model or run a one-off job (the command is "
                       "the job's arguments)",
        "runtime": "ZIP",
        "containerImage": bundle_path,
        "jobType": "BATCH",
        "strictFileInputs": False,  # a one-off job's files are its own fileInputs
        "jobAttributes": attributes,
        "tags": [TOOL_TAG],
        "notes": {"createdBy": "hpcserve-jupyter", "bundleSha256": digest},
    }


def planned(s: TapisJobsConfig, lay: Layout) -> tuple[bytes, str, dict[str, Any]]:
    data = bundle()
    digest = hashlib.sha256(data).hexdigest()
    return data, digest, definition(s, lay.bundle_path(s, digest), digest)


def register(api: JobsApi, s: TapisJobsConfig, lay: Layout, *, update: bool,
             existing: dict[str, Any] | None = None) -> str:
    """Upload the bundle and create (or, with `update`, replace) the app version; returns
    what was done. An existing version is only replaced when asked."""
    data, _, body = planned(s, lay)
    version = body["version"]
    if existing is None:
        existing = api.get_app(s.app_id, version)
    if existing is not None and not update:
        raise BadInput(f"app {s.app_id} version {version} already exists",
                       hint="--update replaces it (running jobs keep their bundle)")
    path = body["containerImage"]
    api.mkdir(s.system_id, lay.files_path(posixpath.dirname(path)))
    with tempfile.TemporaryDirectory(prefix="hpcserve-app-") as tmp:
        local = Path(tmp) / posixpath.basename(path)
        local.write_bytes(data)
        api.upload(s.system_id, local, lay.files_path(path))
    if existing is None:
        api.create_app(body)
        return f"created app {s.app_id} version {version}"
    api.put_app(body)
    return f"updated app {s.app_id} version {version}"


def ensure(api: JobsApi, s: TapisJobsConfig, lay: Layout) -> str:
    """The app version jobs are submitted with: hpcserve's own is registered (or refreshed,
    when its bundle changed) on first use; an app named in the settings must exist."""
    version = app_version(s)
    existing = api.get_app(s.app_id, version)
    if s.app_id != DEFAULT_APP_ID:
        if existing is None:
            raise BadInput(f"Tapis app {s.app_id} version {version} does not exist",
                           hint="register it (hpcserve tapis app --on TARGET registers "
                           "hpcserve's own), or fix app_id / app_version")
        return version
    _, digest, _ = planned(s, lay)
    notes = (existing or {}).get("notes") or {}
    if existing is None or notes.get("bundleSha256") != digest:
        register(api, s, lay, update=existing is not None, existing=existing)
    return version
