"""The OpenAI-compatible gateway /hpcserve/v1/ and the per-session live/ready/model views.

`model` names the session (its name or id, or the served model name when one ready session
serves it); the request goes to one of the session's replicas (round robin, failover, admission
control) with the session's own API key, and the answer streams back unbuffered, naming the
model the client asked for. `max_completion_tokens` also reaches the engine as `max_tokens`;
a stream asking for usage gets its usage chunk even from an engine that sends none (usage.py).
Point the official `openai` SDK at `<server>/hpcserve/v1` with the Jupyter token as its api_key,
or a gateway key (gatewayauth.py), which reaches only the sessions of its scope.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import httpx
from jupyter_server.auth.decorator import authorized
from tornado import web

from ..backends import get_backend
from ..backends.base import TokenCounter
from ..sessions import Session, State
from .base import ApiError, ClientGone, HpcserveHandler, RelayMixin, error_body
from .gatewayauth import GatewayKeyAuth
from .upstream import ACTIVITY_DELAY, open_upstream, relay, require_ready
from .usage import StreamUsage, engine_post, wanted

# The client headers the gateway passes on (the rest, credentials included, stay here).
FORWARDED = frozenset({"accept", "user-agent", "openai-organization",
                       "openai-project"})


@functools.cache
def token_counter(backend: str) -> TokenCounter | None:
    """The session's engine's tokenizer declaration (None for an unknown backend)."""
    try:
        return get_backend(backend).token_counter
    except Exception:  # a backend plugin gone since the launch: count without it
        return None


def model_card(s: Session) -> dict[str, Any]:
    return {"id": s.name, "object": "model", "created": int(s.created_at),
            "owned_by": s.owner or "hpcserve", "served_model": s.model, "session_id": s.id,
            "recipe": s.recipe, "backend": s.backend, "target": s.target}


def route(sessions: list[Session], model: str) -> Session:
    """The session a `model` field names: id, then name, then a unique served model name."""
    for s in sessions:
        if s.id == model:
            return s
    for s in sessions:
        if s.name == model:
            return s
    serving = [s for s in sessions if s.model == model and s.state == State.READY]
    if len(serving) == 1:
        return serving[0]
    if len(serving) > 1:
        raise ApiError(400, f"{len(serving)} sessions serve model {model!r}: "
                       + ", ".join(s.name for s in serving),
                       detail="use the session name as the model")
    names = sorted(s.name for s in sessions if s.state == State.READY)
    raise ApiError(404, f"no session serves model {model!r}",
                   detail=("ready sessions: " + ", ".join(names)) if names
                   else "launch one first (POST /hpcserve/api/sessions)")


class GatewayHandler(GatewayKeyAuth, HpcserveHandler):
    """Errors in the OpenAI shape, so SDKs show the message: {"error": {"message", ...}}."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        status, body, headers = error_body(exc, status_code)
        message = body.pop("error")
        self.set_status(status)
        for k, v in headers.items():
            self.set_header(k, v)
        self.set_header("Content-Type", "application/json")
        err = {"message": message, "type": body.get("reason") or body.get("type")
               or "invalid_request_error", "code": status, **body}
        self.finish(json.dumps({"error": err, "detail": body.get("detail")}, default=str))


