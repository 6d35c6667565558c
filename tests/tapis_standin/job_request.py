"""Turning a submitJob request into a Tapis Job record, the way the Jobs front end does.

Why a module of its own: request validation, parameter precedence and macro substitution are
pure functions of (request, app, system) that tests can check without any cluster.

Facts followed (Tapis Jobs docs and tapis-jobs 1.7.1 ``SubmitContext`` /
``JobParmSetMarshaller``):

* Precedence request > app ``jobAttributes`` > system > defaults (nodeCount 1, coresPerNode 1,
  memoryMB 100, maxMinutes 10, archiveOnAppError true); jobType request > app > BATCH when the
  system can run batch; queue request > app > ``batchDefaultLogicalQueue``; queue limits
  (min/max nodes, cores, memory, minutes) are enforced with the JOBS_Q_* messages (400).
* Directories default to ``${JobWorkingDir}/jobs/${JobUUID}`` (exec and input) and
  ``.../output``; archiveSystemDir defaults to execSystemOutputDir when the archive system is
  the exec system (SubmitContext.resolveDirectoryPathNames), else ``/jobs/${JobUUID}/archive``.
* appArgs / schedulerOptions / containerArgs: app arguments first (REQUIRED and FIXED always,
  INCLUDE_BY_DEFAULT unless excluded, INCLUDE_ON_DEMAND when named with include != false), a
  named request argument overrides the app's in place, unnamed request arguments are appended.
  An appArgs ``arg`` with a control character or one of ``& > < | ; ``` is refused with 400
  (JOBS_INVALID_INPUT_CHARACTERS); ``$``, quotes and spaces are accepted and NOT quoted.
* envVariables: request keys must match ``[a-zA-Z_][a-zA-Z0-9_]*``, may not start with
  ``_tapis`` and may not repeat (400); app variables not overridden are appended; the
  ``_tapis*`` variables come first.  tags = request tags + app tags.  archiveFilter includes /
  excludes = request + app; logConfig request > app > ``tapisjob.out`` for both streams.
* The returned Job has ``fileInputs``, ``parameterSet``, ``execSystemConstraints``,
  ``subscriptions`` and ``notes`` as JSON STRINGS (the Job schema types them ``string``).
* Job uuids look like ``<uuid4>-007``.

Choices of the stand-in: only the ZIP runtime with jobType BATCH can run (other runtimes/FORK
answer 400 with a message saying so); fileInputs take ``tapis://<system>/<path>`` or
``tapislocal://exec.tapis/<path>`` (in place) URLs; an unknown ``${Macro}`` answers 400.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import posixpath
import re
import uuid
from collections.abc import Callable
from typing import Any

from .common import ApiError, tapis_ts
from .slurm_exec import ExecSystem, has_control_chars, has_dangerous_chars

DEFAULT_NODE_COUNT, DEFAULT_CORES_PER_NODE, DEFAULT_MEM_MB, DEFAULT_MAX_MINUTES = 1, 1, 100, 10
DEFAULT_EXEC_DIR = "${JobWorkingDir}/jobs/${JobUUID}"
DEFAULT_INPUT_DIR = "${JobWorkingDir}/jobs/${JobUUID}"
DEFAULT_OUTPUT_DIR = "${JobWorkingDir}/jobs/${JobUUID}/output"
DEFAULT_ARCHIVE_DIR = "/jobs/${JobUUID}/archive"
REQ_SUBMIT_FIELDS = (
    "name", "owner", "tenant", "description", "appId", "appVersion", "jobType",
    "archiveOnAppError", "dynamicExecSystem", "execSystemId", "execSystemExecDir",
    "execSystemInputDir", "execSystemOutputDir", "execSystemLogicalQueue", "archiveSystemId",
    "archiveSystemDir", "dtnSystemInputDir", "dtnSystemOutputDir", "nodeCount", "coresPerNode",
    "memoryMB", "maxMinutes", "fileInputs", "fileInputArrays", "parameterSet",
    "execSystemConstraints", "tags", "subscriptions", "isMpi", "mpiCmd", "cmdPrefix", "notes",
)
JOB_FIELDS = (
    "id", "name", "owner", "tenant", "description", "status", "condition", "lastMessage",
    "created", "ended", "lastUpdated", "uuid", "appId", "appVersion", "archiveOnAppError",
    "dynamicExecSystem", "execSystemId", "execSystemExecDir", "execSystemInputDir",
    "execSystemOutputDir", "execSystemLogicalQueue", "archiveSystemId", "archiveSystemDir",
    "dtnSystemId", "dtnSystemInputDir", "dtnSystemOutputDir", "nodeCount", "coresPerNode",
    "memoryMB", "maxMinutes", "fileInputs", "parameterSet", "execSystemConstraints",
    "subscriptions", "blockedCount", "remoteJobId", "remoteJobId2", "remoteOutcome",
    "remoteResultInfo", "remoteQueue", "remoteSubmitted", "remoteStarted", "remoteEnded",
    "remoteSubmitRetries", "remoteChecksSuccess", "remoteChecksFailed", "remoteLastStatusCheck",
    "inputTransactionId", "inputCorrelationId", "archiveTransactionId", "archiveCorrelationId",
    "stageAppTransactionId", "stageAppCorrelationId", "dtnInputTransactionId",
    "dtnInputCorrelationId", "dtnOutputTransactionId", "dtnOutputCorrelationId", "tapisQueue",
    "visible", "createdby", "createdbyTenant", "tags", "jobType", "mpiCmd", "cmdPrefix",
    "sharedAppCtx", "sharedAppCtxAttribs", "trackingId", "notes", "mpi",
)
_ENV_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MACRO = re.compile(r"\$\{(\w+)\}")


def bad(message: str, status: int = 400) -> ApiError:
    return ApiError(status, message)


def _merge_args(req_list: list[dict[str, Any]], app_list: list[dict[str, Any]], kind: str
                ) -> list[dict[str, Any]]:
    """JobParmSetMarshaller.mergeArgSpecList for appArgs/schedulerOptions/containerArgs."""
    scratch: list[dict[str, Any]] = []
    rejected: set[str] = set()
    by_name = {a.get("name"): a for a in req_list if a.get("name")}
    for app_arg in app_list:
        mode = app_arg.get("inputMode") or "INCLUDE_ON_DEMAND"
        name = app_arg.get("name")
        req = by_name.get(name)
        include = None if req is None else req.get("include")
        keep = (mode in ("REQUIRED", "FIXED")
                or (mode == "INCLUDE_BY_DEFAULT" and include is not False)
                or (mode == "INCLUDE_ON_DEMAND" and req is not None and include is not False))
        if keep:
            scratch.append({"name": name, "description": app_arg.get("description"),
                            "include": None, "arg": app_arg.get("arg"),
                            "notes": app_arg.get("notes"), "_mode": mode})
        else:
            rejected.add(name)
    for req in req_list:
        name = req.get("name")
        if name and name in rejected:
            continue
        match = next((s for s in scratch if name and s["name"] == name), None)
        if match is None:
            scratch.append({"name": name, "description": req.get("description"),
                            "include": req.get("include"), "arg": req.get("arg"),
                            "notes": req.get("notes"), "_mode": None})
            continue
        if match["_mode"] == "FIXED":
            raise bad(f"JOBS_FIXED_ARG_ERROR The {kind} argument {name} is FIXED in the "
                      "application and cannot be overridden.")
        if req.get("arg"):
            match["arg"] = req["arg"]
        match["include"] = req.get("include")
    out = []
    for s in scratch:
        arg = s["arg"]
        if not arg:
            if s["_mode"] == "INCLUDE_BY_DEFAULT":
                continue
            raise bad(f"JOBS_MISSING_ARG Argument {s['name']} of type {kind} has no value.")
        if kind == "APP_ARGS":
            if has_dangerous_chars(arg):
                raise bad(f"JOBS_INVALID_INPUT_CHARACTERS The {kind}[{s['name'] or 'unnamed'}] "
                          f"input value ({arg}) contains a prohibited character such as a "
                          "control character or one of [&, >, <, |, ;, `]")
        else:
            if has_control_chars(arg):
                raise bad(f"JOBS_INVALID_CHAR_DETECTED The {kind}[{s['name']}] input value "
                          f"contains a prohibited character such as an unprintable control "
                          "character")
            key = arg.strip().split(None, 1)[0]
            if has_dangerous_chars(key):
                raise bad(f"JOBS_INVALID_INPUT_CHARACTERS The {kind}[{key}] input value ({key})"
                          " contains a prohibited character such as a control character or "
                          "one of [&, >, <, |, ;, `]")
        out.append({k: v for k, v in s.items() if not k.startswith("_")})
    return out


def _merge_env(req_list: list[dict[str, Any]], app_list: list[dict[str, Any]]
               ) -> list[dict[str, Any]]:
    seen: set[str] = set()
    for kv in req_list:
        key = kv.get("key")
        if not isinstance(key, str) or not key:
            raise bad("JOBS_MISSING_ENV_KEY An envVariables entry has no key.")
        if key.startswith("_tapis"):
            raise bad(f'JOBS_RESERVED_ENV_VAR Environment variable "{key}" defined in the job '
                      'request cannot start with the reserved prefix "_tapis". ')
        if not _ENV_KEY.fullmatch(key):
            raise bad("JOBS_INVALID_ENV_VAR_CHAR An environment variable name must begin with a "
                      f"letter or _ and then contain only alphanumerics or _: {key}")
        if key in seen:
            raise bad(f"JOBS_DUPLICATE_ENV_VAR Duplicate environment variable in job request: "
                      f"{key}")
        seen.add(key)
        if not isinstance(kv.get("value"), str):
            raise bad(f"JOBS_MISSING_ENV_VALUE Environment variable {key} has no value.")
        if has_control_chars(kv["value"]):
            raise bad(f"JOBS_INVALID_CHAR_DETECTED The envVariables[{key}] input value contains "
                      "a prohibited character such as an unprintable control character")
    out = [{"key": kv["key"], "value": kv["value"], "description": kv.get("description"),
            "include": True if kv.get("include") is None else kv["include"],
            "notes": kv.get("notes")} for kv in req_list]
    for app_kv in app_list:
        key = app_kv.get("key")
        if key in seen:
            if app_kv.get("inputMode") == "FIXED":
                raise bad(f"JOBS_FIXED_ENV_VAR_OVERRIDE Environment variable {key} is FIXED in "
                          "the application.")
            continue
        mode = app_kv.get("inputMode") or "INCLUDE_BY_DEFAULT"
        if mode == "INCLUDE_ON_DEMAND":
            continue
        value = app_kv.get("value")
        if value is None or value == "!tapis_not_set":
            raise bad(f"JOBS_MISSING_ENV_VALUE Environment variable {key} requires a value.")
        out.append({"key": key, "value": value, "description": app_kv.get("description"),
                    "include": None, "notes": app_kv.get("notes")})
    return out


def _file_inputs(req_list: list[dict[str, Any]], app_list: list[dict[str, Any]],
                 systems: dict[str, ExecSystem], strict: bool) -> list[dict[str, Any]]:
    by_name = {i.get("name"): i for i in req_list if i.get("name")}
    out: list[dict[str, Any]] = []
    app_names = set()
    for app_in in app_list:
        name = app_in.get("name")
        app_names.add(name)
        mode = app_in.get("inputMode") or "OPTIONAL"
        req = by_name.get(name)
        if req is not None and mode == "FIXED":
            raise bad(f"JOBS_FIXED_INPUT_ERROR The file input {name} is FIXED in the "
                      "application and cannot be overridden.")
        merged = {**app_in, **{k: v for k, v in (req or {}).items() if v is not None}}
        if not merged.get("sourceUrl"):
            if mode == "REQUIRED":
                raise bad(f"JOBS_MISSING_INPUT The required file input {name} has no sourceUrl.")
            continue
        out.append(merged)
    for req in req_list:
        name = req.get("name")
        if name in app_names:
            continue
        if name and strict:
            raise bad(f"JOBS_UNDEFINED_INPUT File input {name} is not defined in the "
                      "application, which has strictFileInputs=true.")
        out.append(dict(req))
    for fi in out:
        if fi.get("name") and not _NAME.fullmatch(fi["name"]):
            raise bad(f"JOBS_INVALID_INPUT_NAME Invalid file input name: {fi['name']}")
        url = fi.get("sourceUrl") or ""
        if has_control_chars(url) or has_control_chars(fi.get("targetPath") or ""):
            raise bad(f"JOBS_INVALID_CHAR_DETECTED The fileInputs[{fi.get('name')}] input "
                      "value contains a prohibited character such as an unprintable control "
                      "character")
        m = re.fullmatch(r"(tapis|tapislocal)://([^/]+)(/.*)?", url)
        if not m:
            raise bad(f"JOBS_INVALID_INPUT_URL The stand-in stages tapis://<system>/<path> and "
                      f"tapislocal://exec.tapis/<path> inputs only: {url}")
        if m.group(1) == "tapis" and m.group(2) not in systems:
            raise bad(f"JOBS_INPUT_SYSTEM_NOT_FOUND The system {m.group(2)} of file input "
                      f"{url} does not exist.", 404)
        if m.group(1) == "tapislocal" and m.group(2) != "exec.tapis":
            raise bad(f"JOBS_INVALID_INPUT_URL tapislocal URLs use the host exec.tapis: {url}")
        target = fi.get("targetPath")
        if not target or target == "*":
            target = posixpath.basename((m.group(3) or "/").rstrip("/"))
        if ".." in target.split("/"):
            raise bad(f"JOBS_INVALID_INPUT_PATH targetPath may not contain '..': {target}")
        fi["targetPath"] = target
        for key in ("description", "envKey", "notes"):
            fi.setdefault(key, None)
        fi.setdefault("autoMountLocal", True)
        fi.pop("inputMode", None)
    return out


def build_job(body: Any, *, user: str, tenant: str, apps: Any,
              resolve_working_dir: Callable[[ExecSystem], str]) -> tuple[dict[str, Any],
                                                                         dict[str, Any]]:
    """Validate a submitJob body; return (Job fields, internal extras).  Raises ApiError."""
    if not isinstance(body, dict):
        raise bad("JOBS_JSON_INVALID The request body is not a JSON object.")
    unknown = [k for k in body if k not in REQ_SUBMIT_FIELDS]
    if unknown:
        raise bad(f"TAPIS_JSON_VALIDATION_ERROR Unknown attribute(s) in the job request: "
                  f"{unknown}")
    missing = [k for k in ("name", "appId", "appVersion") if not body.get(k)]
    if missing:
        raise bad(f"TAPIS_JSON_VALIDATION_ERROR Missing required attribute(s): {missing}")
    for key in ("appId", "appVersion", "execSystemId", "archiveSystemId",
                "execSystemLogicalQueue"):
        if isinstance(body.get(key), str) and has_dangerous_chars(body[key]):
            raise bad(f"JOBS_INVALID_INPUT_CHARACTERS The [{key}] input value ({body[key]}) "
                      "contains a prohibited character such as a control character or one of "
                      "[&, >, <, |, ;, `]")
    for key in ("nodeCount", "coresPerNode", "memoryMB", "maxMinutes"):
        if body.get(key) is not None and (not isinstance(body[key], int)
                                          or isinstance(body[key], bool)):
            raise bad(f"TAPIS_JSON_VALIDATION_ERROR {key} must be an integer")
    app = apps.get(body["appId"], str(body["appVersion"]))
    if app is None:
        raise bad(f"TAPIS_APPCLIENT_NOT_FOUND Application {body['appId']} version "
                  f"{body['appVersion']} not found.", 404)
    job_uuid = f"{uuid.uuid4()}-007"
    if not app["enabled"] or not app["versionEnabled"]:
        raise bad(f"JOBS_APP_NOT_AVAILABLE Job {job_uuid} cannot run application "
                  f"{app['id']} ({app['version']}) because it's not available.")
    attrs = app["jobAttributes"]

    def pick(key: str, default: Any = None) -> Any:
        value = body.get(key)
        if value is None or value == "":
            value = attrs.get(key)
        return default if value is None or value == "" else value

    sys_id = pick("execSystemId")
    if not sys_id:
        raise bad(f"JOBS_NO_EXEC_SYSTEM No execution system was specified for application "
                  f"{app['id']}.")
    system = apps.systems.get(sys_id)
    if system is None:
        raise bad(f"TAPIS_SYSCLIENT_NOT_FOUND System {sys_id} not found.", 404)
    if not system.can_exec:
        raise bad(f"JOBS_INVALID_EXEC_SYSTEM System {sys_id} is not an execution system.")
    job_type = body.get("jobType") or app.get("jobType") or (
        "BATCH" if system.batch_scheduler else "FORK")
    if job_type not in ("BATCH", "FORK"):
        raise bad(f"JOBS_INVALID_JOBTYPE Invalid jobType: {job_type}")
    if job_type != "BATCH" or app["runtime"] != "ZIP":
        raise bad(f"JOBS_STANDIN_UNSUPPORTED The stand-in runs ZIP applications as BATCH jobs "
                  f"only (got runtime {app['runtime']}, jobType {job_type}).")
    queue_name = pick("execSystemLogicalQueue", system.default_queue)
    if not queue_name:
        raise bad(f"JOBS_NO_LOGICAL_QUEUE No Tapis queue was specified for system {sys_id} when "
                  f"running application {app['id']} in tenant {tenant}. ")
    queue = system.queue(queue_name)
    if queue is None:
        raise bad(f'JOBS_INVALID_LOGICAL_QUEUE The Tapis queue "{queue_name}" specified on '
                  f"system {sys_id} for application {app['id']} in tenant {tenant} is not "
                  f"valid.  Valid queues are [{', '.join(q.name for q in system.queues)}].")
    nodes = pick("nodeCount", DEFAULT_NODE_COUNT)
    cores = pick("coresPerNode", DEFAULT_CORES_PER_NODE)
    mem = pick("memoryMB", DEFAULT_MEM_MB)
    minutes = pick("maxMinutes", DEFAULT_MAX_MINUTES)
    nodes = nodes if nodes > 0 else DEFAULT_NODE_COUNT
    cores = cores if cores > 0 else DEFAULT_CORES_PER_NODE
    mem = mem if mem > 0 else DEFAULT_MEM_MB
    minutes = minutes if minutes > 0 else DEFAULT_MAX_MINUTES
    limits = (
        ("MAX_NODES", queue.max_node_count, nodes, "nodes", max),
        ("MAX_CORES", queue.max_cores_per_node, cores, "cores per node", max),
        ("MAX_MEM", queue.max_memory_mb, mem, "MB memory per node", max),
        ("MAX_MINUTES", queue.max_minutes, minutes, "runtime minutes", max),
        ("MIN_NODES", queue.min_node_count, nodes, "nodes", min),
        ("MIN_CORES", queue.min_cores_per_node, cores, "cores per node", min),
        ("MIN_MEM", queue.min_memory_mb, mem, "MB memory per node", min),
        ("MIN_MINUTES", queue.min_minutes, minutes, "runtime minutes", min),
    )
    for code, limit, value, what, kind in limits:
        if limit is None or (value <= limit if kind is max else value >= limit):
            continue
        word = "maximum" if kind is max else "minimum"
        tag = f"JOBS_Q_EXCEEDED_{code}" if kind is max else f"JOBS_Q_{code}_ERROR"
        raise bad(f"{tag} Job {job_uuid} requested {value} {what} on system {sys_id} using "
                  f"queue {queue_name}. The queue {word} is {limit}.")
    archive_sys_id = pick("archiveSystemId", sys_id)
    if archive_sys_id not in apps.systems:
        raise bad(f"TAPIS_SYSCLIENT_NOT_FOUND Archive system {archive_sys_id} not found.", 404)

    # ---- parameterSet
    req_ps = body.get("parameterSet") or {}
    app_ps = attrs.get("parameterSet") or {}
    if not isinstance(req_ps, dict):
        raise bad("TAPIS_JSON_VALIDATION_ERROR parameterSet must be an object")
    for key in ("appArgs", "schedulerOptions", "containerArgs", "envVariables"):
        if not isinstance(req_ps.get(key) or [], list):
            raise bad(f"TAPIS_JSON_VALIDATION_ERROR parameterSet.{key} must be an array")
    app_args = _merge_args(req_ps.get("appArgs") or [], app_ps.get("appArgs") or [],
                           "APP_ARGS")
    sched = _merge_args(req_ps.get("schedulerOptions") or [],
                        app_ps.get("schedulerOptions") or [], "SCHEDULER_OPTIONS")
    container = _merge_args(req_ps.get("containerArgs") or [],
                            app_ps.get("containerArgs") or [], "CONTAINER_ARGS")
    user_env = _merge_env(req_ps.get("envVariables") or [], app_ps.get("envVariables") or [])
    req_filter = req_ps.get("archiveFilter") or {}
    app_filter = app_ps.get("archiveFilter") or {}
    include_launch = req_filter.get("includeLaunchFiles")
    if include_launch is None:
        include_launch = app_filter.get("includeLaunchFiles")
    archive_filter = {
        "includes": list(req_filter.get("includes") or []) + list(app_filter.get("includes")
                                                                   or []),
        "excludes": list(req_filter.get("excludes") or []) + list(app_filter.get("excludes")
                                                                   or []),
        "includeLaunchFiles": True if include_launch is None else bool(include_launch),
    }
    log_config = req_ps.get("logConfig") or app_ps.get("logConfig") or {
        "stdoutFilename": "tapisjob.out", "stderrFilename": "tapisjob.out"}
    for key in ("stdoutFilename", "stderrFilename"):
        value = log_config.get(key)
        if not value or has_dangerous_chars(value) or ".." in value.split("/"):
            raise bad(f"JOBS_INVALID_LOG_CONFIG logConfig.{key} must be a file name: {value!r}")

    # ---- macros and directories
    now = dt.datetime.now(dt.UTC)
    created = tapis_ts(now)
    working_dir = resolve_working_dir(system)
    macros: dict[str, str] = {
        "JobUUID": job_uuid, "Tenant": tenant, "JobOwner": user,
        "EffectiveUserId": system.effective_user, "AppId": app["id"],
        "AppVersion": app["version"], "ExecSystemId": sys_id, "ArchiveSystemId": archive_sys_id,
        "DynamicExecSystem": "false",
        "ArchiveOnAppError": str(pick("archiveOnAppError", True)).lower(),
        "SysRootDir": system.root_dir, "SysHost": system.host, "Nodes": str(nodes),
        "CoresPerNode": str(cores), "MemoryMB": str(mem), "MaxMinutes": str(minutes),
        "JobCreateTimestamp": created, "JobCreateDate": now.strftime("%Y-%m-%dZ"),
        "JobCreateTime": created.split("T", 1)[1],
        "SysBatchScheduler": system.batch_scheduler or "",
        "ExecSystemLogicalQueue": queue_name, "ExecSystemHPCQueue": queue.hpc_queue_name,
    }

    def expand(text: str, what: str) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in macros:
                raise bad(f"JOBS_MACRO_UNRESOLVED Unknown or unresolved macro ${{{m.group(1)}}} "
                          f"in {what}: {text}")
            return macros[m.group(1)]
        return _MACRO.sub(sub, text)

    name = expand(str(body["name"]), "name")
    if has_control_chars(name):
        raise bad("JOBS_INVALID_CHAR_DETECTED The [jobName] input value contains a prohibited "
                  "character such as an unprintable control character")
    macros["JobName"] = name
    macros["JobWorkingDir"] = working_dir
    dirs = {}
    for key, macro, default in (
            ("execSystemInputDir", "ExecSystemInputDir", DEFAULT_INPUT_DIR),
            ("execSystemExecDir", "ExecSystemExecDir", DEFAULT_EXEC_DIR),
            ("execSystemOutputDir", "ExecSystemOutputDir", DEFAULT_OUTPUT_DIR)):
        dirs[key] = expand(pick(key, default), key)
        macros[macro] = dirs[key]
    archive_default = dirs["execSystemOutputDir"] if archive_sys_id == sys_id else \
        DEFAULT_ARCHIVE_DIR
    dirs["archiveSystemDir"] = expand(pick("archiveSystemDir", archive_default),
                                      "archiveSystemDir")
    macros["ArchiveSystemDir"] = dirs["archiveSystemDir"]
    for key, value in dirs.items():
        if has_control_chars(value) or ".." in value.split("/"):
            raise bad(f"JOBS_INVALID_PATH The {key} path is not valid: {value}")
        dirs[key] = "/" + value.strip("/") if value.strip("/") else "/"
    for arg in sched:
        arg["arg"] = expand(arg["arg"], "schedulerOptions")
    for arg in app_args:
        arg["arg"] = expand(arg["arg"], "appArgs")
    for arg in container:
        arg["arg"] = expand(arg["arg"], "containerArgs")
    description = body.get("description") or attrs.get("description") or \
        f"{app['id']}-{app['version']} submitted by {user}@{tenant}"
    description = expand(description, "description")

    inputs = _file_inputs(body.get("fileInputs") or [], attrs.get("fileInputs") or [],
                          apps.systems, app.get("strictFileInputs", False))
    archive_on_error = bool(pick("archiveOnAppError", True))
    tapis_env = {
        "_tapisAppId": app["id"], "_tapisAppVersion": app["version"],
        "_tapisArchiveOnAppError": str(archive_on_error).lower(),
        "_tapisArchiveSystemDir": dirs["archiveSystemDir"],
        "_tapisArchiveSystemId": archive_sys_id, "_tapisCoresPerNode": str(cores),
        "_tapisDynamicExecSystem": "false", "_tapisEffectiveUserId": system.effective_user,
        "_tapisExecSystemExecDir": dirs["execSystemExecDir"],
        "_tapisExecSystemHPCQueue": queue.hpc_queue_name, "_tapisExecSystemId": sys_id,
        "_tapisExecSystemInputDir": dirs["execSystemInputDir"],
        "_tapisExecSystemLogicalQueue": queue_name,
        "_tapisExecSystemOutputDir": dirs["execSystemOutputDir"],
        "_tapisJobCreateDate": macros["JobCreateDate"],
        "_tapisJobCreateTime": macros["JobCreateTime"], "_tapisJobCreateTimestamp": created,
        "_tapisJobName": name, "_tapisJobOwner": user, "_tapisJobUUID": job_uuid,
        "_tapisJobWorkingDir": working_dir, "_tapisMaxMinutes": str(minutes),
        "_tapisMemoryMB": str(mem), "_tapisNodes": str(nodes),
        "_tapisStderrFilename": log_config["stderrFilename"],
        "_tapisStdoutFilename": log_config["stdoutFilename"],
        "_tapisSysBatchScheduler": system.batch_scheduler or "",
        "_tapisSysHost": system.host, "_tapisSysRootDir": system.root_dir,
        "_tapisTenant": tenant,
    }
    env = [{"key": k, "value": v, "description": None, "include": None, "notes": None}
           for k, v in sorted(tapis_env.items())]
    env += [{"key": fi["envKey"], "value": fi["targetPath"], "description": None,
             "include": None, "notes": None} for fi in inputs if fi.get("envKey")]
    env += user_env
    param_set = {"appArgs": app_args, "containerArgs": container, "schedulerOptions": sched,
                 "envVariables": env, "archiveFilter": archive_filter, "logConfig": log_config}
    tags = list(body.get("tags") or []) + list(attrs.get("tags") or [])
    fields: dict[str, Any] = dict.fromkeys(JOB_FIELDS)
    fields.update({
        "name": name, "owner": user, "tenant": tenant, "description": description,
        "status": "PENDING", "created": created, "lastUpdated": created, "uuid": job_uuid,
        "appId": app["id"], "appVersion": app["version"], "archiveOnAppError": archive_on_error,
        "dynamicExecSystem": False, "execSystemId": sys_id,
        "execSystemLogicalQueue": queue_name, "archiveSystemId": archive_sys_id,
        "dtnSystemInputDir": "!tapis_not_set", "dtnSystemOutputDir": "!tapis_not_set",
        "nodeCount": nodes, "coresPerNode": cores, "memoryMB": mem, "maxMinutes": minutes,
        "fileInputs": json.dumps(inputs), "parameterSet": json.dumps(param_set),
        "execSystemConstraints": None, "subscriptions": json.dumps([]), "blockedCount": 0,
        "remoteSubmitRetries": 0, "remoteChecksSuccess": 0, "remoteChecksFailed": 0,
        "tapisQueue": "tapis.jobq.submit.DefaultQueue", "visible": True, "createdby": user,
        "createdbyTenant": tenant, "tags": tags, "jobType": job_type,
        "mpiCmd": body.get("mpiCmd") or attrs.get("mpiCmd"),
        "cmdPrefix": body.get("cmdPrefix") or attrs.get("cmdPrefix"), "sharedAppCtx": "",
        "sharedAppCtxAttribs": [], "notes": json.dumps(body.get("notes") or {}),
        "mpi": bool(body.get("isMpi") or attrs.get("isMpi")), **dirs,
    })
    extras = {"app": copy.deepcopy(app), "system": system, "queue": queue,
              "param_set": param_set, "inputs": inputs}
    return fields, extras
