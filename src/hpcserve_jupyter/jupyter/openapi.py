"""The OpenAPI 3 document of the extension, served at GET /hpcserve/api/openapi.json.

Written out by hand (it is the contract); tests/jupyter checks that it lists exactly the routes
and methods the server registers.
"""

from __future__ import annotations

from typing import Any

from .._version import __version__
from .base import INT64_MAX
from .bodies import ExtendBody, JobBody, JupyterAiBody, KeyBody, LaunchBody, RelaunchBody

JSON = "application/json"
NDJSON = "application/x-ndjson"
NO_NUL = "^[^\\u0000]*$"  # JSON Schema pattern: no NUL character
# The proxied path as one (percent-encoded) path parameter: what proxy.safe_path refuses with a
# 400 is excluded: '/' (it arrives as %2F, an encoded slash), backslash, '@', ':' (a scheme),
# NUL, and a `..` segment. No lookahead, so that schema-driven generators (hypothesis'
# from_regex) handle it: "", one char, two chars but not "..", three or more.
_PC = r"[^/\\@:\u0000]"
_PD = r"[^/\\@:.\u0000]"
PROXY_PATH = rf"^(?:{_PC}?|{_PD}{_PC}|\.{_PD}|{_PC}{{3,}})$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _error(description: str, schema: str = "Error") -> dict[str, Any]:
    return _json(_ref(schema), description)


def _gw_error(description: str) -> dict[str, Any]:
    """An error of the OpenAI-compatible gateway: OpenAI's shape, so SDKs show the message."""
    return _error(description, "OpenAIError")


def _param(name: str, where: str, description: str, schema: dict[str, Any] | None = None,
           required: bool | None = None) -> dict[str, Any]:
    return {"name": name, "in": where, "description": description,
            "required": where == "path" if required is None else required,
            "schema": schema or {"type": "string"}}


ID = _param("id", "path", "session id or name")
# What a launch's answer leads to (OpenAPI links: clients and stateful testers follow them).
LAUNCHED_LINKS = {
    op: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
    for op in ("getSession", "stopSession", "keepaliveSession", "sessionLogs")}
JOB_ID = _param("id", "path", "job id or name")
# What a submission's answer leads to.
SUBMITTED_LINKS = {
    op: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
    for op in ("getJob", "cancelJob", "jobResults", "jobLogs")}
TARGET = _param("name", "path", "target name", {"type": "string", "example": "local"})
_DENIED = ("not authenticated or not authorized (Jupyter's token, cookie or identity "
           "provider)")
DENIED = {"403": _error(_DENIED)}
GW_DENIED = {"403": _gw_error(_DENIED + ", or a gateway key whose scope lacks the session"),
             "401": _gw_error("a gateway key (hsk_...) that was revoked or never issued")}
NO_SESSION = {"404": _error("no such session")}
NO_JOB = {"404": _error("no such job"),
          "400": _error("the name matches several live jobs (use the id), or a bad query "
                        "parameter")}
BAD_QUERY = {"400": _error("bad query parameter")}


def _op(summary: str, responses: dict[str, Any], *, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, tags: tuple[str, ...] = ("sessions",),
        description: str | None = None, operation_id: str | None = None,
        denied: dict[str, Any] = DENIED) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": list(tags),
                          "responses": {**responses, **denied}}
    if operation_id:
        op["operationId"] = operation_id
    if description:
        op["description"] = description
    if params:
        op["parameters"] = params
    if body:
        op["requestBody"] = body
    return op


