"""`%serve pull` in a real IPython shell: the CLI's pull (same words, same code) into the
local cache from the Hub stand-in, its progress and path in the cell's output; bad input is a
short usage error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

from hf_standin.conftest import hf_hub, repo_folders
from hf_standin.fixtures import TINY

__all__ = ["hf_hub", "repo_folders"]
pytest.importorskip("huggingface_hub")


@pytest.fixture
def shell():
    globalipapp.start_ipython()  # once per process; later calls return None
    ip = globalipapp.get_ipython()
    assert ip.run_cell("%load_ext hpcserve_jupyter").success
    return ip


def test_pull_into_the_local_cache(shell, hf_hub, tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "tiny-hf.yaml").write_text(yaml.safe_dump(
        {"name": "tiny-hf", "category": "inference", "model": TINY,
         "backends": ["transformers"]}))
    monkeypatch.setenv("HPCSERVE_RECIPES", str(recipes))
    with capture_output() as out:
        result = shell.run_cell("%serve pull tiny-hf --backend transformers")
    assert result.success, out.stderr
    snapshot = Path(out.stdout.strip().splitlines()[-1])
    assert snapshot.is_dir() and snapshot.is_relative_to(Path(os.environ["HF_HUB_CACHE"]))
    assert (snapshot / "config.json").is_file()
    assert "verify" in out.stderr and "files" in out.stderr  # progress lines


def test_bad_input_is_a_short_error(shell, capsys):
    result = shell.run_cell("%serve pull smollm2-135m")  # a model shipped in a package
    err = capsys.readouterr().err
    assert result.error_in_exec is None and "nothing to pull" in err
    assert "Traceback" not in err
