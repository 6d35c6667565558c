"""Notebook 7 (the `notebook` package), for real: `jupyter notebook` with the server extension and
the built labextension, driven by Chromium.

The labextension's plugin requires nothing JupyterLab-only (no ILabShell; the palette, layout
restorer and notebook tracker are optional), so Notebook 7 loads it as it is and puts the AI
Sessions sidebar into its left side panel (View > Left Sidebar). In a notebook, `%serve panel`
shows the ipywidgets control panel. The panel launches smollm2-135m from the kernel, the
sidebar (the server's manager) follows that session to `ready`, stops it, and the panel sees
it `stopped`: two managers, one state directory, both UIs live in one Notebook 7 page.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import LabServer, missing, require_labextension, wait_for_kernel, write_notebook

pytestmark = [pytest.mark.lab, pytest.mark.model, pytest.mark.timeout(600)]

RECIPE = "smollm2-135m"


@pytest.fixture(scope="module")
def notebook7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabServer]:
    require_labextension()
    try:
        import notebook
    except ImportError:
        missing("the notebook package (Notebook 7) is not installed (pip install -e '.[test]')")
    assert int(notebook.__version__.split(".")[0]) >= 7, notebook.__version__
    server = LabServer(tmp_path_factory.mktemp("notebook7"), app="notebook")
    try:
        yield server
    finally:
        server.close()


def test_panel_and_sidebar_in_notebook7(notebook7: LabServer, browser_context,
                                        artifacts: Path) -> None:
    write_notebook(notebook7.root / "panel.ipynb", ["%load_ext hpcserve_jupyter", "%serve panel"])
    page = browser_context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}\n{e.stack}"))
    try:
        _run(page, notebook7, artifacts)
    except Exception:
        page.screenshot(path=str(artifacts / "notebook7-failure.png"))
        print("browser console:\n" + "\n".join(console[-60:]))
        print("server log:\n" + notebook7.logs())
        raise
    finally:
        page.close()
    # Notebook 7.6 itself throws "Cannot read properties of undefined (reading 'schema')" from
    # its shortcuts plugin when a notebook page loads (also with every other labextension
    # disabled): only errors raised in this extension's code (its bundle, in the stack) count.
    errors = [c for c in console if c.startswith("pageerror") and "hpcserve" in c]
    assert not errors, "\n".join(errors)


def _run(page, nb: LabServer, artifacts: Path) -> None:
    from playwright.sync_api import expect

    page.goto(nb.lab_url("notebooks/panel.ipynb"))
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    app = page.evaluate(
        "() => JSON.parse(document.getElementById('jupyter-config-data').textContent).appName")
    assert app == "Jupyter Notebook", app  # Notebook 7's page, not JupyterLab's
    wait_for_kernel(page)

    # -- the sidebar, from View > Left Sidebar
    sidebar = page.locator("#hpcserve-sessions")
    expect(sidebar).to_be_hidden()
    page.locator(".lm-MenuBar-item", has_text="View").click()
    page.locator(".lm-Menu-item", has_text="Left Sidebar").hover()
    page.locator(".lm-Menu-item", has_text="Show AI Sessions").click()
    expect(sidebar).to_be_visible()
    expect(sidebar.locator(".jp-hpcserve-connection")).to_have_attribute(
        "data-state", "open", timeout=30_000)
    expect(sidebar.locator(".jp-hpcserve-empty")).to_contain_text("No sessions")

    # -- run both cells: the control panel renders (ipywidgets)
    cells = page.locator(".jp-Notebook .jp-Cell")
    cells.first.click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")
    page.keyboard.press("Shift+Enter")
    panel = cells.nth(1).locator(".jp-OutputArea-output")
    expect(panel).to_contain_text("launch and prompt AI serving sessions", timeout=120_000)
    recipe = panel.locator("select").first
    options = recipe.locator("option").all_text_contents()
    assert RECIPE in options, options
    recipe.select_option(label=RECIPE)
    expect(panel.locator("select").nth(1)).to_have_value("llama-cpp")  # the backend follows
    page.screenshot(path=str(artifacts / "notebook7-01-panel-sidebar.png"))

    # -- launch from the panel (the kernel's manager): the sidebar follows it to ready
    panel.locator("button", has_text="Launch").click()
    row = sidebar.locator("li.jp-hpcserve-session").first
    expect(row).to_be_visible(timeout=60_000)
    sid = row.get_attribute("data-session-id")
    assert sid
    session = nb.http.get(f"hpcserve/api/sessions/{sid}").json()
    assert session["recipe"] == RECIPE and session["target"] == "local", session
    expect(row).to_have_attribute("data-state", "ready", timeout=180_000)
    table = panel.locator(".widget-gridbox").first  # the Sessions tab's (the Jobs tab has one)
    expect(table).to_contain_text(session["name"])
    expect(table.locator(".hpcserve-state.hpcserve-ready")).to_have_count(1, timeout=60_000)
    page.screenshot(path=str(artifacts / "notebook7-02-ready.png"))

    # -- stop it from the sidebar (confirming): the panel in the notebook sees it stopped
    row.locator("button[data-action=stop]").click()
    confirm = page.locator(".jp-Dialog")
    expect(confirm).to_contain_text(f"Stop {session['name']}?")
    confirm.locator("button.jp-mod-accept").click()
    expect(row).to_have_attribute("data-state", "stopped", timeout=60_000)
    expect(table.locator(".hpcserve-state.hpcserve-stopped")).to_have_count(1, timeout=60_000)
    assert nb.http.get(f"hpcserve/api/sessions/{sid}").json()["state"] == "stopped"
    page.screenshot(path=str(artifacts / "notebook7-03-stopped.png"))