def _schemas() -> dict[str, Any]:
    launch = LaunchBody.model_json_schema(ref_template="#/components/schemas/{model}")
    launch.pop("title", None)
    launch["example"] = {"recipe": "smollm2-135m", "target": "local"}
    submit = JobBody.model_json_schema(ref_template="#/components/schemas/{model}")
    submit.pop("title", None)
    submit["example"] = {"recipe": "smollm2-135m", "input": "prompts.jsonl", "concurrency": 4}
    obj = {"type": "object"}
    error_fields = {
        "type": {"type": "string"},
        "reason": {"type": "string", "description": "proxy/gateway: starting | gone | "
                   "unreachable | timeout | overloaded | degraded | bad-path"},
        "session_id": {"type": "string"}, "session_state": {"type": "string"}}
    detail = {"type": "string", "nullable": True, "description": "how to fix it"}
    return {
        "Error": {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string", "description": "what went wrong"},
            "detail": detail, **error_fields}},
        "OpenAIError": {
            "type": "object", "required": ["error"],
            "description": "an error of the OpenAI-compatible gateway, in OpenAI's shape",
            "properties": {
                "error": {"type": "object", "required": ["message"], "properties": {
                    "message": {"type": "string", "description": "what went wrong"},
                    "code": {"type": "integer", "description": "the HTTP status"},
                    "detail": detail, **error_fields}},
                "detail": detail}},
        "LaunchRequest": launch,
        "Session": {"type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "recipe": {"type": "string"},
            "backend": {"type": "string"}, "target": {"type": "string"},
            "state": {"type": "string", "enum": ["pending", "starting", "ready", "stopping",
                                                 "stopped", "failed", "timeout"]},
            "reason": {"type": "string"}, "endpoints": {"type": "array",
                                                        "items": {"type": "string"}},
            "model": {"type": "string"}, "api_flavour": {"type": "string"},
            "created_at": {"type": "number"}, "updated_at": {"type": "number"},
            "ready_at": {"type": "number", "nullable": True},
            "ended_at": {"type": "number", "nullable": True},
            "last_activity": {"type": "number"},
            "idle_timeout_s": {"type": "integer", "nullable": True},
            "max_lifetime_s": {"type": "integer", "nullable": True},
            "owner": {"type": "string"}, "unreachable": {"type": "boolean"},
            "degraded": {"type": "boolean", "description": "ready, but its engine (or some "
                         "replicas) fails its health checks: the gateway routes around them"},
            "degraded_reason": {"type": "string"},
            "degraded_endpoints": {"type": "array", "items": {"type": "string"}},
            "exit_code": {"type": "integer", "nullable": True}, "log_tail": {"type": "string"},
            "version": {"type": "integer"}, "age_s": {"type": "number"},
            "time_limit_s": {"type": "integer", "nullable": True, "description":
                             "the nearer of the target's own limit (SLURM --time, Tapis "
                             "maxMinutes, a pod's time_to_stop) and the max lifetime"},
            "time_left_s": {"type": "integer", "nullable": True, "description":
                            "seconds until that limit ends it (null: nothing limits it, "
                            "or it has ended)"},
            "ends_at": {"type": "string", "format": "date-time", "nullable": True},
            "idle_stop_in_s": {"type": "integer", "nullable": True, "description":
                               "while ready: seconds until idle autostop"},
            "resources": obj}},
        "SessionList": {"type": "object", "properties": {
            "sessions": {"type": "array", "items": _ref("Session")}}},
        "RecipeSummary": {"type": "object", "properties": {
            "name": {"type": "string"}, "description": {"type": "string"},
            "category": {"type": "string"}, "model": {"type": "string", "nullable": True},
            "backends": {"type": "array", "items": {"type": "string"}},
            "resources": obj, "replicas": {"type": "integer"}}},
        "Event": {"type": "object", "description": "a session or job change: a session "
                  "event holds `session`, a job event `job`; the first event (`snapshot`) "
                  "holds the live `sessions` and `jobs`", "properties": {
            "type": {"type": "string", "description": "snapshot | created | starting | ready | "
                     "stop | stopped | failed | timeout | unreachable | reachable | resync | "
                     "activity (requests moved a ready session's idle stop) ...; "
                     "notices (with `message`): expiring | idle-expiring | extended | degraded "
                     "| healthy; "
                     "for jobs also queued | running | progress (done/failed counts changed) | "
                     "done | cancel | cancelled | launch-failed"},
            "message": {"type": "string", "description": "what a notice says"},
            "session": _ref("Session"), "sessions": {"type": "array",
                                                     "items": _ref("Session")},
            "job": _ref("Job"), "jobs": {"type": "array", "items": _ref("Job")},
            "ts": {"type": "number"}}},
        "JobRequest": submit,
        "Job": _job_schema(),
        "JobList": {"type": "object", "properties": {
            "jobs": {"type": "array", "items": _ref("Job")}}},
        "ModelList": {"type": "object", "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")}}},
        "Model": {"type": "object", "properties": {
            "id": {"type": "string", "description": "the session name"},
            "object": {"type": "string"}, "created": {"type": "integer"},
            "owned_by": {"type": "string"}, "served_model": {"type": "string"},
            "session_id": {"type": "string"}, "recipe": {"type": "string"},
            "backend": {"type": "string"}, "target": {"type": "string"}}},
        "OpenAIRequest": {"type": "object", "required": ["model"], "properties": {
            "model": {"type": "string", "minLength": 1, "description": "session name or id, "
                      "or the served model name when one ready session serves it"},
            "stream": {"type": "boolean"}}, "additionalProperties": True},
        "Probe": {"type": "object", "additionalProperties": True},
        "KeyRequest": _key_request(),
        "GatewayKey": {"type": "object", "description": "a gateway key as listed (never the "
                       "key itself)", "properties": {
            "id": {"type": "string"}, "label": {"type": "string"},
            "scope": {"type": "array", "items": {"type": "string"},
                      "description": "session names or ids, or [\"*\"]: every session"},
            "prefix": {"type": "string", "description": "the key's first characters, to "
                       "recognise it"},
            "created_at": {"type": "number"},
            "last_used_at": {"type": "number", "nullable": True,
                             "description": "updated at most once a minute"},
            "revoked_at": {"type": "number", "nullable": True}}},
        "NewGatewayKey": {"allOf": [_ref("GatewayKey"), {"type": "object", "properties": {
            "key": {"type": "string", "description": "the key: shown in this answer only"}}}]},
        "GatewayKeyList": {"type": "object", "properties": {
            "keys": {"type": "array", "items": _ref("GatewayKey")}}},
    }


