"""The source checkout's own venv shows the UI with no JUPYTER_PATH or JUPYTER_CONFIG_PATH, as a
user runs it: scripts/build-labextension.sh (run by `make demo`, `make test` and `make lab`)
links the build into the venv as `jupyter labextension develop` does, and the editable install
ships the server extension's enable file. `make lab` then serves notebooks/ with both."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import hpcserve_jupyter

from .conftest import LABEXT, REPO, TOKEN, free_port, lab_env, plain, require_labextension

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]

VENV = Path(sys.prefix)
JUPYTER = VENV / "bin" / "jupyter"
FIX = "run `bash scripts/build-labextension.sh` (make test, make demo and make lab do)"


@pytest.fixture
def checkout_venv() -> None:
    """These tests are about this checkout's .venv with the package installed editable."""
    require_labextension()
    if VENV.resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not run from the checkout's .venv ({VENV})")
    if not Path(hpcserve_jupyter.__file__).resolve().is_relative_to(REPO / "src"):
        pytest.skip("hpcserve_jupyter is not installed editable from this checkout")


def user_env(tmp: Path) -> dict[str, str]:
    """A user's environment: nothing pointing into the checkout, an empty home and Jupyter
    user directories (so nothing found there can stand in for the venv's own setup)."""
    env = lab_env(tmp)
    env.pop("JUPYTER_PATH")
    env.pop("JUPYTER_CONFIG_PATH")
    return env


def section(listing: str, heading: str) -> str:
    """The lines under one directory heading (`/path` or `Config dir: /path`) of a
    `jupyter ... list` output; other unindented lines (import timings) are skipped."""
    out, inside = [], False
    for line in listing.splitlines():
        if line.startswith(("/", "Config dir: ")):
            inside = line.strip() in (heading, f"Config dir: {heading}")
            continue
        if not line.startswith((" ", "\t")):
            continue
        if inside:
            out.append(line)
    return "\n".join(out)


def test_venv_lists_the_linked_labextension(checkout_venv: None, tmp_path: Path) -> None:
    env = user_env(tmp_path)
    listed = subprocess.run([str(JUPYTER), "labextension", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    out = plain(listed.stdout + listed.stderr)
    assert listed.returncode == 0, out
    where = VENV / "share" / "jupyter" / "labextensions"
    assert re.search(r"hpcserve-jupyter v0\.1\.0 enabled\s+OK", section(out, str(where))), (
        f"not listed under {where}: {FIX}\n{out}")
    # a link to the build, so a rebuild is what JupyterLab serves (no stale copy)
    linked = where / "hpcserve-jupyter"
    assert linked.is_symlink() and linked.resolve() == LABEXT.resolve(), (
        f"{linked} is not a link to {LABEXT}: {FIX}")

    listed = subprocess.run([str(JUPYTER), "server", "extension", "list"], env=env,
                            capture_output=True, text=True, timeout=120)
    out = plain(listed.stdout + listed.stderr)
    assert listed.returncode == 0, out
    config = section(out, str(VENV / "etc" / "jupyter"))
    assert re.search(r"hpcserve_jupyter\s+enabled", config), out
    assert re.search(r"hpcserve_jupyter 0\.1\.0\s+OK", config), out


def test_make_lab_serves_notebooks_with_the_sidebar(checkout_venv: None, tmp_path: Path,
                                                    browser_context, artifacts: Path) -> None:
    """`make lab` as a user types it (with a port and token for the test): the notebooks/ folder,
    the REST API of the server extension, and the sidebar's tab in the browser."""
    from playwright.sync_api import expect

    port = free_port()
    args = (f"--no-browser --ip=127.0.0.1 --port={port} --ServerApp.port_retries=0 "
            f"--IdentityProvider.token={TOKEN} --LabApp.news_url= "
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")
    log_path = tmp_path / "make-lab.log"
    env = user_env(tmp_path)
    for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # as typed, not as a child of `make test`
        env.pop(var, None)
    # -o: the venv running this test is set up; make must not reinstall it under the tests
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["make", "-o", ".venv/.installed", "lab", f"LAB_ARGS={args}"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    http = httpx.Client(base_url=url, timeout=60, trust_env=False,
                        headers={"Authorization": f"token {TOKEN}"})
    page = None
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if http.get("hpcserve/api/recipes").status_code == 200:
                    break
            assert proc.poll() is None, f"make lab exited:\n{log_path.read_text()[-4000:]}"
            assert time.monotonic() < deadline, (
                f"make lab did not serve:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.5)
        made = log_path.read_text()
        assert "build-labextension: linked" in made, made

        files = {c["name"] for c in http.get("api/contents").json()["content"]}
        expected = {p.name for p in (REPO / "notebooks").glob("*.ipynb")}
        assert expected and expected <= files, (expected, files)
        recipes = {r["name"] for r in http.get("hpcserve/api/recipes").json()["recipes"]}
        assert "smollm2-135m" in recipes, recipes

        page = browser_context.new_page()
        page.goto(f"{url}lab?token={TOKEN}")
        tab = page.locator(".jp-SideBar.jp-mod-left li[data-id='hpcserve-sessions']")
        expect(tab).to_be_visible(timeout=60_000)
        tab.click()
        sidebar = page.locator("#hpcserve-sessions")
        expect(sidebar.locator(".jp-hpcserve-connection")).to_have_attribute(
            "data-state", "open", timeout=30_000)
        page.screenshot(path=str(artifacts / "make-lab.png"))
    finally:
        if page is not None:
            page.close()
        http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
