"""Contract: the stand-in serves only routes that tapipy's bundled OpenAPI specs define.

* every route in :data:`server.ROUTES` (except ``/standin/...``) exists with the same method
  and operationId in the bundled ``openapi_v3-*.yml`` (parsed with pyyaml), and is exactly the
  URL + method the real tapipy ``Operation`` builds (tapipy works from pickled copies of the
  specs in ``tapipy/specs``, so both are checked);
* success responses validate against the response schema of the operation in the spec;
* the field tables the stand-in hard-codes equal the spec's schemas;
* the volume file routes take the parameters and bodies the spec declares (a multipart
  ``file`` part, ``{path}`` with slashes, ``zip`` in the query) and answer raw bytes with a
  content type the spec lists.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import requests
import tapipy
import yaml
from tapipy.tapis import Tapis

from .server import (
    NETWORKING_DEFAULTS,
    NEW_POD_FIELDS,
    POD_DISPLAY_FIELDS,
    RESOURCES_DEFAULTS,
    ROUTES,
    UPDATE_POD_FIELDS,
    Route,
    StandIn,
)

RESOURCES_DIR = Path(tapipy.__file__).parent / "resources"
SPEC_FILES = {
    "pods": "openapi_v3-pods.yml",
    "authenticator": "openapi_v3-authenticator.yml",  # POST /v3/oauth2/tokens lives here
    "tenants": "openapi_v3-tenants.yml",
    "jobs": "openapi_v3-jobs.yml",
    "apps": "openapi_v3-apps.yml",
    "systems": "openapi_v3-systems.yml",
    "files": "openapi_v3-files.yml",
}
#: The routes of the Java services (Jobs, Apps, Systems, Files); see test_contract_jobs.py.
JAVA_SPECS = ("jobs", "apps", "systems", "files")
TAPIS_ROUTES = [r for r in ROUTES if r.spec is not None]
STANDIN_ROUTES = [r for r in ROUTES if r.spec is None]


@cache
def load_spec(name: str) -> dict[str, Any]:
    with open(RESOURCES_DIR / SPEC_FILES[name]) as f:
        return yaml.safe_load(f)


def route_id(route: Route) -> str:
    return f"{route.method} {route.template}"


# ------------------------------------------------------------------------- route table


def test_route_table_has_no_duplicates():
    keys = [(r.method, r.template) for r in ROUTES]
    assert len(keys) == len(set(keys))
    ops = [(r.spec, r.operation_id) for r in ROUTES]
    assert len(ops) == len(set(ops))


@pytest.mark.parametrize("route", TAPIS_ROUTES, ids=route_id)
def test_route_exists_in_bundled_spec(route: Route):
    spec = load_spec(route.spec)
    paths = spec["paths"]
    assert route.spec_path in paths, f"{route.spec_path} not in {SPEC_FILES[route.spec]}"
    operation = paths[route.spec_path].get(route.method.lower())
    assert operation is not None, (
        f"{route.method} not defined for {route.spec_path}; spec has "
        f"{sorted(k for k in paths[route.spec_path] if k != 'parameters')}")
    assert operation["operationId"] == route.operation_id
    # the status the stand-in answers on success is one the spec declares
    assert str(route.success_status) in operation["responses"]


@pytest.fixture(scope="module")
def offline_client() -> Tapis:
    # constructing a client with a tenant_id makes no request at all
    return Tapis(base_url="http://127.0.0.1:9", tenant_id="tacc", username="u", password="p")


@pytest.mark.parametrize("route", TAPIS_ROUTES, ids=route_id)
def test_route_is_what_tapipy_requests(route: Route, offline_client: Tapis):
    operation = getattr(getattr(offline_client, route.spec), route.operation_id)
    assert operation.http_method.upper() == route.method
    path = operation.path_name
    # Operation.__call__ prefixes /v3 when the spec path lacks it (the pods spec does)
    url_template = path if path.startswith("/v3/") else f"/v3{path}"
    assert url_template == route.template


def test_standin_only_routes_are_not_in_any_spec():
    assert STANDIN_ROUTES, "the stand-in exposes its local endpoints under /standin/"
    for route in STANDIN_ROUTES:
        assert route.template.startswith("/standin/")
        for name in SPEC_FILES:
            paths = load_spec(name)["paths"]
            assert route.template not in paths
            assert route.template.removeprefix("/v3") not in paths


def test_required_operations_are_served():
    served = {(r.spec, r.operation_id) for r in TAPIS_ROUTES}
    required = {("authenticator", "create_token")} | {("pods", op) for op in (
        "create_pod", "list_pods", "get_pod", "update_pod", "delete_pod", "start_pod",
        "stop_pod", "restart_pod", "get_pod_logs", "get_pod_credentials", "create_volume",
        "list_volumes", "get_volume", "delete_volume", "healthcheck", "upload_to_volume",
        "get_volume_contents", "list_volume_files")}
    assert required <= served, required - served


def test_start_stop_restart_are_get_in_tapipy(offline_client: Tapis):
    for op in ("start_pod", "stop_pod", "restart_pod"):
        assert getattr(offline_client.pods, op).http_method.upper() == "GET"


def test_token_route_is_in_the_authenticator_spec():
    op = load_spec("authenticator")["paths"]["/v3/oauth2/tokens"]["post"]
    assert op["operationId"] == "create_token"
    props = op["requestBody"]["content"]["application/json"]["schema"]
    props = deref(props, load_spec("authenticator"))["properties"]
    assert {"username", "password", "grant_type", "refresh_token"} <= set(props)


# ------------------------------------------------------------------------- field tables


def schema(name: str, spec: str = "pods") -> dict[str, Any]:
    return load_spec(spec)["components"]["schemas"][name]


def test_networking_defaults_match_spec():
    props = schema("models_pods__Networking")["properties"]
    assert set(NETWORKING_DEFAULTS) == set(props)
    for key, value in NETWORKING_DEFAULTS.items():
        assert props[key].get("default") == value, key


def test_resources_defaults_match_spec():
    props = schema("models_pods__Resources")["properties"]
    assert set(RESOURCES_DEFAULTS) == set(props)
    for key, value in RESOURCES_DEFAULTS.items():
        assert props[key]["default"] == value, key


def test_pod_field_tables_match_spec():
    assert list(NEW_POD_FIELDS) == list(schema("NewPod")["properties"])
    assert list(UPDATE_POD_FIELDS) == list(schema("UpdatePod")["properties"])
    assert list(POD_DISPLAY_FIELDS) == list(schema("PodResponseModel")["properties"])


# ------------------------------------------------------------------------- response bodies


def deref(node: Any, doc: dict[str, Any], depth: int = 0) -> Any:
    """Inline every local ``$ref`` (the specs have no recursive schemas)."""
    assert depth < 50, "recursive $ref"
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return deref(target, doc, depth + 1)
        return {k: deref(v, doc, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [deref(v, doc, depth + 1) for v in node]
    return node


def drop_none(value: Any) -> Any:
    """The FastAPI-generated spec lost ``nullable``; the service does return nulls."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def response_schema(route: Route, status: int) -> dict[str, Any]:
    spec = load_spec(route.spec)
    op = spec["paths"][route.spec_path][route.method.lower()]
    content = op["responses"][str(status)]["content"]["application/json"]
    return deref(content["schema"], spec)