def _key_request() -> dict[str, Any]:
    schema = KeyBody.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("title", None)
    schema["example"] = {"label": "jupyter-ai", "sessions": ["smollm2-135m-1"]}
    return schema


def _key_paths(api: str) -> dict[str, Any]:
    key = _param("id", "path", "key id or label")
    tags = ("keys",)
    return {
        f"{api}/keys": {
            "get": _op("Gateway keys (revoked ones too; never the keys themselves)",
                       {"200": _json(_ref("GatewayKeyList"))}, tags=tags),
            "post": _op("Create a gateway key: accepted by /hpcserve/v1 only", {
                "201": _json(_ref("NewGatewayKey"), "created; `key` is never shown again"),
                "400": _error("bad body, label or scope"),
                "404": _error("a session of the scope does not exist"),
                "409": _error("an unrevoked key has this label already")},
                body={"required": True, "content": {JSON: {"schema": _ref("KeyRequest")}}},
                tags=tags, operation_id="createGatewayKey",
                description="A gateway key authenticates to the OpenAI-compatible gateway "
                "(`Authorization: Bearer <key>`) for the sessions of its scope, and to no "
                "other route: give it to tools that keep keys in clear text instead of the "
                "Jupyter token.")},
        f"{api}/keys/{{id}}": {"delete": _op(
            "Revoke a gateway key (a revoked key: no-op)", {
                "200": _json(_ref("GatewayKey"), "the revoked key"),
                "404": _error("no such key")}, params=[key], tags=tags,
            operation_id="revokeGatewayKey")},
    }


