"""The server's image allow-list for one-off jobs (c.HpcserveApp.allowed_images): a task whose
image is not on it is refused with 400 naming the list, and nothing is recorded."""

from __future__ import annotations

import json
from typing import Any

import pytest


@pytest.fixture
def hpcserve_config(tmp_path_factory: pytest.TempPathFactory,
                    monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    recipes = tmp_path_factory.mktemp("recipes")
    for name, image in (("ours", "docker://ghcr.io/our-lab/tool:1"),
                        ("theirs", "docker://evil.example/miner:latest")):
        (recipes / f"{name}.yaml").write_text(
            f"name: {name}\ncategory: task\ncommand: [cat]\nimages: {{task: '{image}'}}\n")
    monkeypatch.setenv("HPCSERVE_RECIPES", str(recipes))
    return {"poll_interval": 0.5, "allowed_images": ["docker://ghcr.io/our-lab/*"]}


async def test_an_image_off_the_servers_list_is_refused(jp_fetch, ext, tmp_path):
    (tmp_path / "in.txt").write_text("x")
    body = {"recipe": "theirs", "input": str(tmp_path / "in.txt")}
    r = await jp_fetch("hpcserve", "api", "jobs", method="POST", body=json.dumps(body),
                       raise_error=False)
    error = json.loads(r.body)
    assert r.code == 400, error
    assert "docker://evil.example/miner:latest" in error["error"]
    assert "docker://ghcr.io/our-lab/*" in error.get("detail", "") + error["error"]
    assert ext.service.jobs() == []
    # The allowed image passes the check (and the task runs as a plain process locally).
    body["recipe"] = "ours"
    r = await jp_fetch("hpcserve", "api", "jobs", method="POST", body=json.dumps(body))
    job = json.loads(r.body)
    assert r.code == 201 and job["kind"] == "task"
    final = await ext.service.wait_job(job["id"], timeout=30)
    assert final.state == "done", final.reason