class ModelsHandler(GatewayHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self.service()  # started
        ready = [s for s in self.allowed(self.ext.lookup().live())
                 if s.state == State.READY and s.api_flavour == "openai"]
        self.write_json({"object": "list", "data": [model_card(s) for s in ready]})


class ModelHandler(GatewayHandler):
    @web.authenticated
    @authorized
    async def get(self, model: str) -> None:
        await self.service()  # started
        self.write_json(model_card(route(self.allowed(self.ext.lookup().live(), model), model)))


class InferenceHandler(RelayMixin, GatewayHandler):
    """POST chat/completions, completions, embeddings: routed by the body's `model`."""

    def initialize(self, *args: Any, endpoint: str = "", **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.endpoint = endpoint

    @web.authenticated
    @authorized
    async def post(self) -> None:
        raw = self.request.body or b""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        except RecursionError:  # '[[[[...' a few thousand deep: the client's, not ours
            raise ApiError(400, "the request body is nested too deeply") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "the 'model' field must name a session",
                           detail="GET /hpcserve/v1/models lists them")
        svc = await self.service()
        session = route(self.allowed(self.ext.lookup().live(), model), model)
        if session.api_flavour != "openai":
            raise ApiError(400, f"session {session.name} serves the {session.api_flavour} API, "
                           "not OpenAI's", detail=f"use /hpcserve/proxy/{session.id}/")
        require_ready(session)
        body["model"] = session.model  # the engine knows its own served name only
        # The newer OpenAI name of the limit (LangChain sends it): engines that know only
        # max_tokens (llama.cpp) ignored it; both names, one value, suit every engine.
        limit = body.get("max_completion_tokens")
        if limit is not None and body.get("max_tokens") is None:
            body["max_tokens"] = limit
        content = json.dumps(body).encode()
        headers = [(k, v) for k, v in self.request.headers.get_all() if k.lower() in FORWARDED]
        headers.append(("Content-Type", "application/json"))
        headers.append(("Authorization", f"Bearer {svc.api_key(session)}"))
        if not any(k.lower() == "accept-encoding" for k, _ in headers):
            headers.append(("Accept-Encoding", "identity"))
        opening = asyncio.ensure_future(open_upstream(
            self, session, method="POST", path=f"/v1/{self.endpoint}", query="",
            headers=headers, body=lambda: content, admit=True))
        # Activity (an SQLite write, at most once a second per session) is recorded shortly
        # after the request left, off the path to the first byte; relay() records it again at
        # the end, and every 15 s of a long answer.
        asyncio.get_running_loop().call_later(ACTIVITY_DELAY, self.activity, session)
        try:
            up = await self.until_gone(opening)
        except ClientGone:
            return
        usage = None
        if wanted(body):  # the usage chunk, added when the engine sends none (usage.py)
            url = up.replica.url
            usage = StreamUsage(body, model, token_counter(session.backend), engine_post(
                self.ext.client(), url, svc.api_key(session)), engine=f"{session.id} {url}")
        await relay(self, up, session, rename=model, usage=usage)  # named as asked for


# ---------------------------------------------------------------------- per-session views


class LiveHandler(HpcserveHandler):
    """200 while the session's engine runs (starting or ready), else 503."""

    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        s = svc.get(id)
        live = s.state in (State.STARTING, State.READY) and not s.unreachable
        self.write_json({"live": live, "session_id": s.id, "state": str(s.state),
                         "reason": s.reason, "unreachable": s.unreachable},
                        200 if live else 503)


class ReadyHandler(HpcserveHandler):
    """200 when the session is ready and a replica passes its health check now, else 503."""

    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        s = svc.get(id)
        replicas: list[dict[str, Any]] = []
        if s.state == State.READY and s.endpoints:
            group = self.ext.group(s)
            check = self.ext._health_check(s)
            for r in group.replicas:
                replicas.append({**r.view(), "healthy": await check(r.url)})
        ready = any(r["healthy"] for r in replicas)
        self.write_json({"ready": ready, "session_id": s.id, "state": str(s.state),
                         "reason": s.reason, "replicas": replicas}, 200 if ready else 503)


class ModelInfoHandler(HpcserveHandler):
    """What the session serves: its model, engine, resources, replicas and the engine's own
    /v1/models answer when it is ready."""

    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        s = svc.get(id)
        info: dict[str, Any] = {
            "session_id": s.id, "name": s.name, "state": str(s.state), "recipe": s.recipe,
            "backend": s.backend, "target": s.target, "served_model": s.model,
            "model": s.spec.get("model"), "category": s.spec.get("category"),
            "api_flavour": s.api_flavour, "resources": s.public()["resources"],
            "admission": self.ext.group(s).view() if s.endpoints else None, "engine": None}
        if s.state == State.READY and s.endpoints and s.api_flavour == "openai":
            try:
                r = await self.ext.client().get(
                    s.endpoints[0] + "/v1/models", timeout=10.0,
                    headers={"Authorization": f"Bearer {svc.api_key(s)}"})
                info["engine"] = r.json() if r.status_code < 400 else {
                    "error": f"the engine answered {r.status_code}"}
            except (httpx.HTTPError, ValueError) as exc:
                info["engine"] = {"error": f"{type(exc).__name__}: {exc}"}
        self.write_json(info)
