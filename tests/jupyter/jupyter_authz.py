"""Auth plug-ins for the tests: an Authorizer that denies "hpcserve", named token users."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth import Authorizer, IdentityProvider, User


class DenyHpcserve(Authorizer):
    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return resource != "hpcserve"


class NamedUsers(IdentityProvider):
    """Token logins are user "alice" (as a hub or a real identity provider would name them)."""

    def generate_anonymous_user(self, handler: Any) -> User:
        return User(username="alice", name="Alice")
