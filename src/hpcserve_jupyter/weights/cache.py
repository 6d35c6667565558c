"""The Hugging Face cache of a machine: where it is, what it holds, freeing a repo.

The folder follows huggingface_hub's own rules, read from the environment given (the target's
environment over this process's), not from huggingface_hub's constants, which are fixed when it
is first imported: HF_HUB_CACHE, then HUGGINGFACE_HUB_CACHE, then HF_HOME/hub, then
$XDG_CACHE_HOME/huggingface/hub, then ~/.cache/huggingface/hub.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput, NotFound, close_matches
from .remote_pull import cached_snapshot, repo_folder

__all__ = ["CachedModel", "cached_snapshot", "hub_cache_dir", "list_models", "remove",
           "repo_folder"]


def hub_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path(
        env.get("HOME") or Path.home()) / ".cache"
    return base.expanduser() / "huggingface" / "hub"


@dataclass(frozen=True)
class CachedModel:
    """One revision of a repo in the cache."""

    repo_id: str
    revision: str  # the commit sha
    refs: tuple[str, ...]  # branch/tag names pointing at it (main, ...)
    size: int  # bytes of its files (a blob shared by two revisions counts in both)
    files: int
    last_used: float  # the newest access time of its repo's blobs (what the cache records)
    snapshot: str

    def public(self) -> dict[str, Any]:
        return {**asdict(self), "refs": list(self.refs)}


def _hf() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise BadInput("model weights need huggingface_hub",
                       hint="pip install 'hpcserve-jupyter[hf]'") from None
    return huggingface_hub


def list_models(cache_dir: Path | str) -> list[CachedModel]:
    """Every model revision the cache holds, newest use first (scan_cache_dir's view)."""
    if not Path(cache_dir).is_dir():
        return []
    info = _hf().scan_cache_dir(cache_dir)
    found = [CachedModel(repo.repo_id, rev.commit_hash, tuple(sorted(rev.refs)),
                         rev.size_on_disk, rev.nb_files, repo.last_accessed,
                         str(rev.snapshot_path))
             for repo in info.repos if repo.repo_type == "model" for rev in repo.revisions]
    return sorted(found, key=lambda m: (-m.last_used, m.repo_id, m.revision))


def remove(repo_id: str, cache_dir: Path | str) -> int:
    """Delete every revision of `repo_id` from the cache; the bytes freed."""
    cache = Path(cache_dir)
    repos = [r for r in (_hf().scan_cache_dir(cache).repos if cache.is_dir() else [])
             if r.repo_type == "model"]
    match = next((r for r in repos if r.repo_id == repo_id), None)
    if match is None:
        raise NotFound(f"no model {repo_id!r} in the cache {cache}",
                       hint=close_matches(repo_id, [r.repo_id for r in repos]))
    size = match.size_on_disk
    # The whole repo folder: blobs, snapshots, refs and the tree listings the client keeps.
    shutil.rmtree(match.repo_path)
    shutil.rmtree(cache / ".locks" / match.repo_path.name, ignore_errors=True)
    return size

