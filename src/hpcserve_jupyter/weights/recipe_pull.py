"""A recipe's weights into a target's cache: what `hpcserve pull`, `%serve pull` and the
control panel's Pull button run. Checks the words (recipe, backend, revision, token variable),
then pulls here (local target), on the login node (SLURM) or here and into the model volume
(Tapis Pods), reporting progress to a callback.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from ..errors import BadInput, close_matches, shown
from .formats import HubRef, allow_patterns, require_hub_ref
from .pull import PullProgress, pull
from .where import CacheSite, cache_site

TOKEN_ENV = "HF_TOKEN"


@dataclass(frozen=True)
class Pulled:
    """A finished pull: the snapshot, and the path an engine is given (the GGUF file in it)."""

    repo_id: str
    revision: str
    commit: str
    snapshot: str
    model_path: str
    target: str
    cache: str
    files: list[str] = field(default_factory=list)
    size: int = 0

    def public(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PullPlan:
    """What a pull will fetch, where, with which token variable (checked, nothing fetched)."""

    recipe: str
    backend: str
    ref: HubRef
    revision: str | None
    site: CacheSite
    token_env: str | None

    def describe(self) -> str:
        return (f"pulling {self.ref} ({self.revision or 'main'}) for {self.backend} into "
                f"{self.site.where()} (target {self.site.target})")


def plan(recipe: str, *, on: str | None = None, backend: str | None = None,
         revision: str | None = None, token_env: str | None = None) -> PullPlan:
    from ..recipes import Catalog

    if token_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", token_env):
        raise BadInput(f"--token-env wants an environment variable name, not "
                       f"{shown(token_env)}")
    if revision is not None and not re.fullmatch(r"[\w./@+-]{1,200}", revision):
        raise BadInput(f"invalid revision {shown(revision)}",
                       hint="a branch, tag or commit of the repo (main, v1.0, a sha)")
    found = Catalog().get(recipe)
    backend = backend or found.default_backend
    if backend not in found.backends:
        raise BadInput(f"recipe {found.name!r} does not run on backend {backend!r}",
                       hint=close_matches(backend, found.backends))
    ref = require_hub_ref(found.model, found.name)
    site = cache_site(on)
    return PullPlan(found.name, backend, ref, revision, site, token_env or site.token_env)


def run(p: PullPlan, progress: Callable[[PullProgress], None] | None = None,
        started: Callable[[str], None] | None = None, *, token: str | None = None) -> Pulled:
    """Fetch and verify; `started` hears how a remote pull began ("running": one was already
    under way and is followed; "submitted ...": a batch job). `token`: one a front end holds
    (typed into the panel), else the plan's token variable is read."""
    if token is None and p.token_env:
        token = os.environ.get(p.token_env) or None
    token_env = p.token_env or TOKEN_ENV
    if p.site.kind == "tapis-pods":
        result = p.site.cache().pull(p.ref, p.backend, p.revision, token, token_env, progress)
        return Pulled(result["repo_id"], result["revision"], result["commit"],
                      result["snapshot"],
                      str(p.ref.local_path(PurePosixPath(result["snapshot"]))), p.site.target,
                      result["cache"], list(result["files"]), int(result["size"]))
    if p.site.remote is not None:
        from .remote import RemoteCache, request

        req = request(p.ref, p.backend, p.revision, p.site.remote.settings.env)
        result = RemoteCache(p.site.remote).pull(req, token, token_env, progress, started)
        return Pulled(result["repo_id"], result["revision"], result["commit"],
                      result["snapshot"],
                      str(p.ref.local_path(PurePosixPath(result["snapshot"]))), p.site.target,
                      result["cache"], list(result["files"]), int(result["size"]))
    assert p.site.cache_dir is not None
    done = pull(p.ref.repo_id, p.revision, functools.partial(allow_patterns, p.ref, p.backend),
                p.site.cache_dir, token, progress, token_env=token_env)
    return Pulled(done.repo_id, done.revision, done.commit, str(done.snapshot),
                  str(p.ref.local_path(done.snapshot)), p.site.target, str(p.site.cache_dir),
                  list(done.files), done.size)
