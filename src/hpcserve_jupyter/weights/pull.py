"""Download a model's files from the Hugging Face Hub into a cache, with progress, and verify
them against what the Hub lists.

huggingface_hub (the optional extra `hf`) is imported when a pull starts, and its endpoint is
read from HF_ENDPOINT then, not when it was first imported. The steps:

1. `model_info(revision, files_metadata=True)`: the commit the revision points at, and every
   file's size and hash (sha256 for LFS files, the git blob id for the others). A gated repo
   without a token stops here, before any download.
2. `snapshot_download` of that commit (pinned: a branch moving meanwhile changes nothing) with
   the allow-patterns; `refs/<revision>` is written so offline loaders find the snapshot.
   Resumable as huggingface_hub 2.4 is: files already in the cache are not fetched again, and a
   connection cut mid-file is resumed with a Range request (up to 5 times without progress). A
   file cut off for good leaves nothing (the client deletes its partial file), so a new pull
   fetches that file again and only it.
3. Verification: each file's size, and its sha256 (LFS) or git blob sha1 (small files). A file
   that does not match is removed from the cache and the pull fails, naming it.

The token is passed to the client only; messages name the variable it came from, never it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput, HpcserveError, NotFound
from .remote_pull import _digest, _drop, _size  # one copy, the remote script's (stdlib only)

Patterns = Sequence[str] | Callable[[list[str]], list[str]] | None
INFO_TIMEOUT = 30.0


@dataclass(frozen=True)
class PullProgress:
    """Where a pull is: `phase` is "download" or "verify"."""

    phase: str
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int


@dataclass(frozen=True)
class PullResult:
    repo_id: str
    revision: str  # as asked (a branch, tag or commit)
    commit: str
    snapshot: Path
    files: list[str] = field(default_factory=list)
    size: int = 0
    fetched: bool = True  # False: `present` said the destination holds them already


class WeightsError(HpcserveError):
    """A pull that failed after the request was understood (hub, network, verification)."""


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise BadInput("pulling model weights needs huggingface_hub",
                       hint="pip install 'hpcserve-jupyter[hf]'") from None
    return huggingface_hub


def pull(repo_id: str, revision: str | None = None, allow_patterns: Patterns = None,
         cache_dir: Path | str | None = None, token: str | None = None,
         progress: Callable[[PullProgress], None] | None = None, *,
         token_env: str = "HF_TOKEN", max_workers: int = 8,
         present: Callable[[str, dict[str, int]], bool] | None = None) -> PullResult:
    """Fetch `repo_id` at `revision` (default main) into `cache_dir` (an HF hub cache folder).

    `allow_patterns` is a list of fnmatch patterns, or a function from the repo's file names to
    one (formats.allow_patterns, which needs to know whether the repo has safetensors).
    `present(commit, sizes)`: for a pull staged on its way elsewhere (a Tapis volume), whether
    the destination holds these files already; then nothing is fetched (`fetched` False)."""
    hf = _hf()
    from huggingface_hub.utils import filter_repo_objects

    from .cache import hub_cache_dir

    endpoint = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    asked = revision or "main"
    auth: str | bool = token or False  # never the client's own token lookup: one source
    where = _Where(repo_id, asked, endpoint, token_env, token)
    with where.errors():
        info = hf.HfApi(endpoint=endpoint).model_info(
            repo_id, revision=asked, files_metadata=True, token=auth, timeout=INFO_TIMEOUT)
        if info.gated and not token:
            raise where.gated(None)
        siblings = {s.rfilename: s for s in info.siblings or []}
        patterns = (allow_patterns(sorted(siblings)) if callable(allow_patterns)
                    else list(allow_patterns) if allow_patterns is not None else None)
        chosen = sorted(filter_repo_objects(list(siblings), allow_patterns=patterns))
        if not chosen:
            raise BadInput(f"no file of {repo_id} ({asked}) matches {patterns}")
        commit = info.sha
        snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / commit
        sizes = {name: _size(siblings[name]) for name in chosen}
        if present is not None and present(commit, sizes):
            return PullResult(repo_id, asked, commit, snapshot, chosen, sum(sizes.values()),
                              fetched=False)
        before = sum(s for n, s in sizes.items() if (snapshot / n).is_file())
        tracker = _Tracker(progress, before, sum(sizes.values()), len(chosen))
        folder = hf.snapshot_download(
            repo_id, revision=commit, cache_dir=str(cache), allow_patterns=patterns,
            token=auth, endpoint=endpoint, tqdm_class=tracker.bar_class(),
            max_workers=max_workers)
    snapshot = Path(folder)
    if asked != commit:
        _write_ref(snapshot.parent.parent / "refs" / asked, commit)
    _verify(snapshot, {n: siblings[n] for n in chosen}, tracker, repo_id)
    return PullResult(repo_id, asked, commit, snapshot, chosen, sum(sizes.values()))


# ---------------------------------------------------------------- errors


@dataclass
class _Where:
    """What a failure message says: the repo, revision, hub and token variable (not token)."""

    repo_id: str
    revision: str
    endpoint: str
    token_env: str
    token: str | None

    def gated(self, status: int | None) -> BadInput:
        if not self.token:
            return BadInput(f"{self.repo_id} is a gated model: set {self.token_env} to a "
                            "Hugging Face token of an account that has access",
                            hint=f"accept its terms at {self.endpoint}/{self.repo_id}, then "
                            f"export {self.token_env}=hf_...")
        return BadInput(f"the token in {self.token_env} has no access to the gated model "
                        f"{self.repo_id} (HTTP {status})",
                        hint=f"ask for access at {self.endpoint}/{self.repo_id}")

    def scrub(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """huggingface_hub's exceptions (and the network's) as one-line errors."""
        from huggingface_hub import errors as e

        try:
            yield
        except e.GatedRepoError as exc:
            raise self.gated(_status(exc)) from None
        except e.RepositoryNotFoundError:
            raise NotFound(f"no model {self.repo_id!r} on {self.endpoint}",
                           hint=f"check the repo id; a private repo also needs {self.token_env}"
                           ) from None
        except e.RevisionNotFoundError:
            raise NotFound(f"{self.repo_id} has no revision {self.revision!r}") from None
        except e.HfHubHTTPError as exc:
            if _status(exc) == 401:
                raise BadInput(f"{self.endpoint} refused the token in {self.token_env} "
                               "(invalid or expired)",
                               hint=f"create a token at {self.endpoint}/settings/tokens, or "
                               f"unset {self.token_env} for public models") from None
            raise WeightsError(self.scrub(f"the hub at {self.endpoint} failed for "
                                          f"{self.repo_id}: {_first_line(exc)}")) from None
        except (e.LocalEntryNotFoundError, e.OfflineModeIsEnabled) as exc:
            raise WeightsError(self.scrub(f"cannot reach the Hugging Face Hub at "
                                          f"{self.endpoint}: {_first_line(exc)}"),
                               hint="check the network (HF_ENDPOINT for a mirror); unset "
                               "HF_HUB_OFFLINE to pull") from None
        except (HpcserveError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore",
                                                      "requests", "urllib3"):
                raise WeightsError(self.scrub(f"cannot reach the Hugging Face Hub at "
                                              f"{self.endpoint}: {_first_line(exc)}")) from None
            if isinstance(exc, OSError):
                raise WeightsError(self.scrub(f"pulling {self.repo_id} failed: "
                                              f"{_first_line(exc)}")) from None
            raise


def _status(exc: Any) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------- progress


class _Tracker:
    """Turns the progress bars snapshot_download drives into PullProgress callbacks: its bars
    counting bytes (unit "B") give the bytes written, its other bar the files done."""

    def __init__(self, callback: Callable[[PullProgress], None] | None, before: int,
                 total: int, files: int) -> None:
        self.callback, self.before, self.total, self.files = callback, before, total, files
        self.lock = threading.Lock()
        self.byte_bars: list[Any] = []
        self.file_bars: list[Any] = []
        self.phase = "download"

    def report(self, phase: str | None = None, done: int | None = None,
               files_done: int | None = None) -> None:
        if self.callback is None:
            return
        with self.lock:  # computed and handed over in one go: callbacks see it in order
            if phase:
                self.phase = phase
            got = max((b.n for b in self.byte_bars), default=0)
            nbytes = done if done is not None else min(self.before + got, self.total)
            nfiles = files_done if files_done is not None else max(
                (b.n for b in self.file_bars), default=0)
            self.callback(PullProgress(self.phase, int(nbytes), self.total, int(nfiles),
                                       self.files))

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
                with tracker.lock:  # one bar is fed by every download thread
                    self.n += n or 0
                tracker.report()

            def __enter__(self) -> Bar:
                return self

            def __exit__(self, *exc: object) -> None:
                pass

            def __getattr__(self, name: str) -> Callable[..., None]:
                # refresh, close, set_description(_str), set_postfix_str...: nothing to show
                return lambda *args, **kwargs: None

        return Bar


# ---------------------------------------------------------------- verification


def _verify(snapshot: Path, expected: dict[str, Any], tracker: _Tracker, repo_id: str) -> None:
    """Sizes and hashes against the hub's listing; bad files are removed from the cache."""
    bad: list[str] = []
    done = 0
    for i, (name, sib) in enumerate(sorted(expected.items())):
        path = snapshot / name
        lfs = getattr(sib, "lfs", None)
        want = lfs.sha256 if lfs is not None else sib.blob_id
        if not path.is_file():
            bad.append(f"{name} (missing)")
        elif path.stat().st_size != _size(sib):
            bad.append(f"{name} (size {path.stat().st_size}, expected {_size(sib)})")
        elif want and _digest(path, lfs is not None) != want:
            kind = "sha256" if lfs is not None else "git blob sha1"
            bad.append(f"{name} ({kind} differs from the hub's)")
        else:
            done += _size(sib)
            tracker.report("verify", done=done, files_done=i + 1)
            continue
        _drop(path)
    if bad:
        raise WeightsError(f"{len(bad)} file(s) of {repo_id} failed verification and were "
                           f"removed from the cache: {', '.join(bad)}",
                           hint="run the pull again to fetch them anew")


def _write_ref(ref: Path, commit: str) -> None:
    """refs/<revision> = the commit, written whole (what huggingface_hub does)."""
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.is_file() and ref.read_text() == commit:
        return
    tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)
