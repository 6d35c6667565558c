"""Hugging Face Text Generation Inference (`text-generation-launcher`).

Flags checked against launcher/src/main.rs and docs/source/reference/launcher.md of
huggingface/text-generation-inference: --model-id, --hostname, --port, --num-shard; booleans are
bare clap flags (--trust-remote-code) and list options take one value per occurrence. Every launcher
flag can also come from an environment variable; API_KEY sets --api-key, which keeps the key off
the launcher's command line, and USAGE_STATS=off stops usage reporting. The launcher has no
served-model-name flag (huggingface/text-generation-inference#3064 proposing one is not merged),
no pipeline parallelism and no multi-node mode. GET /health is the router's health check.
"""

from __future__ import annotations

from ..spec import HOST, PORT, MultiNode
from .base import Backend, Context, TokenCounter, TokenRoute


class TGI(Backend):
    name = "tgi"
    repeat_list_flags = True  # clap takes one value per occurrence
    health_path = "/health"
    default_image = "ghcr.io/huggingface/text-generation-inference:latest"
    multinode = MultiNode("none")  # the launcher shards over one node's GPUs only
    api_key_env = "API_KEY"
    supports_api_key = True
    # The router's POST /tokenize {"inputs"} answers a list of tokens; POST /chat_tokenize a
    # chat request through its template -> {"tokenize_response": [...], "templated_text"}.
    token_counter = TokenCounter(TokenRoute("/tokenize", "inputs", "", model=False),
                                 chat=TokenRoute("/chat_tokenize", "messages",
                                                 "tokenize_response"))
    metrics_path = "/metrics"  # the router's, on its HTTP port (also on --prometheus-port)
    metrics_format = "tgi"

    def argv(self, ctx: Context) -> list[str]:
        argv = [
            "text-generation-launcher",
            "--model-id", str(ctx.model),
            "--hostname", HOST, "--port", PORT,
        ]
        if ctx.tensor_parallel > 1:
            argv += ["--num-shard", str(ctx.tensor_parallel)]
        return argv + self.flags(ctx.args_for(self.name))

    def env(self, ctx: Context) -> dict[str, str]:
        # Compute nodes must not phone home.
        return {"USAGE_STATS": "off"}
