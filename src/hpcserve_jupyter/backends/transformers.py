"""Hugging Face transformers' own OpenAI-compatible server (`transformers serve MODEL`).

Flags checked against the Serve CLI guide (docs/source/en/serve-cli/serving.md) and
src/transformers/cli/serve_refactored.py and cli/serving/server.py of huggingface/transformers:
the model is the positional argument (preloaded, never unloaded, used for every request), --host,
--port; options are typer flags with dashes, booleans bare (--continuous-batching) and GET /health
answers once the server is up. transformers 4.x releases took the model as `--force-model MODEL`
instead. The server has no API key, no served-model-name and no tensor- or pipeline-parallel flag,
so none is passed: the preloaded model answers whatever `model` a request names.
"""

from __future__ import annotations

from ..spec import HOST, PORT
from .base import Backend, Context


class Transformers(Backend):
    name = "transformers"
    repeat_list_flags = True  # typer (click) takes one value per occurrence of a list option
    health_path = "/health"
    # No official image ships `transformers[serving]`; targets need one from the recipe's images.
    default_image = None

    def argv(self, ctx: Context) -> list[str]:
        return [
            "transformers", "serve", str(ctx.model),
            "--host", HOST, "--port", PORT,
            *self.flags(ctx.args_for(self.name)),
        ]
