"""REST API for gateway keys under /hpcserve/api/keys: create (the clear key answered once),
list (never the keys), revoke. Guarded by Jupyter's own authentication like every
/hpcserve/api route, so a gateway key (accepted by /hpcserve/v1 only) cannot manage keys."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web

from .base import HpcserveHandler
from .bodies import KeyBody


class KeysHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        svc = await self.service()
        self.write_json({"keys": [k.public() for k in svc.gateway_keys()]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body(KeyBody)
        svc = await self.service()
        created = svc.create_gateway_key(body.label, body.sessions)
        self.set_header("Location", url_path_join(self.base_url, "hpcserve/api/keys",
                                                  created.id))
        self.set_header("Cache-Control", "no-store")  # the one answer holding the key
        self.write_json(created.public(), 201)


class KeyHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def delete(self, id: str) -> None:
        """Revoke (by id or label); the gateway refuses the key from the next request."""
        svc = await self.service()
        self.write_json(svc.revoke_gateway_key(id).public())
