"""Recipes: what to serve (model, category, resources, replicas, env, engine args).

A recipe never says where it runs. Built-in recipes ship inside the wheel; users add their own
in `~/.config/hpcserve/recipes/` or directories listed in `HPCSERVE_RECIPES` (later wins).
Validation errors name the file, the line, the field and what is allowed.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .durations import parse_duration, parse_size_mb
from .errors import BadInput, NotFound, RecipeError, close_matches, shown
from .spec import env_problem
from .yamlfile import explain, line_of, load_with_lines

NAME_RE = r"^[a-z0-9][a-z0-9._-]{0,62}$"
ARG_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
Scalar = str | int | float | bool


def _flag_name(flag: str) -> str:
    if not ARG_NAME_RE.fullmatch(flag):
        raise ValueError(f"{flag!r} is not a flag name; write it as the engine spells it, "
                         "without leading dashes (e.g. max-model-len)")
    return flag


FlagName = Annotated[str, AfterValidator(_flag_name)]


class Resources(BaseModel):
    """Per-session resources. `gpus` counts GPUs per node."""

    model_config = ConfigDict(extra="forbid")
    nodes: int = Field(1, ge=1, le=1024)
    gpus: int = Field(0, ge=0, le=64)
    gpu_class: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    cpus: int = Field(2, ge=1, le=1024)
    memory: str | int = "4G"
    time: str | int = "1h"

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str | int) -> str | int:
        parse_size_mb(v)
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | int) -> str | int:
        parse_duration(v)
        return v

    @property
    def memory_mb(self) -> int:
        return parse_size_mb(self.memory)

    @property
    def time_s(self) -> int:
        return parse_duration(self.time)


class Replicas(BaseModel):
    """How many engine copies one session runs: a count, or one per `gpu_per_replica` GPUs."""

    model_config = ConfigDict(extra="forbid")
    count: int = Field(1, ge=1, le=64)
    gpu_per_replica: int | None = Field(None, ge=1, le=64)
    base_port: int | None = Field(None, ge=1024, le=65535)


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_RE)
    description: str = ""
    category: Literal["inference", "embedding", "vector-db", "task"]
    model: str | None = None
    # Task recipes (one-off jobs): the program run once per job, argv with the placeholders
    # of spec.py ({HPCSERVE_PYTHON}...); it reads $HPCSERVE_INPUT and writes $HPCSERVE_OUTPUT.
    command: list[str] | None = Field(None, min_length=1)
    model_install_hint: str | None = None
    served_model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
    backends: list[str] = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    replicas: Replicas = Field(default_factory=Replicas)
    env: dict[str, str] = Field(default_factory=dict)
    engine_args: dict[str, dict[FlagName, Scalar | list[Scalar] | None]] = Field(
        default_factory=dict)
    health_path: str | None = Field(None, pattern=r"^/[A-Za-z0-9/._~-]*$")
    images: dict[str, str] = Field(default_factory=dict)
    idle_timeout: str | int | None = None
    max_lifetime: str | int | None = None

    @model_validator(mode="before")
    @classmethod
    def _task_backend(cls, data: Any) -> Any:
        """A task recipe runs its own command: its one backend is `task` unless it says."""
        if isinstance(data, dict) and data.get("category") == "task" and "backends" not in data:
            return {**data, "backends": ["task"]}
        return data

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not str(a) or "\0" in str(a) for a in v):
            raise ValueError("each word of the command must be non-empty text without NUL")
        return [str(a) for a in v] if v is not None else None

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or any(c in v for c in "\n\r\0")):
            raise ValueError("the model must be a hub id, a path or 'pkg:module/file'")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if problem := env_problem(k, val):
                raise ValueError(problem)
        return {k: str(val) for k, val in v.items()}

    @field_validator("idle_timeout", "max_lifetime")
    @classmethod
    def _durations(cls, v: str | int | None) -> str | int | None:
        if v is not None and v not in (0, "0", "off", "none"):
            parse_duration(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.category not in ("vector-db", "task") and not self.model:
            raise ValueError(f"a recipe of category {self.category!r} needs a model")
        if (self.category == "task") != (self.command is not None):
            raise ValueError("a task recipe needs a command (the program to run), and only "
                             "task recipes have one")
        gpr = self.replicas.gpu_per_replica
        if gpr is not None:
            if self.resources.gpus == 0:
                raise ValueError("replicas.gpu_per_replica needs resources.gpus > 0")
            gpus, nodes = self.resources.gpus, self.resources.nodes
            if (gpus * nodes) % gpr or (gpr > gpus and gpr % gpus):
                raise ValueError(
                    f"replicas.gpu_per_replica ({gpr}) must divide the GPUs of one node "
                    f"(resources.gpus = {gpus}) or be a whole number of nodes' GPUs")
        return self

    @property
    def default_backend(self) -> str:
        return self.backends[0]

    @property
    def replica_count(self) -> int:
        gpr = self.replicas.gpu_per_replica
        if gpr:
            return self.resources.gpus * self.resources.nodes // gpr
        return self.replicas.count

    def summary(self) -> dict[str, Any]:
        """The JSON model front ends list."""
        return {
            "name": self.name,
            "description": self.description,
            "category": self.category,
            "model": self.model,
            "backends": list(self.backends),
            **({"command": list(self.command)} if self.command else {}),
            "resources": self.resources.model_dump(),
            "replicas": self.replica_count,
        }


# ---------------------------------------------------------------- loading

def _allowed_fields(loc: tuple[Any, ...]) -> str | None:
    model: type[BaseModel] = Recipe
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return "allowed fields: " + ", ".join(model.model_fields)


def untextual(data: Any) -> tuple[Any, ...] | None:
    """The location of the first string (key or value) in `data` that no command line, file or
    environment can carry: a lone surrogate (JSON and YAML escapes can make one); else None.
    Iterative, as REST bodies may nest a thousand levels deep."""
    stack: list[tuple[tuple[Any, ...], Any]] = [((), data)]
    while stack:
        loc, item = stack.pop()
        if isinstance(item, str):
            try:
                os.fsencode(item)
            except UnicodeEncodeError:
                return loc
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append(((*loc, k), k))
                stack.append(((*loc, k), v))
        elif isinstance(item, list | tuple):
            stack.extend(((*loc, i), v) for i, v in enumerate(item))
    return None


def validate_recipe(data: Any, *, path: str | None = None, root: Any = None) -> Recipe:
    """Validate a parsed recipe, turning the first pydantic error into a RecipeError."""
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a mapping of fields (name, category, model, ...)",
                          path=path, line=1)
    bad = untextual(data)
    if bad is not None:
        raise RecipeError(f"{'.'.join(map(str, bad))}: not valid text (a lone surrogate "
                          "escape)", path=path, line=line_of(root, bad))
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        first = errors[0]
        hint = _allowed_fields(first["loc"]) if first["type"] == "extra_forbidden" else None
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise RecipeError(explain(first) + more, path=path,
                          line=line_of(root, first["loc"]), hint=hint) from None


def load_recipe_file(path: Path) -> Recipe:
    data, root = load_with_lines(path)
    return validate_recipe(data, path=str(path), root=root)


def line_of_name(path: Path) -> int | None:
    """The line of a (valid) recipe file's `name:` field."""
    try:
        _, root = load_with_lines(path)
    except RecipeError:
        return None
    return line_of(root, ("name",))


