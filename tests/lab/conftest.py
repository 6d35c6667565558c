"""The JupyterLab front end, tested for real: a `jupyter lab` subprocess with the server
extension and the built labextension, driven by Debian's Chromium through Playwright.

The labextension must have been built (scripts/build-labextension.sh, run by `make test`);
without it, or without Chromium, these tests skip, except under CI=true where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
LABEXT_BUILD = REPO / "labextension" / "build"  # holds labextensions/hpcserve-jupyter
LABEXT = LABEXT_BUILD / "labextensions" / "hpcserve-jupyter"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
TOKEN = "lab-test-token-0123456789abcdef"
CHROMIUM = os.environ.get("HPCSERVE_TEST_CHROMIUM") or shutil.which("chromium") \
    or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: drives JupyterLab in headless Chromium "
                            "(needs the built labextension and Debian's chromium)")
    config.addinivalue_line("markers", "wheel: builds the wheel without Node.js and installs "
                            "it into a fresh venv (slow)")


def missing(reason: str) -> None:
    """Skip, or fail under CI=true: CI must run these tests, not quietly skip them."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure)", pytrace=False)
    pytest.skip(reason)


def require_labextension() -> None:
    if not (LABEXT / "package.json").is_file() or not (LABEXT / "static").is_dir():
        missing(f"the labextension is not built ({LABEXT}): run scripts/build-labextension.sh")


def plain(text: str) -> str:
    """Text without ANSI colours (jupyter's extension lists colour `enabled` and `OK`)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def write_notebook(path: Path, sources: list[str]) -> None:
    """A notebook of code cells (not run yet) on the python3 kernel."""
    path.write_text(json.dumps({
        "cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "outputs": [],
                   "execution_count": None, "source": [src]} for i, src in enumerate(sources)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


def wait_for_kernel(page) -> None:
    """Until the notebook's kernel is connected and idle. The execution indicator alone says
    `idle` while the page still shows "No Kernel | Initializing"; a cell run then is lost."""
    from playwright.sync_api import expect

    expect(page.locator(".jp-Toolbar-kernelName")).to_contain_text("Python 3", timeout=90_000)
    expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
        1, timeout=90_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(tmp: Path) -> dict[str, str]:
    """An environment isolated from the user's Jupyter and hpcserve setup, that finds the
    server extension (the shipped enable file) and the labextension (the fresh build)."""
    env = dict(os.environ)
    for d in ("home", "runtime", "data", "config", "settings", "workspaces", "hpcserve"):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(tmp / "home"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_CONFIG_PATH=str(REPO / "jupyter-config"),
        JUPYTER_PATH=str(LABEXT_BUILD),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        HPCSERVE_HOME=str(tmp / "hpcserve"),
        HPCSERVE_TARGETS=str(tmp / "targets.yaml"),
        HPCSERVE_RECIPES="",
    )
    env.pop("JUPYTER_TOKEN", None)
    # no "get notified about Jupyter news?" toast among the notifications the tests read
    news = (tmp / "settings" / "@jupyterlab" / "apputils-extension"
            / "notification.jupyterlab-settings")
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text('{"fetchNews": "false"}')
    return env


class LabServer:
    """`jupyter lab` (or `jupyter notebook`: app="notebook") on a free port, with a token;
    stops every session it launched at exit."""

    def __init__(self, tmp: Path, app: str = "lab") -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.env = lab_env(tmp)
        self.root = tmp / "root"
        self.root.mkdir(exist_ok=True)
        self.log_path = tmp / f"jupyter-{app}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        jupyter = Path(sys.executable).with_name("jupyter")
        self.proc = subprocess.Popen(
            [str(jupyter), app, "--allow-root", "--no-browser", "--ip=127.0.0.1",
             f"--port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={self.root}",
             "--LabApp.news_url=", "--HpcserveApp.poll_interval=0.5",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=str(tmp))
        self.http = httpx.Client(base_url=self.url, timeout=60, trust_env=False,
                                 headers={"Authorization": f"token {TOKEN}"})
        deadline = time.monotonic() + 90
        while True:
            try:
                if self.http.get("hpcserve/api/recipes").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, f"jupyter {app} exited:\n{self.logs()}"
            assert time.monotonic() < deadline, f"jupyter {app} did not start:\n{self.logs()}"
            time.sleep(0.3)

    def logs(self, tail: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}{path}?token={TOKEN}"

    def stop_sessions(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            for s in self.http.get("hpcserve/api/sessions", params={"live": 1}).json()[
                    "sessions"]:
                with contextlib.suppress(httpx.HTTPError):
                    self.http.delete(f"hpcserve/api/sessions/{s['id']}")

    def close(self) -> None:
        self.stop_sessions()
        self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    require_labextension()
    server = LabServer(tmp_path_factory.mktemp("lab"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory):
    """A fresh Chromium profile (Debian's chromium: test tools cannot download browsers)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed (pip install -e '.[test]')")
    if not Path(CHROMIUM).is_file():
        missing(f"no Chromium at {CHROMIUM}: apt-get install -y chromium "
                "(scripts/build-labextension.sh does it as root)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900}, permissions=["clipboard-read",
                                                                  "clipboard-write"])
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def open_sidebar(page: Any, expect: Any) -> Any:
    """The sessions sidebar, opened from its tab in the left bar (left open if it is), once
    its event stream is connected."""
    tab = page.locator(".jp-SideBar.jp-mod-left li[data-id='hpcserve-sessions']")
    expect(tab).to_be_visible(timeout=60_000)
    sidebar = page.locator("#hpcserve-sessions")
    if not sidebar.is_visible():
        tab.click()
    expect(sidebar).to_be_visible()
    expect(sidebar.locator(".jp-hpcserve-connection")).to_have_attribute(
        "data-state", "open", timeout=30_000)
    return sidebar


def run_page(lab: LabServer, browser_context: Any, artifacts: Path, name: str,
             body: Callable[[Any, Any], None], cleanup: Callable[[], None] = lambda: None
             ) -> None:
    """Run `body(page, expect)` on a fresh page: a screenshot, the browser console and the
    server log on failure; `cleanup` whatever happened; no page error allowed."""
    require_labextension()
    from playwright.sync_api import expect

    page = browser_context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        body(page, expect)
    except Exception:
        page.screenshot(path=str(artifacts / f"{name}-failure.png"))
        print("browser console:\n" + "\n".join(console[-60:]))
        print("server log:\n" + lab.logs())
        raise
    finally:
        cleanup()
        page.close()
    errors = [c for c in console if c.startswith("pageerror")]
    assert not errors, errors
