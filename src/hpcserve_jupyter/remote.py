"""The facade over HTTP: the calls of the `Facade` protocol (facade.py), answered by the
Jupyter server extension's REST API (and its proxy for prompts), so a notebook kernel shares the
one session manager its Jupyter server hosts.

    from hpcserve_jupyter.remote import RemoteHpcserve, find_server
    hp = RemoteHpcserve.connect()          # the server this kernel runs under
    s = hp.launch("smollm2-135m")          # waits until ready (Server-Sent Events, no polling)
    print(hp.prompt(s.id, "Why is the sky blue?"))

`find_server()` looks for `HPCSERVE_SERVER_URL` (+ `HPCSERVE_SERVER_TOKEN`), else the running
Jupyter server that is this process's ancestor (or whose root holds the kernel's notebook), and
checks that the extension answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

from . import paths
from .client import Client
from .errors import (
    BadInput,
    EngineError,
    HpcserveError,
    LaunchError,
    NotFound,
    NotReady,
    TargetUnreachable,
)
from .events import Subscription, deliver
from .facade import SecretField
from .gatewaykeys import GatewayKey
from .httperrors import response_error, unreachable, unreachable_on_http_error
from .jobhandle import JobHandle
from .jobs import Job
from .prompting import Prompting, require_ready
from .sessions import Session, State

API = "hpcserve/api"
_UNREACHABLE_HINT = "is it running? (HPCSERVE_SERVER_URL)"
REPOLL = 60.0  # seconds without news before `wait` asks for the session's state again
_KINDS: dict[str, type[HpcserveError]] = {
    "BadInput": BadInput, "NotFound": NotFound, "RecipeError": BadInput, "NotReady": NotReady,
    "InvalidTransition": NotReady, "EngineError": EngineError, "LaunchError": LaunchError,
    "TargetUnreachable": TargetUnreachable, "HpcserveError": HpcserveError,
    "LabelTaken": BadInput,
}


@dataclass(frozen=True)
class ServerInfo:
    """A Jupyter server with the hpcserve extension: its URL (with base_url) and token."""

    url: str
    token: str
    pid: int | None = None
    root_dir: str | None = None


def _error_from(response: httpx.Response) -> HpcserveError:
    """The server's error answer as the error class it named (else one fitting its status)."""
    status = response.status_code
    if status in (401, 403):
        return HpcserveError(f"the Jupyter server refused the request ({status})",
                             hint="check the token (HPCSERVE_SERVER_TOKEN)")
    err = response_error(response)
    message, hint = err.message, err.hint
    kind = _KINDS.get(err.kind or "")
    if kind is EngineError:
        return EngineError(message, status_code=status)
    if kind is not None:
        return kind(message, hint=hint)
    if status == 404:
        return NotFound(message, hint=hint)
    if status == 400:
        return BadInput(message, hint=hint)
    if status in (409, 429, 502, 503, 504):
        return NotReady(message, hint=hint)
    return HpcserveError(message, hint=hint)


