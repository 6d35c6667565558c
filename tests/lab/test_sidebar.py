"""The sidebar, end to end: real `jupyter lab`, real Chromium, real llama.cpp engine.

Open the AI Sessions sidebar, launch smollm2-135m on `local` through the launch dialog (from
the command palette), watch its row go pending -> ready with no page reload, follow its log in
a main-area panel, copy the OpenAI base URL and model name and use them with the openai SDK,
insert a %%serve cell into a notebook and run it, see a server error as a notification, stop
the session (confirming) and watch the row go `stopped`. Screenshots go to tests/lab/artifacts/.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import openai
import pytest

from .conftest import (
    LABEXT,
    TOKEN,
    LabServer,
    open_sidebar,
    plain,
    require_labextension,
    wait_for_kernel,
)

pytestmark = [pytest.mark.lab, pytest.mark.model, pytest.mark.timeout(600)]

RECIPE = "smollm2-135m"

# Records every state each session row shows (a MutationObserver), to see `pending` even
# when the engine is ready a second later, and marks the page to detect reloads.
WATCH_ROWS = """
() => {
  window.__hpcserveNoReload = true;
  window.__hpcserveStates = {};
  const record = () => {
    for (const li of document.querySelectorAll('li.jp-hpcserve-session')) {
      const seen = (window.__hpcserveStates[li.dataset.sessionId] ||= []);
      if (seen[seen.length - 1] !== li.dataset.state) seen.push(li.dataset.state);
    }
  };
  new MutationObserver(record).observe(document.body, {
    subtree: true, childList: true, attributes: true, attributeFilter: ['data-state']});
  record();
}
"""


def test_extensions_enabled(lab: LabServer) -> None:
    """Both halves are found and enabled: the server extension (the shipped jupyter-config
    file) and the labextension (the build output on JUPYTER_PATH)."""
    jupyter = str(Path(sys.executable).with_name("jupyter"))
    server = subprocess.run([jupyter, "server", "extension", "list"], env=lab.env,
                            capture_output=True, text=True, timeout=120)
    out = plain(server.stdout + server.stderr)
    assert re.search(r"hpcserve_jupyter\s+enabled", out), out
    assert re.search(r"hpcserve_jupyter 0\.1\.0\s+OK", out), out
    labext = subprocess.run([jupyter, "labextension", "list"], env=lab.env,
                            capture_output=True, text=True, timeout=120)
    out = plain(labext.stdout + labext.stderr)
    assert re.search(r"hpcserve-jupyter v0\.1\.0 enabled\s+OK", out), out
    # found in the fresh build (first on JUPYTER_PATH), not in an older installed copy
    first = out.index("hpcserve-jupyter v0.1.0")
    assert out.rfind(str(LABEXT.parent), 0, first) != -1, out


def test_sidebar_launch_logs_stop(lab: LabServer, browser_context, artifacts: Path) -> None:
    require_labextension()
    from playwright.sync_api import expect

    (lab.root / "prompt.ipynb").write_text(json.dumps({
        "cells": [{"cell_type": "markdown", "id": "title", "metadata": {},
                   "source": ["# hpcserve"]}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                    "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))
    page = browser_context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    try:
        _run(page, lab, artifacts, expect)
    except Exception:
        page.screenshot(path=str(artifacts / "failure.png"))
        print("browser console:\n" + "\n".join(console[-60:]))
        print("server log:\n" + lab.logs())
        raise
    finally:
        page.close()
    errors = [c for c in console if c.startswith("pageerror")]
    assert not errors, errors


def open_palette(page) -> None:
    """View > Activate Command Palette. The modal palette closes when it loses focus, which a
    notebook settling down can take from it: try again then."""
    palette_input = page.locator(".jp-ModalCommandPalette .lm-CommandPalette-input")
    for _ in range(5):
        page.locator(".lm-MenuBar-item", has_text="View").click()
        page.locator(".lm-Menu-item", has_text="Activate Command Palette").click()
        try:
            palette_input.wait_for(state="visible", timeout=3000)
            page.wait_for_timeout(300)
            if palette_input.is_visible():
                return
        except Exception:
            pass
    raise AssertionError("the command palette did not open")


def _run(page, lab: LabServer, artifacts: Path, expect) -> None:
    page.goto(lab.lab_url("lab/tree/prompt.ipynb"))
    page.wait_for_selector("#jp-main-dock-panel", timeout=60_000)
    # The notebook's kernel is up before we work in the sidebar (the %%serve cell runs later).
    expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
    wait_for_kernel(page)

    # -- open the sidebar from its tab in the left bar
    sidebar = open_sidebar(page, expect)
    expect(sidebar.locator(".jp-hpcserve-empty")).to_contain_text("No sessions")
    page.evaluate(WATCH_ROWS)

    # -- launch through the dialog, opened from the command palette
    open_palette(page)
    palette_input = page.locator(".jp-ModalCommandPalette .lm-CommandPalette-input")
    palette_input.fill("Launch AI Session")
    expect(page.locator(".lm-CommandPalette-item.lm-mod-active")).to_contain_text(
        "Launch AI Session")
    page.keyboard.press("Enter")
    dialog = page.locator(".jp-Dialog")
    expect(dialog.locator(".jp-hpcserve-launch")).to_be_visible(timeout=30_000)
    dialog.locator("select[name=recipe]").select_option(RECIPE)
    expect(dialog.locator(".jp-hpcserve-launch-description")).to_contain_text("SmolLM2 135M")
    backends = dialog.locator("select[name=backend] option").all_text_contents()
    assert backends == ["llama-cpp"], backends
    assert dialog.locator("select[name=target]").input_value() == "local"
    dialog.locator("input[name=time]").fill("30m")
    page.screenshot(path=str(artifacts / "01-launch-dialog.png"))
    dialog.locator("button.jp-mod-accept").click()
    expect(dialog).to_have_count(0)

    row = sidebar.locator("li.jp-hpcserve-session").first
    expect(row).to_be_visible(timeout=10_000)
    sid = row.get_attribute("data-session-id")
    assert sid
    session = lab.http.get(f"hpcserve/api/sessions/{sid}").json()
    assert session["recipe"] == RECIPE and session["target"] == "local"
    assert session["resources"]["time_s"] == 1800, session["resources"]
    expect(row.locator(".jp-hpcserve-session-name")).to_have_text(session["name"])
    expect(row.locator(".jp-hpcserve-session-meta")).to_contain_text(
        f"{RECIPE} · llama-cpp · local")

    # -- the row turns ready by itself (events), having shown a not-ready state first. The
    # local target leaves `pending` within milliseconds (pending -> starting as the process
    # spawns), so whether the row paints `pending` before `starting` is a race between two
    # events; the server's own log must hold the full sequence.
    expect(row).to_have_attribute("data-state", "ready", timeout=180_000)
    states = page.evaluate("() => window.__hpcserveStates")[sid]
    assert states[0] in ("pending", "starting") and len(states) >= 2, states
    assert states[-1] == "ready", states
    logged = [e["state"] for e in lab.http.get(
        "hpcserve/api/events/log", params={"session": sid}).json()["events"] if e.get("state")]
    assert logged[:1] == ["pending"] and "ready" in logged, logged
    assert page.evaluate("() => window.__hpcserveNoReload === true")
    expect(row.locator(".jp-hpcserve-badge")).to_have_text("ready")
    expect(row.locator(".jp-hpcserve-session-age")).to_have_text(re.compile(r"^\d+[smhd]"))
    page.screenshot(path=str(artifacts / "02-sidebar-ready.png"))

    # -- copy the OpenAI base URL and the model name, then use them as a user would
    row.locator("button[data-action=copy-url]").click()
    expect(page.locator(".Toastify__toast").filter(has_text="OpenAI base URL")).to_be_visible()
    base_url = page.evaluate("() => navigator.clipboard.readText()")
    assert base_url == f"{lab.url}hpcserve/v1", base_url
    row.locator("button[data-action=copy-model]").click()
    expect(page.locator(".Toastify__toast").filter(has_text="model name")).to_be_visible()
    model = page.evaluate("() => navigator.clipboard.readText()")
    assert model == session["name"], model
    client = openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model=model, max_tokens=8, messages=[{"role": "user", "content": "Say hi."}])
    assert answer.choices[0].message.content

    # -- keepalive answers with a notification
    row.locator("button[data-action=keepalive]").click()
    expect(page.locator(".Toastify__toast").filter(has_text="idle timer reset")).to_be_visible()

    # -- "Use in Jupyter AI": the session in Jupyternaut's model picker (its own config API)
    row.locator("button[data-action=jupyter-ai]").click()
    expect(page.locator(".Toastify__toast").filter(has_text="Jupyter AI")).to_be_visible()
    if lab.http.get("api/jupyternaut/config").status_code == 200:  # jupyter-ai installed
        ai_models = lab.http.get("api/jupyternaut/config").json()["custom_models"]
        assert [m["model_id"] for m in ai_models] == [f"hosted_vllm/{session['name']}"]
    else:
        assert (lab.tmp / "data" / "jupyter_ai" / "config.json").is_file()

    # -- the log panel follows the engine's log
    row.locator("button[data-action=logs]").click()
    log_text = page.locator(".jp-hpcserve-logs-text")
    expect(log_text).to_contain_text("Uvicorn running on", timeout=30_000)
    expect(log_text).to_contain_text("llama")
    expect(page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab.lm-mod-current")).to_contain_text(
        f"Log: {session['name']}")
    # follow: a request through the gateway shows up in the open panel
    client.chat.completions.create(model=model, max_tokens=4,
                                   messages=[{"role": "user", "content": "Hello"}])
    expect(log_text).to_contain_text("POST /v1/chat/completions", timeout=30_000)
    page.screenshot(path=str(artifacts / "03-log-panel.png"))

    # -- insert a %%serve cell into the notebook and run it: the model answers in the notebook
    page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text="prompt.ipynb").click()
    row.locator("button[data-action=insert-cell]").click()
    cells = page.locator(".jp-Notebook .jp-Cell")
    expect(cells).to_have_count(3)
    expect(cells.nth(1)).to_contain_text("%load_ext hpcserve_jupyter")
    expect(cells.nth(2)).to_contain_text(f"%%serve {sid}")
    cells.nth(1).click()
    page.keyboard.press("Escape")
    page.keyboard.press("Shift+Enter")  # runs %load_ext, selects the %%serve cell
    page.keyboard.press("Shift+Enter")
    expect(cells.nth(2).locator(".jp-InputArea-prompt")).to_have_text(
        re.compile(r"\[\d+\]"), timeout=120_000)  # the cell has run
    outputs = cells.nth(2).locator(".jp-OutputArea-output")
    # an answer arrived (its words are the model's and differ between CPUs: not read), and
    # nothing went to stderr (JupyterLab renders stderr and error outputs with this mime type)
    expect(outputs.filter(has_text=re.compile(r"\S"))).not_to_have_count(0)
    expect(cells.nth(2).locator(
        '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).to_have_count(0)
    page.screenshot(path=str(artifacts / "04-serve-cell.png"))

    # -- an API error is a notification carrying the server's message
    page.keyboard.press("Escape")
    sidebar.locator("button[data-action=launch]").click()
    expect(dialog.locator(".jp-hpcserve-launch")).to_be_visible(timeout=30_000)
    assert dialog.locator("select[name=recipe]").input_value() == RECIPE  # remembered
    dialog.locator("textarea[name=extra]").fill("bogus_setting=1")
    dialog.locator("button.jp-mod-accept").click()
    toast = page.locator(".Toastify__toast").filter(has_text="unknown override 'bogus_setting'")
    expect(toast).to_be_visible(timeout=10_000)
    expect(toast).to_contain_text("use one of")  # the server's `detail`
    assert sidebar.locator("li.jp-hpcserve-session").count() == 1

    # -- stop, confirming in the dialog; the row goes stopped
    row.locator("button[data-action=stop]").click()
    confirm = page.locator(".jp-Dialog")
    expect(confirm).to_contain_text(f"Stop {session['name']}?")
    page.screenshot(path=str(artifacts / "05-stop-confirm.png"))
    confirm.locator("button.jp-mod-accept").click()
    expect(row).to_have_attribute("data-state", "stopped", timeout=60_000)
    expect(row.locator("button[data-action=stop]")).to_have_count(0)
    expect(row.locator("button[data-action=logs]")).to_have_count(1)
    expect(page.locator(".jp-hpcserve-logs-status")).to_contain_text("session stopped",
                                                                     timeout=30_000)
    assert lab.http.get(f"hpcserve/api/sessions/{sid}").json()["state"] == "stopped"
    assert page.evaluate("() => window.__hpcserveNoReload === true")
    page.screenshot(path=str(artifacts / "06-stopped.png"))

    # -- clearing ended sessions empties the list
    sidebar.locator("button[data-action=clear-ended]").click()
    expect(sidebar.locator("li.jp-hpcserve-session")).to_have_count(0)

