"""Apps and Systems routes of the stand-in (the parts a Jobs client needs).

Facts followed (tapipy's bundled openapi_v3-apps.yml / -systems.yml, Tapis docs, tapis-apps
sources AppResource / AppsDaoImpl):

* createAppVersion answers 201 with ``result: {"url": ".../v3/apps/<id>"}`` (RespResourceUrl,
  the request URL + "/" + id) and ``APPAPI_CREATED New app created. ...``; the body must have
  ``id``, ``version`` and ``containerImage``; ``runtime`` is one of SINGULARITY, DOCKER, ZIP;
  ``jobType`` BATCH or FORK; for ZIP the containerImage is an absolute path or an http(s) or
  tapis URL.  An existing id+version answers 409 (APPAPI_APP_EXISTS); a new version of a
  deleted app id answers 409 (APPAPI_CREATE_RESERVED).
* The "latest version" is the version created last (the APPS.LATEST_VERSION column, set on
  each createAppVersion); getApps lists only the latest version of each app.
* putApp replaces the fields of ReqPutApp of an existing version (404 if none).
* deleteApp is ``POST /v3/apps/{appId}/delete`` with ``result: {"changes": 1}``.
* getApps / getSystems list (summary attributes by default); getSystem returns a TapisSystem
  without credentials.

Choices of the stand-in:

* Error messages follow the Tapis "CODE text" shape but their wording is the stand-in's.
* Apps are visible to every user of the tenant (no permission model).
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any

from .common import ApiError, Request, java_envelope, tapis_ts
from .slurm_exec import ExecSystem, SSHHost

if TYPE_CHECKING:
    from .server import StandIn

RUNTIMES = ("SINGULARITY", "DOCKER", "ZIP")
JOB_TYPES = ("BATCH", "FORK")
_ID_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._~-]{0,79}")
_URL_RE = re.compile(r"^(https?|tapis)://[^/\s]+(/\S*)?$")
REQ_POST_APP_FIELDS = (
    "id", "version", "description", "owner", "enabled", "versionEnabled", "locked", "runtime",
    "runtimeVersion", "runtimeOptions", "containerImage", "jobType", "maxJobs",
    "maxJobsPerUser", "strictFileInputs", "jobAttributes", "tags", "notes",
)
REQ_PUT_APP_FIELDS = (
    "description", "runtime", "runtimeVersion", "runtimeOptions", "containerImage", "jobType",
    "maxJobs", "maxJobsPerUser", "strictFileInputs", "jobAttributes", "tags", "notes",
)
APP_SUMMARY_FIELDS = ("id", "version", "owner")
SYSTEM_SUMMARY_FIELDS = ("id", "systemType", "owner", "host", "effectiveUserId",
                         "defaultAuthnMethod", "canExec", "parentId")
JOB_ATTRIBUTE_DEFAULTS: dict[str, Any] = {
    "description": None, "dynamicExecSystem": False, "execSystemConstraints": None,
    "execSystemId": None, "execSystemExecDir": None, "execSystemInputDir": None,
    "execSystemOutputDir": None, "dtnSystemInputDir": "!tapis_not_set",
    "dtnSystemOutputDir": "!tapis_not_set", "execSystemLogicalQueue": None,
    "archiveSystemId": None, "archiveSystemDir": None, "archiveOnAppError": True,
    "archiveMode": "SKIP_ON_FAIL", "isMpi": False, "mpiCmd": None, "cmdPrefix": None,
    "parameterSet": {"appArgs": [], "containerArgs": [], "schedulerOptions": [],
                     "envVariables": [], "archiveFilter": {"includes": [], "excludes": [],
                                                           "includeLaunchFiles": True},
                     "logConfig": None},
    "fileInputs": [], "fileInputArrays": [], "nodeCount": None, "coresPerNode": None,
    "memoryMB": None, "maxMinutes": None, "subscriptions": [], "tags": [],
}


class AppsSystemsService:
    """Apps (create/get/put/list/delete) and Systems (get/list) for one tenant."""

    def __init__(self, standin: StandIn, exec_system: ExecSystem | None) -> None:
        self.standin = standin
        self.systems: dict[str, ExecSystem] = {}
        self.hosts: dict[str, SSHHost] = {}
        self.apps: dict[tuple[str, str], dict[str, Any]] = {}  # (id, version) -> TapisApp
        if exec_system is not None:
            self.add_system(exec_system)

    # ------------------------------------------------------------------ python side

    def add_system(self, system: ExecSystem) -> None:
        self.systems[system.id] = system
        self.hosts[system.id] = SSHHost(system)

    def system(self, system_id: str) -> ExecSystem:
        sys_ = self.systems.get(system_id)
        if sys_ is None:
            raise ApiError(404, f"SYSAPI_NOT_FOUND System not found. System: {system_id}")
        return sys_

    def host(self, system_id: str) -> SSHHost:
        self.system(system_id)
        return self.hosts[system_id]

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()

    def latest(self, app_id: str) -> dict[str, Any] | None:
        """The version created last (dicts keep insertion order)."""
        versions = [a for (i, _), a in self.apps.items() if i == app_id]
        return versions[-1] if versions and not versions[-1]["deleted"] else None

    def get(self, app_id: str, version: str) -> dict[str, Any] | None:
        app = self.apps.get((app_id, version))
        return None if app is None or app["deleted"] else app

    # ------------------------------------------------------------------ validation

    def _validate(self, body: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
        errors = [f"APPAPI_JSON_INVALID Unknown attribute: {k}" for k in body if k not in fields]
        runtime = body.get("runtime", "DOCKER")
        if runtime not in RUNTIMES:
            errors.append(f"APPAPI_INVALID_RUNTIME runtime must be one of {list(RUNTIMES)}: "
                          f"{runtime!r}")
        if body.get("jobType") is not None and body["jobType"] not in JOB_TYPES:
            errors.append(f"APPAPI_INVALID_JOBTYPE jobType must be one of {list(JOB_TYPES)}: "
                          f"{body['jobType']!r}")
        image = body.get("containerImage")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            errors.append("APPAPI_INVALID_CONTAINERIMAGE containerImage must be a non-empty "
                          "string")
        elif runtime == "ZIP" and isinstance(image, str) and not (
                image.startswith("/") or _URL_RE.match(image)):
            errors.append("APPAPI_ZIP_CONTAINERIMAGE For runtime ZIP the containerImage must be "
                          f"an absolute path or a http, https or tapis URL: {image}")
        attrs = body.get("jobAttributes")
        if attrs is not None:
            if not isinstance(attrs, dict):
                errors.append("APPAPI_JSON_INVALID jobAttributes must be an object")
            else:
                errors += [f"APPAPI_JSON_INVALID Unknown jobAttributes attribute: {k}"
                           for k in attrs if k not in JOB_ATTRIBUTE_DEFAULTS]
                for key in ("nodeCount", "coresPerNode", "memoryMB", "maxMinutes"):
                    value = attrs.get(key)
                    if value is not None and (not isinstance(value, int) or value < 0):
                        errors.append(f"APPAPI_JSON_INVALID jobAttributes.{key} must be a "
                                      "non-negative integer")
                sys_id = attrs.get("execSystemId")
                if sys_id and sys_id not in self.systems:
                    errors.append(f"APPAPI_SYS_NOEXIST execSystemId {sys_id} does not exist")
        return errors

    @staticmethod
    def _merge_attrs(attrs: dict[str, Any] | None) -> dict[str, Any]:
        merged = copy.deepcopy(JOB_ATTRIBUTE_DEFAULTS)
        for key, value in (attrs or {}).items():
            if key == "parameterSet" and isinstance(value, dict):
                merged["parameterSet"].update(copy.deepcopy(value))
            else:
                merged[key] = copy.deepcopy(value)
        return merged

    def _app_url(self, app_id: str) -> str:
        return f"{self.standin.base_url}/v3/apps/{app_id}"

    @staticmethod
    def _who(req: Request) -> str:
        return (f"jwtTenant: {req.tenant} jwtUser: {req.user} OboTenant: {req.tenant} "
                f"OboUser: {req.user}")

    # ------------------------------------------------------------------ apps routes

    def _op_createAppVersion(self, req: Request):
        body = req.body
        if not isinstance(body, dict):
            raise ApiError(400, "APPAPI_JSON_INVALID The request body is not a JSON object")
        errors = [f"APPAPI_JSON_INVALID Missing required attribute: {k}"
                  for k in ("id", "version", "containerImage") if not body.get(k)]
        if body.get("id") and not _ID_RE.fullmatch(str(body["id"])):
            errors.append(f"APPAPI_INVALID_ID Invalid app id: {body['id']}")
        errors += self._validate(body, REQ_POST_APP_FIELDS)
        if errors:
            raise ApiError(400, "; ".join(errors))
        app_id, version = body["id"], str(body["version"])
        with self.standin._lock:
            if (app_id, version) in self.apps:
                raise ApiError(409, f"APPAPI_APP_EXISTS App already exists. {self._who(req)} "
                                    f"App Id: {app_id} Version: {version}")
            if any(i == app_id and a["deleted"] for (i, _), a in self.apps.items()):
                raise ApiError(409, f"APPAPI_CREATE_RESERVED App id reserved (the app was "
                                    f"deleted). {self._who(req)} App: {app_id}")
            now = tapis_ts()
            app = {
                "tenant": req.tenant, "id": app_id, "version": version,
                "description": body.get("description"), "owner": body.get("owner") or req.user,
                "enabled": body.get("enabled", True),
                "versionEnabled": body.get("versionEnabled", True),
                "locked": body.get("locked", False), "isPublic": False, "sharedWithUsers": [],
                "runtime": body.get("runtime", "DOCKER"),
                "runtimeVersion": body.get("runtimeVersion"),
                "runtimeOptions": body.get("runtimeOptions") or [],
                "containerImage": body["containerImage"], "jobType": body.get("jobType"),
                "maxJobs": body.get("maxJobs", -1), "maxJobsPerUser": body.get("maxJobsPerUser",
                                                                                -1),
                "strictFileInputs": body.get("strictFileInputs", False),
                "jobAttributes": self._merge_attrs(body.get("jobAttributes")),
                "tags": list(body.get("tags") or []), "notes": body.get("notes") or {},
                "sharedAppCtx": None, "uuid": None, "deleted": False, "created": now,
                "updated": now,
            }
            self.apps[(app_id, version)] = app
        return None, java_envelope({"url": self._app_url(app_id)},
                                   f"APPAPI_CREATED New app created. {self._who(req)} App: "
                                   f"{app_id}", "apps")

    def _op_putApp(self, req: Request):
        body = req.body
        if not isinstance(body, dict):
            raise ApiError(400, "APPAPI_JSON_INVALID The request body is not a JSON object")
        app_id, version = req.params["appId"], req.params["appVersion"]
        with self.standin._lock:
            app = self.get(app_id, version)
            if app is None:
                raise ApiError(404, f"APPAPI_NOT_FOUND Record not found. {self._who(req)} "
                                    f"App: {app_id} Version: {version}")
            errors = self._validate({"runtime": app["runtime"], **body},
                                    (*REQ_PUT_APP_FIELDS, "runtime"))
            if errors:
                raise ApiError(400, "; ".join(errors))
            for key in REQ_PUT_APP_FIELDS:  # PUT replaces: absent fields get their defaults
                if key == "jobAttributes":
                    app[key] = self._merge_attrs(body.get(key))
                elif key in body:
                    app[key] = copy.deepcopy(body[key])
            app["updated"] = tapis_ts()
        return None, java_envelope({"url": self._app_url(app_id)},
                                   f"APPAPI_UPDATED App updated. {self._who(req)} App: "
                                   f"{app_id} Operation: putApp", "apps")

    def _op_getApp(self, req: Request):
        app = self.get(req.params["appId"], req.params["appVersion"])
        if app is None:
            raise ApiError(404, f"APPAPI_NOT_FOUND Record not found. {self._who(req)} App: "
                                f"{req.params['appId']} Version: {req.params['appVersion']}")
        return None, java_envelope(copy.deepcopy(app), "APPAPI_FOUND App found.", "apps")

    def _op_getAppLatestVersion(self, req: Request):
        app = self.latest(req.params["appId"])
        if app is None:
            raise ApiError(404, f"APPAPI_NOT_FOUND Record not found. {self._who(req)} App: "
                                f"{req.params['appId']}")
        return None, java_envelope(copy.deepcopy(app), "APPAPI_FOUND App found.", "apps")

    def _op_getApps(self, req: Request):
        select = req.q("select", "summaryAttributes") or "summaryAttributes"
        show_deleted = req.q_bool("showDeleted")
        with self.standin._lock:
            latest: dict[str, dict[str, Any]] = {}
            for (app_id, _), app in self.apps.items():
                latest[app_id] = app  # the version created last
            apps = [a for a in latest.values() if show_deleted or not a["deleted"]]
        result = [_select(a, select, APP_SUMMARY_FIELDS) for a in apps]
        limit = req.q_int("limit", 100) or 100
        result = result[req.q_int("skip", 0) or 0:][:limit if limit > 0 else None]
        return None, java_envelope(result, "APPAPI_FOUND Apps found.", "apps",
                                   metadata={"recordCount": len(result), "recordLimit": limit})

    def _op_deleteApp(self, req: Request):
        app_id = req.params["appId"]
        with self.standin._lock:
            versions = [a for (i, _), a in self.apps.items() if i == app_id and not a["deleted"]]
            if not versions:
                raise ApiError(404, f"APPAPI_NOT_FOUND Record not found. {self._who(req)} App: "
                                    f"{app_id}")
            for app in versions:
                app["deleted"] = True
        return None, java_envelope({"changes": 1}, f"APPAPI_UPDATED App updated. "
                                                    f"{self._who(req)} App: {app_id} Operation: "
                                                    "deleteApp", "apps")

    # ------------------------------------------------------------------ systems routes

    def _op_getSystem(self, req: Request):
        system = self.system(req.params["systemId"])
        return None, java_envelope(system.display(req.tenant, req.user),
                                   "SYSAPI_FOUND System found.", "systems")

    def _op_getSystems(self, req: Request):
        select = req.q("select", "summaryAttributes") or "summaryAttributes"
        result = [_select(s.display(req.tenant, req.user), select, SYSTEM_SUMMARY_FIELDS)
                  for s in self.systems.values()]
        return None, java_envelope(result, "SYSAPI_FOUND Systems found.", "systems",
                                   metadata={"recordCount": len(result), "recordLimit": 100})


def _select(obj: dict[str, Any], select: str, summary: tuple[str, ...]) -> dict[str, Any]:
    """Tapis ``select``: allAttributes, summaryAttributes or a comma list of attributes."""
    names = [s.strip() for s in select.split(",") if s.strip()]
    if "allAttributes" in names:
        return copy.deepcopy(obj)
    wanted: list[str] = []
    for name in names:
        wanted += list(summary) if name == "summaryAttributes" else [name]
    return {k: copy.deepcopy(obj[k]) for k in dict.fromkeys(wanted) if k in obj}
