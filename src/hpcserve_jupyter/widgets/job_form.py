"""The Jobs tab's submit form: a recipe a job can run (inference or embedding over an OpenAI Batch
file, or a task over a file, directory or zip), its input, the requests in flight and the target.
Submit runs on a worker thread; its outcome, or the facade's error (e.g. every bad line of a
malformed file), shows in the form's status line."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import ipywidgets as W

from .shared import Shared, message

if TYPE_CHECKING:
    from ..jobs import Job

JOB_CATEGORIES = ("inference", "embedding", "task")  # the recipes a job can run


class JobForm:
    """The form's widgets (attributes) and what its Submit button does; `on_submitted` hears
    of each job submitted here (the tab shows it before its first event arrives)."""

    def __init__(self, shared: Shared, on_submitted: Callable[[Job], None]) -> None:
        self.shared = shared
        self._on_submitted = on_submitted
        self.submitted: list[str] = []  # ids of the jobs submitted here
        recipes = [r for r in shared.facade.recipes() if r.get("category") in JOB_CATEGORIES]
        names = sorted(r["name"] for r in recipes)
        # an inference recipe that runs anywhere (no GPU) if there is one
        runs_here = sorted((r.get("category") != "inference", r["name"]) for r in recipes
                           if not (r.get("resources") or {}).get("gpus"))
        default = runs_here[0][1] if runs_here else (names[0] if names else None)
        wide = W.Layout(width="22em")
        self.recipe = W.Dropdown(options=names, value=default, description="recipe",
                                 layout=wide)
        self.input = W.Text(description="input", placeholder="path: a JSONL file (OpenAI Batch "
                            "format); for a task, a file, directory or .zip",
                            layout=W.Layout(width="36em"))
        self.concurrency = W.BoundedIntText(value=8, min=1, max=256, description="in flight",
                                            layout=W.Layout(width="11em"))
        targets = sorted(t["name"] for t in shared.facade.targets())
        self.target = W.Dropdown(options=targets, value="local" if "local" in targets else
                                 (targets[0] if targets else None), description="target",
                                 layout=wide)
        self.submit_button = W.Button(description="Submit", button_style="primary",
                                      icon="play", tooltip="run the file through the model "
                                      "once; the engine stops when it is done")
        self.status = W.HTML()  # the outcome of Submit, or its error
        self.submit_button.on_click(lambda _: self.submit())
        self.box = W.VBox([W.HBox([self.recipe, self.target, self.concurrency]), self.input,
                           W.HBox([self.submit_button, self.status])])

    def submit(self) -> None:
        """What the Submit button does: submit on a worker thread (the input file is checked
        line by line first, which may take a moment for a large file)."""
        recipe, target = self.recipe.value, self.target.value
        path, concurrency = self.input.value.strip(), self.concurrency.value
        if not recipe or not path:
            self.shared.say(self.status, "choose a recipe and give the input file's path",
                            error=True)
            return
        self.submit_button.disabled = True
        self.shared.say(self.status, f"submitting {path} to {recipe} on {target}…")
        facade = self.shared.facade

        def work() -> None:
            try:
                job = facade.submit_job(recipe, path, on=target or "local",
                                        concurrency=concurrency).job
                with self.shared.lock:
                    self.submitted.append(job.id)
                self._on_submitted(job)
                what = f"{job.total} requests" if job.kind == "batch" else \
                    f"a task over {job.total} input file{'s' if job.total != 1 else ''}"
                self.shared.say(self.status, f"submitted {job.name} (id {job.id}): {what} "
                                f"on {job.target}")
            except Exception as exc:
                self.shared.say(self.status, message(exc), error=True)
            finally:
                self.submit_button.disabled = False

        self.shared.start(work, "submit")
