"""The control panel through ipywidgets' Python-side models: set `.value`, `.click()`, assert
the widgets' state. A real embedded facade; the tests marked `model` run SmolLM2 on llama.cpp."""

from __future__ import annotations

import contextlib
import json
import os

import ipywidgets as W
import pytest
from ipywidgets.embed import dependency_state

from hpcserve_jupyter.api import Hpcserve
from hpcserve_jupyter.errors import HpcserveError
from hpcserve_jupyter.widgets import ControlPanel

RECIPE = "smollm2-135m"


def make_hp(tmp_path, **configs) -> Hpcserve:
    return Hpcserve(home=tmp_path / "home", poll_interval=0.5,
                    target_configs={"local": {"kind": "local"}, **configs})


@pytest.fixture
def hp(tmp_path):
    h = make_hp(tmp_path)
    yield h
    for s in h.sessions(live_only=True):
        with contextlib.suppress(HpcserveError):
            h.stop(s.id)
    h.close()


def widget_state(panel: ControlPanel) -> str:
    """Everything a notebook would save of the panel's widgets, as JSON text. ipywidgets walks
    its global table of widgets, which the panel's event thread may add a row's widgets to at
    that moment ("dictionary changed size during iteration", seen once in CI): the walk holds
    the panel's lock, under which rows are made, and is taken again if another widget appeared
    anyway."""
    for attempt in range(5):
        try:
            with panel._shared.lock:
                return json.dumps(dependency_state([panel.widget], drop_defaults=False))
        except RuntimeError as exc:
            if "changed size during iteration" not in str(exc) or attempt == 4:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- launch form


def test_form_follows_the_recipe(panel, hp):
    recipes = {r["name"]: r for r in hp.recipes()}
    assert set(panel.recipe.options) == set(recipes)
    assert panel.recipe.value == RECIPE  # a recipe that runs anywhere (CPU, inference)
    assert panel.backend.options == ("llama-cpp",)
    assert (panel.gpus.value, panel.nodes.value, panel.time.value, panel.replicas.value) == \
        (0, 1, "2h", 1)
    assert "SmolLM2" in panel.recipe_info.value
    assert panel.overrides() == {}

    panel.recipe.value = "qwen2.5-72b-instruct"
    assert panel.backend.options == tuple(recipes["qwen2.5-72b-instruct"]["backends"])
    assert panel.backend.value == "vllm"  # the recipe's default backend
    assert (panel.gpus.value, panel.time.value) == (4, "8h")
    panel.gpus.value, panel.time.value, panel.replicas.value = 2, "30m", 2
    assert panel.overrides() == {"gpus": 2, "time": "30m", "replicas": 2}
    assert panel.target.options == ("local",) and panel.target.value == "local"


def test_panel_shows_as_a_widget_with_a_stable_text(panel):
    bundle = panel._repr_mimebundle_()
    assert bundle["text/plain"] == "hpcserve control panel (widgets: shown in Jupyter)"
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == \
        panel.widget.model_id
    assert panel.tabs.titles == ("Sessions", "Logs", "Chat", "Jobs")


def test_a_failed_launch_shows_its_reason(panel, hp):
    panel.recipe.value = "bge-m3"  # needs a GPU; this machine's local target has none
    panel.launch_button.click()
    assert panel.join(60)
    assert panel.progress.bar_style == "danger"
    assert "GPU" in panel.launch_status.value and panel.errors
    assert not panel.launch_button.disabled
    # the failed session (the launch raised, so only events know it) shows in the table
    assert panel.launched == []
    assert panel.wait_for(lambda p: "bge-m3-1  bge-m3  local  failed" in p.table_text(), 10)
    (row,) = panel.rows.values()
    assert "hpcserve-failed" in row.state.value
    assert row.stop_button.disabled and row.prompt_button.disabled


# --------------------------------------------------------------------------- secrets


def test_secret_field_is_emptied_at_once_and_set_at_launch(panel, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "-")  # recorded, so the panel's change is undone after
    monkeypatch.delenv("HF_TOKEN")
    field = panel.secret_fields["HF_TOKEN"]
    assert isinstance(field, W.Password) and not field.continuous_update
    field.value = "hf_secret_value_123"  # what the browser sends on Enter
    assert field.value == ""
    assert "hf_secret_value_123" not in widget_state(panel)
    assert "held in memory" in field.placeholder
    assert "HF_TOKEN" not in os.environ  # not before a launch

    panel.recipe.value = "bge-m3"  # fails at once (no GPU), after the secret is applied
    panel.launch_button.click()
    panel.join(60)
    assert os.environ["HF_TOKEN"] == "hf_secret_value_123"
    assert "is set in this kernel" in field.placeholder
    assert "hf_secret_value_123" not in widget_state(panel)
    assert "hf_secret_value_123" not in panel.launch_status.value + panel.status.value


