"""REST API under /hpcserve/api/: recipes, targets, sessions, logs, events. Handlers only route:
every view and decision is the SessionService's (the one the embedded facade runs too)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from .base import ClientGone, HpcserveHandler
from .bodies import LaunchBody, SecretsBody
from .openapi import document

# ---------------------------------------------------------------------- catalog


class RecipesHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        svc = await self.service()
        self.write_json({"recipes": svc.recipes(), "errors": svc.recipe_errors()})


class RecipeHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        svc = await self.service()
        self.write_json(svc.recipe(name))


class TargetsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        svc = await self.service()
        self.write_json({"targets": svc.targets()})


class TargetSecretsHandler(HpcserveHandler):
    """The secrets a target reads from environment variables: names and whether each is set
    in the server's environment (never values)."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        svc = await self.service()
        self.write_json({"secrets": svc.target_secrets(name)})

    @web.authenticated
    @authorized
    async def put(self, name: str) -> None:
        """Set secrets (`{ENV_NAME: value}`) in the server's environment, where the server's
        targets read them; only the names GET lists are accepted. Values are never echoed."""
        values = self.json_body(SecretsBody).root
        svc = await self.service()
        svc.set_target_secrets(name, values)
        self.set_status(204)
        self.finish()


# ---------------------------------------------------------------------- sessions


class SessionsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        svc = await self.service()
        live = self.bool_arg("live")
        self.write_json({"sessions": [s.public() for s in svc.sessions(live_only=live)]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(LaunchBody)
        svc = await self.service()
        session = await svc.launch(body.recipe, backend=body.backend, target=body.target,
                                   name=body.name, overrides=body.overrides,
                                   owner=self.owner() or None)
        self.activity()
        self.set_header("Location", url_path_join(self.base_url, "hpcserve/api/sessions",
                                                  session.id))
        self.write_json(session.public(), 201)


class SessionHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        self.write_json(svc.get(id).public())

    @web.authenticated
    @authorized
    async def delete(self, id: str) -> None:
        svc = await self.service()
        session = await svc.stop(id)
        self.ext.forget(session.id)
        self.write_json(session.public())


class KeepaliveHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self, id: str) -> None:
        svc = await self.service()
        session = svc.keepalive(id)
        self.activity()
        self.write_json(session.public())


class RefreshHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        svc = await self.service()
        live = await svc.refresh()
        self.write_json({"sessions": [s.public() for s in live]})


class LogsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        tail = self.int_arg("tail", 100)
        follow = self.bool_arg("follow")
        from_start = self.bool_arg("from_start", default=True)
        session = svc.get(id)
        text_plain = "text/plain; charset=utf-8"
        self.set_header("Content-Type", text_plain)
        if not follow:
            self.finish(await svc.logs(session.id, tail or None), set_content_type=text_plain)
            return
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.set_status(200)
        await self.flush()
        agen = svc.follow_logs(session.id, from_start=from_start)
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
        svc = await self.service()
        queue = svc.subscribe()
        stop = asyncio.Event()
        self.ext._streams.add(stop)
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        keepalive = max(0.05, self.ext.events_keepalive_interval)
        try:
            self.write("retry: 3000\n\n" + sse(svc.snapshot()))
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
                    if not svc.subscribed(queue):
                        # The manager drops a subscriber that fell 1000 events behind.
                        self.write(sse({"type": "resync", "ts": time.time()}))
                        await self.flush()
                        break
                    self.write(": keepalive\n\n")
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            svc.unsubscribe(queue)
            self.ext._streams.discard(stop)


class EventLogHandler(HpcserveHandler):
    """The stored event log (launch, state changes, keepalives), optionally of one session."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        svc = await self.service()
        after = self.int_arg("after", 0) or 0
        self.write_json({"events": svc.events(self.get_argument("session", None), after)})


class OpenAPIHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.write_json(document(self.base_url))
