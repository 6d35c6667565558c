"""Targets: where sessions run. Registered through the `hpcserve_jupyter.targets` entry points.

Named targets come from `~/.config/hpcserve/targets.yaml` (or the file in `HPCSERVE_TARGETS`):

    targets:
      local: {kind: local, gpus: [0, 1], gpu_classes: {small: [0], large: [1]}}
      mycluster: {kind: slurm, host: login.example.edu, partition: gpu}

`local` always exists, with defaults, unless the file redefines it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from ..errors import BadInput, NotFound, RecipeError, close_matches
from ..plugins import discover, load

GROUP = "hpcserve_jupyter.targets"
BUILTIN = {
    "local": "hpcserve_jupyter.targets.local:LocalTarget",
    "slurm": "hpcserve_jupyter.targets.slurm.target:SlurmTarget",
    "tapis-pods": "hpcserve_jupyter.targets.tapis.target:TapisPodsTarget",
    "tapis-jobs": "hpcserve_jupyter.targets.tapis_jobs.target:TapisJobsTarget",
}


@functools.cache
def _kinds() -> dict[str, str]:
    return discover(GROUP, BUILTIN)


def target_kinds() -> list[str]:
    return sorted(_kinds())


def target_class(kind: str) -> type:
    ref = _kinds().get(kind)
    if ref is None:
        raise BadInput(f"unknown target kind {kind!r}", hint=close_matches(kind, target_kinds()))
    return load(ref)


def targets_file() -> Path:
    env = os.environ.get("HPCSERVE_TARGETS")
    return Path(env).expanduser() if env else Path("~/.config/hpcserve/targets.yaml").expanduser()


def load_target_configs(path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Target name -> config (with `kind`), validated enough to point at the bad line."""
    from ..yamlfile import line_of, load_with_lines

    path = path or targets_file()
    configs: dict[str, dict[str, Any]] = {"local": {"kind": "local"}}
    if not path.exists():
        return configs
    data, root = load_with_lines(path)
    if data is None:
        return configs
    section: tuple[str, ...] = ()
    if isinstance(data, dict) and isinstance(data.get("targets"), dict):
        data, section = data["targets"], ("targets",)
    if not isinstance(data, dict):
        raise RecipeError("a targets file maps target names to their settings",
                          path=str(path), line=1)
    for name, cfg in data.items():
        if not isinstance(cfg, dict):
            raise RecipeError(f"target {name!r} must be a mapping with at least `kind`",
                              path=str(path), line=line_of(root, (*section, name)))
        cfg = dict(cfg)
        cfg.setdefault("kind", "local" if name == "local" else None)
        if cfg["kind"] not in _kinds():
            raise RecipeError(f"target {name!r}: unknown kind {cfg['kind']!r}",
                              path=str(path), line=line_of(root, (*section, name, "kind")),
                              hint="kinds: " + ", ".join(target_kinds()))
        cfg["_source"] = (str(path), line_of(root, (*section, name)))
        configs[str(name)] = cfg
    return configs


def make_target(name: str, configs: dict[str, dict[str, Any]] | None = None) -> Any:
    configs = configs if configs is not None else load_target_configs()
    if name not in configs:
        raise NotFound(f"unknown target {name!r}", hint=close_matches(name, sorted(configs))
                       + f" (targets are defined in {targets_file()})")
    cfg = dict(configs[name])
    cls = target_class(cfg.pop("kind"))
    return cls(name, cfg)
