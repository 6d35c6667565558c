"""Contract of the Jobs, Apps, Systems and Files routes against tapipy's bundled specs.

(test_contract.py checks that every route in ROUTES, these included, exists with its method,
path and operationId, and is the URL tapipy builds.)  Here:

* the path parameters of each route are the spec's, and every query parameter the stand-in
  reads is declared by the spec (search conditions ride in ``_tapis_query_parameters``);
* the field tables the stand-in uses equal the spec's schemas (ReqSubmitJob, Job, JobListDTO,
  ReqPostApp, ReqPutApp, JobAttributes, TapisSystem, LogicalQueue, FileInfo) and the required
  body fields are the ones it enforces;
* with the real cluster: every new route answers through tapipy with a body that validates
  against the spec's response schema (raw bytes where the spec says so).
"""

from __future__ import annotations

import stat as stat_mod
from types import SimpleNamespace

import jsonschema
import pytest
import requests
from tapipy.tapis import Tapis

from .apps_api import JOB_ATTRIBUTE_DEFAULTS, REQ_POST_APP_FIELDS, REQ_PUT_APP_FIELDS
from .common import ApiError
from .job_request import JOB_FIELDS, REQ_SUBMIT_FIELDS, build_job
from .job_search import SUMMARY_FIELDS
from .server import ROUTES, Route, StandIn
from .slurm_exec import ExecSystem, LogicalQueue, file_info
from .test_contract import deref, drop_none, load_spec, response_schema
from .zip_app import app_archive, wait_status

JAVA = ("jobs", "apps", "systems", "files")
JAVA_ROUTES = [r for r in ROUTES if r.spec in JAVA]
#: Query parameters each handler reads (besides search conditions).
READ_QUERY = {
    "getJobList": {"limit", "skip", "orderBy", "computeTotal", "listType"},
    "getJobSearchList": {"limit", "skip", "orderBy", "computeTotal", "listType", "select"},
    "getJobHistory": {"limit", "skip"},
    "getJobOutputList": {"limit", "skip", "allowIfRunning"},
    "getJobOutputDownload": {"allowIfRunning", "compress"},
    "getApps": {"select", "showDeleted", "limit", "skip"},
    "getSystems": {"select"},
    "listFiles": {"recurse", "offset", "limit"},
    "getContents": {"zip", "range"},
    "getStatInfo": {"followLinks"},
    "runLinuxNativeOp": {"recursive"},
}


def route_id(route: Route) -> str:
    return f"{route.method} {route.template}"


def operation(route: Route) -> dict:
    return load_spec(route.spec)["paths"][route.spec_path][route.method.lower()]


def params(route: Route, where: str) -> set[str]:
    spec = load_spec(route.spec)
    out = set()
    for p in operation(route).get("parameters", []):
        p = deref(p, spec)
        if p["in"] == where:
            out.add(p["name"])
    return out


def props(spec: str, schema: str) -> list[str]:
    return list(load_spec(spec)["components"]["schemas"][schema]["properties"])


@pytest.mark.parametrize("route", JAVA_ROUTES, ids=route_id)
def test_path_and_query_parameters_are_the_specs(route: Route):
    assert params(route, "path") == set(route.regex.groupindex)
    read = READ_QUERY.get(route.operation_id, set())
    declared = params(route, "query") | params(route, "header")
    assert read <= declared, read - declared


def test_required_operations_are_served():
    served = {(r.spec, r.operation_id) for r in JAVA_ROUTES}
    required = {("jobs", op) for op in (
        "submitJob", "getJob", "getJobStatus", "getJobList", "getJobSearchList", "cancelJob",
        "getJobOutputList", "getJobOutputDownload", "getJobHistory")} | {("apps", op) for op in (
            "createAppVersion", "getApp", "getAppLatestVersion", "putApp", "getApps",
            "deleteApp")} | {("systems", "getSystem"), ("systems", "getSystems")} | {
        ("files", op) for op in ("insert", "getContents", "listFiles", "mkdir", "delete",
                                 "getStatInfo", "runLinuxNativeOp")}
    assert required <= served, required - served


