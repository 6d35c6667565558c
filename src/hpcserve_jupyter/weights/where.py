"""Which model cache a target's engines read, for the targets weights can be pulled to.

Only the local target for now: its engines inherit this process's environment plus the
target's `env:` settings, so its cache is the HF cache that environment names. Other target
kinds are refused with a clear error until they learn to pull (SLURM on the login node, Tapis
into the pod volume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput
from .cache import hub_cache_dir

SUPPORTED_KINDS = ("local",)


@dataclass(frozen=True)
class CacheSite:
    """A target's model cache: the folder, and the variable its HF token is read from."""

    target: str
    kind: str
    cache_dir: Path
    token_env: str = "HF_TOKEN"


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
    env = {**os.environ, **{str(k): str(v) for k, v in (cfg.get("env") or {}).items()}}
    return CacheSite(name, kind, hub_cache_dir(env))
