"""`hpcserve tapis app`: the app JSON shown (--dry-run), registered through the real tapipy
client at the stand-in's Apps API with its bundle uploaded by the Files API, refused when it
exists unless --update; bad targets refused with exit 2."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import yaml

from hpcserve_jupyter import cli

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(300)]


@pytest.fixture
def targets_file(tmp_path, monkeypatch, tapis_jobs_config):
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": {"hpc": tapis_jobs_config,
                                                "box": {"kind": "local"}}}))
    monkeypatch.setenv("HPCSERVE_TARGETS", str(path))
    monkeypatch.setenv("HPCSERVE_HOME", str(tmp_path / "home"))
    return path


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_dry_run_shows_the_app_and_a_recipe_job_request(targets_file, jobs_standin, capsys):
    code, out, err = run(capsys, "tapis", "app", "--on", "hpc", "--dry-run", "--recipe",
                         "smollm2-135m")
    assert code == 0, err
    shown = json.loads(out)
    app, job = shown["app"], shown["job"]
    assert app["runtime"] == "ZIP" and app["jobType"] == "BATCH"
    assert app["jobAttributes"]["execSystemId"] == "testcluster"
    words = shlex.split(" ".join(a["arg"] for a in job["parameterSet"]["appArgs"]))
    assert "{HPCSERVE_PORT}" in words  # filled in on the node, by the app's script
    assert job["appId"] == app["id"] and job["appVersion"] == app["version"]
    assert job["name"].endswith("-00000000")
    ops = [c.operation_id for c in jobs_standin.calls]
    assert "createAppVersion" not in ops and "insert" not in ops  # nothing changed


def test_register_then_refuse_then_update(targets_file, jobs_standin, capsys):
    code, out, err = run(capsys, "tapis", "app", "--on", "hpc")
    assert code == 0, err
    assert out.startswith("created app hpcserve-serve version")
    ((app_id, _), app), = jobs_standin.apps.apps.items()
    assert app_id == "hpcserve-serve"
    bundle = Path(app["containerImage"])
    assert bundle.is_file() and bundle.suffix == ".tgz"  # uploaded with the Files API
    code, out, err = run(capsys, "tapis", "app", "--on", "hpc")
    assert code == 2 and "already exists" in err and "--update" in err
    code, out, err = run(capsys, "tapis", "app", "--on", "hpc", "--update")
    assert code == 0 and out.startswith("updated app hpcserve-serve"), err
    ops = [c.operation_id for c in jobs_standin.calls]
    assert ops.count("createAppVersion") == 1 and ops.count("putApp") == 1


def test_bad_targets_are_refused(targets_file, capsys):
    code, _, err = run(capsys, "tapis", "app", "--on", "box")
    assert code == 2 and "not tapis-jobs" in err
    code, _, err = run(capsys, "tapis", "app", "--on", "nowhere")
    assert code == 2 and "unknown target 'nowhere'" in err
