"""The Backend contract: argv, env, health path and API flavour of one serving engine."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import BadInput
from ..spec import MultiNode

if TYPE_CHECKING:
    from ..recipes import Recipe


@dataclass(frozen=True)
class Context:
    """What a backend needs to build its command: the recipe after overrides, and derived facts."""

    recipe: Recipe
    model: str | None
    served_model_name: str
    tensor_parallel: int
    pipeline_parallel: int

    def args_for(self, backend: str) -> dict[str, Any]:
        return dict(self.recipe.engine_args.get(backend, {}))


@dataclass(frozen=True)
class TokenRoute:
    """One engine route that counts tokens: POST `path` with {`field`: what to count} (and the
    served model name when `model`); the count is the reply's `answer` key, an int or a list whose
    length it is ("" for the reply itself)."""

    path: str
    field: str
    answer: str = "tokens"
    model: bool = True


@dataclass(frozen=True)
class TokenCounter:
    """How to count tokens with the engine's own tokenizer, for the usage chunk the gateway adds
    to a stream that asked for one when the engine sends none (jupyter/usage.py): `text` counts
    a string, `chat` (when the engine has it) chat messages through the engine's chat template."""

    text: TokenRoute
    chat: TokenRoute | None = None


class Backend:
    """One serving engine. Subclasses set the class attributes and implement `argv`.

    argv may contain the placeholders of `hpcserve_jupyter.spec` ({HPCSERVE_PORT}, {HPCSERVE_HOST},
    {HPCSERVE_PYTHON}, {HPCSERVE_API_KEY}); the target fills them in where the engine runs.
    """

    name: ClassVar[str]
    categories: ClassVar[frozenset[str]] = frozenset({"inference"})
    api_flavour: ClassVar[str] = "openai"
    health_path: ClassVar[str] = "/health"
    default_image: ClassVar[str | None] = None
    # Engines that read the per-session API key from an environment variable name it here (kept
    # out of `ps`); engines that only take a flag put {HPCSERVE_API_KEY} in argv instead.
    api_key_env: ClassVar[str | None] = None
    supports_api_key: ClassVar[bool] = False
    # How engine_args keys become flags: "--" + key, bools as bare flags unless bool_values;
    # a list goes after one flag (argparse nargs) unless the CLI wants the flag repeated.
    bool_values: ClassVar[bool] = False
    repeat_list_flags: ClassVar[bool] = False
    # How one replica spans nodes (spec.MultiNode): the target starts it so, knowing no engine.
    multinode: ClassVar[MultiNode] = MultiNode("none")

    # An engine's own batch runner: the urls it answers, and whether one-off batch jobs use it
    # by default (measured against the generic runner: benchmarks/p_jobs_vllm.py).
    batch_urls: ClassVar[frozenset[str]] = frozenset()
    batch_runner_default: ClassVar[bool] = False
    # The engine's tokenizer over HTTP, or None when it has none (the gateway then counts the
    # content deltas of a stream; see jupyter/usage.py).
    token_counter: ClassVar[TokenCounter | None] = None
    # The engine's own Prometheus endpoint and the mapping (metrics/engine.py FORMATS) that
    # reads a session's live numbers from it; None where the engine serves none.
    metrics_path: ClassVar[str | None] = None
    metrics_format: ClassVar[str | None] = None

    def argv(self, ctx: Context) -> list[str]:
        raise NotImplementedError

    def batch_argv(self, ctx: Context) -> list[str] | None:
        """The engine's own batch runner over spec.BATCH_INPUT into spec.BATCH_OUTPUT (the
        OpenAI Batch format both ways), or None when it has none."""
        return None

    def env(self, ctx: Context) -> dict[str, str]:
        return {}

    def served_name(self, ctx: Context) -> str:
        """The `model` value the engine answers to, which clients and the gateway send: the
        recipe's served name, for engines that take one on their command line."""
        return ctx.served_model_name

    def multinode_launch(self, ctx: Context) -> MultiNode | None:
        """How this context's replica spans nodes, None when it fits on one node (a replica
        that spans nodes pipelines over them), or a BadInput when the engine cannot."""
        if ctx.pipeline_parallel <= 1:
            return None
        if self.multinode.mode == "none":
            gpus = ctx.recipe.resources.gpus
            raise BadInput(
                f"backend {self.name!r} cannot run one replica over several nodes; this launch "
                f"gives a replica {ctx.tensor_parallel * ctx.pipeline_parallel} GPUs over "
                f"{ctx.pipeline_parallel} nodes ({gpus} per node)",
                hint=f"give each replica at most one node's GPUs (gpu_per_replica <= {gpus}), "
                     "or choose a backend that spans nodes")
        return self.multinode

    def secret_env(self) -> Iterable[tuple[str, str]]:
        return [(self.api_key_env, "api_key")] if self.api_key_env else []

    def flags(self, args: dict[str, Any]) -> list[str]:
        """Render engine_args as the engine's flags; lists repeat the value after one flag."""
        out: list[str] = []
        for key, value in args.items():
            flag = "--" + key
            if value is None or (value is False and not self.bool_values):
                continue
            if value is True and not self.bool_values:
                out.append(flag)
            elif isinstance(value, list) and self.repeat_list_flags:
                for item in value:
                    out += self.flags({key: item})
            elif isinstance(value, list):
                out += [flag, *(str(v) for v in value)]
            else:
                out += [flag, str(value).lower() if isinstance(value, bool) else str(value)]
        return out
