"""A local stand-in for the Tapis Pods, Jobs, Apps, Systems, Files and token APIs.

It is a real HTTP server (stdlib ``ThreadingHTTPServer``) on 127.0.0.1 that answers the routes
the *real* ``tapipy`` client (25.4.0) builds from its bundled OpenAPI specs, with the Tapis
response envelope.  It actually RUNS pods as local processes, and, given an execution system
(``StandIn(exec_system=ExecSystem.from_testcluster(env))``), runs Tapis jobs for real on that
system's SLURM over SSH: see :mod:`.jobs_api` (Jobs), :mod:`.job_request` (submit
validation), :mod:`.apps_api` (Apps, Systems), :mod:`.files_api` (Files) and
:mod:`.slurm_exec` (SSH, tapisjob.sh / tapisjob.env).

Usage from Python (pytest fixture, see ``conftest.py``)::

    standin = StandIn()
    base_url = standin.start()          # e.g. http://127.0.0.1:43121
    t = Tapis(base_url=base_url, tenant_id="tacc", username="u", password="p")
    t.get_tokens()
    ...
    standin.stop()

Manual use::

    python -m tests.tapis_standin.server --port 5050

Facts it follows (checked against tapipy 25.4.0 and the pods_service sources):

* Every route is declared once in :data:`ROUTES`; the contract test checks each one against
  the bundled ``openapi_v3-*.yml`` files.  The pods and jobs spec paths have no ``/v3``
  prefix; tapipy adds it, so ``/pods/{pod_id}`` is served at ``/v3/pods/{pod_id}``.  The apps,
  systems and files spec paths carry ``/v3`` already.
* Responses carry ``Content-Type: application/json`` exactly (tapipy compares the whole header
  value and hands back raw bytes for anything else, ``; charset=utf-8`` included).
* Pod states: ``REQUESTED`` -> ``SPAWNER SETUP`` -> ``CREATING`` -> ``AVAILABLE``; stop goes
  through ``DELETING`` to ``STOPPED``; a process that exits gives ``COMPLETE`` (exit code 0)
  or ``ERROR``.  There is no ``RUNNING`` state.
* Validation errors answer 400 with ``message`` as a LIST of ``"<loc>: <msg>"`` strings (the
  live service's error handler does that for pydantic errors).
* ``delete_pod`` / ``delete_volume`` return ``result: ""``.
* Volume files: ``upload_to_volume`` takes a multipart body with one ``file`` part and
  ``get_volume_contents`` answers the raw bytes (``application/octet-stream``, or
  ``application/zip`` for a directory with ``zip=true``), streamed from disk.  Their ``{path}``
  is FastAPI's ``{path:path}`` live (slashes allowed, e.g. ``job/input.jsonl``), and tapipy puts
  the value into the URL as it is.  A missing file answers 404 (a choice of the stand-in).
* ``start_pod`` on a pod that is not STOPPED raises ``RuntimeError`` in the live service, whose
  error handler turns it into HTTP 500 "Unexpected. RuntimeError(...)"; the stand-in does too.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import datetime as dt
import email.parser
import email.policy
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .common import JAVA_SPECS, SPEC_VERSIONS, ApiError, FileReply, Request, StreamReply

__all__ = [
    "NETWORKING_DEFAULTS",
    "POD_STATES",
    "RESOURCES_DEFAULTS",
    "ROUTES",
    "CallRecord",
    "LaunchRequest",
    "LaunchSpec",
    "PodRecord",
    "Route",
    "StandIn",
    "default_runner",
]

# --------------------------------------------------------------------------------------------
# constants

#: ``info.version`` of tapipy's bundled openapi_v3-pods.yml; used as the envelope "version".
PODS_VERSION = "1.9.0"
AUTH_VERSION = "dev"
JSON_CT = "application/json"

REQUESTED = "REQUESTED"
SPAWNER_SETUP = "SPAWNER SETUP"
CREATING = "CREATING"
AVAILABLE = "AVAILABLE"
DELETING = "DELETING"
STOPPED = "STOPPED"
ERROR = "ERROR"
COMPLETE = "COMPLETE"
POD_STATES = (REQUESTED, SPAWNER_SETUP, CREATING, AVAILABLE, DELETING, STOPPED, ERROR, COMPLETE)

ON, OFF, RESTART = "ON", "OFF", "RESTART"

#: Same list as the live ``Pod.check_pod_id`` validator (a superset of volumes/snapshots/admin).
RESERVED_POD_IDS = (
    "catalog", "snapshots", "volumes", "admin", "catalogs", "snapshot", "volume",
    "image", "images", "template", "templates",
)
VOLUME_MOUNT_TYPES = ("tapisvolume", "tapissnapshot", "ephemeral", "pvc")

#: Defaults of ``models_pods__Networking`` in the bundled spec (``url`` is filled in per pod).
NETWORKING_DEFAULTS: dict[str, Any] = {
    "protocol": "http",
    "port": 5000,
    "url": "",
    "ip_allow_list": [],
    "tapis_auth": False,
    "tapis_auth_response_headers": {},
    "tapis_auth_allowed_users": ["*"],
    "tapis_auth_return_path": "/",
    "cors_allow_origins": [],
    "cors_allow_methods": [],
    "cors_allow_headers": [],
    "cors_allow_credentials": False,
    "cors_max_age": 100,
    "tapis_ui_uri": "",
    "tapis_ui_uri_redirect": False,
    "tapis_ui_uri_description": "",
}
#: Defaults of ``models_pods__Resources`` in the bundled spec.
RESOURCES_DEFAULTS: dict[str, int] = {
    "cpu_request": 250,
    "cpu_limit": 2000,
    "mem_request": 256,
    "mem_limit": 3072,
    "gpus": 0,
}
NEW_POD_FIELDS = (
    "pod_id", "image", "template", "description", "command", "arguments",
    "environment_variables", "status_requested", "volume_mounts", "time_to_stop_default",
    "time_to_stop_instance", "networking", "resources", "compute_queue",
)
UPDATE_POD_FIELDS = (
    "description", "command", "environment_variables", "status_requested", "volume_mounts",
    "time_to_stop_default", "time_to_stop_instance", "networking", "resources",
)
POD_DISPLAY_FIELDS = (
    *NEW_POD_FIELDS, "time_to_stop_ts", "status", "status_container", "creation_ts",
    "update_ts", "start_instance_ts",
)

# --------------------------------------------------------------------------------------------
# route table


@dataclass(frozen=True)
class Route:
    """One served route.  ``template`` is the path as tapipy requests it (with ``/v3``)."""

    method: str
    template: str
    spec: str | None  # "pods" | "jobs" | "apps" | "systems" | "files" | "authenticator" |
    #                   "tenants" | None (stand-in only)
    operation_id: str
    auth: bool = True
    success_status: int = 200

    @property
    def spec_path(self) -> str | None:
        """The path as written in the bundled spec (pods and jobs spec paths carry no /v3)."""
        if self.spec is None:
            return None
        if self.spec in ("pods", "jobs"):
            return self.template.removeprefix("/v3")
        return self.template

    @property
    def regex(self) -> re.Pattern[str]:
        # `{path}` is a FastAPI `{path:path}` in the live service: it may hold slashes; so do
        # the Files `{path}` and the Jobs `{outputPath}` (tapipy puts the value in as it is)
        pattern = re.sub(r"\\{(\w+)\\}", lambda m: f"(?P<{m[1]}>" + (
            ".+)" if m[1] in ("path", "outputPath") else "[^/]+)"), re.escape(self.template))
        return re.compile(f"^{pattern}$")

    @property
    def n_params(self) -> int:
        return self.template.count("{")


#: Every route the stand-in serves.  The contract test enumerates this table.
ROUTES: tuple[Route, ...] = (
    # token API (authenticator spec); create_token answers 201 as the spec says
    Route("POST", "/v3/oauth2/tokens", "authenticator", "create_token", auth=False,
          success_status=201),
    # tenants API: only used by tapipy when no tenant_id is given or to validate refresh tokens
    Route("GET", "/v3/sites", "tenants", "list_sites", auth=False),
    Route("GET", "/v3/tenants", "tenants", "list_tenants", auth=False),
    Route("GET", "/v3/tenants/{tenant_id}", "tenants", "get_tenant", auth=False),
    # pods API
    Route("GET", "/v3/healthcheck", "pods", "healthcheck", auth=False),
    Route("GET", "/v3/pods", "pods", "list_pods"),
    Route("POST", "/v3/pods", "pods", "create_pod"),
    Route("GET", "/v3/pods/volumes", "pods", "list_volumes"),
    Route("POST", "/v3/pods/volumes", "pods", "create_volume"),
    Route("GET", "/v3/pods/volumes/{volume_id}", "pods", "get_volume"),
    Route("PUT", "/v3/pods/volumes/{volume_id}", "pods", "update_volume"),
    Route("DELETE", "/v3/pods/volumes/{volume_id}", "pods", "delete_volume"),
    Route("GET", "/v3/pods/volumes/{volume_id}/list", "pods", "list_volume_files"),
    Route("GET", "/v3/pods/volumes/{volume_id}/contents/{path}", "pods", "get_volume_contents"),
    Route("POST", "/v3/pods/volumes/{volume_id}/upload/{path}", "pods", "upload_to_volume"),
    Route("GET", "/v3/pods/{pod_id}", "pods", "get_pod"),
    Route("PUT", "/v3/pods/{pod_id}", "pods", "update_pod"),
    Route("DELETE", "/v3/pods/{pod_id}", "pods", "delete_pod"),
    Route("GET", "/v3/pods/{pod_id}/start", "pods", "start_pod"),
    Route("GET", "/v3/pods/{pod_id}/stop", "pods", "stop_pod"),
    Route("GET", "/v3/pods/{pod_id}/restart", "pods", "restart_pod"),
    Route("GET", "/v3/pods/{pod_id}/logs", "pods", "get_pod_logs"),
    Route("GET", "/v3/pods/{pod_id}/credentials", "pods", "get_pod_credentials"),
    # jobs API (spec paths without /v3, like pods)
    Route("POST", "/v3/jobs/submit", "jobs", "submitJob"),
    Route("GET", "/v3/jobs/list", "jobs", "getJobList"),
    Route("GET", "/v3/jobs/search", "jobs", "getJobSearchList"),
    Route("GET", "/v3/jobs/{jobUuid}", "jobs", "getJob"),
    Route("GET", "/v3/jobs/{jobUuid}/status", "jobs", "getJobStatus"),
    Route("GET", "/v3/jobs/{jobUuid}/history", "jobs", "getJobHistory"),
    Route("POST", "/v3/jobs/{jobUuid}/cancel", "jobs", "cancelJob"),
    Route("GET", "/v3/jobs/{jobUuid}/output/list/{outputPath}", "jobs", "getJobOutputList"),
    Route("GET", "/v3/jobs/{jobUuid}/output/download/{outputPath}", "jobs",
          "getJobOutputDownload"),
    # apps API (spec paths carry /v3)
    Route("POST", "/v3/apps", "apps", "createAppVersion", success_status=201),
    Route("GET", "/v3/apps", "apps", "getApps"),
    Route("GET", "/v3/apps/{appId}", "apps", "getAppLatestVersion"),
    Route("GET", "/v3/apps/{appId}/{appVersion}", "apps", "getApp"),
    Route("PUT", "/v3/apps/{appId}/{appVersion}", "apps", "putApp"),
    Route("POST", "/v3/apps/{appId}/delete", "apps", "deleteApp"),
    # systems API
    Route("GET", "/v3/systems", "systems", "getSystems"),
    Route("GET", "/v3/systems/{systemId}", "systems", "getSystem"),
    # files API (what a client of Jobs needs)
    Route("GET", "/v3/files/ops/{systemId}/{path}", "files", "listFiles"),
    Route("POST", "/v3/files/ops/{systemId}/{path}", "files", "insert"),
    Route("DELETE", "/v3/files/ops/{systemId}/{path}", "files", "delete"),
    Route("POST", "/v3/files/ops/{systemId}", "files", "mkdir"),
    Route("GET", "/v3/files/content/{systemId}/{path}", "files", "getContents"),
    Route("GET", "/v3/files/utils/linux/{systemId}/{path}", "files", "getStatInfo"),
    Route("POST", "/v3/files/utils/linux/{systemId}/{path}", "files", "runLinuxNativeOp"),
    # stand-in only (NOT part of any Tapis spec): where each pod's process really listens
    Route("GET", "/standin/pods", None, "standin_list_endpoints", auth=False),
    Route("GET", "/standin/pods/{pod_id}", None, "standin_get_endpoint", auth=False),
)

# --------------------------------------------------------------------------------------------
# helpers


def _now_iso() -> str:
    # the live service stores naive UTC datetimes; pydantic serialises them without offset
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def _dir_size_mb(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total // (1024 * 1024)


def _validation_error(*messages: str) -> ApiError:
    """400 with a LIST message, like the live error handler does for pydantic errors."""
    return ApiError(400, list(messages))


# --------------------------------------------------------------------------------------------
# pods, volumes, launching


@dataclass
class LaunchRequest:
    """What a runner gets when a pod reaches CREATING."""

    pod_id: str
    image: str
    command: list[str] | None
    arguments: list[str] | None
    environment_variables: dict[str, str]
    port: int  # local port for the first/"default" networking stanza
    ports: dict[str, int]  # networking name -> local port
    pod_ports: dict[str, int]  # networking name -> port the pod declared (e.g. 5000, 8000)
    mounts: dict[str, str]  # mount_path -> local directory
    workdir: str  # a per-pod scratch directory
    images: Mapping[str, Any]
    rewrite_mount_paths: bool = True
    rewrite_port_args: bool = True


@dataclass
class LaunchSpec:
    """What a runner returns: the argv to execute (plus extra env / cwd)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