def spec_operation(route: Route) -> dict[str, Any]:
    return load_spec(route.spec)["paths"][route.spec_path][route.method.lower()]


def check_stream(operation_id: str, debug, content_type: str) -> bytes:
    """A success answer that is raw bytes: the status and a content type the spec lists."""
    route = find_route("pods", operation_id)
    resp = debug.response
    assert resp.status_code == route.success_status
    assert resp.headers["Content-Type"] == content_type
    assert content_type in spec_operation(route)["responses"][str(resp.status_code)]["content"]
    return resp.content


class Answer:
    """What check_response reads from tapipy's Debug object, for a plain requests answer."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response


def find_route(spec: str, operation_id: str) -> Route:
    return next(r for r in ROUTES if r.spec == spec and r.operation_id == operation_id)


def check_response(spec: str, operation_id: str, debug) -> dict[str, Any]:
    route = find_route(spec, operation_id)
    resp = debug.response
    assert resp.headers["Content-Type"] == "application/json"  # exactly, no charset
    assert resp.status_code == route.success_status
    body = resp.json()
    assert set(body) == {"status", "message", "result", "version", "metadata"}
    assert body["status"] == "success"
    jsonschema.Draft4Validator(response_schema(route, resp.status_code)).validate(
        drop_none(body))
    return body


def test_responses_validate_against_spec_schemas(standin: StandIn, tapis: Tapis):
    exercised: set[tuple[str, str]] = set()

    def call(resource: str, operation_id: str, **kwargs):
        result, debug = getattr(getattr(tapis, resource), operation_id)(
            _tapis_debug=True, **kwargs)
        check_response(resource, operation_id, debug)
        exercised.add((resource, operation_id))
        return result, debug

    call("authenticator", "create_token", username="testuser", password="testpass",
         grant_type="password")
    call("tenants", "list_sites")
    call("tenants", "list_tenants")
    call("tenants", "get_tenant", tenant_id="tacc")
    # tapipy returns a str result as-is and then ignores _tapis_debug (no (result, debug)
    # tuple), so check healthcheck's HTTP response directly
    assert tapis.pods.healthcheck(_tapis_debug=True) == "I promise I'm healthy."
    resp = requests.get(f"{standin.base_url}/v3/healthcheck", timeout=10)
    check_response("pods", "healthcheck", type("Debug", (), {"response": resp}))
    exercised.add(("pods", "healthcheck"))
    call("pods", "create_volume", volume_id="contractvol", description="c", size_limit=16)
    call("pods", "list_volumes")
    call("pods", "get_volume", volume_id="contractvol")
    call("pods", "update_volume", volume_id="contractvol", description="changed")
    (Path(standin.volumes["contractvol"].path) / "f.txt").write_text("x")
    call("pods", "list_volume_files", volume_id="contractvol")
    # upload_to_volume answers a str result, which tapipy returns as it is (no debug tuple):
    # the same multipart request is checked on the wire
    written = tapis.pods.upload_to_volume(volume_id="contractvol", path="job/in.txt",
                                          file=("in.txt", io.BytesIO(b"hello\n")))
    assert isinstance(written, str) and "job/in.txt" in written
    resp = requests.post(f"{standin.base_url}/v3/pods/volumes/contractvol/upload/job/b.txt",
                         files={"file": ("b.txt", b"abc")}, timeout=10,
                         headers={"X-Tapis-Token": tapis.get_access_jwt()})
    check_response("pods", "upload_to_volume", Answer(resp))
    exercised.add(("pods", "upload_to_volume"))
    data, debug = tapis.pods.get_volume_contents(_tapis_debug=True, volume_id="contractvol",
                                                 path="job/in.txt")
    assert data == b"hello\n"
    assert check_stream("get_volume_contents", debug, "application/octet-stream") == data
    packed, debug = tapis.pods.get_volume_contents(_tapis_debug=True, volume_id="contractvol",
                                                   path="job", zip=True)
    check_stream("get_volume_contents", debug, "application/zip")
    assert sorted(zipfile.ZipFile(io.BytesIO(packed)).namelist()) == ["b.txt", "in.txt"]
    exercised.add(("pods", "get_volume_contents"))
    # bundled-spec volume_mounts shape; status OFF so nothing runs yet
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    call("pods", "create_pod", pod_id="contractpod", image="img", command=sleeper,
         status_requested="OFF",
         volume_mounts={"contractvol": {"type": "tapisvolume", "mount_path": "/data",
                                        "sub_path": ""}})
    call("pods", "list_pods")
    call("pods", "get_pod", pod_id="contractpod")
    call("pods", "update_pod", pod_id="contractpod", description="updated")
    call("pods", "get_pod_credentials", pod_id="contractpod")
    call("pods", "start_pod", pod_id="contractpod")  # STOPPED -> REQUESTED
    call("pods", "get_pod_logs", pod_id="contractpod")
    call("pods", "stop_pod", pod_id="contractpod")
    call("pods", "restart_pod", pod_id="contractpod")
    result, _ = call("pods", "delete_pod", pod_id="contractpod")
    assert result["result"] == ""
    call("pods", "delete_volume", volume_id="contractvol")

    assert exercised == {(r.spec, r.operation_id) for r in TAPIS_ROUTES
                         if r.spec not in JAVA_SPECS}


def test_live_shape_volume_mounts_are_outside_the_bundled_schema(standin: StandIn,
                                                                  tapis: Tapis):
    """The live/FlexServ shape (keyed by mount path, with source_id) is echoed back as the
    live service does; tapipy's bundled PodResponseModel does not allow ``source_id``."""
    tapis.pods.create_volume(volume_id="livevol")
    _, debug = tapis.pods.create_pod(
        _tapis_debug=True, pod_id="livepod", image="img", status_requested="OFF",
        volume_mounts={"/app/models": {"type": "tapisvolume", "source_id": "livevol",
                                       "sub_path": ""}})
    body = debug.response.json()
    assert body["result"]["volume_mounts"]["/app/models"]["source_id"] == "livevol"
    with pytest.raises(jsonschema.ValidationError) as err:
        jsonschema.Draft4Validator(response_schema(find_route("pods", "create_pod"), 200)
                                   ).validate(drop_none(body))
    assert "volume_mounts" in list(err.value.absolute_path)


