"""Hugging Face transformers' own OpenAI-compatible server (`transformers serve MODEL`).

Flags checked against `transformers serve --help` of transformers 5.25 (the release the tests
run) and the Serve CLI guide: the model is the positional argument (preloaded, never unloaded,
used for every request), --host, --port, --device (default `auto`: a GPU when one is visible);
options are typer flags with dashes, booleans bare (--continuous-batching) and GET /health
answers once the model is loaded. A recipe without GPUs gets `--device cpu`, so the engine stays
off a machine's GPUs the session did not ask for (engine_args `device:` overrides it). The server
has no API key, no served-model-name and no tensor- or pipeline-parallel flag, so none is passed.
It serves the model under the name it was given on the command line and refuses (400) a request
naming any other, so that name, not the recipe's served name, is the session's model. Its
streams end without `data: [DONE]`. transformers 4.x took the model as `--force-model MODEL`.
"""

from __future__ import annotations

from typing import Any

from ..spec import HOST, PORT, MultiNode
from .base import Backend, Context


class Transformers(Backend):
    name = "transformers"
    repeat_list_flags = True  # typer (click) takes one value per occurrence of a list option
    health_path = "/health"
    # No official image ships `transformers[serving]`; targets need one from the recipe's images.
    default_image = None
    multinode = MultiNode("none")  # one process, no distributed serving

    def argv(self, ctx: Context) -> list[str]:
        args: dict[str, Any] = {} if ctx.recipe.resources.gpus else {"device": "cpu"}
        args.update(ctx.args_for(self.name))
        return [
            "transformers", "serve", str(ctx.model),
            "--host", HOST, "--port", PORT,
            *self.flags(args),
        ]

    def served_name(self, ctx: Context) -> str:
        return str(ctx.model)
