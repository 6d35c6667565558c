"""llama.cpp through llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`).

Flags checked against llama_cpp/server/settings.py and cli.py of llama-cpp-python 0.3.36: every
settings field is a `--snake_case` flag; booleans take a value (`--embedding True`). The server's
settings are pydantic-settings, so `API_KEY` in the environment sets the key without putting it on
the command line. It has no /health route; /v1/models answers once the model is loaded.
"""

from __future__ import annotations

from ..spec import HOST, PORT, PYTHON, MultiNode
from .base import Backend, Context, TokenCounter, TokenRoute


class LlamaCpp(Backend):
    name = "llama-cpp"
    categories = frozenset({"inference", "embedding"})
    health_path = "/v1/models"
    default_image = "ghcr.io/abetlen/llama-cpp-python:latest"
    multinode = MultiNode("none")  # one process (llama.cpp's RPC servers are not used)
    api_key_env = "API_KEY"
    supports_api_key = True
    bool_values = True
    # Its streams carry no usage; POST /extras/tokenize {"input"} -> {"tokens"} (app.py of
    # 0.3.36; /tokenize is 404). It cannot apply its chat template over HTTP.
    token_counter = TokenCounter(TokenRoute("/extras/tokenize", "input"))
    # llama-cpp-python's server has no /metrics (app.py of 0.3.36 has no such route);
    # llama.cpp's own llama-server --metrics does (format "llama-server").
    metrics_path = None
    metrics_format = None

    def argv(self, ctx: Context) -> list[str]:
        args = {
            # The server otherwise aborts a streaming answer whenever another request arrives,
            # which breaks concurrent users and batch prompts.
            "interrupt_requests": False,
            "n_gpu_layers": -1 if ctx.recipe.resources.gpus else 0,
        }
        if ctx.recipe.category == "embedding":
            args["embedding"] = True
        args.update(ctx.args_for(self.name))
        return [
            PYTHON, "-m", "llama_cpp.server",
            "--model", str(ctx.model),
            "--model_alias", ctx.served_model_name,
            "--host", HOST, "--port", PORT,
            *self.flags(args),
        ]
