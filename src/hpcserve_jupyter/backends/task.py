"""Task recipes' "engine": the recipe's own command, run once by a one-off job.

Not a server: it has no port, health check or API. The job driver runs it with
$HPCSERVE_INPUT, $HPCSERVE_OUTPUT and $HPCSERVE_MODEL set, and its exit code decides whether
the job is done. Registered like the engines so a task resolves to a ServeSpec the targets
already know how to run (a process, a batch script, a pod).
"""

from __future__ import annotations

from ..spec import MultiNode
from .base import Backend, Context


class Task(Backend):
    name = "task"
    categories = frozenset({"task"})
    health_path = "/"
    api_flavour = "none"
    multinode = MultiNode("none")

    def argv(self, ctx: Context) -> list[str]:
        return list(ctx.recipe.command or [])
