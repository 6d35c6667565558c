"""SGLang's OpenAI-compatible server (`python -m sglang.launch_server`).

Flags checked against python/sglang/srt/server_args.py (sgl-project/sglang) and
docs.sglang.io/advanced_features/server_arguments: --model-path, --served-model-name, --host,
--port, --api-key, --tp-size, --pp-size and --is-embedding; booleans are bare store_true flags and
list options take their values after one flag (argparse nargs). SGLang reads its API key only from
--api-key, so the key placeholder goes on the command line. GET /health runs a one-token generation
in current releases (the same handler as /health_generate), so it answers once the model serves.
"""

from __future__ import annotations

from typing import Any

from ..spec import API_KEY, DIST_PORT, HEAD_ADDR, HOST, NNODES, NODE_RANK, PORT, PYTHON, MultiNode
from .base import Backend, Context, TokenCounter, TokenRoute


class SGLang(Backend):
    name = "sglang"
    categories = frozenset({"inference", "embedding"})
    health_path = "/health"
    default_image = "lmsysorg/sglang:latest"
    supports_api_key = True
    # Across nodes SGLang runs on every node, each told the node count, its rank and the first
    # node's address (docs.sglang.io, references/multi_node_deployment); rank 0 serves HTTP.
    multinode = MultiNode("per-node", node_args=(
        "--nnodes", NNODES, "--node-rank", NODE_RANK, "--dist-init-addr",
        f"{HEAD_ADDR}:{DIST_PORT}"), note="how SGLang spans nodes")
    # POST /v1/tokenize {"prompt"} -> {"tokens", "count", ...} (serving_tokenize.py); text only.
    token_counter = TokenCounter(TokenRoute("/v1/tokenize", "prompt", "count"))
    # Served only when started with --enable-metrics, which hpcserve passes unless the recipe
    # says `enable-metrics: false` (then /metrics answers 404 and the metrics view says so).
    metrics_path = "/metrics"
    metrics_format = "sglang"

    def argv(self, ctx: Context) -> list[str]:
        # An embedding recipe needs the causal LM served as an embedding model; engine_args can
        # still turn it off (`is-embedding: false`).
        args: dict[str, Any] = {"is-embedding": True} if ctx.recipe.category == "embedding" else {}
        args.update(ctx.args_for(self.name))
        argv = [
            PYTHON, "-m", "sglang.launch_server",
            "--model-path", str(ctx.model),
            "--served-model-name", ctx.served_model_name,
            "--host", HOST, "--port", PORT,
            "--api-key", API_KEY,
        ]
        if args.pop("enable-metrics", True):
            argv.append("--enable-metrics")
        if ctx.tensor_parallel > 1:
            argv += ["--tp-size", str(ctx.tensor_parallel)]
        if ctx.pipeline_parallel > 1:
            argv += ["--pp-size", str(ctx.pipeline_parallel)]
        return argv + self.flags(args)
