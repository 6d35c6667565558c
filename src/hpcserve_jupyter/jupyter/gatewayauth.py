"""Gateway keys at the gateway's door: `Authorization: Bearer hsk_...` on /hpcserve/v1 only.

The gateway's handlers inherit `GatewayKeyAuth` before the usual Jupyter base: a bearer token
of a gateway key's form that the key table knows (unrevoked) makes the request's user a
`GatewayKeyUser`; anything else goes through Jupyter's own authentication, untouched, so the
Jupyter token keeps working here and a gateway key is refused on every other route (Jupyter
has never heard of it there). The handlers keep `@web.authenticated` + `@authorized`: for a
key, the authorization is its scope (checked per session with `allowed`), not the server's
Authorizer, which knows Jupyter users only (a hub's authorizer would refuse or fail on a user
it did not make); whoever created the key passed that Authorizer when creating it.

A key arrives in a header (never a cookie), so, as for Jupyter's token, no XSRF check applies.
The key is never logged: Jupyter's access log shows the user as `gateway-key:<id>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jupyter_server.auth import Authorizer, User
from jupyter_server.base.call_context import CallContext
from tornado import web

from ..gatewaykeys import GatewayKey, looks_like_key
from .base import ApiError

if TYPE_CHECKING:
    from ..sessions import Session


class GatewayKeyUser(User):
    """The user of a request authenticated with a gateway key."""

    def __init__(self, key: GatewayKey) -> None:
        super().__init__(username=f"gateway-key:{key.id}", name=f"gateway key {key.label}")
        self.gateway_key = key


class _ScopeAuthorizer(Authorizer):
    """What `@authorized` asks for a gateway key's request: yes; its scope decides per
    session (GatewayKeyAuth.allowed)."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return isinstance(user, GatewayKeyUser)


def presented_key(authorization: str | None) -> str | None:
    """The gateway key of an `Authorization: Bearer hsk_...` (or `token hsk_...`) header."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() in ("bearer", "token") and looks_like_key(value):
        return value
    return None


class GatewayKeyAuth:
    """Mixin of the gateway's handlers (before HpcserveHandler): gateway keys accepted."""

    gateway_key: GatewayKey | None = None

    async def prepare(self) -> None:
        handler: Any = self
        presented = presented_key(handler.request.headers.get("Authorization"))
        found = None
        if presented is not None:
            found = handler.ext.service.check_gateway_key(presented)
        if found is None:
            try:
                await super().prepare()  # type: ignore[misc]
            except web.HTTPError as exc:
                if presented is None or exc.status_code != 403 or handler.current_user:
                    raise
            if presented is not None and not handler.current_user:
                raise ApiError(401, "this gateway key is not valid: it was revoked, or never "
                               "issued by this server", detail="create one with hpcserve "
                               "keys create (or POST /hpcserve/api/keys)",
                               type="authentication_error")
            return
        CallContext.set(CallContext.JUPYTER_HANDLER, handler)
        if not handler.check_host():  # as Jupyter's prepare: DNS rebinding
            raise web.HTTPError(403)
        self.gateway_key = found
        handler.current_user = handler._jupyter_current_user = GatewayKeyUser(found)
        handler._token_authenticated = True  # a header credential: no XSRF, no origin check

    @property
    def authorizer(self) -> Authorizer:
        if self.gateway_key is not None:
            return _SCOPE_AUTHORIZER
        return super().authorizer  # type: ignore[misc]

    def allowed(self, sessions: list[Session], model: str | None = None) -> list[Session]:
        """The sessions this request may use: all for Jupyter's own authentication; a gateway
        key's scope. A `model` naming (by id or name) a session outside the scope is refused
        with a 403 that says so, rather than a 404 that hides why."""
        key = self.gateway_key
        if key is None:
            return sessions
        mine = [s for s in sessions if key.allows(s.id, s.name)]
        if model is not None and not any(model in (s.id, s.name) for s in mine) and any(
                model in (s.id, s.name) for s in sessions):
            names = sorted({s.name for s in mine})
            raise ApiError(403, f"gateway key {key.label!r} ({key.id}) may not use session "
                           f"{model!r}", detail=("its sessions: " + ", ".join(names)) if names
                           else "none of its sessions is live", type="permission_error")
        return mine


_SCOPE_AUTHORIZER = _ScopeAuthorizer()