def test_volume_file_routes_take_what_the_spec_declares():
    spec = load_spec("pods")
    for op_id, query in (("upload_to_volume", set()), ("get_volume_contents", {"zip"})):
        op = spec_operation(find_route("pods", op_id))
        params = op["parameters"]
        assert {p["name"] for p in params if p["in"] == "path"} == {"volume_id", "path"}
        assert {p["name"] for p in params if p["in"] == "query"} == query
    body = spec_operation(find_route("pods", "upload_to_volume"))["requestBody"]
    schema_ = deref(body["content"]["multipart/form-data"]["schema"], spec)
    assert schema_["required"] == ["file"] and schema_["properties"]["file"]["format"] == "binary"


def test_volume_files_through_tapipy(standin: StandIn, tapis: Tapis):
    """Binary bytes go up as tapipy's multipart body and come back unchanged, under a path
    with slashes; a missing file, an empty path and `..` are refused."""
    tapis.pods.create_volume(volume_id="filesvol")
    blob = bytes(range(256)) * 512 + b"\r\n--boundary-like\r\n"
    tapis.pods.upload_to_volume(volume_id="filesvol", path="a/b/c.bin",
                                file=("c.bin", io.BytesIO(blob)))
    upload = standin.calls_to("upload_to_volume")[-1]
    assert upload.status == 200 and upload.path == "/v3/pods/volumes/filesvol/upload/a/b/c.bin"
    assert upload.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert (standin.volumes["filesvol"].path / "a" / "b" / "c.bin").read_bytes() == blob
    assert tapis.pods.get_volume_contents(volume_id="filesvol", path="a/b/c.bin") == blob
    listed = tapis.pods.list_volume_files(volume_id="filesvol")
    assert [(f.name, f.type) for f in listed] == [("a", "dir")]
    token = {"X-Tapis-Token": tapis.get_access_jwt()}
    base = f"{standin.base_url}/v3/pods/volumes/filesvol"
    for path, status in (("a/none.txt", 404), ("a", 400), ("a/%2E%2E/%2E%2E/x", 400)):
        resp = requests.get(f"{base}/contents/{path}", headers=token, timeout=10)
        assert resp.status_code == status, path
        assert resp.json()["status"] == "error"
    resp = requests.post(f"{base}/upload/x.txt", files={"other": ("x", b"x")}, headers=token,
                         timeout=10)
    assert resp.status_code == 400 and "file" in " ".join(resp.json()["message"])
    resp = requests.get(f"{standin.base_url}/v3/pods/volumes/novol/contents/x", headers=token,
                        timeout=10)
    assert resp.status_code == 404


