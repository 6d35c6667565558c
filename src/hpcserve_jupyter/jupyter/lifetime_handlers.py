"""REST API to follow and carry a session on: GET /hpcserve/api/sessions/{id}/metrics (live
serving numbers and GPU use; asking keeps them scraped for a minute), POST .../relaunch (a new
session with the same recipe, backend, target and overrides) and .../extend (more time where
the target allows). The service decides everything."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web

from .base import HpcserveHandler
from .bodies import ExtendBody, RelaunchBody


class RelaunchHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self, id: str) -> None:
        body = self.json_body(RelaunchBody) if self.request.body.strip() else RelaunchBody()
        svc = await self.service()
        session = await svc.relaunch(id, name=body.name, owner=self.owner() or None)
        self.activity()
        self.set_header("Location", url_path_join(self.base_url, "hpcserve/api/sessions",
                                                  session.id))
        self.write_json(session.public(), 201)


class ExtendHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self, id: str) -> None:
        body = self.json_body(ExtendBody)
        svc = await self.service()
        session, message = await svc.extend(id, body.time)
        self.write_json({"session": session.public(), "message": message})


class MetricsHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self, id: str) -> None:
        svc = await self.service()
        self.write_json(await svc.metrics(id))
