"""The Jupyter server extension (REST API, proxy, OpenAI-compatible gateway).

Importing this package is cheap; jupyter_server is imported when the server loads the app.
"""

from __future__ import annotations

from typing import Any


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import HpcserveApp

    return [{"module": "hpcserve_jupyter.jupyter.app", "app": HpcserveApp}]