def test_error_envelopes(standin: StandIn, tapis: Tapis):
    token = tapis.get_access_jwt()
    base = standin.base_url
    headers = {"X-Tapis-Token": token, "Content-Type": "application/json"}

    resp = requests.post(f"{base}/v3/pods", data=json.dumps({"pod_id": "BAD", "image": "i"}),
                         headers=headers, timeout=10)
    assert resp.status_code == 400
    assert resp.headers["Content-Type"] == "application/json"
    body = resp.json()
    assert body["status"] == "error" and body["result"] is None
    assert isinstance(body["message"], list) and all(isinstance(m, str) for m in body["message"])

    resp = requests.get(f"{base}/v3/pods/nosuchpod", headers=headers, timeout=10)
    assert resp.status_code == 404 and resp.json()["status"] == "error"

    resp = requests.get(f"{base}/v3/pods", timeout=10)  # no token
    assert resp.status_code == 401
    assert resp.json()["message"] == "No Tapis access token found in the request."

    resp = requests.patch(f"{base}/v3/pods", headers=headers, timeout=10)
    assert resp.status_code == 405 and resp.json()["status"] == "error"

    resp = requests.get(f"{base}/v3/not/a/route", headers=headers, timeout=10)
    assert resp.status_code == 404 and resp.headers["Content-Type"] == "application/json"