def builtin_recipe_dir() -> Path:
    """Inside the wheel: hpcserve_jupyter/recipes; in a source checkout: the top-level recipes/."""
    here = Path(__file__).resolve().parent
    packaged = here / "recipes"
    return packaged if packaged.is_dir() else here.parents[1] / "recipes"


def recipe_dirs() -> list[Path]:
    dirs = [builtin_recipe_dir(), Path("~/.config/hpcserve/recipes").expanduser()]
    extra = os.environ.get("HPCSERVE_RECIPES", "")
    dirs += [Path(p).expanduser() for p in extra.split(os.pathsep) if p.strip()]
    return dirs


class Catalog:
    """All recipes by name; broken files are kept as errors so one typo hides nothing else."""

    def __init__(self, dirs: list[Path] | None = None) -> None:
        self.dirs = dirs if dirs is not None else recipe_dirs()
        self.recipes: dict[str, Recipe] = {}
        self.sources: dict[str, Path] = {}
        self.errors: dict[Path, RecipeError] = {}
        for d in self.dirs:
            if not d.is_dir():
                continue
            for path in sorted([*d.glob("*.yaml"), *d.glob("*.yml")]):
                try:
                    recipe = load_recipe_file(path)
                except RecipeError as exc:
                    self.errors[path] = exc
                    continue
                first = self.sources.get(recipe.name)
                if first is not None and first.parent == path.parent:
                    # Later directories override earlier ones; two files of one directory
                    # naming the same recipe is a mistake (a copy not renamed): say so.
                    self.errors[path] = RecipeError(
                        f"recipe {recipe.name!r} is already defined in {first.name}; this "
                        "file is ignored", path=str(path), line=line_of_name(path),
                        hint="give one of them another name")
                    continue
                self.recipes[recipe.name] = recipe
                self.sources[recipe.name] = path

    def names(self) -> list[str]:
        return sorted(self.recipes)

    def get(self, name: str) -> Recipe:
        if name in self.recipes:
            return self.recipes[name]
        broken = [e for p, e in self.errors.items() if p.stem == name]
        if broken:
            raise broken[0]
        raise NotFound(f"unknown recipe {name!r}", hint=close_matches(name, self.names()))


