"""Serving engines. Each turns a resolved recipe into the real engine's command line.

Engines register through the `hpcserve_jupyter.backends` entry-point group, so a third party adds
one by shipping a package; ours are registered the same way (and found by module path when the
package metadata is absent, as in a bare source checkout).
"""

from __future__ import annotations

import functools

from ..plugins import discover, load
from .base import Backend, Context

__all__ = ["BUILTIN", "Backend", "Context", "backend_names", "get_backend"]

GROUP = "hpcserve_jupyter.backends"
BUILTIN = {
    "vllm": "hpcserve_jupyter.backends.vllm:VLLM",
    "sglang": "hpcserve_jupyter.backends.sglang:SGLang",
    "transformers": "hpcserve_jupyter.backends.transformers:Transformers",
    "trtllm": "hpcserve_jupyter.backends.trtllm:TRTLLM",
    "tgi": "hpcserve_jupyter.backends.tgi:TGI",
    "llama-cpp": "hpcserve_jupyter.backends.llama_cpp:LlamaCpp",
    "llama-server": "hpcserve_jupyter.backends.llama_server:LlamaServer",
    "chroma": "hpcserve_jupyter.backends.chroma:Chroma",
    "qdrant": "hpcserve_jupyter.backends.qdrant:Qdrant",
    "task": "hpcserve_jupyter.backends.task:Task",
}


@functools.cache
def _registry() -> dict[str, str]:
    return discover(GROUP, BUILTIN)


def backend_names() -> list[str]:
    return sorted(_registry())


@functools.cache
def get_backend(name: str) -> Backend:
    from ..errors import NotFound, close_matches

    target = _registry().get(name)
    if target is None:
        raise NotFound(f"unknown backend {name!r}", hint=close_matches(name, backend_names()))
    return load(target)()
