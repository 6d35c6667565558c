"""Model weights on a remote machine (a SLURM login node): pull into its HF cache, list, remove.

Copied to (or piped into) the remote interpreter, which has huggingface_hub but not hpcserve:
standard library only, huggingface_hub imported by the pull itself. The pure parts both sides
need (size, digest, drop, the cached-snapshot check) live here once and the package imports
them; the cache folder rules and the progress bars differ slightly (the remote side expands
variables; it reports to a file) and are kept beside their twins in cache.py / pull.py.

    python remote_pull.py start DIR   < TOKEN     a background pull described by DIR/request.json
    python remote_pull.py run DIR     < TOKEN     the same pull in the foreground (a batch job:
                                                  the token in DIR/token, deleted once read)
    python remote_pull.py status DIR              {"running", "progress", "result"} as JSON
    python - list ENV_JSON            < this      the cache's models as JSON
    python - rm ENV_JSON REPO         < this      removes a repo folder of the cache
    python - find ENV_JSON REPO FILE REV < this   {"path"}: where an engine finds the model
                                                  in the cache (FILE: a GGUF file or ""), or null

`start` forks a process in a new session (an SSH drop does not end it) holding DIR/lock while
it pulls; a second `start` while it runs answers "running" and starts nothing. The token comes
on stdin and lives in the pulling process's memory only: no file, no command line. Progress
goes to DIR/progress.json, the outcome to DIR/result.json (both replaced whole), messages to
DIR/log. Every answer is one JSON object on stdout.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

PROGRESS_EVERY = 0.5  # seconds between progress file writes while bytes flow


# ---------------------------------------------------------------- cache folder


def hub_cache_dir(env: dict[str, str]) -> Path:
    """cache.hub_cache_dir's rules, for the environment given over this process's."""
    env = {**os.environ, **env}
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(os.path.expandvars(env[key])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path(
        env.get("HOME") or Path.home()) / ".cache"
    return base.expanduser() / "huggingface" / "hub"


def repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


def cached_snapshot(cache_dir: Path | str, repo_id: str, filename: str | None = None,
                    revision: str = "main") -> Path | None:
    """The snapshot folder of `revision` when the cache holds what an engine loads from it
    (the GGUF `filename`; else a config.json and weights, every shard an index lists), else
    None. Files only, no huggingface_hub: a launch asks this, offline, before anything runs
