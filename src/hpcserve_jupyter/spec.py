"""ServeSpec: the frozen, fully resolved result of recipe + backend + overrides.

Targets receive a ServeSpec and fill in only what depends on where it runs, through the
placeholders below (port, host, python interpreter, per-session secrets). Nothing in a spec is
secret: secrets travel beside it in a LaunchRequest and are never persisted.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import BadInput, NotFound, close_matches, shown

# Placeholders a target substitutes in argv and env values.
PORT = "{HPCSERVE_PORT}"
HOST = "{HPCSERVE_HOST}"
PYTHON = "{HPCSERVE_PYTHON}"
API_KEY = "{HPCSERVE_API_KEY}"
PLACEHOLDERS = (PORT, HOST, PYTHON, API_KEY)


@dataclass(frozen=True)
class ServeSpec:
    recipe: str
    backend: str
    category: str
    model: str | None
    served_model_name: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    secret_env: tuple[tuple[str, str], ...]  # (ENV_NAME, secret key) set from LaunchRequest.secrets
    health_path: str
    api_flavour: str
    nodes: int
    gpus: int
    gpu_class: str | None
    cpus: int
    memory_mb: int
    time_s: int
    replicas: int
    gpus_per_replica: int
    tensor_parallel: int
    base_port: int | None
    image: str | None
    idle_timeout_s: int | None
    max_lifetime_s: int | None
    uses_api_key: bool = False
    extra: tuple[tuple[str, str], ...] = field(default=())

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("argv",):
            known[key] = tuple(known.get(key, ()))
        for key in ("env", "secret_env", "extra"):
            known[key] = tuple(tuple(p) for p in known.get(key, ()))
        return cls(**known)


def render(template: str, values: Mapping[str, str]) -> str:
    """Replace the placeholders present in `values` (exact tokens only, nothing else).

    One pass: a substituted value is never scanned again, so a path or host that happens to
    contain `{HPCSERVE_API_KEY}` stays literal (as it does in a job script).
    """
    if not values:
        return template
    tokens = re.compile("|".join(re.escape(t) for t in values))
    return tokens.sub(lambda m: values[m.group(0)], template)


def render_argv(spec: ServeSpec, values: Mapping[str, str]) -> list[str]:
    return [render(a, values) for a in spec.argv]


def render_env(env: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """Environment values with their placeholders filled in (qdrant's port and host...)."""
    return {k: render(v, values) for k, v in env.items()}


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_problem(name: str, value: object = "") -> str | None:
    """What is wrong with one environment variable (recipe `env:`, a target's `env:`, a job
    script's export), or None: a name a shell reads as a plain variable (fullmatch: a trailing
    newline is no part of a name) and a value without NUL byte."""
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        return (f"{shown(name, 80)} is not an environment variable name (letters, digits "
                "and _, not starting with a digit)")
    if "\0" in str(value):
        return f"the value of {name} contains a NUL byte"
    return None


def has_placeholder(text: str) -> bool:
    """Whether a target must fill something in (per replica, for the port and host)."""
    return any(token in text for token in PLACEHOLDERS)


def nul_problem(argv: Sequence[str], env: Mapping[str, str]) -> str | None:
    """What no command line or environment can carry: a NUL byte (C strings end there, and
    a shell drops it), named by the engine flag or variable it belongs to; else None."""
    for i, arg in enumerate(argv):
        if "\0" in arg:
            prev = argv[i - 1] if i else ""
            what = (f"the value of {prev}" if prev.startswith("-")
                    else f"engine argument {i} ({arg[:40]!r}...)")
            return f"{what} contains a NUL byte, which no command line can carry"
    for key, value in env.items():
        if "\0" in key or "\0" in value:
            return f"environment variable {key!r} contains a NUL byte"
    return None


def resolve_model(ref: str | None, hint: str | None = None) -> str | None:
    """A model reference as the engine needs it.

    `pkg:MODULE/RELATIVE/PATH` names a file shipped inside an installed Python package; it is
    located with importlib without importing the package. Hub ids and paths pass through.
    """
    if ref is None or not ref.startswith("pkg:"):
        return ref
    module, _, rel = ref[4:].partition("/")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise BadInput(f"the model {ref!r} is shipped in Python package {module!r}, "
                       "which is not installed", hint=hint or f"install the package providing "
                       f"{module!r} into this environment")
    for base in found.submodule_search_locations:
        candidate = Path(base) / rel
        if candidate.exists():
            return str(candidate)
    raise BadInput(f"package {module!r} is installed but has no file {rel!r}",
                   hint=hint or "check the recipe's model path")


def resolve(recipe_name: str, backend: str | None = None,
            overrides: Mapping[str, Any] | None = None, *, catalog: Any = None) -> ServeSpec:
    """Recipe + backend + overrides -> ServeSpec, or a BadInput saying what to change."""
    from .backends import Context, backend_names, get_backend
    from .durations import parse_duration
    from .recipes import Catalog, apply_overrides

    catalog = catalog or Catalog()
    recipe = catalog.get(recipe_name)
    overrides = dict(overrides or {})
    backend = overrides.pop("backend", None) or backend or recipe.default_backend
    if backend not in backend_names():
        raise NotFound(f"unknown backend {backend!r}", hint=close_matches(backend, backend_names()))
    if backend not in recipe.backends:
        raise BadInput(f"recipe {recipe.name!r} does not support backend {backend!r}",
                       hint="it supports: " + ", ".join(recipe.backends))
    if overrides:
        recipe = apply_overrides(recipe, overrides, backend)
    engine = get_backend(backend)
    if recipe.category not in engine.categories:
        raise BadInput(f"backend {backend!r} serves {sorted(engine.categories)}, "
                       f"not {recipe.category!r}")
    model = resolve_model(recipe.model, recipe.model_install_hint)
    replicas = recipe.replica_count
    total_gpus = recipe.resources.gpus * recipe.resources.nodes
    gpr = recipe.replicas.gpu_per_replica or (total_gpus // replicas if total_gpus else 0)
    spans_nodes = gpr > recipe.resources.gpus
    # A replica inside one node splits its model over its GPUs (tensor parallel); one that spans
    # nodes splits over each node's GPUs and pipelines across the nodes.
    tp = max(1, recipe.resources.gpus if spans_nodes else gpr)
    pp = recipe.resources.nodes if spans_nodes else 1
    served = recipe.served_model_name or recipe.name
    ctx = Context(recipe=recipe, model=model, served_model_name=served,
                  tensor_parallel=tp, pipeline_parallel=pp)
    argv = tuple(engine.argv(ctx))
    env = {**engine.env(ctx), **recipe.env}
    served = engine.served_name(ctx)  # engines that cannot rename their model serve their own

    def seconds(v: Any, default: int) -> int | None:
        if v in (0, "0", "off", "none"):
            return None
        return parse_duration(v) if v is not None else default

    return ServeSpec(
        recipe=recipe.name, backend=backend, category=recipe.category, model=model,
        served_model_name=served, argv=argv, env=tuple(sorted(env.items())),
        secret_env=tuple(engine.secret_env()), health_path=recipe.health_path
        or engine.health_path, api_flavour=engine.api_flavour, nodes=recipe.resources.nodes,
        gpus=recipe.resources.gpus, gpu_class=recipe.resources.gpu_class,
        cpus=recipe.resources.cpus, memory_mb=recipe.resources.memory_mb,
        time_s=recipe.resources.time_s, replicas=replicas, gpus_per_replica=gpr,
        tensor_parallel=tp, base_port=recipe.replicas.base_port,
        image=recipe.images.get(backend) or engine.default_image,
        idle_timeout_s=seconds(recipe.idle_timeout, 3600),
        max_lifetime_s=seconds(recipe.max_lifetime, recipe.resources.time_s),
        uses_api_key=engine.supports_api_key,
    )
