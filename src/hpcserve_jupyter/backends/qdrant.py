"""Qdrant's vector database server (the `qdrant` binary), configured through its environment.

Checked against src/settings.rs and config/config.yaml of qdrant/qdrant: every setting can come
from a QDRANT__<SECTION>__<KEY> variable (prefix QDRANT, separator "__"), so the listen address,
HTTP port and API key are QDRANT__SERVICE__HOST, QDRANT__SERVICE__HTTP_PORT and
QDRANT__SERVICE__API_KEY (the key stays out of `ps`) and QDRANT__TELEMETRY_DISABLED stops usage
reporting. The few command-line flags (src/main.rs: --config-path, --snapshot, --disable-telemetry,
...) are clap flags: bare booleans, one value per occurrence. GET /readyz is Qdrant's readiness
probe. The gRPC port keeps its default (6334), since no placeholder names a second port: a
second Qdrant on the same host needs QDRANT__SERVICE__GRPC_PORT in its recipe's env.
"""

from __future__ import annotations

from ..spec import HOST, PORT, MultiNode
from .base import Backend, Context


class Qdrant(Backend):
    name = "qdrant"
    repeat_list_flags = True  # clap takes one value per occurrence
    categories = frozenset({"vector-db"})
    api_flavour = "qdrant"
    health_path = "/readyz"
    default_image = "qdrant/qdrant:latest"
    multinode = MultiNode("none")  # one server process (no Qdrant cluster mode)
    api_key_env = "QDRANT__SERVICE__API_KEY"
    supports_api_key = True

    def argv(self, ctx: Context) -> list[str]:
        return ["qdrant", *self.flags(ctx.args_for(self.name))]

    def env(self, ctx: Context) -> dict[str, str]:
        return {
            "QDRANT__SERVICE__HOST": HOST,
            "QDRANT__SERVICE__HTTP_PORT": PORT,
            "QDRANT__TELEMETRY_DISABLED": "true",
        }
