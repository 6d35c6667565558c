"""tapipy exceptions -> hpcserve errors, with the service's own message.

tapipy 25.4.0 raises one `BaseTapyException` subclass per HTTP status (400 BadRequestError,
401 UnauthorizedError, 403 ForbiddenError, 404 NotFoundError, 503 ServiceUnavailableError,
other 5xx InternalServerError); a timeout or a refused connection is a *plain*
BaseTapyException ("Unable to make request to Tapis server. Exception: ..."). 400 messages are
often a LIST of "<field>: <problem>" strings; they are joined for the user.

The exception objects carry the prepared request (with the X-Tapis-Token header): they are never
chained (`from None`), logged or kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ...errors import BadInput, HpcserveError, NotFound, TargetUnreachable
from ...secrets import redact


class TapisAuthError(BadInput):
    """Tapis refused who we are (401 after a token refresh) or what we may do (403)."""


class TapisNotFound(NotFound):
    """404 from a Tapis API: the pod, volume, job, app or file does not exist (any more)."""


def service_message(exc: Any) -> str:
    """The service's message: a list of strings joined, bytes decoded, never empty."""
    msg = getattr(exc, "message", None)
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    if isinstance(msg, (list, tuple)):
        msg = "; ".join(str(m) for m in msg)
    text = str(msg or "").strip()
    if not text:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        text = f"HTTP {status}" if status else type(exc).__name__
    return text[:1000]


def status_of(exc: Any) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def map_error(exc: Exception, what: str, *, where: str, secrets: Iterable[str] = (),
              auth_hint: str | None = None, service: str = "Pods") -> HpcserveError:
    """Our error for a tapipy exception raised while trying to `what` (e.g. 'create pod x')."""
    from tapipy import errors as te

    msg = redact(service_message(exc), [s for s in secrets if s])
    if isinstance(exc, te.BadRequestError):
        return BadInput(f"Tapis {service} refused to {what}: {msg}",
                        hint="fix the value it names in targets.yaml or the launch overrides")
    if isinstance(exc, te.UnauthorizedError):
        return TapisAuthError(f"Tapis at {where} did not accept our credentials ({what}): {msg}",
                              hint=auth_hint)
    if isinstance(exc, te.ForbiddenError):
        return TapisAuthError(f"Tapis at {where} does not allow this user to {what}: {msg}",
                              hint=f"ask the tenant's admins for access to the {service} "
                              "service, or check the username in targets.yaml")
    if isinstance(exc, te.NotFoundError):
        return TapisNotFound(f"Tapis {service}: {msg}")
    if isinstance(exc, (te.ServiceUnavailableError, te.InternalServerError,
                        te.InvalidServerResponseError)):
        return TargetUnreachable(f"the Tapis {service} API at {where} failed to {what} "
                                 f"(HTTP {status_of(exc) or '?'}): {msg}")
    if type(exc) is te.BaseTapyException and getattr(exc, "response", None) is None:
        # requests raised (timeout, refused connection, DNS): tapipy wraps it as a plain one.
        return TargetUnreachable(f"the Tapis {service} API at {where} did not answer ({what}): "
                                 f"{msg.removeprefix('Unable to make request to Tapis server. ')}")
    return HpcserveError(f"Tapis could not {what}: {msg}")


def same_error(exc: HpcserveError, message: str) -> HpcserveError:
    """`exc` again, as the same class (BadInput, TapisAuthError...) and hint, with `message`:
    a failed launch re-raises what went wrong with secrets redacted and leftovers named, and
    the front ends still map it by class (bad input, auth) as they would the original."""
    err = type(exc).__new__(type(exc))
    HpcserveError.__init__(err, message, hint=exc.hint)
    return err
