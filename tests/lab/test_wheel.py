"""The wheel carries the built labextension, so users need no Node.js: build it with no `node`
on PATH (the jupyter-builder hook must reuse the built assets), check its files, install it into
a fresh venv and ask `jupyter labextension list` / `jupyter server extension list` there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import LABEXT, REPO, plain, require_labextension

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(1200)]

DATA = "hpcserve_jupyter-0.1.0.data/data"


def path_without_node() -> str:
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not (Path(d) / "node").exists() and not (Path(d) / "nodejs").exists()]
    path = os.pathsep.join(dirs)
    assert shutil.which("node", path=path) is None
    return path


def run(cmd: list[str], env: dict[str, str], timeout: float = 900) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{out[-6000:]}"
    return out


def test_wheel_without_node_ships_the_labextension(tmp_path: Path) -> None:
    require_labextension()
    env = dict(os.environ, PATH=path_without_node(), PIP_DISABLE_PIP_VERSION_CHECK="1")
    for var in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "VIRTUAL_ENV"):
        env.pop(var, None)
    dist = tmp_path / "dist"
    # An isolated build, as any user or CI would do it (hatchling + hatch-jupyter-builder).
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dist), str(REPO)], env)
    wheels = list(dist.glob("hpcserve_jupyter-*.whl"))
    assert len(wheels) == 1, wheels

    names = set(zipfile.ZipFile(wheels[0]).namelist())
    ext = f"{DATA}/share/jupyter/labextensions/hpcserve-jupyter"
    built = {p.relative_to(LABEXT).as_posix() for p in LABEXT.rglob("*") if p.is_file()}
    assert {"package.json", "static/style.js"} <= built
    assert any(re.fullmatch(r"static/remoteEntry\.[0-9a-f]+\.js", b) for b in built), built
    missing = {b for b in built if f"{ext}/{b}" not in names}
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert f"{DATA}/etc/jupyter/jupyter_server_config.d/hpcserve_jupyter.json" in names

    # A fresh venv: the wheel, its dependencies and JupyterLab, nothing from this checkout.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env)
    vbin = venv / "bin"
    run([str(vbin / "pip"), "install", "-q", str(wheels[0]), "jupyterlab>=4.6,<4.7"], env)
    home = tmp_path / "home"
    home.mkdir()
    jenv = dict(env, HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "config"),
                JUPYTER_DATA_DIR=str(home / "data"), PATH=f"{vbin}{os.pathsep}{env['PATH']}")
    out = plain(run([str(vbin / "jupyter"), "labextension", "list"], jenv, timeout=120))
    assert re.search(r"hpcserve-jupyter v0\.1\.0 enabled\s+OK", out), out
    assert str(venv / "share" / "jupyter" / "labextensions") in out, out
    out = plain(run([str(vbin / "jupyter"), "server", "extension", "list"], jenv,
                    timeout=120))
    assert re.search(r"hpcserve_jupyter\s+enabled", out), out
    assert re.search(r"hpcserve_jupyter 0\.1\.0\s+OK", out), out
