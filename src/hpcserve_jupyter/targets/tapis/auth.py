"""Who we are to Tapis: credentials, the tapipy client, request timeouts and token refresh.

Credentials come, in this order, from
1. `token_env` (default TAPIS_TOKEN): an access token given directly;
2. `password_env` (default TAPIS_PASSWORD) with `username` / `username_env` (TAPIS_USERNAME);
3. a keyring entry `keyring_service` / `<username>@<tenant_id>`, if the optional `keyring`
   package is installed;
4. a getpass prompt, only when stdin is a terminal (`prompt: false` turns it off).
Never from targets.yaml or notebook source. They live in memory only (the tapipy client needs
the password to get new tokens): not in the session store, handles, logs, errors or reprs.

The client is always built with `tenant_id` (without it tapipy calls /v3/sites and /v3/tenants)
and with a `requests.Session` that puts a default timeout on every request (tapipy passes none,
so a silent server would block forever). A 401 is answered once with fresh tokens
(`get_tokens()` again); tapipy itself never re-authenticates.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import requests

from ...errors import BadInput
from ..base import SecretSetting
from .config import TapisAuthConfig
from .errors import TapisAuthError, map_error

log = logging.getLogger(__name__)


class TimeoutSession(requests.Session):
    """A requests.Session whose requests time out after `default_timeout` unless told otherwise.

    tapipy calls `requests_session.send(prepared, verify=...)`, so `send` is what gets the
    default (connect and read timeout alike).
    """

    def __init__(self, default_timeout: float) -> None:
        super().__init__()
        self.default_timeout = default_timeout

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().send(request, **kwargs)


@dataclass
class Credentials:
    """Where a login comes from; the secret values never show in repr."""

    username: str | None
    kind: str  # "token_env", "password_env", "keyring", "prompt"
    source: str  # where from, for messages: "$TAPIS_PASSWORD", "keyring ...": never a value
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        return [s for s in (self.password, self.token) if s]


def _keyring_password(service: str | None, account: str) -> str | None:
    if not service:
        return None
    try:
        import keyring  # optional dependency
    except ImportError:
        return None
    try:
        return keyring.get_password(service, account)
    except Exception:  # no backend, locked keyring...: just not a source
        log.debug("keyring lookup failed", exc_info=False)
        return None


def _interactive() -> bool:
    with contextlib.suppress(Exception):
        return sys.stdin is not None and sys.stdin.isatty()
    return False


def secret_settings(s: TapisAuthConfig, hf_token_env: str | None) -> list[SecretSetting]:
    """The variables a Tapis target reads secrets from (names only), for the front ends."""
    found = [SecretSetting("Tapis password", s.password_env),
             SecretSetting("Tapis access token", s.token_env)]
    if hf_token_env:
        found.append(SecretSetting("Hugging Face token", hf_token_env))
    return found


def resolve_credentials(s: TapisAuthConfig) -> Credentials:
    """The first available source, or a BadInput listing every source."""
    username = s.username or os.environ.get(s.username_env) or None
    token = os.environ.get(s.token_env) or None
    password = os.environ.get(s.password_env) or None
    if token:
        return Credentials(username, "token_env", f"${s.token_env}", password=password,
                           token=token)
    if password:
        if not username:
            raise BadInput(f"${s.password_env} is set but no Tapis username is known",
                           hint=f"set `username:` in targets.yaml or ${s.username_env}")
        return Credentials(username, "password_env", f"${s.password_env}", password=password)
    if username:
        found = _keyring_password(s.keyring_service, f"{username}@{s.tenant_id}")
        if found:
            return Credentials(username, "keyring", f"keyring {s.keyring_service!r}",
                               password=found)
        if s.prompt and _interactive():
            typed = getpass.getpass(f"Tapis password for {username}@{s.tenant_id}: ")
            if typed:
                return Credentials(username, "prompt", "the prompt", password=typed)
    raise BadInput(f"no Tapis credentials for {s.base_url}",
                   hint=f"export {s.token_env}=<access token>, or {s.password_env} with "
                   f"`username:` (or {s.username_env}); a keyring entry "
                   f"{s.keyring_service!r}/<user>@{s.tenant_id} also works")


class TapisSession:
    """The tapipy client of one target, created on first use, re-authenticated on 401."""

    def __init__(self, settings: TapisAuthConfig) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._client: Any = None
        self._creds: Credentials | None = None

    def __repr__(self) -> str:
        return f"TapisSession({self.settings.base_url!r}, tenant={self.settings.tenant_id!r})"

    # ------------------------------------------------------------------ secrets

    def secrets(self) -> list[str]:
        """Every secret this session knows, for redaction (values never leave otherwise)."""
        out = self._creds.secrets() if self._creds else []
        jwt = self.current_jwt()
        return [*out, jwt] if jwt else out

    def current_jwt(self) -> str | None:
        client = self._client
        if client is None:
            return None
        with contextlib.suppress(Exception):
            return client.get_access_jwt() or None
        return None

    @property
    def auth_hint(self) -> str:
        s, creds = self.settings, self._creds
        source = creds.source if creds else "?"
        if creds and creds.kind == "token_env" and not creds.password:
            return (f"the token in ${s.token_env} was refused or has expired: set a new one, or "
                    f"set ${s.password_env} (with a username) so hpcserve can get tokens itself")
        user = creds.username if creds else None
        return (f"check the username ({user!r}) and the password (from {source}) for tenant "
                f"{s.tenant_id!r} at {s.base_url}")

    # ------------------------------------------------------------------ client

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._login(resolve_credentials(self.settings))
            return self._client

    def _new_client(self, creds: Credentials, token: str | None) -> Any:
        from tapipy.tapis import Tapis

        s = self.settings
        kwargs: dict[str, Any] = {"base_url": s.base_url, "tenant_id": s.tenant_id,
                                  "verify": s.verify_tls}
        if creds.username:
            kwargs["username"] = creds.username
        if creds.password:
            kwargs["password"] = creds.password
        if token:
            kwargs["access_token"] = token
        try:
            client = Tapis(**kwargs)
        except Exception:
            # tapipy decodes a given token as a JWT; its message could quote the token
            raise BadInput(f"the access token in ${s.token_env} is not a Tapis token (JWT)",
                           hint=f"copy a fresh access token into ${s.token_env}") from None
        old = client.requests_session
        client.requests_session = TimeoutSession(s.request_timeout)
        with contextlib.suppress(Exception):
            old.close()
        return client

    def _login(self, creds: Credentials) -> Any:
        self._creds = creds
        client = self._new_client(creds, creds.token)
        if not creds.token:
            self._get_tokens(client)
        log.debug("Tapis client for %s (tenant %s) ready, credentials from %s",
                  self.settings.base_url, self.settings.tenant_id, creds.source)
        return client

    def _get_tokens(self, client: Any) -> None:
        from tapipy.errors import BaseTapyException

        try:
            client.get_tokens()
        except BaseTapyException as exc:
            err = map_error(exc, "issue tokens", where=self.settings.base_url,
                            secrets=self.secrets(), auth_hint=self.auth_hint)
            raise err from None

    def refresh(self, refused_jwt: str | None) -> None:
        """New tokens after a 401 (once per refused token, whichever thread saw it first)."""
        with self._lock:
            client, creds = self._client, self._creds
            if client is None or creds is None:
                return
            if refused_jwt is not None and self.current_jwt() != refused_jwt:
                return  # another call refreshed meanwhile
            if creds.password and creds.username:
                log.debug("Tapis token refused; getting new tokens for %s", creds.username)
                self._get_tokens(client)
                return
            # A token given directly: a new one may have been exported meanwhile.
            fresh = os.environ.get(self.settings.token_env) or None
            if fresh and fresh != creds.token:
                creds.token = fresh
                self._client = self._new_client(creds, fresh)
                return
            raise TapisAuthError(f"Tapis at {self.settings.base_url} refused the access token",
                                 hint=self.auth_hint)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    self._client.requests_session.close()
            self._client = None
