"""The control panel (ipywidgets) in JupyterLab 4, in Chromium: `%serve panel` renders, and the
form talks to the kernel (choosing a recipe changes the backends the kernel offers). Notebook 7
gets the same check, with a launch, in test_notebook7.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import LabServer, wait_for_kernel, write_notebook

pytestmark = [pytest.mark.lab, pytest.mark.timeout(300)]


def test_control_panel_in_jupyterlab(lab: LabServer, browser_context, artifacts: Path) -> None:
    from playwright.sync_api import expect

    write_notebook(lab.root / "panel.ipynb", ["%load_ext hpcserve_jupyter", "%serve panel"])
    page = browser_context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"{e}\n{e.stack}"))
    try:
        page.goto(lab.lab_url("lab/tree/panel.ipynb"))
        expect(page.locator(".jp-Notebook")).to_be_visible(timeout=60_000)
        wait_for_kernel(page)
        cells = page.locator(".jp-Notebook .jp-Cell")
        cells.first.click()
        page.keyboard.press("Escape")
        page.keyboard.press("Shift+Enter")
        page.keyboard.press("Shift+Enter")
        panel = cells.nth(1).locator(".jp-OutputArea-output")
        expect(panel).to_contain_text("launch and prompt AI serving sessions", timeout=120_000)
        recipe, backend = panel.locator("select").nth(0), panel.locator("select").nth(1)
        assert "smollm2-135m" in recipe.locator("option").all_text_contents()
        recipe.select_option(label="smollm2-135m-hf")
        expect(backend.locator("option")).to_have_text(["vllm", "sglang", "transformers", "tgi"])
        recipe.select_option(label="smollm2-135m")
        expect(backend.locator("option")).to_have_text(["llama-cpp"])
        # the Sessions tab's table: the first grid (the Jobs tab's is another)
        expect(panel.locator(".widget-gridbox").first).to_contain_text("state")
        expect(panel.locator("button", has_text="Launch")).to_be_enabled()
        page.screenshot(path=str(artifacts / "panel-jupyterlab.png"))
    except Exception:
        page.screenshot(path=str(artifacts / "panel-failure.png"))
        print("server log:\n" + lab.logs())
        raise
    finally:
        page.close()
    assert not errors, "\n".join(errors)
