"""What every hpcserve handler shares: Jupyter auth, the manager, JSON bodies and JSON errors.

Errors are always `{"error": message, "detail": hint-or-null, ...}` with the status of the
HpcserveError (400 bad input, 404 unknown name, 409 not ready...), never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import json
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from pydantic import BaseModel, RootModel, ValidationError
from tornado import web

from ..errors import HpcserveError

if TYPE_CHECKING:
    from ..manager import SessionManager
    from ..service import SessionService
    from ..sessions import Session
    from .app import HpcserveApp

AUTH_RESOURCE = "hpcserve"
INT64_MAX = 2**63 - 1  # the largest integer SQLite stores (query parameters reach the store)
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
_ANON = re.compile(r"^[0-9a-f]{32}$")
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only


class ApiError(web.HTTPError):
    """An error answer with our JSON body (and extra fields/headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, *, detail: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status, reason=_reason(status))
        self.message = message
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class ClientGone(Exception):
    """The client closed its connection while we waited for it."""


def _reason(status: int) -> str | None:
    from http.client import responses

    return None if status in responses else {429: "Too Many Requests"}.get(status, "Error")


def error_body(exc: BaseException | None, status: int) -> tuple[int, dict[str, Any],
                                                                 dict[str, str]]:
    """(status, JSON body, headers) for any exception a handler let escape."""
    if isinstance(exc, ApiError):
        return exc.status_code, {"error": exc.message, "detail": exc.detail, **exc.extra}, \
            exc.headers
    if isinstance(exc, HpcserveError):
        return exc.http_status, {"error": exc.message, "detail": exc.hint,
                                 "type": type(exc).__name__}, {}
    if isinstance(exc, web.HTTPError):
        from http.client import responses

        msg = exc.log_message % exc.args if exc.log_message and exc.args else exc.log_message
        return exc.status_code, {"error": msg or exc.reason or responses.get(exc.status_code,
                                                                             "error"),
                                 "detail": None}, {}
    if exc is None:
        from http.client import responses

        return status, {"error": responses.get(status, "error"), "detail": None}, {}
    return 500, {"error": "internal error in hpcserve",
                 "detail": f"{type(exc).__name__}: {exc}"}, {}


def validation_message(exc: ValidationError, model: type[BaseModel]) -> tuple[str, str]:
    """A one-line message naming the bad fields, and a hint listing the allowed ones (for a
    body that is one mapping, a RootModel: what the body is)."""
    unknown, problems = [], []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            unknown.append(loc)
        elif err["type"] == "missing":
            problems.append(f"missing field {loc!r}")
        else:
            problems.append(f"field {loc!r}: {msg}" if loc else msg)
    if unknown:
        problems.insert(0, ("unknown field " if len(unknown) == 1 else "unknown fields ")
                        + ", ".join(repr(u) for u in unknown))
    if issubclass(model, RootModel):
        return "; ".join(problems), (model.__doc__ or "").strip().splitlines()[0]
    allowed = ", ".join(model.model_fields)
    return "; ".join(problems), f"allowed fields: {allowed}"


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


class HpcserveHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every hpcserve handler. Subclasses decorate each method with
    `@web.authenticated` then `@authorized` (resource "hpcserve")."""

    auth_resource = AUTH_RESOURCE
    # CORS preflight is not offered: same-origin UIs and token clients do not need it, and
    # this way no hpcserve URL answers anything without authentication.
    options = web.RequestHandler._unimplemented_method

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self._gone = asyncio.Event()

    @property
    def ext(self) -> HpcserveApp:
        return self.extensionapp  # type: ignore[return-value]

    async def service(self) -> SessionService:
        """The session service, started (a request may come before the server's start hook)."""
        await self.ext.ensure_started()
        return self.ext.service

    async def manager(self) -> SessionManager:
        return await self.ext.ensure_started()

    def owner(self) -> str | None:
        """The Jupyter user's name; None for the anonymous id of a shared-token login (then the
        manager records the account the server runs as)."""
        user = self.current_user
        username = getattr(user, "username", None)
        if not username or (_ANON.match(username)
                            and str(getattr(user, "name", "")).startswith("Anonymous ")):
            return None
        return str(username)

    # ------------------------------------------------------------------ activity

    def activity(self, session: Session | None = None) -> None:
        """Count as activity for the session's idle timer and for Jupyter's idle culling."""
        now = utcnow()
        self.settings["api_last_activity"] = now
        self.settings["hpcserve_last_activity"] = now
        if session is not None:
            self.ext.touch(session.id)

    # ------------------------------------------------------------------ I/O helpers

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, default=str))

    def json_body(self, model: type[M]) -> M:
        raw = self.request.body or b""
        if not raw.strip():
            raise ApiError(400, "the request body is empty",
                           detail=f"send a JSON object with: {', '.join(model.model_fields)}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        except RecursionError:  # '[[[[...' a few thousand deep: the client's, not ours
            raise ApiError(400, "the request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise ApiError(400, f"the request body must be a JSON object, not "
                           f"{type(data).__name__}")
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            message, hint = validation_message(exc, model)
            raise ApiError(400, message, detail=hint) from None

    def int_arg(self, name: str, default: int | None, *, minimum: int = 0,
                maximum: int = INT64_MAX) -> int | None:
        value = self.get_argument(name, None)
        if value is None:
            return default
        try:
            if not _INTEGER.fullmatch(value):  # int() would take " 5", "1_0" and "٣" too
                raise ValueError(value)
            number = int(value)
        except ValueError:
            raise ApiError(400, f"query parameter {name!r} must be an integer, not {value!r}"
                           ) from None
        if number < minimum:
            raise ApiError(400, f"query parameter {name!r} must be at least {minimum}")
        if number > maximum:  # SQLite would raise OverflowError: a 500, not the client's fault
            raise ApiError(400, f"query parameter {name!r} must be at most {maximum}")
        return number

    def bool_arg(self, name: str, default: bool = False) -> bool:
        """A boolean query parameter; absent: `default`. Anything but 1/true/yes/on or
        0/false/no/off (an empty value too) is a 400, as the OpenAPI document says."""
        value = self.get_argument(name, None)
        if value is None:
            return default
        word = value.lower()
        if word in ("0", "false", "no", "off"):
            return False
        if word in ("1", "true", "yes", "on"):
            return True
        raise ApiError(400, f"query parameter {name!r} must be 1/true or 0/false, not {value!r}")

    def on_connection_close(self) -> None:
        self._gone.set()
        super().on_connection_close()

    async def until_gone(self, aw: Awaitable[T]) -> T:
        """Await `aw`, or raise ClientGone (cancelling it) if the client disconnects first."""
        task = asyncio.ensure_future(aw)
        gone = asyncio.ensure_future(self._gone.wait())
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise ClientGone()

    # ------------------------------------------------------------------ errors

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The HTTP methods this handler implements (what a 405's Allow header lists)."""
        return [m for m in cls.SUPPORTED_METHODS
                if getattr(cls, m.lower(), None) not in (None,
                                                         web.RequestHandler._unimplemented_method)]

    def set_status(self, status_code: int, reason: str | None = None) -> None:
        """A 405 always says which methods are allowed (RFC 9110 requires Allow), whichever
        write_error (ours or the gateway's OpenAI-shaped one) writes the body.

        An error answered before a streamed request body was read (the proxy refusing in
        prepare()) makes tornado close the connection after the answer, to skip the body; say
        so with `Connection: close`, else a keep-alive client sends its next request into the
        closing connection and gets a reset instead of an answer."""
        super().set_status(status_code, reason)
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        body = getattr(self.request, "_body_future", None)  # streamed bodies only
        if status_code >= 400 and body is not None and not body.done():
            self.set_header("Connection", "close")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        status, body, headers = error_body(exc, status_code)
        self.set_status(status, reason=_reason(status))
        for k, v in headers.items():
            self.set_header(k, v)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, default=str))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, HpcserveError | ApiError):
            self.log.info("hpcserve %s %s: %s", self.request.method, self.request.path,
                          getattr(value, "message", value))
            return
        super().log_exception(typ, value, tb)


class RelayMixin:
    """For handlers that relay an upstream answer: keep its Content-Type (APIHandler.finish
    would force application/json)."""

    def finish(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("set_content_type", None)
        self.update_api_activity()  # type: ignore[attr-defined]
        return web.RequestHandler.finish(self, *args, **kwargs)  # type: ignore[arg-type]
