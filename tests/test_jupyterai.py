"""A session's entry in Jupyter AI's settings, read back by Jupyter AI's own config manager."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading

import pytest

from hpcserve_jupyter import jupyterai
from hpcserve_jupyter.errors import BadInput
from hpcserve_jupyter.jupyter import aiconfig
from hpcserve_jupyter.jupyterai import AiModel

pytest.importorskip("jupyter_ai_jupyternaut", reason="the jupyter-ai extra is not installed")

from jupyter_ai_jupyternaut.config.config_manager import ConfigManager
from jupyter_ai_jupyternaut.config.config_models import UpdateConfigRequest

BASE = "http://127.0.0.1:8888/hpcserve/v1"


def model(sid: str = "a1b2c3d4", name: str = "m1", key: str = "hsk_k1") -> AiModel:
    return AiModel(session_id=sid, name=name, api_base=BASE, api_key=key,
                   description=f"hpcserve session {name}")


def manager(path) -> ConfigManager:
    """Jupyter AI's own reader, as its server extension builds it (no defaults set)."""
    return ConfigManager(log=logging.getLogger("test"), defaults={}, config_path=str(path))


def test_jupyter_ai_reads_the_entry_and_resolves_its_params(tmp_path):
    path = tmp_path / "jupyter_ai" / "config.json"
    jupyterai.register(model(), path=path)
    cm = manager(path)
    [entry] = cm.custom_models
    assert entry.id == "custom-hpcserve-a1b2c3d4/hosted_vllm/m1"
    assert entry.id.startswith("custom-")  # Jupyternaut's marker of a custom model
    assert (entry.name, entry.model_id) == ("m1", "hosted_vllm/m1")
    assert entry.params == {"api_base": BASE, "api_key": "hsk_k1"}
    assert cm.get_custom_model(entry.id) == entry
    assert cm.chat_model is None  # not made the default unless asked
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds a key


def test_default_sets_the_model_jupyternaut_uses_when_none_is_picked(tmp_path):
    path = tmp_path / "config.json"
    jupyterai.register(model(), default=True, path=path)
    cm = manager(path)
    assert cm.chat_model == "hosted_vllm/m1"
    assert cm.chat_model_args == {"api_base": BASE, "api_key": "hsk_k1"}
    assert jupyterai.registered(path=path) == [
        {"session_id": "a1b2c3d4", "name": "m1", "model_id": "hosted_vllm/m1",
         "api_base": BASE, "default": True}]


def test_users_own_models_and_settings_are_kept(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{}")
    cm = manager(path)  # Jupyter AI writes its full default file first
    cm.update_config(UpdateConfigRequest(
        send_with_shift_enter=True, api_keys={"OPENAI_API_KEY": "sk-user"},
        custom_models=[{"name": "mine", "model_id": "openai/gpt-x", "params": {}}]))
    jupyterai.register(model(), default=True, path=path)
    jupyterai.register(model("ffff0000", "m2", "hsk_k2"), path=path)
    cm = manager(path)
    names = [m.name for m in cm.custom_models]
    assert names == ["m2", "m1", "mine"]
    config = json.loads(path.read_text())
    assert config["send_with_shift_enter"] is True
    assert config["api_keys"] == {"OPENAI_API_KEY": "sk-user"}

    assert jupyterai.unregister("a1b2c3d4", path=path) == ["m1"]
    cm = manager(path)
    assert [m.name for m in cm.custom_models] == ["m2", "mine"]
    assert cm.chat_model is None  # the default pointed at the removed session
    assert "hosted_vllm/m1" not in json.loads(path.read_text()).get("fields", {})
    assert jupyterai.unregister("a1b2c3d4", path=path) == []  # nothing left: no write


def test_registering_again_replaces_the_entry(tmp_path):
    path = tmp_path / "config.json"
    jupyterai.register(model(key="hsk_old"), path=path)
    jupyterai.register(model(key="hsk_new"), path=path)
    [entry] = manager(path).custom_models
    assert entry.params["api_key"] == "hsk_new"


def test_a_default_the_user_set_elsewhere_is_not_cleared(tmp_path):
    path = tmp_path / "config.json"
    jupyterai.register(model(), path=path)
    config = json.loads(path.read_text())
    config["model_provider_id"] = "hosted_vllm/m1"  # same id, the user's own parameters
    config["fields"] = {"hosted_vllm/m1": {"api_base": "http://elsewhere/v1", "api_key": "x"}}
    path.write_text(json.dumps(config))
    jupyterai.unregister("a1b2c3d4", path=path)
    config = json.loads(path.read_text())
    assert config["model_provider_id"] == "hosted_vllm/m1"
    assert config["fields"]["hosted_vllm/m1"]["api_base"] == "http://elsewhere/v1"


def test_concurrent_writers_lose_no_entry(tmp_path):
    path = tmp_path / "config.json"
    threads = [threading.Thread(target=jupyterai.register,
                                args=(model(f"{i:08x}", f"m{i}", f"hsk_{i}"),),
                                kwargs={"path": path}) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(m["name"] for m in jupyterai.registered(path=path)) == \
        sorted(f"m{i}" for i in range(8))


@pytest.mark.parametrize("text, says", [("{not json", "not valid JSON"),
                                        ("[1, 2]", "not a JSON object")])
def test_a_broken_settings_file_is_a_clear_error_and_is_left_alone(tmp_path, text, says):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(BadInput, match=says):
        jupyterai.register(model(), path=path)
    assert path.read_text() == text


def test_the_path_follows_the_jupyter_data_dir(tmp_path, monkeypatch):
    """Found at the edge (the server extension, the embedded facade) and handed to the core."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    assert aiconfig.config_path() == tmp_path / "data" / "jupyter_ai" / "config.json"
