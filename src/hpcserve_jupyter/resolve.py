"""Recipe + backend + overrides -> ServeSpec: the one place a launch's settings are decided.

Kept apart from spec.py (the ServeSpec value and its placeholders) because it needs the recipe
catalog and the engines, which themselves use spec.py: spec <- recipes, backends <- resolve.
The autostop defaults (idle timeout, max lifetime) are decided here and nowhere else; a front
end or server configures them through LaunchDefaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .backends import Context, backend_names, get_backend
from .durations import parse_duration
from .errors import BadInput, NotFound, close_matches
from .recipes import Catalog, apply_overrides
from .spec import ServeSpec, resolve_model

# Idle autostop when neither the recipe, the launch nor the server's defaults set one.
IDLE_TIMEOUT_S = 3600


@dataclass(frozen=True)
class LaunchDefaults:
    """Autostop defaults for launches whose recipe and overrides set none (a duration such as
    "30m", seconds, or "off"); None falls back to IDLE_TIMEOUT_S and the recipe's time limit.
    The Jupyter server's `default_idle_timeout` / `default_max_lifetime` arrive here."""

    idle_timeout: str | int | None = None
    max_lifetime: str | int | None = None
    # The longest `extend` may make a session's max lifetime (from its creation).
    lifetime_bound: str | int = "7d"


def resolve(recipe_name: str, backend: str | None = None,
            overrides: Mapping[str, Any] | None = None, *, catalog: Catalog | None = None,
            defaults: LaunchDefaults | None = None) -> ServeSpec:
    """Recipe + backend + overrides -> ServeSpec, or a BadInput saying what to change."""
    defaults = defaults or LaunchDefaults()
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
        idle_timeout_s=seconds(first_set(recipe.idle_timeout, defaults.idle_timeout),
                               IDLE_TIMEOUT_S),
        max_lifetime_s=seconds(first_set(recipe.max_lifetime, defaults.max_lifetime),
                               recipe.resources.time_s),
        uses_api_key=engine.supports_api_key, multinode=engine.multinode_launch(ctx),
        batch_argv=tuple(engine.batch_argv(ctx) or ()),
        batch_urls=tuple(sorted(engine.batch_urls)),
        batch_preferred=engine.batch_runner_default,
    )


def first_set(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)