(here for a local target, through `find` for a remote one)."""
    repo = Path(cache_dir) / repo_folder(repo_id)
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        commit = revision
    else:
        try:
            commit = (repo / "refs" / revision).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
    snapshot = repo / "snapshots" / commit
    if not commit or "/" in commit or not snapshot.is_dir():
        return None
    if filename is not None:
        return snapshot if (snapshot / filename).is_file() else None
    if not (snapshot / "config.json").is_file():
        return None
    for index in snapshot.glob("*.index.json"):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except (OSError, ValueError, AttributeError):
            return None
        if not shards or not all((snapshot / s).is_file() for s in shards):
            return None
    weights = [p for pattern in ("*.safetensors", "*.bin", "*.pth")
               for p in snapshot.glob(pattern) if p.is_file()]
    return snapshot if weights else None


def list_models(cache: Path) -> list[dict[str, Any]]:
    """What scan_cache_dir reports, from the files alone (no huggingface_hub needed)."""
    found = []
    for repo in sorted(cache.glob("models--*")) if cache.is_dir() else []:
        refs: dict[str, list[str]] = {}
        for ref in (repo / "refs").rglob("*") if (repo / "refs").is_dir() else []:
            if ref.is_file():
                with contextlib.suppress(OSError):
                    refs.setdefault(ref.read_text().strip(), []).append(
                        ref.relative_to(repo / "refs").as_posix())
        blobs = [b for b in (repo / "blobs").iterdir()] if (repo / "blobs").is_dir() else []
        last_used = max((b.stat().st_atime for b in blobs if b.is_file()), default=0.0)
        for snap in sorted((repo / "snapshots").iterdir()) if (repo / "snapshots").is_dir() \
                else []:
            files = [f for f in snap.rglob("*") if f.is_file()]
            size = sum(f.stat().st_size for f in files)
            found.append({"repo_id": repo.name[len("models--"):].replace("--", "/"),
                          "revision": snap.name, "refs": sorted(refs.get(snap.name, [])),
                          "size": size, "files": len(files), "last_used": last_used,
                          "snapshot": str(snap)})
    return sorted(found, key=lambda m: (-m["last_used"], m["repo_id"], m["revision"]))


def remove(cache: Path, repo_id: str) -> dict[str, Any]:
    """Deletes one repo folder of the cache (never anything outside it)."""
    name = repo_folder(repo_id)
    target = cache / name
    if "/" in name or name in (".", "..") or not target.is_dir() or target.is_symlink() \
            or target.resolve().parent != cache.resolve():
        known = sorted(m["repo_id"] for m in list_models(cache))
        return {"ok": False, "error": "not_found", "known": sorted(set(known)),
                "cache": str(cache)}
    size = sum(f.stat().st_size for f in (target / "blobs").rglob("*") if f.is_file()) \
        if (target / "blobs").is_dir() else 0
    shutil.rmtree(target)
    shutil.rmtree(cache / ".locks" / name, ignore_errors=True)
    return {"ok": True, "freed": size, "cache": str(cache)}


# ---------------------------------------------------------------- the pull


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


class Progress:
    """pull.py's _Tracker, writing DIR/progress.json instead of calling back."""

    def __init__(self, path: Path, before: int, total: int, files: int) -> None:
        self.path, self.before, self.total, self.files = path, before, total, files
        self.lock = threading.Lock()
        self.byte_bars: list[Any] = []
        self.file_bars: list[Any] = []
        self.phase, self.last, self.last_key = "download", 0.0, None

    def report(self, phase: str | None = None, done: int | None = None,
               files_done: int | None = None, force: bool = False) -> None:
        with self.lock:
            if phase:
                self.phase = phase
            got = max((b.n for b in self.byte_bars), default=0)
            nbytes = done if done is not None else min(self.before + got, self.total)
            nfiles = files_done if files_done is not None else max(
                (b.n for b in self.file_bars), default=0)
            key = (self.phase, nfiles)
            now = time.monotonic()
            if not force and key == self.last_key and now - self.last < PROGRESS_EVERY:
                return
            self.last, self.last_key = now, key
            _write_json(self.path, {"phase": self.phase, "bytes_done": int(nbytes),
                                    "bytes_total": self.total, "files_done": int(nfiles),
                                    "files_total": self.files})

    def bar_class(self) -> type:
        tracker = self

        class Bar:  # the part of tqdm's interface huggingface_hub uses
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                self.n = kwargs.get("initial") or 0
                self.total = kwargs.get("total")
                self.format_dict: dict[str, Any] = {"rate": None}
                with tracker.lock:
                    (tracker.byte_bars if kwargs.get("unit") == "B"
                     else tracker.file_bars).append(self)

            def update(self, n: float | None = 1) -> None:
                with tracker.lock:
                    self.n += n or 0
                tracker.report()

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def __getattr__(self, name: str) -> Any:
                return lambda *args, **kwargs: None

        return Bar


def _size(sibling: Any) -> int:
    lfs = getattr(sibling, "lfs", None)
    return int(lfs.size if lfs is not None else sibling.size or 0)


def _digest(path: Path, lfs: bool) -> str:
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def _drop(pointer: Path) -> None:
    with contextlib.suppress(OSError):
        blob = pointer.resolve() if pointer.is_symlink() else None
        pointer.unlink()
        if blob is not None:
            blob.unlink()


def choose_patterns(req: dict[str, Any], names: list[str]) -> list[str] | None:
    """formats.allow_patterns's rule, sent as data: fixed patterns, or the weights patterns
    with the fallback ones only when no file matches the weights'."""
    import fnmatch

    if req.get("patterns") is not None:
        return list(req["patterns"])
    rule = req.get("rule")
    if not rule:
        return None
    has = any(fnmatch.fnmatch(n, p) for n in names for p in rule["weights"])
    return [*rule["weights"], *([] if has else rule["fallback"]), *rule["support"]]


