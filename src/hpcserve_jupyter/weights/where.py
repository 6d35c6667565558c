"""Which model cache a target's engines read, for the targets weights can be pulled to.

Local: its engines inherit this process's environment plus the target's `env:` settings, so
its cache is the HF cache that environment names. SLURM: the cache on the cluster that the
target's `env:` over the login node's environment names, reached over SSH (remote.py); only the
login node knows where exactly (its home), so `cache_dir` is None until it answered. Other
kinds are refused with a clear error until they learn to pull (Tapis into the pod volume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInput
from .cache import hub_cache_dir

SUPPORTED_KINDS = ("local", "slurm")


@dataclass(frozen=True)
class CacheSite:
    """A target's model cache: the folder (None: remote, known once asked), the variable its
    HF token is read from, and for a remote kind the target that reaches it."""

    target: str
    kind: str
    cache_dir: Path | None
    token_env: str | None = "HF_TOKEN"  # None: the target forwards no token (hf_token_env)
    remote: Any = None  # the Target (SLURM) whose login node holds the cache

    def where(self) -> str:
        return str(self.cache_dir) if self.cache_dir is not None else \
            "its model cache (on the login node)"


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
    if kind == "slurm":
        tgt = make_target(name, configs)  # validates the settings (one-line errors)
        return CacheSite(name, kind, None, tgt.settings.hf_token_env, tgt)
    env = {**os.environ, **{str(k): str(v) for k, v in (cfg.get("env") or {}).items()}}
    return CacheSite(name, kind, hub_cache_dir(env))
