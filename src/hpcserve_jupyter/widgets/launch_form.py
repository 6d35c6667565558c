"""The control panel's launch form: recipe, backend, target, resources, the target's secrets and
the Launch button, with progress until the session is ready.

Secrets (an SSH key passphrase, a Tapis password, a Hugging Face token) are Password fields that
sync only on Enter or leaving the field; the value is moved into memory at once and the field
cleared, so it never stays in widget state (which a notebook may save). On launch the facade puts
it where the target reads it (the environment variable the target's configuration names).
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING, Any

import ipywidgets as W

from ..views import badge
from .shared import Shared, message

if TYPE_CHECKING:
    from ..sessions import Session

STATE_STEP = {"pending": 1, "starting": 2, "ready": 3}


class LaunchForm:
    """The form's widgets (attributes) and what its Launch button does."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.recipes = {r["name"]: r for r in shared.facade.recipes()}
        self.targets = {t["name"]: t for t in shared.facade.targets()}
        self.launched: list[str] = []  # ids of the sessions launched here
        self._held: dict[str, str] = {}  # secrets typed in, by environment variable name
        wide = W.Layout(width="22em")
        names = sorted(self.recipes)
        self.recipe = W.Dropdown(options=names, value=_default_recipe(self.recipes),
                                 description="recipe", layout=wide)
        self.recipe_info = W.HTML()
        self.backend = W.Dropdown(options=[], description="backend", layout=wide)
        targets = sorted(self.targets)
        self.target = W.Dropdown(options=targets, value="local" if "local" in targets else
                                 (targets[0] if targets else None), description="target",
                                 layout=wide)
        short = W.Layout(width="11em")
        self.gpus = W.BoundedIntText(min=0, max=4096, description="GPUs/node", layout=short)
        self.nodes = W.BoundedIntText(min=1, max=4096, value=1, description="nodes",
                                      layout=short)
        self.time = W.Text(description="time", placeholder="e.g. 2h", layout=short)
        self.replicas = W.BoundedIntText(min=1, max=4096, value=1, description="replicas",
                                         layout=short)
        self.session_name = W.Text(description="name", placeholder="default: RECIPE-N",
                                   layout=wide)
        self.secrets_box = W.VBox()
        self.secret_fields: dict[str, W.Password] = {}
        self.launch_button = W.Button(description="Launch", button_style="primary",
                                      icon="rocket")
        self.progress = W.IntProgress(min=0, max=3, value=0, description="progress",
                                      bar_style="info")
        self.launch_status = W.HTML()
        self.pull_button = W.Button(description="Pull weights", icon="download",
                                    tooltip="fetch the recipe's model into the target's cache "
                                    "ahead of launch (hpcserve pull)")
        self.pull_progress = W.FloatProgress(min=0, max=1, value=0, description="weights",
                                             bar_style="info", layout=W.Layout(width="20em"))
        self.pull_status = W.HTML()
        self.recipe.observe(lambda _: self._recipe_changed(), "value")
        self.target.observe(lambda _: self._target_changed(), "value")
        self.launch_button.on_click(lambda _: self.launch())
        self.pull_button.on_click(lambda _: self.pull())
        self._recipe_changed()
        self._target_changed()
        self.box = W.VBox([
            W.HBox([self.recipe, self.backend, self.target]), self.recipe_info,
            W.HBox([self.gpus, self.nodes, self.time, self.replicas]),
            self.session_name, self.secrets_box,
            W.HBox([self.launch_button, self.progress, self.launch_status]),
            W.HBox([self.pull_button, self.pull_progress, self.pull_status]),
        ])

    def _say(self, text: str, *, error: bool = False) -> None:
        self.shared.say(self.launch_status, text, error=error)

    def _recipe_changed(self) -> None:
        r = self.recipes.get(self.recipe.value)
        if not r:
            return
        self.backend.options = list(r["backends"])
        self.backend.value = r["backends"][0] if r["backends"] else None
        res = r.get("resources") or {}
        self.gpus.value = int(res.get("gpus") or 0)
        self.nodes.value = int(res.get("nodes") or 1)
        self.time.value = str(res.get("time") or "")
        replicas = r.get("replicas") or 1
        self.replicas.value = int(replicas if isinstance(replicas, int) else 1)
        model = f" — model <code>{html.escape(str(r['model']))}</code>" if r.get("model") else ""
        self.recipe_info.value = (f"<small>{html.escape(r.get('description') or '')} "
                                  f"({html.escape(str(r.get('category')))}){model}</small>")

    def _target_changed(self) -> None:
        """One Password field per secret the chosen target reads from the environment."""
        for pw in self.secret_fields.values():
            pw.close()
        self.secret_fields.clear()
        if self.target.value:
            try:
                fields = self.shared.facade.target_secrets(self.target.value)
            except Exception as exc:  # a broken target config shows at launch, with its hint
                fields = []
                self._say(f"target {self.target.value}: {message(exc)}", error=True)
        else:
            fields = []
        for f in fields:
            env = f["env"]
            pw = W.Password(description=f["label"], continuous_update=False,
                            placeholder=_secret_placeholder(env, f["is_set"], held=False),
                            style={"description_width": "initial"}, layout=W.Layout(width="30em"))
            pw.observe(lambda change, env=env, pw=pw: self._hold(env, pw, change["new"]), "value")
            self.secret_fields[env] = pw
        self.secrets_box.children = list(self.secret_fields.values())

    def _hold(self, env: str, field: W.Password, value: str) -> None:
        if not value:
            return
        self._held[env] = value
        field.value = ""  # never left in widget state (a saved notebook may keep that)
        field.placeholder = _secret_placeholder(env, True, held=True)

    def overrides(self) -> dict[str, int | str]:
        """The resource fields that differ from the recipe's own values."""
        r = self.recipes[self.recipe.value]
        res = r.get("resources") or {}
        replicas = r.get("replicas") if isinstance(r.get("replicas"), int) else 1
        out: dict[str, int | str] = {}
        if self.gpus.value != int(res.get("gpus") or 0):
            out["gpus"] = self.gpus.value
        if self.nodes.value != int(res.get("nodes") or 1):
            out["nodes"] = self.nodes.value
        if self.time.value.strip() and self.time.value.strip() != str(res.get("time") or ""):
            out["time"] = self.time.value.strip()
        if self.replicas.value != replicas:
            out["replicas"] = self.replicas.value
        return out

    def launch(self) -> None:
        """What the Launch button does: launch on a worker thread, progress until ready."""
        recipe, backend, target = self.recipe.value, self.backend.value, self.target.value
        name = self.session_name.value.strip() or None
        overrides = self.overrides()
        secrets = {env: self._held.pop(env) for env in list(self._held)
                   if env in self.secret_fields}  # those the chosen target reads
        if secrets:
            try:
                self._apply_secrets(target, secrets)
            except Exception as exc:
                self._say(message(exc), error=True)
                return
        self.launch_button.disabled = True
        self.progress.value, self.progress.bar_style = 0, "info"
        self._say(f"launching {recipe} on {target}…")
        facade = self.shared.facade

        def work() -> None:
            start = time.monotonic()

            def progress(s: Session) -> None:
                self._show_progress(s, time.monotonic() - start)

            try:
                # overrides: gpus, nodes, time, replicas (no name of launch()'s own arguments)
                s = facade.launch(recipe, backend=backend, on=target, name=name, wait=False,
                                  **overrides)  # type: ignore[arg-type]
                with self.shared.lock:
                    self.launched.append(s.id)
                progress(s)
                s = facade.wait(s.id, progress=progress)
                progress(s)
            except Exception as exc:
                self.progress.bar_style = "danger"
                self._say(message(exc), error=True)
            finally:
                self.launch_button.disabled = False

        self.shared.start(work, "launch")

    def pull(self) -> None:
        """What the Pull button does: the recipe's weights into the chosen target's cache
        (`hpcserve pull`, run in this process), with a bytes bar; a token typed into the
        target's Hugging Face field is used for it (and kept for the launch)."""
        from ..weights import recipe_pull

        recipe, backend, target = self.recipe.value, self.backend.value, self.target.value
        self.pull_button.disabled = True
        self.pull_progress.value, self.pull_progress.bar_style = 0, "info"

        def shown(p: Any) -> None:
            self.pull_progress.value = p.bytes_done / p.bytes_total if p.bytes_total else 0
            self.pull_status.value = (f"<small>{p.phase}: {p.files_done}/{p.files_total} "
                                      f"files</small>")

        def work() -> None:
            try:
                plan = recipe_pull.plan(recipe, on=target, backend=backend)
                self.shared.say(self.pull_status, plan.describe() + "…")
                done = recipe_pull.run(plan, shown,
                                       token=self._held.get(plan.token_env or "") or None)
                self.pull_progress.value, self.pull_progress.bar_style = 1, "success"
                self.shared.say(self.pull_status, f"{done.repo_id}@{done.commit[:12]}: "
                                f"{len(done.files)} files verified in {done.cache} "
                                f"({done.target}); launches use it")
            except Exception as exc:
                self.pull_progress.bar_style = "danger"
                self.shared.say(self.pull_status, message(exc), error=True)
            finally:
                self.pull_button.disabled = False

        self.shared.start(work, "pull")

    def _apply_secrets(self, target: str, secrets: dict[str, str]) -> None:
        """Hand typed secrets to the facade (it puts them where the target reads them)."""
        self.shared.facade.set_target_secrets(target, secrets)
        for env in secrets:
            self.secret_fields[env].placeholder = _secret_placeholder(env, True, held=False)

    def _show_progress(self, s: Session, elapsed: float) -> None:
        state = str(s.state)
        self.progress.value = STATE_STEP.get(state, 3 if s.state.terminal else 0)
        self.progress.bar_style = ("success" if state == "ready" else
                                   "danger" if s.state.terminal else "info")
        reason = f" {html.escape(s.reason)}" if s.reason and s.reason != "serving" else ""
        self.launch_status.value = (f"<code>{html.escape(s.name)}</code> "
                                    f"{badge(state, s.unreachable)}{reason} "
                                    f"<small>{elapsed:.1f} s</small>")


def _secret_placeholder(env: str, is_set: bool, *, held: bool) -> str:
    if held:
        return f"held in memory; sets ${env} at launch (never saved)"
    if is_set:
        return f"${env} is set in this kernel (type to replace; never saved)"
    return f"sets ${env} for this kernel at launch (never saved)"


def _default_recipe(recipes: dict[str, dict[str, Any]]) -> str | None:
    """A recipe that runs anywhere (inference, no GPU) if there is one, else the first."""
    for name in sorted(recipes):
        r = recipes[name]
        if r.get("category") == "inference" and not (r.get("resources") or {}).get("gpus"):
            return name
    return sorted(recipes)[0] if recipes else None
