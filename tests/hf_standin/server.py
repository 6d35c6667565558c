"""A local stand-in for the Hugging Face Hub's file API, for the real `huggingface_hub` client
(2.4.0) pointed at it through `HF_ENDPOINT`.

Two stdlib HTTP servers on 127.0.0.1: the Hub, and a "CDN" on another port (another origin, as
the Hub's LFS storage is), so the client behaves as with the real Hub: it follows no redirect
to the CDN when asking for metadata and drops the Authorization header when downloading there.

Routes (what the client calls; checked against file_download.py, _snapshot_download.py,
hf_api.py and utils/_http.py of huggingface_hub 2.4.0):

* ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes, blob ids and LFS
  info to ``siblings``): model info with the commit ``sha`` and ``gated``.
* ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true``: the tree listing, paginated
  with a ``Link: <...>; rel="next"`` header beyond ``page_size`` entries.
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: small files answer 200 with ``ETag`` (the git blob
  sha1), ``X-Repo-Commit`` and ``Content-Length``; LFS files answer 302 to the CDN with
  ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``. Ranges are honoured (206). No Xet header is
  ever sent, so downloads are plain HTTP.
* CDN ``GET|HEAD /blobs/{sha256}?repo=..&sig=..``: the LFS content, signed by the Hub.

Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers the client maps to its
exceptions: ``RepoNotFound`` (404), ``RevisionNotFound`` (404), ``EntryNotFound`` (404),
``GatedRepo`` (401 without a token, 403 with a token not granted access). A token the Hub
does not know is refused on every route with 401 "Invalid credentials in Authorization header",
as the Hub does. Model info and tree listings of a gated repo are public; its files are not.

Faults for tests: `cut_once(path, after)` (the next download of a file stops after N bytes and
the connection closes), `fail_next(status, ...)`, `corrupt_once(path)` (one byte flipped, the
size right). `log` records every request (server, method, path, Range, Authorization present,
status); tokens never reach it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from .repos import Repo, RepoFile, Revision

CHUNK = 1 << 20


@dataclass(frozen=True)
class Logged:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # decoded, without the query
    query: str
    range: str | None
    auth: bool  # an Authorization header was sent (its value is never kept)
    status: int


@dataclass
class _Failure:
    status: int
    times: int
    method: str | None
    path_contains: str | None


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class HubStandIn:
    """The two servers, the repos they serve and the faults to inject; a context manager."""

    def __init__(self, tokens: dict[str, str] | None = None, page_size: int = 1000) -> None:
        self.repos: dict[str, Repo] = {}
        self.tokens = dict(tokens or {})  # token -> user name
        self.page_size = page_size
        self.log: list[Logged] = []
        self._lock = threading.Lock()
        self._cuts: dict[str, int] = {}
        self._then: dict[str, int] = {}
        self._corrupt: set[str] = set()
        self._failures: list[_Failure] = []
        self._secret = secrets.token_bytes(16)
        self._servers: list[ThreadingHTTPServer] = []
        self.url = self.cdn_url = ""

    # ------------------------------------------------------------ set-up

    def add_repo(self, repo_id: str, folder: Path, *, gated: bool = False,
                 granted: frozenset[str] | set[str] = frozenset(),
                 revisions: dict[str, Path] | None = None) -> Repo:
        """A repo whose branch `main` holds `folder`'s files; `revisions` adds more refs."""
        repo = Repo(repo_id, gated=gated, granted=frozenset(granted))
        repo.add_revision("main", folder)
        for name, other in (revisions or {}).items():
            repo.add_revision(name, other)
        self.repos[repo_id] = repo
        return repo

    def start(self) -> HubStandIn:
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True
            server.standin = self  # type: ignore[attr-defined]
            server.role = role  # type: ignore[attr-defined]
            threading.Thread(target=server.serve_forever, name=f"hf-standin-{role}",
                             daemon=True).start()
            self._servers.append(server)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> HubStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ faults and log

    def cut_once(self, path: str, after: int, then_status: int | None = None) -> None:
        """The next download of a file named `path` sends `after` bytes, then closes; with
        `then_status`, the request that follows for the same URL path gets that status (so
        the client's own resume fails too: an interrupted pull)."""
        with self._lock:
            self._cuts[path] = after
            if then_status is not None:
                self._then[path] = then_status

    def corrupt_once(self, path: str) -> None:
        """The next download of `path` has one byte flipped (the size stays right)."""
        with self._lock:
            self._corrupt.add(path)

    def fail_next(self, status: int, *, times: int = 1, method: str | None = None,
                  path_contains: str | None = None) -> None:
        """The next `times` requests matching method/path are answered with `status`."""
        with self._lock:
            self._failures.append(_Failure(status, times, method, path_contains))

    def requests(self, method: str | None = None, server: str | None = None,
                 path_contains: str | None = None) -> list[Logged]:
        with self._lock:
            return [r for r in self.log if (method is None or r.method == method)
                    and (server is None or r.server == server)
                    and (path_contains is None or path_contains in r.path)]

    def _take_failure(self, method: str, path: str) -> int | None:
        with self._lock:
            for f in self._failures:
                if (f.method in (None, method)) and (f.path_contains is None
                                                     or f.path_contains in path):
                    f.times -= 1
                    if f.times <= 0:
                        self._failures.remove(f)
                    return f.status
        return None

    def _take_cut(self, path: str) -> tuple[int | None, int | None]:
        with self._lock:
            return self._cuts.pop(path, None), self._then.pop(path, None)

    def _take_corrupt(self, path: str) -> bool:
        with self._lock:
            if path in self._corrupt:
                self._corrupt.discard(path)
                return True
            return False

    def _record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)

    # ------------------------------------------------------------ helpers for routes

    def sign(self, repo_id: str, sha256: str) -> str:
        return hmac.new(self._secret, f"{repo_id}:{sha256}".encode(), hashlib.sha256).hexdigest()

    def user_of(self, authorization: str | None) -> str | None:
        """The user a Bearer token belongs to; None without one; HubError for a bad one."""
        if not authorization:
            return None
        token = authorization.removeprefix("Bearer ").strip()
        user = self.tokens.get(token)
        if user is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return user

    def repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    @staticmethod
    def revision(repo: Repo, ref: str) -> Revision:
        rev = repo.revision(ref)
        if rev is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {ref}")
        return rev


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hf-standin/1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def hub(self) -> HubStandIn:
        return self.server.standin  # type: ignore[attr-defined]

    @property
    def role(self) -> str:
        return self.server.role  # type: ignore[attr-defined]

    def do_HEAD(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        split = urlsplit(self.path)
        self._path, self._query = unquote(split.path), split.query
        self._status = 0
        try:
            failure = self.hub._take_failure(self.command, self._path)
            if failure is not None:
                raise HubError(failure, None, f"injected failure {failure}")
            if self.role == "cdn":
                self._cdn(split.path, parse_qs(split.query))
            else:
                self._route(split.path, parse_qs(split.query))
        except HubError as exc:
            self._error(exc)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        """Logged here, before the client can read the answer (a test reads the log next)."""
        self._status = code
        self.hub._record(Logged(self.role, self.command, self._path, self._query,
                                self.headers.get("Range"),
                                self.headers.get("Authorization") is not None, code))
        super().send_response(code, message)

    # ------------------------------------------------------------ hub routes

    def _route(self, raw_path: str, query: dict[str, list[str]]) -> None:
        parts = raw_path.strip("/").split("/")
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            self.hub.user_of(self.headers.get("Authorization"))  # a bad token: 401 anywhere
            repo = self.hub.repo(unquote(parts[2]) + "/" + unquote(parts[3]))
            rest = parts[4:]
            if not rest:
                return self._info(repo, "main", query)
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo, unquote(rest[1]), query)
            if rest[0] == "tree" and len(rest) in (2, 3):
                folder = unquote(rest[2]) if len(rest) == 3 else ""
                return self._tree(repo, unquote(rest[1]), folder, query)
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = unquote(parts[0]) + "/" + unquote(parts[1])
            return self._resolve(repo_id, unquote(parts[3]),
                                 "/".join(unquote(p) for p in parts[4:]))
        raise HubError(404, None, "Sorry, we can't find the page you are looking for.")

    def _info(self, repo: Repo, ref: str, query: dict[str, list[str]]) -> None:
        rev = self.hub.revision(repo, ref)
        blobs = query.get("blobs", [""])[0].lower() == "true"
        self._json({
            "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": rev.commit, "lastModified": "2026-12-01T00:00:00.000Z", "private": False,
            "gated": "manual" if repo.gated else False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": ["safetensors"], "library_name": "transformers",
            "siblings": [f.sibling(blobs) for f in rev.files.values()],
            "usedStorage": sum(f.size for f in rev.files.values()),
            "createdAt": "2026-12-01T00:00:00.000Z",
        })

    def _tree(self, repo: Repo, ref: str, folder: str, query: dict[str, list[str]]) -> None:
        rev = self.hub.revision(repo, ref)
        recursive = query.get("recursive", [""])[0].lower() == "true"
        prefix = folder.rstrip("/") + "/" if folder else ""
        if folder and folder not in rev.folders():
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on \"{ref}\"")

        def wanted(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

        entries = [{"type": "directory", "oid": rev.tree_id(d), "size": 0, "path": d}
                   for d in rev.folders() if wanted(d)]
        entries += [f.tree_entry() for p, f in rev.files.items() if wanted(p)]
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(entries):
            nxt = (f"{self.hub.url}{urlsplit(self.path).path}?recursive={str(recursive).lower()}"
                   f"&cursor={start + self.hub.page_size}")
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, repo_id: str, ref: str, path: str) -> None:
        user = self.hub.user_of(self.headers.get("Authorization"))
        repo = self.hub.repo(repo_id)
        if repo.gated and user not in repo.granted:
            msg = (f"Access to model {repo_id} is restricted. You must have access to it and be "
                   "authenticated to access it. Please log in." if user is None else
                   f"Access to model {repo_id} is restricted and you are not in the authorized "
                   "list. Visit the repo page to ask for access.")
            raise HubError(401 if user is None else 403, "GatedRepo", msg)
        rev = self.hub.revision(repo, ref)
        f = rev.files.get(path)
        if f is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on \"{ref}\"",
                           {"X-Repo-Commit": rev.commit})
        common = {"X-Repo-Commit": rev.commit, "Accept-Ranges": "bytes"}
        if f.lfs:
            location = (f"{self.hub.cdn_url}/blobs/{f.sha256}?repo={quote(repo_id, safe='')}"
                        f"&name={quote(path, safe='')}&sig={self.hub.sign(repo_id, f.sha256)}")
            self.send_response(302)
            for k, v in {**common, "Location": location, "ETag": f'"{f.blob_id}"',
                         "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size),
                         "Content-Length": "0"}.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._content(f, {**common, "ETag": f'"{f.blob_id}"',
                          "Content-Type": "text/plain; charset=utf-8"})

    # ------------------------------------------------------------ the CDN

    def _cdn(self, raw_path: str, query: dict[str, list[str]]) -> None:
        parts = raw_path.strip("/").split("/")
        repo_id = query.get("repo", [""])[0]
        if len(parts) != 2 or parts[0] != "blobs":
            raise HubError(404, None, "no such object")
        sha = parts[1]
        if not hmac.compare_digest(query.get("sig", [""])[0], self.hub.sign(repo_id, sha)):
            raise HubError(403, None, "AccessDenied: bad signature")
        found = next((f for rev in self.hub.repo(repo_id).revisions.values()
                      for f in rev.files.values() if f.sha256 == sha), None)
        if found is None:
            raise HubError(404, None, "NoSuchKey")
        name = query.get("name", [found.path])[0].rsplit("/", 1)[-1]
        self._content(found, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes",
                              "Content-Type": "application/octet-stream",
                              "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}; "
                                                     f'filename="{name}";'})

    # ------------------------------------------------------------ bodies

    def _content(self, f: RepoFile, headers: dict[str, str]) -> None:
        """`f`'s bytes (a Range if asked), with the faults injected for its path."""
        start, end = 0, f.size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", wanted)
            if not m or not (m.group(1) or m.group(2)):
                raise HubError(416, None, "Invalid range",
                               {"Content-Range": f"bytes */{f.size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), f.size - 1) if m.group(2) else f.size - 1
            else:
                start = max(f.size - int(m.group(2)), 0)
            if start > end or start >= f.size:
                raise HubError(416, None, "Requested range not satisfiable",
                               {"Content-Range": f"bytes */{f.size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = end - start + 1
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(length)}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        cut, then_status = self.hub._take_cut(f.path)
        corrupt = self.hub._take_corrupt(f.path)
        sent = 0
        for chunk in _chunks(f, start, length):
            if corrupt and sent == 0:
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            if cut is not None and sent + len(chunk) > cut:
                if then_status is not None:
                    self.hub.fail_next(then_status, method="GET", path_contains=self._path)
                self.wfile.write(chunk[:max(cut - sent, 0)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(chunk)
            sent += len(chunk)

    def _json(self, data: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        for k, v in {**(headers or {}), "Content-Type": "application/json; charset=utf-8",
                     "Content-Length": str(len(body))}.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, exc: HubError) -> None:
        body = json.dumps({"error": exc.message}).encode()
        self.send_response(exc.status)
        headers = {**exc.headers, "X-Error-Message": exc.message,
                   "Content-Type": "application/json; charset=utf-8",
                   "Content-Length": str(len(body))}
        if exc.code:
            headers["X-Error-Code"] = exc.code
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _chunks(f: RepoFile, start: int, length: int) -> Iterator[bytes]:
    with f.open() as stream:
        stream.seek(start)
        left = length
        while left > 0:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk
