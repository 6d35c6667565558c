"""Chroma's vector database server (`chroma run`).

Flags checked against rust/cli/src/commands/run.rs (chroma-core/chroma) and
docs.trychroma.com/docs/cli/run: --host, --port and --path, the data directory, which defaults to
./chroma in the working directory and is set through engine_args (`path: /scratch/chroma`). The
Rust server of Chroma 1.x has no built-in authentication (its frontend auth hook is a no-op,
chroma-core/chroma#3750), so no API key is set. GET /api/v2/healthcheck (Chroma API reference)
answers 503 until the server can serve (it reports its executor and log client ready), which
/api/v2/heartbeat does not check.
The tests run `chroma run` from PyPI's chromadb 1.5.9 (whose `chroma` console script starts the
same Rust server) and use it through chromadb.HttpClient.
"""

from __future__ import annotations

from ..spec import HOST, PORT, MultiNode
from .base import Backend, Context


class Chroma(Backend):
    name = "chroma"
    categories = frozenset({"vector-db"})
    api_flavour = "chroma"
    health_path = "/api/v2/healthcheck"
    default_image = "chromadb/chroma:latest"
    multinode = MultiNode("none")  # one server process

    def argv(self, ctx: Context) -> list[str]:
        return ["chroma", "run", "--host", HOST, "--port", PORT,
                *self.flags(ctx.args_for(self.name))]
