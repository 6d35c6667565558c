"""REST API for Jupyter AI: POST /hpcserve/api/sessions/{id}/jupyter-ai makes a chat session a
Jupyternaut custom model that chats through this server's gateway with a gateway key scoped to
the session (the service decides everything); DELETE removes it and revokes the key."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from jupyter_server.utils import url_path_join
from tornado import web

from .aiconfig import config_path
from .base import HpcserveHandler
from .bodies import JupyterAiBody


class JupyterAiHandler(HpcserveHandler):
    @web.authenticated
    @authorized
    async def post(self, id: str) -> None:
        body = self.json_body(JupyterAiBody) if self.request.body.strip() else JupyterAiBody()
        svc = await self.service()
        # Jupyter AI runs inside this server: it reaches the gateway at the server's own URL.
        api_base = url_path_join(self.serverapp.connection_url, "hpcserve/v1")
        self.write_json(svc.use_in_jupyter_ai(id, api_base=api_base, path=config_path(),
                                              default=body.default))

    @web.authenticated
    @authorized
    async def delete(self, id: str) -> None:
        svc = await self.service()
        self.write_json(svc.drop_from_jupyter_ai(id, path=config_path()))
