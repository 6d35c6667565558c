"""The control panel's Pull weights button: the chosen recipe's model into the chosen target's
cache from the Hub stand-in (through the real huggingface_hub), a bytes bar to the end, and a
gated model pulled with the token typed into the target's Hugging Face field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hf_standin.conftest import hf_hub, repo_folders
from hf_standin.fixtures import GATED, TINY, TOKEN, use_recipes
from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.widgets import ControlPanel

__all__ = ["hf_hub", "repo_folders"]
pytest.importorskip("huggingface_hub")


@pytest.fixture
def panel(hf_hub, tmp_path, monkeypatch):
    use_recipes(monkeypatch, tmp_path / "recipes", {
        "tiny-hf": {"model": TINY, "backends": ["transformers"]},
        "gated-hf": {"model": GATED, "backends": ["transformers"]}})
    hp = Hpcserve(home=tmp_path / "home", monitor=False,
                  target_configs={"local": {"kind": "local"}})
    p = ControlPanel(hp)
    yield p
    p.close()
    hp.close()


def test_pull_button_fills_the_cache_with_progress(panel):
    panel.recipe.value = "tiny-hf"
    panel.pull_button.click()
    assert panel.join(120)
    assert panel.pull_progress.value == 1 and panel.pull_progress.bar_style == "success"
    assert "files verified" in panel.pull_status.value, panel.pull_status.value
    cache = Path(os.environ["HF_HUB_CACHE"])
    assert (cache / ("models--" + TINY.replace("/", "--")) / "refs" / "main").is_file()


def test_a_gated_model_needs_the_token_typed_in(panel, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    panel.recipe.value = "gated-hf"
    panel.pull_button.click()
    assert panel.join(60)
    assert panel.pull_progress.bar_style == "danger" and "HF_TOKEN" in panel.pull_status.value
    panel.secret_fields["HF_TOKEN"].value = TOKEN  # typed in: held in memory, field cleared
    assert panel.secret_fields["HF_TOKEN"].value == ""
    panel.pull_button.click()
    assert panel.join(120)
    assert panel.pull_progress.bar_style == "success", panel.pull_status.value
    assert TOKEN not in panel.pull_status.value and "HF_TOKEN" not in os.environ