def test_field_tables_match_the_schemas():
    assert list(REQ_SUBMIT_FIELDS) == props("jobs", "ReqSubmitJob")
    assert list(JOB_FIELDS) == props("jobs", "Job")
    assert list(SUMMARY_FIELDS) == props("jobs", "JobListDTO")
    assert list(REQ_POST_APP_FIELDS) == props("apps", "ReqPostApp")
    assert list(REQ_PUT_APP_FIELDS) == props("apps", "ReqPutApp")
    assert list(JOB_ATTRIBUTE_DEFAULTS) == props("apps", "JobAttributes")
    system = ExecSystem(id="s", host="h", port=22, effective_user="u", key_file="k",
                        known_hosts="kh", queues=(LogicalQueue("q", "p"),))
    assert list(system.display("t", "o")) == props("systems", "TapisSystem")
    assert list(LogicalQueue("q", "p").display()) == props("systems", "LogicalQueue")
    attr = SimpleNamespace(st_mode=stat_mod.S_IFREG | 0o644, st_uid=1, st_gid=1, st_size=3,
                           st_mtime=0)
    assert set(file_info(system, "/a/b", attr)) == set(props("files", "FileInfo"))


def test_required_body_fields_are_enforced():
    jobs_schema = load_spec("jobs")["components"]["schemas"]["ReqSubmitJob"]
    assert sorted(jobs_schema["required"]) == ["appId", "appVersion", "name"]
    with pytest.raises(ApiError) as err:
        build_job({"description": "x"}, user="u", tenant="t", apps=None,
                  resolve_working_dir=lambda s: "/w")
    assert err.value.status == 400
    assert all(f in str(err.value.message) for f in jobs_schema["required"])
    apps_schema = load_spec("apps")["components"]["schemas"]["ReqPostApp"]
    assert sorted(apps_schema["required"]) == ["containerImage", "id", "version"]
    files = load_spec("files")["components"]["schemas"]
    assert files["MkdirRequest"]["required"] == ["path"]
    assert sorted(files["NativeLinuxOpRequest"]["required"]) == ["argument", "operation"]
    insert = operation(next(r for r in ROUTES if r.operation_id == "insert"))
    assert insert["requestBody"]["content"]["multipart/form-data"]["schema"]["required"] == \
        ["file"]


def test_java_envelope_on_errors(standin: StandIn, tapis: Tapis):
    """No exec system configured: systems/jobs answer their 404s in the Tapis envelope."""
    token = {"X-Tapis-Token": tapis.get_access_jwt()}
    resp = requests.get(f"{standin.base_url}/v3/systems/nosys", headers=token, timeout=10)
    assert resp.status_code == 404 and resp.json()["status"] == "error"
    resp = requests.get(f"{standin.base_url}/v3/jobs/nojob", headers=token, timeout=10)
    body = resp.json()
    # the live Jobs service answers an unknown uuid with 404 and a *success* envelope
    assert resp.status_code == 404 and body["status"] == "success"
    assert body["result"] == {"name": "nojob"} and body["version"] == "1.7.1"
    assert tapis.systems.getSystems() == []
    assert requests.get(f"{standin.base_url}/v3/jobs/list", timeout=10).status_code == 401


# ------------------------------------------------------------------------- with the cluster