Runner = Callable[[LaunchRequest], "LaunchSpec | Sequence[str]"]


def _substitute(arg: str, req: LaunchRequest) -> str:
    out = arg.replace("{port}", str(req.port))
    for name, port in req.ports.items():
        out = out.replace("{port:" + name + "}", str(port))
    if req.rewrite_mount_paths:
        # longest mount path first so /app/models/x wins over /app
        for mount_path in sorted(req.mounts, key=len, reverse=True):
            local = req.mounts[mount_path]
            mp = mount_path.rstrip("/") or "/"
            if out == mp or out.startswith(mp + "/"):
                out = local + out[len(mp):]
                break
            if "=" in out:
                key, _, val = out.partition("=")
                if val == mp or val.startswith(mp + "/"):
                    out = f"{key}={local}{val[len(mp):]}"
                    break
    return out


def default_runner(req: LaunchRequest) -> LaunchSpec:
    """Kubernetes-like argv: ``command`` replaces the image ENTRYPOINT, ``arguments`` its CMD.

    ``images`` (the config mapping given to :class:`StandIn`) supplies what a container image
    would: either a list (the entrypoint) or ``{"command": [...], "args": [...]}``.  In every
    argv element ``{port}`` becomes the local port (``{port:<net name>}`` for other networking
    stanzas), paths under a mount path are rewritten to the volume's local directory, and
    ``--port N`` / ``--port=N`` with N the pod's declared port become the local port.
    """
    image_cfg = req.images.get(req.image) or req.images.get(req.image.split(":")[0])
    if isinstance(image_cfg, Mapping):
        entry = list(image_cfg.get("command") or [])
        default_args = list(image_cfg.get("args") or [])
    elif image_cfg:
        entry, default_args = list(image_cfg), []
    else:
        entry, default_args = [], []
    if req.command:
        argv = list(req.command) + list(req.arguments or [])
    else:
        argv = entry + (list(req.arguments) if req.arguments else default_args)
    if not argv:
        raise ValueError(
            f"stand-in: pod has no command and image {req.image!r} is not configured; pass "
            f"StandIn(images={{{req.image!r}: [...]}}) or give the pod a command"
        )
    argv = [_substitute(a, req) for a in argv]
    if req.rewrite_port_args:
        declared = {str(p) for p in req.pod_ports.values()}
        for i, a in enumerate(argv):
            if a in ("--port", "-p") and i + 1 < len(argv) and argv[i + 1] in declared:
                argv[i + 1] = str(req.port)
            elif a.startswith("--port=") and a.split("=", 1)[1] in declared:
                argv[i] = f"--port={req.port}"
    return LaunchSpec(argv=argv)


@dataclass
class VolumeRecord:
    volume_id: str
    description: str
    size_limit: int
    path: Path
    status: str = AVAILABLE
    creation_ts: str = field(default_factory=_now_iso)
    update_ts: str = field(default_factory=_now_iso)
    raw_body: dict[str, Any] = field(default_factory=dict)

    def display(self) -> dict[str, Any]:
        return {
            "volume_id": self.volume_id,
            "description": self.description,
            "size_limit": self.size_limit,
            "size": _dir_size_mb(self.path) if self.path.exists() else 0,
            "status": self.status,
            "creation_ts": self.creation_ts,
            "update_ts": self.update_ts,
        }


@dataclass
class PodRecord:
    """A pod.  ``fields`` holds exactly what the API shows; the rest is stand-in bookkeeping."""

    fields: dict[str, Any]
    raw_body: dict[str, Any]  # the create_pod JSON body exactly as it arrived from the client
    volume_mounts_shape: str  # "none" | "spec" (keyed by volume name) | "live" (by mount path)
    mounts: dict[str, str]  # mount_path -> local dir
    owner: str
    user_password: str
    workdir: Path
    history: list[tuple[float, str]] = field(default_factory=list)
    update_bodies: list[dict[str, Any]] = field(default_factory=list)  # update_pod bodies
    action_logs: list[str] = field(default_factory=list)
    extra_logs: str = ""
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    pids: list[int] = field(default_factory=list)  # every process group leader ever started
    launch: LaunchSpec | None = None
    local_port: int | None = None
    local_ports: dict[str, int] = field(default_factory=dict)
    phase_started: float = field(default_factory=time.monotonic)
    term_sent_at: float | None = None
    started_wall: float | None = None
    instance: int = 0
    deleted: bool = False

    @property
    def pod_id(self) -> str:
        return self.fields["pod_id"]

    @property
    def status(self) -> str:
        return self.fields["status"]

    @property
    def statuses(self) -> list[str]:
        return [s for _, s in self.history]

    def logs(self) -> str:
        text = ""
        if self.log_path is not None and self.log_path.exists():
            text = self.log_path.read_text(errors="replace")
        return text + self.extra_logs

    def display(self) -> dict[str, Any]:
        return json.loads(json.dumps({k: self.fields[k] for k in POD_DISPLAY_FIELDS}))


