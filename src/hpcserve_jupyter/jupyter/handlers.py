"""REST API under /hpcserve/api/: recipes, targets, sessions, logs, events. Handlers only route:
every decision is the SessionManager's."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator
from tornado import web
from tornado.iostream import StreamClosedError

from ..recipes import untextual
from ..sessions import NAME_PATTERN
from .base import ClientGone, HpcserveHandler


class SecretsBody(RootModel[dict[str, str]]):
    """The body of PUT /hpcserve/api/targets/{name}/secrets: environment name -> value."""

    @field_validator("root")
    @classmethod
    def _environment_safe(cls, v: dict[str, str]) -> dict[str, str]:
        # What os.environ cannot hold would raise there (a 500): NUL, lone surrogates.
        for key, value in v.items():
            if "\0" in key or "\0" in value:
                raise ValueError(f"the value of {key!r} contains a NUL character")
        bad = untextual(v)
        if bad is not None:
            raise ValueError(f"the value of {bad[0]!r} is not valid text (a lone surrogate)")
        return v


class LaunchBody(BaseModel):
    """The body of POST /hpcserve/api/sessions."""

    model_config = ConfigDict(extra="forbid")
    recipe: str = Field(min_length=1, description="recipe name (GET /hpcserve/api/recipes)")
    backend: str | None = Field(None, description="serving engine; default: the recipe's first")
    target: str = Field("local", min_length=1, description="where it runs (GET targets)")
    # The name is checked by the manager's launch, as for every front end.
    name: str | None = Field(None, description="session name; default: RECIPE-N",
                             json_schema_extra={"pattern": NAME_PATTERN})
    overrides: dict[str, Any] = Field(default_factory=dict,
                                      description="per-launch changes, as `--set KEY=VALUE`: "
                                      "gpus, time, replicas, env.NAME, engine_args.FLAG...")


# ---------------------------------------------------------------------- catalog


class RecipesHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        mgr = await self.manager()
        catalog = mgr.catalog
        self.write_json({
            "recipes": [r.summary() for _, r in sorted(catalog.recipes.items())],
            "errors": {str(p): str(e) for p, e in catalog.errors.items()},
        })


class RecipeHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        mgr = await self.manager()
        self.write_json(mgr.catalog.get(name).model_dump(mode="json"))


class TargetsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        mgr = await self.manager()
        self.write_json({"targets": [mgr.target(n).describe()
                                     for n in sorted(mgr.target_configs)]})


class TargetSecretsHandler(HpcserveHandler):
    """The secrets a target reads from environment variables: names and whether each is set
    in the server's environment (never values)."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        from ..api import secret_fields

        mgr = await self.manager()
        target = mgr.target(name)
        self.write_json({"secrets": secret_fields(target.kind,
                                                  getattr(target, "settings", None))})

    @web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        """Set secrets (`{ENV_NAME: value}`) in the server's environment, where the server's
        targets read them; only the names GET lists are accepted. Values are never echoed."""
        from ..api import apply_secrets, secret_fields

        values = self.json_body(SecretsBody).root
        mgr = await self.manager()
        target = mgr.target(name)
        apply_secrets(name, secret_fields(target.kind, getattr(target, "settings", None)),
                      values)
        self.set_status(204)
        self.finish()


# ---------------------------------------------------------------------- sessions


class SessionsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        mgr = await self.manager()
        live = self.bool_arg("live")
        self.write_json({"sessions": [s.public() for s in mgr.sessions(live_only=live)]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(LaunchBody)
        mgr = await self.manager()
        overrides = self.ext.launch_defaults(body.recipe, body.overrides)
        session = await mgr.launch(body.recipe, backend=body.backend, target=body.target,
                                   name=body.name, overrides=overrides,
                                   owner=self.owner() or None)
        self.activity()
        self.set_header("Location", url_path_join(self.base_url, "hpcserve/api/sessions",
                                                  session.id))
        self.write_json(session.public(), 201)


class SessionHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        mgr = await self.manager()
        self.write_json(mgr.get(id).public())

    @web.authenticated
    @authorized
    async def delete(self, id: str) -> None:
        mgr = await self.manager()
        session = await mgr.stop(id)
        self.ext.forget(session.id)
        self.write_json(session.public())


class KeepaliveHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self, id: str) -> None:
        mgr = await self.manager()
        session = mgr.keepalive(id)
        self.activity()
        self.write_json(session.public())


class RefreshHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        mgr = await self.manager()
        await mgr.tick()
        self.write_json({"sessions": [s.public() for s in mgr.sessions(live_only=True)]})


class LogsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        mgr = await self.manager()
        tail = self.int_arg("tail", 100)
        follow = self.bool_arg("follow")
        from_start = self.bool_arg("from_start", default=True)
        session = mgr.get(id)
        text_plain = "text/plain; charset=utf-8"
        self.set_header("Content-Type", text_plain)
        if not follow:
            self.finish(await mgr.logs(session.id, tail or None), set_content_type=text_plain)
            return
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.set_status(200)
        await self.flush()
        agen = mgr.follow_logs(session.id, from_start=from_start)
        try:
            while True:
                try:
                    text = await self.until_gone(agen.__anext__())
                except StopAsyncIteration:
                    break
                self.write(text)
                await self.flush()
        except (ClientGone, StreamClosedError):
            return
        finally:
            with contextlib.suppress(Exception):
                await agen.aclose()


# ---------------------------------------------------------------------- events


def sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data, default=str)}\n\n"


class EventsHandler(HpcserveHandler):
    """Server-Sent Events: a `snapshot` of live sessions, then every session state change."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        mgr = await self.manager()
        queue = mgr.subscribe()
        stop = asyncio.Event()
        self.ext._streams.add(stop)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        keepalive = max(0.05, self.ext.events_keepalive_interval)
        try:
            snapshot = {"type": "snapshot", "ts": time.time(),
                        "sessions": [s.public() for s in mgr.sessions(live_only=True)]}
            self.write("retry: 3000\n\n" + sse(snapshot))
            await self.flush()
            while not stop.is_set():
                getter = asyncio.ensure_future(queue.get())
                waiters = {getter, asyncio.ensure_future(self._gone.wait()),
                           asyncio.ensure_future(stop.wait())}
                done, pending = await asyncio.wait(waiters, timeout=keepalive,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if getter in done:
                    events = [getter.result()]
                    while not queue.empty():
                        events.append(queue.get_nowait())
                    self.write("".join(sse(e) for e in events))
                elif self._gone.is_set() or stop.is_set():
                    break
                else:
                    if not mgr.subscribed(queue):
                        # The manager drops a subscriber that fell 1000 events behind.
                        self.write(sse({"type": "resync", "ts": time.time()}))
                        await self.flush()
                        break
                    self.write(": keepalive\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            mgr.unsubscribe(queue)
            self.ext._streams.discard(stop)


class EventLogHandler(HpcserveHandler):
    """The stored event log (launch, state changes, keepalives), optionally of one session."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        mgr = await self.manager()
        key = self.get_argument("session", None)
        after = self.int_arg("after", 0) or 0
        sid = mgr.get(key).id if key else None
        self.write_json({"events": mgr.events(sid, after)})


class OpenAPIHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        from .openapi import document

        self.write_json(document(self.base_url))