def _jupyter_ai_paths(api: str) -> dict[str, Any]:
    body = JupyterAiBody.model_json_schema()
    body.pop("title", None)
    entry = {"type": "object", "properties": {
        "session_id": {"type": "string"}, "name": {"type": "string"},
        "model_id": {"type": "string", "example": "hosted_vllm/smollm2-135m-1"},
        "entry_id": {"type": "string"}, "api_base": {"type": "string"},
        "default": {"type": "boolean"}, "key_id": {"type": "string"},
        "config": {"type": "string", "description": "Jupyter AI's settings file"}}}
    return {f"{api}/sessions/{{id}}/jupyter-ai": {
        "post": _op("Use the session in Jupyter AI", {
            "200": _json(entry, "registered (again: the entry and its key replaced)"),
            "400": _error("bad body, not a chat session, or Jupyter AI's settings file is "
                          "broken"), "409": _error("the session has ended (or is stopping)"),
            **NO_SESSION},
            params=[ID], body={"required": False, "content": {JSON: {"schema": body}}},
            operation_id="useInJupyterAi",
            description="Adds the session to Jupyternaut's custom models (its settings file "
            "in the Jupyter data dir), chatting through this server's gateway with a gateway "
            "key scoped to the session; removed, and the key revoked, when the session ends."),
        "delete": _op("Remove the session from Jupyter AI (and revoke its key)", {
            "200": _json({"type": "object", "properties": {
                "session_id": {"type": "string"}, "name": {"type": "string"},
                "removed": {"type": "boolean"}}}), **NO_SESSION},
            params=[ID], operation_id="dropFromJupyterAi")}}


def _lifetime_paths(api: str) -> dict[str, Any]:
    relaunch = RelaunchBody.model_json_schema()
    extend = ExtendBody.model_json_schema()
    for schema in (relaunch, extend):
        schema.pop("title", None)
    return {
        f"{api}/sessions/{{id}}/relaunch": {"post": _op(
            "Launch a new session like this one", {
                "201": _json(_ref("Session"), "launched; Location names the new session"),
                "400": _error("bad body or name, or the recipe no longer resolves"),
                "409": _error("a live session has that name, or the target could not start "
                              "it (the new session is `failed`)"),
                "503": _error("the target does not answer (SSH, scheduler, Pods API)"),
                **NO_SESSION},
            params=[ID], body={"required": False, "content": {JSON: {"schema": relaunch}}},
            operation_id="relaunchSession",
            description="Same recipe, backend, target and overrides (the session may have "
            "ended); the name gets the next number unless one is given.")},
        f"{api}/sessions/{{id}}/extend": {"post": _op(
            "Give a live session more time", {
                "200": _json({"type": "object", "properties": {
                    "session": _ref("Session"), "message": {
                        "type": "string", "description": "what the target answered"}}}),
                "400": _error("bad time or body"),
                "409": _error("the session has ended, SLURM refused (its own words), past "
                              "the bound, or nothing limits the session"),
                "503": _error("the target does not answer (SSH, scheduler)"),
                **NO_SESSION},
            params=[ID], body={"required": True, "content": {JSON: {"schema": extend}}},
            operation_id="extendSession",
            description="SLURM: scontrol update TimeLimit+= (usually only an operator may "
            "raise it); every target: the max lifetime (autostop), within the server's "
            "max_lifetime_bound.")},
    }