def _fail(error: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, "message": message, **extra}


def pull(req: dict[str, Any], token: str | None, progress_path: Path) -> dict[str, Any]:
    """pull.py's steps: model info, pinned snapshot_download, refs, verification."""
    env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
    env.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # a pull is the online step
        os.environ.pop(key, None)
    os.environ.update({k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE",
                                                                 "TRANSFORMERS_OFFLINE")})
    import huggingface_hub as hf
    from huggingface_hub import errors as e
    from huggingface_hub.utils import filter_repo_objects

    repo_id, asked = req["repo_id"], req.get("revision") or "main"
    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    cache = hub_cache_dir(env)
    auth: str | bool = token or False
    where = {"repo_id": repo_id, "revision": asked, "endpoint": endpoint, "cache": str(cache)}
    try:
        info = hf.HfApi(endpoint=endpoint).model_info(
            repo_id, revision=asked, files_metadata=True, token=auth, timeout=30.0)
        if info.gated and not token:
            return _fail("gated", "gated", status=None, **where)
        siblings = {s.rfilename: s for s in info.siblings or []}
        patterns = choose_patterns(req, sorted(siblings))
        chosen = sorted(filter_repo_objects(list(siblings), allow_patterns=patterns))
        if not chosen:
            return _fail("no_match", f"no file of {repo_id} ({asked}) matches {patterns}",
                         **where)
        commit = info.sha
        snapshot = cache / repo_folder(repo_id) / "snapshots" / commit
        sizes = {n: _size(siblings[n]) for n in chosen}
        before = sum(s for n, s in sizes.items() if (snapshot / n).is_file())
        tracker = Progress(progress_path, before, sum(sizes.values()), len(chosen))
        tracker.report(force=True)
        folder = hf.snapshot_download(
            repo_id, revision=commit, cache_dir=str(cache), allow_patterns=patterns,
            token=auth, endpoint=endpoint, tqdm_class=tracker.bar_class(), max_workers=8)
    except e.GatedRepoError as exc:
        return _fail("gated", "gated", status=_status(exc), **where)
    except e.RepositoryNotFoundError:
        return _fail("repo_not_found", "repo not found", **where)
    except e.RevisionNotFoundError:
        return _fail("revision_not_found", "revision not found", **where)
    except e.HfHubHTTPError as exc:
        if _status(exc) == 401:
            return _fail("bad_token", "token refused", **where)
        return _fail("hub", _first_line(exc, token), **where)
    except (e.LocalEntryNotFoundError, e.OfflineModeIsEnabled) as exc:
        return _fail("network", _first_line(exc, token), **where)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("httpx", "httpcore", "requests", "urllib3"):
            return _fail("network", _first_line(exc, token), **where)
        if isinstance(exc, OSError):
            return _fail("os", _first_line(exc, token), **where)
        raise
    snapshot = Path(folder)
    if asked != commit:
        ref = snapshot.parent.parent / "refs" / asked
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not (ref.is_file() and ref.read_text() == commit):
            _write_json_text(ref, commit)
    bad, done = [], 0
    for i, name in enumerate(chosen):
        sib, path = siblings[name], snapshot / name
        lfs = getattr(sib, "lfs", None)
        want = lfs.sha256 if lfs is not None else sib.blob_id
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif path.stat().st_size != sizes[name]:
            bad.append(f"{name} (size {path.stat().st_size}, expected {sizes[name]})")
        elif want and _digest(path, lfs is not None) != want:
            bad.append(f"{name} ({'sha256' if lfs is not None else 'git blob sha1'} differs "
                       "from the hub's)")
        else:
            done += sizes[name]
            tracker.report("verify", done=done, files_done=i + 1, force=True)
            continue
        _drop(path)
    if bad:
        return _fail("verify", ", ".join(bad), count=len(bad), **where)
    return {"ok": True, "repo_id": repo_id, "revision": asked, "commit": commit,
            "snapshot": str(snapshot), "files": chosen, "size": sum(sizes.values()),
            "cache": str(cache)}