def test_secret_fields_follow_the_target(tmp_path):
    hp = make_hp(tmp_path, cluster={"kind": "slurm", "host": "login.example.invalid",
                                    "key_passphrase_env": "CLUSTER_KEY_PASS"})
    panel = ControlPanel(hp)
    try:
        assert list(panel.secret_fields) == ["HF_TOKEN"]
        panel.target.value = "cluster"
        assert list(panel.secret_fields) == ["CLUSTER_KEY_PASS", "HF_TOKEN"]
        field = panel.secret_fields["CLUSTER_KEY_PASS"]
        assert field.description == "SSH key passphrase"
        assert list(panel.secrets_box.children) == [field, panel.secret_fields["HF_TOKEN"]]
        field.value = "correct horse"
        assert field.value == "" and "correct horse" not in widget_state(panel)
    finally:
        panel.close()
        hp.close()


# --------------------------------------------------------------------------- with the model


@pytest.mark.model
def test_launch_chat_logs_stop_through_the_panel(panel, hp):
    panel.launch_button.click()
    assert panel.launch_button.disabled  # while launching
    assert panel.join(120)
    sid = panel.launched[0]
    assert panel.progress.value == 3 and panel.progress.bar_style == "success"
    assert "hpcserve-ready" in panel.launch_status.value
    assert panel.wait_for(lambda p: p.state_of(sid) == "ready", 10)
    row = panel.rows[sid]
    s = hp.status(sid)
    assert row.endpoint.value == s.endpoints[0]
    assert panel.table_text() == f"{s.name}  {RECIPE}  local  ready"
    assert [v for _, v in panel.chat_session.options] == [sid]

    # prompt: opens the chat on that session; the answer streams into the transcript
    row.prompt_button.click()
    assert panel.tabs.selected_index == 2 and panel.chat_session.value == sid
    panel.temperature.value, panel.max_tokens.value = 0, 24
    panel.chat_input.value = "Name a colour."
    panel.send_button.click()
    assert panel.chat_input.value == ""
    assert panel.join(60)
    answer = panel.last_answer
    assert answer and panel.history == [{"role": "user", "content": "Name a colour."},
                                        {"role": "assistant", "content": answer}]
    assert "Name a colour." in panel.chat_log.value
    # a second turn carries the conversation
    panel.chat_input.value = "Another one?"
    panel.send_button.click()
    panel.join(60)
    assert len(panel.history) == 4
    panel.clear_button.click()
    assert panel.history == [] and panel.chat_log.value == ""

    row.logs_button.click()
    assert panel.tabs.selected_index == 1 and panel.log_session.value == sid
    panel.join(30)
    assert "chat/completions" in panel.log_text.value

    row.keepalive_button.click()
    assert "idle timer reset" in panel.status.value

    # Jupyter AI needs a server's gateway: this embedded facade has none, and says so
    assert not row.ai_button.disabled
    row.ai_button.click()
    assert "Jupyter server" in panel.status.value and "HPCSERVE_SERVER_URL" in panel.status.value

    row.stop_button.click()
    assert row.stop_button.disabled
    panel.join(60)
    assert panel.wait_for(lambda p: p.state_of(sid) == "stopped", 10)
    assert "hpcserve-stopped" in row.state.value
    assert row.keepalive_button.disabled and row.prompt_button.disabled and row.ai_button.disabled
    assert panel.chat_session.options == ()


@pytest.mark.model
def test_table_follows_sessions_started_elsewhere(panel, hp):
    """Sessions launched or stopped outside the panel (another cell, the CLI) show up through the
    facade's event stream, without polling."""
    s = hp.launch(RECIPE, name="from-a-cell", timeout=120)
    assert panel.wait_for(lambda p: p.state_of(s.id) == "ready", 10)
    assert "from-a-cell" in panel.table_text()
    hp.stop(s.id)
    assert panel.wait_for(lambda p: p.state_of(s.id) == "stopped", 10)
    # a new panel starts from a snapshot of the live sessions (none now)
    other = ControlPanel(hp)
    try:
        assert other.wait_for(lambda p: p.rows == {}, 5)
    finally:
        other.close()