class RemoteHpcserve(Prompting):
    """`Hpcserve`'s public methods over the extension's REST API."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.token = token or ""
        host = httpx.URL(self.base_url).host
        self._http = httpx.Client(
            headers={"Authorization": f"token {self.token}"} if self.token else {},
            timeout=httpx.Timeout(timeout, connect=10.0),
            trust_env=host not in ("127.0.0.1", "localhost", "::1"))

    @classmethod
    def connect(cls, **kwargs: Any) -> RemoteHpcserve:
        """The facade on the Jupyter server this process runs under (see find_server)."""
        info = find_server()
        if info is None:
            raise HpcserveError("no running Jupyter server with the hpcserve extension was found",
                                hint="start one (jupyter lab / jupyter server), or set "
                                "HPCSERVE_SERVER_URL and HPCSERVE_SERVER_TOKEN")
        return cls(info.url, info.token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteHpcserve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def _url(self, *parts: str) -> str:
        return self.base_url + "/".join([API, *(urllib.parse.quote(p, safe="") for p in parts)])

    def _call(self, method: str, *parts: str, **kwargs: Any) -> Any:
        with self._unreachable():
            response = self._http.request(method, self._url(*parts), **kwargs)
        if response.status_code >= 400:
            raise _error_from(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def _unreachable(self) -> contextlib.AbstractContextManager[None]:
        """A connection failure inside the block: TargetUnreachable, naming the server."""
        return unreachable_on_http_error(f"the Jupyter server at {self.base_url}",
                                         hint=_UNREACHABLE_HINT)

    # ------------------------------------------------------------------ catalog

    def recipes(self) -> list[dict[str, Any]]:
        return self._call("GET", "recipes")["recipes"]

    def recipe(self, name: str) -> dict[str, Any]:
        return self._call("GET", "recipes", name)

    def recipe_errors(self) -> dict[str, str]:
        return self._call("GET", "recipes")["errors"]

    def targets(self) -> list[dict[str, Any]]:
        return self._call("GET", "targets")["targets"]

    # ------------------------------------------------------------------ lifecycle

    def launch(self, recipe: str, *, backend: str | None = None, on: str = "local",
               name: str | None = None, wait: bool = True, timeout: float | None = None,
               progress: Callable[[Session], None] | None = None, **overrides: Any) -> Session:
        """Launch `recipe` on target `on`; with wait=True return once it is ready (or ended)."""
        body = {"recipe": recipe, "backend": backend, "target": on, "name": name,
                "overrides": overrides}
        session = Session.from_dict(self._call("POST", "sessions", json=body))
        if wait:
            session = self.wait(session.id, timeout=timeout, progress=progress)
        return session

    def wait(self, key: str, *, timeout: float | None = None,
             progress: Callable[[Session], None] | None = None) -> Session:
        """Until the session is ready (or ends), following the server's event stream."""
        deadline = None if timeout is None else time.monotonic() + timeout
        session = self.status(key)
        sub: Subscription | None = None
        try:
            while True:
                if progress:
                    progress(session)
                if session.state == State.READY or session.state.terminal:
                    return session
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NotReady(f"session {session.name} is still {session.state} after "
                                   f"{timeout:.0f} s", hint="wait longer, or check its logs")
                if sub is None or sub.closed:  # (re)subscribe, then look: nothing is missed
                    sub = self.watch(snapshot=False)
                    current = self.status(session.id)
                    if current.state != session.state:
                        session = current
                        continue
                session = self._next_change(sub, session, left)
        finally:
            if sub is not None:
                sub.close()

    def _next_change(self, sub: Subscription, session: Session, left: float | None) -> Session:
        """The session after its next state change in `sub`, else as it is once `left` seconds
        (at most REPOLL) have passed or the stream has ended. The deadline is the wait for the
        next event, not the stream's read timeout, which the server's keepalives would reset."""
        until = time.monotonic() + (REPOLL if left is None else min(left, REPOLL))
        while (remaining := until - time.monotonic()) > 0:
            event = sub.get(timeout=remaining)
            if event is None:
                break  # time is up, or the stream ended (the caller subscribes again)
            found = event.get("session")
            if found and found.get("id") == session.id:
                changed = Session.from_dict(found)
                if changed.state != session.state:
                    return changed
        return self.status(session.id)

    def sessions(self, *, live_only: bool = False) -> list[Session]:
        data = self._call("GET", "sessions", params={"live": "1" if live_only else "0"})
        return [Session.from_dict(s) for s in data["sessions"]]

    def status(self, key: str) -> Session:
        return Session.from_dict(self._call("GET", "sessions", key))

    def refresh(self) -> None:
        """One monitor pass now (the server's loop does this every poll interval anyway)."""
        self._call("POST", "refresh")

    def stop(self, key: str) -> Session:
        return Session.from_dict(self._call("DELETE", "sessions", key))

    def keepalive(self, key: str) -> Session:
        return Session.from_dict(self._call("POST", "sessions", key, "keepalive"))

    def relaunch(self, key: str, *, name: str | None = None, wait: bool = True,
                 timeout: float | None = None,
                 progress: Callable[[Session], None] | None = None) -> Session:
        body = {"name": name} if name else {}
        session = Session.from_dict(self._call("POST", "sessions", key, "relaunch", json=body))
        if wait:
            session = self.wait(session.id, timeout=timeout, progress=progress)
        return session

    def extend(self, key: str, time: str | int) -> tuple[Session, str]:
        done = self._call("POST", "sessions", key, "extend", json={"time": time})
        return Session.from_dict(done["session"]), str(done["message"])

    def metrics(self, key: str) -> dict[str, Any]:
        return dict(self._call("GET", "sessions", key, "metrics"))

    def logs(self, key: str, tail: int | None = 100) -> str:
        return self._call("GET", "sessions", key, "logs", params={"tail": tail or 0})

    def follow_logs(self, key: str, *, from_start: bool = True) -> Iterator[str]:
        params = {"follow": "1", "from_start": "1" if from_start else "0"}
        timeout = httpx.Timeout(None, connect=10.0)
        with (self._unreachable(),
              self._http.stream("GET", self._url("sessions", key, "logs"), params=params,
                                timeout=timeout) as response):
            if response.status_code >= 400:
                raise _error_from(response)
            yield from response.iter_text()

    def events(self, key: str | None = None) -> list[dict[str, Any]]:
        params = {"session": key} if key else {}
        return self._call("GET", "events", "log", params=params)["events"]

    # ------------------------------------------------------------------ one-off jobs

    def submit_job(self, recipe: str, input: str | Path, *, on: str = "local",
                   backend: str | None = None, name: str | None = None,
                   output: str | Path | None = None, concurrency: int = 8,
                   resume: str | None = None, runner: str = "auto",
                   **overrides: Any) -> JobHandle:
        """Submit a batch job over an OpenAI Batch file; returns at once (job.wait() waits).
        The server reads `input` (and writes `output`) itself: paths on the machine it shares
        with this kernel, made absolute here, where a relative path means this directory."""
        body = {"recipe": recipe, "input": _absolute(input), "target": on, "backend": backend,
                "name": name, "output": _absolute(output) if output else None,
                "concurrency": concurrency, "resume": resume, "overrides": overrides,
                "runner": runner}
        return JobHandle(self, Job.from_dict(self._call("POST", "jobs", json=body)))

    def batch_job(self, recipe: str, prompts: Any, *, url: str = "/v1/chat/completions",
                  system: str | None = None, params: dict[str, Any] | None = None,
                  on: str = "local", backend: str | None = None, name: str | None = None,
                  concurrency: int = 8, **overrides: Any) -> JobHandle:
        """A batch job from prompts (a list, or a pandas Series: its index labels become the
        custom_ids), written as an OpenAI Batch file (0600) in this user's state directory,
        which the server, running as the same user on this machine, reads."""
        from . import jobinput  # here, not at import: it pulls in the job driver

        path = jobinput.write_prompts(paths.home(), prompts, url=url, system=system,
                                      params=params)
        return self.submit_job(recipe, path, on=on, backend=backend, name=name,
                               concurrency=concurrency, **overrides)

    def jobs(self, *, live_only: bool = False) -> list[Job]:
        data = self._call("GET", "jobs", params={"live": "1" if live_only else "0"})
        return [Job.from_dict(j) for j in data["jobs"]]

    def job_status(self, key: str) -> Job:
        return Job.from_dict(self._call("GET", "jobs", key))

    def wait_job(self, key: str, *, timeout: float | None = None,
                 progress: Callable[[Job], None] | None = None) -> Job:
        """Until the job ends, following the server's event stream (its progress events too):
        `progress(job)` first and after every change of state or counts."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.job_status(key)
        sub: Subscription | None = None
        try:
            while True:
                if progress:
                    progress(job)
                if job.state.terminal:
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NotReady(f"job {job.name} is still {job.state} after {timeout:.0f} s",
                                   hint="wait longer, or check hpcserve job status")
                if sub is None or sub.closed:  # (re)subscribe, then look: nothing is missed
                    sub = self.watch(snapshot=False)
                    current = self.job_status(job.id)
                    if _job_moved(job, current):
                        job = current
                        continue
                job = self._next_job_change(sub, job, left)
        finally:
            if sub is not None:
                sub.close()

    def _next_job_change(self, sub: Subscription, job: Job, left: float | None) -> Job:
        """The job after its next change in `sub`, else as it is once `left` seconds (at most
        REPOLL) have passed or the stream has ended (see _next_change)."""
        until = time.monotonic() + (REPOLL if left is None else min(left, REPOLL))
        while (remaining := until - time.monotonic()) > 0:
            event = sub.get(timeout=remaining)
            if event is None:
                break
            found = event.get("job")
            if found and found.get("id") == job.id:
                changed = Job.from_dict(found)
                if _job_moved(job, changed):
                    return changed
        return self.job_status(job.id)

    def cancel_job(self, key: str) -> Job:
        return Job.from_dict(self._call("DELETE", "jobs", key))

    def job_logs(self, key: str, tail: int | None = 100) -> str:
        return self._call("GET", "jobs", key, "logs", params={"tail": tail or 0})

    def job_results(self, key: str, *, output: str | Path | None = None) -> Path:
        """The job's output JSONL as it is now, downloaded from the server (streamed to disk)
        to `output` (a file, or a directory to put it in), else to a private file (0600) in
        this user's state directory that the next call for the job replaces."""
        job = self.job_status(key)
        if output is None:
            folder = paths.home() / "job-results"
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            target = folder / f"{job.id}.jsonl"
        else:
            target = Path(output).expanduser().absolute()
            if target.is_dir():
                target = target / Path(job.output).name
        tmp = target.with_name(f".{target.name}.part")
        try:
            with (self._unreachable(),
                  self._http.stream("GET", self._url("jobs", job.id, "results")) as response):
                if response.status_code >= 400:
                    raise _error_from(response)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    for chunk in response.iter_bytes(1 << 20):
                        out.write(chunk)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        return target

    # ------------------------------------------------------------------ events (front ends)

    def watch(self, *, snapshot: bool = True) -> Subscription:
        """Manager events as they happen (the server's event stream): a `snapshot` of the live
        sessions first (unless snapshot=False), then one event per change."""
        sub = Subscription()
        opened = threading.Event()
        holder: dict[str, Any] = {}

        def pump() -> None:
            timeout = httpx.Timeout(None, connect=10.0)
            try:
                with connect_sse(self._http, "GET", self._url("events"), timeout=timeout) as src:
                    holder["response"] = src.response
                    if src.response.status_code >= 400:
                        holder["error"] = _error_from(src.response)
                        return  # (opened, finally: after the error is there to raise)
                    opened.set()
                    for sse in src.iter_sse():
                        if sub.closed:
                            return
                        if not sse.data:  # e.g. the `retry:` line: no event
                            continue
                        event = json.loads(sse.data)
                        if event.get("type") == "snapshot" and not snapshot:
                            continue
                        sub.put(event)
            except (httpx.HTTPError, OSError, RuntimeError) as exc:  # closed under it, too
                holder.setdefault("error", unreachable(f"the Jupyter server at {self.base_url}",
                                                       exc, hint=_UNREACHABLE_HINT))
            finally:
                opened.set()
                sub.close()

        def stop() -> None:
            response = holder.get("response")
            if response is not None:
                with contextlib.suppress(Exception):
                    response.close()

        sub.on_close(stop)
        threading.Thread(target=pump, name="hpcserve-remote-events", daemon=True).start()
        opened.wait(15)
        if "error" in holder:
            raise holder["error"]
        return sub

    def subscribe(self, callback: Callable[[dict[str, Any]], None], *,
                  snapshot: bool = True) -> Subscription:
        """Call `callback(event)` for every event (see watch) on a dispatcher thread;
        `.close()` on the result unsubscribes."""
        return deliver(self.watch(snapshot=snapshot), callback)

    def set_target_secrets(self, target: str, values: dict[str, str]) -> None:
        """Put secrets into the server's environment, where its targets read them (the
        kernel's environment would not reach them); only names target_secrets lists."""
        self._call("PUT", "targets", target, "secrets", json=dict(values))

    def target_secrets(self, target: str) -> list[SecretField]:
        """The secrets a target reads from environment variables, as front ends ask for them:
        `[{"label", "env", "is_set"}]` (names only; `is_set` in the server's environment)."""
        return self._call("GET", "targets", target, "secrets")["secrets"]

    # ------------------------------------------------------------------ gateway keys

    def create_gateway_key(self, label: str | None = None, *,
                           sessions: list[str] | None = None) -> GatewayKey:
        """A key the server's gateway (/hpcserve/v1) accepts for `sessions` (names or ids;
        None: every session) and no other route does; `.key` holds it, shown this once."""
        body = {"label": label, "sessions": sessions}
        return GatewayKey.from_dict(self._call("POST", "keys", json=body))

    def gateway_keys(self) -> list[GatewayKey]:
        return [GatewayKey.from_dict(k) for k in self._call("GET", "keys")["keys"]]

    def revoke_gateway_key(self, key: str) -> GatewayKey:
        """Revoke a gateway key by id or label."""
        return GatewayKey.from_dict(self._call("DELETE", "keys", key))

    # ------------------------------------------------------------------ Jupyter AI

    def use_in_jupyter_ai(self, key: str, *, default: bool = False) -> dict[str, Any]:
        """Make the session a Jupyter AI model of the server (its gateway, a scoped key)."""
        return self._call("POST", "sessions", key, "jupyter-ai", json={"default": default})

    def drop_from_jupyter_ai(self, key: str) -> dict[str, Any]:
        return self._call("DELETE", "sessions", key, "jupyter-ai")

    # ------------------------------------------------------------------ prompting

    def client(self, key: str) -> tuple[Client, Session]:
        """An OpenAI-compatible client for a ready session, through the server's proxy."""
        session = self.status(key)
        require_ready(session)
        url = f"{self.base_url}hpcserve/proxy/{session.id}"
        return Client(url, api_key=self.token or None), session


