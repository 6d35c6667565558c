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

from .errors import BadInput, shown

# Placeholders a target substitutes in argv and env values.
PORT = "{HPCSERVE_PORT}"
HOST = "{HPCSERVE_HOST}"
PYTHON = "{HPCSERVE_PYTHON}"
API_KEY = "{HPCSERVE_API_KEY}"
JOBDIR = "{HPCSERVE_JOBDIR}"  # a one-off job's directory on the target (its staged files)
PLACEHOLDERS = (PORT, HOST, PYTHON, API_KEY, JOBDIR)
# Filled in by the job driver itself, not by targets: the files an engine's own batch runner
# reads and writes (ServeSpec.batch_argv).
BATCH_INPUT = "{HPCSERVE_BATCH_INPUT}"
BATCH_OUTPUT = "{HPCSERVE_BATCH_OUTPUT}"


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
    # How a replica spanning nodes is started (the backend's declaration); None: it spans none.
    multinode: MultiNode | None = None
    # The engine's own batch runner (`vllm run-batch`), when it has one: argv reading
    # BATCH_INPUT and writing BATCH_OUTPUT in the OpenAI Batch format, for these urls only.
    batch_argv: tuple[str, ...] = ()
    batch_urls: tuple[str, ...] = ()
    batch_preferred: bool = False  # faster than the generic runner (measured): the default

    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeSpec:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("argv", "batch_argv", "batch_urls"):
            known[key] = tuple(known.get(key, ()))
        for key in ("env", "secret_env", "extra"):
            known[key] = tuple(tuple(p) for p in known.get(key, ()))
        if known.get("multinode") is not None:
            known["multinode"] = MultiNode.from_dict(known["multinode"])
        return cls(**known)


# Placeholders of MultiNode.node_args, filled in by the target on each node.
NNODES = "{HPCSERVE_NNODES}"  # how many nodes the replica spans
NODE_RANK = "{HPCSERVE_NODE_RANK}"  # this node's rank, 0 on the first (head) node
HEAD_ADDR = "{HPCSERVE_HEAD_ADDR}"  # the head node's address, as the other nodes reach it
DIST_PORT = "{HPCSERVE_DIST_PORT}"  # a free port on the head for the engine's rendezvous
MULTINODE_MODES = ("none", "ray", "per-node", "mpi")


@dataclass(frozen=True)
class MultiNode:
    """How an engine runs ONE replica over several nodes: declared by its backend as data, so a
    target acts on it without knowing the engine.

    - `ray`: a Ray cluster (head on the first node, a worker on each other); the engine starts
      once, on the head, and places its workers through Ray.
    - `per-node`: the engine starts on every node, with `node_args` appended; their placeholders
      (NNODES, NODE_RANK, HEAD_ADDR, DIST_PORT) give each node its rank and the rendezvous.
    - `mpi`: the engine starts as one MPI world, a rank per GPU on every node, behind `launcher`.
    - `none`: the engine cannot span nodes (resolve refuses such a replica).
    The first node serves HTTP in every mode. `note` says why, for readers of the job script.
    """

    mode: str = "none"
    node_args: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ()
    note: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MULTINODE_MODES:
            raise ValueError(f"multi-node mode {self.mode!r} is none of {MULTINODE_MODES}")
        if not self.note.isprintable():  # it becomes a comment line of a job script
            raise ValueError("a multi-node note must be one printable line")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MultiNode:
        return cls(mode=data.get("mode", "none"), node_args=tuple(data.get("node_args", ())),
                   launcher=tuple(data.get("launcher", ())), note=data.get("note", ""))


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