def _metrics_paths(api: str) -> dict[str, Any]:
    num = {"type": "number", "nullable": True}
    gpu = {"type": "object", "properties": {
        "index": {"type": "integer"}, "uuid": {"type": "string"}, "name": {"type": "string"},
        "utilization_pct": num, "memory_used_mib": num, "memory_total_mib": num}}
    schema = {"type": "object", "properties": {
        "session_id": {"type": "string"},
        "available": {"type": "boolean", "description": "the engine's metrics were scraped"},
        "reason": {"type": "string", "nullable": True, "description": "why not (no metrics "
                   "endpoint, not ready, the scrape failed)"},
        "requests_running": num, "requests_waiting": num, "prompt_tokens_total": num,
        "generation_tokens_total": num, "generation_tokens_per_s": num,
        "prompt_tokens_per_s": num, "kv_cache_usage": {**num, "description": "0..1"},
        "scraped_at": {"type": "string", "format": "date-time"},
        "history": {"type": "array", "description": "[epoch s, generated tokens/s, requests "
                    "running] per 10 s over the last minutes (a sparkline's points)",
                    "items": {"type": "array", "items": num}},
        "gpus": {"type": "object", "properties": {
            "available": {"type": "boolean"}, "absent": {"type": "boolean",
                                                         "description": "there is no GPU"},
            "reason": {"type": "string", "nullable": True},
            "gpus": {"type": "array", "items": gpu}}}}}
    return {f"{api}/sessions/{{id}}/metrics": {"get": _op(
        "Live serving metrics and GPU use", {"200": _json(schema), **NO_SESSION},
        params=[ID], operation_id="sessionMetrics",
        description="Read from the engine's own Prometheus endpoint (vLLM, SGLang, TGI, "
        "llama-server) at most once per monitor tick, and only while someone asks: each call "
        "keeps the session watched for a minute. GPU use from nvidia-smi where the session "
        "runs (SLURM: srun --overlap), at most every 30 s.")}}


def _job_schema() -> dict[str, Any]:
    """A job as GET /hpcserve/api/jobs/{id} shows it (jobs.Job.public())."""
    text, integer, number = {"type": "string"}, {"type": "integer"}, {"type": "number"}
    return {"type": "object", "properties": {
        "id": text, "name": text, "kind": {"type": "string", "enum": ["batch", "task"]},
        "recipe": text, "backend": text, "target": text,
        "input": {"type": "string", "description": "the input file (on the server's machine)"},
        "output": {"type": "string", "description": "the output JSONL (on the server's "
                   "machine); GET .../results serves it"},
        "state": {"type": "string", "enum": ["pending", "starting", "running", "done", "failed",
                                             "cancelled", "timeout"]},
        "reason": text, "concurrency": integer,
        "total": {"type": "integer", "description": "request lines in the input"},
        "done": {"type": "integer", "description": "lines answered so far (errors included)"},
        "failed": {"type": "integer", "description": "lines answered with an error"},
        "resumed": {"type": "integer", "description": "answers carried over from an earlier "
                    "run"},
        "resume_of": {"type": "string", "nullable": True},
        "created_at": number, "updated_at": number,
        "running_at": {"type": "number", "nullable": True},
        "ended_at": {"type": "number", "nullable": True},
        "owner": text, "unreachable": {"type": "boolean"},
        "cancel_requested": {"type": "boolean"},
        "fetched": {"type": "boolean", "description": "the output was copied back from the "
                    "target"},
        "exit_code": {"type": "integer", "nullable": True}, "log_tail": text,
        "version": integer, "elapsed_s": number,
        "eta_s": {"type": "number", "nullable": True, "description": "seconds left at this "
                  "run's rate so far (null until there is one)"},
        "resources": {"type": "object", "description": "gpus, cpus, memory_mb, time_s (null: "
                      "not set)"}}}


