"""The route table: every URL the extension serves, as OpenAPI path templates.

`{name}` matches one path segment; `{path}` (last only) matches the rest, slashes included,
and may be empty. The OpenAPI document (openapi.py) describes exactly these; a test checks it
against the routes the server registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from . import ai_handlers, gateway, handlers, job_handlers, key_handlers, lifetime_handlers, proxy


@dataclass(frozen=True)
class Route:
    path: str
    handler: type
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def pattern(self) -> str:
        def group(m: re.Match[str]) -> str:
            name = m.group(1)
            return f"(?P<{name}>.*)" if name == "path" else f"(?P<{name}>[^/]+)"

        pattern = re.sub(r"\{(\w+)\}", group, re.escape(self.path).replace(r"\{", "{")
                         .replace(r"\}", "}"))
        # /proxy/{id}/{path}: also /proxy/{id} alone (the endpoint's root)
        return pattern.replace("/(?P<path>.*)", "(?:/(?P<path>.*))?")


API = "/hpcserve/api"
ROUTES: list[Route] = [
    Route(f"{API}/openapi.json", handlers.OpenAPIHandler),
    Route(f"{API}/recipes", handlers.RecipesHandler),
    Route(f"{API}/recipes/{{name}}", handlers.RecipeHandler),
    Route(f"{API}/targets", handlers.TargetsHandler),
    Route(f"{API}/targets/{{name}}/secrets", handlers.TargetSecretsHandler),
    Route(f"{API}/sessions", handlers.SessionsHandler),
    Route(f"{API}/sessions/{{id}}", handlers.SessionHandler),
    Route(f"{API}/sessions/{{id}}/keepalive", handlers.KeepaliveHandler),
    Route(f"{API}/sessions/{{id}}/relaunch", lifetime_handlers.RelaunchHandler),
    Route(f"{API}/sessions/{{id}}/extend", lifetime_handlers.ExtendHandler),
    Route(f"{API}/sessions/{{id}}/metrics", lifetime_handlers.MetricsHandler),
    Route(f"{API}/sessions/{{id}}/logs", handlers.LogsHandler),
    Route(f"{API}/sessions/{{id}}/jupyter-ai", ai_handlers.JupyterAiHandler),
    Route(f"{API}/sessions/{{id}}/v1/live", gateway.LiveHandler),
    Route(f"{API}/sessions/{{id}}/v1/ready", gateway.ReadyHandler),
    Route(f"{API}/sessions/{{id}}/v1/model", gateway.ModelInfoHandler),
    Route(f"{API}/jobs", job_handlers.JobsHandler),
    Route(f"{API}/jobs/{{id}}", job_handlers.JobHandler),
    Route(f"{API}/jobs/{{id}}/results", job_handlers.JobResultsHandler),
    Route(f"{API}/jobs/{{id}}/logs", job_handlers.JobLogsHandler),
    Route(f"{API}/keys", key_handlers.KeysHandler),
    Route(f"{API}/keys/{{id}}", key_handlers.KeyHandler),
    Route(f"{API}/refresh", handlers.RefreshHandler),
    Route(f"{API}/events", handlers.EventsHandler),
    Route(f"{API}/events/log", handlers.EventLogHandler),
    Route("/hpcserve/proxy/{id}/{path}", proxy.ProxyHandler),
    Route("/hpcserve/v1/models", gateway.ModelsHandler),
    Route("/hpcserve/v1/models/{model}", gateway.ModelHandler),
    Route("/hpcserve/v1/chat/completions", gateway.InferenceHandler,
          {"endpoint": "chat/completions"}),
    Route("/hpcserve/v1/completions", gateway.InferenceHandler, {"endpoint": "completions"}),
    Route("/hpcserve/v1/embeddings", gateway.InferenceHandler, {"endpoint": "embeddings"}),
]
