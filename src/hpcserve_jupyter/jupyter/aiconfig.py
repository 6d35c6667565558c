"""Where Jupyter AI keeps its settings: a Jupyter path, so it is looked up here at the edge
(by the server extension and the embedded facade) and handed to the core (service.py,
jupyterai.py), which never guesses a Jupyter path itself."""

from __future__ import annotations

import os
from pathlib import Path


def config_path() -> Path:
    """Jupyter AI's `config.json`: in the Jupyter data dir, as `jupyter_core` finds it."""
    try:
        from jupyter_core.paths import jupyter_data_dir
    except ImportError:  # no Jupyter here: the same default jupyter_core would give
        base = os.environ.get("JUPYTER_DATA_DIR") or str(Path.home() / ".local/share/jupyter")
        return Path(base) / "jupyter_ai" / "config.json"
    return Path(jupyter_data_dir()) / "jupyter_ai" / "config.json"