@dataclass
class CallRecord:
    method: str
    path: str
    operation_id: str | None
    status: int
    body: Any
    headers: dict[str, str]
    at: float


@dataclass
class _Fault:
    operation_id: str | None  # None: every Tapis route
    kind: str  # "fail" | "delay"
    remaining: int | None  # None: forever
    status: int = 500
    message: Any = None
    seconds: float = 0.0
    after: int = 0  # calls let through before it applies


_DEFAULT_FAULT_MESSAGES: dict[int, Any] = {
    400: ["stand-in: injected validation error"],
    401: "Invalid Tapis token: injected by the stand-in",
    403: "Not authorized -- injected by the stand-in",
    404: "Not found -- injected by the stand-in",
    500: "Unexpected. RuntimeError('injected by the stand-in') debug: no errors() method",
    503: "Service unavailable -- injected by the stand-in",
}


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "TapisStandIn/0.1"

    def _dispatch(self) -> None:
        self.server.standin._dispatch(self)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.standin.verbose:  # type: ignore[attr-defined]
            sys.stderr.write("standin: " + (format % args) + "\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], standin: StandIn):
        self.standin = standin
        super().__init__(addr, _Handler)


_Request = Request


# --------------------------------------------------------------------------------------------
# the stand-in


class StandIn:
    """The stand-in server.  See the module docstring.

    Parameters (all keyword-only):
        host, port: where to listen (port 0 = a free port).
        tenant_id, site_id: the tenant the tokens and the tenants API talk about.
        tenant_host: host part of the tenant's public base URL; pod ``networking.*.url`` is
            ``<pod_id>.pods.<tenant_host>`` (no scheme) as in the live service.
        users: ``{username: password}``; None accepts any non-empty pair.
        clients: ``{client_id: client_key}`` accepted for Basic auth; None accepts any.
        token_ttl, refresh_ttl: lifetime (s) of access / refresh tokens.
        runner: callable ``LaunchRequest -> LaunchSpec | argv`` used at CREATING
            (default :func:`default_runner`).
        images: config mapping image name -> entrypoint list or {"command", "args"}.
        phase_seconds: minimum time spent in REQUESTED, SPAWNER SETUP, CREATING and DELETING.
        tick_seconds: period of the background "health" loop.
        stop_grace_seconds: SIGTERM -> SIGKILL grace when stopping a process group.
        startup_timeout: None (stay CREATING like the live service) or seconds -> ERROR.
        workdir: where volumes, pod logs and scratch dirs live (default: a temp dir).
        exec_system: an :class:`.slurm_exec.ExecSystem` (e.g.
            ``ExecSystem.from_testcluster(env)``): the Systems/Files/Jobs routes act on it over
            SSH and run jobs on its SLURM.  None: those routes know no system.
        job_poll_seconds: period of the batched ``squeue`` poll of QUEUED/RUNNING jobs.
        allowed_images: None (any image) or an allow-list, like the live image allow-list.
    """

    endpoint_template = "http://127.0.0.1:{port}"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tenant_id: str = "tacc",
        site_id: str = "tacc",
        tenant_host: str = "tacc.tapis.io",
        users: Mapping[str, str] | None = None,
        clients: Mapping[str, str] | None = None,
        token_ttl: int = 14400,
        refresh_ttl: int = 86400,
        runner: Runner | None = None,
        images: Mapping[str, Any] | None = None,
        phase_seconds: float = 0.25,
        tick_seconds: float = 0.05,
        stop_grace_seconds: float = 5.0,
        startup_timeout: float | None = None,
        workdir: str | os.PathLike[str] | None = None,
        allowed_images: Sequence[str] | None = None,
        rewrite_mount_paths: bool = True,
        rewrite_port_args: bool = True,
        verbose: bool = False,
        exec_system: Any = None,
        job_poll_seconds: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self.tenant_id = tenant_id
        self.site_id = site_id
        self.tenant_host = tenant_host
        self.users = dict(users) if users is not None else None
        self.clients = dict(clients) if clients is not None else None
        self.token_ttl = token_ttl
        self.refresh_ttl = refresh_ttl
        self.runner: Runner = runner or default_runner
        self.images: dict[str, Any] = dict(images or {})
        self.phase_seconds = phase_seconds
        self.tick_seconds = tick_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.startup_timeout = startup_timeout
        self.allowed_images = list(allowed_images) if allowed_images is not None else None
        self.rewrite_mount_paths = rewrite_mount_paths
        self.rewrite_port_args = rewrite_port_args
        self.verbose = verbose

        self._owns_workdir = workdir is None
        self._workdir_arg = workdir
        self.workdir: Path | None = None

        self.pods: dict[str, PodRecord] = {}
        self.volumes: dict[str, VolumeRecord] = {}
        self.calls: list[CallRecord] = []
        self.token_requests: list[dict[str, Any]] = []

        self._secret = secrets.token_bytes(32)
        self._issued_jtis: set[str] = set()
        self._revoked_jtis: set[str] = set()
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._stop_evt = threading.Event()
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self.base_url: str | None = None
        self._down = False

        # Jobs, Apps, Systems and Files APIs (imported here: they import .common, not .server)
        from .apps_api import AppsSystemsService
        from .files_api import FilesService
        from .jobs_api import JobsService

        self.apps = AppsSystemsService(self, exec_system)
        self.files = FilesService(self)
        self.jobs = JobsService(self, poll_seconds=job_poll_seconds)
        self._services = (self.jobs, self.apps, self.files)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Start serving; returns the base URL (``http://127.0.0.1:<port>``)."""
        if self._server is not None:
            raise RuntimeError("stand-in already started")
        if self._workdir_arg is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tapis-standin-"))
        else:
            self.workdir = Path(self._workdir_arg)
            self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "volumes").mkdir(exist_ok=True)
        (self.workdir / "pods").mkdir(exist_ok=True)
        self._stop_evt.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self.base_url = f"http://{self.host}:{self.port}"
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name="standin-http", daemon=True)
        health = threading.Thread(target=self._health_loop, name="standin-health", daemon=True)
        self._threads = [serve, health]
        for th in self._threads:
            th.start()
        atexit.register(self._kill_all_processes)
        return self.base_url

    def stop(self) -> None:
        """Stop serving, terminate every pod process group, remove an owned workdir."""
        self._stop_evt.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for th in self._threads:
            th.join(timeout=5)
        self._threads = []
        self._server = None
        self._kill_all_processes()
        self.jobs.shutdown()
        self.apps.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self._kill_all_processes)
        if self._owns_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> StandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- Python-side API

    def local_url(self, pod_id: str) -> str | None:
        """``http://127.0.0.1:<port>`` where the pod's process listens, or None if not running."""
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or pod.local_port is None:
                return None
            return self.endpoint_template.format(port=pod.local_port)

    @property
    def endpoints(self) -> dict[str, str | None]:
        """pod_id -> local URL (None while the pod has no running process)."""
        with self._lock:
            return {pid: self.local_url(pid) for pid in self.pods}

    def issue_token(self, username: str = "testuser", ttl: int | None = None, *,
                    secret: bytes | None = None, token_type: str = "access") -> str:
        """Mint a JWT the way the token endpoint does (``secret`` other than ours = invalid)."""
        now = int(time.time())
        ttl = self.token_ttl if ttl is None else ttl
        claims = {
            "jti": str(uuid.uuid4()),
            "iss": f"https://{self.tenant_host}/v3/tokens",
            "sub": f"{username}@{self.tenant_id}",
            "tapis/tenant_id": self.tenant_id,
            "tapis/token_type": token_type,
            "tapis/delegation": False,
            "tapis/delegation_sub": None,
            "tapis/username": username,
            "tapis/account_type": "user",
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
        }
        with self._lock:
            self._issued_jtis.add(claims["jti"])
        header = {"typ": "JWT", "alg": "HS256"}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = hmac.new(secret or self._secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64url(sig)

    def revoke_tokens(self) -> None:
        """Make every token issued so far invalid (the next call with one answers 401)."""
        with self._lock:
            self._revoked_jtis |= self._issued_jtis

    def fail_next(self, operation_id: str | None, status: int = 500, times: int | None = 1,
                  message: Any = None, after: int = 0) -> None:
        """Answer the next ``times`` calls of ``operation_id`` (None: any) with ``status``,
        once ``after`` calls have been answered normally (a transfer cut part way)."""
        with self._lock:
            self._faults.append(_Fault(operation_id, "fail", times, status=status,
                                       message=message, after=after))

    def delay(self, seconds: float, operation_id: str | None = None,
              times: int | None = None) -> None:
        """Hold responses of ``operation_id`` (None: any) for ``seconds`` before answering."""
        with self._lock:
            self._faults.append(_Fault(operation_id, "delay", times, seconds=seconds))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def delete_pod_behind_back(self, pod_id: str) -> None:
        """Remove a pod (and kill its processes) without any API call."""
        with self._lock:
            pod = self.pods.pop(pod_id)
            pod.deleted = True
        self._terminate(pod, wait=True)

    def force_error(self, pod_id: str, log_text: str = "", exit_process: bool = True) -> None:
        """Put a pod into ERROR (killing its process) and append ``log_text`` to its logs."""
        with self._lock:
            pod = self.pods[pod_id]
            # status first, so a concurrent health tick sees the change and backs off
            if log_text:
                pod.extra_logs += log_text if log_text.endswith("\n") else log_text + "\n"
            pod.fields["status_container"] = {"phase": "Failed", "message": log_text}
            self._set_status(pod, ERROR)
            pod.local_port, pod.local_ports = None, {}
        if exit_process:
            self._terminate(pod, wait=True)

    def set_down(self, down: bool = True) -> None:
        """Down: every request is answered by closing the connection (API unreachable)."""
        self._down = down

    def calls_per_operation(self) -> dict[str | None, int]:
        """operation_id -> number of calls received so far."""
        with self._lock:
            counts: dict[str | None, int] = {}
            for c in self.calls:
                counts[c.operation_id] = counts.get(c.operation_id, 0) + 1
            return counts

    def calls_to(self, operation_id: str) -> list[CallRecord]:
        with self._lock:
            return [c for c in self.calls if c.operation_id == operation_id]

    # ---------------------------------------------------------------- dispatch

    def _match(self, method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
        """(route, params, path_known)."""
        candidates = []
        for route in ROUTES:
            m = route.regex.match(path)
            if m:
                candidates.append((route, {k: unquote(v) for k, v in m.groupdict().items()}))
        if not candidates:
            return None, {}, False
        same_method = [c for c in candidates if c[0].method == method]
        if not same_method:
            return None, {}, True
        route, params = min(same_method, key=lambda c: c[0].n_params)
        return route, params, True

    def _dispatch(self, h: BaseHTTPRequestHandler) -> None:
        method = h.command.upper()
        if self._down:  # unreachable: no answer at all
            h.close_connection = True
            return
        split = urlsplit(h.path)
        path = split.path
        query = parse_qs(split.query)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        route, params, known = self._match(method, path)
        headers = {k: v for k, v in h.headers.items()}

        status, payload = 500, None
        try:
            if route is None:
                if known:
                    raise ApiError(405, "Invalid request: the API endpoint does not exist or "
                                        "the provided HTTP method is not allowed.")
                raise ApiError(404, f"Not Found: {path}")
            if not route.template.startswith("/standin"):
                self._apply_faults(route.operation_id)
            body = self._parse_body(route, h.headers.get("Content-Type", ""), raw)
            claims = self._authenticate(h.headers.get("X-Tapis-Token")) if route.auth else None
            req = _Request(method, path, params, query, headers, raw, body, claims)
            status, payload = self._handler(route)(req)
            if status is None:
                status = route.success_status
        except ApiError as e:
            status = e.status
            payload = self._envelope(e.result, e.message, status=e.envelope_status,
                                     version=self._version_for(route))
        except Exception as e:  # a bug in the stand-in: answer like the live catch-all
            status = 500
            payload = self._envelope(None, f"Unexpected. {e!r} debug: no errors() method",
                                     status="error", version=self._version_for(route))
        recorded = (f"<multipart body, {len(raw)} bytes>" if "multipart/form-data" in
                    h.headers.get("Content-Type", "") else self._safe_json(raw))
        with self._lock:
            self.calls.append(CallRecord(method, path, route.operation_id if route else None,
                                         status, recorded, headers, time.time()))
        self._send(h, status, payload)

    def _handler(self, route: Route) -> Callable[[Request], Any]:
        """``_op_<operationId>`` of the stand-in itself or of the Jobs/Apps/Files services."""
        name = "_op_" + route.operation_id
        if route.spec in JAVA_SPECS:
            for service in self._services:
                if hasattr(service, name):
                    return getattr(service, name)
        return getattr(self, name)

    def _send_stream(self, h: BaseHTTPRequestHandler, status: int, reply: StreamReply) -> None:
        """Bytes produced by an iterator (remote files); no Content-Length -> close after."""
        try:
            h.send_response(status)
            h.send_header("Content-Type", reply.content_type)
            h.send_header("Content-Disposition", f"attachment; filename={reply.filename}")
            if reply.length is not None:
                h.send_header("Content-Length", str(reply.length))
            else:
                h.close_connection = True
                h.send_header("Connection", "close")
            h.end_headers()
            for chunk in reply.chunks:
                h.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            close = getattr(reply.chunks, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _safe_json(raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    @staticmethod
    def _version_for(route: Route | None) -> str:
        if route is not None and route.spec in SPEC_VERSIONS:
            return SPEC_VERSIONS[route.spec]
        if route is not None and route.spec in ("authenticator", "tenants"):
            return AUTH_VERSION
        return PODS_VERSION

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: Any) -> None:
        if isinstance(payload, StreamReply):
            self._send_stream(h, status, payload)
            return
        if isinstance(payload, FileReply):
            self._send_file(h, status, payload)
            return
        data = json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", JSON_CT)  # exactly; tapipy compares the whole value
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (e.g. its read timeout fired)

    def _send_file(self, h: BaseHTTPRequestHandler, status: int, reply: FileReply) -> None:
        """The file in 64 KiB chunks (a StreamingResponse live; Content-Length here)."""
        try:
            fh = open(reply.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:  # deleted (with its volume) since the request was checked
            self._send(h, 404, self._envelope(None, "File not found", status="error"))
            return
        try:
            with fh:
                h.send_response(status)
                h.send_header("Content-Type", reply.content_type)
                h.send_header("Content-Disposition", f"attachment; filename={reply.filename}")
                h.send_header("Content-Length", str(os.fstat(fh.fileno()).st_size))
                h.end_headers()
                while chunk := fh.read(1 << 16):
                    h.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            if reply.remove_after:
                reply.path.unlink(missing_ok=True)

    @staticmethod
    def _envelope(result: Any, message: Any, *, status: str = "success",
                  metadata: dict[str, Any] | None = None, version: str = PODS_VERSION) -> dict:
        return {"message": message, "metadata": metadata or {}, "result": result,
                "status": status, "version": version}

    def _ok(self, result: Any, message: str = "The request was successful.",
            metadata: dict[str, Any] | None = None, status: int | None = None,
            version: str = PODS_VERSION) -> tuple[int | None, dict]:
        return status, self._envelope(result, message, metadata=metadata, version=version)

    def _apply_faults(self, operation_id: str) -> None:
        delay, fail = 0.0, None
        with self._lock:
            for fault in list(self._faults):
                if fault.operation_id not in (None, operation_id):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if fault.kind == "delay":
                    delay += fault.seconds
                elif fail is None:
                    fail = fault
                else:
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
        if delay:
            self._stop_evt.wait(delay)
        if fail is not None:
            message = fail.message
            if message is None:
                message = _DEFAULT_FAULT_MESSAGES.get(fail.status,
                                                      f"stand-in injected HTTP {fail.status}")
            raise ApiError(fail.status, message)

    @staticmethod
    def _parse_body(route: Route, content_type: str, raw: bytes) -> Any:
        if not raw:
            return None
        if content_type.startswith("multipart/form-data"):
            return _parse_multipart(content_type, raw)
        if content_type.startswith("application/x-www-form-urlencoded"):
            return {k: v[-1] for k, v in parse_qs(raw.decode()).items()}
        try:
            return json.loads(raw)
        except ValueError as e:
            raise _validation_error(f"body, {e.pos}: JSON decode error") from None

    def _decode_token(self, token: str) -> dict[str, Any]:
        try:
            head_b64, claims_b64, sig_b64 = token.split(".")
            expected = hmac.new(self._secret, f"{head_b64}.{claims_b64}".encode(),
                                hashlib.sha256).digest()
            if not hmac.compare_digest(expected, _b64url_decode(sig_b64)):
                raise ValueError("bad signature")
            claims = json.loads(_b64url_decode(claims_b64))
        except Exception:
            raise ApiError(401, "Invalid Tapis token.") from None
        return claims

    def _authenticate(self, token: str | None) -> dict[str, Any]:
        if not token:
            raise ApiError(401, "No Tapis access token found in the request.")
        claims = self._decode_token(token)
        if claims.get("tapis/token_type") != "access":
            raise ApiError(401, "Invalid Tapis token: not an access token.")
        if claims.get("exp", 0) <= time.time():
            raise ApiError(401, "Invalid Tapis token: Signature has expired")
        with self._lock:
            if claims.get("jti") in self._revoked_jtis:
                raise ApiError(401, "Invalid Tapis token: token has been revoked")
        return claims

    # ---------------------------------------------------------------- token / tenants API

    def _check_basic(self, headers: Mapping[str, str]) -> str | None:
        auth = headers.get("Authorization") or headers.get("authorization")
        if not auth or not auth.startswith("Basic "):
            return None
        try:
            client_id, _, client_key = base64.b64decode(auth[6:]).decode().partition(":")
        except Exception:
            raise ApiError(401, "Invalid client credentials.") from None
        if self.clients is not None and self.clients.get(client_id) != client_key:
            raise ApiError(401, "Invalid client credentials.")
        return client_id

    def _token_result(self, username: str, with_refresh: bool) -> dict[str, Any]:
        access = self.issue_token(username)
        claims = json.loads(_b64url_decode(access.split(".")[1]))
        exp = dt.datetime.fromtimestamp(claims["exp"], dt.UTC)
        result: dict[str, Any] = {
            "access_token": {
                "access_token": access,
                "expires_at": exp.isoformat(),
                "expires_in": self.token_ttl,
                "jti": claims["jti"],
            }
        }
        if with_refresh:
            refresh = self.issue_token(username, self.refresh_ttl, token_type="refresh")
            rclaims = json.loads(_b64url_decode(refresh.split(".")[1]))
            result["refresh_token"] = {
                "refresh_token": refresh,
                "expires_at": dt.datetime.fromtimestamp(rclaims["exp"], dt.UTC).isoformat(),
                "expires_in": self.refresh_ttl,
                "jti": rclaims["jti"],
            }
        return result

    def _op_create_token(self, req: _Request):
        body = req.body if isinstance(req.body, dict) else {}
        grant = body.get("grant_type")
        client_id = self._check_basic(req.headers)
        record = {"grant_type": grant, "username": body.get("username"), "client_id": client_id,
                  "at": time.time()}
        if grant == "password":
            username, password = body.get("username"), body.get("password")
            if not username or not password:
                raise ApiError(400, "Missing required username or password.")
            ok = (self.users.get(username) == password) if self.users is not None else True
            if not ok:
                raise ApiError(401, "Invalid username/password combination.")
            # refresh tokens only come with client credentials (tapipy then validates the
            # refresh token against the tenants API)
            result = self._token_result(username, with_refresh=client_id is not None)
        elif grant == "refresh_token":
            if client_id is None:
                raise ApiError(400, "client_id and client_key are required for refresh_token.")
            token = body.get("refresh_token") or ""
            claims = self._decode_token(token)
            if claims.get("tapis/token_type") != "refresh" or claims.get("exp", 0) <= time.time():
                raise ApiError(401, "Invalid refresh token.")
            result = self._token_result(claims["tapis/username"], with_refresh=True)
        else:
            raise ApiError(400, f"Invalid grant_type: {grant!r}; stand-in supports password "
                                "and refresh_token.")
        record["jti"] = result["access_token"]["jti"]
        with self._lock:
            self.token_requests.append(record)
        return self._ok(result, "Token created successfully.", version=AUTH_VERSION)

    def _tenant(self) -> dict[str, Any]:
        base = self.base_url or ""
        return {
            "tenant_id": self.tenant_id,
            "base_url": base,  # so Tapis(base_url=...) without tenant_id can find the tenant
            "site_id": self.site_id,
            "token_service": f"{base}/v3/tokens",
            "security_kernel": f"{base}/v3/security",
            "authenticator": f"{base}/v3/oauth2",
            "owner": "standin@example.org",
            "admin_user": "admin",
            "token_gen_services": ["authenticator"],
            "public_key": "-----BEGIN PUBLIC KEY-----\nstand-in tokens are HS256 and carry "
                          "no public key\n-----END PUBLIC KEY-----",
            "description": "Tapis stand-in tenant",
            "created_by": "standin",
            "last_updated_by": "standin",
            "create_time": _now_iso(),
            "last_update_time": _now_iso(),
        }

    def _op_list_sites(self, req: _Request):
        site = {"site_id": self.site_id, "base_url": self.base_url, "primary": True,
                "services": ["authenticator", "tenants", "pods"],
                "tenant_base_url_template": f"https://${{tenant_id}}.{self.tenant_host}",
                "site_admin_tenant_id": "admin"}
        return self._ok([site], version=AUTH_VERSION)

    def _op_list_tenants(self, req: _Request):
        return self._ok([self._tenant()], version=AUTH_VERSION)

    def _op_get_tenant(self, req: _Request):
        if req.params["tenant_id"] != self.tenant_id:
            raise ApiError(404, f"Tenant {req.params['tenant_id']} not found.")
        return self._ok(self._tenant(), version=AUTH_VERSION)

    # ---------------------------------------------------------------- pods API: misc

    def _op_healthcheck(self, req: _Request):
        return self._ok("I promise I'm healthy.")

    def _op_standin_list_endpoints(self, req: _Request):
        with self._lock:
            result = {pid: self._endpoint_info(p) for pid, p in self.pods.items()}
        return self._ok(result, "stand-in: local endpoints (not a Tapis route)")

    def _op_standin_get_endpoint(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            return self._ok(self._endpoint_info(pod), "stand-in: local endpoint")

    def _endpoint_info(self, pod: PodRecord) -> dict[str, Any]:
        running = pod.local_port is not None
        return {
            "url": self.endpoint_template.format(port=pod.local_port) if running else None,
            "port": pod.local_port,
            "ports": dict(pod.local_ports) if running else {},
            "pid": pod.process.pid if pod.process is not None else None,
            "status": pod.status,
            "argv": pod.launch.argv if pod.launch is not None else None,
            "mounts": dict(pod.mounts),
        }

    # ---------------------------------------------------------------- pods API: validation

    def _validate_id(self, value: Any, kind: str) -> list[str]:
        if not isinstance(value, str):
            return [f"{kind}: Input should be a valid string"]
        if kind == "pod_id" and value in RESERVED_POD_IDS:
            return [f"pod_id: Value error, pod_id overlaps with reserved pod ids: "
                    f"{list(RESERVED_POD_IDS)}"]
        if not re.fullmatch(r"[a-z][a-z0-9]+", value):
            return [f"{kind}: Value error, {kind} must be lowercase alphanumeric. First "
                    "character must be alpha."]
        if not 3 <= len(value) <= 64:
            return [f"{kind}: Value error, {kind} length must be between 3-64 characters. "
                    f"Inputted length: {len(value)}"]
        return []

    @staticmethod
    def _check_extra(body: dict[str, Any], allowed: Sequence[str]) -> list[str]:
        return [f"body, {k}: Extra inputs are not permitted" for k in body if k not in allowed]

    def _validate_networking(self, value: Any) -> tuple[dict[str, Any], list[str]]:
        if value is None:
            value = {"default": {"protocol": "http", "port": 5000}}
        if not isinstance(value, dict):
            return {}, ["networking: Input should be a valid dictionary"]
        errors: list[str] = []
        if len(value) > 4:
            errors.append("networking: Value error, networking dictionary may only contain up "
                          "to 4 stanzas")
        out: dict[str, Any] = {}
        for name, cfg in value.items():
            if not re.fullmatch(r"[a-z0-9]+", name) or not 3 <= len(name) <= 64:
                errors.append("networking: Value error, networking key must be lowercase "
                              "alphanumeric, 3-64 characters. Default is 'default'.")
                continue
            if not isinstance(cfg, dict):
                errors.append(f"networking, {name}: Input should be a valid dictionary")
                continue
            errors += [f"networking, {name}, {k}: Extra inputs are not permitted"
                       for k in cfg if k not in NETWORKING_DEFAULTS]
            stanza = json.loads(json.dumps(NETWORKING_DEFAULTS)) | cfg
            proto = str(stanza["protocol"]).lower()
            if proto not in ("http", "tcp", "postgres", "local_only"):
                errors.append(f"networking, {name}, protocol: Value error, networking.protocol "
                              "must be one of the following: ['http', 'tcp', 'postgres', "
                              "'local_only'].")
            stanza["protocol"] = proto
            port = stanza["port"]
            if not isinstance(port, int) or not 10 <= port <= 99999:
                errors.append(f"networking, {name}, port: Value error, networking.port must "
                              f"have 2 to 5 digits. Got port: {port}")
            out[name] = stanza
        return out, errors

    def _validate_resources(self, value: Any) -> tuple[dict[str, int], list[str]]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return {}, ["resources: Input should be a valid dictionary"]
        errors = [f"resources, {k}: Extra inputs are not permitted"
                  for k in value if k not in RESOURCES_DEFAULTS]
        out = RESOURCES_DEFAULTS | {k: v for k, v in value.items() if k in RESOURCES_DEFAULTS}
        for k, v in out.items():
            if not isinstance(v, int):
                errors.append(f"resources, {k}: Input should be a valid integer")
        return out, errors

    def _normalize_volume_mounts(self, value: Any) -> tuple[dict, dict[str, str], str, list[str]]:
        """Accept both shapes; return (value to display, mounts, shape, errors).

        * bundled-spec shape (tapipy's models_pods__VolumeMount): keyed by VOLUME NAME,
          ``{"myvol": {"type": "tapisvolume", "mount_path": "/data", "sub_path": ""}}``
        * live-service / FlexServ shape: keyed by MOUNT PATH,
          ``{"/app/models": {"type": "tapisvolume", "source_id": "myvol", "sub_path": ""}}``

        The displayed value keeps the shape the client used (defaults filled in).
        """
        if value is None or value == {}:
            return {}, {}, "none", []
        if not isinstance(value, dict):
            return {}, {}, "none", ["volume_mounts: Input should be a valid dictionary"]
        errors: list[str] = []
        shapes: set[str] = set()
        display: dict[str, Any] = {}
        mounts: dict[str, str] = {}
        assert self.workdir is not None
        for key, cfg in value.items():
            where = f"volume_mounts['{key}']"
            if not isinstance(cfg, dict):
                errors.append(f"volume_mounts, {key}: Input should be a valid dictionary")
                continue
            vtype = str(cfg.get("type", "")).lower()
            if key.startswith("/"):
                shapes.add("live")
                mount_path, source_id = key, cfg.get("source_id")
                allowed = ("type", "source_id", "sub_path", "read_only", "config_content",
                           "config_permissions", "config_filename", "config_update_mode",
                           "mounted_by")
                shown = {"type": vtype, "source_id": source_id,
                         "sub_path": cfg.get("sub_path", "") or "",
                         "read_only": bool(cfg.get("read_only", vtype == "tapissnapshot")),
                         "config_permissions": cfg.get("config_permissions", "0644"),
                         "config_update_mode": cfg.get("config_update_mode", "always")}
            else:
                shapes.add("spec")
                mount_path = cfg.get("mount_path", "/tapis_volume_mount")
                source_id = key
                allowed = ("type", "mount_path", "sub_path")
                shown = {"type": vtype, "mount_path": mount_path,
                         "sub_path": cfg.get("sub_path", "") or ""}
            errors += [f"volume_mounts, {key}, {k}: Extra inputs are not permitted"
                       for k in cfg if k not in allowed]
            if vtype not in VOLUME_MOUNT_TYPES:
                errors.append(f"volume_mounts: Value error, Invalid volume mount at '{key}': "
                              f"volume_mounts type must be one of: {list(VOLUME_MOUNT_TYPES)}. "
                              f"Got: '{vtype}'")
                continue
            if vtype != "tapisvolume":
                errors.append(f"volume_mounts: Value error, {where}: type '{vtype}' is not "
                              "supported by the stand-in (only tapisvolume)")
                continue
            if not isinstance(mount_path, str) or not mount_path.startswith("/"):
                errors.append(f"volume_mounts: Value error, mount_path must be an absolute path "
                              f"starting with '/'. Got: {mount_path!r}")
                continue
            if not source_id:
                errors.append("volume_mounts: Value error, volume_mounts type 'tapisvolume' "
                              "requires source_id.")
                continue
            vol = self.volumes.get(source_id)
            if vol is None:
                errors.append(f"volume_mounts: Value error, volume_mounts['{mount_path}'] "
                              f"source_id '{source_id}' not found. No volume with this ID "
                              "exists.")
                continue
            sub = str(shown.get("sub_path") or "").strip("/")
            if ".." in Path(sub).parts:
                errors.append(f"volume_mounts: Value error, {where}: sub_path may not contain '..'")
                continue
            local = vol.path / sub if sub else vol.path
            mounts[mount_path] = str(local)
            display[key] = shown
        shape = "mixed" if len(shapes) > 1 else (shapes.pop() if shapes else "none")
        return display, mounts, shape, errors

    def _validate_pod_fields(self, body: dict[str, Any], fields: dict[str, Any]) -> list[str]:
        """Validate & copy the simple fields present in ``body`` into ``fields``."""
        errors: list[str] = []
        for key in ("image", "template", "description", "compute_queue"):
            if key in body:
                if not isinstance(body[key], str):
                    errors.append(f"{key}: Input should be a valid string")
                else:
                    fields[key] = body[key]
        for key in ("command", "arguments"):
            if key in body:
                v = body[key]
                if v is not None and (not isinstance(v, list)
                                      or not all(isinstance(x, str) for x in v)):
                    errors.append(f"{key}: Input should be a valid list of strings")
                else:
                    fields[key] = v
        if "environment_variables" in body:
            env = body["environment_variables"]
            if not isinstance(env, dict):
                errors.append("environment_variables: Input should be a valid dictionary")
            else:
                bad = [k for k, v in env.items() if not isinstance(v, str)]
                if bad:
                    errors.append("environment_variables: Value error, environment_variable "
                                  f"val must be str. Got non-str for {bad}.")
                else:
                    fields["environment_variables"] = dict(env)
        if "status_requested" in body:
            sr = body["status_requested"]
            if sr not in (ON, OFF, RESTART):
                errors.append("status_requested: Value error, status_requested must be one of "
                              "'ON', 'OFF', 'RESTART'.")
            else:
                fields["status_requested"] = sr
        for key in ("time_to_stop_default", "time_to_stop_instance"):
            if key in body:
                v = body[key]
                if v is None and key == "time_to_stop_instance":
                    fields[key] = None
                elif not isinstance(v, int) or (v != -1 and v < 300):
                    errors.append(f"{key}: Value error, Pod {key} must be -1 or be greater "
                                  "than 300 seconds.")
                else:
                    fields[key] = v
        if "description" in fields and (len(fields["description"]) > 255
                                        or not fields["description"].isascii()):
            errors.append("description: Value error, description field may only contain ASCII "
                          "characters and be less than 255 characters.")
        if "networking" in body:
            net, errs = self._validate_networking(body["networking"])
            errors += errs
            fields["networking"] = net
        if "resources" in body:
            res, errs = self._validate_resources(body["resources"])
            errors += errs
            fields["resources"] = res
        return errors

    def _set_urls(self, fields: dict[str, Any]) -> None:
        pod_id = fields["pod_id"]
        for name, stanza in fields["networking"].items():
            prefix = pod_id if name == "default" else f"{pod_id}-{name}"
            stanza["url"] = f"{prefix}.pods.{self.tenant_host}"

    # ---------------------------------------------------------------- pods API: CRUD

    def _get_pod(self, pod_id: str) -> PodRecord:
        pod = self.pods.get(pod_id)
        if pod is None:
            raise ApiError(404, f"Pod with identifier pod_id: '{pod_id}' not found")
        return pod

    def _action(self, pod: PodRecord, text: str) -> None:
        pod.action_logs.append(f"{dt.datetime.now(dt.UTC).strftime('%y/%m/%d %H:%M')}: {text}")

    def _op_list_pods(self, req: _Request):
        with self._lock:
            pods = [p.display() for p in self.pods.values()]
        return self._ok(pods, "Pods retrieved successfully.")

    def _op_get_pod(self, req: _Request):
        with self._lock:
            return self._ok(self._get_pod(req.params["pod_id"]).display(),
                            "Pod retrieved successfully.")

    def _op_create_pod(self, req: _Request):
        body = req.body
        if not isinstance(body, dict):
            raise _validation_error("body: Input should be a valid dictionary")
        errors = self._check_extra(body, NEW_POD_FIELDS)
        if "pod_id" not in body:
            errors.append("body, pod_id: Field required")
        else:
            errors += self._validate_id(body["pod_id"], "pod_id")
        now = _now_iso()
        fields: dict[str, Any] = {
            "pod_id": body.get("pod_id"), "image": "", "template": "", "description": "",
            "command": None, "arguments": None, "environment_variables": {},
            "status_requested": ON, "volume_mounts": {}, "time_to_stop_default": 43200,
            "time_to_stop_instance": None, "networking": None, "resources": None,
            "compute_queue": "default", "time_to_stop_ts": None, "status": STOPPED,
            "status_container": {}, "creation_ts": now, "update_ts": now,
            "start_instance_ts": None,
        }
        errors += self._validate_pod_fields(body, fields)
        if fields["networking"] is None:
            fields["networking"], _ = self._validate_networking(None)
        if fields["resources"] is None:
            fields["resources"] = dict(RESOURCES_DEFAULTS)
        if fields["template"]:
            errors.append(f"template: Value error, template '{fields['template']}' not found "
                          "(the stand-in has no templates).")
        elif not fields["image"]:
            errors.append(": Value error, image is required if template is not provided.")
        elif self.allowed_images is not None and \
                fields["image"].split(":")[0] not in self.allowed_images:
            errors.append(": Value error, Custom pod.image images must be in allowlist. View "
                          "available images at /pods/images or contact admin. Image derived: "
                          f"{fields['image'].split(':')[0]}")
        if fields["compute_queue"] != "default":
            errors.append("compute_queue: Value error, compute_queue must be in compute_queues "
                          "list in cluster configuration.")
        with self._lock:
            vm_display, mounts, shape, vm_errors = self._normalize_volume_mounts(
                body.get("volume_mounts"))
            errors += vm_errors
            if errors:
                raise _validation_error(*errors)
            pod_id = fields["pod_id"]
            if pod_id in self.pods:
                raise ApiError(400, f"Pod with pod_id '{pod_id}' already exists.")
            fields["volume_mounts"] = vm_display
            self._set_urls(fields)
            assert self.workdir is not None
            pod = PodRecord(
                fields=fields, raw_body=json.loads(req.raw), volume_mounts_shape=shape,
                mounts=mounts, owner=(req.claims or {}).get("tapis/username", ""),
                user_password=secrets.token_urlsafe(22)[:30],
                workdir=self.workdir / "pods" / pod_id,
            )
            pod.workdir.mkdir(parents=True, exist_ok=True)
            self._action(pod, f"Pod object created by '{pod.owner}'")
            self.pods[pod_id] = pod
            if fields["status_requested"] == ON:
                self._request_start(pod)
            else:
                pod.history.append((time.monotonic(), STOPPED))
            return self._ok(pod.display(), "Pod created successfully.")

    def _op_update_pod(self, req: _Request):
        body = req.body if isinstance(req.body, dict) else {}
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            errors = self._check_extra(body, UPDATE_POD_FIELDS)
            new_fields = json.loads(json.dumps(pod.fields))
            errors += self._validate_pod_fields(body, new_fields)
            mounts, shape = pod.mounts, pod.volume_mounts_shape
            if "volume_mounts" in body:
                vm_display, mounts, shape, vm_errors = self._normalize_volume_mounts(
                    body["volume_mounts"])
                errors += vm_errors
                new_fields["volume_mounts"] = vm_display
            if errors:
                raise _validation_error(*errors)
            self._set_urls(new_fields)
            if new_fields == pod.fields:
                # the live service answers HTTP 200 with status "error" here
                return None, self._envelope(pod.display(), "Incoming data made no changes to "
                                            "pod. Is incoming data equal to current data?",
                                            status="error")
            new_fields["update_ts"] = _now_iso()
            pod.fields = new_fields
            pod.mounts, pod.volume_mounts_shape = mounts, shape
            pod.update_bodies.append(json.loads(req.raw or b"{}"))
            self._action(pod, f"'{self._user(req)}' updated pod: {sorted(body)}")
            return self._ok(pod.display(), "Pod updated successfully.", metadata={
                "note": ["Pod will require restart when updating command, environment_variables,",
                         "status_requested, volume_mounts, networking, or resources."]})

    def _op_delete_pod(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            del self.pods[pod.pod_id]
            pod.deleted = True
        self._terminate(pod, wait=True)
        return self._ok("", "Pod successfully deleted.")

    @staticmethod
    def _user(req: _Request) -> str:
        return (req.claims or {}).get("tapis/username", "")

    def _op_start_pod(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            if pod.status != STOPPED:
                msg = ("Pod must be in 'STOPPED' status to run 'start_pod'. Please run "
                       "'stop_pod' or 'restart_pod' instead.")
                raise ApiError(500, f'Unexpected. RuntimeError("{msg}") debug: no errors() '
                                    'method')
            pod.fields["status_requested"] = ON
            self._request_start(pod)
            self._action(pod, f"'{self._user(req)}' ran start_pod, set to ON and REQUESTED")
            return self._ok(pod.display(),
                            "Updated pod's status_requested to ON and requested pod.")

    def _op_stop_pod(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            pod.fields["status_requested"] = OFF
            self._action(pod, f"'{self._user(req)}' ran stop_pod, set to OFF")
            return self._ok(pod.display(), "Updated pod's status_requested to OFF.")

    def _op_restart_pod(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            pod.fields["status_requested"] = RESTART
            self._action(pod, f"'{self._user(req)}' ran restart_pod, set to RESTART")
            return self._ok(pod.display(), "Updated pod's status_requested to RESTART.")

    def _op_get_pod_logs(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            result = {"logs": pod.logs(), "action_logs": list(pod.action_logs)}
        return self._ok(result, "Pod logs retrieved successfully.")

    def _op_get_pod_credentials(self, req: _Request):
        with self._lock:
            pod = self._get_pod(req.params["pod_id"])
            return self._ok({"user_username": pod.pod_id, "user_password": pod.user_password})

    # ---------------------------------------------------------------- volumes

    def _get_volume(self, volume_id: str) -> VolumeRecord:
        vol = self.volumes.get(volume_id)
        if vol is None:
            raise ApiError(404, f"Volume with identifier volume_id: '{volume_id}' not found")
        return vol

    def _op_list_volumes(self, req: _Request):
        with self._lock:
            vols = [v.display() for v in self.volumes.values()]
        return self._ok(vols, "Volumes retrieved successfully.")

    def _op_create_volume(self, req: _Request):
        body = req.body
        if not isinstance(body, dict):
            raise _validation_error("body: Input should be a valid dictionary")
        errors = self._check_extra(body, ("volume_id", "description", "size_limit"))
        if "volume_id" not in body:
            errors.append("body, volume_id: Field required")
        else:
            errors += self._validate_id(body["volume_id"], "volume_id")
        size_limit = body.get("size_limit", 1024)
        if not isinstance(size_limit, int) or size_limit <= 0:
            errors.append("size_limit: Value error, size_limit must be a positive integer (MB).")
        description = body.get("description", "")
        if not isinstance(description, str):
            errors.append("description: Input should be a valid string")
        if errors:
            raise _validation_error(*errors)
        with self._lock:
            vid = body["volume_id"]
            if vid in self.volumes:
                raise ApiError(400, f"Volume with volume_id '{vid}' already exists.")
            assert self.workdir is not None
            path = self.workdir / "volumes" / vid
            path.mkdir(parents=True, exist_ok=True)
            vol = VolumeRecord(volume_id=vid, description=description, size_limit=size_limit,
                               path=path, raw_body=body)
            self.volumes[vid] = vol
            return self._ok(vol.display(), "Volume created successfully.")

    def _op_get_volume(self, req: _Request):
        with self._lock:
            return self._ok(self._get_volume(req.params["volume_id"]).display(),
                            "Volume retrieved successfully.")

    def _op_update_volume(self, req: _Request):
        body = req.body if isinstance(req.body, dict) else {}
        errors = self._check_extra(body, ("description", "size_limit"))
        if errors:
            raise _validation_error(*errors)
        with self._lock:
            vol = self._get_volume(req.params["volume_id"])
            if "description" in body:
                vol.description = body["description"]
            if "size_limit" in body:
                vol.size_limit = body["size_limit"]
            vol.update_ts = _now_iso()
            return self._ok(vol.display(), "Volume updated successfully.")

    def _op_delete_volume(self, req: _Request):
        with self._lock:
            vol = self._get_volume(req.params["volume_id"])
            del self.volumes[vol.volume_id]
        shutil.rmtree(vol.path, ignore_errors=True)
        return self._ok("", "Volume successfully deleted.")

    def _op_list_volume_files(self, req: _Request):
        with self._lock:
            vol = self._get_volume(req.params["volume_id"])
        files = []
        for p in sorted(vol.path.iterdir()) if vol.path.exists() else []:
            st = p.stat()
            files.append({
                "path": str(p.relative_to(vol.path)),
                "name": p.name,
                "type": "dir" if p.is_dir() else "file",
                "size": st.st_size,
                "lastModified": dt.datetime.fromtimestamp(st.st_mtime, dt.UTC).isoformat(),
                "nativePermissions": stat.filemode(st.st_mode)[1:],
            })
        return self._ok(files, "Volume files listed successfully.")

    def _volume_path(self, vol: VolumeRecord, path: str) -> Path:
        """A path inside a volume; the live service refuses empty and `/` (a whole volume)."""
        rel = path.strip("/")
        parts = rel.split("/")
        if not rel:
            raise ApiError(400, "Requesting no path or / path is not allowed. Please download "
                                "individual directories, files or objects.")
        if ".." in parts or "\0" in rel:
            raise _validation_error(f"path: Value error, '{path}' may not contain '..'")
        return vol.path.joinpath(*[p for p in parts if p not in ("", ".")])

    def _op_upload_to_volume(self, req: _Request):
        with self._lock:
            vol = self._get_volume(req.params["volume_id"])
        target = self._volume_path(vol, req.params["path"])
        parts = req.body if isinstance(req.body, dict) else {}
        if "file" not in parts:
            raise _validation_error("body, file: Field required")
        _, data = parts["file"]
        if target.is_dir():
            raise _validation_error(f"path: '{req.params['path']}' is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.upload")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        with self._lock:
            vol.update_ts = _now_iso()
        rel = target.relative_to(vol.path).as_posix()
        return self._ok(f"{len(data)} bytes written to {rel}", "Volume file upload successful.")

    def _op_get_volume_contents(self, req: _Request):
        with self._lock:
            vol = self._get_volume(req.params["volume_id"])
        source = self._volume_path(vol, req.params["path"])
        want_zip = (req.query.get("zip") or ["false"])[-1].lower() in ("true", "1")
        if not source.exists():
            raise ApiError(404, f"File or directory '{req.params['path']}' not found in volume "
                                f"'{vol.volume_id}'")
        if source.is_dir():
            if not want_zip:
                raise ApiError(400, f"'{req.params['path']}' is a directory: request it with "
                                    "zip=true")
            assert self.workdir is not None
            fd, tmp = tempfile.mkstemp(suffix=".zip", dir=self.workdir)
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
                for p in sorted(source.rglob("*")):
                    if p.is_file():
                        zf.write(p, p.relative_to(source).as_posix())
            return 200, FileReply(Path(tmp), "application/zip", f"{source.name}.zip",
                                  remove_after=True)
        return 200, FileReply(source, "application/octet-stream", source.name)

    # ---------------------------------------------------------------- state machine

    def _set_status(self, pod: PodRecord, status: str) -> None:
        pod.fields["status"] = status
        pod.phase_started = time.monotonic()
        pod.history.append((pod.phase_started, status))

    def _request_start(self, pod: PodRecord) -> None:
        pod.extra_logs = ""  # "If a pod is restarted ... the logs will be reset."
        pod.log_path = None
        self._set_status(pod, REQUESTED)

    def _health_loop(self) -> None:
        while not self._stop_evt.wait(self.tick_seconds):
            with self._lock:
                pods = list(self.pods.values())
            for pod in pods:
                try:
                    self._advance(pod)
                except Exception as e:  # keep the loop alive; surface the problem in logs
                    with self._lock:
                        pod.extra_logs += f"stand-in health loop error: {e!r}\n"

    def _advance(self, pod: PodRecord) -> None:
        now = time.monotonic()
        with self._lock:
            if pod.deleted:
                return
            st, sr = pod.status, pod.fields["status_requested"]
            elapsed = now - pod.phase_started
            if sr in (OFF, RESTART) and st not in (STOPPED, DELETING):
                self._begin_delete(pod)
                return
            if st == DELETING:
                proc = pod.process
                if proc is not None and proc.poll() is None:
                    if pod.term_sent_at and now - pod.term_sent_at > self.stop_grace_seconds:
                        self._signal_group(proc, signal.SIGKILL)
                    return
                if elapsed >= self.phase_seconds:
                    pod.process, pod.local_port, pod.local_ports = None, None, {}
                    pod.fields["status_container"] = {}
                    self._set_status(pod, STOPPED)
                    if sr == RESTART:
                        pod.fields["status_requested"] = ON
                        self._request_start(pod)
                return
            if st == STOPPED:
                if sr == RESTART:
                    pod.fields["status_requested"] = ON
                    self._request_start(pod)
                return
            if sr != ON:
                return
            if st in (REQUESTED, SPAWNER_SETUP):
                if elapsed >= self.phase_seconds:
                    if st == REQUESTED:
                        self._set_status(pod, SPAWNER_SETUP)
                    else:
                        self._launch(pod)
                return
            if st not in (CREATING, AVAILABLE):
                return  # ERROR / COMPLETE stay until stop/delete
            proc, port = pod.process, pod.local_port
        # outside the lock: process status and TCP probe
        rc = proc.poll() if proc is not None else None
        ready = False
        if rc is None and st == CREATING and port is not None and elapsed >= self.phase_seconds:
            ready = _port_open(port)
        with self._lock:
            if pod.deleted or pod.status != st or pod.process is not proc:
                return
            if rc is not None:
                pod.fields["status_container"] = {
                    "phase": "Succeeded" if rc == 0 else "Failed", "exit_code": rc,
                    "message": f"process exited with code {rc}"}
                pod.local_port, pod.local_ports = None, {}
                self._set_status(pod, COMPLETE if rc == 0 else ERROR)
                return
            if st == CREATING:
                if ready:
                    pod.fields["status_container"] = {"phase": "Running", "message": ""}
                    self._set_status(pod, AVAILABLE)
                elif self.startup_timeout is not None and elapsed > self.startup_timeout:
                    pod.extra_logs += (f"stand-in: port {port} not accepting connections after "
                                       f"{self.startup_timeout}s\n")
                    self._terminate(pod, wait=False)
                    pod.local_port = None
                    self._set_status(pod, ERROR)
                return
            # AVAILABLE: honour time_to_stop like the live health loop
            ttl = pod.fields["time_to_stop_instance"] or pod.fields["time_to_stop_default"]
            if ttl != -1 and pod.started_wall is not None and time.time() - pod.started_wall > ttl:
                pod.fields["status_requested"] = OFF
                self._action(pod, "Pod reached time_to_stop; set to OFF")

    def _launch(self, pod: PodRecord) -> None:
        """SPAWNER SETUP -> CREATING: start the real process (lock held)."""
        pod.instance += 1
        pod.log_path = pod.workdir / f"instance-{pod.instance}.log"
        ports = {name: _free_port() for name in pod.fields["networking"]}
        first = "default" if "default" in ports else next(iter(ports))
        req = LaunchRequest(
            pod_id=pod.pod_id, image=pod.fields["image"], command=pod.fields["command"],
            arguments=pod.fields["arguments"],
            environment_variables=dict(pod.fields["environment_variables"]),
            port=ports[first], ports=ports,
            pod_ports={n: s["port"] for n, s in pod.fields["networking"].items()},
            mounts=dict(pod.mounts), workdir=str(pod.workdir), images=self.images,
            rewrite_mount_paths=self.rewrite_mount_paths,
            rewrite_port_args=self.rewrite_port_args,
        )
        for local in pod.mounts.values():
            Path(local).mkdir(parents=True, exist_ok=True)
        now = _now_iso()
        pod.fields["start_instance_ts"] = now
        ttl = pod.fields["time_to_stop_instance"] or pod.fields["time_to_stop_default"]
        pod.fields["time_to_stop_ts"] = None if ttl == -1 else (
            dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(seconds=ttl)).isoformat()
        pod.started_wall = time.time()
        self._set_status(pod, CREATING)
        try:
            spec = self.runner(req)
            if not isinstance(spec, LaunchSpec):
                spec = LaunchSpec(argv=[str(a) for a in spec])
            env = dict(os.environ)
            env.update({k: v.replace("{port}", str(req.port))
                        for k, v in req.environment_variables.items()})
            env["PORT"] = str(req.port)
            for name, port in ports.items():
                env[f"PORT_{name.upper()}"] = str(port)
            env["STANDIN_POD_ID"] = pod.pod_id
            env["STANDIN_MOUNTS"] = json.dumps(pod.mounts)
            env.update(spec.env)
            with open(pod.log_path, "wb") as logf:
                proc = subprocess.Popen(
                    spec.argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    env=env, cwd=spec.cwd or str(pod.workdir), start_new_session=True)
        except Exception as e:  # bad image/command: the pod ends in ERROR with the reason
            pod.extra_logs += f"stand-in: failed to start pod process: {e}\n"
            pod.fields["status_container"] = {"phase": "Failed", "message": str(e)}
            self._set_status(pod, ERROR)
            return
        pod.process, pod.launch = proc, spec
        pod.pids.append(proc.pid)
        pod.local_port, pod.local_ports = req.port, ports
        pod.fields["status_container"] = {"phase": "Pending", "message": ""}
        self._action(pod, f"stand-in started process pid={proc.pid} on port {req.port}")

    def _begin_delete(self, pod: PodRecord) -> None:
        self._set_status(pod, DELETING)
        self._terminate(pod, wait=False)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session=True: pgid == pid

    def _terminate(self, pod: PodRecord, wait: bool) -> None:
        proc = pod.process
        if proc is None or proc.poll() is not None:
            if proc is not None:
                self._signal_group(proc, signal.SIGKILL)  # leftover children of the group
            return
        self._signal_group(proc, signal.SIGTERM)
        pod.term_sent_at = time.monotonic()
        if wait:
            try:
                proc.wait(timeout=self.stop_grace_seconds)
            except subprocess.TimeoutExpired:
                self._signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
            self._signal_group(proc, signal.SIGKILL)

    def _kill_all_processes(self) -> None:
        with self._lock:
            pods = list(self.pods.values())
        for pod in pods:
            with contextlib.suppress(Exception):
                self._terminate(pod, wait=True)


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body -> {field name: (file name, bytes)}."""
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    if not msg.is_multipart():
        raise _validation_error("body: There was an error parsing the body")
    parts: dict[str, tuple[str | None, bytes]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str):
            payload = part.get_payload(decode=True)
            parts[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return parts


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.tapis_standin.server",
        description="Local stand-in for the Tapis Pods + token API (for tapipy).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tenant-id", default="tacc")
    parser.add_argument("--tenant-host", default="tacc.tapis.io")
    parser.add_argument("--phase-seconds", type=float, default=1.0)
    parser.add_argument("--token-ttl", type=int, default=14400)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD",
                        help="accepted user (repeatable); default: any username/password")
    parser.add_argument("--image", action="append", default=[], metavar="IMAGE=CMD",
                        help="entrypoint for an image, e.g. 'myimg=python -m http.server'")
    parser.add_argument("--testcluster", action="store_true",
                        help="serve Jobs/Files on the cluster of scripts/testcluster.sh")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    exec_system = None
    if args.testcluster:
        from .slurm_exec import ExecSystem

        script = Path(__file__).resolve().parents[2] / "scripts" / "testcluster.sh"
        out = subprocess.run(["bash", str(script), "env"], capture_output=True, text=True,
                             check=True).stdout
        import shlex

        env = {}
        for line in out.splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                key, value = words[1].split("=", 1)
                env[key] = value
        exec_system = ExecSystem.from_testcluster(env)
    users = dict(u.split(":", 1) for u in args.user) if args.user else None
    images = {i.split("=", 1)[0]: i.split("=", 1)[1].split() for i in args.image}
    standin = StandIn(host=args.host, port=args.port, tenant_id=args.tenant_id,
                      tenant_host=args.tenant_host, phase_seconds=args.phase_seconds,
                      token_ttl=args.token_ttl, workdir=args.workdir, users=users,
                      images=images, verbose=args.verbose, exec_system=exec_system)
    base_url = standin.start()
    print(f"Tapis stand-in listening on {base_url} (tenant {args.tenant_id}); Ctrl-C to stop",
          flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
