"""TensorRT-LLM's OpenAI-compatible server (`trtllm-serve MODEL`).

Flags checked against tensorrt_llm/commands/serve.py (NVIDIA/TensorRT-LLM) and the trtllm-serve
CLI reference (nvidia.github.io/TensorRT-LLM/commands/trtllm-serve): the model is positional
(`serve` is the default subcommand), --host, --port, --tp_size and --pp_size (aliases of
--tensor_parallel_size / --pipeline_parallel_size) and --served_model_name (added in 1.3,
NVIDIA/TensorRT-LLM#11711); options are spelled with underscores, booleans are bare click flags and
`multiple` options repeat the flag. trtllm-serve has no API key option (NVIDIA/TensorRT-LLM#9950),
so none is set. /health is among the endpoints the server documents.
"""

from __future__ import annotations

from ..spec import HOST, PORT, MultiNode
from .base import Backend, Context


class TRTLLM(Backend):
    name = "trtllm"
    repeat_list_flags = True  # click takes one value per occurrence of a `multiple` option
    health_path = "/health"
    default_image = "nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc13"
    # Across nodes trtllm-serve runs as one MPI world, a rank per GPU, started by srun
    # --mpi=pmix behind trtllm-llmapi-launch (examples/llm-api/llm_mgmn_trtllm_serve.sh).
    multinode = MultiNode("mpi", launcher=("trtllm-llmapi-launch",),
                          note="how TensorRT-LLM spans nodes")

    def argv(self, ctx: Context) -> list[str]:
        argv = [
            "trtllm-serve", str(ctx.model),
            "--served_model_name", ctx.served_model_name,
            "--host", HOST, "--port", PORT,
        ]
        if ctx.tensor_parallel > 1:
            argv += ["--tp_size", str(ctx.tensor_parallel)]
        if ctx.pipeline_parallel > 1:
            argv += ["--pp_size", str(ctx.pipeline_parallel)]
        return argv + self.flags(ctx.args_for(self.name))