# ---------------------------------------------------------------------- finding the server


def _absolute(path: str | Path) -> str:
    """A path as the server must read it: absolute, `~` expanded, here."""
    return str(Path(path).expanduser().absolute())


def _job_moved(before: Job, after: Job) -> bool:
    """Whether a job's state or counts changed (what a progress display shows)."""
    return ((before.state, before.done, before.failed, before.total)
            != (after.state, after.done, after.failed, after.total))


def find_server(*, check: bool = True, timeout: float = 5.0) -> ServerInfo | None:
    """The Jupyter server this process runs under, with the hpcserve extension answering.

    1. `HPCSERVE_SERVER_URL` (+ `HPCSERVE_SERVER_TOKEN`, else `JUPYTER_TOKEN`): used as given;
       an error if it does not answer.
    2. Running servers (jupyter_server.serverapp.list_running_servers()), best match first:
       the server whose pid is an ancestor of this process (a kernel's parent is its server),
       then one whose root_dir holds this kernel's notebook (JPY_SESSION_NAME) or whose runtime
       directory holds the kernel's connection file; the first that answers
       GET /hpcserve/api/recipes wins. None when none does.
    """
    url = os.environ.get("HPCSERVE_SERVER_URL")
    if url:
        token = os.environ.get("HPCSERVE_SERVER_TOKEN") or os.environ.get("JUPYTER_TOKEN", "")
        info = ServerInfo(url.rstrip("/") + "/", token)
        if check and not _answers(info, timeout):
            raise HpcserveError(f"HPCSERVE_SERVER_URL={url} does not answer as a Jupyter server "
                                "with the hpcserve extension",
                                hint="check the URL and HPCSERVE_SERVER_TOKEN, and that the "
                                "extension is enabled (jupyter server extension list)")
        return info
    for info in _ranked(_running_servers()):
        if not check or _answers(info, timeout):
            return info
    return None