def check_java(route_op: str, resp: requests.Response, status: int = 200) -> dict:
    route = next(r for r in JAVA_ROUTES if r.operation_id == route_op)
    assert resp.status_code == status == route.success_status
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert set(body) == {"status", "message", "version", "commit", "build", "metadata",
                         "result"}
    assert body["status"] == "success"
    jsonschema.Draft4Validator(response_schema(route, status)).validate(drop_none(body))
    return body


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_java_routes_answer_what_the_spec_declares(jobs_standin: StandIn, jtapis: Tapis):
    done: set[str] = set()
    base = jobs_standin.base_url
    token = {"X-Tapis-Token": jtapis.get_access_jwt()}

    def call(resource: str, op: str, **kw):
        result, debug = getattr(getattr(jtapis, resource), op)(_tapis_debug=True, **kw)
        route = next(r for r in JAVA_ROUTES if r.operation_id == op)
        check_java(op, debug.response, route.success_status)
        done.add(op)
        return result

    def raw(method: str, op: str, path: str, **kw) -> requests.Response:
        resp = requests.request(method, base + path, headers=token, timeout=30, **kw)
        done.add(op)
        return resp

    wd = jobs_standin.apps.hosts["testcluster"].working_dir().lstrip("/")
    bundle = app_archive()
    call("systems", "getSystem", systemId="testcluster")
    call("systems", "getSystems")
    check_java("insert", raw("POST", "insert", f"/v3/files/ops/testcluster/{wd}/app/a.tgz",
                             files={"file": ("a.tgz", bundle)}))
    check_java("mkdir", raw("POST", "mkdir", "/v3/files/ops/testcluster",
                            json={"path": f"{wd}/empty"}))
    call("files", "listFiles", systemId="testcluster", path=wd)
    call("files", "getStatInfo", systemId="testcluster", path=f"{wd}/app/a.tgz")
    call("files", "runLinuxNativeOp", systemId="testcluster", path=f"{wd}/app/a.tgz",
         operation="CHMOD", argument="644")
    data, debug = jtapis.files.getContents(_tapis_debug=True, systemId="testcluster",
                                           path=f"{wd}/app/a.tgz")
    assert data == bundle
    assert debug.response.status_code == 200
    assert debug.response.headers["Content-Type"] == "application/octet-stream"
    done.add("getContents")
    check_java("delete", raw("DELETE", "delete", f"/v3/files/ops/testcluster/{wd}/empty"))

    call("apps", "createAppVersion", id="contract", version="0.1", runtime="ZIP",
         containerImage=f"/{wd}/app/a.tgz", jobType="BATCH",
         jobAttributes={"execSystemId": "testcluster"})
    call("apps", "getApp", appId="contract", appVersion="0.1")
    call("apps", "getAppLatestVersion", appId="contract")
    call("apps", "putApp", appId="contract", appVersion="0.1", containerImage=f"/{wd}/app/a.tgz",
         runtime="ZIP", jobType="BATCH", description="updated",
         jobAttributes={"execSystemId": "testcluster"})
    call("apps", "getApps")

    job = call("jobs", "submitJob", name="contract-job", appId="contract", appVersion="0.1")
    wait_status(jtapis, job.uuid, {"FINISHED", "FAILED", "CANCELLED"})
    call("jobs", "getJob", jobUuid=job.uuid)
    call("jobs", "getJobStatus", jobUuid=job.uuid)
    call("jobs", "getJobHistory", jobUuid=job.uuid)
    call("jobs", "getJobList")
    call("jobs", "getJobSearchList", _tapis_query_parameters={"uuid.eq": job.uuid})
    call("jobs", "getJobOutputList", jobUuid=job.uuid, outputPath="/")
    data, debug = jtapis.jobs.getJobOutputDownload(_tapis_debug=True, jobUuid=job.uuid,
                                                   outputPath="tapisjob.out")
    assert debug.response.status_code == 200 and isinstance(data, bytes)
    assert debug.response.headers["Content-Type"] in operation(next(
        r for r in JAVA_ROUTES if r.operation_id == "getJobOutputDownload"))["responses"][
        "200"]["content"]
    done.add("getJobOutputDownload")
    # cancelJob's 200 needs a live job
    sleeper = jtapis.jobs.submitJob(name="contract-cancel", appId="contract", appVersion="0.1",
                                    maxMinutes=1)
    call("jobs", "cancelJob", jobUuid=sleeper.uuid)
    wait_status(jtapis, sleeper.uuid, {"CANCELLED", "FINISHED", "FAILED"})
    call("apps", "deleteApp", appId="contract")
    with pytest.raises(Exception):  # noqa: B017 - any tapipy error: the app is gone
        jtapis.apps.getApp(appId="contract", appVersion="0.1")
    assert done == {r.operation_id for r in JAVA_ROUTES}
