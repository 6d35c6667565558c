"""llama.cpp's own HTTP server, `llama-server` (C++), for GGUF models.

Beside the `llama-cpp` backend (llama-cpp-python's Python server) because only this server has
Prometheus metrics (GET /metrics with --metrics: `llamacpp:prompt_tokens_total`, ...), a /health
route and a native tokenizer route. Flags checked against common/arg.cpp and tools/server/ of the
llama.cpp that llama-cpp-python 0.3.36 vendors (ggml-org/llama.cpp@0c1e570, which
scripts/setup-llama-server.sh builds): --model, --alias (the name /v1/models lists),
--host/--port, --metrics, --n-gpu-layers (-ngl), --embeddings; flags are bare booleans and take
one value per occurrence. LLAMA_API_KEY in the environment sets --api-key, so the key stays out
of `ps`. GET /health answers 503 while the model loads and 200 once it serves; it and /v1/health
are the only routes open without the key (/metrics needs it).

The program: the recipe's `engine_args.llama-server.llama_server` (a path, not a flag), else
$LLAMA_SERVER where the launch is resolved, else `llama-server` as the target finds programs
(beside its `python:`, then on PATH).
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import BadInput
from ..spec import HOST, PORT, MultiNode
from .base import Backend, Context, TokenCounter, TokenRoute

PROGRAM = "llama-server"
PROGRAM_ENV = "LLAMA_SERVER"
PROGRAM_SETTING = "llama_server"  # the engine_args key naming the binary (no such flag exists)
ALL_LAYERS = "999"  # every layer on the GPUs; older builds take only a number, not `all`


class LlamaServer(Backend):
    name = "llama-server"
    categories = frozenset({"inference", "embedding"})
    health_path = "/health"
    default_image = "ghcr.io/ggml-org/llama.cpp:server"
    multinode = MultiNode("none")  # one process (llama.cpp's RPC servers are not used)
    api_key_env = "LLAMA_API_KEY"
    supports_api_key = True
    repeat_list_flags = True  # `--lora a --lora b`: one value per occurrence
    # Its streams carry usage when asked (stream_options.include_usage), so this is a fallback:
    # POST /tokenize {"content"} -> {"tokens": [...]} (no special tokens added). /apply-template
    # answers the templated text, not a count, so there is no chat route.
    token_counter = TokenCounter(TokenRoute("/tokenize", "content", model=False))
    # Prometheus text, read by the metrics parsers (hpcserve_jupyter.metrics).
    metrics_path = "/metrics"
    metrics_format = "llama-server"

    def argv(self, ctx: Context) -> list[str]:
        args: dict[str, Any] = {
            # Off the GPUs a CPU recipe did not ask for; all layers on those it did.
            "n-gpu-layers": ALL_LAYERS if ctx.recipe.resources.gpus else "0",
        }
        if ctx.recipe.category == "embedding":
            args["embeddings"] = True
        args.update(ctx.args_for(self.name))
        return [
            self.program(args),
            "--model", str(ctx.model),
            "--alias", ctx.served_model_name,
            "--host", HOST, "--port", PORT,
            "--metrics",
            *self.flags(args),
        ]

    def program(self, args: dict[str, Any]) -> str:
        """The binary (and `args` without its setting): a build outside PATH, as
        scripts/setup-llama-server.sh makes, is named by the recipe or $LLAMA_SERVER."""
        chosen = args.pop(PROGRAM_SETTING, None)
        if chosen is not None and (not isinstance(chosen, str) or not chosen.strip()):
            raise BadInput(f"engine_args.{self.name}.{PROGRAM_SETTING} must be the path of "
                           f"the llama-server program, not {chosen!r}",
                           hint="e.g. engine_args.llama_server=/opt/llama.cpp/bin/llama-server")
        return chosen or os.environ.get(PROGRAM_ENV, "").strip() or PROGRAM
