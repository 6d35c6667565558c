"""Where hpcserve keeps its state: `HPCSERVE_HOME`, else `hpcserve/` in the Jupyter data dir."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def jupyter_data_dir() -> Path:
    """jupyter_core's answer when installed; the same rules otherwise (no import cost)."""
    if "JUPYTER_DATA_DIR" in os.environ:
        return Path(os.environ["JUPYTER_DATA_DIR"]).expanduser()
    if sys.platform == "darwin":
        return Path("~/Library/Jupyter").expanduser()
    if os.name == "nt":
        return Path(os.environ.get("APPDATA", "~")).expanduser() / "jupyter"
    xdg = os.environ.get("XDG_DATA_HOME") or "~/.local/share"
    return Path(xdg).expanduser() / "jupyter"


def home() -> Path:
    env = os.environ.get("HPCSERVE_HOME")
    path = Path(env).expanduser() if env else jupyter_data_dir() / "hpcserve"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path