def _running_servers() -> list[dict[str, Any]]:
    try:
        from jupyter_server.serverapp import list_running_servers
    except ImportError:  # a kernel in an environment without jupyter_server
        return _server_files()
    return list(list_running_servers())


def _server_files() -> list[dict[str, Any]]:
    import psutil

    from .paths import jupyter_data_dir

    runtime = Path(os.environ.get("JUPYTER_RUNTIME_DIR") or jupyter_data_dir() / "runtime")
    found = []
    for path in sorted(runtime.glob("jpserver-*.json")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if "pid" in info and psutil.pid_exists(int(info["pid"])):
            found.append(info)
    return found


def _ancestors() -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process().parents()]
    except psutil.Error:
        return [os.getppid()]


def _connection_file() -> str | None:
    import sys

    argv = sys.argv
    for i, arg in enumerate(argv):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--f="):
            return arg[4:]
    return None


def _ranked(servers: list[dict[str, Any]]) -> list[ServerInfo]:
    ancestors = [os.getpid(), *_ancestors()]  # a server may also use the facade itself
    parent = os.environ.get("JPY_PARENT_PID")
    notebook = os.environ.get("JPY_SESSION_NAME", "")
    connection = _connection_file()

    def score(s: dict[str, Any]) -> tuple[int, ...]:
        pid = int(s.get("pid") or -1)
        root = str(s.get("root_dir") or s.get("notebook_dir") or "")
        in_root = bool(notebook and root and os.path.abspath(notebook).startswith(
            os.path.abspath(root).rstrip(os.sep) + os.sep))
        runtime = bool(connection and s.get("_runtime_dir")
                       and Path(connection).parent == Path(s["_runtime_dir"]))
        depth = ancestors.index(pid) if pid in ancestors else len(ancestors) + 1
        return (-(pid in ancestors), depth, -(str(pid) == parent), -in_root, -runtime)

    # Only servers tied to this process: a kernel run by nbval or a script beside some unrelated
    # Jupyter server must not start sharing that server's sessions.
    ranked = [s for s in sorted(servers, key=score)
              if score(s)[0] < 0 or any(v < 0 for v in score(s)[2:])]
    return [ServerInfo(str(s["url"]).rstrip("/") + "/", str(s.get("token") or ""),
                       int(s["pid"]) if s.get("pid") else None,
                       s.get("root_dir") or s.get("notebook_dir")) for s in ranked]


def _answers(info: ServerInfo, timeout: float) -> bool:
    headers = {"Authorization": f"token {info.token}"} if info.token else {}
    try:
        r = httpx.get(f"{info.url}{API}/recipes", headers=headers, timeout=timeout,
                      trust_env=False)
    except httpx.HTTPError:
        return False
    return r.status_code == 200
