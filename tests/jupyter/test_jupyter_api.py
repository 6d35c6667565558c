"""The REST API under /hpcserve/api/ on a real jupyter_server: catalog, sessions, validation,
errors as JSON, the SSE event stream, and the OpenAPI document against the registered routes."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from tornado.httpclient import HTTPClientError

from hpcserve_jupyter.jupyter.routes import ROUTES
from hpcserve_jupyter.sessions import State

pytestmark = pytest.mark.timeout(60)


async def fetch_json(jp_fetch, *parts, **kwargs):
    response = await jp_fetch(*parts, **kwargs)
    return response.code, json.loads(response.body)


async def error_of(jp_fetch, *parts, **kwargs):
    with pytest.raises(HTTPClientError) as exc:
        await jp_fetch(*parts, **kwargs)
    body = json.loads(exc.value.response.body)
    assert "Traceback" not in exc.value.response.body.decode()
    return exc.value.code, body


# ---------------------------------------------------------------------- catalog


async def test_recipes_recipe_and_targets(jp_fetch):
    code, data = await fetch_json(jp_fetch, "hpcserve", "api", "recipes")
    assert code == 200
    names = [r["name"] for r in data["recipes"]]
    assert "smollm2-135m" in names and data["errors"] == {}
    code, recipe = await fetch_json(jp_fetch, "hpcserve", "api", "recipes", "smollm2-135m")
    assert recipe["backends"] == ["llama-cpp"] and recipe["category"] == "inference"
    code, targets = await fetch_json(jp_fetch, "hpcserve", "api", "targets")
    assert [t["name"] for t in targets["targets"]] == ["local"]


async def test_unknown_recipe_is_404_with_a_hint(jp_fetch):
    code, body = await error_of(jp_fetch, "hpcserve", "api", "recipes", "smollm2-135")
    assert code == 404
    assert body["error"] == "unknown recipe 'smollm2-135'"
    assert "smollm2-135m" in body["detail"]


# ---------------------------------------------------------------------- launch validation


@pytest.mark.parametrize(("body", "status", "message"), [
    ('{"recipe": "smollm2-135m", "bogus": 1}', 400, "unknown field 'bogus'"),
    ('{"recipe": "smollm2-135m", "gpus": 1, "tme": 2}', 400, "unknown fields 'gpus', 'tme'"),
    ('{"recipe": "smollm2-135m"', 400, "the request body is not valid JSON"),
    ("", 400, "the request body is empty"),
    ("[1, 2]", 400, "must be a JSON object, not list"),
    ('{"backend": "llama-cpp"}', 400, "missing field 'recipe'"),
    ('{"recipe": 3}', 400, "field 'recipe': Input should be a valid string"),
    ('{"recipe": "smollm2-135m", "overrides": "gpus=1"}', 400, "field 'overrides'"),
    ('{"recipe": "nope"}', 404, "unknown recipe 'nope'"),
    ('{"recipe": "smollm2-135m", "backend": "vllm"}', 400, "does not support backend 'vllm'"),
    ('{"recipe": "smollm2-135m", "target": "mars"}', 404, "mars"),
    ('{"recipe": "smollm2-135m", "overrides": {"gpu": 1}}', 400, "unknown override 'gpu'"),
    ('{"recipe": "smollm2-135m", "name": "bad name!"}', 400, "invalid session name"),
])
async def test_launch_rejects_bad_input_with_a_clear_message(jp_fetch, ext, body, status,
                                                             message):
    code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", method="POST",
                               body=body, allow_nonstandard_methods=True)
    assert code == status, err
    assert message in err["error"], err
    assert set(err) >= {"error", "detail"}
    if "unknown field" in message:
        assert err["detail"] == "allowed fields: recipe, backend, target, name, overrides"
    assert ext.manager.sessions() == []  # nothing recorded, nothing started


async def test_bad_query_parameters_are_400(jp_fetch, register, standin):
    s = register([standin.url])
    code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", s.id, "logs",
                               params={"tail": "ten"})
    assert code == 400 and "'tail' must be an integer" in err["error"]
    code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", params={"live": "maybe"})
    assert code == 400 and "'live'" in err["error"]


# ---------------------------------------------------------------------- sessions


async def test_sessions_get_keepalive_stop(jp_fetch, ext, register, standin):
    s = register([standin.url])
    code, data = await fetch_json(jp_fetch, "hpcserve", "api", "sessions")
    assert [x["id"] for x in data["sessions"]] == [s.id]
    assert "handle" not in data["sessions"][0] and "spec" not in data["sessions"][0]
    code, one = await fetch_json(jp_fetch, "hpcserve", "api", "sessions", s.name)
    assert one["id"] == s.id and one["state"] == "ready"
    before = ext.manager.store.get(s.id).last_activity
    code, kept = await fetch_json(jp_fetch, "hpcserve", "api", "sessions", s.id, "keepalive",
                                  method="POST", body="")
    assert kept["last_activity"] > before
    code, stopped = await fetch_json(jp_fetch, "hpcserve", "api", "sessions", s.id,
                                     method="DELETE")
    assert stopped["state"] == "stopped"
    code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", s.id, "keepalive",
                               method="POST", body="")
    assert code == 409 and "nothing to keep alive" in err["error"]
    code, live = await fetch_json(jp_fetch, "hpcserve", "api", "sessions", params={"live": "1"})
    assert live["sessions"] == []
    code, log = await fetch_json(jp_fetch, "hpcserve", "api", "events", "log",
                                 params={"session": s.id})
    assert [e["kind"] for e in log["events"]] == ["created", "keepalive", "stop", "stopped"]


async def test_unknown_session_is_404_json(jp_fetch):
    for method, parts in [("GET", ()), ("DELETE", ()), ("POST", ("keepalive",)),
                          ("GET", ("logs",)), ("GET", ("v1", "ready"))]:
        kwargs = {"body": ""} if method == "POST" else {}
        code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", "nosuch", *parts,
                                   method=method, **kwargs)
        assert code == 404 and err["error"] == "no session 'nosuch'", (method, parts)


async def test_logs_of_a_session_without_engine_is_its_log_tail(jp_fetch, ext, register,
                                                                standin):
    s = register([standin.url])
    response = await jp_fetch("hpcserve", "api", "sessions", s.id, "logs")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain")


# ---------------------------------------------------------------------- events (SSE)


async def test_event_stream_delivers_state_changes(ext, register, standin, base,
                                                   jp_auth_header):
    s = register([standin.url])
    seen: list[dict] = []
    comments = 0

    async def read_events() -> None:
        nonlocal comments
        async with httpx.AsyncClient(timeout=20) as client, client.stream(
                "GET", base + "hpcserve/api/events", headers=jp_auth_header) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    comments += 1
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                    if seen[-1].get("type") == "stopped":
                        return

    reader = asyncio.ensure_future(read_events())
    while not seen:
        await asyncio.sleep(0.05)
    assert seen[0]["type"] == "snapshot"
    assert [x["id"] for x in seen[0]["sessions"]] == [s.id]
    await asyncio.sleep(0.8)  # a keepalive comment or two (interval 0.3 s in these tests)
    async with httpx.AsyncClient() as client:
        r = await client.delete(base + f"hpcserve/api/sessions/{s.id}", headers=jp_auth_header)
        assert r.status_code == 200
    await asyncio.wait_for(reader, 10)
    kinds = [(e["type"], e["session"]["state"]) for e in seen[1:]]
    assert kinds == [("stop", "stopping"), ("stopped", "stopped")]
    assert comments >= 1
    for _ in range(50):  # the server notices the closed connection and unsubscribes
        if not ext.manager._subscribers:
            break
        await asyncio.sleep(0.05)
    assert not ext.manager._subscribers


async def test_event_stream_ends_when_the_client_goes(ext, base, jp_auth_header):
    async with httpx.AsyncClient(timeout=5) as client, client.stream(
            "GET", base + "hpcserve/api/events", headers=jp_auth_header) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                break
    assert len(ext.manager._subscribers) <= 1
    for _ in range(50):
        if not ext.manager._subscribers:
            break
        await asyncio.sleep(0.05)
    assert not ext.manager._subscribers


# ---------------------------------------------------------------------- OpenAPI


def registered_routes(serverapp) -> dict[str, set[str]]:
    """{OpenAPI path: methods} of the handlers the server actually registered for hpcserve."""
    from tornado.web import RequestHandler

    base = serverapp.base_url.rstrip("/")
    found: dict[str, set[str]] = {}
    for rule in serverapp.web_app.default_router.rules:
        for spec in getattr(rule.target, "rules", []):
            cls = getattr(spec, "target", None)
            if not (isinstance(cls, type) and cls.__module__.startswith(
                    "hpcserve_jupyter.jupyter")):
                continue
            pattern = spec.matcher.regex.pattern.rstrip("$")
            path = re.sub(r"\(\?:/\(\?P<(\w+)>[^)]*\)\)\?", r"/{\1}", pattern)
            path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", path).replace("\\", "")
            assert path.startswith(base), path
            methods = {m.lower() for m in cls.SUPPORTED_METHODS
                       if getattr(cls, m.lower()) is not RequestHandler._unimplemented_method}
            found[path[len(base):]] = methods
    return found


async def test_openapi_document_matches_the_registered_routes(jp_fetch, jp_serverapp):
    _code, doc = await fetch_json(jp_fetch, "hpcserve", "api", "openapi.json")
    assert doc["openapi"].startswith("3.")
    documented = {path: set(ops) for path, ops in doc["paths"].items()}
    registered = registered_routes(jp_serverapp)
    assert registered == documented
    assert len(registered) == len(ROUTES)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert op["responses"]["403"], (path, method)
            for param in op.get("parameters", []):
                if param["in"] == "path":
                    assert "{" + param["name"] + "}" in path
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', json.dumps(op)):
                assert ref in doc["components"]["schemas"]


async def test_every_handler_method_is_authenticated_then_authorized(jp_serverapp):
    from jupyter_server.serverapp import _has_tornado_web_authenticated
    from tornado.web import RequestHandler

    for route in ROUTES:
        for m in route.handler.SUPPORTED_METHODS:
            method = getattr(route.handler, m.lower())
            if method is RequestHandler._unimplemented_method:
                continue
            assert _has_tornado_web_authenticated(method), (route.path, m)
            inner = method.__wrapped__  # under @web.authenticated: jupyter's @authorized
            assert inner.__code__.co_qualname.startswith("authorized."), (route.path, m)
            assert inner.__code__.co_filename.endswith("jupyter_server/auth/decorator.py")
            assert route.handler.auth_resource == "hpcserve"
    assert jp_serverapp.web_app.settings.get("hpcserve_manager") is not None


def test_extension_points_and_the_shipped_config():
    import hpcserve_jupyter
    from hpcserve_jupyter.jupyter.app import HpcserveApp

    points = hpcserve_jupyter._jupyter_server_extension_points()
    assert points == [{"module": "hpcserve_jupyter.jupyter.app", "app": HpcserveApp}]
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    cfg = json.loads((repo / "jupyter-config" / "jupyter_server_config.d" /
                      "hpcserve_jupyter.json").read_text())
    assert cfg == {"ServerApp": {"jpserver_extensions": {"hpcserve_jupyter": True}}}
    for name in ("state_dir", "targets_file", "recipe_dirs", "poll_interval",
                 "default_idle_timeout", "default_max_lifetime", "proxy_connect_timeout",
                 "proxy_read_timeout", "max_inflight_per_replica", "max_queue"):
        trait = HpcserveApp.class_traits()[name]
        assert trait.metadata.get("config") and trait.help.strip(), name


def test_importing_the_package_does_not_import_jupyter():
    import subprocess
    import sys

    code = ("import sys, hpcserve_jupyter; "
            "print(any(m.split('.')[0] in ('jupyter_server', 'tornado', 'traitlets') "
            "for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


async def test_the_manager_starts_once_and_reattaches(ext, register, standin):
    s = register([standin.url])
    mgr = await ext.ensure_started()
    assert mgr is ext.manager and await ext.ensure_started() is mgr
    assert mgr._monitor is not None
    assert mgr.get(s.id).state == State.READY
    t0 = time.time()
    await mgr.tick()
    assert time.time() - t0 < 2


async def test_put_target_secrets_sets_allowed_names_in_the_server_environment(
        jp_fetch, monkeypatch):
    import os

    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, listed = await fetch_json(jp_fetch, "hpcserve", "api", "targets", "local", "secrets")
    assert code == 200 and "HF_TOKEN" in {f["env"] for f in listed["secrets"]}
    response = await jp_fetch("hpcserve", "api", "targets", "local", "secrets", method="PUT",
                              body=json.dumps({"HF_TOKEN": "hf_secret_value_123"}))
    assert response.code == 204 and not response.body
    assert os.environ["HF_TOKEN"] == "hf_secret_value_123"
    code, listed = await fetch_json(jp_fetch, "hpcserve", "api", "targets", "local", "secrets")
    assert [f["is_set"] for f in listed["secrets"] if f["env"] == "HF_TOKEN"] == [True]
    assert "hf_secret_value_123" not in json.dumps(listed)
    code, err = await error_of(jp_fetch, "hpcserve", "api", "targets", "local", "secrets",
                               method="PUT", body=json.dumps({"PATH": "/evil"}))
    assert code == 400 and "reads no secret from PATH" in err["error"]
    assert "/evil" not in json.dumps(err) and os.environ["PATH"] != "/evil"


# ---------------------------------------------------------------------- found by fuzzing (R5)


@pytest.mark.parametrize(("parts", "method", "body"), [
    (("sessions",), "POST", "[" * 100000),
    (("sessions",), "POST", '{"recipe": "smollm2-135m", "overrides": '
     + '{"a": ' * 5000 + "1" + "}" * 5001),
    (("targets", "local", "secrets"), "PUT", "[" * 100000),
])
async def test_json_nested_too_deeply_is_400_not_500(jp_fetch, parts, method, body):
    code, err = await error_of(jp_fetch, "hpcserve", "api", *parts, method=method, body=body)
    assert code == 400 and err["error"] == "the request body is nested too deeply", err


@pytest.mark.parametrize("value", ["a\x00b", "\ud800"])
async def test_secret_values_no_environment_can_hold_are_400(jp_fetch, monkeypatch, value):
    """NUL and lone surrogates made os.environ raise: a 500."""
    import os

    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, err = await error_of(jp_fetch, "hpcserve", "api", "targets", "local", "secrets",
                               method="PUT", body=json.dumps({"HF_TOKEN": value}))
    assert code == 400 and "the value of 'HF_TOKEN'" in err["error"], err
    assert "environment name -> value" in err["detail"]
    assert "HF_TOKEN" not in os.environ


@pytest.mark.parametrize(("parts", "params", "words"), [
    (("events", "log"), {"after": "9" * 25}, "'after' must be at most"),  # SQLite overflow
    (("events", "log"), {"after": "-1"}, "'after' must be at least 0"),
    (("events", "log"), {"after": "1_0"}, "'after' must be an integer"),
    (("events", "log"), {"after": ""}, "'after' must be an integer"),
    (("sessions",), {"live": ""}, "'live' must be 1/true or 0/false"),
])
async def test_query_parameters_are_what_the_document_says(jp_fetch, parts, params, words):
    code, err = await error_of(jp_fetch, "hpcserve", "api", *parts, params=params)
    assert code == 400 and words in err["error"], err


async def test_from_start_is_a_boolean(jp_fetch, register, standin):
    s = register([standin.url])
    code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", s.id, "logs",
                               params={"follow": "1", "from_start": "null"})
    assert code == 400 and "'from_start'" in err["error"]


async def test_a_session_name_ending_in_a_newline_is_refused(jp_fetch, ext):
    """re.match(...$) took 'abc\\n' (the manager's check); the body's own check does not."""
    code, err = await error_of(jp_fetch, "hpcserve", "api", "sessions", method="POST",
                               body=json.dumps({"recipe": "smollm2-135m", "name": "abc\n"}))
    assert code == 400 and "invalid session name 'abc\\n'" in err["error"], err
    assert ext.manager.sessions() == []


async def test_405_says_which_methods_are_allowed(jp_fetch):
    for parts, allowed in [(("recipes",), "GET"), (("sessions",), "GET, POST"),
                           (("targets", "local", "secrets"), "GET, PUT")]:
        with pytest.raises(HTTPClientError) as exc:
            await jp_fetch("hpcserve", "api", *parts, method="PATCH", body="{}",
                           allow_nonstandard_methods=True)
        assert exc.value.code == 405 and exc.value.response.headers["Allow"] == allowed


async def test_proxy_refusals_before_the_body_close_the_connection_openly(jp_fetch):
    """The proxy answers from prepare(), before a streamed body is read; tornado then closes
    the connection: `Connection: close` tells keep-alive clients not to reuse it."""
    with pytest.raises(HTTPClientError) as exc:
        await jp_fetch("hpcserve", "proxy", "nosuch", "v1", "models", method="POST",
                       body="0123456789")
    assert exc.value.code == 404
    assert exc.value.response.headers["Connection"] == "close"


def test_the_proxy_path_pattern_is_what_the_proxy_accepts():
    """The OpenAPI pattern of the proxy's {path} (one segment, sent percent-encoded) agrees
    with proxy.safe_path on what it refuses."""
    from urllib.parse import quote

    from hpcserve_jupyter.jupyter.base import ApiError
    from hpcserve_jupyter.jupyter.openapi import PROXY_PATH
    from hpcserve_jupyter.jupyter.proxy import safe_path

    for value in ["", ".", "..", "...", "a", "ab", ".a", "a.", "v1", "x@y", "a:b", "a b", "a\\b",
                  "a/b", "a#b", "\x01", "%", "%2f", "é", "名前", "..a", "a..", "-"]:
        try:
            safe_path("/" + quote(value, safe=""))
            accepted = True
        except ApiError:
            accepted = False
        assert bool(re.search(PROXY_PATH, value)) == accepted, value


async def test_gateway_errors_are_documented_in_openai_shape(jp_fetch):
    _code, doc = await fetch_json(jp_fetch, "hpcserve", "api", "openapi.json")
    schema = doc["components"]["schemas"]["OpenAIError"]
    for path in ("/hpcserve/v1/models/{model}", "/hpcserve/v1/chat/completions"):
        for status, answer in next(iter(doc["paths"][path].values()))["responses"].items():
            if status >= "400":
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/OpenAIError"), (path, status)
    code, err = await error_of(jp_fetch, "hpcserve", "v1", "models", "nosuch")
    assert code == 404 and set(err) <= set(schema["properties"])
    assert isinstance(err["error"]["message"], str)