def _write_json_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _status(exc: Any) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _first_line(exc: BaseException, token: str | None) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text.replace(token, "***") if token else text


# ---------------------------------------------------------------- running it


def _lock(folder: Path) -> Any:
    """DIR/lock held (flock) by the pulling process, or None when another one holds it."""
    f = open(folder / "lock", "a")  # noqa: SIM115 - held for the process's life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _running(folder: Path) -> bool:
    lock = _lock(folder)
    if lock is None:
        return True
    lock.close()
    return False


def _read_token(folder: Path) -> str | None:
    """DIR/token (a batch job has no stdin), deleted as soon as read; else stdin."""
    try:
        with open(folder / "token") as f:
            os.unlink(folder / "token")
            return f.read().strip() or None
    except FileNotFoundError:
        pass
    return (sys.stdin.read().strip() or None) if not sys.stdin.isatty() else None


def run(folder: Path, token: str | None, lock: Any = None) -> dict[str, Any]:
    """The pull of DIR/request.json, holding DIR/lock; the result also in DIR/result.json."""
    lock = lock if lock is not None else _lock(folder)
    if lock is None:
        return {"ok": False, "error": "running", "message": "a pull is running"}
    try:
        for name in ("result.json", "progress.json"):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
        req = json.loads((folder / "request.json").read_text())
        try:
            result = pull(req, token, folder / "progress.json") if _has_hub() else \
                _fail("no_huggingface_hub", sys.executable)
        except Exception as exc:  # the log has the traceback, without the token
            text = traceback.format_exc()
            print(text.replace(token, "***") if token else text, file=sys.stderr, flush=True)
            result = _fail("crash", _first_line(exc, token))
        _write_json(folder / "result.json", result)
        return result
    finally:
        lock.close()


def _has_hub() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("huggingface_hub") is not None
    except (ImportError, ValueError):
        return False


def start(folder: Path, token: str | None) -> dict[str, Any]:
    """A background `run` in a new session, unless one is running."""
    if not _has_hub():
        return _fail("no_huggingface_hub", sys.executable)
    if _running(folder):
        return {"ok": True, "state": "running"}
    for name in ("result.json", "progress.json"):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    read, write = os.pipe()
    if os.fork():  # the caller: waits for the pull to hold the lock, then answers
        os.close(write)
        with os.fdopen(read) as r:
            said = r.read().strip()
        return {"ok": True, "state": "started" if said == "locked" else "running"}
    os.close(read)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(folder / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    lock = _lock(folder)
    os.write(write, b"locked\n" if lock is not None else b"busy\n")
    os.close(write)
    if lock is None:
        os._exit(0)
    code = 0
    try:
        run(folder, token, lock)
    except BaseException:  # a daemon: run() logged why
        code = 1
    os._exit(code)


def status(folder: Path) -> dict[str, Any]:
    def load(name: str) -> Any:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return None

    running = folder.is_dir() and _running(folder)
    log = ""
    with contextlib.suppress(OSError):
        log = (folder / "log").read_text(errors="replace")[-2000:]
    return {"running": running, "progress": load("progress.json"), "result": load("result.json"),
            "log": "" if running else log}


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(json.dumps(_fail("usage", "usage: remote_pull.py start|run|status|list|rm ...")))
        return 2
    command = argv[1]
    if command in ("start", "run", "status"):
        folder = Path(argv[2])
        if command == "status":
            answer = status(folder)
        else:
            token = _read_token(folder)
            answer = start(folder, token) if command == "start" else run(folder, token)
    elif command in ("list", "rm", "find"):
        cache = hub_cache_dir(json.loads(argv[2]))
        if command == "find":
            found = cached_snapshot(cache, argv[3], argv[4] or None, argv[5])
            path = found / argv[4] if found is not None and argv[4] else found
            answer = {"ok": True, "cache": str(cache), "path": str(path) if path else None}
        else:
            answer = ({"ok": True, "cache": str(cache), "models": list_models(cache)}
                      if command == "list" else remove(cache, argv[3]))
    else:
        answer = _fail("usage", f"unknown command {command!r}")
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
