"""Which model cache a target's engines read, for the targets weights can be pulled to.

Local: its engines inherit this process's environment plus the target's `env:` settings, so
its cache is the HF cache that environment names. SLURM: the cache on the cluster that the
target's `env:` over the login node's environment names, reached over SSH (remote.py); only the
login node knows where exactly (its home), so `cache_dir` is None until it answered. Tapis
Pods: the cache in its shared model volume (volume.py), reached through the Pods API. Other
kinds (Tapis Jobs) are refused with a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .cache import hub_cache_dir

SUPPORTED_KINDS = ("local", "slurm", "tapis-pods")


@dataclass(frozen=True)
class CacheSite:
    """A target's model cache: the folder (None: remote, known once asked), the variable its
    HF token is read from, and for a remote kind the target that reaches it."""

    target: str
    kind: str
    cache_dir: Path | None
    token_env: str | None = "HF_TOKEN"  # None: the target forwards no token (hf_token_env)
    remote: Any = None  # the Target (SLURM, Tapis Pods) that reaches the cache

    def where(self) -> str:
        if self.cache_dir is not None:
            return str(self.cache_dir)
        return "its model volume" if self.kind == "tapis-pods" else \
            "its model cache (on the login node)"

    def cache(self) -> Any:
        """The remote cache's client: RemoteCache (SLURM) or VolumeCache (Tapis Pods)."""
        if self.kind == "tapis-pods":
            from .volume import VolumeCache

            return VolumeCache(self.remote)
        from .remote import RemoteCache

        return RemoteCache(self.remote)


def cache_site(target: str | None) -> CacheSite:
    from ..targets import load_target_configs, make_target

    name = target or "local"
    configs = load_target_configs()
    if name not in configs:
        make_target(name, configs)  # raises the usual "unknown target" error with its hint
    cfg = configs[name]
    kind = str(cfg.get("kind"))
    if kind not in SUPPORTED_KINDS:
        raise BadInput(f"pulling and listing model weights is not yet supported for kind "
                       f"{kind!r} (target {name!r})",
                       hint="supported: " + ", ".join(SUPPORTED_KINDS))
    if kind in ("slurm", "tapis-pods"):
        tgt = make_target(name, configs)  # validates the settings (one-line errors)
        site = CacheSite(name, kind, None, tgt.settings.hf_token_env, tgt)
        if kind == "tapis-pods":
            site.cache()  # a target without a shared volume is refused before any call
        return site
    env = {**os.environ, **{str(k): str(v) for k, v in (cfg.get("env") or {}).items()}}
    return CacheSite(name, kind, hub_cache_dir(env))
