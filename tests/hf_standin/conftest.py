"""Fixtures: the Hub stand-in with its test repos, and the real client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .fixtures import GATED, GGUF, TINY, TOKEN, gguf_model, point_client_at, tiny_model
from .server import HubStandIn


@pytest.fixture(scope="session")
def repo_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test repos' files, written once per session."""
    base = tmp_path_factory.mktemp("hf-repos")
    return {"main": tiny_model(base / "tiny-main"),
            "v1": tiny_model(base / "tiny-v1", seed=2, version="v1"),
            "gated": tiny_model(base / "gated", seed=3, version="gated"),
            "gguf": gguf_model(base / "gguf")}


def make_hub(folders: dict[str, Path]) -> HubStandIn:
    hub = HubStandIn(tokens={TOKEN: "alice", "hf_standin_token_without_access": "bob"})
    hub.add_repo(TINY, folders["main"], revisions={"v1": folders["v1"]})
    hub.add_repo(GATED, folders["gated"], gated=True, granted={"alice"})
    hub.add_repo(GGUF, folders["gguf"])
    return hub


@pytest.fixture
def hf_hub(repo_folders: dict[str, Path], tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """A running stand-in; HF_ENDPOINT points at it, HF_HOME is the test's own."""
    with make_hub(repo_folders) as hub:
        point_client_at(monkeypatch, hub.url, tmp_path / "hf-home")
        yield hub