# ---------------------------------------------------------------- per-launch overrides

# Shortcut keys users type (`gpus=2`) and the recipe field each one sets.
SHORTCUTS = {
    "gpus": "resources.gpus",
    "nodes": "resources.nodes",
    "cpus": "resources.cpus",
    "memory": "resources.memory",
    "mem": "resources.memory",
    "time": "resources.time",
    "gpu_class": "resources.gpu_class",
    "replicas": "replicas.count",
    "gpu_per_replica": "replicas.gpu_per_replica",
    "port": "replicas.base_port",
    "model": "model",
    "served_model_name": "served_model_name",
    "idle_timeout": "idle_timeout",
    "max_lifetime": "max_lifetime",
    "health_path": "health_path",
}
_TYPED_TOP = {"env", "engine_args", "images"}


def _scalar(text: Any) -> Any:
    """Engine args typed on a command line: 'true' -> True, '4096' -> 4096, else the string."""
    if not isinstance(text, str):
        return text
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any], backend: str) -> Recipe:
    """Merge `key=value` overrides into a copy of the recipe and validate it again.

    Keys are shortcuts (gpus, time, replicas, port, ...) or dotted recipe paths
    (resources.cpus, env.HF_HOME, engine_args.max-model-len for the chosen backend).
    """
    data = copy.deepcopy(recipe.model_dump(exclude_none=False))
    paths: dict[str, list[str]] = {}
    for raw_key, value in overrides.items():
        if untextual([raw_key, value]) is not None:
            raise BadInput(f"invalid override {shown(raw_key)}: not valid text (a lone "
                           "surrogate escape)")
        key = SHORTCUTS.get(raw_key, raw_key)
        parts = key.split(".")
        if parts[0] == "engine_args" and len(parts) == 2:
            parts = ["engine_args", backend, parts[1]]
            value = _scalar(value)
        elif parts[0] == "engine_args" and len(parts) == 3:
            value = _scalar(value)
        paths[raw_key] = parts
        top = parts[0]
        if top not in Recipe.model_fields or top in ("name", "backends"):
            raise BadInput(
                f"unknown override {raw_key!r}",
                hint="use one of " + ", ".join(sorted(SHORTCUTS))
                + ", or a dotted recipe field such as resources.cpus, env.NAME, engine_args.FLAG")
        if top not in _TYPED_TOP and len(parts) > 2:
            raise BadInput(f"unknown override {raw_key!r}: {key} is too deep")
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = err["msg"].removeprefix("Value error, ")
        loc = [str(p) for p in err["loc"] if p != "[key]"]
        if not loc:  # a rule across fields
            raise BadInput(f"invalid overrides: {msg}") from None
        # The override the error is about: the longest common start of its path and the
        # error's location (pydantic appends union member tags like 'str' or 'list[...]').
        raw, common = max(((k, _common(p, loc)) for k, p in paths.items()),
                          key=lambda kc: kc[1], default=(None, 0))
        if raw is None or not common:
            raise BadInput(f"invalid override {'.'.join(loc)}={shown(err.get('input'))}: "
                           f"{msg}") from None
        raise BadInput(f"invalid override {raw}={shown(overrides[raw])}: {msg}") from None


def _common(a: list[str], b: list[str]) -> int:
    """How many leading parts two dotted paths share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n
