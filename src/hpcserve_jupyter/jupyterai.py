"""A session as a Jupyter AI (jupyter-ai 3.x, Jupyternaut) custom model.

Jupyternaut reads its models from `$JUPYTER_DATA_DIR/jupyter_ai/config.json` (`custom_models`:
`{id, name, description, model_id, params}`, ids `custom-<something>/<litellm model id>`) and
re-reads the file whenever it changes, so writing an entry makes the session appear in its model
picker without a restart. The entry points LiteLLM at this server's gateway with a *gateway key*
(never the Jupyter token: Jupyter AI keeps params in clear text, sends them to the browser and
logs them). Entries hpcserve writes carry ids `custom-hpcserve-<session id>/...`, so they can be
found and removed when the session ends, and a user's own entries are never touched.

Plain JSON, no Jupyter import: the file is Jupyter AI's format, checked by its own config models
in the tests. Every call is given the file's path: finding it is a Jupyter lookup, done at the
edge (jupyter/aiconfig.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BadInput

ID_PREFIX = "custom-hpcserve-"
# hosted_vllm: LiteLLM's provider for self-hosted OpenAI-compatible servers. Unlike `openai/`,
# it lists models under api_base and does not add `cache_control` to the messages it sends.
PROVIDER = "hosted_vllm"


@dataclass(frozen=True)
class AiModel:
    """What Jupyter AI needs to chat with one session through the gateway."""

    session_id: str
    name: str  # the session name: the model the gateway routes by
    api_base: str  # <server>/hpcserve/v1
    api_key: str  # a gateway key scoped to this session
    description: str = ""

    @property
    def model_id(self) -> str:
        return f"{PROVIDER}/{self.name}"

    @property
    def entry_id(self) -> str:
        return f"{ID_PREFIX}{self.session_id}/{self.model_id}"

    def entry(self) -> dict[str, Any]:
        return {"id": self.entry_id, "name": self.name, "description": self.description,
                "model_id": self.model_id,
                "params": {"api_base": self.api_base, "api_key": self.api_key}}


def _owned_by(entry: Any, session_id: str | None) -> bool:
    eid = entry.get("id") if isinstance(entry, dict) else None
    if not isinstance(eid, str) or not eid.startswith(ID_PREFIX):
        return False
    return session_id is None or eid.startswith(f"{ID_PREFIX}{session_id}/")


@contextlib.contextmanager
def _editing(path: Path) -> Iterator[dict[str, Any]]:
    """The config as a dict, written back (atomically, 0600: it holds keys) when the block
    ends without error. A lock file keeps two hpcserve writers from losing each other's edit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(".hpcserve-config.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        config = read(path)
        before = json.dumps(config, sort_keys=True)
        yield config
        if json.dumps(config, sort_keys=True) == before:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".config.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(config, f, indent=4)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def read(path: Path) -> dict[str, Any]:
    """The config file as a dict ({} when absent or empty)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadInput(f"cannot read Jupyter AI's settings {path}: {exc.strerror}") from None
    if not text.strip():
        return {}
    try:
        config = json.loads(text)
    except ValueError as exc:
        raise BadInput(f"Jupyter AI's settings {path} are not valid JSON ({exc})",
                       hint="fix or remove the file; Jupyter AI writes a new one") from None
    if not isinstance(config, dict):
        raise BadInput(f"Jupyter AI's settings {path} are not a JSON object",
                       hint="fix or remove the file; Jupyter AI writes a new one")
    return config


def register(model: AiModel, *, path: Path, default: bool = False) -> None:
    """Add (or replace) the session's entry; with `default`, make it the model Jupyternaut
    uses when the user picks none (`model_provider_id` and its `fields`)."""
    with _editing(path) as config:
        models = [m for m in config.get("custom_models") or []
                  if not _owned_by(m, model.session_id)]
        config["custom_models"] = [model.entry(), *models]
        if default:
            config["model_provider_id"] = model.model_id
            fields = config.get("fields") if isinstance(config.get("fields"), dict) else {}
            fields[model.model_id] = dict(model.entry()["params"])
            config["fields"] = fields


def unregister(session_id: str, *, path: Path) -> list[str]:
    """Remove the session's entry (and the default, when it was this session's model).
    Returns the removed entries' names; nothing is written when there were none."""
    with _editing(path) as config:
        models = config.get("custom_models") or []
        gone = [m for m in models if _owned_by(m, session_id)]
        if not gone:
            return []
        config["custom_models"] = [m for m in models if not _owned_by(m, session_id)]
        fields = config.get("fields") if isinstance(config.get("fields"), dict) else {}
        for m in gone:
            model_id = m.get("model_id")
            if config.get("model_provider_id") == model_id and _ours(fields.get(model_id), m):
                config["model_provider_id"] = None
            if _ours(fields.get(model_id), m):
                fields.pop(model_id, None)
        return [str(m.get("name")) for m in gone]


def _ours(params: Any, entry: dict[str, Any]) -> bool:
    """The default's parameters are the ones this entry set (same gateway key)."""
    return isinstance(params, dict) and params.get("api_key") == \
        (entry.get("params") or {}).get("api_key")


def registered(*, path: Path) -> list[dict[str, Any]]:
    """hpcserve's entries, keys left out: session id, name, model id, api_base, default."""
    config = read(path)
    out = []
    for m in config.get("custom_models") or []:
        if not _owned_by(m, None):
            continue
        session_id = m["id"][len(ID_PREFIX):].split("/", 1)[0]
        out.append({"session_id": session_id, "name": m.get("name"),
                    "model_id": m.get("model_id"),
                    "api_base": (m.get("params") or {}).get("api_base"),
                    "default": config.get("model_provider_id") == m.get("model_id")})
    return out