def _job_paths(api: str) -> dict[str, Any]:
    job = _json(_ref("Job"), "the job")
    tags = ("jobs",)
    unreachable = {"503": _error("the target is unreachable; state unknown")}
    return {
        f"{api}/jobs": {
            "get": _op("Jobs (all, or live only)", {"200": _json(_ref("JobList")),
                                                     **BAD_QUERY},
                       params=[_param("live", "query", "1: live jobs only",
                                      {"type": "boolean"}, False)], tags=tags),
            "post": _op("Submit a batch job over an OpenAI Batch file", {
                "201": {**_json(_ref("Job"), "submitted (pending); follow it on /events"),
                        "links": SUBMITTED_LINKS},
                "400": _error("bad body, unknown field, invalid override or name, or a "
                              "malformed input file (every bad line listed; nothing is run)"),
                "404": _error("unknown recipe, backend, target, or job to resume"),
                "409": _error("the target could not start it (the job is `failed`)"),
                **unreachable},
                body={"required": True, "content": {JSON: {"schema": _ref("JobRequest")}}},
                tags=tags, operation_id="submitJob",
                description="The input is refused before anything runs when any line is "
                "malformed: not JSON, missing or duplicate custom_id, unknown url, "
                "`stream: true`, or a second model.")},
        f"{api}/jobs/{{id}}": {
            "get": _op("One job", {"200": job, **NO_JOB}, params=[JOB_ID], tags=tags,
                       operation_id="getJob"),
            "delete": _op("Cancel a job (its output so far is kept; an ended job: no-op)", {
                "200": job, **NO_JOB, **unreachable}, params=[JOB_ID], tags=tags,
                operation_id="cancelJob")},
        f"{api}/jobs/{{id}}/results": {"get": _op("The job's output JSONL as it is now", {
            "200": {"description": "one JSON object per answered input line, `{id, custom_id, "
                    "response: {status_code, body} | null, error}` (complete lines only)",
                    "content": {NDJSON: {"schema": {"type": "string"}}}},
            **NO_JOB, "409": _error("the job has no output yet"), **unreachable},
            params=[JOB_ID], tags=tags, operation_id="jobResults")},
        f"{api}/jobs/{{id}}/logs": {"get": _op("The job's log (driver and engine)", {
            "200": {"description": "log text (streamed with follow=1, until the job ends)",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            **NO_JOB, **unreachable},
            params=[JOB_ID, _param("tail", "query", "last N lines (0: all); default 100",
                                   {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
                                   False),
                    _param("follow", "query", "1: stream new text until the job ends",
                           {"type": "boolean"}, False)],
            tags=tags, operation_id="jobLogs")},
    }


def _paths() -> dict[str, Any]:
    api, gw = "/hpcserve/api", "/hpcserve/v1"
    session = _json(_ref("Session"), "the session")
    ready_errors = {
        "400": _gw_error("bad body or model field"),
        "404": _gw_error("no session serves this model"),
        "429": _gw_error("the session's replicas are busy and its queue is full (Retry-After)"),
        "502": _gw_error("the session is gone or its engine unreachable"),
        "503": _gw_error("the session is still starting (Retry-After)"),
        "504": _gw_error("the engine did not answer in time")}

    def inference(what: str) -> dict[str, Any]:
        return {"post": _op(
            f"OpenAI {what}, routed by `model` to a ready session", {
                "200": {"description": "the engine's answer (text/event-stream when stream=true)",
                        "content": {JSON: {"schema": {"type": "object"}},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                **ready_errors},
            body={"required": True, "content": {JSON: {"schema": _ref("OpenAIRequest")}}},
            tags=("gateway",), denied=GW_DENIED)}

    proxy_op = {
        "200": {"description": "the session's answer, streamed (any status the engine gives)"},
        "400": _error("the path contains '..', an absolute URL, '@', an encoded slash or a "
                      "backslash"),
        "404": _error("no such session"),
        "429": _error("POST/PUT/PATCH: the session's replicas are busy (Retry-After)"),
        "502": _error("the session is gone or unreachable"),
        "503": _error("the session is starting (Retry-After)"),
        "504": _error("the engine did not answer in time")}
    proxy_params = [ID, _param(
        "path", "path", "path on the session's endpoint (may be empty; slashes allowed when "
        "sent as `/`; refused with 400: `..` segments, encoded slashes, backslashes, `@`, "
        "a scheme, control characters)", {"type": "string", "pattern": PROXY_PATH})]
    proxy = {m: _op(f"{m.upper()} to the session's endpoint", proxy_op, params=proxy_params,
                    tags=("proxy",),
                    description="Request and response bodies stream both ways. Jupyter "
                    "cookies, the client's Authorization and XSRF headers are removed; the "
                    "session's API key is added.")
             for m in ("get", "head", "post", "put", "patch", "delete", "options")}

    return {
        f"{api}/openapi.json": {"get": _op("This document", {"200": _json({"type": "object"})},
                                           tags=("meta",))},
        f"{api}/recipes": {"get": _op("Recipes, and the files that failed to load", {
            "200": _json({"type": "object", "properties": {
                "recipes": {"type": "array", "items": _ref("RecipeSummary")},
                "errors": {"type": "object", "additionalProperties": {"type": "string"}}}})},
            tags=("catalog",))},
        f"{api}/recipes/{{name}}": {"get": _op("One recipe in full", {
            "200": _json({"type": "object"}), "404": _error("unknown recipe"),
            "400": _error("the recipe file is broken (file:line: field: problem)")},
            params=[_param("name", "path", "recipe name", {"type": "string",
                                                            "example": "smollm2-135m"})],
            tags=("catalog",))},
        f"{api}/targets": {"get": _op("Targets (where sessions run)", {
            "200": _json({"type": "object", "properties": {
                "targets": {"type": "array", "items": {"type": "object"}}}}),
            "400": _error("the targets file is broken")}, tags=("catalog",))},
        f"{api}/targets/{{name}}/secrets": {"get": _op(
            "The secrets a target reads from environment variables (names only)", {
                "200": _json({"type": "object", "properties": {"secrets": {
                    "type": "array", "items": {"type": "object", "properties": {
                        "label": {"type": "string"}, "env": {"type": "string"},
                        "is_set": {"type": "boolean"}}}}}}),
                "404": _error("unknown target")},
            params=[TARGET], tags=("catalog",)),
            "put": _op("Set secrets in the server's environment (names from GET only)", {
                "204": {"description": "set (values are never echoed)"},
                "400": _error("a name the target does not read, or a bad body"),
                "404": _error("unknown target")},
                params=[TARGET], tags=("catalog",),
                body={"required": True, "content": {JSON: {"schema": {
                    "type": "object", "description": "environment variable name -> value "
                    "(only the names GET lists for this target)",
                    "additionalProperties": {"type": "string", "pattern": NO_NUL}}}}})},
        f"{api}/sessions": {
            "get": _op("Sessions (all, or live only)", {"200": _json(_ref("SessionList")),
                                                         **BAD_QUERY},
                       params=[_param("live", "query", "1: live sessions only",
                                      {"type": "boolean"}, False)]),
            "post": _op("Launch a session", {
                "201": {**_json(_ref("Session"), "launched (pending); follow it on /events"),
                        "links": LAUNCHED_LINKS},
                "400": _error("bad body, unknown field, invalid override or name"),
                "404": _error("unknown recipe, backend or target"),
                "409": _error("a live session has that name, or the target could not start "
                              "it: port in use, no free GPU... (the session is `failed`)"),
                "503": _error("the target does not answer (SSH, scheduler, Pods API)")},
                body={"required": True,
                      "content": {JSON: {"schema": _ref("LaunchRequest")}}},
                operation_id="launchSession")},
        f"{api}/sessions/{{id}}": {
            "get": _op("One session", {"200": session, **NO_SESSION}, params=[ID],
                       operation_id="getSession"),
            "delete": _op("Stop a session (a stopped session: no-op)", {
                "200": session, **NO_SESSION,
                "503": _error("the target is unreachable; state unknown")}, params=[ID],
                operation_id="stopSession")},
        f"{api}/sessions/{{id}}/keepalive": {"post": _op("Reset the idle timer", {
            "200": session, **NO_SESSION, "409": _error("the session has ended")},
            params=[ID], operation_id="keepaliveSession")},
        f"{api}/sessions/{{id}}/logs": {"get": _op("The engine's log", {
            "200": {"description": "log text (streamed with follow=1, until the session ends)",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "400": _error("bad query parameter"), **NO_SESSION},
            params=[ID, _param("tail", "query", "last N lines (0: all); default 100",
                               {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
                               False),
                    _param("follow", "query", "1: stream new text until the session ends",
                           {"type": "boolean"}, False),
                    _param("from_start", "query", "with follow: 0 starts at the end",
                           {"type": "boolean"}, False)], operation_id="sessionLogs")},
        f"{api}/sessions/{{id}}/v1/live": {"get": _op("Liveness: the engine runs", {
            "200": _json(_ref("Probe"), "live"), "503": _json(_ref("Probe"), "not live"),
            **NO_SESSION}, params=[ID], tags=("gateway",))},
        f"{api}/sessions/{{id}}/v1/ready": {"get": _op("Readiness: ready and healthy now", {
            "200": _json(_ref("Probe"), "ready"), "503": _json(_ref("Probe"), "not ready"),
            **NO_SESSION}, params=[ID], tags=("gateway",))},
        f"{api}/sessions/{{id}}/v1/model": {"get": _op(
            "What the session serves (and the engine's /v1/models)",
            {"200": _json(_ref("Probe")), **NO_SESSION}, params=[ID], tags=("gateway",))},
        **_job_paths(api),
        **_key_paths(api),
        **_jupyter_ai_paths(api),
        **_lifetime_paths(api),
        **_metrics_paths(api),
        f"{api}/refresh": {"post": _op("One monitor pass now; the live sessions", {
            "200": _json(_ref("SessionList"))})},
        f"{api}/events": {"get": _op(
            "Server-Sent Events: a snapshot, then every session and job change", {
                "200": {"description": "`data:` lines each holding an Event; `: keepalive` "
                        "comments in between",
                        "content": {"text/event-stream": {"schema": _ref("Event")}}}},
            tags=("events",))},
        f"{api}/events/log": {"get": _op("The stored event log", {
            "200": _json({"type": "object", "properties": {
                "events": {"type": "array", "items": {"type": "object"}}}}),
            "400": _error("bad query parameter"), **NO_SESSION},
            params=[_param("session", "query", "only this session", required=False),
                    _param("after", "query", "events after this sequence number",
                           {"type": "integer", "minimum": 0, "maximum": INT64_MAX}, False)],
            tags=("events",))},
        "/hpcserve/proxy/{id}/{path}": proxy,
        f"{gw}/models": {"get": _op("Ready sessions, as OpenAI models (id = session name)", {
            "200": _json(_ref("ModelList"))}, tags=("gateway",), denied=GW_DENIED)},
        f"{gw}/models/{{model}}": {"get": _op("One session as an OpenAI model", {
            "200": _json(_ref("Model")), "404": _gw_error("no session serves this model"),
            "400": _gw_error("several sessions serve this model")},
            params=[_param("model", "path", "session name or id, or a served model name")],
            tags=("gateway",), denied=GW_DENIED)},
        f"{gw}/chat/completions": inference("chat completion"),
        f"{gw}/completions": inference("completion"),
        f"{gw}/embeddings": inference("embeddings"),
    }


def document(base_url: str = "/") -> dict[str, Any]:
    paths = _paths()
    for path, item in paths.items():  # the gateway also takes gateway keys
        if path.startswith("/hpcserve/v1/"):
            for op in item.values():
                op["security"] = [{"jupyterToken": []}, {"jupyterBearer": []},
                                  {"gatewayKey": []}]
    return {
        "openapi": "3.0.3",
        "info": {"title": "hpcserve-jupyter", "version": __version__,
                 "description": "Launch, watch, prompt and stop AI serving sessions, and run "
                 "one-off batch jobs, through the Jupyter server. Authenticate as for "
                 "Jupyter's own API: `Authorization: token <t>` (or `Bearer <t>`), or the "
                 "login cookie with the X-XSRFToken header."},
        "servers": [{"url": base_url.rstrip("/") or "/"}],
        "security": [{"jupyterToken": []}, {"jupyterBearer": []}],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "jupyterToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                                 "description": "`token <Jupyter token>`"},
                "jupyterBearer": {"type": "http", "scheme": "bearer",
                                  "description": "the Jupyter token as a bearer token"},
                "gatewayKey": {"type": "http", "scheme": "bearer",
                               "description": "a gateway key (`hsk_...`, POST "
                               "/hpcserve/api/keys): /hpcserve/v1 only, for its sessions"}}},
    }
