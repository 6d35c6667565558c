"""PodsApi: each Pods operation the target uses, through the real tapipy client.

One method = one tapipy call (blocking; the target runs them in a worker thread). A 401 gets
one retry after fresh tokens; every other tapipy error becomes ours (`errors.map_error`).
Results come back as plain dicts/lists (tapipy's `TapisResult` objects converted), and the
tapipy 25.4.0 quirks are absorbed here: start/stop/restart are GET operations (tapipy knows),
a falsy `result` (delete_pod / delete_volume answer `""`) comes back as the whole envelope.
"""

from __future__ import annotations

import logging
from typing import Any

from .auth import TapisSession
from .config import TapisPodsConfig
from .errors import TapisAuthError, map_error

log = logging.getLogger(__name__)


def plain(obj: Any) -> Any:
    """TapisResult objects (nested) -> dicts; lists and scalars as they are."""
    from tapipy.tapis import TapisResult

    if isinstance(obj, TapisResult):
        return {k: plain(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


class PodsApi:
    def __init__(self, settings: TapisPodsConfig) -> None:
        self.settings = settings
        self.session = TapisSession(settings)

    def __repr__(self) -> str:
        return f"PodsApi({self.settings.base_url!r})"

    def call(self, operation: str, what: str, *, _secrets: tuple[str, ...] = (),
             **kwargs: Any) -> Any:
        """tapipy `pods.<operation>(**kwargs)` as plain data; `what` names it in errors, which
        never contain `_secrets` (values of the call's body) nor our credentials."""
        from tapipy.errors import BaseTapyException, UnauthorizedError

        for attempt in (1, 2):
            client = self.session.client()
            jwt = self.session.current_jwt()
            try:
                log.debug("Tapis pods.%s %s", operation, kwargs.get("pod_id")
                          or kwargs.get("volume_id") or "")
                return plain(getattr(client.pods, operation)(**kwargs))
            except UnauthorizedError as exc:
                if attempt == 1:
                    self.session.refresh(jwt)
                    continue
                raise self._error(exc, what, _secrets) from None
            except BaseTapyException as exc:
                raise self._error(exc, what, _secrets) from None
        raise TapisAuthError("unreachable")  # pragma: no cover - the loop returns or raises

    def _error(self, exc: Exception, what: str, extra: tuple[str, ...]) -> Exception:
        return map_error(exc, what, where=self.settings.base_url,
                         secrets=[*self.session.secrets(), *extra],
                         auth_hint=self.session.auth_hint)

    # ------------------------------------------------------------------ operations

    def list_pods(self) -> list[dict[str, Any]]:
        found = self.call("list_pods", "list pods")
        return found if isinstance(found, list) else []

    def get_pod(self, pod_id: str) -> dict[str, Any]:
        return self.call("get_pod", f"read pod {pod_id}", pod_id=pod_id)

    def create_pod(self, body: dict[str, Any], secrets: tuple[str, ...] = ()) -> dict[str, Any]:
        return self.call("create_pod", f"create pod {body.get('pod_id')}", _secrets=secrets,
                         **body)

    def stop_pod(self, pod_id: str) -> None:
        self.call("stop_pod", f"stop pod {pod_id}", pod_id=pod_id)

    def delete_pod(self, pod_id: str) -> None:
        self.call("delete_pod", f"delete pod {pod_id}", pod_id=pod_id)

    def pod_logs(self, pod_id: str) -> str:
        found = self.call("get_pod_logs", f"read the logs of pod {pod_id}", pod_id=pod_id)
        if isinstance(found, dict):
            logs = found.get("logs")
            if logs is None and isinstance(found.get("result"), dict):  # envelope (falsy logs)
                logs = found["result"].get("logs")
            return str(logs or "")
        return ""

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        return self.call("get_volume", f"read volume {volume_id}", volume_id=volume_id)

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.call("create_volume", f"create volume {body.get('volume_id')}", **body)

    def delete_volume(self, volume_id: str) -> None:
        self.call("delete_volume", f"delete volume {volume_id}", volume_id=volume_id)

    def close(self) -> None:
        self.session.close()
