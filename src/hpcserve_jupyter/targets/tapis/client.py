"""PodsApi: each Pods operation the target uses, through the real tapipy client.

One method = one tapipy call (blocking; the target runs them in a worker thread). A 401 gets
one retry after fresh tokens; every other tapipy error becomes ours (`errors.map_error`).
Results come back as plain dicts/lists (tapipy's `TapisResult` objects converted), and the
tapipy 25.4.0 quirks are absorbed here: start/stop/restart are GET operations (tapipy knows),
a falsy `result` (delete_pod / delete_volume answer `""`) comes back as the whole envelope.

Volume files: `upload_to_volume` (tapipy sends the bytes as the multipart `file` part) and
`get_volume_contents` (raw bytes) go through tapipy. `download` is the one exception: tapipy
reads a whole answer into memory, so a job's output is fetched with a streamed GET of the same
URL, on tapipy's own session and token, written to disk as it arrives.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .auth import TapisSession
from .config import TapisAuthConfig, TapisPodsConfig
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


class TapisApi:
    """One tapipy client per target and the one rule every call follows: a 401 gets one retry
    after fresh tokens, any other tapipy error becomes ours, results are plain data."""

    service = "Pods"  # names the service in error messages

    def __init__(self, settings: TapisAuthConfig) -> None:
        self.settings = settings
        self.session = TapisSession(settings)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.base_url!r})"

    def call_on(self, resource: str, operation: str, what: str, /, *,
                _secrets: tuple[str, ...] = (), **kwargs: Any) -> Any:
        """tapipy `<resource>.<operation>(**kwargs)` as plain data; `what` names it in errors,
        which never contain `_secrets` (values of the call's body) nor our credentials."""
        from tapipy.errors import BaseTapyException, UnauthorizedError

        for attempt in (1, 2):
            client = self.session.client()
            jwt = self.session.current_jwt()
            try:
                log.debug("Tapis %s.%s", resource, operation)
                api = getattr(client, resource) if resource else client  # "": tapipy's own
                return plain(getattr(api, operation)(**kwargs))
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
                         auth_hint=self.session.auth_hint, service=self.service)

    def stream_to(self, url: str, dest: Path, what: str) -> bool:
        """A GET of `url` on tapipy's own session and token, streamed into `dest` (0600,
        written under a temporary name and then renamed); False on 404. tapipy itself reads a
        whole answer into memory, which a job's output must not be."""
        import requests
        from tapipy import errors as te

        for attempt in (1, 2):
            client = self.session.client()
            jwt = self.session.current_jwt()
            try:
                resp = client.requests_session.get(url, headers={"X-Tapis-Token": jwt or ""},
                                                   stream=True, verify=client.verify)
            except requests.RequestException as exc:
                raise self._error(te.BaseTapyException(
                    msg=f"Unable to make request to Tapis server. Exception: {exc}"),
                    what, ()) from None
            with resp:
                if resp.status_code == 401 and attempt == 1:
                    self.session.refresh(jwt)
                    continue
                if resp.status_code == 404:
                    return False
                if resp.status_code >= 300:
                    raise self._error(_tapis_error(resp), what, ()) from None
                try:
                    _save(resp, dest)
                except requests.RequestException as exc:
                    raise self._error(te.BaseTapyException(
                        msg=f"Unable to make request to Tapis server. Exception: {exc}"),
                        what, ()) from None
                return True
        raise TapisAuthError("unreachable")  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        self.session.close()


class PodsApi(TapisApi):
    settings: TapisPodsConfig

    def call(self, operation: str, what: str, /, *, _secrets: tuple[str, ...] = (),
             **kwargs: Any) -> Any:
        """tapipy `pods.<operation>(**kwargs)` as plain data (see `call_on`)."""
        return self.call_on("pods", operation, what, _secrets=_secrets, **kwargs)

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

    def upload(self, volume_id: str, path: str, data: bytes) -> None:
        """`data` as the file `path` of the volume (bytes: a retry after 401 sends them again)."""
        self.call("upload_to_volume", f"upload {path} to volume {volume_id}",
                  volume_id=volume_id, path=path,
                  file=(path.rsplit("/", 1)[-1], data, "application/octet-stream"))

    def volume_file(self, volume_id: str, path: str) -> bytes:
        """The bytes of a (small) file in a volume; TapisNotFound when it does not exist."""
        found = self.call("get_volume_contents", f"read {path} in volume {volume_id}",
                          volume_id=volume_id, path=path)
        if isinstance(found, str):
            return found.encode()
        return found if isinstance(found, bytes) else b""

    def download(self, volume_id: str, path: str, dest: Path) -> bool:
        """get_volume_contents streamed into `dest`; False when the volume or the file does
        not exist."""
        url = (f"{self.settings.base_url}/v3/pods/volumes/{quote(volume_id, safe='')}"
               f"/contents/{quote(path)}")
        return self.stream_to(url, dest, f"fetch {path} from volume {volume_id}")


def _tapis_error(resp: Any) -> Exception:
    """The tapipy exception tapipy itself raises for this HTTP status (errors.map_error
    turns it into ours)."""
    from tapipy import errors as te

    try:
        message = resp.json().get("message")
    except ValueError:
        message = resp.text[:1000]
    kinds = {400: te.BadRequestError, 401: te.UnauthorizedError, 403: te.ForbiddenError,
             404: te.NotFoundError, 503: te.ServiceUnavailableError}
    kind = kinds.get(resp.status_code) or (te.InternalServerError if resp.status_code >= 500
                                           else te.BaseTapyException)
    return kind(msg=message, response=resp)


def _save(resp: Any, dest: Path) -> None:
    """Into a temporary file of its own (two fetches of one output may overlap), then renamed."""
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(name)  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in resp.iter_content(1 << 20):
                out.write(chunk)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
